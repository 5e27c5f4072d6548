"""A whole engine against the fake API on a virtual clock, with a static signal and a store."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from autoscaler.common.clock import ManualClock
from autoscaler.config import Settings
from autoscaler.engine.cycle import CycleReport
from autoscaler.service.runtime import Runtime, build_runtime
from autoscaler.signals import StaticSignal
from autoscaler.store import SqliteStore, open_store
from autoscaler.tensordock.fake import FakeTensorDockApp, build_fake, in_process_transport

from ..conftest import TOKEN


@dataclass
class World:
    clock: ManualClock
    fake: FakeTensorDockApp
    signal: StaticSignal
    runtime: Runtime
    store_path: Path

    def cycle(self, advance: float = 30.0) -> CycleReport:
        report = self.runtime.engine.run_cycle()
        self.clock.advance(advance)
        return report

    def fake_instances(self) -> list[Any]:
        self.fake.state.settle()
        return self.fake.state.instances()

    def restart(self, **settings: Any) -> None:
        """A new process: new engine, client and store connection, same store file and fake."""
        self.runtime.close()
        self.runtime = make_runtime(self.clock, self.fake, self.signal, self.store_path, **settings)


def make_runtime(
    clock: ManualClock, fake: FakeTensorDockApp, signal: StaticSignal, store_path: Path, **settings: Any
) -> Runtime:
    base: dict[str, Any] = {
        "tensordock": {"base_url": "http://fake/api/v2", "token": TOKEN, "wire_format": fake.renderer.dialect},
        "fleet": {"name_prefix": "tdas", "ssh_key": "ssh-ed25519 AAAATEST test"},
        "guards": {"max_gpus": 16, "max_instances": 16, "scale_down_delay_s": 300, "scale_down_cooldown_s": 0},
        "offer_refresh_s": 0,
    }
    for key, value in settings.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return build_runtime(
        Settings(**base),
        clock=clock,
        transport=in_process_transport(fake),
        signal=signal,
        store=open_store(str(store_path)) if "://" in str(store_path) else SqliteStore(store_path),
    )


MakeWorld = Callable[..., World]


@pytest.fixture
def make_world(tmp_path: Path) -> Iterator[MakeWorld]:
    worlds: list[World] = []

    def make(
        dialect: str = "documented",
        fake_options: dict[str, Any] | None = None,
        store_url: str | None = None,
        **settings: Any,
    ) -> World:
        clock = ManualClock()
        fake = build_fake(TOKEN, dialect, clock=clock, **(fake_options or {}))  # type: ignore[arg-type]
        signal = StaticSignal()
        path: Any = store_url or tmp_path / f"state-{len(worlds)}.db"
        world = World(clock, fake, signal, make_runtime(clock, fake, signal, path, **settings), path)
        worlds.append(world)
        return world

    yield make
    for world in worlds:
        world.runtime.close()


PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@pytest.fixture
def pg_store_url() -> Iterator[str]:
    """A store URL on the local PostgreSQL with a schema of its own, dropped afterwards."""
    import uuid

    import psycopg

    from ..signals.conftest import require_server

    require_server("PostgreSQL", 5432)
    schema_name = f"tdas_test_{uuid.uuid4().hex[:8]}"
    yield f"{PG_URL}?schema={schema_name}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema_name} CASCADE")
