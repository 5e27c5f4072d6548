"""One home for money: what an instance costs in each state, what the fleet has spent, and the
budgets it is held to.

Dependency-free values shared by the decision core, the ledger, the store and every view of cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from autoscaler.tensordock import InstanceStatus

RUNNING_LIKE = (InstanceStatus.STARTING, InstanceStatus.RUNNING)


# Rule 11: a status the daemon cannot read (or an error) may be billing: it costs the full rate.
BILLED_IN_FULL = (
    InstanceStatus.STARTING,
    InstanceStatus.RUNNING,
    InstanceStatus.STOPPING,
    InstanceStatus.UNKNOWN,
    InstanceStatus.ERROR,
)
COUNTED_AS_ACTIVE = (*RUNNING_LIKE, InstanceStatus.UNKNOWN, InstanceStatus.ERROR)  # against every bound


def billed_rate(status: InstanceStatus, rate_hourly: float, storage_rate_hourly: float) -> float:
    """What an instance costs right now: the full rate while up (or in doubt), its storage while stopped."""
    if status in BILLED_IN_FULL:
        return rate_hourly
    if status.is_stopped:
        return storage_rate_hourly
    return 0.0


@dataclass(frozen=True)
class Spend:
    """USD spent by the managed fleet, from the ledger (which survives restarts)."""

    today_usd: float = 0.0
    month_usd: float = 0.0
    total_usd: float = 0.0


@dataclass(frozen=True)
class Budgets:
    """USD the managed fleet may spend per UTC day and month (None: no such budget).

    The hourly cap is not here: it is a guard (`guards.max_hourly_spend`), one value for the whole
    fleet, which the snapshot carries to the policies."""

    daily_usd: float | None = None
    monthly_usd: float | None = None
