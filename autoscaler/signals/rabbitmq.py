"""RabbitMQ over AMQP: a passive declare gives ready messages and consumers without touching the queue.

AMQP does not report unacknowledged messages; with `running = "consumers"` each consumer counts
as one running job, which holds for GPU workers that take one job at a time (prefetch 1).
"""

from __future__ import annotations

import contextlib
from typing import Literal

import pika
import pika.exceptions
from pydantic import Field

from .base import Demand, Secret, SignalError, SignalSource, SourceOptions


class RabbitMqOptions(SourceOptions):
    url: Secret = Field(default=Secret(env="TDAS_AMQP_URL"), description="amqp://user:password@host:5672/vhost")
    queue: str
    running: Literal["consumers", "none"] = Field(default="consumers", description="how running jobs are counted")


class RabbitMqSignal(SignalSource):
    kind = "rabbitmq"
    Options = RabbitMqOptions
    options: RabbitMqOptions

    def __init__(self, options: RabbitMqOptions, name: str | None = None) -> None:
        super().__init__(options, name)
        url = options.url.resolve(f"{self.name}.url") or "amqp://guest:guest@127.0.0.1:5672/%2F"
        self._parameters = pika.URLParameters(url)
        self._parameters.socket_timeout = options.timeout_s
        self._parameters.blocked_connection_timeout = options.timeout_s
        self._parameters.connection_attempts = 1
        self._parameters.retry_delay = 0
        self._connection: pika.BlockingConnection | None = None
        self._open_channel: pika.adapters.blocking_connection.BlockingChannel | None = None

    def _channel(self) -> pika.adapters.blocking_connection.BlockingChannel:
        """One connection and channel kept between reads; a refused declare closes the channel, so reopen."""
        if self._connection is None or self._connection.is_closed:
            self._connection = pika.BlockingConnection(self._parameters)
            self._open_channel = None
        if self._open_channel is None or self._open_channel.is_closed:
            self._open_channel = self._connection.channel()
        return self._open_channel

    def read(self, now: float) -> Demand:
        for attempt in (1, 2):
            kept = self._connection is not None and self._connection.is_open
            try:
                declared = self._channel().queue_declare(queue=self.options.queue, passive=True)
                break
            except pika.exceptions.ChannelClosedByBroker as exc:
                self._open_channel = None
                raise SignalError(f"{self.name}: queue {self.options.queue!r}: {exc.reply_text}") from None
            except (pika.exceptions.AMQPError, OSError) as exc:
                self.close()
                if kept and attempt == 1:  # kept between reads, unserviced: the broker may have dropped it
                    continue
                where = f"{self._parameters.host}:{self._parameters.port}"
                detail = str(exc) or "; ".join(str(arg) for arg in exc.args) or "no detail from pika"
                raise SignalError(f"{self.name}: {where}: {type(exc).__name__}: {detail}") from None
        method = declared.method
        running = int(method.consumer_count) if self.options.running == "consumers" else 0
        return Demand(queued_jobs=int(method.message_count), running_jobs=running, observed_at=now, source=self.name)

    def close(self) -> None:
        if self._connection is not None and self._connection.is_open:
            # Closing must never fail, even from another thread while a read blocks in pika (a
            # reload): pika then raises what it likes (an AttributeError has been seen).
            with contextlib.suppress(Exception):
                self._connection.close()
        self._connection = None
        self._open_channel = None
