"""Prometheus collectors for the decision core (the daemon issue adds the HTTP endpoint and more).

Each engine gets its own registry unless given one, so several engines in one process (tests,
the simulator's strategies side by side) never mix their numbers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "tensordock_autoscaler"


class CoreMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.policy_errors = Counter(
            f"{PREFIX}_policy_errors",
            "Cycles held because a policy raised or returned nonsense",
            ["policy"],
            registry=r,
        )
        self.signal_up = Gauge(
            f"{PREFIX}_signal_up", "1 when the last demand read succeeded and was fresh", ["source"], registry=r
        )
        self.queue_depth = Gauge(
            f"{PREFIX}_queue_depth", "Jobs by source and state at the last read", ["source", "state"], registry=r
        )
        self.signal_read_seconds = Histogram(
            f"{PREFIX}_signal_read_seconds",
            "Time one source read took",
            ["source"],
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
        )
        self.actions = Counter(
            f"{PREFIX}_actions", "Mutating actions by kind and outcome", ["kind", "outcome"], registry=r
        )
        self.refused = Counter(f"{PREFIX}_actions_refused", "Actions a safety rule refused", ["rule"], registry=r)
        self.orphans = Gauge(f"{PREFIX}_orphan_instances", "Prefix-named instances the store never created", registry=r)
        self.cycle_seconds = Histogram(
            f"{PREFIX}_cycle_duration_seconds",
            "Wall time of one cycle",
            registry=r,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.cycles = Counter(f"{PREFIX}_cycles", "Cycles by result", ["result"], registry=r)
