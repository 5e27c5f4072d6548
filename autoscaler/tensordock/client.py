"""The only code that speaks HTTP to TensorDock.

Synchronous httpx, one shared token bucket, tenacity for jittered exponential back-off on calls
that are safe to repeat. `create_instance` is retried only when the server certainly did not act
(429, or no connection made); after an unknown outcome the caller looks the name up instead.
"""

from __future__ import annotations

import email.utils
import time
from typing import Any, Protocol

import httpx
import structlog
from pydantic import SecretStr
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from autoscaler import __version__
from autoscaler.clock import Clock, SystemClock

from . import wire
from .errors import (
    AuthenticationError,
    BadRequestError,
    CapacityUnavailableError,
    ConnectionFailedError,
    MalformedResponseError,
    NotFoundError,
    RateLimitedError,
    RequestTimeoutError,
    ServerError,
    TensorDockError,
    TransportError,
    is_capacity_message,
)
from .models import (
    CreateInstanceRequest,
    Hostnode,
    Instance,
    InstanceStatus,
    Location,
    ModifyInstanceRequest,
    WireFormat,
)
from .ratelimit import TokenBucket

DEFAULT_BASE_URL = "https://dashboard.tensordock.com/api/v2"
_log = structlog.get_logger("autoscaler.tensordock")


class ApiObserver(Protocol):
    """Where the client reports each call, for metrics; it never sees headers or bodies."""

    def request_finished(self, operation: str, outcome: str, seconds: float) -> None: ...

    def rate_limit_waited(self, seconds: float) -> None: ...

    def discovery_entry_skipped(self, endpoint: str) -> None: ...


class _NullObserver:
    def request_finished(self, operation: str, outcome: str, seconds: float) -> None:
        pass

    def rate_limit_waited(self, seconds: float) -> None:
        pass

    def discovery_entry_skipped(self, endpoint: str) -> None:
        pass


def _retry_after_seconds(response: httpx.Response, body: object) -> float | None:
    header = response.headers.get("Retry-After")
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(header)
            if parsed is not None:
                return max(0.0, parsed.timestamp() - time.time())
    if isinstance(body, dict):
        for key in ("retry_after", "retryAfter"):
            if isinstance(body.get(key), int | float):
                return float(body[key])
    return None


def _retry_safe(exc: TensorDockError, idempotent: bool) -> bool:
    """429 and a connection never made mean the server did not act; otherwise only idempotent calls."""
    if isinstance(exc, RateLimitedError | ConnectionFailedError):
        return True
    return idempotent and isinstance(exc, ServerError | TransportError)


def _error_for(operation: str, status: int, message: str) -> TensorDockError:
    if status in (401, 403):
        return AuthenticationError(operation, message, status)
    if status == 404:
        return NotFoundError(operation, message, status)
    if status >= 500:
        return ServerError(operation, message, status)
    if is_capacity_message(message):
        return CapacityUnavailableError(operation, message, status)
    if 400 <= status < 500:
        return BadRequestError(operation, message, status)
    return TensorDockError(operation, message, status)


