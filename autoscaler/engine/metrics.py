"""Prometheus collectors: every number the daemon exports, with the prefix `tensordock_autoscaler_`.

Each engine gets its own registry unless given one, so several engines in one process (tests,
the simulator's strategies side by side) never mix their numbers.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

PREFIX = "tensordock_autoscaler"
disable_created_metrics()  # type: ignore[no-untyped-call]  # the *_created series double every counter and tell a dashboard nothing


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
        self.early_cycles = Counter(
            f"{PREFIX}_cycles_early",
            "Cycles run before their interval because the queue watch saw new work (scheduler.watch_s)",
            registry=r,
        )
        self.fleet_cost = Gauge(
            f"{PREFIX}_fleet_cost_usd_per_hour",
            "What the fleet costs now ($/h): running at rateHourly, stopped at storage",
            ["managed"],
            registry=r,
        )
        self.spend = Counter(f"{PREFIX}_spend_usd", "USD the managed fleet has cost, from the ledger", registry=r)
        self.spend_today = Gauge(f"{PREFIX}_spend_today_usd", "USD spent today (UTC) by the managed fleet", registry=r)
        self.budget_remaining = Gauge(
            f"{PREFIX}_budget_remaining_usd", "USD left of each configured budget", ["budget"], registry=r
        )
        self.budget_limit = Gauge(f"{PREFIX}_budget_limit_usd", "Each configured budget, USD", ["budget"], registry=r)
        self.instances = Gauge(
            f"{PREFIX}_instances",
            "Instances by status, GPU model, location and whether this fleet manages them",
            ["status", "gpu_model", "location", "managed"],
            registry=r,
        )
        self.gpus_desired = Gauge(f"{PREFIX}_gpus_desired", "GPUs the policies want", registry=r)
        self.gpus_active = Gauge(f"{PREFIX}_gpus_active", "GPUs running or on their way", registry=r)
        self.stuck_starting = Gauge(
            f"{PREFIX}_instances_starting_too_long",
            "Managed instances starting for over half of provision_timeout_s",
            registry=r,
        )
        self.api_requests = Counter(
            f"{PREFIX}_api_requests",
            "TensorDock API requests by operation and outcome (HTTP status or error)",
            ["operation", "code"],
            registry=r,
        )
        self.api_latency = Histogram(
            f"{PREFIX}_api_request_duration_seconds",
            "TensorDock API request latency",
            ["operation"],
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        self.rate_limit_waits = Counter(
            f"{PREFIX}_rate_limit_wait_seconds", "Seconds calls waited for the shared token bucket", registry=r
        )
        self.last_success = Gauge(
            f"{PREFIX}_last_successful_cycle_timestamp_seconds",
            "When the last cycle completed without error",
            registry=r,
        )
        self.leader = Gauge(f"{PREFIX}_leader", "1 when this replica acts, 0 when it stands by", registry=r)
        self.in_doubt = Gauge(
            f"{PREFIX}_instances_in_doubt",
            "Owned instances counted in full because the daemon cannot know them (rule 11), by reason",
            ["reason"],
            registry=r,
        )
        self.rates_rejected = Counter(
            f"{PREFIX}_rates_rejected", "rateHourly values not believed (non-finite, negative, absurd)", registry=r
        )
        self.listing_contradictions = Counter(
            f"{PREFIX}_listing_contradictions",
            "Times a listing or GET said an owned instance has other GPUs than its record",
            registry=r,
        )
        self.discovery_skipped = Counter(
            f"{PREFIX}_discovery_entries_skipped",
            "Unreadable location, host or GPU entries dropped from discovery replies",
            ["endpoint"],
            registry=r,
        )
        for endpoint in ("list_locations", "list_hostnodes"):
            self.discovery_skipped.labels(endpoint)
        for reason in ("unknown_status", "unknown_shape", "absent_from_listing"):
            self.in_doubt.labels(reason)
        self.config_reloads = Counter(f"{PREFIX}_config_reloads", "SIGHUP reloads by result", ["result"], registry=r)

    def prime(self, policies: Iterable[str]) -> None:
        """Export every labelled counter the dashboard and alerts use at 0 for its known labels.

        A counter child exists only once touched; before the first refusal or policy error a
        panel shows "No data" and `increase()` misses the first event. Called at start-up.
        """
        from autoscaler.core.guards import GUARD_RULES
        from autoscaler.core.plan import ActionKind

        for rule in GUARD_RULES:
            self.refused.labels(rule)
        for policy in policies:
            self.policy_errors.labels(policy)
        for result in ("ok", "hold", "error", "crash"):
            self.cycles.labels(result)
        for kind in ActionKind:
            for outcome in ("ok", "failed", "unknown", "dry_run", "skipped"):
                self.actions.labels(kind.value, outcome)
        for result in ("ok", "refused"):
            self.config_reloads.labels(result)

    def forget_fleet(self) -> None:
        """A replica that stands by describes no fleet and reads no queue: what it last saw as leader
        would be counted twice by a dashboard that sums over replicas, and a source it no longer
        reads would stay "down". Counters keep their history."""
        for labelled in (
            self.fleet_cost,
            self.instances,
            self.in_doubt,
            self.budget_remaining,
            self.queue_depth,
            self.signal_up,
        ):
            labelled.clear()
        for plain in (self.gpus_active, self.gpus_desired, self.orphans, self.stuck_starting, self.spend_today):
            plain.set(0)

    # ApiObserver: the client reports each call here
    def request_finished(self, operation: str, outcome: str, seconds: float) -> None:
        self.api_requests.labels(operation, outcome).inc()
        self.api_latency.labels(operation).observe(seconds)

    def rate_limit_waited(self, seconds: float) -> None:
        self.rate_limit_waits.inc(seconds)

    def discovery_entry_skipped(self, endpoint: str) -> None:
        self.discovery_skipped.labels(endpoint).inc()
