"""The fake TensorDock API as a WSGI application: routing, auth, the 100/min limit, faults.

The same app is served over real sockets (`server.serve`) and called in-process through httpx's
WSGI transport (`server.in_process_transport`), so tests pick speed or realism without changing
what the fake does.
"""

from __future__ import annotations

import collections
import hmac
import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from .dialects import Dialect, Renderer, with_junk
from .state import FakeApiError, FakeTensorDock, Faults

API = "/api/v2"
_MUTATING = {"create_instance", "start_instance", "stop_instance", "modify_instance", "delete_instance"}


class DroppedReplyError(ConnectionAbortedError):
    """The request's reply never arrives; transports turn this into a timeout or a cut connection."""

    def __init__(self, hold_s: float) -> None:
        super().__init__("reply dropped by fault injection")
        self.hold_s = hold_s


class FakeTensorDockApp:
    """WSGI entry point. Admin endpoints under `/_fake/` let tests read the bill and set faults."""

    def __init__(
        self,
        state: FakeTensorDock,
        token: str,
        dialect: Dialect = "documented",
        *,
        rate_limit: int = 100,
        rate_window_s: float = 60.0,
        rate_in_get: bool = True,
    ) -> None:
        self.state = state
        self._token = token
        self.renderer = Renderer(dialect, state.catalog, state.timings.ip_s, rate_in_get=rate_in_get)
        self.rate_limit = rate_limit
        self.rate_window_s = rate_window_s
        self._recent: collections.deque[float] = collections.deque()
        self._burst_left = 0
        self.requests: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.url_map = Map(
            [
                Rule(f"{API}/instances", methods=["GET"], endpoint="list_instances"),
                Rule(f"{API}/instances", methods=["POST"], endpoint="create_instance"),
                Rule(f"{API}/instances/<instance_id>", methods=["GET"], endpoint="get_instance"),
                Rule(f"{API}/instances/<instance_id>", methods=["DELETE"], endpoint="delete_instance"),
                Rule(f"{API}/instances/<instance_id>/start", methods=["POST"], endpoint="start_instance"),
                Rule(f"{API}/instances/<instance_id>/stop", methods=["POST"], endpoint="stop_instance"),
                Rule(f"{API}/instances/<instance_id>/modify", methods=["PUT"], endpoint="modify_instance"),
                Rule(f"{API}/locations", methods=["GET"], endpoint="list_locations"),
                Rule(f"{API}/hostnodes", methods=["GET"], endpoint="list_hostnodes"),
                Rule(f"{API}/hostnodes/<hostnode_id>", methods=["GET"], endpoint="get_hostnode"),
                Rule("/_fake/bill", methods=["GET"], endpoint="admin_bill"),
                Rule("/_fake/faults", methods=["GET", "PUT"], endpoint="admin_faults"),
                Rule("/_fake/requests", methods=["GET"], endpoint="admin_requests"),
                Rule("/_fake/instances/<instance_id>/reclaim", methods=["POST"], endpoint="admin_reclaim"),
            ],
            strict_slashes=False,
        )

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        response = self.handle(Request(environ))
        return response(environ, start_response)

    # -- pipeline ------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        """Answer one request; `requests` counts them by operation and `statuses` by reply code."""
        response = self._handle(request)
        if not request.path.startswith("/_fake/"):
            with self.state.lock:
                self.statuses[response.status_code] += 1
        return response

    def _handle(self, request: Request) -> Response:
        adapter = self.url_map.bind_to_environ(request.environ)
        try:
            endpoint, args = adapter.match()
        except MethodNotAllowed:
            return self._json(*self.renderer.error(405, f"{request.method} is not allowed on {request.path}"))
        except (NotFound, HTTPException):
            return self._json(*self.renderer.error(404, f"No route for {request.path}"))
        assert isinstance(endpoint, str)
        if endpoint.startswith("admin_"):
            with self.state.lock:
                return self._admin(endpoint, request, args)
        if not self._authorised(request):
            status = 403 if self.renderer.dialect == "documented" else 401
            return self._json(*self.renderer.error(status, "Invalid or missing API token"))
        faults = self.state.faults
        response = self._serve(endpoint, request, args, faults)
        if faults.latency_s > 0:  # the work is done on arrival; the reply is what is slow
            self.state.clock.sleep(faults.latency_s)
        return response

    def _serve(self, endpoint: str, request: Request, args: Mapping[str, Any], faults: Faults) -> Response:
        with self.state.lock:
            self.requests[endpoint] += 1
            limited = self._rate_limited()
            if limited is not None:
                return limited
            rng = self.state.rng
            if faults.timeout_rate and rng.random() < faults.timeout_rate:
                raise DroppedReplyError(faults.hold_dropped_s)
            if faults.server_error_rate and rng.random() < faults.server_error_rate:
                status = rng.choice([500, 502, 503])
                return Response(f"<html><body>{status} upstream error</body></html>", status, mimetype="text/html")
            response = self._dispatch(endpoint, request, args)
            if endpoint in _MUTATING and self._reply_is_lost(faults):
                raise DroppedReplyError(faults.hold_dropped_s)
            return response

    def _reply_is_lost(self, faults: Faults) -> bool:
        if faults.lose_next_replies > 0:
            self.state.faults = faults.model_copy(update={"lose_next_replies": faults.lose_next_replies - 1})
            return True
        return bool(faults.lost_reply_rate) and self.state.rng.random() < faults.lost_reply_rate

    def _authorised(self, request: Request) -> bool:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.encode(), self._token.encode())

    def _rate_limited(self) -> Response | None:
        """A sliding window per organisation, as TensorDock documents (100 per minute)."""
        now = self.state.clock.now()
        faults = self.state.faults
        if (
            self._burst_left == 0
            and faults.rate_limit_burst_rate
            and self.state.rng.random() < faults.rate_limit_burst_rate
        ):
            self._burst_left = faults.rate_limit_burst_length
        retry_after: float | None = None
        if self._burst_left > 0:
            self._burst_left -= 1
            retry_after = 1.0
        else:
            while self._recent and self._recent[0] <= now - self.rate_window_s:
                self._recent.popleft()
            if len(self._recent) >= self.rate_limit:
                retry_after = self._recent[0] + self.rate_window_s - now
            else:
                self._recent.append(now)
                return None
        if faults.html_errors:
            response = Response("<html><body><h1>429 Too Many Requests</h1></body></html>", 429, mimetype="text/html")
        else:
            response = self._json(*self.renderer.error(429, "Rate limit exceeded: 100 requests per minute"))
        if faults.retry_after_header:
            response.headers["Retry-After"] = str(max(1, math.ceil(retry_after)))
        response.headers["X-RateLimit-Limit"] = str(self.rate_limit)
        response.headers["X-RateLimit-Remaining"] = "0"
        return response

    def _dispatch(self, endpoint: str, request: Request, args: Mapping[str, Any]) -> Response:
        now = self.state.settle()
        render = self.renderer
        try:
            if endpoint == "list_instances":
                return self._json(200, render.instance_list(self.state.instances(), now))
            if endpoint == "get_instance":
                return self._json(200, render.instance(self.state.get(args["instance_id"]), now))
            if endpoint == "create_instance":
                return self._json(*render.created(self.state.create(self._create_attributes(request)), now))
            if endpoint == "start_instance":
                return self._json(200, render.transition(self.state.start(args["instance_id"])))
            if endpoint == "stop_instance":
                return self._json(200, render.transition(self.state.stop(args["instance_id"])))
            if endpoint == "modify_instance":
                self.state.modify(args["instance_id"], self._json_object(request))
                return self._json(200, render.success("Instance modified"))
            if endpoint == "delete_instance":
                self.state.delete(args["instance_id"])
                return self._json(200, render.success("Instance deleted"))
            junk = self.state.faults.discovery_junk
            if endpoint == "list_locations":
                rows = [
                    (loc, [(host, self.state.free(host)) for host in loc.hostnodes]) for loc in self.state.locations()
                ]
                body = render.locations([] if self.state.faults.locations_empty else rows)
                return self._json(200, with_junk(body, "locations") if junk else body)
            if endpoint == "list_hostnodes":
                nodes = [
                    render.hostnode(loc, host, self.state.free(host), self._ports(host))
                    for loc, host in self.state.hosts()
                ]
                body = {"data": {"hostnodes": nodes}}
                return self._json(200, with_junk(body, "hostnodes") if junk else body)
            if endpoint == "get_hostnode":
                loc, host = self.state.host(args["hostnode_id"])
                return self._json(200, {"data": render.hostnode(loc, host, self.state.free(host), self._ports(host))})
        except FakeApiError as error:
            return self._json(*render.api_error(error))
        raise AssertionError(f"unrouted endpoint {endpoint}")

    def _ports(self, host: Any) -> list[int]:
        return self.state.free_ports(host) if self.state.rules.host_ports else []

    @staticmethod
    def _json_object(request: Request) -> dict[str, Any]:
        try:
            body = json.loads(request.get_data() or b"null")
        except ValueError:
            raise FakeApiError("validation", "Request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise FakeApiError("validation", "Request body must be a JSON object")
        return body

    def _create_attributes(self, request: Request) -> dict[str, Any]:
        body = self._json_object(request)
        data = body.get("data")
        if not isinstance(data, dict) or data.get("type") != "virtualmachine":
            raise FakeApiError("validation", "data.type must be 'virtualmachine'", ("data", "type"))
        attributes = data.get("attributes")
        if not isinstance(attributes, dict):
            raise FakeApiError("validation", "data.attributes is required", ("data", "attributes"))
        return attributes

    def _admin(self, endpoint: str, request: Request, args: Mapping[str, Any]) -> Response:
        if endpoint == "admin_bill":
            self.state.settle()
            bill = self.state.bill()
            return self._json(
                200,
                {"total_usd": bill.total_usd, "balance_usd": bill.balance_usd, "instances": bill.per_instance_usd},
            )
        if endpoint == "admin_requests":
            return self._json(200, {"operations": dict(self.requests), "statuses": dict(self.statuses)})
        if endpoint == "admin_reclaim":
            try:
                inst = self.state.reclaim(args["instance_id"])
            except FakeApiError as error:
                return self._json(*self.renderer.api_error(error))
            return self._json(200, {"id": inst.id, "disassociated": True})
        if request.method == "PUT":
            try:
                self.state.faults = Faults.model_validate(
                    {**self.state.faults.model_dump(), **self._json_object(request)}
                )
            except (ValueError, FakeApiError) as exc:
                return self._json(400, {"error": str(exc)})
        return self._json(200, self.state.faults.model_dump())

    @staticmethod
    def _json(status: int, body: Any) -> Response:
        return Response(json.dumps(body), status=status, mimetype="application/json")
