"""The core is provider-neutral: importing it, or any built-in policy, loads no HTTP client.

import-linter (`make layers`, part of `make test`) checks the import graph statically; this checks
what a running interpreter actually loads, dynamic imports included.
"""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("httpx", "tenacity", "psycopg", "redis", "pika", "nats", "werkzeug", "autoscaler.tensordock.client")


def test_importing_the_core_and_the_policies_leaves_the_http_client_out() -> None:
    code = (
        "import json, sys\n"
        "import autoscaler.core.snapshot, autoscaler.core.guards, autoscaler.core.planner, autoscaler.core.plan\n"
        "import policies.queue_target, policies.schedule, policies.cheapest_throughput\n"
        "import policies.idle, policies.consolidate, policies.budget\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert json.loads(loaded.stdout) == []
