"""The first ten minutes: `make demo`'s install, the demo's view and summary, `simulate`'s output."""

from __future__ import annotations

import dataclasses
import io
import subprocess
from pathlib import Path

import pytest

from autoscaler.commands.demo import (
    ARRIVALS_MIN,
    DemoWorkload,
    _PlainLines,
    _view,
    arrived_jobs,
    fixed_fleet,
    fixed_fleet_waits,
)
from autoscaler.common.clock import ManualClock
from autoscaler.store import SqliteStore
from autoscaler.tensordock.fake import build_fake, in_process_transport

from .conftest import REPO, TOKEN, create_request


def _dry_run(target: str, tmp_path: Path) -> str:
    done = subprocess.run(
        ["make", "-n", target, f"VENV={tmp_path / 'venv'}"], cwd=REPO, capture_output=True, text=True, check=True
    )
    return done.stdout


def test_make_demo_installs_only_the_package_and_make_test_the_dev_tools(tmp_path: Path) -> None:
    demo = _dry_run("demo", tmp_path)
    assert "pip install --quiet -e ." in demo and "[dev]" not in demo
    assert "[dev]" in _dry_run("test", tmp_path)


@pytest.fixture
def demo_world() -> tuple[object, DemoWorkload, ManualClock, SqliteStore]:
    from autoscaler.tensordock.client import TensorDockClient

    clock = ManualClock()
    app = build_fake(TOKEN, "observed", clock=clock)
    store = SqliteStore(":memory:")
    with TensorDockClient("http://fake/api/v2", TOKEN, transport=in_process_transport(app), clock=clock) as client:
        chicago = next(loc.id for loc in client.list_locations() if loc.city == "Chicago")
        kept = client.create_instance(create_request(chicago, name="demo-kept"))
        gone = client.create_instance(create_request(chicago, name="demo-gone"))
        for instance, kind in ((kept, "create"), (gone, "create"), (gone, "delete")):
            entry = store.journal_intent(
                "c1",
                clock.now(),
                kind,
                name=instance.name if kind == "create" else None,
                instance_id=instance.id,
                reason="a reason long enough to be cut at a narrow terminal " * 3,
            )
            store.journal_outcome(entry, "ok", clock.now(), instance_id=instance.id)
        client.delete_instance(gone.id)
    clock.advance(300)
    return app, DemoWorkload(app.state, clock.now() - 300), clock, store


def test_the_live_view_labels_its_numbers_fits_the_width_and_names_every_instance(
    demo_world: tuple[object, DemoWorkload, ManualClock, SqliteStore],
) -> None:
    app, workload, clock, store = demo_world
    frame = _view(workload, app, clock, store, width=60)
    lines = frame.splitlines()
    assert all(len(line) <= 60 for line in lines), frame
    assert any("GPUs running" in line or "GPU running" in line for line in lines), frame
    assert "jobs waiting" in frame and "running 1" not in frame
    actions = [line for line in lines if line.lstrip().startswith(">")]
    assert len(actions) == 3 and all("demo-" in line for line in actions), frame  # the deleted one by name too


def test_off_a_terminal_each_action_is_one_plain_line_once(
    demo_world: tuple[object, DemoWorkload, ManualClock, SqliteStore],
) -> None:
    app, workload, clock, store = demo_world
    out = io.StringIO()
    plain = _PlainLines(out)
    plain.actions(app, store)
    plain.actions(app, store)  # nothing new: nothing printed
    plain.status(workload, app, clock)
    text = out.getvalue()
    assert "\033[" not in text
    assert text.count("> ") == 3 and text.count("demo-gone") == 2
    assert "jobs waiting" in text.splitlines()[-1]


def test_the_fixed_fleet_comes_from_catalog_offers_enough_for_the_peak() -> None:
    app = build_fake(TOKEN, "observed", clock=ManualClock())
    stock = {
        (model, round(host.pricing.hourly_price(gpu.price_per_hr, 1, 8, 32, 100), 9)): gpu.count
        for _, host in app.state.hosts()
        for model, gpu in host.gpus.items()
    }
    rate, rows = fixed_fleet(app, 12)
    assert sum(n for _, n, _ in rows) == 12
    for model, n, price in rows:
        available = sum(c for (m, p), c in stock.items() if m == model and p == round(price, 9))
        assert 0 < n <= available, (model, n, price)
    assert rate == pytest.approx(sum(n * price for _, n, price in rows))
    with pytest.raises(ValueError, match="cannot supply"):
        fixed_fleet(app, 10_000)


