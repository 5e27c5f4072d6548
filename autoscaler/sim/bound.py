"""The capacity-aware lower bound: a fluid linear program no fleet on this catalog can beat.

The question it answers: what is the least any fleet could pay to run every job of the trace on
this marketplace, when no job waits more than `wait_s` after its submission? It is a linear
program over time slices, solved with HiGHS (`scipy.optimize.linprog`, sparse matrices).

Variables (all >= 0):
- `y[g, t]`: work (reference-GPU-seconds) done for job group `g` in slice `t`;
- `x[c, o, t]`: GPU-seconds that offer `o` (a GPU model on a host) sells in slice `t` to jobs of
  width class `c`, where `o` can hold an instance at least `c` GPUs wide.

Constraints:
- every job's work done: `sum_t y[g, t] = work(g)`;
- nothing before a job's release, nothing after its deadline (release + `wait_s` + its run on
  the slowest model wide enough for it): `y[g, t]` exists only in the slices of that window;
- a group never uses more GPUs than its jobs have: `y[g, t] <= jobs * width * seconds of t in
  the window * fastest speed wide enough`;
- the work of a width class is done by GPUs sold to it: `sum_g y[g, t] <= sum_o speed(o) x[c, o, t]`;
- nothing on an instance narrower than the job: `x[c, o, t]` exists only where `o` is wide enough;
- no slice uses more GPUs of a model on a host than the host has: `sum_c x[c, o, t] <= gpus(o) len(t)`;
- host vCPU and RAM: `sum_{o on h, c} x[c, o, t] <= min(vcpu / vcpu_per_gpu, ram / ram_per_gpu) len(t)`.

Objective: `sum price(o) x[c, o, t]`, with `price(o)` the price per GPU of the widest instance
the host can hold.

Relaxations, each of which can only lower the optimum (it enlarges the feasible set or lowers a
price, so any real schedule stays a feasible point whose LP cost is at most its real cost):
- integrality: a job may be split across offers and slices, and run at fractional GPUs; every
  real schedule is one such split.
- boots and idle: GPUs are paid only while they do work; real fleets also pay boots, cloud-init
  and idle GPUs, all >= 0.
- price: every GPU of an offer costs the per-GPU price of the widest instance there (the disk's
  fixed price spread over the most GPUs), the lowest per-GPU price any instance there has.
- windows: a job's window opens at the start of its release's slice clipped to its submission,
  and its deadline allows it the slowest eligible model; a real job that waited at most `wait_s`
  and ran on any eligible model fits in it.
- slices: boundaries are the windows' ends widened outward to a one-minute grid, so a slice
  may be a little longer than the windows that meet in it;
- pooling: short jobs released in the same minute, of the same width and with the same deadline
  minute, are one group; the group's work and GPU cap are the sums of its jobs', a constraint
  implied by the per-job ones. Long jobs keep groups of their own (their caps are what bind).
- the GPU cap uses the fastest eligible speed, so work per GPU-second is never under-counted.
- vCPU and RAM: counted as fluid per-GPU shares of the instance shape; storage is not limited.
- identical hosts (a deepened catalog) are merged, capacities summed: the same constraints added.

Under a noisy market the offers are priced at the lowest price each host reaches, and capacity
that other renters take is not removed: the bound stays below what any fleet could pay.

A strategy whose jobs waited longer than `wait_s` is not bound by this number; `lp_bound` with its
own longest wait is. If no schedule can meet `wait_s` (the catalog is too thin for a burst), the
allowance doubles until one can; the result says which allowance was used.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

from autoscaler.core.snapshot import InstanceShape
from autoscaler.tensordock.fake import Catalog

from .trace import Job

SLICE_S = 60.0  # the grid slice boundaries and pooled windows are widened to
POOL_MAX_S = 3600.0  # jobs this short may share groups; longer ones have their own
DEFAULT_WAIT_S = 300.0  # the service the bound buys: every job started within 5 minutes
MAX_WAIT_S = 90 * 86400.0


@dataclass(frozen=True)
class LpOffer:
    """One GPU model on one host (or on identical hosts merged): what the LP may buy."""

    host: int  # index of the host (group) for the vCPU and RAM constraint
    model: str
    speed: float  # the world's work per GPU-second, reference GPU = 1.0
    usd_per_gpu_hr: float  # at the widest instance the host can hold
    widest: int
    gpus: float  # GPUs of this model (all merged hosts together)


@dataclass(frozen=True)
class LpHost:
    gpu_cap: float  # GPUs the host's vCPU and RAM can feed (all merged hosts together)
    gpus: float  # GPUs of all models it has


@dataclass(frozen=True)
class LpBound:
    usd: float
    wait_s: float  # the wait allowance the bound was solved with
    slices: int
    groups: int
    variables: int
    solve_s: float
    cached: bool = False


def lp_offers(
    catalog: Catalog,
    shape: InstanceShape,
    throughput: Mapping[str, float],
    price_floor: Mapping[str, float] | None = None,
) -> tuple[list[LpOffer], list[LpHost]]:
    """The catalog's offers as the LP sees them; identical hosts merged. `price_floor`: host id ->
    the lowest factor its prices reach (a drifting market), 1.0 when absent."""
    merged: dict[str, tuple[list[LpOffer], LpHost]] = {}
    for location in catalog.locations:
        for host in location.hostnodes:
            factor = (price_floor or {}).get(host.id, 1.0)
            gpu_cap = min(host.vcpu_count / shape.vcpu_per_gpu, host.ram_gb / shape.ram_gb_per_gpu)
            offers = []
            for model, gpu in sorted(host.gpus.items()):
                speed = float(throughput.get(model, 0.0))
                widest = min(gpu.count, host.vcpu_count // shape.vcpu_per_gpu, host.ram_gb // shape.ram_gb_per_gpu)
                if speed <= 0 or widest < 1:
                    continue
                per_gpu = shape.hourly_price(host.pricing, gpu.price_per_hr, widest) / widest * factor
                offers.append(LpOffer(-1, model, speed, per_gpu, widest, float(gpu.count)))
            if not offers:
                continue
            key = json.dumps([[asdict(o) for o in offers], gpu_cap], sort_keys=True)
            if key in merged:
                known, known_host = merged[key]
                merged[key] = (
                    [
                        LpOffer(-1, o.model, o.speed, o.usd_per_gpu_hr, o.widest, o.gpus + n.gpus)
                        for o, n in zip(known, offers, strict=True)
                    ],
                    LpHost(known_host.gpu_cap + gpu_cap, known_host.gpus + sum(o.gpus for o in offers)),
                )
            else:
                merged[key] = (offers, LpHost(gpu_cap, sum(o.gpus for o in offers)))
    all_offers: list[LpOffer] = []
    hosts: list[LpHost] = []
    for index, (offers, lp_host) in enumerate(merged.values()):
        hosts.append(lp_host)
        all_offers += [LpOffer(index, o.model, o.speed, o.usd_per_gpu_hr, o.widest, o.gpus) for o in offers]
    return all_offers, hosts


@dataclass
class _Group:
    width: int
    jobs: int
    work: float  # reference-GPU-seconds
    release: float
    deadline: float


def _groups(jobs: list[Job], wait_s: float, slow: Mapping[int, float]) -> list[_Group]:
    pooled: dict[tuple[int, int, int], _Group] = {}
    groups: list[_Group] = []
    for job in jobs:
        deadline = job.submit + wait_s + job.duration / slow[job.gpus]
        if job.duration > POOL_MAX_S:
            groups.append(_Group(job.gpus, 1, job.duration * job.gpus, job.submit, deadline))
            continue
        key = (int(job.submit // SLICE_S), job.gpus, math.ceil(deadline / SLICE_S))
        group = pooled.get(key)
        if group is None:
            pooled[key] = _Group(job.gpus, 1, job.duration * job.gpus, job.submit, deadline)
        else:
            group.jobs += 1
            group.work += job.duration * job.gpus
            group.release = min(group.release, job.submit)
            group.deadline = max(group.deadline, deadline)
    return groups + list(pooled.values())


def _edges(groups: list[_Group]) -> np.ndarray:
    """Slice boundaries: every window's ends, on a grid of SLICE_S (widened outward).

    A trace whose submissions and deadlines fall on whole minutes is sliced exactly.

    Between two boundaries the set of open windows does not change, and then every constraint
    scales with the slice's length: one long slice allows exactly what its sub-slices would
    (any solution splits across them in proportion). So the tail, where only long jobs run, is a
    few long slices rather than thousands of short ones, at no loss.
    """
    points = {math.floor(g.release / SLICE_S) * SLICE_S for g in groups}
    points |= {math.ceil(g.deadline / SLICE_S) * SLICE_S for g in groups}
    return np.array(sorted(points), dtype=float)


def solve(jobs: list[Job], offers: list[LpOffer], hosts: list[LpHost], wait_s: float) -> LpBound | None:
    """The LP at one wait allowance; None when no schedule meets it."""
    started = time.perf_counter()
    widths = sorted({job.gpus for job in jobs})
    eligible = {w: [i for i, o in enumerate(offers) if o.widest >= w] for w in widths}
    if any(not eligible[w] for w in widths):
        return None
    slow = {w: min(offers[i].speed for i in eligible[w]) for w in widths}
    fast = {w: max(offers[i].speed for i in eligible[w]) for w in widths}
    groups = _groups(jobs, wait_s, slow)
    edges = _edges(groups)
    n_slices = len(edges) - 1
    lengths = np.diff(edges)
    cost: list[float] = []
    upper: list[float] = []
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    eq_rows: list[int] = []
    eq_cols: list[int] = []
    eq_vals: list[float] = []
    eq_rhs: list[float] = []
    # inequality rows: class-work rows (class, t), offer rows (o, t), host rows (h, t)
    class_index = {w: k for k, w in enumerate(widths)}
    offer_row0 = len(widths) * n_slices
    capped_hosts = [h for h, host in enumerate(hosts) if host.gpu_cap < host.gpus]
    host_row = {h: offer_row0 + len(offers) * n_slices + k * n_slices for k, h in enumerate(capped_hosts)}
    rhs = np.zeros(offer_row0 + len(offers) * n_slices + len(capped_hosts) * n_slices)
    used = np.zeros((len(widths), n_slices), dtype=bool)
    for g, group in enumerate(groups):
        first = int(np.searchsorted(edges, group.release, side="right")) - 1
        last = int(np.searchsorted(edges, group.deadline, side="left")) - 1
        eq_rhs.append(group.work)
        k = class_index[group.width]
        for t in range(first, last + 1):
            seconds = min(edges[t + 1], group.deadline) - max(edges[t], group.release)
            if seconds <= 0:
                continue
            column = len(cost)
            cost.append(0.0)
            upper.append(group.jobs * group.width * seconds * fast[group.width])
            eq_rows.append(g)
            eq_cols.append(column)
            eq_vals.append(1.0)
            rows.append(k * n_slices + t)
            cols.append(column)
            vals.append(1.0)
            used[k, t] = True
    for k, w in enumerate(widths):
        for t in (int(i) for i in np.flatnonzero(used[k])):
            for o in eligible[w]:
                offer = offers[o]
                column = len(cost)
                cost.append(offer.usd_per_gpu_hr / 3600.0)
                upper.append(math.inf)
                rows += [k * n_slices + t, offer_row0 + o * n_slices + t]
                cols += [column, column]
                vals += [-offer.speed, 1.0]
                if offer.host in host_row:
                    rows.append(host_row[offer.host] + t)
                    cols.append(column)
                    vals.append(1.0)
    for o, offer in enumerate(offers):
        rhs[offer_row0 + o * n_slices : offer_row0 + (o + 1) * n_slices] = offer.gpus * lengths
    for h in capped_hosts:
        rhs[host_row[h] : host_row[h] + n_slices] = hosts[h].gpu_cap * lengths
    n = len(cost)
    a_ub = coo_matrix((vals, (rows, cols)), shape=(len(rhs), n)).tocsr()
    a_eq = coo_matrix((eq_vals, (eq_rows, eq_cols)), shape=(len(groups), n)).tocsr()
    result = linprog(
        np.array(cost),
        A_ub=a_ub,
        b_ub=rhs,
        A_eq=a_eq,
        b_eq=np.array(eq_rhs),
        bounds=np.column_stack([np.zeros(n), np.array(upper)]),
        method="highs",
    )
    if result.status == 2:  # infeasible
        return None
    if result.status != 0:
        raise RuntimeError(f"LP bound: HiGHS did not solve it: {result.message}")
    return LpBound(float(result.fun), wait_s, n_slices, len(groups), n, time.perf_counter() - started)


def lp_bound(
    jobs: list[Job],
    offers: list[LpOffer],
    hosts: list[LpHost],
    wait_s: float = DEFAULT_WAIT_S,
    cache_dir: Path | None = None,
) -> LpBound:
    """The bound at `wait_s`, or at the smallest doubling of it that some schedule can meet.

    Cached in `cache_dir` (a JSON file named by a hash of the jobs, offers and allowance)."""
    key = hashlib.sha256(
        json.dumps(
            [
                [(j.submit, j.duration, j.gpus) for j in jobs],
                [asdict(o) for o in offers],
                [asdict(h) for h in hosts],
                wait_s,
                SLICE_S,
                POOL_MAX_S,
            ]
        ).encode()
    ).hexdigest()[:32]
    path = cache_dir / f"lp-{key}.json" if cache_dir is not None else None
    if path is not None and path.exists():
        try:
            return LpBound(**{**json.loads(path.read_text()), "cached": True})
        except (ValueError, TypeError):
            pass  # a damaged cache file is solved again and rewritten
    allowance = wait_s
    while (bound := solve(jobs, offers, hosts, allowance)) is None:
        if allowance >= MAX_WAIT_S:
            raise RuntimeError("LP bound: no schedule serves this trace on this catalog (a job wider than any host?)")
        allowance = max(allowance * 2, SLICE_S)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(bound)))
        temporary.replace(path)
    return bound
