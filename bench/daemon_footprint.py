"""Daemon footprint: resident memory and CPU per cycle with 10 and 1,000 instances in the fake.

    .venv/bin/python bench/daemon_footprint.py [--sizes 10,1000] [--cycles 20]

The fake runs as its own process (`tensordock-autoscaler fake-api`), so only the daemon's work is
measured. Each size runs steady-state cycles (demand equals the fleet: nothing to do) and, side by
side, the bare `list_instances()` call every cycle must make. Targets: < 100 MB, < 50 ms at 1,000.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import httpx

from autoscaler.common.logging import configure_logging
from autoscaler.config import Settings
from autoscaler.core.snapshot import OwnedShape
from autoscaler.service.runtime import build_runtime
from autoscaler.signals import StaticSignal
from autoscaler.store import SqliteStore
from autoscaler.tensordock import CreateInstanceRequest, PortForward

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests/support.py
from tests.support import start_fake_api

TOKEN = "bench-footprint-token"
PRICE = 0.4 + 8 * 0.005 + 32 * 0.002 + 100 * 0.0001  # one RTX 4090 with 8 vCPUs, 32 GB, 100 GB on big_catalog


def big_catalog(path: Path, hosts: int) -> None:
    """Enough hosts for thousands of one-GPU instances."""
    pricing = {"per_vcpu_hr": 0.005, "per_gb_ram_hr": 0.002, "per_gb_storage_hr": 0.0001}
    locations = []
    for n in range(max(1, hosts // 10)):
        locations.append(
            {
                "id": f"00000000-0000-4000-8000-{n:012d}",
                "city": f"City {n}",
                "stateprovince": "X",
                "country": "Y",
                "tier": 3,
                "hostnodes": [
                    {
                        "id": f"10000000-0000-4000-8000-{n * 10 + h:012d}",
                        "gpus": {"geforcertx4090-pcie-24gb": {"count": 8, "price_per_hr": 0.4}},
                        "vcpu_count": 256,
                        "ram_gb": 2048,
                        "storage_gb": 100000,
                        "max_vcpus_per_gpu": 16,
                        "max_ram_per_gpu": 128,
                        "pricing": pricing,
                        "public_ip": "203.0.113.1",
                    }
                    for h in range(10)
                ],
            }
        )
    path.write_text(json.dumps({"images": ["ubuntu2404"], "locations": locations}))


def measure(size: int, cycles: int, workdir: Path) -> dict[str, float]:
    catalog = workdir / f"catalog-{size}.json"
    big_catalog(catalog, hosts=max(10, size // 8 + 10))
    fake, url, _ = start_fake_api(
        TOKEN, "--catalog", str(catalog), "--rate-limit", "1000000", "--create-s", "0", "--ip-s", "0"
    )
    requests_url = url.replace("/api/v2", "/_fake/requests")
    try:
        store = SqliteStore(workdir / f"state-{size}.db")
        signal = StaticSignal(0, size)
        settings = Settings(
            tensordock={"base_url": url, "token": TOKEN, "rate_limit": 1_000_000},  # type: ignore[arg-type]
            fleet={"name_prefix": "fp", "ssh_key": "k"},  # type: ignore[arg-type]
            guards={"max_gpus": size + 10, "max_instances": size + 10},  # type: ignore[arg-type]
            policies=[  # the default chain, sized so that `size` busy GPUs is exactly what is wanted
                {"name": "queue_target", "options": {"max_gpus": size + 10}},
                {"name": "schedule"},
                {"name": "cheapest_throughput"},
                {"name": "idle"},
                {"name": "consolidate"},
                {"name": "budget"},
            ],  # type: ignore[list-item]
        )
        runtime = build_runtime(settings, signal=signal, store=store)
        for n in range(size):
            location = f"00000000-0000-4000-8000-{(n // 80):012d}"
            created = runtime.client.create_instance(
                CreateInstanceRequest(
                    name=f"fp-{n:06d}",
                    image="ubuntu2404",
                    gpu_model="geforcertx4090-pcie-24gb",
                    gpu_count=1,
                    vcpu_count=8,
                    ram_gb=32,
                    storage_gb=100,
                    location_id=location,
                    ssh_key="k",
                    port_forwards=(PortForward(internal_port=22, external_port=20000 + n % 40000),),
                )
            )
            # As the actuator records its creates (rule 12), and as a daemon that has run a while has
            # already asked TensorDock about each one: the steady state this measures.
            shape = OwnedShape("geforcertx4090-pcie-24gb", 1, 8, 32, 100, location_id=location)
            store.adopt(created.id, f"fp-{n:06d}", time.time(), None, shape=shape, expected_rate=PRICE)
            store.refine(created.id, time.time(), seen_rate=PRICE)
        runtime.engine.run_cycle()  # warm-up: offers fetched, store synced
        requests_before = httpx.get(requests_url).json()["operations"]
        cpu0 = time.process_time()
        for _ in range(cycles):
            report = runtime.engine.run_cycle()
            assert report.error is None and not report.results, "steady state must do nothing"
        cycle_cpu_ms = (time.process_time() - cpu0) / cycles * 1000
        requests_after = httpx.get(requests_url).json()["operations"]
        calls = (sum(requests_after.values()) - sum(requests_before.values())) / cycles
        cpu0 = time.process_time()
        for _ in range(cycles):
            runtime.client.list_instances()
        list_cpu_ms = (time.process_time() - cpu0) / cycles * 1000
        runtime.close()
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return {
            "size": size,
            "cycle_cpu_ms": cycle_cpu_ms,
            "list_cpu_ms": list_cpu_ms,
            "rss_mb": rss_mb,
            "api_calls": calls,
        }
    finally:
        fake.terminate()
        fake.wait(timeout=10)


def run(description: str, default_sizes: str, default_cycles: int, targets: str) -> None:
    """The command line of this benchmark and of fleet_scale.py: measure each size, print one table."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--sizes", default=default_sizes)
    parser.add_argument("--cycles", type=int, default=default_cycles)
    args = parser.parse_args()
    configure_logging("WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="tdas-footprint-"))
    print(
        f"{'instances':>9} {'cycle CPU ms':>13} {'list-only CPU ms':>17} {'ratio':>6} {'CPU ms/instance':>16}"
        f" {'peak RSS MB':>12} {'API calls/cycle':>16}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        r = measure(size, args.cycles, workdir)
        print(
            f"{size:>9} {r['cycle_cpu_ms']:>13.1f} {r['list_cpu_ms']:>17.1f} "
            f"{r['cycle_cpu_ms'] / r['list_cpu_ms']:>5.2f}x {r['cycle_cpu_ms'] / size:>16.3f} {r['rss_mb']:>12.1f}"
            f" {r['api_calls']:>16.1f}"
        )
    print(targets)


def main() -> None:
    run(__doc__.splitlines()[0], "10,1000", 40, "targets at 1,000 instances: < 50 ms CPU per cycle, < 100 MB resident")


if __name__ == "__main__":
    main()
