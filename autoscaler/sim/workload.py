"""The simulated job queue and its workers, and the demand signal the engine reads from them.

Jobs wait in a FIFO queue with EASY backfill: the first job that cannot start reserves the
instance that frees up for it soonest, and smaller jobs run anywhere they fit without delaying
that reservation. A job of `gpus` GPUs runs on one instance for `duration / throughput(model)`.
An instance takes jobs once it runs and its worker is up: cloud-init after a create, a quick
service start after a restart. What the engine sees is what a real queue would report: queued
and running jobs and GPUs, the widest waiting job, and per-instance busy flags.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from autoscaler.core.widths import takes
from autoscaler.signals import Demand
from autoscaler.tensordock.fake import FakeTensorDock

from .trace import Job


@dataclass(frozen=True)
class WorkerTimings:
    """Seconds from `running` until the worker takes jobs (field notes: 60-90 s of cloud-init)."""

    cloud_init_s: tuple[float, float] = (60.0, 90.0)
    restart_s: float = 15.0


@dataclass
class _Running:
    job: Job
    started: float
    end: float


@dataclass
class _Worker:
    name: str
    gpus: int
    throughput: float
    ready_at: float
    jobs: list[_Running] = field(default_factory=list)

    @property
    def free(self) -> int:
        return self.gpus - sum(r.job.gpus for r in self.jobs)

    def runtime(self, job: Job) -> float:
        return job.duration / self.throughput

    def free_enough_at(self, gpus: int, now: float) -> float:
        """When `gpus` GPUs will be free here if nothing else starts (inf: never, too small)."""
        if gpus > self.gpus:
            return float("inf")
        free = self.free
        if free >= gpus:
            return now
        for running in sorted(self.jobs, key=lambda r: r.end):
            free += running.job.gpus
            if free >= gpus:
                return running.end
        return float("inf")


class Workload:
    """The queue and its workers on the fake's instances; also the engine's demand signal."""

    name = "trace"

    def __init__(
        self,
        jobs: list[Job],
        state: FakeTensorDock,
        throughput: Mapping[str, float],
        origin: float,
        *,
        timings: WorkerTimings | None = None,
        seed: int = 0,
        width_classes: bool = False,
    ) -> None:
        self.jobs = jobs
        self.width_classes = width_classes
        self.state = state
        self.throughput = throughput
        self.origin = origin
        self.timings = timings or WorkerTimings()
        self.rng = random.Random(seed)
        self.now = origin
        self.queue: list[Job] = []
        self.workers: dict[str, _Worker] = {}  # by instance id
        self.waits: dict[int, float] = {}  # job index -> seconds from submission to start
        self.ends: dict[int, float] = {}  # job index -> when it ends (or ended)
        self.completed = 0
        self.preempted = 0  # jobs whose instance went away under them: must stay 0
        self.finished_at: float | None = None  # when the last job completed
        self._next_arrival = 0
        self._booted: set[str] = set()

    # -- the world moves -------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.completed == len(self.jobs)

    @property
    def next_arrival(self) -> float | None:
        """When the next job is submitted, if any is still to come."""
        if self._next_arrival < len(self.jobs):
            return self.origin + self.jobs[self._next_arrival].submit
        return None

    def next_event(self) -> float | None:
        """The next arrival, completion or worker coming up, whichever is first."""
        times = [arrival] if (arrival := self.next_arrival) is not None else []
        for worker in self.workers.values():
            times.extend(r.end for r in worker.jobs)
            if worker.ready_at > self.now:
                times.append(worker.ready_at)
        return min(times) if times else None

    def advance(self, until: float) -> None:
        while (at := self.next_event()) is not None and at <= until:
            self._step(max(at, self.now))
        self.now = max(self.now, until)

    def _step(self, now: float) -> None:
        self.now = now
        for worker in self.workers.values():
            finished = [r for r in worker.jobs if r.end <= now]
            if finished:
                worker.jobs = [r for r in worker.jobs if r.end > now]
                self.completed += len(finished)
                if self.done:
                    self.finished_at = now
        while self._next_arrival < len(self.jobs) and self.origin + self.jobs[self._next_arrival].submit <= now:
            self.queue.append(self.jobs[self._next_arrival])
            self._next_arrival += 1
        self._schedule(now)

    def _schedule(self, now: float) -> None:
        ready = [w for w in self.workers.values() if w.ready_at <= now]
        if not self.queue or not ready:
            return
        reserved: tuple[_Worker, float] | None = None
        waiting: list[Job] = []
        for job in self.queue:
            takers = [w for w in ready if takes(w.gpus, job.gpus)] if self.width_classes else ready
            fits = [w for w in takers if w.free >= job.gpus]
            if reserved is not None:
                holder, shadow = reserved
                fits = [w for w in fits if w is not holder or now + w.runtime(job) <= shadow]
            if fits:
                worker = min(fits, key=lambda w: (w.free, -w.throughput, w.name))
                worker.jobs.append(_Running(job, now, now + worker.runtime(job)))
                self.waits[job.index] = now - (self.origin + job.submit)
                self.ends[job.index] = now + worker.runtime(job)
                continue
            waiting.append(job)
            if reserved is None and takers:
                soonest = min(takers, key=lambda w: (w.free_enough_at(job.gpus, now), w.name))
                at = soonest.free_enough_at(job.gpus, now)
                if at != float("inf"):
                    reserved = (soonest, at)
        self.queue = waiting

    def observe_fleet(self) -> None:
        """After a cycle: workers boot on instances that start, and leave those that stop or go."""
        with self.state.lock:
            self.state.settle()
            instances = {inst.id: inst for inst in self.state.instances()}
        for instance_id, worker in list(self.workers.items()):
            inst = instances.get(instance_id)
            if inst is None or inst.phase in ("stopping", "stopped"):
                if worker.jobs:  # the engine must never do this (rule 5); counted and requeued
                    self.preempted += len(worker.jobs)
                    self.queue = sorted([r.job for r in worker.jobs] + self.queue, key=lambda j: (j.submit, j.index))
                del self.workers[instance_id]
        for instance_id, inst in instances.items():
            if instance_id in self.workers or inst.phase not in ("starting", "running") or not inst.gpu_model:
                continue
            throughput = float(self.throughput.get(inst.gpu_model, 0.0))
            if throughput <= 0:
                continue
            up_at = inst.settles_at if inst.phase == "starting" and inst.settles_at is not None else self.now
            if instance_id in self._booted:
                ready_at = up_at + self.timings.restart_s
            else:
                ready_at = up_at + self.rng.uniform(*self.timings.cloud_init_s)
                self._booted.add(instance_id)
            self.workers[instance_id] = _Worker(inst.name, inst.gpu_count, throughput, ready_at)

    # -- what the engine reads ---------------------------------------------------------------------

    @property
    def running_gpus(self) -> int:
        return sum(r.job.gpus for w in self.workers.values() for r in w.jobs)

    def read(self, now: float) -> Demand:
        self.advance(now)
        return Demand(
            queued_jobs=len(self.queue),
            running_jobs=sum(len(w.jobs) for w in self.workers.values()),
            observed_at=now,
            queued_gpus=sum(job.gpus for job in self.queue),
            running_gpus=self.running_gpus,
            max_job_gpus=max((job.gpus for job in self.queue), default=1),
            busy={w.name: bool(w.jobs) for w in self.workers.values()},
            source=self.name,
            queued_by_width=dict(Counter(job.gpus for job in self.queue)),
            oldest_queued_at=min((self.origin + job.submit for job in self.queue), default=None),
            running_by_width=dict(Counter(r.job.gpus for w in self.workers.values() for r in w.jobs)),
        )

    def close(self) -> None:
        """Nothing to release; a signal source's interface."""

    # -- results -------------------------------------------------------------------------------

    def wait_times(self) -> list[float]:
        """Seconds each job waited; a job that never started counts as waiting until now."""
        return [self.waits.get(job.index, self.now - (self.origin + job.submit)) for job in self.jobs]

    def turnarounds(self) -> list[float]:
        """Seconds from submission to the end of each job; an unfinished one counts until now."""
        return [min(self.ends.get(job.index, self.now), self.now) - (self.origin + job.submit) for job in self.jobs]
