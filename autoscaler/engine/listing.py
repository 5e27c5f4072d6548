"""The offer listing as this engine's own creates and deletes have left it.

A listing is read every `offer_refresh_s` (minutes), so between readings it goes stale in a way the
engine can correct without a call: a create takes GPUs and host room the listing still shows free,
and a delete gives back GPUs the listing shows taken. Without the correction, surplus deleted on a
cheap host is invisible until the next reading, so the next create pays the next-dearest offer, and
creates on hosts the fleet itself filled fail. The next reading replaces every correction: it is
TensorDock's word, and it shows what other renters did meanwhile, which no correction can.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from autoscaler.core.snapshot import Offer, full_offers_from, offers_from
from autoscaler.tensordock import Hostnode, Location


@dataclass
class _HostChange:
    gpus: dict[str, int] = field(default_factory=dict)
    vcpus: int = 0
    ram_gb: float = 0.0


class OfferListing:
    def __init__(self) -> None:
        self._locations: tuple[Location, ...] = ()
        self._hostnodes: tuple[Hostnode, ...] = ()
        self._changes: dict[str, _HostChange] = {}
        self._by_host: set[tuple[str, str]] = set()  # (location, model) the reading offered by host
        self.offers: tuple[Offer, ...] = ()
        self.full_offers: tuple[Offer, ...] = ()  # hosts with none of a model free, at their price

    def listed(self, locations: Iterable[Location], hostnodes: Iterable[Hostnode]) -> None:
        """A fresh reading: it stands as read."""
        self._locations, self._hostnodes = tuple(locations), tuple(hostnodes)
        self._changes = {}
        self._by_host = set()
        self._derive()  # no corrections, no host yet filled by the fleet: the offers as read
        self._by_host = {(o.location_id, o.gpu_model) for o in self.offers if o.hostnode_id}

    def took(self, hostnode_id: str | None, gpu_model: str | None, gpus: int, vcpus: int, ram_gb: float) -> None:
        """A create placed on a host: its GPUs and room are no longer free there."""
        self._change(hostnode_id, gpu_model, -gpus, -vcpus, -ram_gb)

    def gave_back(self, hostnode_id: str | None, gpu_model: str | None, gpus: int, vcpus: int, ram_gb: float) -> None:
        """A delete on a host: its GPUs and room are free there again, at the host's listed price."""
        self._change(hostnode_id, gpu_model, gpus, vcpus, ram_gb)

    def _change(self, hostnode_id: str | None, gpu_model: str | None, gpus: int, vcpus: int, ram_gb: float) -> None:
        if hostnode_id is None or gpu_model is None or not any(h.id == hostnode_id for h in self._hostnodes):
            return  # a location offer, or a host the reading did not show: nothing to correct
        change = self._changes.setdefault(hostnode_id, _HostChange())
        change.gpus[gpu_model] = change.gpus.get(gpu_model, 0) + gpus
        change.vcpus += vcpus
        change.ram_gb += ram_gb
        self._derive()

    def _derive(self) -> None:
        hosts = [self._corrected(h, self._changes[h.id]) if h.id in self._changes else h for h in self._hostnodes]
        self.full_offers = full_offers_from(self._locations, hosts)
        # a host the fleet filled does not make its location's own (coarser) offer stand in for it
        self.offers = tuple(
            o
            for o in offers_from(self._locations, hosts)
            if o.hostnode_id or (o.location_id, o.gpu_model) not in self._by_host
        )

    @staticmethod
    def _corrected(host: Hostnode, change: _HostChange) -> Hostnode:
        gpus = tuple(
            gpu.model_copy(update={"available_count": max(0, gpu.available_count + change.gpus.get(gpu.gpu_model, 0))})
            for gpu in host.gpus
        )
        update: dict[str, object] = {"gpus": gpus}
        if host.vcpu_count is not None:
            update["vcpu_count"] = max(0, host.vcpu_count + change.vcpus)
        if host.ram_gb is not None:
            update["ram_gb"] = max(0.0, host.ram_gb + change.ram_gb)
        return host.model_copy(update=update)
