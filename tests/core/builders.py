"""Hand-built snapshots for policy and guard unit tests."""

from __future__ import annotations

from typing import Any

from autoscaler.core.snapshot import FleetInstance, Offer, Snapshot, Spend
from autoscaler.signals import Demand
from autoscaler.tensordock import GpuAllocation, Instance, InstanceStatus, Pricing

NOW = 1_767_225_600.0 + 12 * 3600  # 2026-01-01 12:00 UTC, a Thursday
PRICING = Pricing(per_vcpu_hr=0.005, per_gb_ram_hr=0.002, per_gb_storage_hr=0.0001)


def offer(
    model: str, price: float, available: int = 8, location: str = "loc-a", host: str | None = None, tier: int = 3
) -> Offer:
    return Offer(
        location_id=location,
        hostnode_id=host or f"host-{location}-{model}",
        gpu_model=model,
        available_gpus=available,
        gpu_price_per_hr=price,
        pricing=PRICING,
        tier=tier,
    )


def instance(
    name: str,
    status: InstanceStatus = InstanceStatus.RUNNING,
    *,
    model: str = "geforcertx4090-pcie-24gb",
    gpus: int = 1,
    rate: float = 0.5,
    busy: bool | None = None,
    idle_since: float | None = None,
    status_since: float | None = None,
    created_at: float = NOW - 3600,
    **extra: Any,
) -> FleetInstance:
    return FleetInstance(
        instance=Instance(
            id=f"id-{name}",
            name=name,
            status=status,
            gpus=(GpuAllocation(model=model, count=gpus),),
            rate_hourly=rate,
            storage_gb=100,
        ),
        created_at=created_at,
        busy=busy,
        idle_since=idle_since,
        status_since=status_since,
        storage_rate_hourly=0.01,
        **extra,
    )


def snapshot(
    *instances: FleetInstance,
    queued: int | None = 0,
    running: int = 0,
    offers: tuple[Offer, ...] = (),
    busy: dict[str, bool] | None = None,
    now: float = NOW,
    **extra: Any,
) -> Snapshot:
    demand = None if queued is None else Demand(queued, running, observed_at=now, busy=busy, source="test")
    return Snapshot(
        now=now,
        demand=demand,
        instances=instances,
        unowned=(),
        offers=offers,
        spend=extra.pop("spend", Spend()),
        **extra,
    )
