"""The kept offer listing, corrected by the fleet's own creates and deletes until the next reading."""

from __future__ import annotations

from autoscaler.engine.listing import OfferListing
from autoscaler.tensordock import Hostnode, HostnodeGpu, Location, LocationGpuOffer

A4090, A3090 = "geforcertx4090-pcie-24gb", "geforcertx3090-pcie-24gb"


def _host(host_id: str, free_4090: int, *, vcpus: int = 64, ram_gb: float = 256.0) -> Hostnode:
    return Hostnode(
        id=host_id,
        location_id="loc-a",
        gpus=(
            HostnodeGpu(gpu_model=A4090, available_count=free_4090, price_per_hr=0.35),
            HostnodeGpu(gpu_model=A3090, available_count=2, price_per_hr=0.2),
        ),
        vcpu_count=vcpus,
        ram_gb=ram_gb,
    )


def _location(max_4090: int) -> Location:
    return Location(
        id="loc-a", gpus=(LocationGpuOffer(location_id="loc-a", gpu_model=A4090, max_count=max_4090, price_per_hr=0.5),)
    )


def _free(listing: OfferListing, host: str | None, model: str = A4090) -> int | None:
    found = [o for o in listing.offers if o.hostnode_id == host and o.gpu_model == model]
    return found[0].available_gpus if found else None


def test_a_create_takes_gpus_and_room_and_a_delete_gives_them_back_at_the_hosts_price() -> None:
    listing = OfferListing()
    listing.listed([_location(4)], [_host("h1", 1), _host("h2", 4)])
    listing.took("h1", A4090, 1, 8, 32.0)
    assert _free(listing, "h1") is None  # the fleet took the last one
    # nor does the location's coarser offer stand in for the host the reading offered it by
    assert not [o for o in listing.offers if o.hostnode_id is None and o.gpu_model == A4090]
    (h1_3090,) = [o for o in listing.offers if o.hostnode_id == "h1" and o.gpu_model == A3090]
    assert (h1_3090.host_vcpus_free, h1_3090.host_ram_gb_free) == (56, 224.0)  # shared by every model
    listing.gave_back("h1", A4090, 1, 8, 32.0)
    listing.gave_back("h1", A4090, 2, 16, 64.0)  # one the fleet held since before the reading
    (back,) = [o for o in listing.offers if o.hostnode_id == "h1" and o.gpu_model == A4090]
    assert back.available_gpus == 3 and back.gpu_price_per_hr == 0.35
    assert (back.host_vcpus_free, back.host_ram_gb_free) == (80, 320.0)
    assert _free(listing, "h2") == 4  # other hosts as read


def test_a_fresh_reading_replaces_every_correction_and_unknown_places_are_left_alone() -> None:
    listing = OfferListing()
    listing.listed([_location(4)], [_host("h1", 1)])
    listing.took("h1", A4090, 1, 8, 32.0)
    listing.gave_back("h9", A4090, 8, 64, 256.0)  # a host the reading did not show
    listing.took(None, A4090, 1, 8, 32.0)  # a location offer: nothing to correct by host
    assert _free(listing, "h1") is None and _free(listing, "h9") is None
    listing.listed([_location(4)], [_host("h1", 2)])
    assert _free(listing, "h1") == 2
    listing.listed([_location(4)], [_host("h1", 0)])  # a reading with the host full: the location offers it
    assert _free(listing, None) == 4
