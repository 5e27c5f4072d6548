"""The strategies a replay compares: ours, and the baselines a user would otherwise run.

All but one are configurations of the same engine: `ours` is the given (or default) policy
chain; `reactive` is a KEDA + Cluster Autoscaler stand-in: target tracking on queued plus running
jobs, one node group per job width (instances of exactly 1, 2, 4 or 8 GPUs), on the two GPU
models the marketplace has most of, picked without regard to price; create and delete only,
scale-down after 10 minutes unneeded. `static-peak` and `static-mean` hold a fixed fleet of the
cheapest instances wide enough for the widest job, sized for the trace's peak or mean in GPUs
of the model they buy (a slower model needs more of them). `per-job` is not an engine
configuration (see perjob.py): a reference model of SkyPilot's managed jobs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pydantic import SecretStr

from autoscaler.config import Settings
from autoscaler.core.policy import PolicySpec
from autoscaler.core.throughput import unit_price
from autoscaler.tensordock.fake import Catalog

from .trace import Job, mean_gpus, peak_gpus

STRATEGIES = ("ours", "per-job", "reactive", "static-peak", "static-mean")
SIM_BASE_URL = "http://fake/api/v2"
REACTIVE_SCALE_DOWN_S = 600.0


class StrategyError(ValueError):
    """An unknown strategy name or one that cannot be built on this catalog."""


def check_strategy(name: str) -> None:
    if name not in STRATEGIES:
        raise StrategyError(f"--strategies: unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")


def sim_settings(settings: Settings, token: str, catalog: Catalog, *, bounds_given: bool) -> Settings:
    """The user's settings pointed at the in-process fake; without a config, bounds fit the catalog."""
    update: dict[str, Any] = {
        "tensordock": settings.tensordock.model_copy(update={"base_url": SIM_BASE_URL, "token": SecretStr(token)}),
        "fleet": settings.fleet.model_copy(update={"ssh_key": settings.fleet.ssh_key or "ssh-ed25519 AAAASIM sim"}),
        "dry_run": False,
    }
    if not bounds_given:
        total = catalog_gpus(catalog)
        update["guards"] = settings.guards.model_copy(update={"max_gpus": total, "max_instances": total})
    return settings.model_copy(update=update)


def gpus_by_model(catalog: Catalog) -> dict[str, int]:
    counts: dict[str, int] = {}
    for loc in catalog.locations:
        for host in loc.hostnodes:
            for model, gpu in host.gpus.items():
                counts[model] = counts.get(model, 0) + gpu.count
    return counts


def catalog_gpus(catalog: Catalog) -> int:
    return sum(gpus_by_model(catalog).values())


def reactive_models(catalog: Catalog, throughput: Mapping[str, float]) -> list[str]:
    """What a user picks without looking at prices: the two models the marketplace has most of."""
    counts = {m: n for m, n in gpus_by_model(catalog).items() if throughput.get(m, 0.0) > 0}
    return sorted(sorted(counts), key=lambda model: -counts[model])[:2]


def static_model(catalog: Catalog, settings: Settings, widest: int) -> str:
    """The model a static fleet buys: cheapest per unit of work among hosts wide enough."""
    shape, speeds = settings.fleet.shape, settings.fleet.throughput_table
    best: tuple[float, str] | None = None
    for location in catalog.locations:
        for host in location.hostnodes:
            for model, gpu in host.gpus.items():
                speed = speeds.get(model, 0.0)
                fits = min(gpu.count, host.vcpu_count // shape.vcpu_per_gpu, host.ram_gb // shape.ram_gb_per_gpu)
                if speed > 0 and fits >= widest:
                    unit = unit_price(shape.hourly_price(host.pricing, gpu.price_per_hr, widest), speed, widest)
                    best = min(best or (unit, model), (unit, model))
    if best is None:
        raise StrategyError(f"static fleets: no host holds an instance of {widest} GPUs")
    return best[1]


def strategy_settings(name: str, base: Settings, jobs: list[Job], catalog: Catalog) -> Settings:
    widest = max(job.gpus for job in jobs)
    sizes = [n for n in (1, 2, 4, 8) if n < widest] + [widest]
    if name == "ours":
        return base
    if name == "per-job":  # replayed by perjob.py; the settings give it the shape and the prices
        return base
    if name == "reactive":
        policies = [
            PolicySpec(name="queue_target"),
            PolicySpec(
                name="cheapest_throughput",
                options={
                    "allowed_models": reactive_models(catalog, base.fleet.throughput_table),
                    "gpus_per_instance": sizes,
                    "scale_down": "delete",
                    "shape_to_jobs": False,  # its workers take any job that fits
                },
            ),
        ]
        guards = base.guards.model_copy(update={"scale_down_delay_s": REACTIVE_SCALE_DOWN_S})
        return base.model_copy(update={"policies": policies, "guards": guards})
    if name in ("static-peak", "static-mean"):
        need = peak_gpus(jobs) if name == "static-peak" else mean_gpus(jobs)
        speed = base.fleet.throughput_table.get(static_model(catalog, base, widest), 1.0)
        gpus = widest * max(1, math.ceil(need / speed / widest))
        policies = [
            PolicySpec(name="queue_target", options={"min_gpus": gpus, "max_gpus": gpus}),
            PolicySpec(
                name="cheapest_throughput",
                options={"gpus_per_instance": [widest], "place_widest_job": False, "shape_to_jobs": False},
            ),
        ]
        return base.model_copy(update={"policies": policies})
    check_strategy(name)
    raise AssertionError(f"strategy {name!r} is listed but not built")
