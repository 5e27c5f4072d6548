"""Command line: `tensordock-autoscaler COMMAND`.

Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from autoscaler import __version__

MAX_SPEND_DAYS = 3660  # a longer look back is a typo; past year 9999 it would not even be a date


def _fake_api(args: argparse.Namespace) -> int:
    from autoscaler.common.logging import configure_logging, register_secret
    from autoscaler.tensordock.fake import Faults, Timings, build_fake, serve_forever

    token = args.token or os.environ.get("TDAS_FAKE_TOKEN")
    if not token:
        print("fake-api: give --token or set TDAS_FAKE_TOKEN", file=sys.stderr)
        return 2
    register_secret(token)
    configure_logging("INFO")
    try:
        faults = Faults.model_validate_json(args.faults) if args.faults else Faults()
        timings = Timings(create_s=args.create_s, start_s=args.start_s, stop_s=args.stop_s, ip_s=args.ip_s)
    except ValueError as exc:  # pydantic's ValidationError, bad JSON included
        print(f"fake-api: bad --faults or timing: {exc}", file=sys.stderr)
        return 2
    app = build_fake(
        token,
        args.dialect,
        catalog_path=args.catalog,
        timings=timings,
        faults=faults,
        seed=args.seed,
        rate_limit=args.rate_limit,
        rate_window_s=args.rate_window_s,
    )
    print(f"fake TensorDock API ({args.dialect}) on http://{args.host}:{args.port}/api/v2", file=sys.stderr, flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        serve_forever(app, args.host, args.port)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from autoscaler.commands.demo import run_daemon_demo, run_walkthrough
    from autoscaler.common.logging import configure_logging

    configure_logging("WARNING")
    if args.walkthrough:
        run_walkthrough(speed=args.speed)
    else:
        run_daemon_demo(
            wall_seconds=args.seconds, speed=args.speed if args.speed != 1.0 else 60.0, metrics_port=args.metrics_port
        )
    return 0


def _load(path: str | None, command: str) -> Any:
    from autoscaler.config import ConfigError, load_settings

    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"{command}: invalid configuration:", file=sys.stderr)
        for problem in str(exc).splitlines():
            print(f"  - {problem}", file=sys.stderr)
        return None


def _run(args: argparse.Namespace) -> int:
    from autoscaler.common.logging import configure_logging
    from autoscaler.config import ConfigError
    from autoscaler.service.daemon import Daemon

    settings = _load(args.config, "run")
    if settings is None:
        return 2
    configure_logging(settings.log.level, settings.log.json_lines)
    from autoscaler.commands import preflight

    found = preflight.check(settings)  # token, SSH key, cloud-init: every problem at once
    for warning in found.warnings:  # e.g. a token file every local user can read
        print(f"run: warning: {warning}", file=sys.stderr)
    if found.problems:
        print("run: invalid configuration:", file=sys.stderr)
        for problem in found.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    try:
        daemon = Daemon(settings, args.config)
    except ConfigError as exc:
        print(f"run: invalid configuration: {exc}", file=sys.stderr)
        return 2
    code = daemon.run()
    if daemon.call_abandoned:  # the cycle's thread is still in its call: the interpreter would wait for it
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _check_config(args: argparse.Namespace) -> int:
    from autoscaler.commands import preflight

    settings = _load(args.file, "check-config")
    if settings is None:
        return 2
    found = preflight.check(settings, offline=args.offline)
    if args.connect:
        preflight.connect(settings, found)
    for warning in found.warnings:
        print(f"check-config: warning: {warning}", file=sys.stderr)
    if found.problems:
        print("check-config: invalid configuration:", file=sys.stderr)
        for problem in found.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 2
    print(json.dumps(settings.model_dump(mode="json"), indent=2))  # every output is masked (autoscaler.common.secrets)
    return 0


def _dry_runtime(config: str | None, command: str) -> Any:
    """The configured runtime, built never to mutate (`status`, `adopt`, `plan`); None, after saying
    why on stderr, when the configuration is bad."""
    from autoscaler.common.logging import configure_logging
    from autoscaler.config import ConfigError
    from autoscaler.service.runtime import build_runtime

    configure_logging("WARNING")
    settings = _load(config, command)
    if settings is None:
        return None
    try:
        return build_runtime(settings, dry_run=True)
    except ConfigError as exc:
        print(f"{command}: invalid configuration: {exc}", file=sys.stderr)
        return None


def _status(args: argparse.Namespace) -> int:
    from autoscaler.commands.status import fleet_status, render_status

    runtime = _dry_runtime(args.config, "status")
    if runtime is None:
        return 2
    try:
        rows = fleet_status(runtime)
    finally:
        runtime.close()
    print(json.dumps(rows, indent=2) if args.json else render_status(rows))
    return 0


def _adopt(args: argparse.Namespace) -> int:
    from autoscaler.commands.adopt import orphans_to_adopt
    from autoscaler.tensordock import TensorDockError

    runtime = _dry_runtime(args.config, "adopt")
    if runtime is None:
        return 2
    try:
        rows = orphans_to_adopt(runtime, commit=args.yes)
    except TensorDockError as exc:
        print(f"adopt: cannot list instances: {exc}", file=sys.stderr)
        return 1
    finally:
        runtime.close()
    for row in rows:
        print(json.dumps(row) if args.json else f"{row['name']:<28} {row['id']:<38} {row['gpus']:<34} {row['note']}")
    verb = "adopted" if args.yes else "would adopt (run again with --yes)"
    print(f"adopt: {verb} {len(rows)} instance(s)", file=sys.stderr)
    return 0


def _spend(args: argparse.Namespace) -> int:
    import time

    from autoscaler.commands.spend import render_spend, spend_report
    from autoscaler.common.logging import configure_logging
    from autoscaler.config import ConfigError
    from autoscaler.core.money import Budgets
    from autoscaler.core.policy import SpendLimits, build_chain
    from autoscaler.service.runtime import open_configured_store

    configure_logging("WARNING")
    if not 1 <= args.days <= MAX_SPEND_DAYS:
        print(f"spend: --days must be from 1 to {MAX_SPEND_DAYS} (ten years)", file=sys.stderr)
        return 2
    settings = _load(args.config, "spend")
    if settings is None:
        return 2
    budgets = next((p.spend_limits() for p in build_chain(settings.policies) if isinstance(p, SpendLimits)), Budgets())
    try:
        store = open_configured_store(settings.store.url)
    except ConfigError as exc:
        print(f"spend: invalid configuration: {exc}", file=sys.stderr)
        return 2
    try:
        report = spend_report(store, time.time(), args.days, budgets.daily_usd, budgets.monthly_usd)
    finally:
        store.close()
    print(json.dumps(report, indent=2) if args.json else render_spend(report, bars=sys.stdout.isatty()))
    return 0


def _plan(args: argparse.Namespace) -> int:
    from autoscaler.commands.report import cycle_as_dict, cycle_as_text

    runtime = _dry_runtime(args.config, "plan")
    if runtime is None:
        return 2
    try:
        report = runtime.engine.run_cycle()
    finally:
        runtime.close()
    print(json.dumps(cycle_as_dict(report), indent=2) if args.json else cycle_as_text(report))
    snap = report.snapshot
    demand_unknown = snap is not None and snap.demand is None
    if snap is not None and demand_unknown:
        print(f"plan: could not plan: demand unknown: {snap.demand_error}", file=sys.stderr)
    offers_unknown = runtime.engine.offers_error is not None and snap is not None and not snap.offers
    if offers_unknown:  # a plan on no offers would say "actions: none" as if nothing were needed
        print(f"plan: could not plan: offers unavailable: {runtime.engine.offers_error}", file=sys.stderr)
    return 1 if report.error or demand_unknown or offers_unknown else 0


def _plot_target_problem(target: str) -> str | None:
    """Why a plot could not be written there, checked before a run that may take minutes."""
    import importlib.util
    from pathlib import Path

    folder = Path(target).resolve().parent
    if not folder.is_dir():
        return f"folder {folder} does not exist"
    if not os.access(folder, os.W_OK):
        return f"folder {folder} is not writable"
    if importlib.util.find_spec("matplotlib") is None:
        return "needs matplotlib: pip install 'tensordock-autoscaler[plot]'"
    return None


def unfinished_warnings(results: Sequence[Any]) -> list[str]:
    """A strategy that left jobs unfinished is not comparable: its cost covers less work."""
    return [
        f"{r.strategy} left {r.jobs_total - r.jobs_completed} of {r.jobs_total} jobs unfinished;"
        " its cost and waits cover only the jobs it finished, so they do not compare"
        for r in results
        if r.jobs_completed < r.jobs_total
    ]


def _compare_with_progress(trace: str, settings: Any, strategies: tuple[str, ...], options: Any) -> tuple[Any, Any]:
    """`compare`, one strategy at a time so a terminal sees each finish (simulated days, jobs done).

    Each strategy replays from a fresh fake and store, so the results are those of one `compare`.
    """
    from autoscaler.sim import compare
    from autoscaler.sim.strategies import check_strategy

    for name in strategies:  # every name checked before the first replay, which may take minutes
        check_strategy(name)
    if not sys.stderr.isatty():
        return compare(trace, settings, strategies, options)
    from dataclasses import replace

    from autoscaler.sim import load_trace

    days = max((job.submit for job in load_trace(trace)), default=0.0) / 86400 or 1.0
    results: list[Any] = []
    runs: dict[str, Any] = {}
    width = 24

    def bar(name: str, simulated_s: float, done: int, total: int) -> None:
        filled = min(width, int(width * simulated_s / 86400 / days))
        print(
            f"\r{name:<12} [{'#' * filled:<{width}}] {simulated_s / 86400:5.1f} of ~{days:.0f} simulated days,"
            f" {done} of {total} jobs done",
            end="",
            file=sys.stderr,
            flush=True,
        )

    for name in strategies:
        bar(name, 0.0, 0, 0)
        live = replace(options, progress=lambda s, d, t, name=name: bar(name, s, d, t))
        done, run = compare(trace, settings, (name,), live)
        results += done
        runs |= run
        r = done[0]
        bar(name, r.simulated_s, r.jobs_completed, r.jobs_total)
        print(f"  ({r.replay_s:.0f}s)", file=sys.stderr)
    return results, runs


def _simulate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from autoscaler.common.logging import configure_logging
    from autoscaler.config import readable_errors
    from autoscaler.sim import SimOptions, StrategyError, TraceError, default_cache_dir, markdown_table
    from autoscaler.sim.workload import WorkerTimings
    from autoscaler.tensordock.fake import Faults, Timings

    configure_logging("WARNING")
    settings = None
    if args.config:
        settings = _load(args.config, "simulate")
        if settings is None:
            return 2
    if args.plot and (problem := _plot_target_problem(args.plot)):
        print(f"simulate: --plot {args.plot}: {problem}", file=sys.stderr)  # before the run, not after it
        return 2
    strategies = tuple(name.strip() for name in args.strategies.split(",") if name.strip())
    try:
        faults = Faults.model_validate_json(args.faults) if args.faults else Faults()
    except ValidationError as exc:  # bad JSON included: one line per problem, no pydantic URL
        print("simulate: bad --faults:\n  " + "\n  ".join(readable_errors(exc)), file=sys.stderr)
        return 2
    try:
        world = _world_throughput(args, settings)
        options = SimOptions(
            interval_s=args.interval_s,
            watch_s=args.watch_s,
            seed=args.seed,
            catalog_path=args.catalog,
            market_depth=args.market_depth,
            faults=faults,
            market=args.market,
            world_throughput=world,
            timings=Timings(create_s=args.create_s, start_s=args.start_s),
            workers=WorkerTimings(cloud_init_s=_pair(args.cloud_init_s), restart_s=args.restart_s),
            lp_wait_s=args.lp_wait_s,
            lp_cache_dir=None if args.no_lp_cache else default_cache_dir(),
        )
    except ValueError as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    try:
        results, runs = _compare_with_progress(args.trace, settings, strategies, options)
    except (TraceError, StrategyError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return 2
    for warning in unfinished_warnings(results):
        print(f"simulate: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps([r.as_json() for r in results], indent=2))
    else:
        print(markdown_table(results))
    if args.plot:
        try:
            from autoscaler.sim.plot import plot
        except ImportError:  # pragma: no cover - matplotlib is in the dev and plot extras
            print("simulate: --plot needs matplotlib: pip install 'tensordock-autoscaler[plot]'", file=sys.stderr)
            return 2
        plot(args.plot, f"{args.trace}", results, runs)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def _pair(text: str) -> tuple[float, float]:
    """`60,90` (a range drawn per boot) or `75` (always that long)."""
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise ValueError(f"--cloud-init-s: {text!r} is not seconds (e.g. 60,90)") from None
    if len(parts) not in (1, 2) or min(parts) < 0:
        raise ValueError(f"--cloud-init-s: {text!r}: give MIN,MAX or one number of seconds, not negative")
    return (parts[0], parts[-1]) if parts[0] <= parts[-1] else (parts[-1], parts[0])


def _world_throughput(args: argparse.Namespace, settings: Any) -> dict[str, float] | None:
    """The world's true speed per model: given as JSON (inline or a file), or the policies' table
    perturbed by a seeded +-fraction per model; None: the world runs at the policies' belief."""
    from pathlib import Path

    from autoscaler.config import Settings
    from autoscaler.sim import perturbed

    table: dict[str, float] | None = None
    if args.world_throughput:
        text = args.world_throughput
        if not text.lstrip().startswith("{"):
            try:
                text = Path(text).read_text()
            except OSError as exc:
                raise ValueError(f"--world-throughput: cannot read {args.world_throughput}: {exc.strerror}") from None
        try:
            raw = json.loads(text)
        except ValueError:
            raise ValueError("--world-throughput: not a JSON object of model -> speed") from None
        if not isinstance(raw, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 for v in raw.values()
        ):
            raise ValueError("--world-throughput: give a JSON object of model -> speed (a number >= 0)")
        table = {str(k): float(v) for k, v in raw.items()}
    if args.world_perturb:
        if not 0 < args.world_perturb < 1:
            raise ValueError("--world-perturb: a fraction between 0 and 1, e.g. 0.3 for +-30 %")
        belief = (settings or Settings()).fleet.throughput_table
        table = perturbed(table or belief, args.world_perturb, args.seed)
    return table


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tensordock-autoscaler",
        description="Keep a TensorDock GPU fleet matched to a job queue at the lowest cost that serves it.",
        epilog="Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fake = commands.add_parser("fake-api", help="serve the fake TensorDock API (for demos and tests)")
    fake.add_argument("--host", default="127.0.0.1", help="listen address (default: %(default)s)")
    fake.add_argument("--port", type=int, default=8787, help="listen port (default: %(default)s)")
    fake.add_argument("--token", help="the bearer token to accept (or TDAS_FAKE_TOKEN)")
    fake.add_argument(
        "--dialect",
        choices=["documented", "observed", "spec"],
        default="documented",
        help="reply shapes: TensorDock's documentation pages (documented: thin listings), the field notes'"
        " (observed) or the OpenAPI file's (spec)",
    )
    fake.add_argument("--catalog", help="JSON catalog of locations, hosts and prices (default: shipped catalog)")
    fake.add_argument("--seed", type=int, default=0, help="seed for ids and fault draws")
    fake.add_argument("--rate-limit", type=int, default=100, help="requests per window (default: %(default)s)")
    fake.add_argument("--rate-window-s", type=float, default=60.0, help="rate-limit window in seconds")
    fake.add_argument("--create-s", type=float, default=30.0, help="seconds from create to running")
    fake.add_argument("--start-s", type=float, default=20.0, help="seconds from start to running")
    fake.add_argument("--stop-s", type=float, default=10.0, help="seconds from stop to stopped")
    fake.add_argument("--ip-s", type=float, default=15.0, help="seconds from create until the IP is listed")
    fake.add_argument("--faults", help="fault injection as JSON, e.g. '{\"timeout_rate\": 0.05}'")
    fake.set_defaults(handler=_fake_api)

    adopt = commands.add_parser(
        "adopt", help="take over instances named <prefix>-* that the store does not know (after a lost store)"
    )
    adopt.add_argument("--config", help="TOML configuration file")
    adopt.add_argument("--yes", action="store_true", help="adopt them; without it, only show what would be adopted")
    adopt.add_argument("--json", action="store_true", help="one JSON object per instance")
    adopt.set_defaults(handler=_adopt)

    run = commands.add_parser("run", help="run the autoscaler until SIGTERM (SIGHUP reloads the config)")
    run.add_argument("--config", help="TOML configuration file (TDAS_* environment variables override it)")
    run.set_defaults(handler=_run)

    check = commands.add_parser("check-config", help="validate a config and print it, secrets masked")
    check.add_argument("file", help="TOML configuration file")
    check.add_argument(
        "--offline",
        action="store_true",
        help="do not read credentials (e.g. a token file that exists only inside the systemd unit)",
    )
    check.add_argument("--connect", action="store_true", help="also try the store, the API and every demand source")
    check.set_defaults(handler=_check_config)

    status = commands.add_parser("status", help="the fleet as a table: $/h, age, idle time, managed or not")
    status.add_argument("--config", required=True, help="TOML configuration file")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=_status)

    plan = commands.add_parser("plan", help="one dry-run cycle: the snapshot and each intended action with its cost")
    plan.add_argument("--config", required=True, help="TOML configuration file")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.set_defaults(handler=_plan)

    spend = commands.add_parser("spend", help="what the fleet cost per UTC day, from the ledger: $, GPU-hours by model")
    spend.add_argument("--config", required=True, help="TOML configuration file (its store is read)")
    spend.add_argument("--days", type=int, default=7, help="days back from today, UTC (default: %(default)s)")
    spend.add_argument("--json", action="store_true", help="machine-readable output")
    spend.set_defaults(handler=_spend)

    sim = commands.add_parser("simulate", help="replay a job trace in virtual time: cost and waits per strategy")
    sim.add_argument("--trace", required=True, help="CSV of submit_time,duration,gpus")
    sim.add_argument("--config", help="TOML configuration whose policies and guards are 'ours' (default: defaults)")
    sim.add_argument(
        "--strategies",
        default="ours,per-job,reactive,static-peak,static-mean",
        help="comma-separated, from ours, per-job, reactive, static-peak, static-mean (default: all)",
    )
    sim.add_argument("--json", action="store_true", help="one JSON object per strategy instead of a table")
    sim.add_argument("--plot", metavar="FILE.png", help="write the timeline and cost-versus-wait plot")
    sim.add_argument("--catalog", help="the fake marketplace's catalog JSON (default: the shipped one)")
    sim.add_argument(
        "--market-depth", type=int, default=1, help="offer every host of the catalog this many times (default: 1)"
    )
    sim.add_argument(
        "--interval-s", type=float, help="seconds between cycles (default: the configuration's scheduler.interval_s)"
    )
    sim.add_argument(
        "--watch-s",
        type=float,
        help="the queue watch between cycles, seconds; 0: off (default: the configuration's scheduler.watch_s)",
    )
    sim.add_argument("--seed", type=int, default=0, help="seed for boot times and the fake (default: %(default)s)")
    sim.add_argument("--faults", help="the fake API's fault injection as JSON, e.g. '{\"lost_reply_rate\": 0.1}'")
    sim.add_argument(
        "--market",
        choices=["calm", "noisy"],
        default="calm",
        help="calm: only the fleet changes the marketplace; noisy: stale offers, reclaims, other renters, "
        "drifting prices (default: %(default)s)",
    )
    sim.add_argument(
        "--world-throughput",
        metavar="JSON|FILE",
        help="the jobs' true speed per GPU model, if not the policies' throughput table",
    )
    sim.add_argument(
        "--world-perturb",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="the world's speeds: the policies' table times a seeded 1 +- FRACTION per model (e.g. 0.3)",
    )
    sim.add_argument("--create-s", type=float, default=30.0, help="seconds from create to running (default: 30)")
    sim.add_argument("--start-s", type=float, default=20.0, help="seconds from start to running (default: 20)")
    sim.add_argument(
        "--cloud-init-s", default="60,90", help="seconds from running until a new worker takes jobs (default: 60,90)"
    )
    sim.add_argument(
        "--restart-s", type=float, default=15.0, help="seconds from a restart until the worker takes jobs (default: 15)"
    )
    sim.add_argument(
        "--lp-wait-s", type=float, default=300.0, help="the LP bound's service: every job started within this"
    )
    sim.add_argument("--no-lp-cache", action="store_true", help="solve the LP bound even if a cached one exists")
    sim.set_defaults(handler=_simulate)

    demo = commands.add_parser("demo", help="the daemon against the fake API and a burst-and-lull queue, sped up")
    demo.add_argument("--seconds", type=float, default=150.0, help="how long the demo runs (wall seconds)")
    demo.add_argument("--speed", type=float, default=1.0, help="time factor (daemon demo default 60)")
    demo.add_argument("--metrics-port", type=int, default=9464, help="/metrics port while it runs (0: any)")
    demo.add_argument("--walkthrough", action="store_true", help="only walk one instance through its life")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Every byte a command prints passes through one masking stream: no secret reaches a terminal or log."""
    from autoscaler.common.secrets import masked

    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = masked(sys.stdout), masked(sys.stderr)
    try:
        return _main(argv)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = saved


def _main(argv: Sequence[str] | None) -> int:
    from autoscaler.tensordock import TensorDockError

    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except TensorDockError as exc:
        print(f"{args.command}: TensorDock call failed: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
