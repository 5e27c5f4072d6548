"""Replace dear instances with cheaper ones once demand has settled.

When the desired capacity has not moved for `steady_window_s` and an offer does the same work
for at least `min_saving_fraction` (and `min_saving_usd_hr`) less, plan a `Replacement`; once the
new one runs, stop the old one when it is not busy (`autoscaler.core.replacement.step` decides). One
replacement in flight at a time: a linked one, even retired, holds back the next.
"""

from __future__ import annotations

from pydantic import Field

from autoscaler.core.durations import Seconds
from autoscaler.core.plan import Action, ActionKind, Plan, stop_action
from autoscaler.core.policy import BasePolicy, PolicyOptions
from autoscaler.core.replacement import Effect, Replacement, Seen, step
from autoscaler.core.snapshot import FleetInstance, Snapshot
from autoscaler.tensordock import InstanceStatus


class ConsolidateOptions(PolicyOptions):
    steady_window_s: Seconds = Field(default=1800.0, gt=0, description="desired GPUs unchanged this long")
    min_saving_fraction: float = Field(default=0.2, gt=0, lt=1)
    min_saving_usd_hr: float = Field(default=0.05, ge=0)


class Consolidate(BasePolicy[ConsolidateOptions]):
    name = "consolidate"
    Options = ConsolidateOptions

    def decide(self, snapshot: Snapshot, plan: Plan) -> Plan:
        retiring = [(i, r) for i in snapshot.instances if (r := i.replacement)]
        if retiring:
            return self._finish(snapshot, plan, *retiring[0])
        if plan.actions or snapshot.pending_creates or not self._steady(snapshot, plan):
            return plan
        touched = plan.touched()
        running = [  # a busy instance cannot hand over until its job ends, which may be days away
            i
            for i in snapshot.instances
            if i.status is InstanceStatus.RUNNING and i.id not in touched and i.busy is not True
        ]
        best_swap: tuple[float, FleetInstance, Action] | None = None
        for instance in running:
            unit_now = snapshot.unit_price(instance.rate_hourly, instance.gpu_model, instance.gpus)
            for offer in snapshot.offers:
                if offer.key in snapshot.backed_off or not offer.fits(snapshot.shape, instance.gpus):
                    continue
                # priced as the guards price a create: a listing found to underprice ours is scaled up
                price = offer.hourly_price(snapshot.shape, instance.gpus) * snapshot.listed_price_factor
                unit = snapshot.unit_price(price, offer.gpu_model, instance.gpus)
                # the same work for less: scale the replacement's price to the old one's throughput
                equivalent = instance.rate_hourly * unit / unit_now if unit_now > 0 else price
                saving = instance.rate_hourly - equivalent
                if unit > unit_now * (1 - self.options.min_saving_fraction) or saving < self.options.min_saving_usd_hr:
                    continue
                if best_swap is None or saving > best_swap[0]:
                    action = Action(
                        ActionKind.CREATE,
                        f"consolidate: {offer.gpu_model} does {instance.name}'s work for ${saving:.3f}/h less",
                        self.name,
                        offer=offer,
                        gpus=instance.gpus,
                        gpu_model=offer.gpu_model,
                        hourly_delta=price,
                        replacement=Replacement(instance.id),
                    )
                    best_swap = (saving, instance, action)
        return plan.with_actions(best_swap[2]) if best_swap else plan

    def _finish(self, snapshot: Snapshot, plan: Plan, old: FleetInstance, replacement: Replacement) -> Plan:
        new = next((i for i in snapshot.instances if i.name == replacement.new_name), None)
        seen = Seen(
            new=new.status if new is not None else None,
            old=old.status,
            old_busy=old.busy,
            awaited=any(p.name == replacement.new_name for p in snapshot.pending_creates),
            old_touched=old.id in plan.touched(),
        )
        _, effect = step(replacement, seen)
        if effect is not Effect.STOP_OLD:
            return plan
        return plan.with_actions(stop_action(old, f"consolidate: {replacement.new_name} has taken over", self.name))

    def _steady(self, snapshot: Snapshot, plan: Plan) -> bool:
        """The same desired GPUs for the whole window: the value in force when it began, every
        sample inside it, and this cycle's."""
        history = snapshot.desired_history
        start = snapshot.now - self.options.steady_window_s
        if not history or history[0][0] > start or plan.desired_gpus is None:
            return False
        at_start = [d for t, d in history if t <= start][-1]
        window = [at_start, *(d for t, d in history if t > start), plan.desired_gpus]
        return min(window) == max(window) > 0
