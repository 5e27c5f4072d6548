"""`make demo`: the real daemon against the fake API and a burst-and-lull queue in accelerated time.

`demo --walkthrough` instead walks one instance through create, stop, modify, start and delete
with the client, printing each step and the bill. Both use real sockets and the real code paths.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import httpx

from autoscaler.clock import SystemClock
from autoscaler.signals import Demand
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
    app = build_fake(DEMO_TOKEN, "documented", clock=SystemClock(), timings=timings)
    say: Callable[[str], None] = lambda line: print(line, file=out, flush=True)  # noqa: E731
    with FakeServer(app) as server, TensorDockClient(server.url, DEMO_TOKEN, rate_limit=100) as client:
        say(f"fake TensorDock API listening on {server.url} (dialect: documented)")
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
        say(f"running -> ip={running.ip_address} rateHourly=${running.rate_hourly or 0:.3f}/h")
        say(f"stop    -> {client.stop_instance(created.id).value}")
        stopped = _wait_for(client, created.id, InstanceStatus.STOPPED)
        storage_rate = offer.pricing.storage_price(request.storage_gb)
        say(f"stopped -> only storage bills now: ${storage_rate:.4f}/h instead of ${stopped.rate_hourly or 0:.3f}/h")
        bigger = ModifyInstanceRequest(vcpu_count=16, ram_gb=64, gpu_model=offer.gpu_model, gpu_count=2)
        client.modify_instance(created.id, bigger)
        modified = client.get_instance(created.id)  # the documented GET lists no resources: the request says them
        say(
            f"modify  -> gpus={bigger.gpu_count} vcpu={bigger.vcpu_count} ram={bigger.ram_gb} GB "
            f"rateHourly=${modified.rate_hourly or 0:.3f}/h"
        )
        say(f"start   -> {client.start_instance(created.id).value}")
        _wait_for(client, created.id, InstanceStatus.RUNNING)
        say("running again")
        client.delete_instance(created.id)
        say(f"delete  -> instances left: {len(client.list_instances())}")
        bill = httpx.get(f"{server.root_url}/_fake/bill").json()
        say(f"bill    -> ${bill['total_usd']:.5f} charged by the fake for this walk-through")
        return float(bill["total_usd"])


# -- the daemon demo: `make demo` -------------------------------------------------------------------

ARRIVALS_MIN = ((0, 10), (15, 6), (100, 8), (115, 4))  # (virtual minute, jobs that arrive then)
JOB_MINUTES = 20.0
CLOUD_INIT_S = 90.0  # a new instance takes jobs this long after it is running


class DemoWorkload:
    """A burst-and-lull job queue served by the fake's running instances; also the daemon's demand source.

    Each running GPU (after cloud-init) takes one job at a time; the busy flags it reports let the
    autoscaler stop only instances that have finished their work.
    """

    kind = "demo"
    name = "demo-queue"

    def __init__(self, state: Any, start: float) -> None:
        self.state = state
        self.start = start
        self.queue: list[float] = []  # arrival times of waiting jobs
        self.slots: dict[str, list[float]] = {}  # instance name -> end times of its jobs
        self.completed = 0
        self.waits: list[float] = []
        self._arrived = 0

    def read(self, now: float) -> Demand:
        for minute, count in ARRIVALS_MIN[self._arrived :]:
            if now - self.start < minute * 60:
                break
            self.queue.extend([self.start + minute * 60] * count)
            self._arrived += 1
        with self.state.lock:
            self.state.settle()
            ready = {
                inst.name: inst.gpu_count
                for inst in self.state.instances()
                if inst.phase == "running" and now - inst.created_at > self.state.timings.create_s + CLOUD_INIT_S
            }
        for name in list(self.slots):
            if name not in ready:
                self.slots.pop(name)  # stopped or deleted under its jobs: cannot happen while busy
        for name, gpus in ready.items():
            ends = [end for end in self.slots.get(name, []) if end > now]
            self.completed += len(self.slots.get(name, [])) - len(ends)
            while len(ends) < gpus and self.queue:
                self.waits.append(now - self.queue.pop(0))
                ends.append(now + JOB_MINUTES * 60)
            self.slots[name] = ends
        running = sum(len(ends) for ends in self.slots.values())
        busy = {name: bool(self.slots.get(name)) for name in ready}
        return Demand(len(self.queue), running, now, busy=busy, source=self.name)

    def close(self) -> None:
        pass


def _view(workload: DemoWorkload, app: Any, clock: Any, runtime_store: Any) -> str:
    with app.state.lock:
        app.state.settle()
        instances = app.state.instances()
        bill = app.state.bill().total_usd
        rate = sum(i.rate_hourly if i.phase != "stopped" else i.storage_rate_hourly for i in instances)
    by_model: dict[str, dict[str, int]] = {}
    for inst in instances:
        by_model.setdefault(inst.gpu_model or "cpu", {}).setdefault(inst.phase, 0)
        by_model[inst.gpu_model or "cpu"][inst.phase] += inst.gpu_count
    minutes = (clock.now() - workload.start) / 60
    lines = [
        f"tensordock-autoscaler demo  |  virtual time {int(minutes) // 60:d}h{int(minutes) % 60:02d}m"
        f"  |  queue {len(workload.queue)} waiting, {sum(len(e) for e in workload.slots.values())} running,"
        f" {workload.completed} done",
        f"fleet ${rate:.3f}/h  |  spent ${bill:.3f}",
    ]
    for model, phases in sorted(by_model.items()):
        lines.append(f"  {model:<28} " + "  ".join(f"{phase} {n}" for phase, n in sorted(phases.items())))
    recent = [e for e in runtime_store.journal(6) if e.outcome]
    for entry in recent[-4:]:
        lines.append(
            f"  > {entry.kind:<6} {entry.outcome:<7} {(entry.name or entry.instance_id or '')[:22]:<22}"
            f" {entry.reason[:70]}"
        )
    return "\n".join(lines)


def run_daemon_demo(
    out: TextIO = sys.stdout, *, wall_seconds: float = 150.0, speed: float = 60.0, metrics_port: int = 9464
) -> dict[str, float]:
    """The real daemon against the fake API, a burst and a lull in accelerated time, then a summary."""
    import tempfile
    import threading

    from autoscaler.clock import ScaledClock
    from autoscaler.config import Settings
    from autoscaler.daemon import Daemon
    from autoscaler.testing import free_port

    clock = ScaledClock(speed)
    app = build_fake(DEMO_TOKEN, "documented", clock=clock)
    workload = DemoWorkload(app.state, clock.now())
    state_dir = tempfile.mkdtemp(prefix="tdas-demo-")
    with FakeServer(app) as server:
        settings = Settings(
            tensordock={"base_url": server.url, "token": DEMO_TOKEN},
            fleet={"name_prefix": "demo", "ssh_key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDemo demo@example"},
            guards={
                "max_gpus": 12,
                "max_instances": 12,
                "scale_down_delay_s": 600,
                "scale_down_cooldown_s": 120,
            },
            policies=[
                {"name": "queue_target"},
                {"name": "cheapest_throughput"},
                {"name": "idle", "options": {"stopped_retention_s": 1800}},
            ],
            store={"url": f"sqlite:///{state_dir}/state.db"},
            scheduler={"interval_s": 1, "jitter_s": 0, "shutdown_timeout_s": 10},
            metrics={"port": metrics_port or free_port()},
            offer_refresh_s=300,
        )
        daemon = Daemon(settings, clock=clock, signal=workload)
        tty = out.isatty()
        peak = [0]

        def watch() -> None:
            deadline = time.monotonic() + wall_seconds
            while time.monotonic() < deadline and not daemon._stop.is_set():
                with app.state.lock:
                    peak[0] = max(peak[0], sum(i.gpu_count for i in app.state.instances() if i.phase != "stopped"))
                frame = _view(workload, app, clock, daemon.runtime.store)
                print(("\033[H\033[J" + frame) if tty else frame + "\n", file=out, flush=True)
                time.sleep(1.0 if tty else 10.0)
            daemon.request_stop()

        print(
            f"demo: fake TensorDock at {server.url}; metrics at http://127.0.0.1:{daemon.endpoints.port}/metrics;"
            f" {speed:g}x time for {wall_seconds:g}s",
            file=out,
            flush=True,
        )
        viewer = threading.Thread(target=watch, daemon=True)
        viewer.start()
        daemon.run()
        viewer.join(timeout=5)
        hours = (clock.now() - workload.start) / 3600
        with app.state.lock:
            app.state.settle()
            spent = app.state.bill().total_usd
        cheapest = min(
            host.pricing.hourly_price(gpu.price_per_hr, 1, 8, 32, 100)
            for _, host in app.state.hosts()
            for gpu in host.gpus.values()
        )
        fixed = peak[0] * cheapest * hours
        summary = {
            "jobs_served": float(workload.completed),
            "jobs_total": float(sum(n for _, n in ARRIVALS_MIN)),
            "spend_usd": spent,
            "fixed_fleet_usd": fixed,
            "virtual_hours": hours,
            "mean_wait_min": (sum(workload.waits) / len(workload.waits) / 60) if workload.waits else 0.0,
        }
        print(
            f"\nsummary after {hours:.1f} virtual hours: {workload.completed} of {int(summary['jobs_total'])} jobs"
            f" served (mean wait {summary['mean_wait_min']:.0f} min); the autoscaled fleet cost ${spent:.2f};"
            f" a fixed fleet of the peak {peak[0]} GPUs at the cheapest price would have cost ${fixed:.2f}.",
            file=out,
            flush=True,
        )
        return summary
