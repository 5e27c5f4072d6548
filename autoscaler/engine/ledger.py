"""The only writer of spend: what each owned instance is charged, from when, and at what rate.

The store integrates rates over time (left-point: a rate is in force until the next one). This
module decides the rates: the billed-rate rule of the snapshot, creates charged from their call,
starts charged from their call (over, never under, if the process dies during it), a start that
never happened or a stop nobody watched dated back to when it most likely took effect, and a
rate that cannot be true replaced by the last one that could (rule 11).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from autoscaler.engine.settling import StopDurations
from autoscaler.store import OwnedRecord, Store
from autoscaler.tensordock import InstanceStatus

_log = structlog.get_logger("autoscaler.ledger")


# USD per GPU-hour no TensorDock GPU is billed (an H100 lists at about 2.25): the ceiling where no
# offer says what to expect, and the most a rate above its offer's price is still charged at
MAX_GPU_RATE_HOURLY = 10.0


@dataclass(frozen=True)
class RateCheck:
    """How far a reported rateHourly may stray from what we expect before it is disbelieved."""

    max_multiple: float = 3.0  # of the instance's offer price, or of the dearest offer when that is unknown


def plausible_rate(
    rate: float | None,
    expected: float | None,
    dearest_offer: float | None,
    check: RateCheck,
    *,
    running: bool = False,
    gpus: int,
) -> bool:
    """A reported rate is believed only when finite, not negative, and not absurd for its offer:
    above `max_multiple` times its offer's price, or, while it runs, $0 or below its offer's price
    divided by `max_multiple` (a per-GPU rate given as the instance's, or a placeholder 0, would
    let the fleet past max_hourly_spend and the budgets). A stopped instance bills its storage:
    a low rate is no lie there. With no price to compare (no offer listed), above
    MAX_GPU_RATE_HOURLY for each of its `gpus` is absurd."""
    if rate is None or not math.isfinite(rate) or rate < 0:
        return False
    if running and (rate == 0 or (expected and rate * check.max_multiple < expected)):
        return False
    ceiling = expected if expected else dearest_offer
    if ceiling is None:
        return rate <= gpus * MAX_GPU_RATE_HOURLY
    return rate <= check.max_multiple * ceiling


def disbelieved_charge(
    rate: float | None, fallback: float, dearest_offer: float | None, check: RateCheck, *, gpus: int
) -> float:
    """What an instance whose reported rate is too far from its own offer's price is charged: the
    last believable rate (`fallback`), or the reported one where it is higher and still within
    `max_multiple` of the dearest listed offer of its width, or within MAX_GPU_RATE_HOURLY for
    each GPU (a listing that underprices every offer also underprices the dearest). Then such a
    listing cannot hide a real bill from max_hourly_spend and the budgets (rule 2), while a 1e300
    or an infinite rate is not believed at all (rule 11)."""
    if rate is None or not math.isfinite(rate):
        return fallback
    if rate > max(check.max_multiple * (dearest_offer or 0.0), gpus * MAX_GPU_RATE_HOURLY):
        return fallback
    return max(fallback, rate)


class Ledger:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.stop_durations = StopDurations(store)

    # -- from the actuator: charged from the call on ---------------------------------------------

    def opened(self, instance_id: str, rate_hourly: float, at: float) -> None:
        """A create that happened (its reply came, or its name was listed): billed from its call."""
        self.store.accrue(instance_id, rate_hourly, at)

    def changing(self, instance_id: str, rate_after: float, at: float) -> None:
        """A start: charged its full rate from the call, even if the process dies during it."""
        self.store.accrue(instance_id, rate_after, at)

    def closed(self, instance_id: str, at: float) -> None:
        """Deleted (or confirmed gone): nothing more from now."""
        self.store.accrue(instance_id, 0.0, at)

    # -- from reconciliation: what the listing shows ----------------------------------------------

    def charge(self, rates: Mapping[str, float], now: float, orphans: Mapping[str, float] | None = None) -> None:
        """The whole fleet's rates from now on, in one write; orphans' too (rule 11: counted in
        full), so a daily budget counts what a lost or restored store no longer knows."""
        self.store.accrue_many(dict(rates), now, clock_time=True)
        self.store.accrue_orphans(dict(orphans or {}), now)

    def settle_stopped(
        self,
        record: OwnedRecord,
        rate_now: float,
        now: float,
        watched: InstanceStatus | None,
    ) -> None:
        """A stopped instance the ledger still charges in full: date the drop to when it happened.

        A start that failed, or was cut short by a crash, with the instance still stopped, never
        changed the bill: back to the stopped rate from its call. A stop watched by our listings
        teaches how long stops take, measured from the call's reply (API latency is not the stop's);
        one seen only after a gap (this process is new, or newly leader) ended by its call plus the
        longest stop learned.
        """
        if record.last_rate is None or record.last_rate <= rate_now:
            return
        change = self.store.latest_change(record.id)
        if change is None or change.at > now:
            return
        settled_at: float | None = None
        # The reply's time, where one came: API latency is not the stop's. A call a crash cut short
        # was closed later by another process, at a time that says nothing of the stop.
        began = change.outcome_at if change.outcome == "ok" and change.outcome_at is not None else change.at
        if change.kind == "start":
            settled_at = change.at if change.outcome != "ok" else None
        elif change.kind == "stop":
            if watched is not None:
                if not watched.is_stopped:
                    self.stop_durations.learn(max(0.0, now - began))
            else:
                longest = self.stop_durations.longest()
                settled_at = None if longest is None else min(now, began + longest)
        if settled_at is not None:
            self.store.accrue(record.id, rate_now, settled_at)

    def rejected_rate(self, instance_id: str, name: str, rate: float | None, believed: float) -> None:
        _log.warning(
            "implausible_rate",
            instance=instance_id,
            name=name,
            reported=repr(rate),
            charged=round(believed, 6),
        )
