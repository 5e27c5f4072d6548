"""Between cycles, notice new work: a queue that grew since the last cycle runs the next one now.

A cycle every `scheduler.interval_s` makes a job that needs a new instance wait for the next
cycle, then for the boot. Karpenter reacts to pending pods within seconds; a managed-jobs
controller places a job as it is submitted. The daemon (and the simulator, which models it)
therefore reads the demand every `scheduler.watch_s` between cycles and asks this watch whether
new work arrived that no cycle has seen.

Work has arrived when the queue rose above its lowest reading since the last cycle (or the last
trigger), in jobs, in GPUs or in a width class: between arrivals a queue only shrinks (workers take jobs), so a rise
above the low-water mark is new work, even when jobs that drained the queue hide it from a plain
comparison with the cycle's reading. Width classes count only where both readings carry the
whole histogram: a sample of the head of the queue shifts as the queue drains, and a missing
histogram is unknown, not empty. A queue that only shrinks never triggers; scale-down waits for
the regular cycle, as its delays do anyway. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping

from autoscaler.signals.base import Demand


class QueueWatch:
    def __init__(self) -> None:
        self._jobs: int | None = None  # None: no cycle reading to compare with
        self._gpus: int | None = None
        self._by_width: dict[int, int] | None = None
        self._untold = False  # new work read that no cycle has been run for yet

    def cycle_saw(self, demand: Demand | None) -> None:
        """A cycle read this demand (None: it could not, or it failed; then nothing triggers until a
        cycle reads one, so a failing API or source is retried by the regular cycle, not every watch)."""
        self._jobs = None if demand is None else demand.queued_jobs
        self._gpus = None if demand is None else demand.queued_gpus
        widths = None if demand is None else _whole_histogram(demand)
        self._by_width = None if widths is None else dict(widths)
        self._untold = False

    def news(self, demand: Demand, *, can_act: bool) -> bool:
        """Whether to run a cycle now: this reading or an earlier one showed new work, and the
        caller can act on it (the rate limit can spare the cycle's calls). Work read while it cannot
        is kept until it can, or until a cycle reads the queue itself; every reading moves the marks."""
        self._untold = self.grew(demand) or self._untold
        if not (self._untold and can_act):
            return False
        self._untold = False
        return True

    def grew(self, demand: Demand) -> bool:
        """Whether this reading shows work no cycle has seen. New work is reported once: the reading
        becomes the mark, as the cycle it runs would make it; otherwise it lowers the marks."""
        if self._jobs is None:
            return False
        widths = _whole_histogram(demand)
        fresh = demand.queued_jobs > self._jobs or _rose(demand.queued_gpus, self._gpus)
        if widths is not None and self._by_width is not None:
            fresh = fresh or any(count > self._by_width.get(width, 0) for width, count in widths.items())
        if fresh:
            self.cycle_saw(demand)
            return True
        self._jobs = min(self._jobs, demand.queued_jobs)  # between arrivals: the low-water marks
        if demand.queued_gpus is not None:
            self._gpus = demand.queued_gpus if self._gpus is None else min(self._gpus, demand.queued_gpus)
        if widths is not None and self._by_width is not None:
            marks = self._by_width
            for width in set(marks) | set(widths):
                marks[width] = min(marks.get(width, 0), widths.get(width, 0))
        return False


def _rose(now: int | None, mark: int | None) -> bool:
    return now is not None and mark is not None and now > mark


def _whole_histogram(demand: Demand) -> Mapping[int, int] | None:
    """The waiting jobs by width when the source counted them all (not a sample of the head)."""
    widths = demand.queued_by_width
    if widths is None or sum(widths.values()) < demand.queued_jobs:
        return None
    return widths
