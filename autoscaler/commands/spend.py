"""`tensordock-autoscaler spend`: what the fleet cost, per UTC day, from the ledger (SkyPilot's cost-report).

Hours are the ledger's dollars divided by the instance's running rate at creation (from the
journal), so they are billed hours: a stopped instance's storage adds a sliver, never a whole hour.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from autoscaler.store import Store

_BAR = 24


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d")


def spend_report(
    store: Store,
    now: float,
    days: int,
    daily_budget_usd: float | None = None,
    monthly_budget_usd: float | None = None,
) -> dict[str, Any]:
    """The last `days` UTC days up to `now`, oldest first, each with spend, instance-hours and GPU-hours by model."""
    today = datetime.fromtimestamp(now, tz=UTC).date()
    names = [(today - timedelta(days=back)).isoformat() for back in range(days - 1, -1, -1)]
    creates = store.creates()
    usd: dict[str, float] = defaultdict(float)
    instance_hours: dict[str, float] = defaultdict(float)
    gpu_hours: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for day, instance_id, dollars in store.ledger_since(names[0]):
        usd[day] += dollars
        entry = creates.get(instance_id)
        if entry is None or entry.hourly_price <= 0:
            continue  # adopted or unpriced: its dollars count, its hours cannot be told
        hours = dollars / entry.hourly_price
        model = (entry.offer_key or "unknown").rsplit("/", 1)[-1]
        instance_hours[day] += hours
        gpu_hours[day][model] += hours * max(1, entry.gpus)
    rows = [
        {
            "day": day,
            "usd": round(usd[day], 4),
            "instance_hours": round(instance_hours[day], 2),
            "gpu_hours": {m: round(h, 2) for m, h in sorted(gpu_hours[day].items()) if h > 0},
            "over_budget": daily_budget_usd is not None and usd[day] > daily_budget_usd,
        }
        for day in names
    ]
    return {
        "days": rows,
        "total_usd": round(sum(usd[d] for d in names), 4),
        "daily_budget_usd": daily_budget_usd,
        "monthly_budget_usd": monthly_budget_usd,
        "month_to_date_usd": round(store.spend(now).month_usd, 4),
    }


def render_spend(report: dict[str, Any], bars: bool) -> str:
    """A table, one line per day; with `bars` (a terminal) a short bar scaled to the dearest day or the budget."""
    budget = report["daily_budget_usd"]
    top = max([r["usd"] for r in report["days"]] + ([budget] if budget else []) + [1e-9])
    lines = [f"{'DAY':<10} {'SPEND':>10} {'INST-H':>7} {'GPU-H':>7}  GPU-HOURS BY MODEL"]
    for r in report["days"]:
        models = ", ".join(f"{h:g} {m}" for m, h in r["gpu_hours"].items()) or "-"
        gpu_total = sum(r["gpu_hours"].values())
        spent = "$" + format(r["usd"], ",.2f")
        line = f"{r['day']:<10} {spent:>10} {r['instance_hours']:>7.1f} {gpu_total:>7.1f}  {models}"
        if bars:
            filled = round(_BAR * r["usd"] / top)
            line += "  " + "█" * filled + "·" * (_BAR - filled) + (" over budget" if r["over_budget"] else "")
        elif r["over_budget"]:
            line += "  (over budget)"
        lines.append(line)
    footer = f"total ${report['total_usd']:,.2f} over {len(report['days'])} days"
    footer += f"; month to date ${report['month_to_date_usd']:,.2f}"
    if budget is not None:
        footer += f"; daily budget ${budget:,.2f}"
    if report["monthly_budget_usd"] is not None:
        footer += f"; monthly budget ${report['monthly_budget_usd']:,.2f}"
    lines.append(footer)
    return "\n".join(lines)
