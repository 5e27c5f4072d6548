"""One consolidation as one value, and its whole life in one transition function.

A replacement retires one instance (the candidate) for a cheaper one doing the same work, as
Karpenter's disruption `Command` carries its candidates and replacements:

    PLANNED -Created-> BOOTING -> DRAINING -> STOPPING -> RETIRED   (each arrow: a cycle's Seen)
       |--Lost--> CREATING -Created-> BOOTING
       |--Refused--> ABANDONED <-Seen: the new one gone or stopped- any linked stage

The policy plans it and stops the old one, the actuator reports the create's outcome, the
reconciler keeps or breaks the link each cycle; each asks `step` and carries out the effect it
gets. The store keeps only the link (the old instance's `retiring_for`) and, while a create's
reply is unknown, the journal's `replaces`: a linked stage follows from each cycle's `Seen`
alone, so it needs no column of its own. One candidate: the policy never plans more.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

from autoscaler.core.money import RUNNING_LIKE
from autoscaler.tensordock.models import InstanceStatus


class Stage(StrEnum):
    PLANNED = "planned"  # in a plan: the create is not sent yet
    CREATING = "creating"  # the create's reply was lost: the journal holds it until the listing tells
    BOOTING = "booting"  # the replacement exists (linked) and is not running yet
    DRAINING = "draining"  # the replacement runs; the old one is busy, or acted on this cycle
    STOPPING = "stopping"  # the replacement has taken over: stop the old one
    RETIRED = "retired"  # the old one no longer runs; linked until either instance goes
    ABANDONED = "abandoned"  # nothing made, or the replacement vanished or stopped: the old one stays


LINKED = frozenset({Stage.BOOTING, Stage.DRAINING, Stage.STOPPING, Stage.RETIRED})


class Effect(StrEnum):
    """What the caller does after a transition; each caller carries out the ones it can."""

    NONE = "none"
    LINK = "link"  # store: the old instance is retiring for `new_name`
    UNLINK = "unlink"  # store: the old instance is retiring for nothing
    STOP_OLD = "stop_old"  # plan: stop the old instance

    @property
    def writes_link(self) -> bool:
        """The store's link changes: made or broken (`Replacement.link` says to what)."""
        return self in (Effect.LINK, Effect.UNLINK)


@dataclass(frozen=True)
class Replacement:
    """The instance to retire (`old_id`), the one taking over (`new_name`, chosen when the create
    is sent; its offer and GPUs ride on the create action, whose alternatives may change the offer),
    and where it stands."""

    old_id: str
    new_name: str | None = None
    stage: Stage = Stage.PLANNED

    @classmethod
    def restored(cls, old_id: str, new_name: str) -> Replacement:
        """As the store remembers it: linked, at the first linked stage until this cycle is `Seen`."""
        return cls(old_id, new_name, Stage.BOOTING)

    @property
    def link(self) -> str | None:
        """The name the store records on the old instance: the new one's while linked."""
        return self.new_name if self.stage in LINKED else None


@dataclass(frozen=True)
class Created:
    """The replacement exists: the create's reply said so, or the listing shows a lost reply's name."""

    name: str


@dataclass(frozen=True)
class Lost:
    """The create's reply never came: the instance may exist."""

    name: str


@dataclass(frozen=True)
class Refused:
    """Nothing was made: every offer refused the create, or it failed outright."""


@dataclass(frozen=True)
class Seen:
    """One cycle's view of both instances."""

    new: InstanceStatus | None  # None: no instance of the replacement's name is listed
    old: InstanceStatus
    old_busy: bool | None = None  # None: the signal cannot tell
    awaited: bool = False  # the replacement's create is still unresolved in the journal
    old_touched: bool = False  # another action of this cycle's plan already acts on the old one


Event = Created | Lost | Refused | Seen


def step(current: Replacement, event: Event) -> tuple[Replacement, Effect]:
    """The next state and what to do about it. ABANDONED is final; an event that cannot happen
    at a stage (a `Seen` before the create, a second create) is a bug in the caller."""
    stage = current.stage
    if stage is Stage.ABANDONED:
        return current, Effect.NONE
    match event:
        case Created(name) if stage in (Stage.PLANNED, Stage.CREATING):
            return replace(current, new_name=name, stage=Stage.BOOTING), Effect.LINK
        case Lost(name) if stage is Stage.PLANNED:
            return replace(current, new_name=name, stage=Stage.CREATING), Effect.NONE
        case Refused() if stage in (Stage.PLANNED, Stage.CREATING):
            return replace(current, stage=Stage.ABANDONED), Effect.NONE
        case Seen() if stage in LINKED:
            return _seen(current, event)
    raise ValueError(f"a {stage} replacement cannot take {event!r}")


def _seen(current: Replacement, seen: Seen) -> tuple[Replacement, Effect]:
    """A linked replacement's stage follows from what the cycle sees, not from the stage before."""
    if not seen.awaited and seen.new not in RUNNING_LIKE:  # gone or stopped: the old one stays
        return replace(current, stage=Stage.ABANDONED), Effect.UNLINK
    if seen.new is not InstanceStatus.RUNNING:
        return replace(current, stage=Stage.BOOTING), Effect.NONE
    if seen.old is not InstanceStatus.RUNNING:
        return replace(current, stage=Stage.RETIRED), Effect.NONE
    if seen.old_busy is True or seen.old_touched:  # a busy one cannot hand over until its job ends
        return replace(current, stage=Stage.DRAINING), Effect.NONE
    return replace(current, stage=Stage.STOPPING), Effect.STOP_OLD
