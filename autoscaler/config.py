"""Typed settings: a TOML file and `TDAS_` environment variables (`__` nests), via pydantic-settings.

Environment variables win over the file, so a container can keep the file generic and pass
the token as `TDAS_TENSORDOCK__TOKEN` (or a `token_file` for systemd credentials and secrets).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from autoscaler.core.durations import Seconds
from autoscaler.core.guards import GuardConfig
from autoscaler.core.policy import PolicySpec
from autoscaler.core.snapshot import InstanceShape
from autoscaler.core.throughput import DEFAULT_THROUGHPUT
from autoscaler.engine.cycle import NAME_PREFIX_PATTERN, EngineSettings
from autoscaler.engine.reconcile import DetailConfig
from autoscaler.signals.registry import SignalSettings


class _Section(BaseModel):
    """Unknown keys are errors; `inf` and `nan` are never a valid number of seconds, dollars or GPUs."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class TensorDockSettings(_Section):
    base_url: str = Field(default="https://dashboard.tensordock.com/api/v2", description="API root")
    token: SecretStr | None = Field(default=None, description="API token; prefer token_file or the environment")
    token_file: Path | None = Field(default=None, description="file holding the token (systemd credential, secret)")
    wire_format: Literal["documented", "observed", "spec"] = Field(
        default="documented",
        description="shape of create/modify bodies: documented (as TensorDock's pages show), observed or spec",
    )
    rate_limit: int = Field(default=100, ge=2, description="requests per rate_window_s, shared by every call")
    rate_window_s: Seconds = Field(default=60.0, gt=0, description="rate-limit window, seconds")
    connect_timeout_s: Seconds = Field(default=5.0, gt=0, description="seconds to connect")
    read_timeout_s: Seconds = Field(default=30.0, gt=0, description="seconds to wait for a reply")
    create_timeout_s: Seconds = Field(
        default=120.0,
        gt=0,
        description="seconds to wait for a create's reply (creates are slow; an unknown outcome is looked up by"
        " name, never retried blind)",
    )
    max_attempts: int = Field(default=4, ge=1, description="tries per call, retries only where safe")
    backoff_initial_s: Seconds = Field(default=2.0, ge=0, description="first back-off; doubles, jittered")

    @property
    def longest_call_s(self) -> float:
        """The longest one call may take on the wire: a create, or any call's deadline."""
        return max(self.call_deadline_s, self.create_timeout_s) + self.connect_timeout_s

    @field_validator("base_url")
    @classmethod
    def _an_http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http(s) URL, e.g. https://dashboard.tensordock.com/api/v2")
        return value

    # Every wait is bounded (DESIGN rule 14).
    call_deadline_s: Seconds = Field(
        default=60.0,
        gt=0,
        allow_inf_nan=False,
        description="seconds one call may take in all, retries and waits included",
    )
    retry_after_max_s: Seconds = Field(
        default=300.0, gt=0, allow_inf_nan=False, description="a 429's Retry-After is waited at most this long, seconds"
    )
    max_reply_bytes: int = Field(
        default=8 * 1024 * 1024, ge=1024, description="a longer reply is a failed call (read streamed), bytes"
    )

    def resolved_token(self) -> SecretStr:
        if self.token is not None and self.token.get_secret_value():
            return self.token
        if self.token_file is not None:
            try:
                text = self.token_file.read_text().strip()
            except OSError as exc:
                raise ValueError(f"tensordock.token_file: cannot read {self.token_file}: {exc.strerror}") from None
            if text:
                return SecretStr(text)
            raise ValueError(f"tensordock.token_file: {self.token_file} is empty; write the API token into it")
        raise ValueError(
            "tensordock.token: no API token; set TDAS_TENSORDOCK__TOKEN, tensordock.token or tensordock.token_file"
        )


MAX_THROUGHPUT = 100.0  # relative to the reference GPU: no model is a hundred A100s


