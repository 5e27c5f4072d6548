"""The long-running service: APScheduler drives cycles; signals stop or reload it; systemd is told.

- One cycle every `scheduler.interval_s` (plus jitter), never two at once, missed runs coalesced.
  A cycle that fails is logged and counted; the next one runs.
- Between cycles, while a stop settles, the fleet is listed every
  `scheduler.transition_poll_s` for the books only (the ledger stops charging the full rate
  within a poll of the stop, not an interval); never during a cycle, never on a follower.
- Between cycles, every `scheduler.watch_s`, the leader reads the demand; new work in the queue
  (see `core/queue_watch.py`) runs the next cycle now, so a job waits for a boot, not an interval.
- SIGTERM/SIGINT: the call in flight finishes and is journaled, every wait (rate limit,
  Retry-After, back-off) is cut, no new call starts, exit 0 within `scheduler.shutdown_timeout_s`.
- With a PostgreSQL store, leadership is a lock and a lease (see `engine/leader.py`): the client checks
  it right before each attempt; /readyz says 503 while the store cannot be reached.
- SIGHUP: reload the configuration file; an invalid one is refused and the running one stays.
- systemd Type=notify: READY once serving, STATUS with a one-line fleet summary, STOPPING on the way
  out. WATCHDOG pings come from a scheduler job every third of systemd's WATCHDOG_USEC while the
  scheduler is alive: cycles keep coming (whatever TensorDock answers) and none has run longer than
  `scheduler.cycle_stall_s`. A wedged scheduler or cycle stops the pings and systemd restarts it.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import structlog
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler

from autoscaler.common.logging import configure_logging
from autoscaler.common.secrets import mask_secrets
from autoscaler.config import ConfigError, Settings, load_settings
from autoscaler.core.queue_watch import QueueWatch
from autoscaler.engine.cycle import CycleReport
from autoscaler.engine.leader import LeaderElector
from autoscaler.engine.metrics import CoreMetrics
from autoscaler.service.endpoints import Endpoints
from autoscaler.service.runtime import Runtime, build_runtime
from autoscaler.service.sdnotify import SystemdNotifier
from autoscaler.signals.base import Demand
from autoscaler.store import FencedError
from autoscaler.store.postgres import PostgresStore
from autoscaler.store.sqlite import StoreFileLostError

_log = structlog.get_logger("autoscaler.daemon")
_T = TypeVar("_T")
_JOB_ID = "cycle"
_FOLLOW_JOB_ID = "follow-transitions"
_WATCHDOG_JOB_ID = "watchdog"
_WATCH_JOB_ID = "watch-queue"
_LIVENESS_SLACK_S = 10.0  # the scheduler's own lateness on a loaded machine
_MIN_WATCHDOG_S = 3.0  # a third of it between pings: shorter cannot be pinged reliably
_MAIN_LOOP_S = 0.1  # how soon the main thread acts on a signal the handler recorded
_LOCK_POLL_S = 0.5  # how often a cycle waiting for the cycle lock looks for a shutdown


class _QuietPollSkips(logging.Filter):
    """Drop APScheduler's "skipped: maximum number of running instances" warning for the light
    polls between cycles: while a source is slow, the next watch finds the last one still reading,
    and skipping it is the point, not news. The cycle's own skips (a cycle longer than its
    interval) still warn."""

    def filter(self, record: logging.LogRecord) -> bool:
        job = record.args[0] if isinstance(record.args, tuple) and record.args else None
        return not (
            "maximum number of running instances" in str(record.msg)
            and getattr(job, "id", None) in (_WATCH_JOB_ID, _FOLLOW_JOB_ID)
        )


_POLL_SKIPS = _QuietPollSkips()
logging.getLogger("apscheduler.scheduler").addFilter(_POLL_SKIPS)


def summary(report: CycleReport) -> str:
    """One line for systemctl status."""
    snap = report.snapshot
    if snap is None:
        return f"cycle failed: {report.error}"
    demand = "unknown" if snap.demand is None else f"{snap.demand.queued_jobs}q/{snap.demand.running_jobs}r"
    return (
        f"{len(snap.instances)} instances, {snap.active_gpus} GPUs, ${snap.hourly_cost:.2f}/h, "
        f"today ${snap.spend.today_usd:.2f}, demand {demand}"
        + (f", HOLD: {mask_secrets(report.hold)[:60]}" if report.hold else "")
    )


_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
RESTART_ONLY = ("store.url", "metrics.host", "metrics.port", "leader_election", "fleet.name_prefix")
"""Settings a running daemon cannot take on: a reload that changes one is refused, naming it."""


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out |= _flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return out
    return {prefix: value}


def changed_settings(old: Settings, new: Settings) -> list[str]:
    """The dotted keys whose values differ (a list, e.g. policies, counts as one key); never the values."""
    before, after = _flatten(old.model_dump()), _flatten(new.model_dump())
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


def _close_quietly(signal: object) -> None:
    close = getattr(signal, "close", None)
    if callable(close):
        try:
            close()
        except Exception as exc:  # a library's complaint about closing is no reason to stop
            _log.info("old_signal_close_failed", error=f"{type(exc).__name__}: {exc}")


def token_of(settings: Settings) -> str | None:
    """The token these settings resolve to now (a token_file is read at each call)."""
    try:
        return settings.tensordock.resolved_token().get_secret_value()
    except ValueError:
        return None


class Daemon:
    def __init__(self, settings: Settings, config_path: str | Path | None = None, **runtime_options: Any) -> None:
        self.settings = settings
        self.config_path = config_path
        self.metrics = CoreMetrics()
        self.metrics.leader.set(1)
        self._runtime_options = runtime_options
        self._token_in_use = token_of(settings)  # what the running client sends
        self.runtime: Runtime = build_runtime(settings, metrics=self.metrics, **runtime_options)
        self.elector: LeaderElector | None = None
        if isinstance(self.runtime.store, PostgresStore) and settings.leader_election:
            self.elector = LeaderElector(
                settings.store.url, settings.fleet.name_prefix, self.runtime.store, lease_s=settings.lease_s
            )
        if self.elector is not None:  # said at each scrape, so a replica stuck on its store stops saying 1
            elector = self.elector
            self.metrics.leader.set_function(lambda: 1.0 if elector.leading_now() else 0.0)
        self._wire(self.runtime)
        self.notifier = SystemdNotifier()
        self._cycle_lock = threading.Lock()
        self._watch = QueueWatch()
        self._stop = threading.Event()
        self.call_abandoned = False  # set when the call in flight outlived scheduler.shutdown_timeout_s
        self._signals: deque[int] = deque()  # recorded by the handler, acted on by the main loop
        self._last_success: float | None = None
        self._started = time.time()
        self._cycle_started: float | None = None  # monotonic; None while no cycle runs
        self._cycle_moved = 0.0  # monotonic: when the last API call went out
        self._cycle_ended = time.monotonic()  # start-up counts as the end of a cycle
        self._watchdog_withheld = False
        self.watchdog_s = self.notifier.watchdog_interval_s
        if self.watchdog_s is not None and self.watchdog_s < _MIN_WATCHDOG_S:
            raise ConfigError(
                f"WatchdogSec: {self.watchdog_s:g}s is too short to be pinged reliably;"
                f" give the unit WatchdogSec={_MIN_WATCHDOG_S:g}s or more"
            )
        self.scheduler = BackgroundScheduler(timezone="UTC")
        _port_free(settings.metrics.host, settings.metrics.port)
        self.endpoints = Endpoints(self.metrics.registry, self.readiness, settings.metrics.host, settings.metrics.port)

    def _wire(self, runtime: Runtime) -> None:
        """Every attempt the client puts on the wire shows the cycle is moving (what the watchdog
        measures: a cycle of many slow creates is busy, not wedged), and is first checked against
        the lease and fencing."""
        elector = self.elector

        def before_attempt(operation: str) -> None:
            self._cycle_moved = time.monotonic()
            if elector is not None:
                elector.check_before_call(operation)

        runtime.client.before_attempt = before_attempt

    # -- health -------------------------------------------------------------------------------

    def store_problem(self) -> str | None:
        """Why the store cannot be used now (its session dropped and is not back), if it cannot."""
        problem: str | None = getattr(self.runtime.store, "problem", None)
        if problem is None and self.elector is not None:
            problem = self.elector.problem
        return problem

    def readiness(self) -> tuple[bool, str]:
        problem = self.store_problem()
        if problem is not None:
            return False, f"store unavailable: {problem}"
        window = 3 * self.settings.scheduler.interval_s
        if self._last_success is None:
            return False, "no successful cycle yet"
        age = time.time() - self._last_success
        if age > window:
            return False, f"last successful cycle {age:.0f}s ago (more than 3 intervals)"
        return True, f"last successful cycle {age:.0f}s ago"

    def scheduler_alive(self) -> tuple[bool, str]:
        """Cycles keep coming and none is stuck: what the systemd watchdog is pinged on, not their success."""
        now = time.monotonic()
        s = self.settings.scheduler
        started = self._cycle_started
        if started is not None:
            running, still = now - started, now - max(started, self._cycle_moved)
            if still > s.cycle_stall_s:
                return False, (
                    f"a cycle has run {running:.0f}s, {still:.0f}s of it without a call going out:"
                    " more than scheduler.cycle_stall_s"
                )
            return True, f"a cycle is running ({running:.0f}s)"
        since = now - self._cycle_ended
        if since > s.interval_s + s.jitter_s + _LIVENESS_SLACK_S:
            return False, f"no cycle for {since:.0f}s (interval {s.interval_s:g}s)"
        return True, f"last cycle ended {since:.0f}s ago"

    def watchdog_tick(self) -> bool:
        """Ping systemd's watchdog when the scheduler is alive; returns whether it pinged."""
        alive, why = self.scheduler_alive()
        if alive:
            self._watchdog_withheld = False
            return self.notifier.notify(WATCHDOG="1")
        if not self._watchdog_withheld:
            _log.error("watchdog_withheld", reason=why, restart_after_s=self.watchdog_s)
            self._watchdog_withheld = True
        return False

    # -- the job ------------------------------------------------------------------------------

    def run_one_cycle(self) -> CycleReport | None:
        if self._stop.is_set():
            return None
        self._cycle_started = time.monotonic()
        try:
            return self._cycle()
        finally:
            self._cycle_ended = time.monotonic()
            self._cycle_started = None

    def _cycle(self) -> CycleReport | None:
        if self.elector is not None:
            leading = self.elector.ensure()
            self.metrics.leader.set(1 if leading else 0)
            if not leading:
                self.metrics.forget_fleet()
            if not leading and self.elector.problem is not None:  # cut off from the store: not ready to lead
                self.notifier.notify(STATUS=f"standby: {self.elector.problem}")
                return None
            if not leading:  # a follower: ready to take over, acting on nothing
                self._last_success = time.time()
                self.metrics.last_success.set(self._last_success)  # a standby check, as /readyz counts it
                self.notifier.notify(STATUS="standby: another replica leads")
                return None
        # not `with`: shutdown takes the lock and keeps it, and a cycle thread waiting on it (its
        # renewal came back during the shutdown) would hold the process at exit for good
        while not self._cycle_lock.acquire(timeout=_LOCK_POLL_S):
            if self.runtime.stopping.is_set():
                return None
        try:
            if self.runtime.stopping.is_set():
                return None
            report = self._run_engine_cycle()
            # what the queue watch compares with: nothing after a cycle that failed to read or crashed,
            # so a failure is retried by the regular cycle, not by every watch
            snapshot = report.snapshot if report is not None else None
            self._watch.cycle_saw(snapshot.demand if snapshot is not None else None)
        finally:
            self._cycle_lock.release()
        if report is None:
            return None
        if report.error is None:
            self._last_success = time.time()
        self.notifier.notify(STATUS=summary(report))
        return report

    def _run_engine_cycle(self) -> CycleReport | None:
        try:
            return self.runtime.engine.run_cycle()
        except FencedError as exc:  # deposed during the cycle (lease lapsed, lock gone): nothing was sent
            _log.warning("cycle_fenced", reason=str(exc))
            self.metrics.leader.set(0)
        except StoreFileLostError as exc:  # known and said (store_lost, /readyz): one line a cycle, no traceback
            _log.error("cycle_skipped", reason=str(exc))
            self.metrics.cycles.labels("error").inc()
        except Exception:  # a bug in a cycle must not end the daemon; the next one runs
            _log.exception("cycle_crashed")
            self.metrics.cycles.labels("crash").inc()
        return None

    def watch_queue(self) -> bool:
        """Between cycles: new work in the queue runs the next cycle now; returns whether it did.

        Only the leader watches, never while a cycle runs (it reads the queue itself), at most once
        per `scheduler.watch_s` and only while the rate limit has a call to spare, so early cycles
        never crowd out a cycle's calls; a reading that fails or is stale triggers nothing, so a
        failing source is read once per watch, no more.
        """
        demand = self._between_cycles(self._read_new_work, "watch")
        if demand is None or self._stop.is_set():
            return False
        try:
            self.scheduler.modify_job(_JOB_ID, next_run_time=_utcnow())
        except JobLookupError:  # the scheduler shut down while the queue was read
            return False
        self.metrics.early_cycles.inc()
        _log.info("queue_grew", queued_jobs=demand.queued_jobs, queued_gpus=demand.queued_gpus, cycle="now")
        return True

    def _read_new_work(self) -> Demand | None:
        """The demand, if it shows work no cycle has seen and the rate limit can spare the early
        cycle's calls. The queue is read either way (that costs TensorDock nothing), so the watch's
        marks follow it; news read while no call can be spared is kept until one can, or until a
        cycle reads the queue itself."""
        engine = self.runtime.engine
        demand, _ = engine.read_demand(engine.clock.now())
        if demand is None or not self._watch.news(demand, can_act=engine.client.can_spare_a_call()):
            return None
        return demand

    def _between_cycles(self, work: Callable[[], _T], what: str) -> _T | None:
        """Run a light job between cycles: on the leader only, never while a cycle runs or is about to
        (it holds the cycle lock, so a cycle waits for it), never after a stop; its failure is logged,
        not raised (the next cycle redoes what it would have done)."""
        if self._stop.is_set() or self._cycle_started is not None:
            return None
        if self.elector is not None and not self.elector.is_leader:
            return None
        if not self._cycle_lock.acquire(blocking=False):
            return None
        try:
            return work()
        except FencedError as exc:  # deposed since the cycle: the call was not sent
            _log.warning(f"{what}_fenced", reason=str(exc))
            self.metrics.leader.set(0)
        except Exception:  # the books and the queue are read again by the next cycle; the daemon goes on
            _log.exception(f"{what}_crashed")
        finally:
            self._cycle_lock.release()
        return None

    def follow_transitions(self) -> None:
        if self.runtime.engine.following:  # else nothing is settling
            self._between_cycles(self._follow, "follow")

    def _follow(self) -> None:
        if self.elector is not None and not self.elector.ensure():  # deposed since the cycle: hands off
            self.metrics.leader.set(0)
            return
        self.runtime.engine.follow_transitions()

    # -- reload -------------------------------------------------------------------------------

    def reload(self) -> bool:
        """Swap in a new configuration between cycles; keep the old one if the new one is invalid.

        Everything that can change live does (log level, policies, bounds, signal, scheduler); a
        change to a setting that cannot (RESTART_ONLY) refuses the whole reload, by name.
        """
        if self.config_path is None:
            _log.warning("reload_ignored", reason="started without --config")
            return False
        try:
            new_settings = load_settings(self.config_path)
            new_token = token_of(new_settings)
            changed = changed_settings(self.settings, new_settings)
            if new_token != self._token_in_use:  # a token_file rewritten in place changes no setting
                changed = sorted({*changed, "tensordock.token"})
            frozen = [key for key in changed if key.startswith(RESTART_ONLY)]
            if frozen:
                raise ConfigError(f"{', '.join(frozen)}: cannot change while running; restart to apply")
            new_runtime = build_runtime(
                new_settings, metrics=self.metrics, store=self.runtime.store, **self._runtime_options
            )
        except ConfigError as exc:
            self.metrics.config_reloads.labels("refused").inc()
            _log.error("reload_refused", reason=str(exc), keeping="the running configuration")
            return False
        old_level = self.settings.log.level
        with self._cycle_lock:
            old = self.runtime
            self._wire(new_runtime)
            self.runtime, self.settings, self._token_in_use = new_runtime, new_settings, new_token
            if self.elector is not None:  # a new interval (or leader_lease_s) is a new lease
                self.elector.set_lease(new_settings.lease_s)
            self._watch.cycle_saw(None)  # the source may have changed: the next cycle sets the marks
            old.client.close()
        # The old source may be blocked in a read on its own thread (a broker gone quiet): it is
        # closed on a thread of its own, so neither the reload nor SIGTERM waits on it.
        threading.Thread(target=_close_quietly, args=(old.engine.signal,), name="close-old-signal", daemon=True).start()
        self.scheduler.reschedule_job(
            _JOB_ID,
            trigger="interval",
            seconds=new_settings.scheduler.interval_s,
            jitter=new_settings.scheduler.jitter_s,
        )
        self._schedule_polls()
        self.metrics.config_reloads.labels("ok").inc()
        if any(key.startswith("log.") for key in changed):  # the line goes out at the more verbose level
            quieter = _LEVELS.index(new_settings.log.level) > _LEVELS.index(old_level)
            if quieter:
                _log.info("reloaded", changed=changed)
            configure_logging(new_settings.log.level, new_settings.log.json_lines)
            if not quieter:
                _log.info("reloaded", changed=changed)
        else:
            _log.info("reloaded", changed=changed or "nothing")
        return True

    # -- lifecycle ----------------------------------------------------------------------------

    def request_stop(self) -> None:
        """What SIGTERM does, for an embedding program (the demo)."""
        self._stop.set()

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        """Only records the signal. A handler runs between two bytecodes of the main thread, which
        may be inside `Event.wait` holding the event's lock: setting that event here waited on the
        lock forever (a SIGTERM that never stopped the daemon). A deque append takes no lock."""
        self._signals.append(signum)

    def _reload_asked(self) -> bool:
        """The signals recorded since the last look, acted on outside the handler: stop, or reload."""
        reload = False
        while self._signals:
            if self._signals.popleft() == signal.SIGHUP:
                reload = True
            else:
                self._stop.set()
        return reload

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.endpoints.start()
        s = self.settings.scheduler
        self.scheduler.add_job(
            self.run_one_cycle,
            "interval",
            id=_JOB_ID,
            seconds=s.interval_s,
            jitter=s.jitter_s,
            max_instances=1,
            coalesce=True,
            misfire_grace_time=int(s.interval_s),
            next_run_time=None,
        )
        self._schedule_polls()
        if self.watchdog_s is not None:
            self.scheduler.add_job(
                self.watchdog_tick,
                "interval",
                id=_WATCHDOG_JOB_ID,
                seconds=self.watchdog_s / 3,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(self.watchdog_s / 3)),
            )
        self.scheduler.start()
        self.scheduler.modify_job(_JOB_ID, next_run_time=_utcnow())  # first cycle right away
        self.notifier.notify(READY="1", STATUS="started; first cycle running")
        if self.watchdog_s is not None:
            self.watchdog_tick()
        _log.info(
            "started",
            interval_s=s.interval_s,
            metrics_port=self.endpoints.port,
            dry_run=self.settings.dry_run,
            policies=[p.name for p in self.settings.policies],
        )
        while True:
            reload = self._reload_asked()
            if self._stop.is_set():
                break
            if reload:
                self.notifier.notify(RELOADING="1", STATUS="reloading configuration")
                self.reload()
                self.notifier.notify(READY="1")
            time.sleep(_MAIN_LOOP_S)  # no Event.wait: see _on_signal
        return self.shutdown()

    def _schedule_polls(self) -> None:
        """The light jobs between cycles, as the settings have them now (after a reload too)."""
        s = self.settings.scheduler
        for job_id, poll, seconds, on in (
            (_FOLLOW_JOB_ID, self.follow_transitions, s.transition_poll_s, s.follows_transitions),
            (_WATCH_JOB_ID, self.watch_queue, s.watch_s, s.watches_queue),
        ):
            if self.scheduler.get_job(job_id) is not None:
                self.scheduler.remove_job(job_id)
            if on:
                self.scheduler.add_job(
                    poll,
                    "interval",
                    id=job_id,
                    seconds=seconds,
                    max_instances=1,
                    coalesce=True,
                    misfire_grace_time=max(1, int(seconds)),
                )

    def shutdown(self) -> int:
        self.notifier.notify(STOPPING="1", STATUS="stopping: finishing the call in flight")
        _log.info("stopping")
        self.runtime.stopping.set()  # every wait of the client ends now; the actuator starts no new call
        self.scheduler.shutdown(wait=False)
        limit = self.settings.scheduler.shutdown_timeout_s
        deadline = time.monotonic() + limit
        clean = self._cycle_lock.acquire(timeout=limit)
        if not clean:  # its intent is journaled: the next start resolves it (a create, by its name)
            self.call_abandoned = True
            _log.error(
                "shutdown_timeout",
                waited_s=limit,
                abandoned="the call in flight; its intent is in the journal and the next start resolves it",
            )
        # after the call in flight: nobody else leads while it may still land
        if self.elector is not None and not self.elector.step_down(timeout=deadline - time.monotonic()):
            clean = False
            self.call_abandoned = True
            _log.error(
                "shutdown_timeout",
                waited_s=limit,
                abandoned="the store, which does not answer; the lease lapses when this process ends",
            )
        self.endpoints.stop()
        if clean:  # a call or a store that does not return would hold the close too; the exit ends them
            self.runtime.close()
        _log.info("stopped", clean=clean)
        return 0


def _port_free(host: str, port: int) -> None:
    """Refuse a metrics port another process holds, by name, before anything starts (werkzeug would exit 1)."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise ConfigError(f"metrics.host: cannot resolve {host!r}: {exc.strerror}") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(
                f"metrics.port: cannot listen on {host}:{port}: {exc.strerror} (another daemon? pick a free port)"
            ) from None


def _utcnow() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)
