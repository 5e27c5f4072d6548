"""What a cycle says at INFO: one summary line, then one line per action and one per refusal rule.

A quiet cycle is one line, so the log shows the daemon is alive without drowning what changed.
Refusals are grouped by rule with a count: the same guard refusing nine stops is one line.
Every line about an instance names it and gives its id.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from autoscaler.core.guards import Dropped
    from autoscaler.engine.cycle import CycleReport

_log = structlog.get_logger("autoscaler.cycle")
_TARGETS_SHOWN = 5


def _who(report: CycleReport, instance_id: str | None, name: str | None) -> tuple[str | None, str | None]:
    """(name, id) of an action's instance, the name looked up in the snapshot when the action has only the id."""
    snap = report.snapshot
    if name is None and instance_id is not None and snap is not None:
        found = snap.instance(instance_id)
        name = found.name if found is not None else None
    return name, instance_id


def summary_fields(report: CycleReport) -> dict[str, Any]:
    """The summary line's fields: demand, desired, active GPUs, $/h, actions, refusals, hold reason."""
    snap = report.snapshot
    fields: dict[str, Any] = {"cycle": report.cycle_id, "seconds": round(report.seconds, 3)}
    if report.error is not None:
        fields["error"] = report.error
        return fields
    if snap is not None:
        demand = snap.demand
        fields["demand"] = (
            "unknown" if demand is None else f"{demand.queued_jobs} queued, {demand.running_jobs} running"
        )
        fields["active_gpus"] = snap.active_gpus
        fields["usd_per_hour"] = round(snap.hourly_cost, 4)
    fields["desired_gpus"] = report.plan.desired_gpus if report.plan is not None else None
    fields["actions"] = len(report.results)
    fields["refused"] = len(report.guarded.dropped) if report.guarded is not None else 0
    if report.hold:
        fields["hold"] = report.hold
    return fields


def log_cycle(report: CycleReport) -> None:
    """Log one cycle as the operator reads it (see module docstring): the summary first."""
    log = _log.bind(cycle=report.cycle_id)
    fields = summary_fields(report)
    fields.pop("cycle")  # bound already
    log.info("cycle", **fields)
    for result in report.results:
        action = result.action
        name, instance_id = _who(report, result.instance_id or action.instance_id, result.name)
        log.info(
            "decision",
            action=action.kind.value,
            name=name,
            instance=instance_id or name,
            gpu_model=action.gpu_model,
            gpus=action.gpus,
            reason=action.reason,
            policy=action.policy,
            usd_per_hour=round(action.hourly_delta, 4),
            outcome=result.outcome,
            error=result.error,
        )
    if report.guarded is None:
        return
    by_rule: dict[str, list[Dropped]] = defaultdict(list)
    for dropped in report.guarded.dropped:
        by_rule[dropped.rule].append(dropped)
    for rule, group in by_rule.items():
        targets: Counter[str] = Counter()
        for d in group:
            name, instance_id = _who(report, d.action.instance_id, None)
            if instance_id is not None:
                targets[f"{name} ({instance_id})" if name else instance_id] += 1
            else:  # a create: what it would have bought
                targets[f"{d.action.gpus}x {d.action.gpu_model}"] += 1
        log.info(
            "action_refused",
            rule=rule,
            count=len(group),
            actions=sorted({d.action.kind.value for d in group}),
            why=group[0].why,
            policies=sorted({d.action.policy for d in group}),
            targets=[f"{n}x {t}" if n > 1 else t for t, n in targets.most_common(_TARGETS_SHOWN)],
        )