class FleetSettings(_Section):
    name_prefix: str = Field(
        default="tdas",
        pattern=NAME_PREFIX_PATTERN,
        description="names are <prefix>-<suffix>; only such instances are ever touched",
    )
    image: str = Field(default="ubuntu2404", description="OS image of every instance")
    ssh_key: str = Field(default="", description="public key installed on every instance")
    ssh_key_id: str = Field(default="", description="or: id of a key uploaded to TensorDock (exactly one of the two)")
    ssh_port: int = Field(
        default=22, ge=1, le=65535, description="external port forwarded to 22 where the host lists no free ports"
    )
    use_dedicated_ip: bool = Field(
        default=False, description="ask for a public IP of its own where the offer has one (no port forwards)"
    )
    cloud_init_file: Path | None = Field(default=None, description="cloud-init YAML/JSON mapping for workers")
    storage_gb: int = Field(default=100, ge=100, description="disk per instance, GB (TensorDock minimum 100)")
    vcpu_per_gpu: int = Field(default=8, ge=1, description="vCPUs per GPU of an instance")
    ram_gb_per_gpu: int = Field(default=32, ge=1, description="RAM per GPU of an instance, GB")
    throughput: dict[str, float] = Field(default_factory=dict, description="overrides of the default table")
    allowed_gpu_models: list[str] = Field(
        default_factory=list, description="GPU models the fleet may ever create; empty: any (no policy can widen it)"
    )

    @model_validator(mode="after")
    def _one_key(self) -> FleetSettings:
        if self.ssh_key and self.ssh_key_id:
            raise ValueError("give fleet.ssh_key or fleet.ssh_key_id, not both")
        return self

    @field_validator("throughput")
    @classmethod
    def _speeds(cls, table: dict[str, float]) -> dict[str, float]:
        """A negative or unbounded speed would rank a model cheapest for no work at all."""
        for model, speed in table.items():
            if not 0 <= speed <= MAX_THROUGHPUT:
                raise ValueError(
                    f"{model} = {speed:g}: a speed is from 0 (never bought) to {MAX_THROUGHPUT:g},"
                    " relative to an A100 SXM4 80GB = 1.0"
                )
        return table

    @property
    def shape(self) -> InstanceShape:
        return InstanceShape(self.vcpu_per_gpu, self.ram_gb_per_gpu, self.storage_gb)

    @property
    def throughput_table(self) -> dict[str, float]:
        return {**DEFAULT_THROUGHPUT, **self.throughput}


class StoreSettings(_Section):
    url: str = Field(
        default="sqlite:////var/lib/tensordock-autoscaler/state.db",
        description="sqlite:////ABSOLUTE/PATH, or postgresql://user:pw@host/db?schema=NAME (state shared by replicas)",
    )

    @field_validator("url")
    @classmethod
    def _known_scheme_absolute_path(cls, value: str) -> str:
        if value.startswith(("postgresql://", "postgres://")):
            return value
        if not value.startswith("sqlite:///"):
            scheme = value.partition("://")[0] if "://" in value else "a bare path"
            raise ValueError(f"unsupported store ({scheme}); use sqlite:////ABSOLUTE/PATH or postgresql://...")
        path = Path(value.removeprefix("sqlite:///"))
        if not path.is_absolute():
            raise ValueError(
                f"the SQLite path {str(path)!r} is relative (it would depend on the working directory);"
                f" give an absolute one: sqlite:////{path}"
            )
        for parent in path.parents:
            if parent.exists():
                if not parent.is_dir():
                    raise ValueError(f"{path} cannot be created: {parent} is a file, not a directory")
                break
        if path.is_dir():
            raise ValueError(f"{path} is a directory; name the database file inside it")
        return value


