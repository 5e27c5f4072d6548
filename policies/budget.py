"""Spend limits: the guards' hourly ceiling, and daily and monthly budgets read from the ledger.

A budget allows the fleet the $/h its remainder can pay for `horizon_s` (or to the end of the
period, if sooner). Trims capacity the plan would add, dearest per unit of work first; if the
fleet is over the ceiling even so (prices rose, budget ran out), it stops running instances that
are not busy, again dearest per unit first. The hourly ceiling is the guards' `max_hourly_spend`
(the snapshot carries it): the guards refuse what would pass it, in plan order; this policy chooses
what goes, and stops what is already over.

Why a horizon and not the remainder spread evenly over the rest of the day: spreading held the
fleet to budget/24 $/h at midnight, below one wide instance, and let it buy freely in the
evening; the same jobs then waited, narrow ones pinned the wide instances there were, and the
work cost more (a 4-day slice of trace b: $235 under a $30 daily budget never reached by
spending, $136 without). A budget that is never reached now never changes a decision.
"""

from __future__ import annotations

import calendar
import dataclasses
import math
from datetime import UTC, datetime

from pydantic import Field

from autoscaler.core.durations import Seconds
from autoscaler.core.money import Budgets
from autoscaler.core.plan import Plan, stop_action
from autoscaler.core.policy import BasePolicy, PolicyOptions
from autoscaler.core.snapshot import Snapshot
from autoscaler.tensordock import InstanceStatus


class BudgetOptions(PolicyOptions):
    max_hourly_spend: float | None = Field(
        default=None,
        ge=0,
        description="deprecated: set guards.max_hourly_spend, the one hourly cap (the configuration moves this"
        " there, and refuses a value that differs from it); never read by the policy",
    )
    daily_budget_usd: float | None = Field(default=None, ge=0, description="USD per UTC day")
    monthly_budget_usd: float | None = Field(default=None, ge=0, description="USD per UTC month")
    horizon_s: Seconds = Field(
        default=3600.0,
        gt=0,
        description="a budget's remainder must pay for the fleet this long (or to the period's end, if sooner)",
    )


class Budget(BasePolicy[BudgetOptions]):
    name = "budget"
    Options = BudgetOptions

    def spend_limits(self) -> Budgets:
        return Budgets(daily_usd=self.options.daily_budget_usd, monthly_usd=self.options.monthly_budget_usd)

    def _ceiling(self, snapshot: Snapshot) -> tuple[float, str]:
        """The $/h the fleet may run at now: the guards' hourly cap, or what spreads a budget's rest to its end."""
        o = self.options
        ceiling, why = math.inf, ""
        if snapshot.max_hourly_spend is not None:
            ceiling, why = snapshot.max_hourly_spend, f"max_hourly_spend ${snapshot.max_hourly_spend:g}/h"
        now = datetime.fromtimestamp(snapshot.now, tz=UTC)
        hours_left_today = max((24 - now.hour - now.minute / 60 - now.second / 3600), 1 / 60)
        days_in_month = calendar.monthrange(now.year, now.month)[1]
        hours_left_month = max((days_in_month - now.day) * 24 + hours_left_today, 1 / 60)
        for budget, spent, hours, label in (
            (o.daily_budget_usd, snapshot.spend.today_usd, hours_left_today, "daily"),
            (o.monthly_budget_usd, snapshot.spend.month_usd, hours_left_month, "monthly"),
        ):
            if budget is None:
                continue
            pace = max(budget - spent, 0.0) / min(hours, o.horizon_s / 3600)
            if pace < ceiling:
                ceiling, why = pace, f"{label} budget ${budget:g} (spent ${spent:.2f}, ${pace:.2f}/h affordable)"
        return ceiling, why

    def decide(self, snapshot: Snapshot, plan: Plan) -> Plan:
        ceiling, why = self._ceiling(snapshot)
        if math.isinf(ceiling):
            return plan
        projected = snapshot.hourly_cost + sum(snapshot.priced(a) for a in plan.actions)
        if projected <= ceiling + 1e-9:
            return plan
        actions = plan.actions
        adds = sorted(
            (i for i, a in enumerate(actions) if a.kind.adds_capacity),
            key=lambda i: -snapshot.unit_price(actions[i].hourly_delta, actions[i].gpu_model, max(actions[i].gpus, 1)),
        )
        dropped: set[int] = set()
        for index in adds:
            if projected <= ceiling + 1e-9:
                break
            dropped.add(index)
            projected -= snapshot.priced(plan.actions[index])
        trimmed = plan.without(dropped)
        if dropped:
            trimmed = trimmed.note(f"budget: dropped {len(dropped)} scale-up actions to stay under {why}")
        if projected <= ceiling + 1e-9:
            return trimmed
        touched = trimmed.touched()
        running = sorted(
            (
                i
                for i in snapshot.instances
                if i.status is InstanceStatus.RUNNING and i.busy is not True and i.id not in touched
            ),
            key=lambda i: -snapshot.unit_price(i.rate_hourly, i.gpu_model, i.gpus),
        )
        stops = []
        for instance in running:
            if projected <= ceiling + 1e-9:
                break
            delta = instance.storage_rate_hourly - instance.rate_hourly
            stop = stop_action(instance, f"over {why}: fleet at ${projected:.2f}/h", self.name)
            stops.append(dataclasses.replace(stop, spend_limit=True))
            projected += delta
        return trimmed.with_actions(*stops)
