"""Redis: plain lists, RQ and Celery queues, sorted sets, streams; busy workers from a heartbeat hash.

Workers write `HSET <heartbeat_key> <instance name> "busy:<unix time>"` (or `idle:`); entries
older than `heartbeat_ttl_s` are ignored, so a dead worker is never taken for a busy one. So are
entries stamped further in the future than `signal.max_future_skew_s` (milliseconds, say): one
would otherwise never age, and its worker would look busy forever.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import redis
import structlog
from pydantic import Field, model_validator

from autoscaler.core.durations import Seconds

from .base import (
    Demand,
    Secret,
    SignalError,
    SignalSource,
    SourceOptions,
    future_stamp_problem,
    job_width,
    widest,
)

_log = structlog.get_logger("autoscaler.signals")
_UNREAD_COUNT_MAX = 10_000  # entries a stream read counts one by one when Redis cannot give the lag


class RedisOptions(SourceOptions):
    url: Secret = Field(default=Secret(env="TDAS_REDIS_URL"), description="redis://[:password@]host:port/db")
    mode: Literal["list", "rq", "celery", "zset", "stream"] = "list"
    key: str = Field(description="list, sorted set or stream key; for rq and celery the queue name")
    group: str | None = Field(default=None, description="stream: the consumer group")
    heartbeat_key: str | None = Field(default=None, description="hash of instance name -> 'busy:<ts>'|'idle:<ts>'")
    heartbeat_ttl_s: Seconds = Field(default=120.0, gt=0)
    width_field: str | None = Field(
        default=None,
        description="list and celery: the JSON field of a job's payload that holds its GPUs; read from the "
        "head of the queue (width_sample jobs); a job without it counts as one GPU",
    )
    width_sample: int = Field(default=200, ge=1, le=10_000, description="jobs read from the head for width_field")

    @model_validator(mode="after")
    def _group_for_streams(self) -> RedisOptions:
        if self.mode == "stream" and not self.group:
            raise ValueError("group is required when mode = 'stream'")
        if self.width_field and self.mode not in ("list", "celery"):
            raise ValueError("width_field works with mode = 'list' or 'celery' (queues that hold the payloads)")
        return self


class RedisSignal(SignalSource):
    kind = "redis"
    Options = RedisOptions
    options: RedisOptions

    def __init__(self, options: RedisOptions, name: str | None = None) -> None:
        super().__init__(options, name)
        url = options.url.resolve(f"{self.name}.url") or "redis://127.0.0.1:6379/0"
        # a binary job payload or heartbeat (a pickled job, say) reads as text with U+FFFD in it: that
        # job is one of unknown width, that worker unheard, instead of the whole queue unreadable
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=options.timeout_s,
            socket_connect_timeout=options.timeout_s,
            decode_responses=True,
            encoding_errors="replace",
        )

    def _busy(self, now: float) -> dict[str, bool] | None:
        key = self.options.heartbeat_key
        if not key:
            return None
        busy = {}
        for instance, value in self._redis.hgetall(key).items():
            state, _, stamp = str(value).partition(":")
            try:
                at = float(stamp)
            except ValueError:
                continue
            problem = future_stamp_problem(at, now, self.max_future_skew_s)
            if problem is not None:  # not evidence of anything: the worker counts as unheard
                _log.warning("heartbeat_refused", source=self.name, instance=instance, problem=problem)
                continue
            fresh = now - at <= self.options.heartbeat_ttl_s
            if fresh and state in ("busy", "idle"):
                busy[instance] = state == "busy"
        return busy

    def _counts(self, busy: dict[str, bool] | None) -> tuple[int, int]:
        o, r = self.options, self._redis
        working = sum(busy.values()) if busy is not None else 0
        if o.mode == "list":
            return int(r.llen(o.key)), working
        if o.mode == "rq":  # RQ keeps a queue's jobs in a list and the started ones in its wip registry
            if not r.sismember("rq:queues", f"rq:queue:{o.key}"):  # a misspelt name is not an empty queue
                known = sorted(str(q).removeprefix("rq:queue:") for q in r.smembers("rq:queues"))[:10]
                raise SignalError(f"{self.name}: RQ knows no queue {o.key!r} (it knows {known}); check key")
            return int(r.llen(f"rq:queue:{o.key}")), int(r.zcard(f"rq:wip:{o.key}"))
        if o.mode == "celery":  # kombu's Redis transport: the queue is a list, delivered messages sit in 'unacked'
            return int(r.llen(o.key)), max(working, int(r.hlen("unacked")))
        if o.mode == "zset":
            return int(r.zcard(o.key)), working
        groups: list[dict[str, Any]] = r.xinfo_groups(o.key)  # type: ignore[no-untyped-call]
        group = next((g for g in groups if g.get("name") == o.group), None)
        if group is None:
            raise SignalError(f"{self.name}: stream {o.key} has no consumer group {o.group}")
        lag = group.get("lag")
        if lag is None:  # Redis cannot tell (an entry deleted before delivery): count what the group has not read
            unread = r.xrange(o.key, min=f"({group.get('last-delivered-id', '0-0')}", max="+", count=_UNREAD_COUNT_MAX)
            lag = len(unread)  # past the bound, a lower bound: the fleet is at max_gpus long before
        return int(lag), int(group.get("pending", 0))

    def _widths(self, queued: int) -> dict[int, int] | None:
        """GPUs per job of a bounded sample of the head of the queue (the next jobs to start).

        RPUSH producers put the head at index 0; Celery's LPUSH at the end: both are read there.
        """
        o = self.options
        if not o.width_field:
            return None
        if o.mode == "celery":
            payloads = self._redis.lrange(o.key, -o.width_sample, -1)
        else:
            payloads = self._redis.lrange(o.key, 0, o.width_sample - 1)
        mix: dict[int, int] = {}
        unreadable: list[str] = []
        for payload in payloads[:queued]:
            try:
                gpus = _payload_gpus(payload, o.width_field)
            except ValueError as exc:  # one producer's bug must not blind the whole queue
                unreadable.append(str(exc))
                continue
            mix[gpus] = mix.get(gpus, 0) + 1
        if unreadable:  # those jobs still count in the queue, as jobs of unknown width
            _log.warning("job_widths_unreadable", source=self.name, jobs=len(unreadable), first=unreadable[0])
        return mix

    def read(self, now: float) -> Demand:
        try:
            busy = self._busy(now)
            queued, running = self._counts(busy)
            mix = self._widths(queued)
        except redis.RedisError as exc:
            raise SignalError(f"{self.name}: {type(exc).__name__}: {exc}") from None
        except ValueError as exc:
            raise SignalError(f"{self.name}: key {self.options.key}: {exc}") from None
        return Demand(
            queued_jobs=queued,
            running_jobs=running,
            observed_at=now,
            busy=busy,
            source=self.name,
            max_job_gpus=widest(mix),
            queued_by_width=mix,
        )

    def close(self) -> None:
        self._redis.close()


def _payload_gpus(payload: object, field: str) -> int:
    """A job's GPUs from its JSON payload (dotted `field`); not JSON, or no such field: one GPU.
    A field that is there but not a whole number from 1 to MAX_JOB_GPUS is a ValueError: a producer
    bug, that job's width unknown."""
    try:
        node: Any = json.loads(payload) if isinstance(payload, str | bytes) else None
    except ValueError:
        return 1
    except RecursionError:
        raise ValueError("job payload nested too deeply to read") from None
    for part in field.split("."):
        if not isinstance(node, dict) or part not in node:
            return 1
        node = node[part]
    return job_width(node, f"job field {field!r}")
