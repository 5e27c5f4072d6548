"""Price per unit of work, in one table: the measure every policy (and the simulator's reference
strategies) ranks offers and instances by (`autoscaler.core.throughput.unit_price`)."""

from __future__ import annotations

import math

import pytest

from autoscaler.core.snapshot import Snapshot, Spend
from autoscaler.core.throughput import unit_price


@pytest.mark.parametrize(
    ("hourly_usd", "throughput", "gpus", "unit"),
    [
        (2.0, 1.0, 1, 2.0),  # the reference GPU: $/h is $ per unit
        (2.0, 1.0, 4, 0.5),  # four of them do four times the work
        (2.2, 2.2, 1, 1.0),  # a faster model at a higher price can be as cheap
        (0.9, 0.45, 2, 1.0),
        (0.0, 1.0, 1, 0.0),  # free is cheapest
        (1.0, 0.0, 1, math.inf),  # no work: never the cheapest
        (1.0, 1.0, 0, math.inf),  # no GPUs: no work
    ],
)
def test_price_per_unit_of_work(hourly_usd: float, throughput: float, gpus: int, unit: float) -> None:
    assert unit_price(hourly_usd, throughput, gpus) == unit


def test_the_snapshot_prices_by_its_own_throughput_table() -> None:
    snapshot = Snapshot(
        now=0.0, demand=None, instances=(), unowned=(), offers=(), spend=Spend(), throughput={"fast": 2.0}
    )
    assert snapshot.unit_price(3.0, "fast", 3) == 0.5
    assert snapshot.unit_price(3.0, "unlisted", 3) == 2.0  # an unknown model counts as 0.5
    assert snapshot.unit_price(3.0, None, 3) == math.inf  # no GPU model: no work
