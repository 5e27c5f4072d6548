"""The system clock without its steps: a wall clock set forward or back is slewed out, not jumped."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from autoscaler.common import clock as clock_module
from autoscaler.common.clock import SystemClock


class Machine:
    """The two clocks SystemClock reads: the wall, which an operator or NTP may step, and elapsed time."""

    def __init__(self) -> None:
        self.wall = 1_800_000_000.0
        self.elapsed = 5_000.0

    def passes(self, seconds: float) -> None:
        self.wall += seconds
        self.elapsed += seconds


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch) -> Iterator[Machine]:
    made = Machine()
    monkeypatch.setattr(clock_module.time, "time", lambda: made.wall)
    monkeypatch.setattr(clock_module.time, "clock_gettime", lambda _: made.elapsed)
    monkeypatch.setattr(SystemClock, "_reckoned", None)
    monkeypatch.setattr(SystemClock, "_stepped", False)
    yield made


def test_in_step_it_is_the_wall_clock(machine: Machine) -> None:
    clock = SystemClock()
    assert clock.now() == machine.wall
    machine.passes(30)
    machine.wall += 0.4  # NTP's own small corrections are followed exactly
    assert clock.now() == machine.wall


def test_a_step_forward_is_slewed_out_so_a_booting_instance_is_not_aged_by_it(machine: Machine) -> None:
    """Before: a wall clock set 20 min forward 5 s after a create made that instance 'not running
    after 900 s (provision_timeout_s)' at the next cycle, and it was deleted."""
    clock, other = SystemClock(), SystemClock()
    created = clock.now()
    machine.passes(5)
    machine.wall += 20 * 60
    machine.passes(30)
    assert clock.now() - created == pytest.approx(35 * 1.05)  # a cycle later: 36.75 s, not 21 min
    assert other.now() >= clock.now() - 1e-9  # one reckoning for the whole process
    for _ in range(1000):  # converges: 5 % of real time, 20 min in 400 min
        machine.passes(30)
        clock.now()
    assert clock.now() == machine.wall


def test_a_step_back_never_runs_time_backwards(machine: Machine) -> None:
    clock = SystemClock()
    before = clock.now()
    machine.wall -= 3600
    machine.passes(10)
    after = clock.now()
    assert after == pytest.approx(before + 10 - 0.05 * 10)
    readings = []
    for _ in range(50):
        machine.passes(1)
        readings.append(clock.now())
    assert readings == sorted(readings)


def test_it_reads_the_real_clocks() -> None:
    assert abs(SystemClock().now() - time.time()) < 5
