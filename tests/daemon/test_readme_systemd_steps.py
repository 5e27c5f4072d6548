"""The README's systemd steps, run as written in their order under a temporary root.

Paths under /etc and /opt are moved under the root; the venv and pip lines are this checkout's own
venv (installing it again adds minutes and proves nothing about the steps); the credential is
encrypted with the null key (a test must not create the host's key); systemctl needs a booted
systemd and is not run (the unit itself is checked by `systemd-analyze verify` elsewhere). Then
the unit's DynamicUser is played by an unprivileged uid: it must be able to read the config. The
command runs in a Python that drops to that uid once its modules are loaded, because this
machine's interpreter lives where no other user may read.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..conftest import REPO

UNPRIVILEGED = "61873"  # a uid with no account, as DynamicUser picks


def _steps() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### systemd", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.S)
    assert block is not None
    lines = []
    for raw in block.group(1).splitlines():
        line = raw.split("  #", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


@pytest.fixture
def root() -> Iterator[Path]:
    """World-traversable (pytest's own temporary directories are not), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="tdas-root-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


_AS_UNIT = """
import os, sys
import argparse, json, sqlite3, socket, ssl, tomllib, decimal, importlib.metadata, logging.handlers
import concurrent.futures.thread
import autoscaler.commands.cli, autoscaler.config, autoscaler.service.daemon, autoscaler.commands.preflight
import autoscaler.service.runtime
from autoscaler.core.policy import available_policies
from autoscaler.signals.registry import available_sources
available_policies(), available_sources()
uid = int(os.environ["AS_UID"])
os.setgroups([])
os.setresgid(uid, uid, uid)
os.setresuid(uid, uid, uid)
sys.exit(autoscaler.commands.cli.main(sys.argv[1:]))
"""


def _as_unit_user(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TDAS_")} | {"AS_UID": UNPRIVILEGED}
    return subprocess.run(
        [sys.executable, "-c", _AS_UNIT, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )


def test_the_readme_systemd_steps_work_as_written(root: Path) -> None:
    if os.geteuid() != 0 or shutil.which("systemd-creds") is None:
        pytest.fail("this test needs root and systemd-creds (Debian's systemd)")
    work = root / "work"
    (work / "deploy").mkdir(parents=True)
    shutil.copytree(REPO / "deploy/systemd", work / "deploy/systemd")
    (work / "config.toml").write_text(
        '[fleet]\nssh_key = "ssh-ed25519 AAAATEST readme"\n[store]\nurl = "sqlite:////var/lib/tensordock-autoscaler/state.db"\n'
    )
    (work / "token.txt").write_text("td-readme-token")
    venv = root / "opt/tensordock-autoscaler/.venv"
    venv.parent.mkdir(parents=True)
    (root / "etc/systemd/system").mkdir(parents=True)

    ran, skipped = [], []
    for step in _steps():
        words = step.split()
        if words[:3] == ["python3", "-m", "venv"]:
            venv.symlink_to(Path(sys.executable).parent.parent)
            skipped.append(step)
            continue
        if words[0].endswith("/pip") or words[0] == "systemctl":
            skipped.append(step)
            continue
        if words[0] == "systemd-creds":
            words.insert(2, "--with-key=tpm2-absent")
        moved = [w.replace("/etc/", f"{root}/etc/").replace("/opt/", f"{root}/opt/") for w in words]
        done = subprocess.run(moved, cwd=work, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, (step, done.stdout, done.stderr)
        ran.append(step)
    assert any(s.startswith("install -d") for s in ran) and any("check-config" in s for s in ran), ran
    assert all(s.startswith(("python3", "/opt/tensordock-autoscaler/.venv/bin/pip", "systemctl")) for s in skipped)

    config = root / "etc/tensordock-autoscaler/config.toml"
    assert (root / "etc/systemd/system/tensordock-autoscaler.service").is_file()
    assert (root / "etc/tensordock-autoscaler/token.cred").is_file()
    as_unit = _as_unit_user("check-config", "--offline", str(config))
    assert as_unit.returncode == 0, as_unit.stderr  # the DynamicUser can read the documented layout
    assert "Traceback" not in as_unit.stderr


def test_a_config_the_user_cannot_read_is_one_line_naming_it(root: Path) -> None:
    """The old layout (root-owned 0750 directory) as the unit's user: one line, exit 2, no traceback."""
    etc = root / "etc/tensordock-autoscaler"
    etc.mkdir(parents=True)
    config = etc / "config.toml"
    config.write_text('[fleet]\nssh_key = "k"\n')
    etc.chmod(0o750)
    for command in (["check-config", str(config)], ["run", "--config", str(config)]):
        done = _as_unit_user(*command)
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if line.strip() and not line.startswith("  - ")]
        assert "Traceback" not in done.stderr
        assert str(config) in done.stderr and "cannot read" in done.stderr, done.stderr
        assert len(lines) <= 2, done.stderr  # the command's heading and the one problem
