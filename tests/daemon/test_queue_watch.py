"""The daemon's queue watch in process: when it stands aside, and that a failed cycle or a stopped
scheduler leaves it nothing to trigger (the end-to-end case is in test_daemon.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from autoscaler.common.clock import SystemClock
from autoscaler.config import load_settings
from autoscaler.service.daemon import Daemon
from autoscaler.tensordock.fake import FakeServer, Timings, build_fake

from ..conftest import TOKEN
from ..signals.conftest import require_server
from .conftest import CONFIG


class Queue:
    def __init__(self, path: Path) -> None:
        self.path = path

    def holds(self, queued: int) -> None:
        self.path.write_text(json.dumps({"queued": queued, "running": 0, "observed_at": time.time()}))


@pytest.fixture
def queue(tmp_path: Path) -> Queue:
    made = Queue(tmp_path / "queue.json")
    made.holds(0)
    return made


@contextmanager
def watching(tmp_path: Path, signal_file: Path, source: str | None = None) -> Iterator[Daemon]:
    """A Daemon on 600-s cycles watching every second, its cycle job added as run() adds it but
    paused, so nothing fires unless a test runs it; `source` replaces the file source's TOML."""
    server = FakeServer(build_fake(TOKEN, "documented", clock=SystemClock(), timings=Timings(create_s=1))).start()
    text = CONFIG.format(url=server.url, token=TOKEN, signal=signal_file, store=tmp_path / "s.db", port=0, max_gpus=8)
    if source is not None:
        text = text.replace(f'kind = "file"\nname = "queue-file"\noptions = {{ path = "{signal_file}" }}', source)
    config = tmp_path / "c.toml"
    text = text.replace("read_timeout_s = 5\n", "read_timeout_s = 5\nrate_limit = 1000\n")  # calls to spare
    config.write_text(text.replace("interval_s = 1\n", "interval_s = 600\nwatch_s = 1\n"))
    made = Daemon(load_settings(config), config)
    made.scheduler.start(paused=True)
    made.scheduler.add_job(made.run_one_cycle, "interval", id="cycle", seconds=600, next_run_time=None)
    try:
        yield made
    finally:
        if made.scheduler.running:
            made.scheduler.shutdown(wait=False)
        made.runtime.close()
        server.stop()


@pytest.fixture
def daemon(tmp_path: Path, queue: Queue) -> Iterator[Daemon]:
    with watching(tmp_path, queue.path) as made:
        yield made


def _next_cycle_set(daemon: Daemon) -> bool:
    job = daemon.scheduler.get_job("cycle")
    return job is not None and job.next_run_time is not None


def _early(daemon: Daemon) -> float | None:
    return daemon.metrics.registry.get_sample_value("tensordock_autoscaler_cycles_early_total")


def test_the_watch_stands_aside_while_a_cycle_runs_or_is_due_and_after_a_stop(daemon: Daemon, queue: Queue) -> None:
    assert daemon.run_one_cycle() is not None  # marks: an empty queue
    queue.holds(2)
    daemon._cycle_started = time.monotonic()  # a cycle has begun (it takes the lock after the leader check)
    assert not daemon.watch_queue()
    daemon._cycle_started = None
    with daemon._cycle_lock:  # a cycle holds the lock
        assert not daemon.watch_queue()
    assert not _next_cycle_set(daemon) and _early(daemon) == 0
    assert daemon.watch_queue()  # free: the 2 new jobs run the next cycle now
    assert _next_cycle_set(daemon) and _early(daemon) == 1
    assert not daemon.watch_queue()  # the same 2 jobs are not new again
    daemon.request_stop()
    queue.holds(5)
    assert not daemon.watch_queue() and _early(daemon) == 1


def test_the_watch_keeps_new_work_while_the_api_has_no_call_to_spare(daemon: Daemon, queue: Queue) -> None:
    """Each early cycle lists the fleet: with the rate limit spent (a 429's Retry-After, or a burst
    of creates) the watch holds its early cycle rather than take a call a cycle needs. It still reads
    the queue: workers took 3 of 5 jobs and 2 arrived (4 < 5, yet new work), and that news keeps."""
    queue.holds(5)
    assert daemon.run_one_cycle() is not None
    bucket = daemon.runtime.engine.client._bucket
    bucket.pause(600)  # every caller waits, as after a 429
    queue.holds(2)
    assert not daemon.watch_queue()
    queue.holds(4)
    assert not daemon.watch_queue()
    assert not _next_cycle_set(daemon) and _early(daemon) == 0
    bucket._paused_until = 0.0  # the pause is over
    assert daemon.watch_queue()
    assert _next_cycle_set(daemon) and _early(daemon) == 1
    assert not daemon.watch_queue()  # told once
    bucket.pause(600)
    queue.holds(6)
    assert not daemon.watch_queue()  # news kept
    bucket._paused_until = 0.0
    report = daemon.run_one_cycle()  # the regular cycle reads the 6 itself: nothing is left to tell
    assert report is not None and report.error is None
    assert not daemon.watch_queue() and _early(daemon) == 1


def test_a_crashed_cycle_leaves_nothing_to_compare_with(
    daemon: Daemon, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert daemon.run_one_cycle() is not None
    monkeypatch.setattr(daemon.runtime.engine, "run_cycle", lambda: 1 / 0)
    assert daemon.run_one_cycle() is None  # logged and counted as a crash
    queue.holds(3)
    assert not daemon.watch_queue()  # retried by the regular cycle, not by every watch
    monkeypatch.undo()
    assert daemon.run_one_cycle() is not None
    queue.holds(4)
    assert daemon.watch_queue()


def test_new_work_read_as_the_scheduler_shuts_down_triggers_nothing(daemon: Daemon, queue: Queue) -> None:
    assert daemon.run_one_cycle() is not None
    daemon.scheduler.shutdown(wait=False)  # its jobs are gone: modify_job would raise JobLookupError
    queue.holds(2)
    assert not daemon.watch_queue()
    assert _early(daemon) == 0


def test_a_real_redis_queue_between_cycles_new_jobs_trigger_and_a_draining_sample_does_not(tmp_path: Path) -> None:
    """Redis list with widths read from a 3-job head sample: as the head drains, 8-GPU jobs behind
    it enter the sample (the 8-GPU class "rises") with no job added; one pushed job is new work."""
    require_server("Redis", 6379)
    key = f"tdas-watch-{tmp_path.name}"
    client = redis.Redis.from_url("redis://127.0.0.1:6379/15", decode_responses=True)
    source = (
        'kind = "redis"\nname = "jobs"\n'
        f'options = {{ url = "redis://127.0.0.1:6379/15", key = "{key}", width_field = "gpus", width_sample = 3 }}'
    )
    client.delete(key)
    client.rpush(key, *[json.dumps({"gpus": 1})] * 3, *[json.dumps({"gpus": 8})] * 3)
    try:
        with watching(tmp_path, tmp_path / "unused.json", source) as daemon:
            assert daemon.run_one_cycle() is not None  # 6 waiting, the sample shows three 1-GPU jobs
            for _ in range(3):  # workers take the head: 8-GPU jobs enter the sample, none arrived
                client.lpop(key)
                assert not daemon.watch_queue()
            client.rpush(key, json.dumps({"gpus": 1}))
            assert daemon.watch_queue()
            assert _early(daemon) == 1
    finally:
        client.delete(key)
        client.close()
