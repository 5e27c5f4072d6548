"""`make demo`: the real daemon against the fake API and a burst-and-lull queue in accelerated time.

`demo --walkthrough` instead walks one instance through create, stop, modify, start and delete
with the client, printing each step and the bill. Both use real sockets and the real code paths.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import httpx

from autoscaler.common.clock import SystemClock
from autoscaler.signals import Demand
from autoscaler.tensordock import CreateInstanceRequest, Instance, InstanceStatus, ModifyInstanceRequest, PortForward
from autoscaler.tensordock.client import TensorDockClient
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


def _fit(line: str, width: int) -> str:
    return line if len(line) <= width else line[: max(1, width - 1)] + "…"


def _gpus(n: int) -> str:
    return f"{n} GPU" if n == 1 else f"{n} GPUs"


def _fleet(app: Any) -> tuple[list[Any], float, float]:
    with app.state.lock:
        app.state.settle()
        instances = app.state.instances()
        bill = app.state.bill().total_usd
        rate = sum(app.state.billing_rate(i) for i in instances)
    return instances, rate, bill


def _names(instances: list[Any], runtime_store: Any) -> dict[str, str]:
    """Instance id -> name, for the listed ones and for those already deleted (the journal's creates)."""
    names = {entry_id: entry.name for entry_id, entry in runtime_store.creates().items() if entry.name}
    return names | {i.id: i.name for i in instances}


def _action_line(entry: Any, names: dict[str, str]) -> str:
    """One action as the operator reads it: kind, outcome, the instance's name (never a cut-off UUID), why."""
    name = entry.name or names.get(entry.instance_id or "", "") or entry.instance_id or "-"
    return f"  > {entry.kind:<6} {entry.outcome or '…':<7} {name:<16} {entry.reason}"


def _view(workload: DemoWorkload, app: Any, clock: Any, runtime_store: Any, width: int = 100) -> str:
    """The live view: every number labelled, every line fitted to the terminal's width."""
    instances, rate, bill = _fleet(app)
    by_model: dict[str, dict[str, int]] = {}
    for inst in instances:
        by_model.setdefault(inst.gpu_model or "cpu", {}).setdefault(inst.phase, 0)
        by_model[inst.gpu_model or "cpu"][inst.phase] += inst.gpu_count
    totals: dict[str, int] = {}
    for phases in by_model.values():
        for phase, n in phases.items():
            totals[phase] = totals.get(phase, 0) + n
    minutes = (clock.now() - workload.start) / 60
    running_jobs = sum(len(e) for e in workload.slots.values())
    fleet = ", ".join(f"{_gpus(n)} {phase}" for phase, n in sorted(totals.items())) or "no instances"
    lines = [
        f"tensordock-autoscaler demo  |  virtual time {int(minutes) // 60:d}h{int(minutes) % 60:02d}m",
        f"queue: {len(workload.queue)} jobs waiting, {running_jobs} running, {workload.completed} done",
        f"fleet: {fleet}  |  ${rate:.3f}/h now, ${bill:.3f} spent",
    ]
    for model, phases in sorted(by_model.items()):
        lines.append(f"  {model}: " + ", ".join(f"{_gpus(n)} {phase}" for phase, n in sorted(phases.items())))
    names = _names(instances, runtime_store)
    recent = [e for e in runtime_store.journal(6) if e.outcome]
    lines += [_action_line(entry, names) for entry in recent[-4:]]
    return "\n".join(_fit(line, width) for line in lines)


class _PlainLines:
    """Off a terminal: each action once as it happens, and a status line now and then; no redraws."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.seen: set[int] = set()

    def actions(self, app: Any, runtime_store: Any) -> None:
        instances, _, _ = _fleet(app)
        names = _names(instances, runtime_store)
        for entry in runtime_store.journal(50):
            if entry.outcome and entry.id not in self.seen:
                self.seen.add(entry.id)
                print(_action_line(entry, names).strip(), file=self.out, flush=True)

    def status(self, workload: DemoWorkload, app: Any, clock: Any) -> None:
        instances, rate, bill = _fleet(app)
        active = sum(i.gpu_count for i in instances if i.phase != "stopped")
        minutes = (clock.now() - workload.start) / 60
        print(
            f"[{int(minutes) // 60:d}h{int(minutes) % 60:02d}m] {len(workload.queue)} jobs waiting,"
            f" {sum(len(e) for e in workload.slots.values())} running, {workload.completed} done;"
            f" {_gpus(active)} up; ${rate:.3f}/h; ${bill:.3f} spent",
            file=self.out,
            flush=True,
        )


def arrived_jobs(elapsed_s: float) -> int:
    """Jobs of the demo's schedule that have arrived after `elapsed_s` virtual seconds."""
    return sum(count for minute, count in ARRIVALS_MIN if minute * 60 <= elapsed_s)


def fixed_fleet(app: Any, gpus: int) -> tuple[float, list[tuple[str, int, float]]]:
    """The cheapest fleet of `gpus` 1-GPU instances the catalog can actually supply: ($/h, [(model, n, $/h each)])."""
    offers = sorted(
        (host.pricing.hourly_price(gpu.price_per_hr, 1, 8, 32, 100), model, gpu.count)
        for _, host in app.state.hosts()
        for model, gpu in host.gpus.items()
    )
    picked: dict[tuple[str, float], int] = {}
    left = gpus
    for price, model, count in offers:
        if left <= 0:
            break
        take = min(count, left)
        picked[(model, price)] = picked.get((model, price), 0) + take
        left -= take
    if left > 0:
        raise ValueError(f"the catalog cannot supply {gpus} GPUs")
    rows = [(model, n, price) for (model, price), n in sorted(picked.items(), key=lambda kv: kv[0][1])]
    return sum(n * price for _, n, price in rows), rows


def fixed_fleet_waits(slots: int, until_s: float) -> list[float]:
    """Waits of the arrived jobs on `slots` always-ready GPUs (FIFO, JOB_MINUTES each)."""
    free = [0.0] * max(1, slots)
    waits = []
    for minute, count in ARRIVALS_MIN:
        arrival = minute * 60.0
        if arrival > until_s:
            break
        for _ in range(count):
            free.sort()
            start = max(arrival, free[0])
            if start > until_s:
                continue  # would not have started within the demo either
            waits.append(start - arrival)
            free[0] = start + JOB_MINUTES * 60
    return waits


def run_daemon_demo(
    out: TextIO = sys.stdout, *, wall_seconds: float = 150.0, speed: float = 60.0, metrics_port: int = 9464
) -> dict[str, float]:
    """The real daemon against the fake API, a burst and a lull in accelerated time, then a summary."""
    import tempfile
    import threading

    from autoscaler.common.clock import ScaledClock
    from autoscaler.common.wsgi import free_port
    from autoscaler.config import Settings
    from autoscaler.service.daemon import Daemon

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
        plain = _PlainLines(out)

        def watch() -> None:
            deadline = time.monotonic() + wall_seconds
            next_status = 0.0
            while time.monotonic() < deadline and not daemon._stop.is_set():
                with app.state.lock:
                    peak[0] = max(peak[0], sum(i.gpu_count for i in app.state.instances() if i.phase != "stopped"))
                if tty:
                    width = shutil.get_terminal_size((100, 24)).columns
                    frame = _view(workload, app, clock, daemon.runtime.store, width)
                    print("\033[H\033[J" + frame, file=out, flush=True)
                else:
                    plain.actions(app, daemon.runtime.store)
                    if time.monotonic() >= next_status:
                        plain.status(workload, app, clock)
                        next_status = time.monotonic() + 10.0
                time.sleep(1.0)
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
        elapsed = clock.now() - workload.start
        arrived = arrived_jobs(elapsed)
        fixed_rate, fixed_rows = fixed_fleet(app, max(1, peak[0]))
        fixed = fixed_rate * hours
        fixed_waits = fixed_fleet_waits(max(1, peak[0]), elapsed)
        summary = {
            "jobs_served": float(workload.completed),
            "jobs_arrived": float(arrived),
            "jobs_total": float(arrived),
            "spend_usd": spent,
            "fixed_fleet_usd": fixed,
            "virtual_hours": hours,
            "mean_wait_min": (sum(workload.waits) / len(workload.waits) / 60) if workload.waits else 0.0,
            "fixed_mean_wait_min": (sum(fixed_waits) / len(fixed_waits) / 60) if fixed_waits else 0.0,
        }
        offers = ", ".join(f"{n}x {model} at ${price:.3f}/h" for model, n, price in fixed_rows)
        print(
            f"\nsummary after {hours:.1f} virtual hours, {arrived} jobs arrived:\n"
            f"  autoscaled: {workload.completed} jobs done, mean wait {summary['mean_wait_min']:.1f} min,"
            f" cost ${spent:.2f}\n"
            f"  fixed fleet of the autoscaler's peak, {_gpus(max(1, peak[0]))} always on ({offers}):"
            f" mean wait {summary['fixed_mean_wait_min']:.1f} min, cost ${fixed:.2f}",
            file=out,
            flush=True,
        )
        return summary
