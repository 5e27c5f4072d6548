"""`tensordock-autoscaler status`: the fleet as TensorDock lists it, with what the store knows."""

from __future__ import annotations

import contextlib
from typing import Any

from autoscaler.core.snapshot import billed_rate
from autoscaler.engine.ledger import RateCheck, plausible_rate
from autoscaler.engine.reconcile import believable_gpus
from autoscaler.service.runtime import Runtime
from autoscaler.tensordock import TensorDockError

UNOWNED_DETAILS = 50  # GETs one `status` may spend on instances this fleet does not own


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _usd(rate: float | None) -> str:
    return "?" if rate is None else f"{rate:.3f}"


def fleet_status(runtime: Runtime) -> dict[str, Any]:
    """Read-only: one listing call, the store's records, the ledger. Nothing is changed."""
    now = runtime.engine.clock.now()
    owned = runtime.store.owned()
    rows: list[dict[str, Any]] = []
    details_left = UNOWNED_DETAILS
    for listed in runtime.client.list_instances():
        instance = listed
        record = owned.get(instance.id)
        if record is None and instance.rate_hourly is None and details_left > 0:
            details_left -= 1  # the documented listing says nothing of price: ask, a bounded number of times
            with contextlib.suppress(TensorDockError):
                detail = runtime.client.get_instance(instance.id)
                instance = listed.model_copy(update={"rate_hourly": detail.rate_hourly, "gpus": detail.gpus})
        managed = record is not None
        # An owned instance is what our record says (the documented listing says no more than its status).
        shape = record.shape if record is not None else None
        full_rate = instance.rate_hourly
        if record is not None:
            full_rate = record.seen_rate or record.expected_rate or full_rate
        rate: float | None = billed_rate(instance.status, full_rate or 0.0, record.storage_rate if record else 0.0)
        if not plausible_rate(rate, None, None, RateCheck(), gpus=believable_gpus(instance)):
            rate = None  # NaN, negative or absurd (rule 11): said as unknown, never summed or printed as nan
        rows.append(
            {
                "name": instance.name,
                "id": instance.id,
                "gpu_model": shape.gpu_model if shape else instance.gpu_model,
                "gpus": shape.gpus if shape else instance.gpu_count,
                "status": instance.status.value,
                "usd_per_hour": round(rate, 4) if rate is not None else None,
                "age_s": round(now - record.created_at) if record else None,
                "idle_s": round(now - record.idle_since) if record and record.idle_since else None,
                "managed": managed,
            }
        )
    spend = runtime.store.spend(now)
    return {
        "instances": rows,
        "managed_usd_per_hour": round(sum(r["usd_per_hour"] or 0.0 for r in rows if r["managed"]), 4),
        "unmanaged_usd_per_hour": round(sum(r["usd_per_hour"] or 0.0 for r in rows if not r["managed"]), 4),
        "spend_today_usd": round(spend.today_usd, 4),
    }


def render_status(status: dict[str, Any]) -> str:
    header = f"{'NAME':<26} {'ID':<36} {'GPU':<30} {'STATUS':<22} {'$/H':>8} {'AGE':>6} {'IDLE':>6}  MANAGED"
    lines = [header]
    for r in status["instances"]:
        gpu = f"{r['gpus']}x {r['gpu_model']}" if r["gpu_model"] else "-"
        lines.append(
            f"{(r['name'] or '-')[:26]:<26} {r['id']:<36} {gpu[:30]:<30} {r['status']:<22} "
            f"{_usd(r['usd_per_hour']):>8} {_duration(r['age_s']):>6} {_duration(r['idle_s']):>6}  "
            f"{'yes' if r['managed'] else 'no'}"
        )
    lines.append(
        f"fleet ${status['managed_usd_per_hour']:.3f}/h managed, ${status['unmanaged_usd_per_hour']:.3f}/h not;"
        f" spent today ${status['spend_today_usd']:.2f}"
    )
    return "\n".join(lines)