class SchedulerSettings(_Section):
    interval_s: Seconds = Field(default=30.0, ge=1, description="seconds between cycles")
    jitter_s: Seconds = Field(default=2.0, ge=0, description="random delay added to each cycle, seconds")
    shutdown_timeout_s: Seconds = Field(default=60.0, gt=0, description="SIGTERM waits this long for the cycle")
    cycle_stall_s: Seconds = Field(
        default=900.0,
        gt=0,
        description="a cycle that sends no API call for this long is wedged: the systemd watchdog is no longer pinged",
    )
    transition_poll_s: Seconds = Field(
        default=5.0,
        ge=0,
        description="while a stop settles, list the fleet this often so the ledger sees it end; 0: off",
    )

    watch_s: Seconds = Field(
        default=1.0,
        ge=0,
        description="between cycles, read the demand this often; new work in the queue runs the next cycle now; 0: off",
    )

    @model_validator(mode="after")
    def _poll_between_cycles(self) -> SchedulerSettings:
        for key, what in (("transition_poll_s", "following transitions"), ("watch_s", "watching the queue")):
            value = getattr(self, key)
            if key in self.model_fields_set and value >= self.interval_s:
                raise ValueError(
                    f"{key} ({value:g}) must be shorter than interval_s ({self.interval_s:g}), or 0 to turn {what} off"
                )
        return self

    @property
    def follows_transitions(self) -> bool:
        """The default poll is simply not used when cycles come as often; an explicit one was refused."""
        return between_cycles(self.transition_poll_s, self.interval_s) > 0

    @property
    def watches_queue(self) -> bool:
        """As with the transition poll: a default watch no shorter than the interval is simply not used."""
        return between_cycles(self.watch_s, self.interval_s) > 0


def between_cycles(period_s: float, interval_s: float) -> float:
    """A job's period between cycles, or 0 when it is off (0) or would come no sooner than a cycle."""
    return period_s if 0 < period_s < interval_s else 0.0


class MetricsSettings(_Section):
    host: str = Field(default="127.0.0.1", description="listen address of /metrics, /healthz, /readyz")
    port: int = Field(default=9464, ge=0, le=65535, description="0 picks a free port")


class LogSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(default="INFO", description="log level")
    json_lines: bool | None = Field(default=None, description="JSON lines; default: JSON unless on a terminal")


DEFAULT_POLICIES = [
    PolicySpec(name="queue_target"),
    PolicySpec(name="schedule"),
    PolicySpec(name="cheapest_throughput"),
    PolicySpec(name="idle"),
    PolicySpec(name="consolidate"),
    PolicySpec(name="budget"),
]


