"""When a stop that nobody watched finished: learned from the stops that were watched.

The ledger charges the rate it last saw until it sees another, an upper bound. A process that
has just started, or just became leader, did not see the gap before its first listing: a stop
its predecessor asked for ended somewhere in it, and charging the full rate for the whole gap
over-counts every crash. How long stops take is learned from stops watched to the end (each
sample is an upper bound: call to first listing that shows it stopped), kept in the store so
that the next process has them, and the gap is charged up to the call plus the longest of them.
"""

from __future__ import annotations

from autoscaler.store import Store

_KEEP = 20


class StopDurations:
    def __init__(self, store: Store) -> None:
        self._store = store

    def learn(self, seconds: float) -> None:
        if seconds >= 0:
            self._store.keep_stop_seconds([*self._store.stop_seconds(), seconds][-_KEEP:])

    def longest(self) -> float | None:
        """None until a stop has been watched: then the gap is charged whole, as before."""
        samples = self._store.stop_seconds()
        return max(samples) if samples else None
