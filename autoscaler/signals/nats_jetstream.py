"""NATS JetStream: a durable consumer's pending (queued) and ack-pending (running) messages."""

from __future__ import annotations

import asyncio

import nats
import nats.errors
import nats.js.errors
from pydantic import Field

from .base import Demand, Secret, SignalError, SignalSource, SourceOptions


class NatsOptions(SourceOptions):
    url: Secret = Field(default=Secret(env="TDAS_NATS_URL"), description="nats://[user:pw@]host:4222")
    stream: str
    consumer: str


class NatsSignal(SignalSource):
    kind = "nats"
    Options = NatsOptions
    options: NatsOptions

    def __init__(self, options: NatsOptions, name: str | None = None) -> None:
        super().__init__(options, name)
        self._url = options.url.resolve(f"{self.name}.url") or "nats://127.0.0.1:4222"

    async def _consumer_counts(self, problems: list[str]) -> tuple[int, int]:
        async def note(exc: Exception) -> None:  # instead of the library's own ERROR line on every read
            problems.append(f"{type(exc).__name__}: {str(exc).strip() or 'no detail'}")

        nc = await nats.connect(
            servers=[self._url],
            connect_timeout=self.options.timeout_s,
            allow_reconnect=False,
            max_reconnect_attempts=0,
            error_cb=note,
        )
        try:
            info = await nc.jetstream(timeout=self.options.timeout_s).consumer_info(
                self.options.stream, self.options.consumer
            )
            return int(info.num_pending or 0), int(info.num_ack_pending or 0)
        finally:
            await nc.close()

    def read(self, now: float) -> Demand:
        problems: list[str] = []  # what the client met while connecting: the cause behind a timeout
        try:
            queued, running = asyncio.run(asyncio.wait_for(self._consumer_counts(problems), self.options.timeout_s))
        except nats.js.errors.NotFoundError:
            raise SignalError(
                f"{self.name}: no consumer {self.options.consumer!r} on stream {self.options.stream!r}"
            ) from None
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            cause = f" ({problems[-1]})" if problems else ""
            raise SignalError(f"{self.name}: {type(exc).__name__}: {str(exc).strip() or 'no reply'}{cause}") from None
        return Demand(queued_jobs=queued, running_jobs=running, observed_at=now, source=self.name)
