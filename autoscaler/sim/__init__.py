"""Trace-driven simulation: the production engine replaying a job trace in virtual time."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path

from autoscaler.config import Settings
from autoscaler.tensordock.fake import Catalog

from .bound import LpBound, lp_bound, lp_offers
from .market import MARKETS, Market
from .perjob import replay_per_job
from .results import StrategyResult, markdown_table, summarize, unit_prices
from .runner import SIM_TOKEN, Run, SimOptions, replay
from .strategies import STRATEGIES, StrategyError, check_strategy, sim_settings, strategy_settings
from .trace import Job, TraceError, load_trace

__all__ = [
    "STRATEGIES",
    "Job",
    "MARKETS",
    "LpBound",
    "Run",
    "SimOptions",
    "StrategyError",
    "StrategyResult",
    "TraceError",
    "compare",
    "default_cache_dir",
    "perturbed",
    "load_trace",
    "lp_bound",
    "lp_for",
    "markdown_table",
    "replay",
    "replay_strategy",
]


def perturbed(table: Mapping[str, float], fraction: float, seed: int) -> dict[str, float]:
    """`table` with each model's speed times a seeded factor in [1 - fraction, 1 + fraction]."""
    rng = random.Random(f"world/{seed}")
    return {model: speed * rng.uniform(1 - fraction, 1 + fraction) for model, speed in sorted(table.items())}


def default_cache_dir() -> Path:
    """Where LP bounds are kept: $TDAS_SIM_CACHE, else the user's cache directory."""
    explicit = os.environ.get("TDAS_SIM_CACHE")
    if explicit:
        return Path(explicit)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tensordock-autoscaler" / "lp"


def replay_strategy(name: str, jobs: list[Job], base: Settings, catalog: Catalog, options: SimOptions) -> Run:
    """One strategy on one trace: `per-job` by its reference model, the others by the engine."""
    if name == "per-job":
        return replay_per_job(jobs, base, options)
    return replay(jobs, strategy_settings(name, base, jobs, catalog), options)


def world_throughput(settings: Settings, options: SimOptions) -> dict[str, float]:
    """The jobs' true speed per model: the world's table if given, else the policies' own."""
    return dict(options.world_throughput or settings.fleet.throughput_table)


def lp_for(jobs: list[Job], settings: Settings, options: SimOptions, wait_s: float | None = None) -> LpBound:
    """The capacity-aware bound for these jobs on the options' catalog, at the world's speeds."""
    catalog = options.catalog()
    floor = Market(options.market, catalog, 0.0, options.seed).price_floor()
    offers, hosts = lp_offers(catalog, settings.fleet.shape, world_throughput(settings, options), floor)
    return lp_bound(jobs, offers, hosts, options.lp_wait_s if wait_s is None else wait_s, options.lp_cache_dir)


def compare(
    trace_path: str | Path,
    settings: Settings | None = None,
    strategies: tuple[str, ...] = STRATEGIES,
    options: SimOptions | None = None,
) -> tuple[list[StrategyResult], dict[str, Run]]:
    """Every strategy on one trace, each from a fresh fake and store; `settings=None`: defaults."""
    options = options or SimOptions()
    for name in strategies:  # all checked before the first replay, which may take minutes
        check_strategy(name)
    jobs = load_trace(trace_path)
    catalog = options.catalog()
    base = sim_settings(settings or Settings(), SIM_TOKEN, catalog, bounds_given=settings is not None)
    prices = unit_prices(catalog, base.fleet.shape, world_throughput(base, options))
    bound = lp_for(jobs, base, options)
    results, runs = [], {}
    for name in strategies:
        run = replay_strategy(name, jobs, base, catalog, options)
        runs[name] = run
        results.append(summarize(name, Path(trace_path).stem, jobs, run, prices, lp=bound))
    return results, runs
