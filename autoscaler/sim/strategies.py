"""The strategies a replay compares: ours, and the baselines a user would otherwise run.

Each is a configuration of the same engine, not separate code: `ours` is the given (or default)
policy chain; `reactive` is target tracking on queued plus running jobs with one GPU model
picked without regard to price, create and delete only, scale-down after 10 minutes unneeded
(what KEDA or Cluster Autoscaler do); `static-peak` and `static-mean` hold a fixed fleet of
the cheapest instances wide enough for the widest job, sized for the trace's peak or mean.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import SecretStr

from autoscaler.config import Settings
from autoscaler.policy import PolicySpec
from autoscaler.tensordock.fake import Catalog

from .trace import Job, mean_gpus, peak_gpus

STRATEGIES = ("ours", "reactive", "static-peak", "static-mean")
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


def reactive_model(catalog: Catalog) -> str:
    """What a user picks without looking at prices: the model the marketplace has most of."""
    counts = gpus_by_model(catalog)
    return max(sorted(counts), key=lambda model: counts[model])


def strategy_settings(name: str, base: Settings, jobs: list[Job], catalog: Catalog) -> Settings:
    widest = max(job.gpus for job in jobs)
    sizes = [n for n in (1, 2, 4, 8) if n < widest] + [widest]
    if name == "ours":
        return base
    if name == "reactive":
        policies = [
            PolicySpec(name="queue_target"),
            PolicySpec(
                name="cheapest_throughput",
                options={
                    "allowed_models": [reactive_model(catalog)],
                    "gpus_per_instance": sizes,
                    "scale_down": "delete",
                },
            ),
        ]
        guards = base.guards.model_copy(update={"scale_down_delay_s": REACTIVE_SCALE_DOWN_S})
        return base.model_copy(update={"policies": policies, "guards": guards})
    if name in ("static-peak", "static-mean"):
        need = peak_gpus(jobs) if name == "static-peak" else mean_gpus(jobs)
        gpus = widest * max(1, math.ceil(need / widest))
        policies = [
            PolicySpec(name="queue_target", options={"min_gpus": gpus, "max_gpus": gpus}),
            PolicySpec(name="cheapest_throughput", options={"gpus_per_instance": [widest], "place_widest_job": False}),
        ]
        return base.model_copy(update={"policies": policies})
    check_strategy(name)
    raise AssertionError(f"strategy {name!r} is listed but not built")
