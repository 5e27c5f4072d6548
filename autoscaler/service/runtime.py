"""Wiring: settings in, a ready Engine out (client, signal, store, policy chain, actuator)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from autoscaler.common.clock import Clock, SystemClock
from autoscaler.common.logging import register_secret
from autoscaler.common.secrets import mask_url
from autoscaler.config import ConfigError, Settings
from autoscaler.core.policy import PolicyConfigError, build_chain
from autoscaler.engine.actuator import Actuator, InstanceTemplate, OfferBackoff
from autoscaler.engine.cycle import Engine, EngineConfig, EngineSettings
from autoscaler.engine.metrics import CoreMetrics
from autoscaler.signals import DemandSignal, SignalError
from autoscaler.signals.combined import CombinedSignal
from autoscaler.signals.registry import SignalConfigError, build_signal
from autoscaler.store import Store, open_store
from autoscaler.tensordock.client import TensorDockClient


@dataclass
class Runtime:
    engine: Engine
    client: TensorDockClient
    store: Store
    stopping: threading.Event
    metrics: CoreMetrics

    def close(self) -> None:
        self.client.close()
        self.store.close()


def _cloud_init(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"fleet.cloud_init_file: cannot read {path}: {exc.strerror}") from None
    try:
        import yaml  # optional: JSON needs nothing

        data = yaml.safe_load(text)
    except ImportError:
        data = json.loads(text)
    if not isinstance(data, dict):
        raise ConfigError(f"fleet.cloud_init_file: {path} must hold a mapping (runcmd, packages, write_files)")
    return data


def open_configured_store(url: str) -> Store:
    """The store, or one line naming store.url and why not (unwritable path, refused login, no server)."""
    try:
        return open_store(url)
    except Exception as exc:  # sqlite3, psycopg and OS errors alike: the operator fixes the URL or the path
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
            # the URL is right and the file is not: a damaged store, or another program's file
            reason += "; the file is damaged or not a store: restore it from a backup, or move it aside and run `adopt`"
        raise ConfigError(f"store.url: cannot open {mask_url(url)}: {reason}") from None


def build_runtime(
    settings: Settings,
    *,
    clock: Clock | None = None,
    transport: httpx.BaseTransport | None = None,
    signal: DemandSignal | None = None,
    store: Store | None = None,
    dry_run: bool | None = None,
    metrics: CoreMetrics | None = None,
    name_factory: Callable[[], str] | None = None,
) -> Runtime:
    clock = clock or SystemClock()
    td = settings.tensordock
    try:
        token = td.resolved_token()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    register_secret(token.get_secret_value())
    if not settings.fleet.ssh_key and not settings.fleet.ssh_key_id:
        raise ConfigError(
            "fleet.ssh_key: required (or fleet.ssh_key_id); TensorDock refuses instances without an SSH key"
        )
    try:
        chain = build_chain(settings.policies)
    except PolicyConfigError as exc:
        raise ConfigError(str(exc)) from None
    metrics = metrics or CoreMetrics()
    metrics.prime(spec.name for spec in settings.policies)
    stopping = threading.Event()  # SIGTERM: cuts the client's waits, the actuator starts no new call
    client = TensorDockClient(
        td.base_url,
        token,
        td.wire_format,
        clock=clock,
        rate_limit=td.rate_limit,
        rate_window_s=td.rate_window_s,
        connect_timeout_s=td.connect_timeout_s,
        read_timeout_s=td.read_timeout_s,
        create_timeout_s=td.create_timeout_s,
        call_deadline_s=td.call_deadline_s,
        retry_after_max_s=td.retry_after_max_s,
        max_reply_bytes=td.max_reply_bytes,
        cancel=stopping,
        transport=transport,
        max_attempts=td.max_attempts,
        backoff_initial_s=td.backoff_initial_s,
        observer=metrics,
    )
    state = store if store is not None else open_configured_store(settings.store.url)
    fleet = settings.fleet
    actuator = Actuator(
        client,
        state,
        clock,
        template=InstanceTemplate(
            image=fleet.image,
            ssh_key=fleet.ssh_key or None,
            ssh_key_id=fleet.ssh_key_id or None,
            ssh_port=fleet.ssh_port,
            use_dedicated_ip=fleet.use_dedicated_ip,
            cloud_init=_cloud_init(fleet.cloud_init_file),
        ),
        shape=fleet.shape,
        name_prefix=fleet.name_prefix,
        dry_run=settings.dry_run if dry_run is None else dry_run,
        offer_backoff=OfferBackoff(settings.offer_backoff_s, settings.offer_backoff_max_s),
        stopping=stopping,
        name_factory=name_factory,
    )
    if signal is None:
        try:
            signal = build_signal(settings.signal)
        except (SignalConfigError, SignalError) as exc:
            raise ConfigError(str(exc)) from None
    if isinstance(signal, CombinedSignal):
        signal.cancel = stopping  # SIGTERM gives up a demand read in progress, too
    engine = Engine(
        client,
        signal=signal,
        store=state,
        chain=chain,
        actuator=actuator,
        clock=clock,
        metrics=metrics,
        config=EngineConfig(
            name_prefix=fleet.name_prefix,
            shape=fleet.shape,
            throughput=fleet.throughput_table,
            guards=settings.guards,
            allowed_gpu_models=tuple(fleet.allowed_gpu_models),
            detail=settings.detail,
            **{key: getattr(settings, key) for key in EngineSettings.model_fields},
        ),
    )
    return Runtime(engine, client, state, stopping, metrics)
