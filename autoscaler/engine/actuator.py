"""Carries out a guarded plan: intent journaled before each call, outcome after, never twice.

A create's name is chosen and journaled before the POST, so after a lost reply the next cycle
finds it by name instead of creating again (DESIGN rule 3). A create refused for capacity backs
its offer off and tries the plan's next offer. Dry run journals nothing and calls nothing.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, model_validator

from autoscaler.common.clock import Clock
from autoscaler.core.plan import Action, ActionKind
from autoscaler.core.replacement import Created, Lost, Refused, Replacement, step
from autoscaler.core.snapshot import InstanceShape, Offer, OwnedShape
from autoscaler.engine.ledger import Ledger
from autoscaler.store import FencedError, Store
from autoscaler.tensordock import (
    BadRequestError,
    CapacityUnavailableError,
    CreateInstanceRequest,
    MalformedResponseError,
    NotFoundError,
    PortForward,
    RequestTimeoutError,
    ServerError,
    TensorDockError,
)
from autoscaler.tensordock.client import TensorDockClient

_log = structlog.get_logger("autoscaler.actuator")


class InstanceTemplate(BaseModel):
    """What every instance of the fleet is created with, apart from its GPUs and place."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    image: str = "ubuntu2404"
    ssh_key: str | None = Field(default=None, min_length=1, description="public key put on every instance")
    ssh_key_id: str | None = Field(default=None, min_length=1, description="or: a key uploaded to TensorDock")
    ssh_port: int = Field(default=22, ge=1, le=65535, description="external port for 22 where no host lists ports")
    use_dedicated_ip: bool = Field(default=False, description="ask for a public IP of its own where the offer has one")
    cloud_init: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_key(self) -> InstanceTemplate:
        if (self.ssh_key is None) == (self.ssh_key_id is None):
            raise ValueError("give exactly one of ssh_key or ssh_key_id")
        return self


@dataclass(frozen=True)
class ActionResult:
    action: Action
    outcome: str  # ok | failed | unknown | dry_run | skipped
    instance_id: str | None = None
    name: str | None = None
    offer_key: str | None = None
    error: str | None = None


ALREADY_GONE = "already gone"  # a delete answered "not found": done, but by someone else, who may hold its GPUs
NAME_PLACEHOLDER = "${TDAS_INSTANCE_NAME}"
GPUS_PLACEHOLDER = "${TDAS_INSTANCE_GPUS}"


def _with_name(value: Any, name: str, gpus: int | None = None) -> Any:
    """Put the instance's own name into its cloud-init, so the worker can report itself by name, and
    its GPU count, so the worker can take only jobs of its width class (README: the width convention)."""
    if isinstance(value, str):
        value = value.replace(NAME_PLACEHOLDER, name)
        return value.replace(GPUS_PLACEHOLDER, str(gpus)) if gpus is not None else value
    if isinstance(value, list):
        return [_with_name(item, name, gpus) for item in value]
    if isinstance(value, dict):
        return {key: _with_name(item, name, gpus) for key, item in value.items()}
    return value


def default_names(prefix: str, rng: random.Random | None = None) -> Callable[[], str]:
    """Random suffixes; a seeded `rng` makes them repeatable (the simulator's replays)."""
    if rng is not None:
        return lambda: f"{prefix}-{rng.getrandbits(40):010x}"
    return lambda: f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class OfferBackoff:
    """How long an offer that refused a create is skipped: `base_s`, doubled for each refusal in a
    row, up to `max_s`; a create it accepts forgets its refusals. A stale listing's one-off refusal
    (a noisy marketplace's common case) costs a minute; an offer that keeps refusing is left alone
    for the longest. The count lives in the process: a restart starts again from `base_s` (the
    store still holds each back-off's end)."""

    base_s: float = 60.0
    max_s: float = 900.0
    _refusals: dict[str, int] = field(default_factory=dict)

    def refused(self, offer_key: str) -> float:
        """Seconds to skip the offer after this refusal."""
        count = self._refusals.get(offer_key, 0) + 1
        self._refusals[offer_key] = count
        return min(self.max_s, self.base_s * 2.0 ** min(count - 1, 30))

    def accepted(self, offer_key: str) -> None:
        self._refusals.pop(offer_key, None)


def _room_unmade(room: str, results: Sequence[ActionResult]) -> bool:
    """A create placed in room its deletes make goes only if they all went: on a host still full it
    would be refused, and that refusal would back off the host's offer."""
    return any(r.action.room == room and r.outcome != "ok" for r in results)


