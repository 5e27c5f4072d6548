"""What a replay is judged by: cost against lower bounds, and how long jobs waited."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from autoscaler.core.snapshot import InstanceShape
from autoscaler.core.throughput import unit_price
from autoscaler.tensordock.fake import Catalog

from .bound import LpBound
from .runner import Run
from .trace import Job


def unit_prices(catalog: Catalog, shape: InstanceShape, throughput: Mapping[str, float]) -> list[tuple[float, int]]:
    """(USD per reference-GPU-hour of work, widest instance the host can hold) for every offer."""
    prices = []
    for location in catalog.locations:
        for host in location.hostnodes:
            for model, gpu in host.gpus.items():
                speed = float(throughput.get(model, 0.0))
                if speed <= 0:
                    continue
                widest = min(
                    gpu.count,
                    host.vcpu_count // shape.vcpu_per_gpu,
                    host.ram_gb // shape.ram_gb_per_gpu,
                )
                if widest >= 1:  # the widest instance spreads its disk over the most GPUs: the lowest price
                    price = shape.hourly_price(host.pricing, gpu.price_per_hr, widest)
                    prices.append((unit_price(price, speed, widest), widest))
    return prices


def lower_bound_usd(jobs: list[Job], prices: list[tuple[float, int]]) -> float:
    """Every job's work bought at the best price per unit of work in the catalog; no fleet costs less."""
    best = min(price for price, _ in prices)
    return sum(job.duration * job.gpus for job in jobs) / 3600.0 * best


def width_bound_usd(jobs: list[Job], prices: list[tuple[float, int]]) -> float:
    """As `lower_bound_usd`, but each job at the best price among hosts wide enough for it.

    Also a true lower bound (a job's GPUs share one instance), and the one a fleet can approach:
    the gap between the two bounds is what the catalog's narrow cheap hosts cannot sell.
    """
    total = 0.0
    for job in jobs:
        fitting = [price for price, widest in prices if widest >= job.gpus]
        total += job.duration * job.gpus / 3600.0 * (min(fitting) if fitting else math.inf)
    return total


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return cuts[round(fraction * 100) - 1]


@dataclass(frozen=True)
class StrategyResult:
    """One row of the comparison; the JSON of `simulate --json` is a list of these."""

    strategy: str
    trace: str
    cost_usd: float
    lower_bound_usd: float
    cost_ratio: float
    width_bound_usd: float
    lp_bound_usd: float  # capacity-aware: see bound.py; every job started within lp_wait_s
    cost_ratio_lp: float
    lp_wait_s: float
    wait_p50_s: float
    wait_p95_s: float
    wait_p99_s: float
    turnaround_p50_s: float
    turnaround_p95_s: float
    slowdown_mean: float  # turnaround / duration on the reference GPU, over all jobs
    jobs_completed: int
    jobs_total: int
    api_calls: int
    actions: int
    peak_gpus: int
    preempted_jobs: int
    cycles: int
    skipped_cycles: int
    early_cycles: int  # run by the queue watch before their interval
    simulated_s: float
    replay_s: float

    def as_json(self) -> dict[str, object]:
        return {key: round(value, 4) if isinstance(value, float) else value for key, value in asdict(self).items()}


def summarize(
    strategy: str, trace: str, jobs: list[Job], run: Run, prices: list[tuple[float, int]], *, lp: LpBound
) -> StrategyResult:
    bound = lower_bound_usd(jobs, prices)
    slowdowns = [t / job.duration for job, t in zip(jobs, run.turnarounds, strict=True)]
    return StrategyResult(
        strategy=strategy,
        trace=trace,
        cost_usd=run.cost_usd,
        lower_bound_usd=bound,
        cost_ratio=run.cost_usd / bound if bound > 0 else math.inf,
        width_bound_usd=width_bound_usd(jobs, prices),
        lp_bound_usd=lp.usd,
        cost_ratio_lp=run.cost_usd / lp.usd if lp.usd > 0 else math.inf,
        lp_wait_s=lp.wait_s,
        wait_p50_s=percentile(run.waits, 0.50),
        wait_p95_s=percentile(run.waits, 0.95),
        wait_p99_s=percentile(run.waits, 0.99),
        turnaround_p50_s=percentile(run.turnarounds, 0.50),
        turnaround_p95_s=percentile(run.turnarounds, 0.95),
        slowdown_mean=statistics.fmean(slowdowns) if slowdowns else 0.0,
        jobs_completed=run.jobs_completed,
        jobs_total=run.jobs_total,
        api_calls=run.api_calls,
        actions=run.actions,
        peak_gpus=run.peak_gpus,
        preempted_jobs=run.preempted,
        cycles=run.cycles,
        skipped_cycles=run.skipped_cycles,
        early_cycles=run.early_cycles,
        simulated_s=run.simulated_s,
        replay_s=run.wall_s,
    )


TABLE_HEADER = (
    "| trace | strategy | cost $ | LP bound $ | xLP | xwidth | wait p50 s | wait p95 s | turnaround p95 h "
    "| slowdown | jobs done | API calls | replay s |"
)


def markdown_table(results: list[StrategyResult]) -> str:
    lines = [TABLE_HEADER, "|" + "---|" * (TABLE_HEADER.count("|") - 1)]
    for r in results:
        width = r.cost_usd / r.width_bound_usd if r.width_bound_usd > 0 else math.inf
        lp = f"{r.lp_bound_usd:,.2f}" + (f" (wait {r.lp_wait_s:,.0f} s)" if r.lp_wait_s > 300 else "")
        lines.append(
            f"| {r.trace} | {r.strategy} | {r.cost_usd:,.2f} | {lp} | {r.cost_ratio_lp:.3f} | {width:.3f} "
            f"| {r.wait_p50_s:,.0f} | {r.wait_p95_s:,.0f} | {r.turnaround_p95_s / 3600:,.1f} | {r.slowdown_mean:.2f} "
            f"| {r.jobs_completed}/{r.jobs_total} | {r.api_calls:,} | {r.replay_s:.1f} |"
        )
    return "\n".join(lines)
