"""The only code that speaks HTTP to TensorDock.

Synchronous httpx, one shared token bucket, tenacity for jittered exponential back-off on calls
that are safe to repeat. `create_instance` is retried only when the server certainly did not act
(429, or no connection made); after an unknown outcome the caller looks the name up instead.

Every wait is bounded (DESIGN rule 14): a call, retries and waits included, ends by its
`call_deadline_s` (each socket read and connect is clamped to what is left of it, so a reply
trickled a byte at a time fails too); Retry-After is clamped to `retry_after_max_s`; a reply is
read streamed and refused past `max_reply_bytes`; setting `cancel` (SIGTERM) cuts the bucket's
wait and the back-off sleep, and no new attempt starts. `before_attempt` is called right before
each attempt goes on the wire, retries included: the daemon checks its lease and fencing there.
"""

from __future__ import annotations

import email.utils
import json as jsonlib
import math
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import httpcore
import httpx
import structlog
from pydantic import SecretStr
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

from autoscaler import __version__
from autoscaler.common.bounded_read import ReplyTooLargeError, ReplyTooSlowError, read_bounded
from autoscaler.common.clock import Clock, SystemClock, real_seconds, sleep_unless
from autoscaler.common.secrets import mask_secrets

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


class CallNotSentError(TensorDockError):
    """The call was given up before it went on the wire (shutting down, or its deadline would
    pass while waiting for the rate limit): the server certainly did not act."""


def _retry_after_seconds(response: httpx.Response, body: object, ceiling: float) -> float | None:
    """Seconds the server asks to wait, clamped to [0, ceiling]; None when it says nothing usable.

    `inf`, `1e9` and the like wait the ceiling; garbage (or NaN) counts as not said.
    """
    value: float | None = None
    header = response.headers.get("Retry-After")
    if header:
        try:
            value = float(header)
        except ValueError:
            try:
                parsed = email.utils.parsedate_to_datetime(header)
            except (TypeError, ValueError, IndexError, OverflowError):
                parsed = None
            if parsed is not None:
                value = parsed.timestamp() - time.time()
    if value is None and isinstance(body, dict):
        for key in ("retry_after", "retryAfter"):
            candidate = body.get(key)
            if isinstance(candidate, int | float) and not isinstance(candidate, bool):
                value = float(candidate)
                break
    if value is None or math.isnan(value):
        return None
    return min(max(0.0, value), ceiling)


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


class _Deadline(threading.local):
    """The wall-clock (monotonic) time by which the current thread's call must end, if any."""

    at: float | None = None


_deadline = _Deadline()


