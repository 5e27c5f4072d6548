"""Trace-driven simulation: the production engine replaying a job trace in virtual time."""

from __future__ import annotations

from pathlib import Path

from autoscaler.config import Settings

from .results import StrategyResult, markdown_table, summarize, unit_prices
from .runner import SIM_TOKEN, Run, SimOptions, replay
from .strategies import STRATEGIES, StrategyError, check_strategy, sim_settings, strategy_settings
from .trace import Job, TraceError, load_trace

__all__ = [
    "STRATEGIES",
    "Job",
    "Run",
    "SimOptions",
    "StrategyError",
    "StrategyResult",
    "TraceError",
    "compare",
    "load_trace",
    "markdown_table",
    "replay",
]


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
    prices = unit_prices(catalog, base.fleet.shape, base.fleet.throughput_table)
    results, runs = [], {}
    for name in strategies:
        run = replay(jobs, strategy_settings(name, base, jobs, catalog), options)
        runs[name] = run
        results.append(summarize(name, Path(trace_path).stem, jobs, run, prices))
    return results, runs