def test_the_summary_counts_arrived_jobs_and_the_fixed_fleets_waits() -> None:
    assert arrived_jobs(0) == ARRIVALS_MIN[0][1]
    assert arrived_jobs(16 * 60) == ARRIVALS_MIN[0][1] + ARRIVALS_MIN[1][1]
    assert arrived_jobs(10**6) == sum(n for _, n in ARRIVALS_MIN)
    assert fixed_fleet_waits(100, 10**6) == [0.0] * sum(n for _, n in ARRIVALS_MIN)
    one_slot = fixed_fleet_waits(1, 59 * 60)
    assert one_slot[0] == 0 and one_slot[1] == 20 * 60 and len(one_slot) == 3  # 20-minute jobs, one at a time


def test_simulate_warns_about_unfinished_jobs_and_shows_progress_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from autoscaler.commands.cli import _compare_with_progress, unfinished_warnings

    from .sim.test_simulator import EXACT, one_gpu_fleet, write_trace

    trace = write_trace(tmp_path / "t.csv", [(0, 600, 1), (60, 600, 1)])

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    err = Terminal()
    monkeypatch.setattr("sys.stderr", err)
    results, runs = _compare_with_progress(str(trace), one_gpu_fleet(), ("ours", "reactive"), EXACT)
    assert [r.strategy for r in results] == ["ours", "reactive"] and set(runs) == {"ours", "reactive"}
    shown = err.getvalue()
    assert "ours " in shown and "reactive " in shown and "simulated days" in shown and "2 of 2 jobs" in shown
    assert "[" + "#" * 24 + "]" in shown  # each bar ends full
    assert unfinished_warnings(results) == []
    short = dataclasses.replace(results[1], jobs_completed=1)
    (warning,) = unfinished_warnings([results[0], short])
    assert warning.startswith("reactive left 1 of 2 jobs unfinished")


def test_a_replay_reports_its_progress_as_it_goes(tmp_path: Path) -> None:
    """The bar moves during a replay (simulated time and jobs done), not only when one ends."""
    from autoscaler.sim import compare

    from .sim.test_simulator import EXACT, one_gpu_fleet, write_trace

    trace = write_trace(tmp_path / "t.csv", [(n * 1800, 600, 1) for n in range(48)])  # one a half-hour for a day
    seen: list[tuple[float, int, int]] = []
    options = dataclasses.replace(EXACT, progress=lambda s, done, total: seen.append((s, done, total)))
    compare(trace, one_gpu_fleet(), ("ours",), options)
    assert len(seen) >= 2
    assert [s for s, _, _ in seen] == sorted(s for s, _, _ in seen) and seen[-1][0] > 12 * 3600
    assert all(total == 48 for _, _, total in seen) and 0 < seen[-1][1] < 48


def test_the_plot_shares_one_time_axis_and_keeps_the_legend_off_the_data(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from autoscaler.sim import compare
    from autoscaler.sim.plot import figure_for

    from .sim.test_simulator import EXACT, one_gpu_fleet, write_trace

    trace = write_trace(tmp_path / "t.csv", [(0, 600, 1), (3600, 600, 1)])
    results, runs = compare(trace, one_gpu_fleet(), ("ours", "reactive"), EXACT)
    figure = figure_for("t", results, runs)
    figure.canvas.draw()
    timelines = [ax for ax in figure.axes if ax.get_xlabel() == "day of trace" or "fleet GPUs" in ax.get_title()]
    assert len(timelines) == 2
    assert timelines[0].get_shared_x_axes().joined(timelines[0], timelines[1])
    assert timelines[0].get_xlim() == timelines[1].get_xlim()
    (legend,) = figure.legends
    box = legend.get_window_extent()
    for ax in figure.axes:
        assert not box.overlaps(ax.get_window_extent()), ax.get_title()
