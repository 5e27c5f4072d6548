"""The marketplace around the fleet: calm (only what the fleet does changes it) or noisy.

`noisy` is what TensorDock's marketplace does to a renter, on a seeded schedule:
- stale offers: a listed offer fails to create 5 % of the time (the fake's `stale_create_rate`);
- reclaim: a stopped tier-0 instance loses its GPUs at 5 % per hour (the fake's `reclaim_per_hour`);
- other renters: on each host, about one rental every 8 hours takes some of the free GPUs of a
  model for 1-12 hours (the fleet sees less capacity, and a create can fail);
- price drift: a third of the hosts move their GPU prices by a random walk of about 3 % a day,
  within -15 % and +25 % of the list price; instances keep the price they were created at.

The schedule of drift is drawn up front, so the LP bound can price each host at the lowest it
reaches (`price_floor`), which keeps it a lower bound.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

from autoscaler.tensordock.fake import Catalog, Faults
from autoscaler.tensordock.fake.state import FakeTensorDock, _ForeignRental

MarketProfile = Literal["calm", "noisy"]
MARKETS: tuple[MarketProfile, ...] = ("calm", "noisy")
DAY = 86400.0


@dataclass(frozen=True)
class NoisyParameters:
    stale_create_rate: float = 0.05
    reclaim_per_hour: float = 0.05
    rentals_per_host_hour: float = 1 / 8
    rental_hours: tuple[float, float] = (1.0, 12.0)
    drifting_share: float = 1 / 3
    drift_per_day: float = 0.03
    drift_range: tuple[float, float] = (0.85, 1.25)
    days: int = 120


NOISY = NoisyParameters()


def market_faults(profile: MarketProfile, faults: Faults) -> Faults:
    """The fake's own faults for this profile, on top of the ones given."""
    if profile == "calm":
        return faults
    return faults.model_copy(
        update={
            "stale_create_rate": max(faults.stale_create_rate, NOISY.stale_create_rate),
            "reclaim_per_hour": max(faults.reclaim_per_hour, NOISY.reclaim_per_hour),
        }
    )


class Market:
    """Moves the fake's marketplace along as simulated time passes (`advance`)."""

    def __init__(self, profile: MarketProfile, catalog: Catalog, origin: float, seed: int) -> None:
        self.profile = profile
        self.origin = origin
        self.rng = random.Random(f"market/{seed}")
        self.list_catalog = catalog
        self.drift: dict[str, list[float]] = {}  # host id -> price factor per day
        self._day = 0
        self._next_rental: dict[str, float] = {}
        if profile == "noisy":
            hosts = [host.id for loc in catalog.locations for host in loc.hostnodes]
            for host_id in hosts:
                if self.rng.random() < NOISY.drifting_share:
                    factor, path = 1.0, []
                    for _ in range(NOISY.days):
                        path.append(factor)
                        factor *= math.exp(self.rng.gauss(0.0, NOISY.drift_per_day))
                        factor = min(max(factor, NOISY.drift_range[0]), NOISY.drift_range[1])
                    self.drift[host_id] = path
                self._next_rental[host_id] = origin + self.rng.expovariate(NOISY.rentals_per_host_hour) * 3600

    def price_floor(self) -> dict[str, float]:
        """Per host, the lowest factor its prices reach: what the LP bound must price at."""
        return {host_id: min(path) * 0.999 for host_id, path in self.drift.items()}  # below the rounding

    def advance(self, state: FakeTensorDock, now: float) -> None:
        if self.profile == "calm":
            return
        with state.lock:
            state.settle()
            day = min(int((now - self.origin) // DAY), NOISY.days - 1)
            if day != self._day:
                self._day = day
                self._reprice(state, day)
            for _, host in state.hosts():
                while self._next_rental[host.id] <= now:
                    at = self._next_rental[host.id]
                    self._next_rental[host.id] = at + self.rng.expovariate(NOISY.rentals_per_host_hour) * 3600
                    free = state.free(host).gpus
                    models = sorted(m for m, n in free.items() if n > 0)
                    if not models:
                        continue
                    model = self.rng.choice(models)
                    count = self.rng.randint(1, free[model])
                    until = at + self.rng.uniform(*NOISY.rental_hours) * 3600
                    if until > now:
                        state._foreign.append(_ForeignRental(host.id, model, count, until))

    def _reprice(self, state: FakeTensorDock, day: int) -> None:
        """Today's prices into the fake's catalog (the listings and new creates read it)."""
        locations = []
        for loc in self.list_catalog.locations:
            hosts = []
            for host in loc.hostnodes:
                factor = self.drift.get(host.id, [1.0] * NOISY.days)[day]
                gpus = {
                    m: g.model_copy(update={"price_per_hr": round(g.price_per_hr * factor, 4)})
                    for m, g in host.gpus.items()
                }
                hosts.append(host.model_copy(update={"gpus": gpus}))
            locations.append(loc.model_copy(update={"hostnodes": hosts}))
        state.catalog = self.list_catalog.model_copy(update={"locations": locations})
        state._host_index = {h.id: (loc, h) for loc in state.catalog.locations for h in loc.hostnodes}
        state._location_index = {loc.id: loc for loc in state.catalog.locations}
