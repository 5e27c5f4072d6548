"""The safety rules of DESIGN.md that no policy can override, applied to every plan.

Each rule drops actions with a reason, so the log says what was asked and why it was refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, model_validator

from autoscaler.core.durations import Seconds
from autoscaler.core.plan import Action, ActionKind, Plan
from autoscaler.core.snapshot import GuardMemory, Snapshot

__all__ = ["Dropped", "GuardConfig", "GuardMemory", "GuardedPlan", "apply_guards"]
from autoscaler.tensordock import InstanceStatus


class GuardConfig(BaseModel):
    """Hard limits and pacing; units are in the names."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    min_gpus: int = Field(default=0, ge=0, description="capacity kept even when demand is unknown")
    max_gpus: int = Field(default=16, ge=0, description="GPUs running or on their way, never more")
    max_instances: int = Field(default=16, ge=0, description="instances running or on their way, never more")
    max_hourly_spend: float | None = Field(default=None, ge=0, description="USD/h of the managed fleet, never more")
    scale_up_cooldown_s: Seconds = Field(default=0.0, ge=0, description="after a scale-up, wait before the next")
    scale_down_cooldown_s: Seconds = Field(default=0.0, ge=0, description="after a scale-down, wait before the next")
    scale_down_delay_s: Seconds = Field(
        default=60.0, ge=0, description="demand must stay low this long before capacity is stopped"
    )
    max_actions_per_cycle: int = Field(default=10, ge=0, description="mutating calls per cycle, at most")

    @model_validator(mode="after")
    def _min_within_max(self) -> GuardConfig:
        if self.min_gpus > self.max_gpus:
            raise ValueError(f"min_gpus ({self.min_gpus}) is more than max_gpus ({self.max_gpus})")
        return self


GUARD_RULES = (
    "ownership",
    "doubt",
    "transitional",
    "busy",
    "hold",
    "cooldown",
    "max_gpus",
    "max_instances",
    "max_hourly_spend",
    "stabilization",
    "max_actions_per_cycle",
)
"""Every rule name a refusal can carry: exported at 0 from start-up, so a panel never says "No data"."""


@dataclass(frozen=True)
class Dropped:
    action: Action
    rule: str
    why: str


@dataclass(frozen=True)
class GuardedPlan:
    plan: Plan
    actions: tuple[Action, ...]
    dropped: tuple[Dropped, ...] = field(default=())


def _removes_capacity(action: Action, snapshot: Snapshot) -> bool:
    """Stopping or deleting a running instance reduces capacity; deleting a stopped one does not."""
    if action.kind is ActionKind.STOP:
        return True
    if action.kind is ActionKind.DELETE:
        instance = snapshot.instance(action.instance_id or "")
        return instance is not None and instance.status in (InstanceStatus.RUNNING, InstanceStatus.STARTING)
    return False


