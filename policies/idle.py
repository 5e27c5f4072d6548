"""Housekeeping of the fleet's idle and broken instances.

Stops running instances idle past `idle_timeout_s` while nothing is queued (and the fleet keeps
its floor), deletes stopped instances once the storage they bill outweighs the faster restart
they offer (at most `stopped_retention_s`), and deletes instances whose GPUs were reclaimed or
that have reported an error for `errored_for_s`, so that `cheapest_throughput` replaces them with
working capacity.
"""

from __future__ import annotations

from pydantic import Field

from autoscaler.core.durations import Seconds
from autoscaler.core.plan import Action, ActionKind, Plan, delete_action, stop_action
from autoscaler.core.policy import BasePolicy, PolicyOptions
from autoscaler.core.snapshot import FleetInstance, Snapshot
from autoscaler.tensordock import InstanceStatus


class IdleOptions(PolicyOptions):
    idle_timeout_s: Seconds = Field(default=900.0, gt=0, description="seconds a running instance may sit idle")
    stopped_retention_s: Seconds = Field(
        default=24 * 3600.0, gt=0, description="seconds a stopped instance is kept, at most"
    )
    restart_saving_s: Seconds = Field(
        default=70.0,
        ge=0,
        description="boot seconds a restart saves over a create; a stopped instance is kept only while its "
        "storage costs less than that time at its running rate (0: keep for stopped_retention_s)",
    )
    replace_reclaimed: bool = Field(default=True, description="delete instances whose GPUs were taken")
    delete_errored: bool = Field(default=True, description="delete instances TensorDock reports in error")
    errored_for_s: Seconds = Field(
        default=300.0,
        ge=0,
        description="seconds an instance must stay in error, listing after listing, before it is deleted:"
        " one listing's word is no proof, and its worker may still be running a job",
    )


class Idle(BasePolicy[IdleOptions]):
    name = "idle"
    Options = IdleOptions

    def decide(self, snapshot: Snapshot, plan: Plan) -> Plan:
        o = self.options
        touched = plan.touched()
        actions: list[Action] = []
        floor = max(plan.floor_gpus, plan.desired_gpus or 0)
        spare = snapshot.serving_gpus - floor - sum(a.gpus for a in plan.actions if a.kind is ActionKind.STOP)
        nothing_queued = snapshot.demand is not None and snapshot.demand.queued_jobs == 0
        for instance in snapshot.instances:
            if instance.id in touched:
                continue
            reclaimed = instance.status is InstanceStatus.STOPPED_DISASSOCIATED or (
                instance.status is InstanceStatus.STOPPED and instance.start_refused
            )
            if reclaimed and o.replace_reclaimed:
                actions.append(self._delete(instance, "its GPUs were reclaimed by another renter; replacing it"))
            elif instance.status is InstanceStatus.ERROR and o.delete_errored and self._broken(snapshot, instance):
                minutes = self._status_for(snapshot, instance) / 60
                actions.append(self._delete(instance, f"TensorDock has reported it in error for {minutes:.0f} min"))
            elif instance.status is InstanceStatus.STOPPED and self._status_for(snapshot, instance) > self._retention_s(
                instance
            ):
                actions.append(
                    self._delete(
                        instance,
                        f"stopped {self._status_for(snapshot, instance) / 3600:.1f} h; its storage "
                        f"(${instance.storage_rate_hourly:.3f}/h) now outweighs the faster restart it buys",
                    )
                )
            elif (
                instance.status is InstanceStatus.RUNNING
                and nothing_queued
                and instance.busy is False
                and instance.idle_since is not None
                and snapshot.now - instance.idle_since > o.idle_timeout_s
                and instance.gpus <= spare
            ):
                spare -= instance.gpus
                actions.append(
                    stop_action(
                        instance,
                        f"idle {(snapshot.now - instance.idle_since) / 60:.0f} min with nothing queued",
                        self.name,
                    )
                )
        return plan.with_actions(*actions)

    def _retention_s(self, instance: FleetInstance) -> float:
        """Break-even: storage paid while stopped equals the boot time a restart saves, at its rate."""
        o = self.options
        if o.restart_saving_s <= 0 or instance.storage_rate_hourly <= 0:
            return o.stopped_retention_s
        return min(o.stopped_retention_s, o.restart_saving_s * instance.rate_hourly / instance.storage_rate_hourly)

    def _broken(self, snapshot: Snapshot, instance: FleetInstance) -> bool:
        """In error long enough to be believed, with demand known (rule 4) and no job known on it (rule 5)."""
        return (
            self._status_for(snapshot, instance) >= self.options.errored_for_s
            and snapshot.demand is not None
            and instance.busy is not True
        )

    @staticmethod
    def _status_for(snapshot: Snapshot, instance: FleetInstance) -> float:
        """Seconds in its present status (0 when the store has not seen it change)."""
        return snapshot.now - (instance.status_since if instance.status_since is not None else snapshot.now)

    def _delete(self, instance: FleetInstance, reason: str) -> Action:
        return delete_action(instance, reason, self.name)
