"""Cycle CPU time, memory and API calls per cycle as the fleet grows: 10, 100, 1,000, 5,000 instances.

    .venv/bin/python bench/fleet_scale.py [--sizes 10,100,1000,5000] [--cycles 20]

Same method as bench/daemon_footprint.py (steady state against a fake in its own process, next to
the bare listing every cycle must make). Targets: at most 3 API calls per steady cycle; under
50 ms of CPU per cycle at 1,000 instances.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from daemon_footprint import measure

from autoscaler.logging import configure_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000,5000")
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args()
    configure_logging("WARNING")
    workdir = Path(tempfile.mkdtemp(prefix="tdas-scale-"))
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


if __name__ == "__main__":
    main()
