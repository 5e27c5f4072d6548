"""A PostgreSQL role of the test's own, whose sessions can be cut and refused (a store outage), and a
proxy that notes when each API request arrives (which replica called, and when)."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
from werkzeug.wrappers import Request, Response

from autoscaler.common.wsgi import BackgroundServer

from ..core.conftest import PG_URL

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding", "host"}


class PgRole:
    """A login role owning a schema of its own; `outage()` cuts its sessions and refuses new ones."""

    def __init__(self) -> None:
        self.name = f"tdas_role_{uuid.uuid4().hex[:8]}"
        self.schema = f"tdas_test_{uuid.uuid4().hex[:8]}"
        with self._admin() as admin:
            admin.execute(f"CREATE ROLE {self.name} LOGIN")
            admin.execute(f"GRANT CREATE ON DATABASE postgres TO {self.name}")
            admin.execute(f"CREATE SCHEMA {self.schema} AUTHORIZATION {self.name}")

    @property
    def url(self) -> str:
        return f"postgresql://{self.name}@127.0.0.1:5432/postgres?schema={self.schema}"

    @staticmethod
    def _admin() -> Any:
        import psycopg

        return psycopg.connect(PG_URL, autocommit=True)

    def terminate(self, application_prefix: str = "") -> int:
        """End this role's sessions (those whose application_name starts with the prefix)."""
        with self._admin() as admin:
            rows = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s"
                " AND application_name LIKE %s",
                (self.name, application_prefix + "%"),
            ).fetchall()
        return len(rows)

    def refuse_logins(self, refuse: bool) -> None:
        with self._admin() as admin:
            admin.execute(f"ALTER ROLE {self.name} {'NOLOGIN' if refuse else 'LOGIN'}")

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        self.refuse_logins(True)
        self.terminate()
        try:
            yield
        finally:
            self.refuse_logins(False)

    def drop(self) -> None:
        with self._admin() as admin:
            admin.execute(f"ALTER ROLE {self.name} NOLOGIN")
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (self.name,))
            admin.execute(f"DROP SCHEMA IF EXISTS {self.schema} CASCADE")
            admin.execute(f"REVOKE CREATE ON DATABASE postgres FROM {self.name}")
            admin.execute(f"DROP ROLE IF EXISTS {self.name}")


class CountingProxy:
    """Forwards to the fake API and keeps the monotonic time each request arrived at."""

    def __init__(self, target_root: str) -> None:
        self.arrivals: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._http = httpx.Client(base_url=target_root, timeout=30)
        self._server = BackgroundServer(self._app, "127.0.0.1", 0, name="counting-proxy")

    def _app(self, environ: dict[str, Any], start_response: Any) -> Any:
        request = Request(environ)
        with self._lock:
            self.arrivals.append((time.monotonic(), f"{request.method} {request.path}"))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        upstream = self._http.request(
            request.method, request.full_path.rstrip("?"), content=request.get_data(), headers=headers
        )
        out = [(k, v) for k, v in upstream.headers.items() if k.lower() not in _HOP]
        return Response(upstream.content, upstream.status_code, headers=out)(environ, start_response)

    def since(self, moment: float) -> list[str]:
        with self._lock:
            return [what for at, what in self.arrivals if at >= moment]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.port}/api/v2"

    def start(self) -> CountingProxy:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()
        self._http.close()


_LAUNCH = (
    "import ctypes, runpy, signal, sys; "
    "ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL); "  # PR_SET_PDEATHSIG
    "sys.argv[0] = 'tensordock-autoscaler'; "
    "runpy.run_module('autoscaler.commands.cli', run_name='__main__')"
)


def daemon_command(*args: str) -> list[str]:
    """`python -m autoscaler.commands.cli ARGS`, except that the kernel SIGKILLs the daemon if the test
    process dies first (a runner's timeout, a SIGKILL), so none outlives its test even when
    `finally` never runs. Set in the child itself: preexec_fn is unsafe in a threaded test."""
    return [sys.executable, "-c", _LAUNCH, *args]
