"""The simulated world is not the policies' belief: true speeds, market noise, boot timings, and
a demand signal that carries nothing a real queue would not know."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoscaler.commands.cli import main
from autoscaler.common.clock import ManualClock
from autoscaler.config import Settings
from autoscaler.core.queue_watch import QueueWatch
from autoscaler.core.throughput import DEFAULT_THROUGHPUT
from autoscaler.sim import SimOptions, perturbed, replay, replay_strategy
from autoscaler.sim.market import Market
from autoscaler.sim.runner import ORIGIN, SIM_TOKEN, _watched_until
from autoscaler.sim.strategies import sim_settings
from autoscaler.sim.trace import Job
from autoscaler.sim.workload import WorkerTimings, Workload
from autoscaler.tensordock.fake import Timings, load_catalog
from autoscaler.tensordock.fake.state import FakeTensorDock

HERE = Path(__file__).parent
ONE_HOST = HERE / "one_host_catalog.json"
A100 = "a100-sxm4-80gb"


def _demand_at(rows: list[tuple[float, float, int]], t: float) -> object:
    """What the engine would read at `t` from a queue of these jobs on one two-GPU instance."""
    clock = ManualClock(ORIGIN)
    state = FakeTensorDock(load_catalog(ONE_HOST), clock, timings=Timings(create_s=30.0))
    host = state.hosts()[0][1]
    state.create(
        {
            "name": "w",
            "image": "ubuntu2404",
            "resources": {"vcpu_count": 16, "ram_gb": 64, "storage_gb": 100, "gpus": {A100: {"count": 2}}},
            "hostnode_id": host.id,
            "ssh_key": "k",
            "useDedicatedIp": True,
        }
    )
    jobs = [Job(i, s, d, g) for i, (s, d, g) in enumerate(rows)]
    workload = Workload(jobs, state, DEFAULT_THROUGHPUT, ORIGIN, timings=WorkerTimings(cloud_init_s=(60, 60)))
    workload.observe_fleet()
    for step in range(0, int(t) + 1, 30):
        clock.advance(ORIGIN + step - clock.now())
        workload.advance(clock.now())
        workload.observe_fleet()
    return workload.read(ORIGIN + t)


def test_the_demand_carries_nothing_from_the_future() -> None:
    # Same submissions up to t = 900; different durations of the jobs not yet done, and
    # different jobs still to come. A real queue cannot tell these apart at 900, nor may the engine.
    known = [(0, 2000, 1), (10, 5000, 1), (20, 300, 2)]
    other = [(0, 9000, 1), (10, 1600, 1), (20, 7000, 2), (901, 100, 8), (5000, 50, 1)]
    first, second = _demand_at(known, 900), _demand_at(other, 900)
    assert first == second
    assert first.running_jobs == 2 and first.queued_jobs == 1  # type: ignore[attr-defined]


def test_world_speed_is_not_the_policies_belief(tmp_path: Path) -> None:
    jobs = [Job(0, 0, 3600, 1)]
    options = SimOptions(catalog_path=ONE_HOST, workers=WorkerTimings(cloud_init_s=(60, 60)))
    catalog = options.catalog()
    base = sim_settings(Settings(), SIM_TOKEN, catalog, bounds_given=False)
    believed = replay(jobs, base, options)
    twice = replay(jobs, base, SimOptions(**{**options.__dict__, "world_throughput": {A100: 2.0}}))
    # The job takes half as long in a world where the A100 is twice as fast as the policies think.
    run_believed = believed.turnarounds[0] - believed.waits[0]
    run_twice = twice.turnarounds[0] - twice.waits[0]
    assert run_believed == pytest.approx(3600) and run_twice == pytest.approx(1800)
    per_job = replay_strategy(
        "per-job", jobs, base, catalog, SimOptions(**{**options.__dict__, "world_throughput": {A100: 0.5}})
    )
    assert per_job.turnarounds[0] - per_job.waits[0] == pytest.approx(7200)


def test_perturbation_is_seeded_and_within_the_fraction() -> None:
    first, again, other = (perturbed(DEFAULT_THROUGHPUT, 0.3, seed) for seed in (1, 1, 2))
    assert first == again and first != other
    for model, speed in first.items():
        assert 0.7 * DEFAULT_THROUGHPUT[model] <= speed <= 1.3 * DEFAULT_THROUGHPUT[model]


def test_noisy_market_takes_capacity_and_moves_prices() -> None:
    catalog = load_catalog().deepened(2)
    clock = ManualClock(ORIGIN)
    state = FakeTensorDock(catalog, clock)
    market = Market("noisy", catalog, ORIGIN, seed=3)
    free_before = sum(sum(state.free(h).gpus.values()) for _, h in state.hosts())
    clock.advance(2 * 86400 + 60)
    market.advance(state, clock.now())
    free_after = sum(sum(state.free(h).gpus.values()) for _, h in state.hosts())
    assert free_after < free_before  # other renters hold some GPUs
    listed = {h.id: h.gpus for loc in catalog.locations for h in loc.hostnodes}
    moved = [h.id for _, h in state.hosts() if h.gpus != listed[h.id]]
    assert moved and set(moved) <= set(market.price_floor())
    calm = Market("calm", catalog, ORIGIN, seed=3)
    assert calm.price_floor() == {}


def test_simulate_cli_takes_market_world_and_boot_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("submit_time,duration,gpus\n0,600,1\n30,600,1\n")
    args = ["simulate", "--trace", str(trace), "--catalog", str(ONE_HOST), "--strategies", "ours,per-job", "--json"]
    slow = ["--create-s", "60", "--cloud-init-s", "180", "--market", "noisy", "--world-perturb", "0.3"]
    assert main([*args, *slow, "--no-lp-cache"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["strategy"] for r in rows} == {"ours", "per-job"}
    for row in rows:
        assert row["wait_p50_s"] >= 240  # create 60 s + cloud-init 180 s before the first job runs
        assert row["lp_bound_usd"] > 0 and row["cost_ratio_lp"] >= 1.0
        assert {"turnaround_p50_s", "turnaround_p95_s", "slowdown_mean"} <= row.keys()
    assert main([*args, "--cloud-init-s", "soon"]) == 2
    assert "--cloud-init-s" in capsys.readouterr().err
    assert main([*args, "--world-throughput", "[1, 2]"]) == 2
    assert "--world-throughput" in capsys.readouterr().err


def test_simulate_cycles_at_the_configurations_interval_unless_the_flag_overrides_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One job at 10 s to an empty fleet: the first cycle after it creates the instance (running
    30 s later, its worker 60 s after that), so the wait shows the interval the replay used."""
    trace = tmp_path / "t.csv"
    trace.write_text("submit_time,duration,gpus\n10,600,1\n")
    config = tmp_path / "c.toml"
    config.write_text(
        "[scheduler]\ninterval_s = 300\n"
        '[[policies]]\nname = "queue_target"\noptions = { max_gpus = 1 }\n'
        '[[policies]]\nname = "cheapest_throughput"\noptions = { gpus_per_instance = [1], place_widest_job = false }\n'
    )
    args = ["simulate", "--trace", str(trace), "--catalog", str(ONE_HOST), "--strategies", "ours", "--json"]
    args += ["--cloud-init-s", "60", "--no-lp-cache"]

    def wait(*extra: str) -> float:
        assert main([*args, *extra]) == 0
        (row,) = json.loads(capsys.readouterr().out)
        return float(row["wait_p50_s"])

    off = ("--watch-s", "0")  # the queue watch would run a cycle 5 s after the job, whatever the interval
    assert wait("--config", str(config), *off) == pytest.approx(300 + 30 + 60 - 10)  # the configuration's 300 s
    assert wait("--config", str(config), "--interval-s", "30", *off) == pytest.approx(30 + 30 + 60 - 10)
    assert wait(*off) == pytest.approx(30 + 30 + 60 - 10)  # no configuration: the default scheduler.interval_s


