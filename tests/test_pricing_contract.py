"""Contract: what the daemon expects an instance to cost is what the fake bills for it.

The client reads discovery and prices a shape with its own rule (`tensordock.Pricing`, through the
snapshot's `Offer`, as the engine does); the fake bills with its own formula
(`tensordock.fake.pricing`), written separately from the field notes. A misread rule on either
side (a resource left out, a per-GPU price taken per instance) shows up here as a different bill.
"""

from __future__ import annotations

import pytest

from autoscaler.common.clock import ManualClock
from autoscaler.core.shape import InstanceShape
from autoscaler.core.snapshot import Offer, offers_from
from autoscaler.tensordock import PortForward
from autoscaler.tensordock.client import TensorDockClient

from .conftest import RTX4090, MakeClient, MakeFake, create_request, host_named

SHAPES = [  # (model, city, gpus, shape per GPU): one GPU, and wider ones on dearer hosts
    (RTX4090, "Chicago", 1, InstanceShape(vcpu_per_gpu=8, ram_gb_per_gpu=32, storage_gb=100)),
    ("a100-sxm4-80gb", "New York", 2, InstanceShape(vcpu_per_gpu=12, ram_gb_per_gpu=96, storage_gb=250)),
    ("l40s-pcie-48gb", "Los Angeles", 4, InstanceShape(vcpu_per_gpu=4, ram_gb_per_gpu=24, storage_gb=500)),
]


def client_offer(client: TensorDockClient, host_id: str, model: str) -> Offer:
    offers = offers_from(client.list_locations(), client.list_hostnodes())
    return next(o for o in offers if o.hostnode_id == host_id and o.gpu_model == model)


@pytest.mark.parametrize(("model", "city", "gpus", "shape"), SHAPES)
def test_the_clients_price_is_the_fakes_bill(
    dialect: str,
    make_fake: MakeFake,
    make_client: MakeClient,
    clock: ManualClock,
    model: str,
    city: str,
    gpus: int,
    shape: InstanceShape,
) -> None:
    app = make_fake(dialect)
    client = make_client(app)
    host_id = host_named(app, model, city)
    offer = client_offer(client, host_id, model)
    pricing = offer.pricing
    assert min(pricing.per_vcpu_hr, pricing.per_gb_ram_hr, pricing.per_gb_storage_hr) > 0  # every term counts
    expected_rate = offer.hourly_price(shape, gpus)
    expected_storage = pricing.storage_price(shape.storage_gb)

    port = offer.available_ports[0] if offer.available_ports else 20022
    request = create_request(hostnode_id=host_id, gpu_model=model, gpu_count=gpus).model_copy(
        update={
            "vcpu_count": shape.vcpu_per_gpu * gpus,
            "ram_gb": shape.ram_gb_per_gpu * gpus,
            "storage_gb": shape.storage_gb,
            "port_forwards": (PortForward(internal_port=22, external_port=port),),
        }
    )
    created = client.create_instance(request)
    clock.advance(3600)  # starting, then running: the full rate throughout
    app.state.settle()
    assert app.state.bill().per_instance_usd[created.id] == pytest.approx(expected_rate, rel=1e-9)

    client.stop_instance(created.id)
    clock.advance(11)  # stopping (billed in full) until stopped
    app.state.settle()
    before = app.state.bill().per_instance_usd[created.id]
    clock.advance(3600)
    app.state.settle()
    stopped_hour = app.state.bill().per_instance_usd[created.id] - before
    assert stopped_hour == pytest.approx(expected_storage, rel=1e-9)
