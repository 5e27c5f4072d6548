"""A consolidation's life as a state machine: (stage, event) -> (next stage, effect)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoscaler.core.plan import Action, ActionKind
from autoscaler.core.replacement import (
    LINKED,
    Created,
    Effect,
    Event,
    Lost,
    Refused,
    Replacement,
    Seen,
    Stage,
    step,
)
from autoscaler.tensordock.models import InstanceStatus

from .builders import offer

RUN, START, STOPPING, STOPPED = (
    InstanceStatus.RUNNING,
    InstanceStatus.STARTING,
    InstanceStatus.STOPPING,
    InstanceStatus.STOPPED,
)
S = Stage
OLD, NEW = "id-old", "tdas-new"


def at(stage: Stage) -> Replacement:
    return Replacement(OLD, None if stage in (S.PLANNED,) else NEW, stage)


@pytest.mark.parametrize(
    ("stage", "event", "expected", "effect"),
    [
        # the create: its reply decides
        (S.PLANNED, Created(NEW), S.BOOTING, Effect.LINK),
        (S.PLANNED, Lost(NEW), S.CREATING, Effect.NONE),
        (S.PLANNED, Refused(), S.ABANDONED, Effect.NONE),
        (S.CREATING, Created(NEW), S.BOOTING, Effect.LINK),  # the listing shows the lost reply's name
        (S.CREATING, Refused(), S.ABANDONED, Effect.NONE),  # it never appeared
        # linked: each cycle's view decides
        (S.BOOTING, Seen(None, RUN, awaited=True), S.BOOTING, Effect.NONE),
        (S.BOOTING, Seen(START, RUN), S.BOOTING, Effect.NONE),
        (S.BOOTING, Seen(None, RUN), S.ABANDONED, Effect.UNLINK),  # it vanished
        (S.BOOTING, Seen(InstanceStatus.ERROR, RUN), S.ABANDONED, Effect.UNLINK),
        (S.BOOTING, Seen(RUN, RUN, old_busy=True), S.DRAINING, Effect.NONE),
        (S.BOOTING, Seen(RUN, RUN), S.STOPPING, Effect.STOP_OLD),  # busy unknown: not held back
        (S.DRAINING, Seen(RUN, RUN, old_busy=True), S.DRAINING, Effect.NONE),
        (S.DRAINING, Seen(RUN, RUN, old_busy=False, old_touched=True), S.DRAINING, Effect.NONE),
        (S.DRAINING, Seen(RUN, RUN, old_busy=False), S.STOPPING, Effect.STOP_OLD),
        (S.STOPPING, Seen(RUN, RUN, old_busy=False), S.STOPPING, Effect.STOP_OLD),  # the stop was held back
        (S.STOPPING, Seen(RUN, STOPPING), S.RETIRED, Effect.NONE),
        (S.RETIRED, Seen(RUN, STOPPED), S.RETIRED, Effect.NONE),
        (S.RETIRED, Seen(RUN, InstanceStatus.UNKNOWN), S.RETIRED, Effect.NONE),
        (S.RETIRED, Seen(STOPPED, STOPPED), S.ABANDONED, Effect.UNLINK),  # the new one was stopped
        # abandoned is final
        (S.ABANDONED, Created(NEW), S.ABANDONED, Effect.NONE),
        (S.ABANDONED, Seen(RUN, RUN), S.ABANDONED, Effect.NONE),
    ],
)
def test_transitions(stage: Stage, event: Event, expected: Stage, effect: Effect) -> None:
    after, done = step(at(stage), event)
    assert (after.stage, done) == (expected, effect)
    assert after.old_id == OLD
    assert after.link == (NEW if expected in LINKED else None)


@pytest.mark.parametrize(
    ("stage", "event"),
    [
        (S.PLANNED, Seen(RUN, RUN)),  # nothing to see before the create
        (S.CREATING, Seen(RUN, RUN)),
        (S.CREATING, Lost(NEW)),
        (S.BOOTING, Created(NEW)),  # one create per replacement
        (S.RETIRED, Refused()),
    ],
)
def test_an_event_that_cannot_happen_is_refused(stage: Stage, event: Event) -> None:
    with pytest.raises(ValueError, match=str(stage)):
        step(at(stage), event)


def test_only_a_create_carries_a_planned_replacement() -> None:
    with pytest.raises(ValueError, match="replacement"):
        Action(ActionKind.STOP, "x", "x", instance_id=OLD, replacement=Replacement(OLD))
    with pytest.raises(ValueError, match="replacement"):
        Action(ActionKind.CREATE, "x", "x", offer=offer("m", 0.1), gpus=1, replacement=Replacement.restored(OLD, NEW))


statuses = st.sampled_from(InstanceStatus)
seens = st.builds(
    Seen,
    new=st.none() | statuses,
    old=statuses,
    old_busy=st.none() | st.booleans(),
    awaited=st.booleans(),
    old_touched=st.booleans(),
)
events = st.one_of(st.builds(Created, name=st.just(NEW)), st.builds(Lost, name=st.just(NEW)), st.just(Refused()), seens)


@given(stage=st.sampled_from(sorted(LINKED)), seen=seens)
def test_a_linked_stage_follows_from_what_is_seen_alone(stage: Stage, seen: Seen) -> None:
    after, effect = step(at(stage), seen)
    assert (after, effect) == step(Replacement.restored(OLD, NEW), seen)  # the store keeps no stage
    hand_over = seen.new is RUN and seen.old is RUN and seen.old_busy is not True and not seen.old_touched
    assert (effect is Effect.STOP_OLD) == hand_over
    assert (effect is Effect.UNLINK) == (after.stage is S.ABANDONED)


@given(st.lists(events, max_size=12))
def test_any_life_keeps_its_candidate_and_never_comes_back(history: list[Event]) -> None:
    current = Replacement(OLD)
    abandoned = False
    for event in history:
        try:
            current, effect = step(current, event)
        except ValueError:
            continue
        assert current.old_id == OLD
        assert not abandoned or (current.stage is S.ABANDONED and effect is Effect.NONE)
        abandoned = current.stage is S.ABANDONED
        if effect is Effect.STOP_OLD:  # the one stop of a life comes only from a running pair
            assert isinstance(event, Seen) and event.new is RUN and event.old is RUN
        assert (current.link is not None) == (current.stage in LINKED)