class Settings(BaseSettings, EngineSettings):
    """The whole configuration. Build with `load_settings(path)`. The engine's top-level keys
    (`provision_timeout_s`, `max_signal_age_s`, ...) are defined once, in `engine.EngineSettings`."""

    model_config = SettingsConfigDict(
        env_prefix="TDAS_", env_nested_delimiter="__", extra="forbid", allow_inf_nan=False
    )
    _toml_path: ClassVar[Path | None] = None

    tensordock: TensorDockSettings = TensorDockSettings()
    fleet: FleetSettings = FleetSettings()
    guards: GuardConfig = GuardConfig()
    signal: SignalSettings = SignalSettings()
    policies: list[PolicySpec] = Field(
        default_factory=lambda: list(DEFAULT_POLICIES), description="the policy chain, in order, with options"
    )
    store: StoreSettings = StoreSettings()
    scheduler: SchedulerSettings = SchedulerSettings()
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()
    dry_run: bool = Field(default=False, description="plan, log and export metrics; never mutate")
    offer_backoff_s: Seconds = Field(
        default=60.0,
        ge=0,
        description="seconds an offer that refused a create (capacity gone, a port taken, over the host's limits)"
        " is not tried again; doubled for each refusal in a row, up to offer_backoff_max_s",
    )
    offer_backoff_max_s: Seconds = Field(
        default=900.0, ge=0, description="the longest an offer that keeps refusing creates is skipped"
    )
    leader_election: bool = Field(
        default=True, description="with a PostgreSQL store: one replica acts, the others stand by"
    )
    leader_lease_s: Seconds | None = Field(
        default=None,
        gt=0,
        allow_inf_nan=False,
        description="seconds a leader's lease lasts unrenewed; a frozen leader is replaced after it lapses."
        " Default: 3 x (scheduler.interval_s + jitter_s), and at least the longest call (a create's"
        " tensordock.create_timeout_s) plus a cycle",
    )
    detail: DetailConfig = DetailConfig()

    @property
    def lease_s(self) -> float:
        """The leader's lease: long enough that a cycle or two late does not lose it."""
        if self.leader_lease_s is not None:
            return self.leader_lease_s
        s = self.scheduler
        return max(10.0, 3 * (s.interval_s + s.jitter_s), self.tensordock.longest_call_s + s.interval_s + s.jitter_s)

    @field_validator("leader_lease_s")
    @classmethod
    def _lease_outlasts_a_cycle(cls, value: float | None, info: ValidationInfo) -> float | None:
        s = info.data.get("scheduler")
        if value is not None and isinstance(s, SchedulerSettings) and value <= s.interval_s + s.jitter_s:
            raise ValueError(
                f"{value:g} is not longer than scheduler.interval_s + jitter_s ({s.interval_s + s.jitter_s:g});"
                " the leader renews its lease once a cycle"
            )
        api = info.data.get("tensordock")
        if value is not None and isinstance(api, TensorDockSettings) and value <= api.longest_call_s:
            raise ValueError(
                f"{value:g} is not longer than the longest call ({api.longest_call_s:g}s, tensordock.create_timeout_s"
                " or call_deadline_s): the lease would lapse during a slow create and leadership change hands"
            )
        return value

    @model_validator(mode="after")
    def _backoff_grows(self) -> Settings:
        if self.offer_backoff_max_s < self.offer_backoff_s:
            raise ValueError(
                f"offer_backoff_max_s ({self.offer_backoff_max_s:g}) is shorter than offer_backoff_s"
                f" ({self.offer_backoff_s:g}); raise it to at least offer_backoff_s"
            )
        return self

    @model_validator(mode="after")
    def _one_hourly_cap(self) -> Settings:
        """`guards.max_hourly_spend` is the one hourly cap. The budget policy's old option of that name
        is a deprecated alias: it fills the cap in when the guards leave it unset, and must agree
        with it otherwise."""
        for index, spec in enumerate(self.policies):
            given = spec.options.get("max_hourly_spend") if spec.name == "budget" else None
            if given is None:
                continue
            alias, key = float(given), f"policies[{index}].options.max_hourly_spend"
            cap = self.guards.max_hourly_spend
            if cap is None:
                self.guards = self.guards.model_copy(update={"max_hourly_spend": alias})
                warnings.warn(f"{key} is deprecated; set guards.max_hourly_spend", FutureWarning, stacklevel=2)
            elif alias != cap:
                raise ValueError(
                    f"{key} ({alias:g}) disagrees with guards.max_hourly_spend ({cap:g}): the hourly cap is one"
                    " value; set only guards.max_hourly_spend"
                )
        return self

    @field_validator("signal")
    @classmethod
    def _signal_options_valid(cls, value: SignalSettings) -> SignalSettings:
        """A field validator, so its errors come in the same pass as every other field's."""
        from autoscaler.signals.registry import validate_signal_settings

        validate_signal_settings(value)  # raises ValueError naming signal.sources[i].options.field
        return value

    @field_validator("policies")
    @classmethod
    def _policy_options_valid(cls, value: list[PolicySpec]) -> list[PolicySpec]:
        from autoscaler.core.policy import build_chain

        build_chain(value)  # raises ValueError naming policies[i].options.field
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_path))
        return tuple(sources)


class ConfigError(ValueError):
    """Every problem in the configuration, each naming its field and the fix."""


