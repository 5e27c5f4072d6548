"""Synthetic job traces with the variety the policies must not be tuned to any one of.

    .venv/bin/python bench/traces.py --out DIR [--seed N]     # writes DIR/<name>.csv for every profile

Each profile varies the arrival process (flat Poisson, diurnal, bursts of many jobs in a few
minutes), the width mix (mostly one GPU, Philly-like eight-GPU-heavy, mixed), the duration
distribution (lognormal, capped), and a long tail of multi-day one-GPU jobs. Same profile and
seed, same trace. All the parameters are here, in PROFILES.
"""

from __future__ import annotations

import argparse
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

DAY = 86400.0
HOUR = 3600.0


@dataclass(frozen=True)
class Profile:
    days: float
    arrival: str  # "flat" | "diurnal" | "bursty"
    jobs_per_day: float  # outside the long tail; for "bursty", the jobs in bursts plus a trickle
    widths: dict[int, float]  # GPUs -> share of jobs
    duration_median_s: float
    duration_sigma: float  # of the lognormal
    duration_cap_s: float = 3 * DAY
    long_tail_per_day: float = 0.0  # multi-day one-GPU jobs, on top
    long_tail_days: tuple[float, float] = (1.0, 4.0)
    burst_size: tuple[int, int] = (30, 70)  # jobs per burst
    burst_span_s: float = 600.0  # a burst arrives within this
    trickle_share: float = 0.1  # for "bursty": share of jobs arriving flat between bursts
    diurnal_peak_hour: float = 14.0  # UTC
    diurnal_depth: float = 0.8  # 0: flat; 1: nothing at the trough
    weekend_factor: float = 1.0  # arrivals on days 5 and 6 of each week, relative
    extra: dict[str, float] = field(default_factory=dict)


MOSTLY_ONE = {1: 0.85, 2: 0.08, 4: 0.05, 8: 0.02}
PHILLY_LIKE = {1: 0.35, 2: 0.1, 4: 0.15, 8: 0.4}
MIXED = {1: 0.45, 2: 0.2, 4: 0.2, 8: 0.15}

PROFILES: dict[str, Profile] = {
    # Many one-GPU jobs in bursts of ~50 within 10 minutes (a sweep, a CI run), few between.
    "gen-bursty-one": Profile(
        days=10,
        arrival="bursty",
        jobs_per_day=150,
        widths=MOSTLY_ONE,
        duration_median_s=20 * 60,
        duration_sigma=1.1,
        long_tail_per_day=0.5,
    ),
    # Office hours: a daily wave of mixed widths, quieter weekends.
    "gen-diurnal-mixed": Profile(
        days=10,
        arrival="diurnal",
        jobs_per_day=90,
        widths=MIXED,
        duration_median_s=45 * 60,
        duration_sigma=1.4,
        long_tail_per_day=0.3,
        weekend_factor=0.4,
    ),
    # A steady stream dominated by eight-GPU training runs, as in Philly.
    "gen-flat-wide": Profile(
        days=10,
        arrival="flat",
        jobs_per_day=35,
        widths=PHILLY_LIKE,
        duration_median_s=60 * 60,
        duration_sigma=1.5,
    ),
    # Mostly one-GPU work in a daily wave, with many multi-day one-GPU jobs underneath.
    "gen-diurnal-longtail": Profile(
        days=10,
        arrival="diurnal",
        jobs_per_day=70,
        widths=MOSTLY_ONE,
        duration_median_s=30 * 60,
        duration_sigma=1.2,
        long_tail_per_day=2.0,
        long_tail_days=(1.0, 5.0),
    ),
}


def _arrivals(profile: Profile, rng: random.Random) -> list[float]:
    span = profile.days * DAY
    n = rng.gauss(profile.jobs_per_day * profile.days, math.sqrt(profile.jobs_per_day * profile.days))
    count = max(1, round(n))
    if profile.arrival == "flat":
        return [rng.uniform(0, span) for _ in range(count)]
    if profile.arrival == "diurnal":
        times: list[float] = []
        while len(times) < count:  # thinning: accept by the day's curve and the weekday
            t = rng.uniform(0, span)
            hour = (t % DAY) / HOUR
            phase = (hour - profile.diurnal_peak_hour) / 24 * 2 * math.pi
            curve = 1 - profile.diurnal_depth * (1 - math.cos(phase)) / 2
            weekday = int(t // DAY) % 7
            if weekday in (5, 6):
                curve *= profile.weekend_factor
            if rng.random() < curve:
                times.append(t)
        return times
    if profile.arrival == "bursty":
        trickle = round(count * profile.trickle_share)
        times = [rng.uniform(0, span) for _ in range(trickle)]
        while len(times) < count:
            start = rng.uniform(0, span - profile.burst_span_s)
            size = rng.randint(*profile.burst_size)
            times += [start + rng.uniform(0, profile.burst_span_s) for _ in range(min(size, count - len(times)))]
        return times
    raise ValueError(f"unknown arrival process {profile.arrival!r}")


def generate(name: str, seed: int = 0) -> list[tuple[float, float, int]]:
    """(submit_time, duration, gpus) rows, sorted by submission."""
    profile = PROFILES[name]
    rng = random.Random(f"{name}/{seed}")
    widths, weights = zip(*sorted(profile.widths.items()), strict=True)
    rows = []
    for t in _arrivals(profile, rng):
        duration = rng.lognormvariate(math.log(profile.duration_median_s), profile.duration_sigma)
        rows.append((t, min(max(duration, 60.0), profile.duration_cap_s), rng.choices(widths, weights)[0]))
    for _ in range(round(profile.long_tail_per_day * profile.days)):
        rows.append((rng.uniform(0, profile.days * DAY), rng.uniform(*profile.long_tail_days) * DAY, 1))
    return sorted((round(t), round(d), g) for t, d, g in rows)


def write(name: str, directory: Path, seed: int = 0) -> Path:
    path = directory / f"{name}.csv"
    rows = generate(name, seed)
    path.write_text("submit_time,duration,gpus\n" + "".join(f"{s},{d},{g}\n" for s, d, g in rows))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, required=True, help="directory for the CSV files")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in PROFILES:
        rows = generate(name, args.seed)
        gpu_hours = sum(d * g for _, d, g in rows) / HOUR
        print(f"{write(name, args.out, args.seed)}: {len(rows)} jobs, {gpu_hours:,.0f} GPU-hours")


if __name__ == "__main__":
    main()
