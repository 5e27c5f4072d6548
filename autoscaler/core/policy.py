"""The policy plugin API: a small typed protocol, discovered through entry points.

A policy is pure: `decide(snapshot, plan) -> plan`, no I/O, no clock, no randomness. Its options
are a pydantic model validated at start-up, so a typo fails the config check, not a cycle.
Third-party plugins register under the entry-point group below, exactly as the built-ins do.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any, ClassVar, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError

from autoscaler.core.money import Budgets
from autoscaler.core.plan import Plan
from autoscaler.core.snapshot import Snapshot

ENTRY_POINT_GROUP = "tensordock_autoscaler.policies"


class PolicyOptions(BaseModel):
    """Base for a policy's options: unknown keys are errors, so typos are caught at start-up."""

    model_config = ConfigDict(extra="forbid", frozen=True)


OptionsT = TypeVar("OptionsT", bound=PolicyOptions)


@runtime_checkable
class Policy(Protocol):
    name: ClassVar[str]

    def decide(self, snapshot: Snapshot, plan: Plan) -> Plan: ...


@runtime_checkable
class SpendLimits(Protocol):
    """A policy that holds the fleet to budgets says which: the engine exports what is left of
    them, and `spend` reports against them, without knowing the policy or its options."""

    def spend_limits(self) -> Budgets: ...


class BasePolicy(Generic[OptionsT]):
    """Convenience base: subclasses set `name` and `Options` and implement `decide`."""

    name: ClassVar[str] = "unnamed"
    Options: ClassVar[type[PolicyOptions]] = PolicyOptions

    def __init__(self, options: OptionsT) -> None:
        self.options = options

    def decide(self, snapshot: Snapshot, plan: Plan) -> Plan:
        raise NotImplementedError


class PolicyConfigError(ValueError):
    """A policy named in the configuration is unknown or its options are invalid."""


class PolicySpec(BaseModel):
    """One entry of the ordered `policies` list in the configuration."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    options: dict[str, Any] = {}


def available_policies() -> dict[str, type[BasePolicy[Any]]]:
    found: dict[str, type[BasePolicy[Any]]] = {}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found[entry.name] = entry.load()
    return found


def build_chain(specs: list[PolicySpec], registry: dict[str, type[BasePolicy[Any]]] | None = None) -> list[Policy]:
    """Instantiate the configured chain, validating every policy's options; errors name the field."""
    known = registry if registry is not None else available_policies()
    chain: list[Policy] = []
    problems: list[str] = []
    for index, spec in enumerate(specs):
        cls = known.get(spec.name)
        if cls is None:
            problems.append(f"policies[{index}].name: unknown policy {spec.name!r}; installed: {sorted(known)}")
            continue
        try:
            options = cls.Options.model_validate(spec.options)
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"])
                problems.append(f"policies[{index}] ({spec.name}).options.{where}: {error['msg']}")
            continue
        chain.append(cls(options))
    if problems:
        raise PolicyConfigError("\n".join(problems))
    return chain
