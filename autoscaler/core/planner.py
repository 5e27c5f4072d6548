"""Runs the policy chain. A policy that raises or returns nonsense makes the cycle hold."""

from __future__ import annotations

from collections.abc import Sequence

from autoscaler.core.plan import Action, ActionKind, Plan
from autoscaler.core.policy import Policy
from autoscaler.core.snapshot import Snapshot


class PlanningError(Exception):
    """The named policy failed; nothing from this cycle's plan may be carried out."""

    def __init__(self, policy: str, problem: str) -> None:
        super().__init__(f"policy {policy}: {problem}")
        self.policy = policy
        self.problem = problem


def run_chain(snapshot: Snapshot, chain: Sequence[Policy]) -> Plan:
    plan = Plan()
    for policy in chain:
        try:
            result = policy.decide(snapshot, plan)
        except Exception as exc:  # a plugin's bug must not stop the daemon
            raise PlanningError(policy.name, f"raised {type(exc).__name__}: {exc}") from exc
        problems = nonsense_in(result, snapshot)
        if problems:
            raise PlanningError(policy.name, "returned nonsense: " + "; ".join(problems))
        plan = result
    return plan


def nonsense_in(plan: object, snapshot: Snapshot) -> list[str]:
    """What makes a plan impossible to act on; guards handle the merely unwise."""
    if not isinstance(plan, Plan):
        return [f"expected a Plan, got {type(plan).__name__}"]
    problems = []
    if plan.desired_gpus is not None and (not isinstance(plan.desired_gpus, int) or plan.desired_gpus < 0):
        problems.append(f"desired_gpus {plan.desired_gpus!r} is not a count")
    if not isinstance(plan.floor_gpus, int) or plan.floor_gpus < 0:
        problems.append(f"floor_gpus {plan.floor_gpus!r} is not a count")
    known_ids = {i.id for i in snapshot.instances} | {i.id for i in snapshot.unowned}
    offer_keys = {o.key for o in (*snapshot.offers, *snapshot.full_offers)}
    seen: set[str] = set()
    for action in plan.actions:
        if not isinstance(action, Action):
            problems.append(f"{action!r} is not an Action")
            continue
        if action.kind is ActionKind.CREATE:
            offers = (action.offer, *action.alternatives)
            if any(offer is None or offer.key not in offer_keys for offer in offers):
                problems.append(f"create names an offer not in the snapshot ({action.target})")
        elif action.instance_id not in known_ids:
            problems.append(f"{action.kind} names unknown instance {action.instance_id}")
        elif action.instance_id in seen:
            problems.append(f"two actions on instance {action.instance_id}")
        if action.instance_id:
            seen.add(action.instance_id)
    return problems
