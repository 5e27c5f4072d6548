"""Prometheus: PromQL instant queries over the HTTP API for queued, running and per-instance busy."""

from __future__ import annotations

import math
from typing import Any

import httpx
from pydantic import Field

from .base import Demand, Secret, SignalError, SignalSource, SourceOptions, busy_flags, whole_count
from .http_reading import ReplyError, get_json


class PrometheusOptions(SourceOptions):
    url: str = Field(default="http://127.0.0.1:9090", description="Prometheus base URL")
    queued_query: str = Field(description="PromQL giving queued jobs (summed if a vector)")
    running_query: str | None = Field(default=None, description="PromQL giving running jobs")
    busy_query: str | None = Field(default=None, description="PromQL: one series per instance, > 0 when busy")
    instance_label: str = Field(default="instance_name", description="label of busy_query naming the instance")
    bearer_token: Secret | None = None


class PrometheusSignal(SignalSource):
    kind = "prometheus"
    Options = PrometheusOptions
    options: PrometheusOptions

    def __init__(self, options: PrometheusOptions, name: str | None = None) -> None:
        super().__init__(options, name)
        token = options.bearer_token.resolve(f"{self.name}.bearer_token") if options.bearer_token else None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=options.url.rstrip("/"), timeout=options.timeout_s, headers=headers)

    def _query(self, query: str) -> list[tuple[dict[str, str], float]]:
        try:
            response, body = get_json(
                self._http, "/api/v1/query", timeout_s=self.options.timeout_s, params={"query": query}
            )
        except ReplyError as exc:
            raise SignalError(f"{self.name}: {self.options.url}: {exc}") from None
        except httpx.HTTPError as exc:
            raise SignalError(f"{self.name}: {self.options.url} unreachable: {type(exc).__name__}") from None
        if not isinstance(body, dict):
            raise SignalError(f"{self.name}: query {query!r}: the reply is not a Prometheus API object")
        if response.status_code != 200 or body.get("status") != "success":
            raise SignalError(f"{self.name}: query {query!r} failed: {body.get('error', response.status_code)}")
        data = body.get("data")
        if not isinstance(data, dict):
            raise SignalError(f"{self.name}: query {query!r}: the reply has no data object")
        kind = data.get("resultType")
        result: Any = data.get("result")  # its shape is checked as it is read
        try:
            samples: list[tuple[dict[str, str], float]]
            if kind == "scalar":
                samples = [({}, float(result[1]))]
            elif kind == "vector":
                samples = [(item.get("metric") or {}, float(item["value"][1])) for item in result]
            else:
                raise SignalError(f"{self.name}: query {query!r} gave a {kind}, not a vector or scalar")
        except (TypeError, KeyError, IndexError, ValueError, AttributeError) as exc:
            raise SignalError(f"{self.name}: malformed result for {query!r}: {exc}") from None
        if any(math.isnan(v) or math.isinf(v) or v < 0 for _, v in samples):
            raise SignalError(f"{self.name}: query {query!r} gave a NaN, infinite or negative value")
        return samples

    def _total(self, query: str) -> int:
        samples = self._query(query)
        if not samples:
            raise SignalError(f"{self.name}: query {query!r} returned no series (is the exporter scraped?)")
        try:  # samples are finite (checked above), so round() gives an int for the one count ceiling
            return whole_count(round(sum(v for _, v in samples)), f"query {query!r}")
        except ValueError as exc:
            raise SignalError(f"{self.name}: {exc}") from None

    def read(self, now: float) -> Demand:
        o = self.options
        busy = None
        if o.busy_query:
            busy = busy_flags(
                (labels[o.instance_label], value > 0 if math.isfinite(value) and value >= 0 else None)
                for labels, value in self._query(o.busy_query)
                if o.instance_label in labels
            )
        return Demand(
            queued_jobs=self._total(o.queued_query),
            running_jobs=self._total(o.running_query) if o.running_query else 0,
            observed_at=now,
            busy=busy,
            source=self.name,
        )

    def close(self) -> None:
        self._http.close()
