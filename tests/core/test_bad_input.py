"""Bad input from every side: garbage API replies, malformed configuration, nonsense signal values.
A clear error or a held cycle; never a crash, never a mutation based on garbage."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from autoscaler.common.clock import ManualClock
from autoscaler.config import ConfigError, Settings, load_settings
from autoscaler.service.runtime import build_runtime
from autoscaler.signals import SignalError, StaticSignal
from autoscaler.signals.static import FileSignal
from autoscaler.store import SqliteStore

from ..conftest import TOKEN

LEAVES = st.none() | st.booleans() | st.integers(-(10**15), 10**15) | st.floats() | st.text(max_size=15)
JSON = st.recursive(
    LEAVES, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=5), max_leaves=30
)
KEYS = st.sampled_from(
    [
        "data",
        "instances",
        "attributes",
        "id",
        "name",
        "status",
        "rateHourly",
        "resources",
        "gpus",
        "locations",
        "hostnodes",
        "v0Name",
        "price_per_hr",
        "error",
        "errors",
        "type",
    ]
)
REPLIES = st.recursive(JSON, lambda c: st.dictionaries(KEYS, c, max_size=6) | st.lists(c, max_size=4), max_leaves=40)


class GarbageApi:
    """A real WSGI server that answers every read with the reply hypothesis chose, and counts writes."""

    def __init__(self) -> None:
        self.replies: dict[str, Any] = {}
        self.writes = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        if method != "GET":
            self.writes += 1
        body = json.dumps(self.replies.get(path.rsplit("/", 1)[-1], {}), allow_nan=True).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(instances=REPLIES, locations=REPLIES, hostnodes=REPLIES)
def test_garbage_replies_hold_the_cycle_and_never_mutate(instances: Any, locations: Any, hostnodes: Any) -> None:
    api = GarbageApi()
    api.replies = {"instances": instances, "locations": locations, "hostnodes": hostnodes}
    runtime = build_runtime(
        Settings(
            tensordock={"base_url": "http://fake/api/v2", "token": TOKEN, "max_attempts": 1},  # type: ignore[arg-type]
            fleet={"ssh_key": "k"},
        ),  # type: ignore[arg-type]
        clock=ManualClock(),
        transport=httpx.WSGITransport(app=api),
        signal=StaticSignal(3, 0),
        store=SqliteStore(":memory:"),
    )
    try:
        report = runtime.engine.run_cycle()  # must not raise
        if report.error is not None or not report.snapshot or not report.snapshot.offers:
            assert api.writes == 0, "mutated on the strength of a reply it could not read"
    finally:
        runtime.close()


CONFIG_VALUES = st.dictionaries(
    st.sampled_from(
        [
            "tensordock",
            "fleet",
            "guards",
            "signal",
            "policies",
            "store",
            "scheduler",
            "metrics",
            "dry_run",
            "max_signal_age_s",
            "bogus",
        ]
    ),
    JSON
    | st.dictionaries(
        st.sampled_from(
            ["token", "max_gpus", "interval_s", "name_prefix", "sources", "port", "kind", "options", "url"]
        ),
        JSON,
        max_size=4,
    ),
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(CONFIG_VALUES)
def test_malformed_configuration_is_a_clear_error_or_valid(values: dict[str, Any]) -> None:
    try:
        loaded = load_settings(None, **values)
    except ConfigError as exc:
        assert str(exc), "an error must say what is wrong"
        return
    assert isinstance(loaded, Settings)


SIGNAL_DOCUMENTS = JSON | st.fixed_dictionaries(
    {"queued": st.integers(-5, 50) | JSON},
    optional={
        "running": st.integers(-5, 50) | JSON,
        "busy": JSON | st.dictionaries(st.text(max_size=8), JSON, max_size=3),
        "observed_at": st.floats() | JSON,
    },
)


@settings(max_examples=300, deadline=None)
@given(SIGNAL_DOCUMENTS)
@example({"queued": float("inf")})  # found by hypothesis: int(Infinity) overflowed past the handler
@example({"queued": 1, "running": float("-inf")})
def test_nonsense_signal_values_are_a_failed_read_or_a_valid_demand(document: Any) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "queue.json"
        path.write_text(json.dumps(document, allow_nan=True))
        try:
            demand = FileSignal(path).read(0.0)
        except SignalError:
            return
        assert demand.queued_jobs >= 0 and demand.running_jobs >= 0
        assert demand.busy is None or all(isinstance(k, str) and isinstance(v, bool) for k, v in demand.busy.items())
