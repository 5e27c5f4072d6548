"""The queue watch: new work between cycles, and only new work, runs the next cycle early."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from autoscaler.core.queue_watch import QueueWatch
from autoscaler.signals.base import Demand


def reading(queued: int, gpus: int | None = None, by_width: dict[int, int] | None = None) -> Demand:
    widest = max((w for w, n in (by_width or {}).items() if n), default=1)
    return Demand(queued, 0, 0.0, queued_gpus=gpus, max_job_gpus=widest, queued_by_width=by_width)


def test_a_job_added_to_the_queue_the_cycle_saw_is_new_work() -> None:
    watch = QueueWatch()
    watch.cycle_saw(reading(2))
    assert not watch.grew(reading(2))
    assert watch.grew(reading(3))


def test_a_queue_that_only_shrinks_triggers_nothing() -> None:
    watch = QueueWatch()
    watch.cycle_saw(reading(5, 20))
    assert [watch.grew(reading(n, 4 * n)) for n in (4, 4, 2, 0)] == [False] * 4


def test_new_work_hidden_by_jobs_that_left_is_still_new() -> None:
    # The cycle saw 5 waiting; 3 went to workers (2 left), then 3 arrived (5 again): the same depth
    # as the cycle saw, yet 3 jobs that no cycle has provisioned for.
    watch = QueueWatch()
    watch.cycle_saw(reading(5))
    assert not watch.grew(reading(2))
    assert watch.grew(reading(5))


def test_a_wider_job_replacing_a_narrow_one_is_new_work() -> None:
    watch = QueueWatch()
    watch.cycle_saw(reading(1, 1, {1: 1}))
    assert watch.grew(reading(1, 8, {8: 1}))  # same job count; GPUs and the 8-GPU class rose
    watch.cycle_saw(reading(2, None, {1: 2}))
    assert watch.grew(reading(2, None, {1: 1, 4: 1}))  # without GPUs, the width classes tell


def test_widths_count_only_where_both_readings_hold_the_whole_histogram() -> None:
    watch = QueueWatch()
    watch.cycle_saw(reading(1, None, {1: 1}))
    assert not watch.grew(reading(1))  # a reading without widths: unknown, not an empty histogram
    assert watch.grew(reading(1, None, {8: 1}))  # widths again: the 8-GPU class is new
    watch.cycle_saw(reading(1))
    assert not watch.grew(reading(1, None, {4: 1}))  # the cycle saw no widths: nothing to compare with


def test_a_sampled_head_of_the_queue_shifting_as_it_drains_is_not_new_work() -> None:
    # Redis width_sample: 300 waiting, widths read from the first 200. As the head drains, wider jobs
    # behind it enter the sample; no job arrived, the depth only fell.
    watch = QueueWatch()
    watch.cycle_saw(Demand(300, 0, 0.0, max_job_gpus=8, queued_by_width={1: 200}))
    drained = [Demand(300 - k, 0, 0.0, max_job_gpus=8, queued_by_width={1: 200 - 20 * k, 8: 20 * k}) for k in (1, 2, 3)]
    assert [watch.grew(d) for d in drained] == [False, False, False]
    assert watch.grew(Demand(298, 0, 0.0, max_job_gpus=8, queued_by_width={1: 140, 8: 60}))  # 1 more than 297


def test_after_a_failed_cycle_nothing_triggers_until_a_cycle_reads_the_queue() -> None:
    # A cycle that could not list the fleet or read the queue: early cycles would only retry the
    # failure every watch, so they wait for the regular one.
    watch = QueueWatch()
    assert not watch.grew(reading(10))
    watch.cycle_saw(None)
    assert not watch.grew(reading(10))
    watch.cycle_saw(reading(0))
    assert watch.grew(reading(1))


def test_new_work_is_reported_once_even_before_its_cycle_runs() -> None:
    watch = QueueWatch()
    watch.cycle_saw(reading(0))
    assert watch.grew(reading(2))
    assert not watch.grew(reading(2))  # the cycle it asked for may not have run yet
    assert watch.grew(reading(3))


def test_a_cycle_resets_the_marks() -> None:
    watch = QueueWatch()
    watch.cycle_saw(reading(1))
    assert not watch.grew(reading(0))
    watch.cycle_saw(reading(4))  # the cycle saw more than the low-water mark: its reading is the mark
    assert not watch.grew(reading(4))
    assert watch.grew(reading(5))


@given(
    start=st.integers(0, 50),
    changes=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5)), max_size=30),  # (taken, arrived)
)
def test_it_triggers_when_the_depth_passes_every_reading_since_the_cycle_and_never_without_arrivals(
    start: int, changes: list[tuple[int, int]]
) -> None:
    """Between readings workers take some jobs and some arrive; the watch sees only the depth. It
    triggers when the depth is above every reading since the last cycle or trigger (new work for
    certain), never when nothing arrived."""
    watch = QueueWatch()
    depth = start
    watch.cycle_saw(reading(depth))
    since_cycle = [depth]
    for taken, arrived in changes:
        depth = max(0, depth - taken) + arrived
        triggered = watch.grew(reading(depth))
        assert triggered == (depth > min(since_cycle))
        if arrived == 0:
            assert not triggered
        since_cycle.append(depth)
        if triggered:  # reported once: the reading is the new mark, as the cycle it runs would make it
            since_cycle = [depth]
