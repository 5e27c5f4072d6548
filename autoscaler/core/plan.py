"""What policies produce: a desired capacity and the actions to get there, each with its reason."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum

from autoscaler.core.replacement import Replacement, Stage
from autoscaler.core.snapshot import FleetInstance, Offer


class ActionKind(StrEnum):
    CREATE = "create"
    START = "start"
    STOP = "stop"
    DELETE = "delete"

    @property
    def adds_capacity(self) -> bool:
        return self in (ActionKind.CREATE, ActionKind.START)


@dataclass(frozen=True)
class Action:
    """One mutating call. `hourly_delta` is its $/h effect; `alternatives` are offers to try in order
    when `offer` turns out to have no capacity."""

    kind: ActionKind
    reason: str
    policy: str
    instance_id: str | None = None
    offer: Offer | None = None
    alternatives: tuple[Offer, ...] = ()
    gpus: int = 0
    gpu_model: str | None = None
    hourly_delta: float = 0.0
    replacement: Replacement | None = None  # consolidation: the planned one this create makes
    rate_after: float | None = None  # $/h the instance bills once the call is made (start: the full rate)
    # A spending limit asks for it: a scale-down not held back by the stabilization window (rule 6),
    # still by every other rule (busy, cooldown, hold). Set by the budget policy; any plugin may.
    spend_limit: bool = False
    # Room made on a host: the deletes of the fleet's own stopped instances there and the create they
    # make room for share this tag, and go or stay together (`whole_rooms`).
    room: str | None = None

    def __post_init__(self) -> None:
        if self.kind is ActionKind.CREATE:
            if self.offer is None or self.gpus < 1:
                raise ValueError("a create needs an offer and at least one GPU")
        elif not self.instance_id:
            raise ValueError(f"a {self.kind} needs an instance_id")
        if self.replacement is not None and (
            self.kind is not ActionKind.CREATE or self.replacement.stage is not Stage.PLANNED
        ):
            raise ValueError("only a create carries a replacement, and only a planned one")

    @property
    def target(self) -> str:
        return self.instance_id or (self.offer.key if self.offer else "?")


def whole_rooms(
    actions: Sequence[Action], planned: Sequence[Action] | None = None
) -> tuple[list[Action], list[Action]]:
    """(kept, dropped): a room's deletes and its create go together or not at all. A delete whose
    create was refused or cut would free a host for nothing; a create whose delete was refused
    would be tried on a host still full, refused, and back the host's offer off. `planned` (default
    `actions`) is what the room was planned as, before any of it was dropped."""
    planned_size = Counter(a.room for a in (actions if planned is None else planned) if a.room)
    size = Counter(a.room for a in actions if a.room)
    creates = {a.room for a in actions if a.room and a.kind is ActionKind.CREATE}
    whole = {room for room in creates if size[room] >= planned_size[room]}
    kept = [a for a in actions if not a.room or a.room in whole]
    return kept, [a for a in actions if a.room and a.room not in whole]


@dataclass(frozen=True)
class Plan:
    """Passed down the policy chain; each policy returns a new one."""

    desired_gpus: int | None = None  # None: no policy has an opinion; nothing scales
    floor_gpus: int = 0
    actions: tuple[Action, ...] = ()
    notes: tuple[str, ...] = field(default=())
    # a policy wanted capacity that no listed offer had: a cached listing may be stale, so the
    # engine reads it again sooner (`offer_refresh_short_s`) than its regular refresh
    offers_short: bool = False

    def with_actions(self, *actions: Action) -> Plan:
        return replace(self, actions=self.actions + actions)

    def without(self, dropped: set[int]) -> Plan:
        return replace(self, actions=tuple(a for i, a in enumerate(self.actions) if i not in dropped))

    def note(self, text: str) -> Plan:
        return replace(self, notes=(*self.notes, text))

    def short_of_offers(self, text: str) -> Plan:
        """No listed offer has what the policy wanted: say so, and ask for a fresh listing."""
        return replace(self, notes=(*self.notes, text), offers_short=True)

    def touched(self) -> set[str]:
        return {a.instance_id for a in self.actions if a.instance_id}


def _on_instance(
    kind: ActionKind,
    instance: FleetInstance,
    reason: str,
    policy: str,
    hourly_delta: float,
    *,
    rate_after: float | None = None,
) -> Action:
    return Action(
        kind,
        reason,
        policy,
        instance_id=instance.id,
        gpus=instance.gpus,
        gpu_model=instance.gpu_model,
        hourly_delta=hourly_delta,
        rate_after=rate_after,
    )


def stop_action(instance: FleetInstance, reason: str, policy: str) -> Action:
    """Stop: it keeps billing its storage, so the $/h effect is storage minus the full rate."""
    return _on_instance(ActionKind.STOP, instance, reason, policy, instance.storage_rate_hourly - instance.rate_hourly)


def start_action(instance: FleetInstance, reason: str, policy: str) -> Action:
    """Start: TensorDock bills the full rate from the call on, so the ledger does too."""
    return _on_instance(
        ActionKind.START,
        instance,
        reason,
        policy,
        instance.rate_hourly - instance.storage_rate_hourly,
        rate_after=instance.rate_hourly,
    )


def delete_action(instance: FleetInstance, reason: str, policy: str) -> Action:
    """Delete: whatever it costs now stops."""
    return _on_instance(ActionKind.DELETE, instance, reason, policy, -instance.current_rate_hourly)
