"""The picture of a comparison: queue, fleet by GPU model and $/h over time, and cost against wait."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .results import StrategyResult
from .runner import Run

DAY = 86400.0


def figure_for(title: str, results: list[StrategyResult], runs: dict[str, Run]) -> Any:
    """The figure: one row per strategy on one shared time axis, the legend above them (off the data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.strategy for r in results]
    rows = len(names) + 1
    figure = plt.figure(figsize=(13, 3.2 * rows))
    first = figure.add_subplot(rows, 1, 1)
    timelines = [first] + [figure.add_subplot(rows, 1, i + 2, sharex=first) for i in range(len(names) - 1)]
    models = sorted({m for run in runs.values() for s in run.timeline for m in s.gpus_by_model})
    colours = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(models)}
    for row, name in zip(timelines, names, strict=True):
        timeline = runs[name].timeline
        days = [s.t / DAY for s in timeline]
        stacks = [[s.gpus_by_model.get(m, 0) for s in timeline] for m in models]
        row.stackplot(days, stacks, labels=models, colors=[colours[m] for m in models], step="post", alpha=0.8)
        row.step(days, [s.queued_jobs for s in timeline], where="post", color="black", lw=0.8, label="queued jobs")
        row.set_ylabel("GPUs / jobs")
        row.set_title(f"{name}: fleet GPUs by model, queue depth and $/h", fontsize=9)
        cost = row.twinx()
        cost.step(days, [s.usd_per_hour for s in timeline], where="post", color="crimson", lw=0.8, label="$/h")
        cost.set_ylabel("$/h", color="crimson")
        if row is not timelines[-1]:
            row.tick_params(labelbottom=False)
    end = max((s.t / DAY for run in runs.values() for s in run.timeline), default=1.0)
    first.set_xlim(0, end)  # every strategy on the same days, whichever finished first
    timelines[-1].set_xlabel("day of trace")
    handles, labels = first.get_legend_handles_labels()
    cost_line = first.figure.axes[1].get_legend_handles_labels() if len(figure.axes) > 1 else ([], [])
    figure.legend(
        handles + list(cost_line[0]),
        labels + list(cost_line[1]),
        loc="upper center",
        bbox_to_anchor=(0.5, 0.985),
        ncol=min(6, len(labels) + 1),
        fontsize=7,
        frameon=False,
    )
    scatter = figure.add_subplot(rows, 1, rows)
    for r in results:
        scatter.scatter(r.wait_p95_s / 60, r.cost_usd, s=50)
        scatter.annotate(
            f" {r.strategy}: x{r.cost_ratio_lp:.2f} LP, slowdown {r.slowdown_mean:.2f}, "
            f"turnaround p95 {r.turnaround_p95_s / 3600:.1f} h",
            (r.wait_p95_s / 60, r.cost_usd),
            fontsize=7,
        )
    scatter.axhline(results[0].lp_bound_usd, color="black", ls="--", lw=0.8, label="LP bound (capacity-aware)")
    scatter.axhline(results[0].lower_bound_usd, color="grey", ls=":", lw=0.8, label="lower bound (cheapest unit)")
    scatter.set_xscale("symlog", linthresh=1.0)
    scatter.set_xlim(left=0)
    scatter.set_xlabel("p95 wait, minutes")
    scatter.set_ylabel("cost, $")
    scatter.set_title("cost against p95 wait", fontsize=9)
    scatter.legend(loc="best", fontsize=7)
    figure.suptitle(title, y=0.998)
    legend_rows = -(-(len(labels) + 1) // 6)
    figure.tight_layout(rect=(0, 0, 1, 1 - (0.012 + 0.012 * legend_rows) * 4 / rows))
    return figure


def plot(path: str | Path, title: str, results: list[StrategyResult], runs: dict[str, Run]) -> None:
    """Writes a PNG; matplotlib is the `plot` extra (`pip install 'tensordock-autoscaler[plot]'`)."""
    import matplotlib.pyplot as plt

    figure = figure_for(title, results, runs)
    figure.savefig(path, dpi=90)
    plt.close(figure)
