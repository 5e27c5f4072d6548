"""Cost and waits of every strategy on every shipped trace, side by side, with plots.

    .venv/bin/python bench/cost_benchmark.py [--traces DIR] [--market-depth 1,4] [--plots DIR]

One markdown table per market depth (1 is the default catalog; 4 offers each of its hosts four
times, a marketplace deep enough for a single GPU model to hold the traces' peaks). Targets for
`ours` at depth 1: cost_ratio <= 1.15 with wait_p95_s <= 600, cheaper than `reactive` at an equal
or lower p95 wait, every job completed; each replay under 60 s.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autoscaler.logging import configure_logging  # noqa: E402
from autoscaler.sim import SimOptions, StrategyResult, compare, markdown_table  # noqa: E402
from autoscaler.sim.plot import plot  # noqa: E402

DEFAULT_TRACES = ROOT.parent / "shared" / "traces"


def verdict(results: list[StrategyResult]) -> str:
    ours = next(r for r in results if r.strategy == "ours")
    reactive = next((r for r in results if r.strategy == "reactive"), None)
    checks = [
        f"ratio {ours.cost_ratio:.3f} {'<=' if ours.cost_ratio <= 1.15 else '>'} 1.15",
        f"p95 {ours.wait_p95_s:.0f} s {'<=' if ours.wait_p95_s <= 600 else '>'} 600",
        f"jobs {ours.jobs_completed}/{ours.jobs_total}",
        f"replay {ours.replay_s:.1f} s {'<' if ours.replay_s < 60 else '>='} 60",
    ]
    if reactive is not None:
        cheaper = ours.cost_usd < reactive.cost_usd and ours.wait_p95_s <= reactive.wait_p95_s
        unfinished = reactive.jobs_total - reactive.jobs_completed
        checks.append(
            f"vs reactive: {ours.cost_usd / reactive.cost_usd:.3f}x the cost at "
            f"{ours.wait_p95_s:.0f} s vs {reactive.wait_p95_s:.0f} s p95 ({'better' if cheaper else 'not better'}"
            + (f"; reactive left {unfinished} jobs unfinished)" if unfinished else ")")
        )
    checks.append(f"width bound ratio {ours.cost_usd / ours.width_bound_usd:.3f}")
    return f"{ours.trace}: " + "; ".join(checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--traces", type=Path, default=DEFAULT_TRACES, help="directory of *.csv traces")
    parser.add_argument("--market-depth", default="1,4", help="comma-separated catalog depths (default: 1,4)")
    parser.add_argument("--plots", type=Path, default=ROOT / "bench" / "plots", help="where the PNGs go")
    args = parser.parse_args()
    configure_logging("WARNING")
    traces = sorted(args.traces.glob("*.csv"))
    if not traces:
        raise SystemExit(f"no *.csv traces in {args.traces}")
    args.plots.mkdir(parents=True, exist_ok=True)
    for depth in (int(d) for d in args.market_depth.split(",")):
        rows: list[StrategyResult] = []
        verdicts = []
        for trace in traces:
            results, runs = compare(trace, options=SimOptions(market_depth=depth))
            rows += results
            verdicts.append(verdict(results))
            picture = args.plots / f"{trace.stem}-depth{depth}.png"
            plot(picture, f"{trace.name}, market depth {depth}", results, runs)
        print(f"\n### Market depth {depth}\n")
        print(markdown_table(rows))
        print()
        for line in verdicts:
            print(f"- {line}")
    print(f"\nplots in {args.plots}")


if __name__ == "__main__":
    main()
