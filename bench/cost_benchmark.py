"""Every strategy on varied traces, against the capacity-aware LP bound and the per-job baseline.

    .venv/bin/python bench/cost_benchmark.py [--traces DIR] [--depths 1,4] [--markets calm,noisy]
                                              [--jobs 2] [--no-write]

Traces: every *.csv in `--traces` (the two Philly windows in ../shared/traces) plus the four
profiles of bench/traces.py, generated with seed 0. Each trace runs at market depth 1 and 4
(every host of the catalog offered four times) in a calm and a noisy market (stale offers,
reclaims, other renters, drifting prices: autoscaler/sim/market.py), with every strategy. Two
more rows per trace, `ours` and `per-job` only, calm, depth 1: `perturbed` (the world's
speeds are the policies' table times a seeded 1 +- 0.3 per model) and `slow-boot` (create
60 s, cloud-init 180 s). LP bounds are cached (autoscaler.sim.default_cache_dir()).

It prints and rewrites bench/RESULTS.md (the tables and a summary of `ours` against the LP
bound and against per-job on every trace, stated plainly where it loses), bench/results.json
(every row) and bench/plots/<trace>-depth<N>-<market>.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import traces as generator  # noqa: E402

from autoscaler.common.logging import configure_logging  # noqa: E402
from autoscaler.config import Settings  # noqa: E402
from autoscaler.sim import (  # noqa: E402
    STRATEGIES,
    SimOptions,
    StrategyResult,
    compare,
    default_cache_dir,
    perturbed,
)
from autoscaler.sim.workload import WorkerTimings  # noqa: E402
from autoscaler.tensordock.fake import Timings  # noqa: E402

DEFAULT_TRACES = ROOT.parent / "shared" / "traces"
SLOW_BOOT = (Timings(create_s=60.0), WorkerTimings(cloud_init_s=(180.0, 180.0)))


@dataclass(frozen=True)
class Config:
    label: str  # e.g. "depth1-calm", "depth1-perturbed"
    depth: int
    market: str
    strategies: tuple[str, ...]
    variant: str = ""  # "", "perturbed", "slow-boot"


def _options(config: Config, seed: int = 0) -> SimOptions:
    options = SimOptions(
        market_depth=config.depth,
        market=config.market,  # type: ignore[arg-type]
        lp_cache_dir=default_cache_dir(),
        seed=seed,
    )
    if config.variant == "perturbed":
        options = replace(options, world_throughput=perturbed(Settings().fleet.throughput_table, 0.3, seed))
    if config.variant == "slow-boot":
        options = replace(options, timings=SLOW_BOOT[0], workers=SLOW_BOOT[1])
    return options


def _run(task: tuple[Path, Config, bool, Path]) -> tuple[Config, list[StrategyResult], float]:
    trace, config, draw, plots = task
    configure_logging("WARNING")
    started = time.perf_counter()
    results, runs = compare(trace, strategies=config.strategies, options=_options(config))
    if draw:
        from autoscaler.sim.plot import plot

        plot(plots / f"{trace.stem}-{config.label}.png", f"{trace.name}, {config.label}", results, runs)
    return config, results, time.perf_counter() - started


def _row(config: Config, r: StrategyResult) -> str:
    return (
        f"| {r.trace} | {config.label} | {r.strategy} | {r.cost_usd:,.0f} | {r.lp_bound_usd:,.0f} "
        f"| {r.cost_ratio_lp:.3f} | {r.wait_p95_s:,.0f} | {r.turnaround_p95_s / 3600:,.1f} | {r.slowdown_mean:.2f} "
        f"| {r.jobs_completed}/{r.jobs_total} | {r.replay_s:.1f} |"
    )


HEADER = (
    "| trace | market | strategy | cost $ | LP $ | xLP | wait p95 s | turnaround p95 h | slowdown | jobs done "
    "| replay s |\n|---|---|---|---|---|---|---|---|---|---|---|"
)


def _summary(found: dict[tuple[str, str], dict[str, StrategyResult]]) -> list[str]:
    """One line per trace and market: ours against the LP and against per-job, plainly."""
    lines = [
        "| trace | market | ours xLP | per-job xLP | reactive xLP | ours p95 s | per-job p95 s | ours slowdown "
        "| per-job slowdown | ours vs per-job |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (trace, label), by in sorted(found.items()):
        ours, per_job, reactive = by.get("ours"), by.get("per-job"), by.get("reactive")
        if ours is None or per_job is None:
            continue
        cheaper = ours.cost_usd < per_job.cost_usd
        faster = ours.wait_p95_s <= per_job.wait_p95_s
        verdict = (
            f"{'cheaper' if cheaper else 'DEARER'} by {abs(1 - ours.cost_usd / per_job.cost_usd):.0%}, "
            f"p95 wait {'no worse' if faster else 'WORSE'}"
        )
        if ours.jobs_completed < ours.jobs_total:
            verdict += f", ours left {ours.jobs_total - ours.jobs_completed} jobs undone"
        lines.append(
            f"| {trace} | {label} | {ours.cost_ratio_lp:.3f} | {per_job.cost_ratio_lp:.3f} "
            f"| {reactive.cost_ratio_lp if reactive else float('nan'):.3f} | {ours.wait_p95_s:,.0f} "
            f"| {per_job.wait_p95_s:,.0f} | {ours.slowdown_mean:.2f} | {per_job.slowdown_mean:.2f} | {verdict} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES, help="directory of *.csv traces")
    parser.add_argument("--depths", default="1,4", help="comma-separated catalog depths (default: 1,4)")
    parser.add_argument("--markets", default="calm,noisy", help="comma-separated market profiles")
    parser.add_argument("--only", default="", help="comma-separated trace names to run (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="replays in parallel (processes)")
    parser.add_argument("--plots", type=Path, default=ROOT / "bench" / "plots")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md and results.json")
    args = parser.parse_args()
    configure_logging("WARNING")
    generated = Path(tempfile.mkdtemp(prefix="tdas-traces-"))
    paths = sorted(args.traces.glob("*.csv")) + [generator.write(name, generated) for name in generator.PROFILES]
    if args.only:
        paths = [p for p in paths if p.stem in args.only.split(",")]
    configs = [
        Config(f"depth{d}-{m}", int(d), m, STRATEGIES) for d in args.depths.split(",") for m in args.markets.split(",")
    ]
    configs += [
        Config("depth1-perturbed", 1, "calm", ("ours", "per-job"), "perturbed"),
        Config("depth1-slow-boot", 1, "calm", ("ours", "per-job"), "slow-boot"),
    ]
    args.plots.mkdir(parents=True, exist_ok=True)
    tasks = [(p, c, c.variant == "", args.plots) for p in paths for c in configs]
    started = time.perf_counter()
    found: dict[tuple[str, str], dict[str, StrategyResult]] = {}
    rows: list[tuple[Config, StrategyResult]] = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for config, results, seconds in pool.map(_run, tasks):
            trace = results[0].trace
            print(f"{trace} {config.label}: {seconds:.0f} s", flush=True)
            for r in results:
                print("  " + _row(config, r), flush=True)
                rows.append((config, r))
                found.setdefault((trace, config.label), {})[r.strategy] = r
    total = time.perf_counter() - started
    summary = _summary(found)
    table = [HEADER] + [_row(c, r) for c, r in rows]
    print("\n".join(["", *summary, "", *table, "", f"total {total:.0f} s"]))
    if args.no_write:
        return
    (ROOT / "bench" / "results.json").write_text(
        json.dumps([{"market": c.label, **r.as_json()} for c, r in rows], indent=1) + "\n"
    )
    results_md = ROOT / "bench" / "RESULTS.md"
    text = results_md.read_text() if results_md.exists() else ""
    marker = "<!-- generated by bench/cost_benchmark.py: everything below is rewritten -->"
    head = text.split(marker)[0].rstrip() + "\n\n"  # the hand-written part is kept
    results_md.write_text(
        head
        + marker
        + "\n\n## Summary: ours against the LP bound and against per-job\n\n"
        + "\n".join(summary)
        + "\n\n## Every replay\n\n"
        + "\n".join(table)
        + f"\n\nWhole benchmark: {total:.0f} s wall with {args.jobs} process(es).\n"
    )


if __name__ == "__main__":
    main()
