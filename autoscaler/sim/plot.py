"""The picture of a comparison: queue, fleet by GPU model and $/h over time, and cost against wait."""

from __future__ import annotations

from pathlib import Path

from .results import StrategyResult
from .runner import Run

DAY = 86400.0


def plot(path: str | Path, title: str, results: list[StrategyResult], runs: dict[str, Run]) -> None:
    """Writes a PNG; matplotlib is the `plot` extra (`pip install 'tensordock-autoscaler[plot]'`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.strategy for r in results]
    figure, axes = plt.subplots(len(names) + 1, 1, figsize=(13, 3.2 * (len(names) + 1)), squeeze=False)
    models = sorted({m for run in runs.values() for s in run.timeline for m in s.gpus_by_model})
    colours = {m: plt.get_cmap("tab20")(i % 20) for i, m in enumerate(models)}
    for row, name in zip(axes[:-1, 0], names, strict=True):
        timeline = runs[name].timeline
        days = [s.t / DAY for s in timeline]
        stacks = [[s.gpus_by_model.get(m, 0) for s in timeline] for m in models]
        row.stackplot(days, stacks, labels=models, colors=[colours[m] for m in models], step="post", alpha=0.8)
        row.step(days, [s.queued_jobs for s in timeline], where="post", color="black", lw=0.8, label="queued jobs")
        row.set_ylabel("GPUs / jobs")
        row.set_title(f"{name}: fleet GPUs by model, queue depth and $/h")
        cost = row.twinx()
        cost.step(days, [s.usd_per_hour for s in timeline], where="post", color="crimson", lw=0.8)
        cost.set_ylabel("$/h", color="crimson")
    axes[0, 0].legend(loc="upper left", fontsize=6, ncol=4)
    axes[-2, 0].set_xlabel("day of trace")
    scatter = axes[-1, 0]
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
    scatter.set_title("cost against p95 wait")
    scatter.legend()
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