def apply_guards(snapshot: Snapshot, plan: Plan, config: GuardConfig, memory: GuardMemory) -> GuardedPlan:
    kept: list[Action] = []
    dropped: list[Dropped] = []

    def drop(action: Action, rule: str, why: str) -> None:
        dropped.append(Dropped(action, rule, why))

    owned = {i.id: i for i in snapshot.instances}
    gpus = snapshot.active_gpus
    instances = snapshot.active_instances
    cost = snapshot.hourly_cost
    floor = max(config.min_gpus, plan.floor_gpus)
    now = snapshot.now

    # The history is a step function (changes only): the window holds the value in force when it
    # opened, every change since, and this cycle's.
    window_start = now - config.scale_down_delay_s
    in_force = [d for t, d in snapshot.desired_history if t <= window_start][-1:]
    desired_window = in_force + [d for t, d in snapshot.desired_history if t > window_start]
    if plan.desired_gpus is not None:
        desired_window.append(plan.desired_gpus)
    history_covers_delay = memory.history_since is not None and memory.history_since <= now - config.scale_down_delay_s
    recent_peak = max(desired_window) if desired_window else None
    removable = 0
    if snapshot.demand is not None and recent_peak is not None and history_covers_delay:
        removable = max(0, gpus - max(recent_peak, floor))
    scale_up_blocked = (
        memory.last_scale_up_at is not None and now - memory.last_scale_up_at < config.scale_up_cooldown_s
    )
    scale_down_blocked = (
        memory.last_scale_down_at is not None and now - memory.last_scale_down_at < config.scale_down_cooldown_s
    )

    for action in plan.actions:
        instance = owned.get(action.instance_id or "") if action.instance_id else None
        # Rule 1: only what this fleet owns.
        if action.kind is not ActionKind.CREATE and instance is None:
            drop(action, "ownership", f"{action.instance_id} is not owned by this fleet")
            continue
        # Rule 11: an instance whose status or shape the daemon cannot know is never acted on by a guess.
        if instance is not None and (instance.doubt or instance.status is InstanceStatus.UNKNOWN):
            why = instance.doubt or "its status is unknown"
            drop(action, "doubt", f"{instance.name}: {why}; left alone until it resolves")
            continue
        # Wait out transitional states instead of acting twice.
        if instance is not None and instance.status.is_transitional:
            drop(action, "transitional", f"{instance.name} is {instance.status.value}; waiting")
            continue
        # Rule 5: never stop a busy instance.
        if action.kind in (ActionKind.STOP, ActionKind.DELETE) and instance is not None and instance.busy is True:
            drop(action, "busy", f"{instance.name} is running a job")
            continue
        removes = _removes_capacity(action, snapshot)
        if action.kind.adds_capacity:
            # Rule 4: with demand unknown, nothing beyond the minimum.
            if snapshot.demand is None and gpus + action.gpus > floor:
                drop(action, "hold", f"demand unknown ({snapshot.demand_error or 'stale'}); holding at {floor} GPUs")
                continue
            if scale_up_blocked:
                drop(action, "cooldown", f"scale-up cooldown {config.scale_up_cooldown_s:g}s")
                continue
            # Rule 2: bounds, counting instances still being created or started.
            if gpus + action.gpus > config.max_gpus:
                drop(action, "max_gpus", f"{gpus}+{action.gpus} GPUs would exceed max_gpus {config.max_gpus}")
                continue
            if instances + 1 > config.max_instances:
                drop(action, "max_instances", f"{instances}+1 would exceed max_instances {config.max_instances}")
                continue
            if config.max_hourly_spend is not None and cost + action.hourly_delta > config.max_hourly_spend + 1e-9:
                drop(
                    action,
                    "max_hourly_spend",
                    f"${cost:.2f}+${action.hourly_delta:.2f}/h would exceed ${config.max_hourly_spend:g}/h",
                )
                continue
        elif removes:
            if snapshot.demand is None:
                drop(action, "hold", f"demand unknown ({snapshot.demand_error or 'stale'}); no scale-down")
                continue
            if scale_down_blocked:
                drop(action, "cooldown", f"scale-down cooldown {config.scale_down_cooldown_s:g}s")
                continue
            # Rule 6: scale down only what demand has not wanted for scale_down_delay.
            if action.gpus > removable and not action.spend_limit:
                drop(
                    action,
                    "stabilization",
                    f"demand wanted {recent_peak} GPUs within {config.scale_down_delay_s:g}s "
                    f"(or history too short); {removable} may go",
                )
                continue
            removable -= action.gpus
        # Rule 7: bounded work per cycle.
        if len(kept) >= config.max_actions_per_cycle:
            drop(action, "max_actions_per_cycle", f"{config.max_actions_per_cycle} actions already this cycle")
            continue
        kept.append(action)
        if action.kind.adds_capacity:  # a stop frees nothing this cycle: the instance bills until it is down
            gpus += action.gpus
            instances += 1
            cost += action.hourly_delta
    return GuardedPlan(plan, tuple(kept), tuple(dropped))
