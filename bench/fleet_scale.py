"""Cycle CPU time, memory and API calls per cycle as the fleet grows: 10, 100, 1,000, 5,000 instances.

    .venv/bin/python bench/fleet_scale.py [--sizes 10,100,1000,5000] [--cycles 20]

Same method as bench/daemon_footprint.py (steady state against a fake in its own process, which
speaks the documented dialect: listings of id, name and status only), next to the bare listing
every cycle must make. Targets: at most 1.1 API calls per steady cycle; under 50 ms of CPU per
cycle at 1,000 instances.
"""

from __future__ import annotations

from daemon_footprint import run


def main() -> None:
    run(
        __doc__.splitlines()[0] if __doc__ else "fleet scale",
        "10,100,1000,5000",
        20,
        "targets: at most 1.1 API calls per steady cycle; < 50 ms CPU per cycle at 1,000 instances",
    )


if __name__ == "__main__":
    main()