def test_the_queue_watch_runs_a_cycle_when_new_work_arrives_between_cycles(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Cycles every 300 s; a job at 13 s is read by the watch's next reading (every watch_s from the
    start) and its instance created then, not at 300 s. A second job at 1000 s goes to the same
    instance's idle worker: it never waits in the queue, so no cycle is run early for it."""
    trace = tmp_path / "t.csv"
    trace.write_text("submit_time,duration,gpus\n13,600,1\n1000,100,1\n")
    config = tmp_path / "c.toml"
    config.write_text(
        "[scheduler]\ninterval_s = 300\n"
        "[guards]\nscale_down_delay_s = 600\n"
        '[[policies]]\nname = "queue_target"\noptions = { max_gpus = 1 }\n'
        '[[policies]]\nname = "cheapest_throughput"\noptions = { gpus_per_instance = [1], place_widest_job = false,'
        " surplus_idle_s = 600 }\n"
    )
    args = ["simulate", "--trace", str(trace), "--catalog", str(ONE_HOST), "--strategies", "ours", "--json"]
    args += ["--cloud-init-s", "60", "--no-lp-cache", "--config", str(config)]

    def run(*extra: str) -> dict[str, float]:
        assert main([*args, *extra]) == 0
        (row,) = json.loads(capsys.readouterr().out)
        return dict(row)

    boot = 30 + 60
    default, every_10s, off = run(), run("--watch-s", "10"), run("--watch-s", "0")
    assert default["wait_p95_s"] == pytest.approx((13 - 13 + boot) * 0.95)  # read at 13 s: p95 of [90, 0]
    assert every_10s["wait_p95_s"] == pytest.approx((20 - 13 + boot) * 0.95)
    assert off["wait_p95_s"] == pytest.approx((300 - 13 + boot) * 0.95)
    assert default["early_cycles"] == every_10s["early_cycles"] == 1
    assert off["early_cycles"] == 0
    assert default["jobs_completed"] == 2


