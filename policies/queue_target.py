"""How many GPUs the queue needs: queued plus running work over `jobs_per_gpu`, within bounds."""

from __future__ import annotations

import math
from dataclasses import replace

from pydantic import Field, model_validator

from autoscaler.core.plan import Plan
from autoscaler.core.policy import BasePolicy, PolicyOptions
from autoscaler.core.snapshot import Snapshot
from autoscaler.core.widths import class_gpus


class QueueTargetOptions(PolicyOptions):
    jobs_per_gpu: float = Field(default=1.0, gt=0, description="jobs one GPU serves at once")
    activation_jobs: int = Field(default=1, ge=1, description="queued jobs needed to scale up from zero")
    max_step_up: int = Field(default=16, ge=1, description="most GPUs added per cycle")
    max_step_down: int = Field(default=16, ge=1, description="most GPUs removed per cycle")
    min_gpus: int = Field(default=0, ge=0)
    max_gpus: int | None = Field(
        default=None,
        ge=0,
        description="a cap of this policy's own below the fleet's; unset: the guards' max_gpus is the one fleet bound",
    )
    use_gpu_counts: bool = Field(default=True, description="use the GPUs jobs need when the signal reports them")

    @model_validator(mode="after")
    def _bounds(self) -> QueueTargetOptions:
        if self.max_gpus is not None and self.min_gpus > self.max_gpus:
            raise ValueError(f"min_gpus ({self.min_gpus}) must not exceed max_gpus ({self.max_gpus})")
        return self


class QueueTarget(BasePolicy[QueueTargetOptions]):
    name = "queue_target"
    Options = QueueTargetOptions

    def decide(self, snapshot: Snapshot, plan: Plan) -> Plan:
        demand = snapshot.demand
        o = self.options
        if demand is None:
            return replace(plan, floor_gpus=max(plan.floor_gpus, o.min_gpus)).note(
                "queue_target: demand unknown, holding"
            )
        needed = demand.gpus_needed if o.use_gpu_counts else None
        if o.use_gpu_counts and demand.queued_by_width is not None:
            # each job on an instance of its width class (autoscaler/core/widths.py): a 3-GPU job holds 4
            needed = sum(class_gpus(width) * count for width, count in demand.queued_by_width.items())
            needed += max(0, demand.queued_jobs - sum(demand.queued_by_width.values()))  # unsampled: one each
            if demand.running_by_width is not None:
                needed += sum(class_gpus(width) * count for width, count in demand.running_by_width.items())
            else:
                needed += demand.running_gpus if demand.running_gpus is not None else demand.running_jobs
        if needed is None:
            needed = math.ceil((demand.queued_jobs + demand.running_jobs) / o.jobs_per_gpu)
        current = snapshot.serving_gpus
        if current == 0 and demand.queued_jobs < o.activation_jobs:
            needed = 0
        target = max(needed, o.min_gpus)
        if o.max_gpus is not None:
            target = min(target, o.max_gpus)
        stepped = min(max(target, current - o.max_step_down), current + o.max_step_up)
        return replace(plan, desired_gpus=stepped, floor_gpus=max(plan.floor_gpus, o.min_gpus)).note(
            f"queue_target: {demand.queued_jobs} queued + {demand.running_jobs} running -> {needed} GPUs needed, "
            f"desired {stepped} (have {current})"
        )
