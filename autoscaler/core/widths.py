"""Width classes: which jobs a worker on an instance of N GPUs takes under the width convention.

A worker told its instance's width (`TDAS_INSTANCE_GPUS`) takes only jobs of its class: more
than half its GPUs and at most all of them (a one-GPU instance takes one-GPU jobs). Then each
instance runs one job at a time, a narrow job never pins a wide instance, and the autoscaler can
shape the fleet to the queue: one instance per waiting job, of that job's class.
"""

from __future__ import annotations

from collections.abc import Iterable


def takes(instance_gpus: int, job_gpus: int) -> bool:
    """Whether a worker on `instance_gpus` GPUs takes a job of `job_gpus` under the convention."""
    return job_gpus <= instance_gpus and (instance_gpus == 1 or 2 * job_gpus > instance_gpus)


def width_class(job_gpus: int, sizes: Iterable[int]) -> int:
    """The instance size a job of `job_gpus` goes on: the smallest allowed size that fits it
    (the widest allowed when none does: such a job cannot be placed, the caller reports it)."""
    ordered = sorted(sizes)
    return next((n for n in ordered if n >= job_gpus), ordered[-1])


def class_gpus(job_gpus: int) -> int:
    """GPUs of the instance a job holds under the convention with sizes 1, 2, 4, 8 (wider: its own)."""
    return width_class(job_gpus, (1, 2, 4, 8)) if job_gpus <= 8 else job_gpus