class TensorDockClient:
    """Typed access to the TensorDock Instances API v2; see the module docstring for retry rules."""

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        token: str | SecretStr = "",
        wire_format: WireFormat = "documented",
        *,
        clock: Clock | None = None,
        rate_limit: int = 100,
        rate_window_s: float = 60.0,
        rate_burst: int | None = None,
        bucket: TokenBucket | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        create_timeout_s: float = 120.0,
        max_attempts: int = 4,
        backoff_initial_s: float = 2.0,
        backoff_max_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        observer: ApiObserver | None = None,
    ) -> None:
        if wire_format not in ("observed", "spec", "documented"):
            raise ValueError(f"wire_format must be 'documented', 'observed' or 'spec', not {wire_format!r}")
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        if not self._token.get_secret_value():
            raise ValueError("a TensorDock API token is required (tensordock.token or tensordock.token_file)")
        self.base_url = base_url.rstrip("/")
        self.wire_format: WireFormat = wire_format
        self._clock = clock or SystemClock()
        self._bucket = bucket or TokenBucket(self._clock, rate_limit, rate_window_s, rate_burst)
        self._observer: ApiObserver = observer or _NullObserver()
        self._http = httpx.Client(
            base_url=self.base_url,
            transport=transport,
            timeout=httpx.Timeout(read_timeout_s, connect=connect_timeout_s),
            headers={
                "Authorization": f"Bearer {self._token.get_secret_value()}",
                "Accept": "application/json",
                "User-Agent": f"tensordock-autoscaler/{__version__}",
            },
        )
        self._backoff = wait_exponential_jitter(
            multiplier=backoff_initial_s, max=backoff_max_s, jitter=backoff_initial_s
        )
        self._create_timeout = httpx.Timeout(create_timeout_s, connect=connect_timeout_s)
        self._max_attempts = max_attempts
        self._retrying = self._build_retrying()

    def __repr__(self) -> str:
        return f"TensorDockClient(base_url={self.base_url!r}, wire_format={self.wire_format!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> TensorDockClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def can_spare_a_call(self) -> bool:
        """For calls that may be skipped (following a stop between cycles): never at a cycle's expense."""
        return self._bucket.spare()

    # -- public operations -------------------------------------------------------------------

    def list_instances(self) -> list[Instance]:
        return wire.parse_instance_list(self._call("list_instances", "GET", "/instances", idempotent=True))

    def get_instance(self, instance_id: str) -> Instance:
        body = self._call("get_instance", "GET", f"/instances/{instance_id}", idempotent=True)
        return wire.parse_instance_reply(body, "get_instance")

    def find_instances_by_name(self, name: str) -> list[Instance]:
        """After a create whose reply was lost: did it happen? Names are how we know (DESIGN rule 3)."""
        return [instance for instance in self.list_instances() if instance.name == name]

    def create_instance(self, request: CreateInstanceRequest) -> Instance:
        """Create; never repeated after an unknown outcome, see `find_instances_by_name`."""
        body = self._call(
            "create_instance",
            "POST",
            "/instances",
            json=wire.create_body(request, self.wire_format),
            idempotent=False,
            timeout=self._create_timeout,  # creates are slow at TensorDock; a 30 s read would orphan many
        )
        return wire.parse_instance_reply(body, "create_instance")

    def start_instance(self, instance_id: str) -> InstanceStatus:
        return self._transition("start_instance", instance_id, "start", InstanceStatus.STARTING)

    def stop_instance(self, instance_id: str) -> InstanceStatus:
        return self._transition("stop_instance", instance_id, "stop", InstanceStatus.STOPPING)

    def modify_instance(self, instance_id: str, request: ModifyInstanceRequest) -> None:
        """Setting resources to given values is safe to repeat, so this one is retried."""
        body = wire.modify_body(request, self.wire_format)
        if not body:
            raise ValueError("modify_instance needs at least one resource to change")
        self._call("modify_instance", "PUT", f"/instances/{instance_id}/modify", json=body, idempotent=True)

    def delete_instance(self, instance_id: str) -> None:
        """Gone is gone: a 404 after a lost reply means our first attempt did the job."""
        self._call("delete_instance", "DELETE", f"/instances/{instance_id}", idempotent=True, gone_ok_on_retry=True)

    def list_locations(self) -> list[Location]:
        body = self._call("list_locations", "GET", "/locations", idempotent=True)
        return wire.parse_locations(body, on_skip=self._skipped)

    def list_hostnodes(self) -> list[Hostnode]:
        body = self._call("list_hostnodes", "GET", "/hostnodes", idempotent=True)
        return wire.parse_hostnodes(body, on_skip=self._skipped)

    def _skipped(self, endpoint: str, why: str) -> None:
        """One odd discovery entry must not spoil the list: it is dropped, logged and counted."""
        _log.info("discovery_entry_skipped", endpoint=endpoint, why=why)
        self._observer.discovery_entry_skipped(endpoint)

    def get_hostnode(self, hostnode_id: str) -> Hostnode:
        body = self._call("get_hostnode", "GET", f"/hostnodes/{hostnode_id}", idempotent=True)
        return wire.parse_hostnode_reply(body)

    # -- machinery ---------------------------------------------------------------------------

    def _transition(self, operation: str, instance_id: str, verb: str, default: InstanceStatus) -> InstanceStatus:
        """Start and stop are not repeated after an unknown outcome: the next listing tells."""
        body = self._call(operation, "POST", f"/instances/{instance_id}/{verb}", idempotent=False)
        if isinstance(body, dict) and isinstance(body.get("data"), dict):
            data = body["data"]
            attributes = data.get("attributes") if isinstance(data.get("attributes"), dict) else data
            status = InstanceStatus.parse(attributes.get("status"))
            if status is not InstanceStatus.UNKNOWN:
                return status
        return default

    def _call(
        self,
        operation: str,
        method: str,
        path: str,
        *,
        idempotent: bool,
        json: dict[str, Any] | None = None,
        gone_ok_on_retry: bool = False,
        timeout: httpx.Timeout | None = None,
    ) -> object:
        attempts = 0

        def attempt() -> object:
            nonlocal attempts
            attempts += 1
            try:
                return self._send_once(operation, method, path, json, timeout)
            except NotFoundError:
                if gone_ok_on_retry and attempts > 1:
                    return None
                raise
            except TensorDockError as exc:
                exc.retry_safe = _retry_safe(exc, idempotent)
                raise

        return self._retrying(attempt)

    def _build_retrying(self) -> Retrying:
        """Built once: tenacity's per-call cost stays small, and the policy lives in one place."""

        def wait(state: RetryCallState) -> float:
            outcome = state.outcome
            limited = outcome.exception() if outcome is not None else None
            if isinstance(limited, RateLimitedError) and limited.retry_after is not None:
                return 0.0  # the shared bucket is paused for Retry-After; acquire() waits
            # a 429 without Retry-After backs off by the client's own schedule
            return float(self._backoff(state))

        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            _log.warning(
                "tensordock_retry",
                operation=getattr(exc, "operation", None),
                attempt=state.attempt_number,
                error=type(exc).__name__,
                detail=str(exc),
                sleep_s=round(state.upcoming_sleep, 2),
            )

        return Retrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=wait,
            retry=retry_if_exception(lambda exc: getattr(exc, "retry_safe", False)),
            sleep=self._clock.sleep,
            before_sleep=log_retry,
            reraise=True,
        )

    def _send_once(
        self, operation: str, method: str, path: str, json: dict[str, Any] | None, timeout: httpx.Timeout | None
    ) -> object:
        waited = self._bucket.acquire()
        if waited > 0:
            self._observer.rate_limit_waited(waited)
        started = time.perf_counter()
        outcome = "error"
        try:
            response = self._exchange(operation, method, path, json, timeout)
            outcome = str(response.status_code)
            body = self._decode(operation, response)
            self._raise_for_error(operation, response, body)
            return body
        except TensorDockError as exc:
            outcome = outcome if outcome != "error" else type(exc).__name__
            raise
        finally:
            elapsed = time.perf_counter() - started
            self._observer.request_finished(operation, outcome, elapsed)
            _log.debug(
                "tensordock_request",
                operation=operation,
                method=method,
                path=path,
                outcome=outcome,
                ms=round(elapsed * 1000, 1),
            )

    def _exchange(
        self, operation: str, method: str, path: str, json: dict[str, Any] | None, timeout: httpx.Timeout | None
    ) -> httpx.Response:
        try:
            if timeout is None:
                return self._http.request(method, path, json=json)
            return self._http.request(method, path, json=json, timeout=timeout)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ConnectionFailedError(
                operation, f"could not connect to {self.base_url}: {type(exc).__name__}"
            ) from None
        except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise RequestTimeoutError(operation, f"no reply from {self.base_url}: {type(exc).__name__}") from None
        except httpx.TransportError as exc:
            raise TransportError(operation, f"HTTP transport failed: {type(exc).__name__}") from None

    @staticmethod
    def _decode(operation: str, response: httpx.Response) -> object:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            if response.is_success:
                raise MalformedResponseError(
                    operation, f"HTTP {response.status_code} reply is not JSON: {response.text[:120]!r}"
                ) from None
            return response.text[:300]

    def _raise_for_error(self, operation: str, response: httpx.Response, body: object) -> None:
        status = response.status_code
        found = wire.find_error(body)
        if response.is_success and found is None:
            return
        if found is not None:
            body_status, message = found
            if response.is_success:
                status = body_status if body_status is not None and body_status >= 400 else 400
        else:
            message = body if isinstance(body, str) and body else response.reason_phrase or f"HTTP {status}"
        if status == 429:
            retry_after = _retry_after_seconds(response, body)
            self._bucket.pause(retry_after if retry_after is not None else self._bucket.window_s / self._bucket.limit)
            raise RateLimitedError(operation, message, retry_after)
        raise _error_for(operation, status, message)
