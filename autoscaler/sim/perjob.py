"""`per-job`: the baseline a user would pick instead of an autoscaler (SkyPilot managed jobs).

A reference model beside the engine, not a configuration of it: the engine's policies provision
GPUs for the queue, and no configuration makes it create one instance per job and delete it
when that job (and only that job) ends. So this small loop does what a managed-jobs controller
does, on the same fake marketplace (capacity, timings, faults, market noise, bill):

- jobs are taken in submission order; a job that cannot get an instance waits, and later jobs
  that can get one go ahead of it (backfill);
- each job gets its own instance of exactly its width, on the offer with the lowest price per
  unit of work (by the policies' throughput table) among hosts with room; a create that fails
  (a stale offer) tries the next offer;
- it pays the boot (create, then cloud-init), runs for `duration / speed` at the world's speed,
  and its instance is deleted the moment it ends.
The controller looks again every `interval_s` while jobs wait, as a managed-jobs controller polls.
"""

from __future__ import annotations

import heapq
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

from autoscaler.common.clock import ManualClock
from autoscaler.config import Settings
from autoscaler.core.snapshot import InstanceShape
from autoscaler.core.throughput import unit_price
from autoscaler.tensordock.fake.state import FakeApiError, FakeTensorDock

from .market import Market, market_faults
from .runner import ORIGIN, Run, Sample, SimOptions
from .trace import Job


@dataclass
class _Placed:
    job: Job
    instance_id: str
    gpu_model: str
    ready: float
    end: float


def _candidates(
    state: FakeTensorDock, job: Job, shape: InstanceShape, belief: Mapping[str, float]
) -> list[tuple[float, str, str]]:
    """(USD per unit of work, host id, model) of every offer with room for the job, cheapest first."""
    found = []
    vcpu, ram = shape.vcpu_per_gpu * job.gpus, shape.ram_gb_per_gpu * job.gpus
    for _, host in state.hosts():
        if vcpu > host.max_vcpus_per_gpu * job.gpus or ram > host.max_ram_per_gpu * job.gpus:
            continue
        free = state.free(host)
        if free.vcpu < vcpu or free.ram < ram or free.storage < shape.storage_gb:
            continue
        for model, gpu in host.gpus.items():
            speed = float(belief.get(model, 0.0))
            if speed > 0 and free.gpus.get(model, 0) >= job.gpus:
                price = shape.hourly_price(host.pricing, gpu.price_per_hr, job.gpus)
                found.append((unit_price(price, speed, job.gpus), host.id, model))
    return sorted(found)


def replay_per_job(jobs: list[Job], settings: Settings, options: SimOptions) -> Run:
    wall = time.perf_counter()
    clock = ManualClock(ORIGIN)
    catalog = options.catalog()
    state = FakeTensorDock(
        catalog,
        clock,
        timings=options.timings,
        faults=market_faults(options.market, options.faults),
        seed=options.seed,
        balance_usd=1e12,
    )
    market = Market(options.market, catalog, ORIGIN, options.seed)
    belief = settings.fleet.throughput_table
    world = options.world_throughput or belief
    shape = settings.fleet.shape
    rng = random.Random(options.seed)
    queue: list[Job] = []
    running: list[tuple[float, int, _Placed]] = []  # heap by end
    waits: dict[int, float] = {}
    ends: dict[int, float] = {}
    timeline: list[Sample] = []
    arrivals = iter(jobs)
    upcoming = next(arrivals, None)
    deadline, seen_out_by = options.drain_ends(jobs)
    interval = options.interval(settings)
    completed = calls = peak = 0
    now = ORIGIN
    while True:
        clock.advance(max(0.0, now - clock.now()))
        market.advance(state, now)
        with state.lock:
            state.settle()
            while running and running[0][0] <= now:
                _, _, done = heapq.heappop(running)
                state.delete(done.instance_id)
                calls += 1
                completed += 1
            while upcoming is not None and ORIGIN + upcoming.submit <= now:
                queue.append(upcoming)
                upcoming = next(arrivals, None)
            waiting: list[Job] = []
            for job in queue:
                placed: _Placed | None = None
                for _, host_id, model in _candidates(state, job, shape, belief):
                    calls += 1
                    try:
                        inst = state.create(_body(job, host_id, model, shape=shape, n=len(waits), settings=settings))
                    except FakeApiError:
                        continue
                    ready = inst.created_at + options.timings.create_s + rng.uniform(*options.workers.cloud_init_s)
                    speed = float(world.get(model, 0.0)) or 1e-9
                    placed = _Placed(job, inst.id, model, ready, ready + job.duration / speed)
                    break
                if placed is None:
                    waiting.append(job)
                    continue
                waits[job.index] = placed.ready - (ORIGIN + job.submit)
                ends[job.index] = placed.end
                heapq.heappush(running, (placed.end, job.index, placed))
            queue = waiting
            gpus: dict[str, int] = {}
            rate = 0.0
            for inst in state.instances():
                rate += state.billing_rate(inst)
                if inst.gpu_model:
                    gpus[inst.gpu_model] = gpus.get(inst.gpu_model, 0) + inst.gpu_count
            peak = max(peak, sum(gpus.values()))
            timeline.append(Sample(now - ORIGIN, len(queue), sum(p.job.gpus for _, _, p in running), gpus, rate))
        if completed == len(jobs) or (now >= deadline and (queue or not running or now >= seen_out_by)):
            break  # past the limit, with nothing waiting, the jobs running are seen out
        later = [running[0][0]] if running else []
        if upcoming is not None:
            later.append(ORIGIN + upcoming.submit)
        if queue:
            later.append(now + interval)
        now = min(min(later, default=deadline), deadline if now < deadline else seen_out_by)
    with state.lock:
        state.settle()
        cost = state.bill().total_usd
    return Run(
        cost_usd=cost,
        waits=[waits.get(j.index, now - (ORIGIN + j.submit)) for j in jobs],
        turnarounds=[min(ends.get(j.index, now), now) - (ORIGIN + j.submit) for j in jobs],
        jobs_completed=completed,
        jobs_total=len(jobs),
        api_calls=calls,
        actions=calls,
        peak_gpus=peak,
        cycles=len(timeline),
        skipped_cycles=0,
        preempted=0,
        simulated_s=now - ORIGIN,
        wall_s=time.perf_counter() - wall,
        timeline=timeline,
    )


def _body(job: Job, host_id: str, model: str, *, shape: InstanceShape, n: int, settings: Settings) -> dict[str, object]:
    return {
        "name": f"perjob-{n}-{job.index}",
        "image": settings.fleet.image,
        "resources": {
            "vcpu_count": shape.vcpu_per_gpu * job.gpus,
            "ram_gb": shape.ram_gb_per_gpu * job.gpus,
            "storage_gb": shape.storage_gb,
            "gpus": {model: {"count": job.gpus}},
        },
        "hostnode_id": host_id,
        "ssh_key": "ssh-ed25519 AAAASIM sim",
        "useDedicatedIp": True,
    }