def test_the_modelled_watch_reads_after_arrivals_and_wakes_the_cycle_at_new_work() -> None:
    """The simulator's model of the daemon's watch (`_watched_until`): a reading on the watch grid
    right after each arrival, with the one before it (the low-water mark); the cycle is woken at the
    first that shows new work, and never past the regular cycle; no reading while the rate limit
    has no call to spare."""
    clock = ManualClock(ORIGIN)
    state = FakeTensorDock(load_catalog(ONE_HOST), clock)
    workload = Workload([Job(0, 13, 600, 1), Job(1, 47, 600, 1)], state, DEFAULT_THROUGHPUT, ORIGIN)
    read_at: list[float] = []
    original = workload.read
    workload.read = lambda now: (read_at.append(now - ORIGIN), original(now))[1]  # type: ignore[method-assign]
    watch = QueueWatch()
    watch.cycle_saw(original(ORIGIN))

    def always(_: float) -> bool:
        return True

    assert _watched_until(workload, watch, ORIGIN, ORIGIN + 300, 10.0, spare=always) == ORIGIN + 20
    assert read_at == [10.0, 20.0]
    watch.cycle_saw(original(ORIGIN + 20))  # the early cycle: one job waits (no instance yet)
    read_at.clear()
    assert _watched_until(workload, watch, ORIGIN + 20, ORIGIN + 50, 10.0, spare=always) == ORIGIN + 50
    assert read_at == []  # 47's reading is 50, the regular cycle's time
    assert _watched_until(workload, watch, ORIGIN + 20, ORIGIN + 320, 10.0, spare=always) == ORIGIN + 50
    assert read_at == [40.0, 50.0] and workload.next_arrival is None


def test_the_modelled_watch_reads_nothing_until_the_rate_limit_can_spare_a_call() -> None:
    """As the daemon's watch: a reading the rate limit cannot spare is not taken, and the news waits
    for the first one it can (here 35 s: the reading at 40, not the one at 20 after the arrival)."""
    clock = ManualClock(ORIGIN)
    state = FakeTensorDock(load_catalog(ONE_HOST), clock)
    workload = Workload([Job(0, 13, 600, 1)], state, DEFAULT_THROUGHPUT, ORIGIN)
    watch = QueueWatch()
    watch.cycle_saw(workload.read(ORIGIN))
    spared: list[float] = []

    def spare(at: float) -> bool:
        spared.append(at - ORIGIN)
        return at >= ORIGIN + 35

    assert _watched_until(workload, watch, ORIGIN, ORIGIN + 300, 10.0, spare=spare) == ORIGIN + 40
    assert spared[:3] == [20.0, 30.0, 40.0]