def _left(timeout: float | None, error: type[Exception]) -> float:
    """A socket operation's timeout, clamped to what is left of the call's deadline."""
    at = _deadline.at
    if at is None:
        return math.inf if timeout is None else timeout
    left = at - time.monotonic()
    if left <= 0:
        raise error("the call's deadline has passed")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    """A socket whose every read and write ends by the call's deadline, not only by its own timeout."""

    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _left(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _left(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, _left(timeout, httpcore.ConnectTimeout))
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's network backend with `_DeadlineStream` sockets."""

    def __init__(self, inner: httpcore.NetworkBackend) -> None:
        self._inner = inner

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_tcp(
            host, port, _left(timeout, httpcore.ConnectTimeout), local_address, socket_options
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore.NetworkStream:
        stream = self._inner.connect_unix_socket(path, _left(timeout, httpcore.ConnectTimeout), socket_options)
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def _deadline_transport() -> httpx.HTTPTransport:
    """httpx's own transport, its sockets bounded by the call's deadline (httpcore's backend hook)."""
    transport = httpx.HTTPTransport()
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if isinstance(backend, httpcore.NetworkBackend):
        pool._network_backend = _DeadlineBackend(backend)  # type: ignore[union-attr]
    return transport


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
        call_deadline_s: float = 60.0,
        retry_after_max_s: float = 300.0,
        max_reply_bytes: int = 8 * 1024 * 1024,
        max_attempts: int = 4,
        backoff_initial_s: float = 2.0,
        backoff_max_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        observer: ApiObserver | None = None,
        cancel: threading.Event | None = None,
        before_attempt: Callable[[str], None] | None = None,
    ) -> None:
        if wire_format not in ("observed", "spec", "documented"):
            raise ValueError(f"wire_format must be 'documented', 'observed' or 'spec', not {wire_format!r}")
        for label, value in (("call_deadline_s", call_deadline_s), ("retry_after_max_s", retry_after_max_s)):
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{label} must be a positive number of seconds, not {value!r}")
        self._token = token if isinstance(token, SecretStr) else SecretStr(token)
        if not self._token.get_secret_value():
            raise ValueError("a TensorDock API token is required (tensordock.token or tensordock.token_file)")
        self.base_url = base_url.rstrip("/")
        self.wire_format: WireFormat = wire_format
        self._clock = clock or SystemClock()
        self._bucket = bucket or TokenBucket(self._clock, rate_limit, rate_window_s, rate_burst)
        self._observer: ApiObserver = observer or _NullObserver()
        self._read_timeout_s = read_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self.call_deadline_s = call_deadline_s
        self.retry_after_max_s = retry_after_max_s
        self.max_reply_bytes = max_reply_bytes
        self.cancel = cancel or threading.Event()
        self.before_attempt = before_attempt
        self._http = httpx.Client(
            base_url=self.base_url,
            transport=transport or _deadline_transport(),
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
        self._create_timeout_s = create_timeout_s
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

    def can_spare_a_call(self, at: float | None = None) -> bool:
        """For calls that may be skipped (following a stop, the queue watch's early cycle): never at
        a cycle's expense. `at`: a later time, if no call comes before (the simulator's readings)."""
        return self._bucket.spare(at)

    # -- public operations -------------------------------------------------------------------

    def list_instances(self) -> list[Instance]:
        body = self._call("list_instances", "GET", "/instances", idempotent=True)
        return wire.parse_instance_list(body, on_skip=self._listing_entry_odd)

    def get_instance(self, instance_id: str) -> Instance:
        body = self._call("get_instance", "GET", f"/instances/{instance_id}", idempotent=True)
        return wire.parse_instance_reply(body, "get_instance", on_skip=self._listing_entry_odd)

    def create_instance(self, request: CreateInstanceRequest) -> Instance:
        """Create; never repeated after an unknown outcome: the caller lists the fleet and matches the name."""
        body = self._call(
            "create_instance",
            "POST",
            "/instances",
            json=wire.create_body(request, self.wire_format),
            idempotent=False,
            read_timeout_s=self._create_timeout_s,  # creates are slow at TensorDock; a 30 s read orphans many
        )
        return wire.parse_instance_reply(body, "create_instance", on_skip=self._listing_entry_odd)

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

    @staticmethod
    def _listing_entry_odd(endpoint: str, why: str) -> None:
        _log.warning("listing_entry_odd", endpoint=endpoint, why=why)

    def _skipped(self, endpoint: str, why: str) -> None:
        """One odd discovery entry must not spoil the list: it is dropped, logged and counted."""
        _log.info("discovery_entry_skipped", endpoint=endpoint, why=why)
        self._observer.discovery_entry_skipped(endpoint)

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
        read_timeout_s: float | None = None,
    ) -> object:
        """`read_timeout_s` overrides the client's for this call, and stretches its deadline to fit."""
        attempts = 0
        deadline = time.monotonic() + max(self.call_deadline_s, read_timeout_s or 0.0)

        def attempt() -> object:
            nonlocal attempts
            attempts += 1
            try:
                return self._send_once(operation, method, path, json, deadline, read_timeout_s=read_timeout_s)
            except NotFoundError:
                if gone_ok_on_retry and attempts > 1:
                    return None
                raise
            except TensorDockError as exc:
                exc.retry_safe = _retry_safe(exc, idempotent)
                raise

        previous = _deadline.at
        _deadline.at = deadline
        try:
            return self._retrying(attempt)
        finally:
            _deadline.at = previous

    def _build_retrying(self) -> Retrying:
        """Built once: tenacity's per-call cost stays small, and the policy lives in one place."""

        def wait(state: RetryCallState) -> float:
            outcome = state.outcome
            limited = outcome.exception() if outcome is not None else None
            if isinstance(limited, RateLimitedError) and limited.retry_after is not None:
                return 0.0  # the shared bucket is paused for Retry-After; acquire() waits
            # a 429 without Retry-After backs off by the client's own schedule
            return float(self._backoff(state))

        def stop(state: RetryCallState) -> bool:
            """No attempt after the last, after SIGTERM, or when the back-off would end past the deadline."""
            if state.attempt_number >= self._max_attempts or self.cancel.is_set():
                return True
            at = _deadline.at
            return at is not None and time.monotonic() + real_seconds(self._clock, state.upcoming_sleep) >= at

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

        def sleep(seconds: float) -> None:
            sleep_unless(self._clock, seconds, self.cancel)  # cut short: the next attempt is refused

        return Retrying(
            stop=stop,
            wait=wait,
            retry=retry_if_exception(lambda exc: getattr(exc, "retry_safe", False)),
            sleep=sleep,
            before_sleep=log_retry,
            reraise=True,
        )

    def _wait_for_slot(self, operation: str, deadline: float) -> None:
        """The rate limit's wait, bounded by the call's deadline and cut by `cancel`."""
        if self.cancel.is_set():
            raise CallNotSentError(operation, "not sent: shutting down")
        left = deadline - time.monotonic()
        wall_per_second = real_seconds(self._clock, 1.0)
        max_wait = left / wall_per_second if wall_per_second > 0 else math.inf
        waited = self._bucket.acquire(max_wait=max_wait, cancel=self.cancel)
        if waited is None:
            if self.cancel.is_set():
                raise CallNotSentError(operation, "not sent: shutting down")
            raise CallNotSentError(
                operation, f"not sent: the rate limit's wait would pass the call's deadline ({self.call_deadline_s:g}s)"
            )
        if waited > 0:
            self._observer.rate_limit_waited(waited)

    def _send_once(
        self,
        operation: str,
        method: str,
        path: str,
        json: dict[str, Any] | None,
        deadline: float,
        *,
        read_timeout_s: float | None = None,
    ) -> object:
        self._wait_for_slot(operation, deadline)
        if self.before_attempt is not None:
            self.before_attempt(operation)  # raises (FencedError) when this process may no longer act
        started = time.perf_counter()
        outcome = "error"
        try:
            response, raw = self._exchange(operation, method, path, json, deadline, read_timeout_s=read_timeout_s)
            outcome = str(response.status_code)
            body = self._decode(operation, response, raw)
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
        self,
        operation: str,
        method: str,
        path: str,
        json: dict[str, Any] | None,
        deadline: float,
        *,
        read_timeout_s: float | None = None,
    ) -> tuple[httpx.Response, bytes]:
        """One request, its reply read streamed: at most `max_reply_bytes`, done by the deadline."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise CallNotSentError(operation, f"not sent: the call's deadline ({self.call_deadline_s:g}s) has passed")
        read = read_timeout_s if read_timeout_s is not None else self._read_timeout_s
        timeout = httpx.Timeout(min(read, left), connect=min(self._connect_timeout_s, left))
        try:
            with self._http.stream(method, path, json=json, timeout=timeout) as response:
                try:
                    return response, read_bounded(response, max_bytes=self.max_reply_bytes, deadline=deadline)
                except ReplyTooLargeError as exc:
                    raise MalformedResponseError(operation, self._too_large(response, str(exc))) from None
                except ReplyTooSlowError:
                    raise RequestTimeoutError(
                        operation, f"reply from {self.base_url} not complete within {self.call_deadline_s:g}s"
                    ) from None
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
            raise ConnectionFailedError(
                operation, f"could not connect to {self.base_url}: {type(exc).__name__}"
            ) from None
        except (httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            raise RequestTimeoutError(operation, f"no reply from {self.base_url}: {type(exc).__name__}") from None
        except httpx.DecodingError as exc:  # a Content-Encoding the body does not match: sent, reply unreadable
            raise MalformedResponseError(operation, f"reply from {self.base_url} cannot be decoded: {exc}") from None
        except httpx.TransportError as exc:
            raise TransportError(operation, f"HTTP transport failed: {type(exc).__name__}") from None

    def _too_large(self, response: httpx.Response, size: str) -> str:
        return f"HTTP {response.status_code} reply of {size} is larger than max_reply_bytes ({self.max_reply_bytes})"

    @staticmethod
    def _decode(operation: str, response: httpx.Response, raw: bytes) -> object:
        if not raw:
            return None
        try:
            return jsonlib.loads(raw)
        except RecursionError:  # nesting deeper than the parser's stack: no reply of ours looks like that
            raise MalformedResponseError(operation, f"HTTP {response.status_code} reply is nested too deeply") from None
        except ValueError:
            text = mask_secrets(raw.decode("utf-8", "replace"))  # before any cut: a page echoing headers
            if response.is_success:
                raise MalformedResponseError(
                    operation, f"HTTP {response.status_code} reply is not JSON: {text[:120]!r}"
                ) from None
            return text[:300]

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
            retry_after = _retry_after_seconds(response, body, self.retry_after_max_s)
            self._bucket.pause(retry_after if retry_after is not None else self._bucket.window_s / self._bucket.limit)
            raise RateLimitedError(operation, message, retry_after)
        raise _error_for(operation, status, message)