def load_settings(path: str | Path | None = None, **overrides: Any) -> Settings:
    if path is not None:
        try:
            with open(path, "rb"):
                pass
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except IsADirectoryError:
            raise ConfigError(f"config file {path} is a directory") from None
        except OSError as exc:  # a directory on the way this user may not enter, or the file itself
            raise ConfigError(
                f"config file {path}: cannot read it as uid {os.getuid()}: {exc.strerror}"
                " (the unit's DynamicUser needs the directory and file readable; see README)"
            ) from None

    class _FromFile(Settings):
        _toml_path: ClassVar[Path | None] = Path(path) if path is not None else None

    misspelt = misspelt_environment(os.environ)
    try:
        loaded = _FromFile(**overrides)
    except ValidationError as exc:
        raise ConfigError("\n".join(misspelt + readable_errors(exc))) from None
    except ValueError as exc:  # TOML syntax
        raise ConfigError(f"{path}: {exc}") from None
    if misspelt:
        raise ConfigError("\n".join(misspelt))
    register_config_secrets(loaded)
    return loaded


def misspelt_environment(environ: Mapping[str, str]) -> list[str]:
    """One line per `TDAS_` variable that looks like a setting misspelt (`TDAS_DRYRUN`,
    `TDAS_GUARD__MAX_GPUS`): pydantic-settings reads only the names it knows, so an operator who
    believes dry_run is on would otherwise get a live daemon. Other `TDAS_` names (a source's
    credential, say `TDAS_REDIS_URL`) are none of the settings' business."""
    known = {name.lower(): name for name in Settings.model_fields}
    squeezed = {name.replace("_", ""): name for name in known}
    sections = {  # a section's own setting names: `TDAS_STORE_URL` is store.url misspelt, `TDAS_STORE_X` no one's
        name: set(type(field.default).model_fields)
        for name, field in Settings.model_fields.items()
        if isinstance(field.default, BaseModel)
    }
    lines = []
    for variable in sorted(environ):
        if not variable.upper().startswith("TDAS_"):
            continue
        head, _, rest = variable[len("TDAS_") :].lower().partition("__")
        if head in known:
            continue
        match = squeezed.get(head.replace("_", "")) or next(iter(difflib.get_close_matches(head, known, 1, 0.8)), None)
        section = next(
            (name for name, fields in sections.items() if not rest and head.removeprefix(f"{name}_") in fields), None
        )
        if match is None and section is not None:  # one underscore where the level needs two
            match, rest = section, head[len(section) + 1 :]
        if match is not None:
            fix = "TDAS_" + "__".join(part for part in (match, rest) if part).upper()
            lines.append(f"environment: {variable} is not a setting; did you mean {fix}? (rename or unset it)")
    return lines


def _path(loc: tuple[int | str, ...]) -> str:
    """('signal', 'sources', 0, 'kind') -> 'signal.sources[0].kind'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def readable_errors(exc: ValidationError) -> list[str]:
    """One line per problem, each starting with the field it is about (never a bare ': Value error')."""
    lines: list[str] = []
    for error in exc.errors():
        where = _path(tuple(error["loc"]))
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "finite_number":
            message = "must be a finite number (inf and nan are not allowed)"
        for part in message.split("\n"):
            # nested validators (signal sources, policies) already name their field
            named = part.startswith((f"{where}.", f"{where}[", f"{where}:", f"{where} ")) if where else True
            lines.append(part if named or not where else f"{where}: {part}")
    return lines


def register_config_secrets(settings: Settings) -> None:
    """Every credential of the configuration is masked from here on: token, store password, sources'."""
    from autoscaler.common.secrets import register_secret, register_settings_secrets
    from autoscaler.signals.registry import validate_signal_settings

    with contextlib.suppress(ValueError):  # no token yet: check-config and run report that themselves
        register_secret(settings.tensordock.resolved_token().get_secret_value())
    options = [checked for _, checked, _ in validate_signal_settings(settings.signal)]
    register_settings_secrets(settings, options)
