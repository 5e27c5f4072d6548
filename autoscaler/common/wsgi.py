"""A WSGI app on a loopback (or any) port in a daemon thread: the fake API and the metrics endpoint."""

from __future__ import annotations

import socket
import threading
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server


class QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass  # one line per request would drown the decision log

    def connection_dropped(self, error: BaseException, environ: Any = None) -> None:
        pass


class BackgroundServer:
    def __init__(self, app: Any, host: str, port: int, *, quiet: bool = True, name: str = "wsgi") -> None:
        self.server: BaseWSGIServer = make_server(
            host, port, app, threaded=True, request_handler=QuietHandler if quiet else None
        )
        self._thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)

    @property
    def host(self) -> str:
        return str(self.server.host)

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


def free_port() -> int:
    """A loopback port free right now (for the demo's metrics, tests and benchmarks)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
