"""Serving the fake: over real sockets in a background thread, or in-process for speed."""

from __future__ import annotations

import contextlib
import socket
import time
from pathlib import Path
from typing import Any

import httpx

from autoscaler.common.clock import Clock, SystemClock
from autoscaler.common.wsgi import BackgroundServer

from .app import DroppedReplyError, FakeTensorDockApp
from .catalog import Catalog, load_catalog
from .dialects import Dialect
from .state import FakeTensorDock, Faults, Rules, Timings


def build_fake(
    token: str,
    dialect: Dialect = "documented",
    *,
    clock: Clock | None = None,
    catalog_path: str | Path | None = None,
    catalog: Catalog | None = None,
    timings: Timings | None = None,
    faults: Faults | None = None,
    seed: int = 0,
    rate_limit: int = 100,
    rate_window_s: float = 60.0,
    balance_usd: float = 10_000.0,
    rules: Rules | None = None,
    rate_in_get: bool = True,
) -> FakeTensorDockApp:
    """A fake on `dialect`; `rules` default to what the dialect implies (all on for `documented`)."""
    state = FakeTensorDock(
        catalog if catalog is not None else load_catalog(catalog_path),
        clock or SystemClock(),
        timings=timings,
        faults=faults,
        seed=seed,
        balance_usd=balance_usd,
        rules=rules if rules is not None else Rules.documented() if dialect == "documented" else Rules(),
    )
    return FakeTensorDockApp(
        state, token, dialect, rate_limit=rate_limit, rate_window_s=rate_window_s, rate_in_get=rate_in_get
    )


class _InProcessTransport(httpx.WSGITransport):
    """httpx's WSGI transport, with a dropped reply turned into the timeout a client would see."""

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return super().handle_request(request)
        except DroppedReplyError as exc:
            raise httpx.ReadTimeout(str(exc), request=request) from None


def in_process_transport(app: FakeTensorDockApp) -> httpx.BaseTransport:
    return _InProcessTransport(app=app)


class _DroppingMiddleware:
    """Over sockets a dropped reply is a connection cut without a response, after an optional hold."""

    def __init__(self, app: FakeTensorDockApp) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        try:
            return self.app(environ, start_response)
        except DroppedReplyError as exc:
            if exc.hold_s > 0:
                time.sleep(exc.hold_s)
            conn = environ.get("werkzeug.socket")
            if isinstance(conn, socket.socket):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            raise


class FakeServer:
    """The fake on a loopback port in a daemon thread; `with FakeServer(app) as server: server.url`."""

    def __init__(self, app: FakeTensorDockApp, host: str = "127.0.0.1", port: int = 0, quiet: bool = True) -> None:
        self.app = app
        self._server = BackgroundServer(_DroppingMiddleware(app), host, port, quiet=quiet, name="fake-tensordock")

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def root_url(self) -> str:
        return f"http://{self._server.host}:{self.port}"

    @property
    def url(self) -> str:
        """The API base URL, as a client takes it."""
        return f"{self.root_url}/api/v2"

    def start(self) -> FakeServer:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def serve_forever(app: FakeTensorDockApp, host: str, port: int) -> None:
    """Blocking server for `tensordock-autoscaler fake-api`."""
    server = BackgroundServer(_DroppingMiddleware(app), host, port, quiet=False, name="fake-tensordock")
    try:
        server.server.serve_forever()
    finally:
        server.server.server_close()
