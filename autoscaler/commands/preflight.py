"""What `check-config` checks beyond the settings' own types: files, credentials and, with --connect, the world.

Each problem is one line naming its field, so the operator fixes them all in one pass. Warnings
do not fail the check: a token file that only exists inside the systemd unit, or one every local
user can read.
"""

from __future__ import annotations

import difflib
import stat
import time
from dataclasses import dataclass, field

from autoscaler.config import ConfigError, Settings
from autoscaler.core.throughput import DEFAULT_THROUGHPUT

# systemd hands LoadCredential= files over under this directory, inside the unit only
_CREDENTIALS_DIR = "/run/credentials/"


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _token(settings: Settings, offline: bool, found: Findings) -> None:
    td = settings.tensordock
    if td.token is not None and td.token.get_secret_value():
        return
    path = td.token_file
    if path is None and offline:
        found.warnings.append("tensordock.token: not set here; not checked (--offline): the unit must provide it")
        return
    if path is None:
        found.problems.append(
            "tensordock.token: no API token; set TDAS_TENSORDOCK__TOKEN, tensordock.token or tensordock.token_file"
        )
        return
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        inside_unit = str(path).startswith(_CREDENTIALS_DIR) or "%d" in str(path)
        if offline or inside_unit:
            found.warnings.append(
                f"tensordock.token_file: {path} does not exist here; fine if it only exists inside the unit"
                " (systemd credential), checked when the daemon starts"
            )
        else:
            found.problems.append(f"tensordock.token_file: {path} does not exist")
        return
    except OSError as exc:
        if offline:
            found.warnings.append(f"tensordock.token_file: {path} not readable here ({exc.strerror}); not checked")
        else:
            found.problems.append(f"tensordock.token_file: cannot read {path}: {exc.strerror}")
        return
    if mode & stat.S_IROTH:
        found.warnings.append(
            f"tensordock.token_file: {path} is readable by every local user (mode {stat.S_IMODE(mode):04o});"
            f" chmod 600 {path}"
        )
    if offline:
        return
    try:
        td.resolved_token()
    except ValueError as exc:
        found.problems.append(str(exc))


def _cloud_init(settings: Settings, found: Findings) -> None:
    from autoscaler.service.runtime import _cloud_init

    try:
        _cloud_init(settings.fleet.cloud_init_file)
    except ConfigError as exc:
        found.problems.append(str(exc))
    except ValueError as exc:  # YAML or JSON syntax
        found.problems.append(f"fleet.cloud_init_file: {settings.fleet.cloud_init_file}: not YAML/JSON: {exc}")


def check(settings: Settings, *, offline: bool = False) -> Findings:
    """Everything that can be known without a network call."""
    found = Findings()
    _token(settings, offline, found)
    if not settings.fleet.ssh_key:
        found.problems.append("fleet.ssh_key: required; TensorDock refuses instances without an SSH public key")
    _cloud_init(settings, found)
    _fleet_names_and_steps(settings, found)
    if not offline:
        _sources_build(settings, found)
    return found


def _fleet_names_and_steps(settings: Settings, found: Findings) -> None:
    """Warnings, not refusals: TensorDock adds models the default table does not know yet."""
    fleet = settings.fleet
    known = sorted(DEFAULT_THROUGHPUT)
    for key, names in (("fleet.allowed_gpu_models", fleet.allowed_gpu_models), ("fleet.throughput", fleet.throughput)):
        for name in names:
            if name not in DEFAULT_THROUGHPUT:
                close = difflib.get_close_matches(name, known, n=1, cutoff=0.3)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
                found.warnings.append(f"{key}: {name!r} is not a GPU model TensorDock is known to list{hint}")
    if fleet.allowed_gpu_models and not set(fleet.allowed_gpu_models) & set(DEFAULT_THROUGHPUT):
        found.warnings.append(
            "fleet.allowed_gpu_models: no known model is allowed; unless TensorDock lists one, nothing is bought"
        )
    if fleet.vcpu_per_gpu % 2:
        found.warnings.append(
            f"fleet.vcpu_per_gpu: {fleet.vcpu_per_gpu} is odd; TensorDock takes vCPUs in steps of 2 (2, 4, 6 ...)"
        )


def _sources_build(settings: Settings, found: Findings) -> None:
    """Build the sources without reading them: what `run` would refuse at start (a URL its client
    library cannot parse, a credential's unset environment variable) is refused here too."""
    from autoscaler.signals import SignalError
    from autoscaler.signals.registry import SignalConfigError, build_signal

    try:
        build_signal(settings.signal).close()
    except (SignalConfigError, SignalError) as exc:
        found.problems.extend(line for line in str(exc).splitlines() if line.strip())


def connect(settings: Settings, found: Findings) -> None:
    """Try the store, the API and every demand source once; each failure is one line naming its field."""
    from autoscaler.service.runtime import open_configured_store
    from autoscaler.signals.registry import SignalSettings, build_signal
    from autoscaler.tensordock import AuthenticationError, TensorDockError
    from autoscaler.tensordock.client import TensorDockClient

    try:
        open_configured_store(settings.store.url).close()
    except ConfigError as exc:
        found.problems.append(str(exc))
    td = settings.tensordock
    try:
        token = td.resolved_token()
    except ValueError:
        token = None  # already reported
    if token is not None:
        try:
            with TensorDockClient(
                td.base_url,
                token,
                td.wire_format,
                connect_timeout_s=td.connect_timeout_s,
                read_timeout_s=td.read_timeout_s,
                max_attempts=1,
            ) as client:
                client.list_instances()
        except AuthenticationError as exc:  # the address answered; the token is what to fix
            field = "tensordock.token_file" if td.token_file is not None else "tensordock.token"
            found.problems.append(f"{field}: TensorDock at {td.base_url} refused the token: {exc}")
        except TensorDockError as exc:
            found.problems.append(f"tensordock.base_url: {td.base_url}: {exc}")
    for index, spec in enumerate(settings.signal.sources):
        label = f"signal.sources[{index}] ({spec.name or spec.kind})"
        if any(p.startswith(f"signal.sources[{index}] ") for p in found.problems):
            continue  # already refused when it was built
        try:
            source = build_signal(SignalSettings(sources=[spec]))
            try:
                source.read(time.time())
            finally:
                source.close()
        except Exception as exc:  # a source's failure, whatever it is, is reported, not raised
            found.problems.append(f"{label}: {str(exc).strip() or type(exc).__name__}")
