"""HTTP JSON: any endpoint that reports the queue; dotted paths pick the numbers out."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import Field

from .base import Demand, Secret, SignalError, SignalSource, SourceOptions, busy_flags, whole_count, widest, width_mix
from .http_reading import ReplyError, get_json


class HttpJsonOptions(SourceOptions):
    url: str
    queued_path: str = Field(description="dotted path to queued jobs, e.g. 'queue.waiting' or 'items.0.n'")
    running_path: str | None = None
    busy_path: str | None = Field(default=None, description="path to an object of instance name -> busy")
    queued_by_width_path: str | None = Field(
        default=None, description='path to the waiting jobs by GPUs per job, e.g. {"1": 12, "8": 2}'
    )
    running_by_width_path: str | None = Field(default=None, description="path to the running jobs by GPUs per job")
    bearer_token: Secret | None = None


def _pick(document: Any, path: str) -> Any:
    node = document
    for part in path.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            raise KeyError(path)
    return node


class HttpJsonSignal(SignalSource):
    kind = "http"
    Options = HttpJsonOptions
    options: HttpJsonOptions

    def __init__(self, options: HttpJsonOptions, name: str | None = None) -> None:
        super().__init__(options, name)
        token = options.bearer_token.resolve(f"{self.name}.bearer_token") if options.bearer_token else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(timeout=options.timeout_s, headers=headers)

    def _count(self, document: Any, path: str) -> int:
        try:
            value = _pick(document, path)
        except KeyError:
            raise SignalError(f"{self.name}: {path!r} not found in the reply of {self.options.url}") from None
        try:
            return whole_count(value, repr(path))
        except ValueError as exc:
            raise SignalError(f"{self.name}: {exc}") from None

    def _mix(self, document: Any, path: str | None) -> dict[int, int] | None:
        if path is None:
            return None
        try:
            return width_mix(_pick(document, path), repr(path))
        except KeyError:
            raise SignalError(f"{self.name}: {path!r} not found in the reply of {self.options.url}") from None
        except ValueError as exc:
            raise SignalError(f"{self.name}: {exc}") from None

    def read(self, now: float) -> Demand:
        o = self.options
        try:
            response, document = get_json(self._http, o.url, timeout_s=o.timeout_s)
            response.raise_for_status()
        except ReplyError as exc:
            raise SignalError(f"{self.name}: {o.url}: {exc}") from None
        except httpx.HTTPStatusError as exc:
            raise SignalError(f"{self.name}: {o.url}: HTTP {exc.response.status_code}") from None
        except (httpx.HTTPError, ValueError) as exc:
            raise SignalError(f"{self.name}: {o.url}: {type(exc).__name__}") from None
        busy = None
        if o.busy_path:
            try:
                raw = _pick(document, o.busy_path)
            except KeyError:
                raise SignalError(f"{self.name}: {o.busy_path!r} not found") from None
            if not isinstance(raw, dict):
                raise SignalError(f"{self.name}: {o.busy_path!r} is not an object of instance -> busy")
            busy = busy_flags(raw.items())
        queued_mix = self._mix(document, o.queued_by_width_path)
        try:
            return Demand(
                queued_jobs=self._count(document, o.queued_path),
                running_jobs=self._count(document, o.running_path) if o.running_path else 0,
                observed_at=now,
                busy=busy,
                source=self.name,
                max_job_gpus=widest(queued_mix),
                queued_by_width=queued_mix,
                running_by_width=self._mix(document, o.running_by_width_path),
            )
        except ValueError as exc:  # a histogram that disagrees with the counts
            raise SignalError(f"{self.name}: {exc}") from None

    def close(self) -> None:
        self._http.close()
