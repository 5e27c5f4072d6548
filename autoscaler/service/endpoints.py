"""The daemon's HTTP surface: /metrics (Prometheus), /healthz (process up), /readyz (cycling well)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, make_wsgi_app
from werkzeug.wrappers import Request, Response

from autoscaler.common.wsgi import BackgroundServer


class Endpoints:
    """`ready()` answers (is_ready, reason) so /readyz can say why it is not."""

    def __init__(self, registry: CollectorRegistry, ready: Callable[[], tuple[bool, str]], host: str, port: int):
        self._metrics = make_wsgi_app(registry)
        self._ready = ready
        self._server = BackgroundServer(self._app, host, port, name="endpoints")

    @property
    def port(self) -> int:
        return self._server.port

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        path = Request(environ).path
        if path == "/metrics":
            return self._metrics(environ, start_response)
        if path == "/healthz":
            return Response("ok\n", mimetype="text/plain")(environ, start_response)
        if path == "/readyz":
            ready, reason = self._ready()
            return Response(f"{reason}\n", 200 if ready else 503, mimetype="text/plain")(environ, start_response)
        return Response("not found: try /metrics, /healthz or /readyz\n", 404)(environ, start_response)

    def start(self) -> Endpoints:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()