class Actuator:
    def __init__(
        self,
        client: TensorDockClient,
        store: Store,
        clock: Clock,
        *,
        template: InstanceTemplate,
        shape: InstanceShape,
        name_prefix: str,
        dry_run: bool = False,
        offer_backoff: OfferBackoff | None = None,
        name_factory: Callable[[], str] | None = None,
        stopping: threading.Event | None = None,
    ) -> None:
        self.client = client
        self.store = store
        self.ledger = Ledger(store)
        self.clock = clock
        self.template = template
        self.shape = shape
        self.dry_run = dry_run
        self.offer_backoff = offer_backoff or OfferBackoff()
        self.new_name = name_factory or default_names(name_prefix)
        self.stopping = stopping or threading.Event()

    def execute(self, cycle_id: str, actions: Sequence[Action]) -> list[ActionResult]:
        results: list[ActionResult] = []
        fenced: str | None = None
        for action in actions:
            if self.stopping.is_set():  # SIGTERM: the call in flight finished and was recorded; no new one
                results.append(ActionResult(action, "skipped", error="shutting down"))
                continue
            if fenced is not None:
                results.append(ActionResult(action, "fenced", action.instance_id, error=fenced))
                continue
            if self.dry_run:
                results.append(ActionResult(action, "dry_run", action.instance_id))
                continue
            if action.kind is ActionKind.CREATE and action.room and _room_unmade(action.room, results):
                results.append(ActionResult(action, "skipped", error="a delete that was to make its room failed"))
                continue
            try:
                if action.kind is ActionKind.CREATE:
                    results.append(self._create(cycle_id, action))
                    if action.replacement is not None:
                        self._follow(action.replacement, results[-1])
                else:
                    results.append(self._change(cycle_id, action))
            except FencedError as exc:  # another replica leads now: no intent was written, no call made
                fenced = str(exc)
                _log.warning("fenced", cycle=cycle_id, reason=fenced)
                results.append(ActionResult(action, "fenced", action.instance_id, error=fenced))
        return results

    def _placement(self, offer: Offer, taken: set[int]) -> tuple[bool, tuple[PortForward, ...]] | None:
        """A dedicated IP where the offer has one and it is allowed; else SSH forwarded from a port the
        host lists as free and no instance of ours holds there. None: this host has no port left."""
        if self.template.use_dedicated_ip and offer.dedicated_ip:
            return True, ()
        if offer.hostnode_id is None or not offer.available_ports:
            return False, (PortForward(internal_port=22, external_port=self.template.ssh_port),)
        free = [p for p in offer.available_ports if p not in taken]
        if not free:
            return None
        return False, (PortForward(internal_port=22, external_port=free[0]),)

    def _ports_held(self, hostnode_id: str | None) -> set[int]:
        """Ports our instances hold on a host, and those of creates whose outcome is not known yet."""
        if hostnode_id is None:
            return set()
        shapes = [r.shape for r in self.store.owned().values()] + [e.shape for e in self.store.unresolved_creates()]
        on_host = [shape for shape in shapes if shape is not None and shape.hostnode_id == hostnode_id]
        return {port for shape in on_host for port in shape.ports}

    def _request(
        self, name: str, offer: Offer, gpus: int, dedicated_ip: bool, forwards: tuple[PortForward, ...]
    ) -> CreateInstanceRequest:
        t = self.template
        return CreateInstanceRequest(
            name=name,
            image=t.image,
            gpu_model=offer.gpu_model,
            gpu_count=gpus,
            vcpu_count=self.shape.vcpu_per_gpu * gpus,
            ram_gb=self.shape.ram_gb_per_gpu * gpus,
            storage_gb=self.shape.storage_gb,
            location_id=None if offer.hostnode_id else offer.location_id,
            hostnode_id=offer.hostnode_id,
            use_dedicated_ip=dedicated_ip,
            ssh_key=t.ssh_key,
            ssh_key_id=t.ssh_key_id,
            port_forwards=forwards,
            cloud_init=_with_name(t.cloud_init, name, gpus) if t.cloud_init is not None else None,
        )

    def _create(self, cycle_id: str, action: Action) -> ActionResult:
        name = self.new_name()
        last_error = "no offer"
        assert action.offer is not None
        for offer in (action.offer, *action.alternatives):
            placement = self._placement(offer, self._ports_held(offer.hostnode_id))
            if placement is None:
                last_error = "no free external port on the host"
                continue
            dedicated_ip, forwards = placement
            request = self._request(name, offer, action.gpus, dedicated_ip, forwards)
            price = offer.hourly_price(self.shape, action.gpus)
            shape = OwnedShape(
                gpu_model=offer.gpu_model,
                gpus=action.gpus,
                vcpus=request.vcpu_count,
                ram_gb=request.ram_gb,
                storage_gb=request.storage_gb,
                location_id=offer.location_id,
                hostnode_id=offer.hostnode_id,
                ports=tuple(pf.external_port for pf in forwards) if offer.hostnode_id else (),
            )
            entry = self.store.journal_intent(
                cycle_id,
                self.clock.now(),
                "create",
                name=name,
                offer_key=offer.key,
                gpus=action.gpus,
                hourly_price=price,
                replaces=action.replacement.old_id if action.replacement else None,
                reason=action.reason,
                shape=shape,
            )
            try:
                created = self.client.create_instance(request)
            except FencedError as exc:  # the leader's check before the attempt refused it: nothing was sent
                self.store.journal_outcome(entry, "failed", self.clock.now(), error=str(exc))
                raise
            except (CapacityUnavailableError, BadRequestError) as exc:
                # Capacity gone, a port taken, a shape over this host's limits: this offer, not the plan.
                now = self.clock.now()
                self.store.journal_outcome(entry, "failed", now, error=exc.message)
                self.store.back_off(offer.key, now + self.offer_backoff.refused(offer.key), exc.message)
                last_error = exc.message
                _log.info("offer_backed_off", cycle=cycle_id, offer=offer.key, reason=exc.message)
                continue
            except (RequestTimeoutError, ServerError, MalformedResponseError) as exc:
                # It may exist: the next cycle looks the name up before anything is retried.
                self.store.journal_outcome(entry, "unknown", self.clock.now(), error=str(exc))
                return ActionResult(action, "unknown", name=name, offer_key=offer.key, error=str(exc))
            except TensorDockError as exc:
                self.store.journal_outcome(entry, "failed", self.clock.now(), error=str(exc))
                return ActionResult(action, "failed", name=name, offer_key=offer.key, error=str(exc))
            if created.name != name:
                # A reply about another instance (a proxy's or the API's mix-up), or one that names
                # none (every documented reply names it): ours may exist under our name, so it is an
                # unknown outcome the next cycle looks up by name; never adopt the id (rule 1).
                error = f"create reply names {created.name!r} (id {created.id}), not {name!r}"
                self.store.journal_outcome(entry, "unknown", self.clock.now(), error=error)
                _log.warning("create_reply_mismatch", cycle=cycle_id, name=name, replied=created.name)
                return ActionResult(action, "unknown", name=name, offer_key=offer.key, error=error)
            now = self.clock.now()
            self.offer_backoff.accepted(offer.key)
            self.store.journal_outcome(entry, "ok", now, instance_id=created.id)
            storage_rate = offer.pricing.storage_price(self.shape.storage_gb)
            self.store.adopt(created.id, name, now, offer.key, storage_rate, shape=shape, expected_rate=price)
            self.ledger.opened(created.id, price, now)
            return ActionResult(action, "ok", created.id, name, offer.key)
        return ActionResult(action, "failed", name=name, error=f"every offer refused: {last_error}")

    def _follow(self, planned: Replacement, result: ActionResult) -> None:
        """A consolidation's create is done: its outcome moves the replacement on (links it if made)."""
        event: Created | Lost | Refused = Refused()
        if result.outcome == "ok" and result.name:
            event = Created(result.name)
        elif result.outcome == "unknown" and result.name:
            event = Lost(result.name)
        replacement, effect = step(planned, event)
        if effect.writes_link:
            self.store.mark_retiring(replacement.old_id, replacement.link)

    def _change(self, cycle_id: str, action: Action) -> ActionResult:
        instance_id = action.instance_id
        assert instance_id is not None
        if action.rate_after is not None:  # charged from the call on, even if we die during it: over, never under
            self.ledger.changing(instance_id, action.rate_after, self.clock.now())
        entry = self.store.journal_intent(
            cycle_id,
            self.clock.now(),
            action.kind.value,
            instance_id=instance_id,
            gpus=action.gpus,
            reason=action.reason,
        )
        try:
            if action.kind is ActionKind.START:
                self.client.start_instance(instance_id)
            elif action.kind is ActionKind.STOP:
                self.client.stop_instance(instance_id)
            else:
                self.client.delete_instance(instance_id)
        except FencedError as exc:  # the leader's check before the attempt refused it: nothing was sent
            self.store.journal_outcome(entry, "failed", self.clock.now(), error=str(exc))
            raise
        except NotFoundError as exc:
            now = self.clock.now()
            if action.kind is ActionKind.DELETE:  # already gone: what we wanted
                self._gone(instance_id, now)
                self.store.journal_outcome(entry, "ok", now, error=ALREADY_GONE)
                return ActionResult(action, "ok", instance_id, error=ALREADY_GONE)
            self.store.journal_outcome(entry, "failed", now, error=str(exc))
            return ActionResult(action, "failed", instance_id, error=str(exc))
        except CapacityUnavailableError as exc:
            now = self.clock.now()
            if action.kind is ActionKind.START:
                self.store.mark_start_refused(instance_id, now)
            self.store.journal_outcome(entry, "failed", now, error=exc.message)
            return ActionResult(action, "failed", instance_id, error=exc.message)
        except (RequestTimeoutError, ServerError, MalformedResponseError) as exc:
            self.store.journal_outcome(entry, "unknown", self.clock.now(), error=str(exc))
            return ActionResult(action, "unknown", instance_id, error=str(exc))
        except (BadRequestError, TensorDockError) as exc:
            self.store.journal_outcome(entry, "failed", self.clock.now(), error=str(exc))
            return ActionResult(action, "failed", instance_id, error=str(exc))
        now = self.clock.now()
        if action.kind is ActionKind.DELETE:
            self._gone(instance_id, now)
        self.store.journal_outcome(entry, "ok", now)
        return ActionResult(action, "ok", instance_id)

    def _gone(self, instance_id: str, now: float) -> None:
        self.ledger.closed(instance_id, now)
        self.store.forget(instance_id)
