"""Relative work per GPU model, the denominator of 'price per unit of work'.

Units: the reference GPU (A100 SXM4 80GB) does 1.0; a job of duration D on the reference runs
D / t on a model of throughput t. Rough training-throughput ratios from public benchmarks;
users override them per model in configuration.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

DEFAULT_THROUGHPUT: Mapping[str, float] = {
    "h100-sxm5-80gb": 2.2,
    "a100-sxm4-80gb": 1.0,
    "a100-pcie-80gb": 0.9,
    "l40s-pcie-48gb": 0.85,
    "l40-pcie-48gb": 0.75,
    "a40-pcie-48gb": 0.55,
    "l4-pcie-24gb": 0.3,
    "v100-sxm2-16gb": 0.45,
    "geforcertx5090-pcie-32gb": 0.95,
    "geforcertx4090-pcie-24gb": 0.75,
    "geforcertx3090-pcie-24gb": 0.45,
    "rtxa6000-pcie-48gb": 0.55,
    "rtxa5000-pcie-24gb": 0.4,
    "rtxa4000-pcie-16gb": 0.28,
}

_VRAM = re.compile(r"-(\d+)gb$")


def vram_gb(gpu_model: str) -> int | None:
    """TensorDock model names end in the memory size (`...-24gb`)."""
    match = _VRAM.search(gpu_model)
    return int(match.group(1)) if match else None


def unit_price(hourly_usd: float, throughput_per_gpu: float, gpus: int) -> float:
    """USD per hour per unit of work: `$/h / (throughput * gpus)`, the one measure of "cheaper" that
    every policy ranks offers and instances by. Infinite for something that does no work, so it is
    never the cheapest."""
    work = throughput_per_gpu * gpus
    return hourly_usd / work if work > 0 else math.inf
