"""Per-call overhead of TensorDockClient versus plain httpx against the same in-process fake.

    .venv/bin/python bench/client_overhead.py [--calls 2000] [--instances 50]

Both sides send the same request to the same fake through the same WSGI transport; the plain
side only decodes JSON, ours also throttles, retries-wraps, checks for errors and builds typed
models. Rounds alternate so drift hits both alike; the medians are compared. Target: < 1.5x.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import httpx

from autoscaler.common.clock import ManualClock
from autoscaler.common.logging import configure_logging
from autoscaler.tensordock import CreateInstanceRequest, PortForward
from autoscaler.tensordock.client import TensorDockClient
from autoscaler.tensordock.fake import build_fake, in_process_transport

TOKEN = "bench-token-0123456789"


def per_call_us(fn: Callable[[], object], calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--instances", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    configure_logging("WARNING")

    clock = ManualClock()
    app = build_fake(TOKEN, "observed", clock=clock, rate_limit=10**9)
    client = TensorDockClient(
        "http://fake/api/v2",
        TOKEN,
        clock=clock,
        rate_limit=10**9,
        rate_burst=10**8,
        transport=in_process_transport(app),
    )
    plain = httpx.Client(
        transport=httpx.WSGITransport(app=app),
        base_url="http://fake/api/v2",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    for i in range(args.instances):
        client.create_instance(
            CreateInstanceRequest(
                name=f"bench-{i}",
                image="ubuntu2404",
                gpu_model="l4-pcie-24gb" if i < 8 else None,
                gpu_count=1,
                vcpu_count=1,
                ram_gb=1,
                storage_gb=100,
                hostnode_id=app.state.hosts()[2][1].id,
                ssh_key="k",
                port_forwards=(PortForward(internal_port=22, external_port=20000 + i),),
            )
        )
    one = app.state.instances()[0].id
    cases: list[tuple[str, Callable[[], object], Callable[[], object], int]] = [
        ("get_instance", lambda: client.get_instance(one), lambda: plain.get(f"/instances/{one}").json(), args.calls),
        (
            f"list_instances ({args.instances})",
            client.list_instances,
            lambda: plain.get("/instances").json(),
            max(50, args.calls // 10),
        ),
        ("list_locations", client.list_locations, lambda: plain.get("/locations").json(), max(50, args.calls // 10)),
    ]
    print(f"{'operation':<26} {'plain httpx us':>15} {'client us':>12} {'ratio':>7}")
    worst = 0.0
    for name, ours, baseline, calls in cases:
        ours_us, base_us = [], []
        for _ in range(args.rounds):
            base_us.append(per_call_us(baseline, calls))
            ours_us.append(per_call_us(ours, calls))
        base, mine = statistics.median(base_us), statistics.median(ours_us)
        worst = max(worst, mine / base)
        print(f"{name:<26} {base:>15.1f} {mine:>12.1f} {mine / base:>6.2f}x")
    print(f"worst ratio {worst:.2f}x (target < 1.5x): {'PASS' if worst < 1.5 else 'FAIL'}")


if __name__ == "__main__":
    main()
