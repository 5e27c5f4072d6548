"""The LP lower bound: equal to the optimum where that can be enumerated by hand, and never above
what any strategy actually paid (across strategies and seeds)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from autoscaler.config import Settings
from autoscaler.core.snapshot import InstanceShape
from autoscaler.core.throughput import DEFAULT_THROUGHPUT
from autoscaler.sim import STRATEGIES, SimOptions, lp_for, replay_strategy
from autoscaler.sim.bound import lp_bound, lp_offers
from autoscaler.sim.runner import SIM_TOKEN
from autoscaler.sim.strategies import sim_settings
from autoscaler.sim.trace import Job
from autoscaler.tensordock.fake import Catalog

HERE = Path(__file__).parent
FREE = {"per_vcpu_hr": 0.0, "per_gb_ram_hr": 0.0, "per_gb_storage_hr": 0.0}


def _host(n: int, gpus: int, price: float) -> dict[str, Any]:
    return {
        "id": f"host-{n}",
        "gpus": {"a100-sxm4-80gb": {"count": gpus, "price_per_hr": price}},
        "vcpu_count": 8 * gpus,
        "ram_gb": 32 * gpus,
        "storage_gb": 1000,
        "max_vcpus_per_gpu": 8,
        "max_ram_per_gpu": 32,
        "pricing": FREE,
        "public_ip": f"203.0.113.{n}",
    }


# Only the GPUs cost (so a GPU-hour costs the same at any width): A has one A100 at $0.50/h,
# B has eight at $1.00/h. Throughput 1.0: a job's duration is its running time.
HAND = Catalog.model_validate(
    {
        "images": ["ubuntu2404"],
        "locations": [
            {"id": "a", "city": "A", "stateprovince": "-", "country": "-", "tier": 3, "hostnodes": [_host(1, 1, 0.5)]},
            {"id": "b", "city": "B", "stateprovince": "-", "country": "-", "tier": 3, "hostnodes": [_host(2, 8, 1.0)]},
        ],
    }
)


def bound(rows: list[tuple[float, float, int]], wait_s: float) -> float:
    offers, hosts = lp_offers(HAND, InstanceShape(), DEFAULT_THROUGHPUT)
    jobs = [Job(i, s, d, g) for i, (s, d, g) in enumerate(rows)]
    return lp_bound(jobs, offers, hosts, wait_s).usd


@pytest.mark.parametrize(
    ("rows", "wait_s", "optimum", "why"),
    [
        ([(0, 3600, 1), (0, 3600, 1)], 0, 1.5, "no waiting: one on A, one on B"),
        ([(0, 3600, 1), (0, 3600, 1)], 3600, 1.0, "an hour's wait allowed: both on A, one after the other"),
        ([(0, 3600, 2)], 0, 2.0, "two GPUs on one instance: A is too narrow"),
        ([(0, 7200, 1), (1800, 3600, 1)], 0, 2.0, "A is busy with the long job two hours, the short one on B"),
        ([(120, 1200, 1), (120, 1200, 1), (120, 1200, 1)], 0, (600 + 2400) / 3600, "A takes one, B two"),
        ([(0, 7200, 2), (3600, 3600, 1)], 3600, 4.5, "the wide job on B; the narrow one waits for nothing on A"),
    ],
)
def test_lp_equals_the_optimum_enumerated_by_hand(
    rows: list[tuple[float, float, int]], wait_s: float, optimum: float, why: str
) -> None:
    assert bound(rows, wait_s) == pytest.approx(optimum, rel=1e-6), why


def test_an_allowance_no_schedule_can_meet_is_doubled_and_reported() -> None:
    # Two eight-GPU jobs at once and one eight-GPU host: the second must wait an hour.
    offers, hosts = lp_offers(HAND, InstanceShape(), DEFAULT_THROUGHPUT)
    result = lp_bound([Job(0, 0, 3600, 8), Job(1, 0, 3600, 8)], offers, hosts, 300)
    assert result.wait_s >= 3600
    assert result.usd == pytest.approx(16.0)


def test_cached_per_trace_and_catalog(tmp_path: Path) -> None:
    offers, hosts = lp_offers(HAND, InstanceShape(), DEFAULT_THROUGHPUT)
    jobs = [Job(0, 0, 3600, 1), Job(1, 0, 3600, 1)]
    first = lp_bound(jobs, offers, hosts, 0, tmp_path)
    again = lp_bound(jobs, offers, hosts, 0, tmp_path)
    assert not first.cached and again.cached and again.usd == first.usd
    other = lp_bound([*jobs, Job(2, 0, 3600, 1)], offers, hosts, 0, tmp_path)
    assert not other.cached and other.usd > first.usd
    assert len(list(tmp_path.glob("lp-*.json"))) == 2


TWO_HOSTS = SimOptions(catalog_path=HERE / "two_host_catalog.json", lp_wait_s=0.0)

job_rows = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=3600, allow_nan=False).map(round),
        st.floats(min_value=120, max_value=3 * 3600, allow_nan=False).map(round),
        st.sampled_from([1, 1, 2]),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=job_rows,
    strategy=st.sampled_from(STRATEGIES),
    seed=st.integers(0, 3),
    market=st.sampled_from(["calm", "noisy"]),
)
def test_no_strategy_ever_costs_less_than_the_lp(
    rows: list[tuple[float, float, int]], strategy: str, seed: int, market: str
) -> None:
    jobs = [Job(i, s, d, g) for i, (s, d, g) in enumerate(sorted(rows))]
    options = SimOptions(
        catalog_path=TWO_HOSTS.catalog_path,
        seed=seed,
        market=market,
        drain_limit_s=6 * 3600,  # type: ignore[arg-type]
    )
    catalog = options.catalog()
    base = sim_settings(Settings(), SIM_TOKEN, catalog, bounds_given=False)
    run = replay_strategy(strategy, jobs, base, catalog, options)
    assume(run.jobs_completed == len(jobs))  # a strategy that gave up on a job did less work
    # The bound for a schedule whose longest wait was this one: the run is a feasible point of it.
    lp = lp_for(jobs, base, options, wait_s=max(run.waits) + 1.0)
    assert run.cost_usd >= lp.usd * (1 - 1e-9), (strategy, run.cost_usd, lp)
