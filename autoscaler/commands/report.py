"""Human and JSON renderings of a cycle, for `plan` (and later `run` and `status`)."""

from __future__ import annotations

from typing import Any

from autoscaler.core.plan import Action
from autoscaler.engine.cycle import CycleReport


def _action(action: Action) -> dict[str, Any]:
    return {
        "action": action.kind.value,
        "target": action.target,
        "gpus": action.gpus,
        "gpu_model": action.gpu_model,
        "usd_per_hour": round(action.hourly_delta, 4),
        "reason": action.reason,
        "policy": action.policy,
    }


def cycle_as_dict(report: CycleReport) -> dict[str, Any]:
    snap = report.snapshot
    out: dict[str, Any] = {"cycle": report.cycle_id, "error": report.error, "hold": report.hold}
    if snap is not None:
        demand = snap.demand
        out["snapshot"] = {
            "demand": None
            if demand is None
            else {"queued": demand.queued_jobs, "running": demand.running_jobs, "source": demand.source},
            "demand_error": snap.demand_error,
            "instances": [
                {
                    "id": i.id,
                    "name": i.name,
                    "status": i.status.value,
                    "gpu_model": i.gpu_model,
                    "gpus": i.gpus,
                    "usd_per_hour": round(i.current_rate_hourly, 4),
                    "busy": i.busy,
                }
                for i in snap.instances
            ],
            "unowned": len(snap.unowned),
            "orphans": [o.name for o in report.orphans],
            "active_gpus": snap.active_gpus,
            "usd_per_hour": round(snap.hourly_cost, 4),
            "spend_today_usd": round(snap.spend.today_usd, 4),
            "offers": len(snap.offers),
        }
    if report.plan is not None:
        out["desired_gpus"] = report.plan.desired_gpus
        out["notes"] = list(report.plan.notes)
    out["actions"] = [_action(a) for a in report.safety] + (
        [_action(a) for a in report.guarded.actions] if report.guarded else []
    )
    out["refused"] = (
        [{**_action(d.action), "rule": d.rule, "why": d.why} for d in report.guarded.dropped] if report.guarded else []
    )
    out["results"] = [
        {"action": r.action.kind.value, "outcome": r.outcome, "instance": r.instance_id or r.name, "error": r.error}
        for r in report.results
    ]
    return out


def cycle_as_text(report: CycleReport) -> str:
    data = cycle_as_dict(report)
    lines = [f"cycle {data['cycle']}"]
    if data["error"]:
        lines.append(f"  ERROR: {data['error']}")
    snap = data.get("snapshot")
    if snap:
        demand = snap["demand"]
        lines.append(
            "  demand: "
            + (
                f"{demand['queued']} queued, {demand['running']} running ({demand['source']})"
                if demand
                else f"UNKNOWN ({snap['demand_error']})"
            )
        )
        lines.append(
            f"  fleet: {len(snap['instances'])} instances, {snap['active_gpus']} GPUs active, "
            f"${snap['usd_per_hour']:.3f}/h, spent today ${snap['spend_today_usd']:.2f}; "
            f"{snap['offers']} offers; {snap['unowned']} unmanaged"
        )
        for inst in snap["instances"]:
            lines.append(
                f"    {inst['name']:<24} {inst['status']:<12} {inst['gpus']}x {inst['gpu_model']}"
                f"  ${inst['usd_per_hour']:.3f}/h"
            )
    if data.get("desired_gpus") is not None:
        lines.append(f"  desired GPUs: {data['desired_gpus']}")
    if data["hold"]:
        lines.append(f"  HOLD: {data['hold']}")
    lines.append(f"  actions ({len(data['actions'])}):" if data["actions"] else "  actions: none")
    for a in data["actions"]:
        lines.append(
            f"    {a['action']:<6} {a['target'][:40]:<40} {a['gpus']}x {a['gpu_model']}  "
            f"{a['usd_per_hour']:+.3f} $/h  ({a['policy']}: {a['reason']})"
        )
    for a in data["refused"]:
        lines.append(f"    refused {a['action']} {a['target'][:40]} by {a['rule']}: {a['why']}")
    return "\n".join(lines)
