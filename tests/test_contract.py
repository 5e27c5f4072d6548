"""Contract: in the spec dialect every request the client sends and every documented reply the
fake gives validates against the published OpenAPI file (openapi-core), and schemathesis finds
no server error or schema violation in the fake."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, settings
from openapi_core import OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from openapi_core.templating.responses.exceptions import ResponseNotFound
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance
from werkzeug.wrappers import Request

from autoscaler.common.clock import ManualClock
from autoscaler.tensordock import ModifyInstanceRequest, NotFoundError
from autoscaler.tensordock.client import TensorDockClient
from autoscaler.tensordock.fake import FakeTensorDockApp, build_fake, in_process_transport

from .conftest import RTX4090, SPEC_PATH, TOKEN, create_request, location_of


def load_spec() -> dict[str, Any]:
    if not SPEC_PATH.exists():
        pytest.fail(f"OpenAPI spec missing at {SPEC_PATH}; set TDAS_SPEC_PATH or lay shared/ beside the repo")
    spec = yaml.safe_load(SPEC_PATH.read_text())
    # The published file's contact e-mail was mangled into a YAML list by an e-mail obfuscator,
    # which makes the whole document invalid OpenAPI; it carries no API shape, so drop it.
    spec["info"].get("contact", {}).pop("email", None)
    return dict(spec)


class ValidatingApp:
    """WSGI middleware that checks each exchange against the spec and keeps every finding."""

    def __init__(self, app: FakeTensorDockApp, openapi: OpenAPI) -> None:
        self.app = app
        self.openapi = openapi
        self.checked_requests: list[str] = []
        self.checked_responses: list[str] = []
        self.undocumented: list[str] = []
        self.violations: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        request.get_data(cache=True)
        response = self.app.handle(request)
        label = f"{request.method} {request.path} -> {response.status_code}"
        if request.path.startswith("/api/v2/instances"):  # the spec covers only the instance endpoints
            wrapped = WerkzeugOpenAPIRequest(request)
            try:
                self.openapi.validate_request(wrapped)
                self.checked_requests.append(label)
            except Exception as exc:
                self.violations.append(f"request {label}: {exc}")
            try:
                self.openapi.validate_response(wrapped, WerkzeugOpenAPIResponse(response))
                self.checked_responses.append(label)
            except ResponseNotFound:
                self.undocumented.append(label)
            except Exception as exc:
                self.violations.append(f"response {label}: {exc}")
        return response(environ, start_response)


def run_every_operation(client: TensorDockClient, app: FakeTensorDockApp, clock: ManualClock) -> None:
    client.list_instances()
    created = client.create_instance(create_request(location_of(app, "Chicago")))
    client.create_instance(create_request(hostnode_id=app.state.hosts()[2][1].id, name="fleet-by-host"))
    client.get_instance(created.id)
    clock.advance(31)
    client.list_instances()
    client.stop_instance(created.id)
    clock.advance(11)
    client.modify_instance(created.id, ModifyInstanceRequest(vcpu_count=10, ram_gb=48, gpu_model=RTX4090, gpu_count=2))
    client.start_instance(created.id)
    clock.advance(21)
    client.get_instance(created.id)
    client.delete_instance(created.id)
    with pytest.raises(NotFoundError):
        client.get_instance(created.id)


def validating_fake(dialect: str, server_url: str) -> tuple[ValidatingApp, FakeTensorDockApp, ManualClock]:
    spec = load_spec()
    spec["servers"] = [{"url": server_url}]
    clock = ManualClock()
    app = build_fake(TOKEN, dialect, clock=clock)  # type: ignore[arg-type]
    return ValidatingApp(app, OpenAPI.from_dict(spec)), app, clock


def test_spec_dialect_requests_and_replies_validate_against_the_openapi_file() -> None:
    validator, app, clock = validating_fake("spec", "http://fake")
    with TensorDockClient(
        "http://fake/api/v2", TOKEN, "spec", clock=clock, transport=in_process_transport(validator)
    ) as client:  # type: ignore[arg-type]
        run_every_operation(client, app, clock)
    assert validator.violations == []
    operations = {label.split(" -> ")[0].rsplit("/", 1)[-1] for label in validator.checked_requests}
    assert {"instances", "start", "stop", "modify"} <= operations
    assert len(validator.checked_responses) >= 11
    assert any(label.startswith("POST /api/v2/instances -> 201") for label in validator.checked_responses)
    assert any(label.startswith("GET") and label.endswith("404") for label in validator.checked_responses)


def test_observed_dialect_really_differs_from_the_spec() -> None:
    """The dialect switch is not cosmetic: the observed shapes break the published schema."""
    validator, app, clock = validating_fake("observed", "http://fake")
    with TensorDockClient(
        "http://fake/api/v2", TOKEN, "observed", clock=clock, transport=in_process_transport(validator)
    ) as client:  # type: ignore[arg-type]
        run_every_operation(client, app, clock)
    assert any("request POST /api/v2/instances" in v for v in validator.violations)  # GPUs keyed by model
    assert any("response GET /api/v2/instances" in v for v in validator.violations)  # mixed-case status etc.


SCHEMA_SPEC = (
    load_spec()
    if SPEC_PATH.exists()
    else {"openapi": "3.1.0", "info": {"title": "missing", "version": "0"}, "paths": {}}
)
schema = schemathesis.openapi.from_dict(copy.deepcopy(SCHEMA_SPEC))
_FUZZ_APP = build_fake(TOKEN, "spec", clock=ManualClock(), rate_limit=1_000_000)
schema.app = _FUZZ_APP


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_schemathesis_finds_no_server_error_or_schema_violation(case: Any) -> None:
    if not SPEC_PATH.exists():
        pytest.fail(f"OpenAPI spec missing at {SPEC_PATH}")
    case.call_and_validate(
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=[not_a_server_error, response_schema_conformance, content_type_conformance],
    )


def test_zz_schemathesis_really_exercised_the_fake() -> None:
    """Runs after the fuzz cases above (pytest keeps file order): they must have reached every operation."""
    expected = {
        "list_instances",
        "create_instance",
        "get_instance",
        "delete_instance",
        "start_instance",
        "stop_instance",
        "modify_instance",
    }
    assert expected <= set(_FUZZ_APP.requests)
    assert sum(_FUZZ_APP.requests.values()) >= 100
    assert not any(status >= 500 for status in _FUZZ_APP.statuses)
