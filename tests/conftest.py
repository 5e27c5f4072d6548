"""Shared fixtures: a fake TensorDock (in-process or on a socket) and clients pointed at it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from autoscaler.common.clock import ManualClock
from autoscaler.common.logging import configure_logging
from autoscaler.tensordock import CreateInstanceRequest, PortForward
from autoscaler.tensordock.client import TensorDockClient
from autoscaler.tensordock.fake import FakeTensorDockApp, build_fake, in_process_transport

TOKEN = "td-test-token-5f2c9a7e41b3d8"
REPO = Path(__file__).resolve().parents[1]
SPEC_PATH = Path(os.environ.get("TDAS_SPEC_PATH", REPO.parent / "shared/spec/tensordock-instances-v2.openapi.yml"))
RTX4090 = "geforcertx4090-pcie-24gb"

configure_logging("WARNING")  # tests that read logs configure their own stream


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture(params=["documented", "spec", "observed"])
def dialect(request: pytest.FixtureRequest) -> str:
    return str(request.param)


MakeFake = Callable[..., FakeTensorDockApp]
MakeClient = Callable[..., TensorDockClient]


@pytest.fixture
def make_fake(clock: ManualClock) -> MakeFake:
    def make(dialect: str = "documented", **kwargs: Any) -> FakeTensorDockApp:
        kwargs.setdefault("clock", clock)
        return build_fake(TOKEN, dialect, **kwargs)  # type: ignore[arg-type]

    return make


@pytest.fixture
def make_client(clock: ManualClock) -> Iterator[MakeClient]:
    """A client on the in-process transport, on the test's virtual clock, so back-off costs no time."""
    clients: list[TensorDockClient] = []

    def make(app: FakeTensorDockApp, **kwargs: Any) -> TensorDockClient:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("wire_format", app.renderer.dialect)
        kwargs.setdefault("token", TOKEN)
        client = TensorDockClient("http://fake/api/v2", transport=in_process_transport(app), **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def create_request(
    location_id: str | None = None,
    *,
    hostnode_id: str | None = None,
    name: str = "fleet-a1b2",
    gpu_model: str | None = RTX4090,
    gpu_count: int = 1,
    vcpu: int = 8,
    ram: int = 32,
) -> CreateInstanceRequest:
    return CreateInstanceRequest(
        name=name,
        image="ubuntu2404",
        gpu_model=gpu_model,
        gpu_count=gpu_count,
        vcpu_count=vcpu,
        ram_gb=ram,
        storage_gb=100,
        location_id=location_id,
        hostnode_id=hostnode_id,
        ssh_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAITestKey test@example",
        port_forwards=(PortForward(internal_port=22, external_port=20022),),
        cloud_init={"runcmd": ["echo ready"]},
    )


def stopped_instance(client: TensorDockClient, clock: ManualClock, request: CreateInstanceRequest) -> str:
    """Create, let it boot, stop it and let it settle, with the fake's default delays (30 s, 10 s)."""
    created = client.create_instance(request)
    clock.advance(31)
    client.stop_instance(created.id)
    clock.advance(11)
    return created.id


def location_of(app: FakeTensorDockApp, city: str) -> str:
    return next(loc.id for loc in app.state.catalog.locations if loc.city == city)


def host_named(app: FakeTensorDockApp, model: str, city: str) -> str:
    loc = next(loc for loc in app.state.catalog.locations if loc.city == city)
    return next(host.id for host in loc.hostnodes if model in host.gpus)
