"""`make demo` until the daemon lands: one instance walked through its whole life on the fake API.

Everything here goes through the real client over a real socket, so what it prints is what the
daemon will see: offers and prices, each lifecycle step, and the bill the fake charged.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

import httpx

from autoscaler.clock import SystemClock
from autoscaler.tensordock import (
    CreateInstanceRequest,
    Instance,
    InstanceStatus,
    ModifyInstanceRequest,
    PortForward,
    TensorDockClient,
)
from autoscaler.tensordock.fake import FakeServer, Timings, build_fake

DEMO_TOKEN = "demo-token-not-a-secret"  # noqa: S105 - the fake's own token, printed nowhere


def _wait_for(client: TensorDockClient, instance_id: str, wanted: InstanceStatus, timeout_s: float = 30.0) -> Instance:
    deadline = time.monotonic() + timeout_s
    while True:
        instance = client.get_instance(instance_id)
        if instance.status is wanted:
            return instance
        if time.monotonic() > deadline:
            raise TimeoutError(f"instance {instance_id} still {instance.status.value} after {timeout_s} s")
        time.sleep(0.5)


def run_walkthrough(out: TextIO = sys.stdout, speed: float = 1.0) -> float:
    """Returns the fake's bill in USD so a test can check the demo did real work."""
    timings = Timings(create_s=4 / speed, ip_s=2 / speed, start_s=3 / speed, stop_s=2 / speed)
    app = build_fake(DEMO_TOKEN, "observed", clock=SystemClock(), timings=timings)
    say: Callable[[str], None] = lambda line: print(line, file=out, flush=True)  # noqa: E731
    with FakeServer(app) as server, TensorDockClient(server.url, DEMO_TOKEN, rate_limit=100) as client:
        say(f"fake TensorDock API listening on {server.url} (dialect: observed)")
        offers = sorted(
            (offer for location in client.list_locations() for offer in location.gpus if offer.max_count >= 1),
            key=lambda offer: offer.hourly_price(1, 8, 32, 100),
        )
        say(f"{len(offers)} GPU offers; the five cheapest for 1 GPU, 8 vCPU, 32 GB RAM, 100 GB disk:")
        for offer in offers[:5]:
            price = offer.hourly_price(1, 8, 32, 100)
            say(f"  {offer.gpu_model:<28} ${price:.3f}/h  (location {offer.location_id[:8]})")
        offer = next(o for o in offers if o.gpu_model == "geforcertx4090-pcie-24gb")
        request = CreateInstanceRequest(
            name="demo-worker-1",
            image="ubuntu2404",
            gpu_model=offer.gpu_model,
            gpu_count=1,
            vcpu_count=8,
            ram_gb=32,
            storage_gb=100,
            location_id=offer.location_id,
            ssh_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemoKeyOnly demo@example",
            port_forwards=(PortForward(internal_port=22, external_port=20022),),
            cloud_init={"runcmd": ["echo worker ready"]},
        )
        created = client.create_instance(request)
        say(f"create  -> {created.name} id={created.id[:8]} status={created.status.value}")
        running = _wait_for(client, created.id, InstanceStatus.RUNNING)
        say(f"running -> ip={running.ip_address} rateHourly=${running.rate_hourly:.3f}/h gpus={running.gpu_count}")
        say(f"stop    -> {client.stop_instance(created.id).value}")
        stopped = _wait_for(client, created.id, InstanceStatus.STOPPED)
        storage_rate = offer.pricing.storage_price(stopped.storage_gb or 0)
        say(f"stopped -> only storage bills now: ${storage_rate:.4f}/h instead of ${stopped.rate_hourly:.3f}/h")
        client.modify_instance(
            created.id, ModifyInstanceRequest(vcpu_count=16, ram_gb=64, gpu_model=offer.gpu_model, gpu_count=2)
        )
        modified = client.get_instance(created.id)
        say(
            f"modify  -> gpus={modified.gpu_count} vcpu={modified.vcpu_count} ram={modified.ram_gb:g} GB "
            f"rateHourly=${modified.rate_hourly:.3f}/h"
        )
        say(f"start   -> {client.start_instance(created.id).value}")
        _wait_for(client, created.id, InstanceStatus.RUNNING)
        say("running again")
        client.delete_instance(created.id)
        say(f"delete  -> instances left: {len(client.list_instances())}")
        bill = httpx.get(f"{server.root_url}/_fake/bill").json()
        say(f"bill    -> ${bill['total_usd']:.5f} charged by the fake for this walk-through")
        return float(bill["total_usd"])
