"""Configuration: file plus environment, every error named, secrets masked, README in step."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoscaler.commands.cli import main
from autoscaler.commands.config_reference import END, START, render_reference
from autoscaler.config import SchedulerSettings, load_settings

from ..conftest import REPO, TOKEN


def test_the_readme_reference_is_generated_from_the_settings_model() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split(START, 1)[1].split(END, 1)[0].strip()
    assert section == render_reference(), "run `make docs` to regenerate the README's configuration reference"


def test_environment_overrides_the_file_and_token_file_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[guards]\nmax_gpus = 4\n[fleet]\nssh_key = "k"\n')
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("TDAS_GUARDS__MAX_GPUS", "9")
    monkeypatch.setenv("TDAS_TENSORDOCK__TOKEN_FILE", str(token_file))
    settings = load_settings(config)
    assert settings.guards.max_gpus == 9
    assert settings.tensordock.resolved_token().get_secret_value() == TOKEN


def test_check_config_prints_the_effective_config_with_secrets_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f'[tensordock]\ntoken = "{TOKEN}"\n[fleet]\nssh_key = "ssh-ed25519 AAAA"\n')
    assert main(["check-config", str(config)]) == 0
    out = capsys.readouterr().out
    assert TOKEN not in out and "**********" in out and '"max_gpus": 16' in out


def test_check_config_lists_every_error_with_its_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[guards]\nmax_gpus = -1\nmax_instances = "many"\n[fleet]\nname_prefix = "Bad Name"\n')
    assert main(["check-config", str(config)]) == 2
    err = capsys.readouterr().err
    for field in ("guards.max_gpus", "guards.max_instances", "fleet.name_prefix"):
        assert field in err
    missing = tmp_path / "ok.toml"
    missing.write_text("")
    assert main(["check-config", str(missing)]) == 2
    assert "tensordock.token" in capsys.readouterr().err


def test_run_refuses_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text("[scheduler]\ninterval_s = 0\n")
    assert main(["run", "--config", str(config)]) == 2
    assert "scheduler.interval_s" in capsys.readouterr().err


def test_transition_polls_must_come_between_cycles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[tensordock]\ntoken = "t"\n[scheduler]\ninterval_s = 10\ntransition_poll_s = 10\n')
    assert main(["check-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "transition_poll_s (10) must be shorter than interval_s (10)" in err and "or 0" in err
    config.write_text('[tensordock]\ntoken = "t"\n[scheduler]\ninterval_s = 1\n')
    settings = load_settings(config)  # the 5-s default is not an error with 1-s cycles: it is not used
    assert not settings.scheduler.follows_transitions
    config.write_text('[tensordock]\ntoken = "t"\n[scheduler]\ninterval_s = 30\ntransition_poll_s = 0\n')
    assert not load_settings(config).scheduler.follows_transitions
    assert SchedulerSettings().follows_transitions


def test_queue_watches_must_come_between_cycles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[tensordock]\ntoken = "t"\n[scheduler]\ninterval_s = 20\nwatch_s = 30\n')
    assert main(["check-config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "watch_s (30) must be shorter than interval_s (20)" in err and "watching the queue off" in err
    config.write_text('[tensordock]\ntoken = "t"\n[scheduler]\ninterval_s = 1\n')
    assert not load_settings(config).scheduler.watches_queue  # the 1-s default is simply not used
    config.write_text('[tensordock]\ntoken = "t"\n[scheduler]\nwatch_s = 0\n')
    assert not load_settings(config).scheduler.watches_queue
    assert SchedulerSettings().watches_queue


def test_the_readme_configuration_example_is_valid(tmp_path: Path) -> None:
    import re

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### See what it would do") : readme.index("### Writing a policy plugin")]
    match = re.search(r"```toml\n(.*?)```", section, re.S)
    assert match, "the README lost its configuration example"
    token = tmp_path / "token"
    token.write_text(TOKEN)
    config = tmp_path / "c.toml"
    config.write_text(
        match.group(1).replace("/run/credentials/tensordock-autoscaler.service/tensordock-token", str(token))
    )
    settings = load_settings(config)
    assert settings.tensordock.resolved_token().get_secret_value() == TOKEN
    assert [p.name for p in settings.policies] == ["queue_target", "cheapest_throughput", "budget"]
    assert settings.signal.sources[0].kind == "redis"


def test_the_engine_settings_are_defined_once_and_reach_the_engine() -> None:
    from autoscaler.config import Settings
    from autoscaler.engine.cycle import EngineConfig, EngineSettings
    from autoscaler.service.runtime import build_runtime
    from autoscaler.store import SqliteStore

    for model in (Settings, EngineConfig):  # inherited, not copies that could drift apart
        own = vars(model).get("__annotations__", {})
        for key, field in EngineSettings.model_fields.items():
            assert key not in own and repr(model.model_fields[key]) == repr(field), f"{model.__name__}.{key}"
    chosen = {
        "provision_timeout_s": 600.0,
        "max_signal_age_s": 77.0,
        "offer_refresh_s": 45.0,
        "offer_refresh_short_s": 7.0,
        "reap_orphans": True,
        "unresolved_create_grace_s": 90.0,
        "max_rate_multiple": 5.0,
    }
    assert set(chosen) == set(EngineSettings.model_fields)  # a new engine setting is tested here too
    settings = Settings(tensordock={"token": "t" * 12}, fleet={"ssh_key": "k"}, **chosen)
    runtime = build_runtime(settings, store=SqliteStore(":memory:"))
    try:
        assert {key: getattr(runtime.engine.config, key) for key in chosen} == chosen
    finally:
        runtime.close()


def test_the_budgets_max_hourly_spend_is_a_deprecated_alias_of_the_guards(tmp_path: Path) -> None:
    from autoscaler.config import ConfigError, Settings

    budget = [{"name": "budget", "options": {"max_hourly_spend": 4.0}}]
    with pytest.warns(FutureWarning, match=r"policies\[0\]\.options\.max_hourly_spend is deprecated"):
        assert Settings(policies=budget).guards.max_hourly_spend == 4.0
    assert Settings(policies=budget, guards={"max_hourly_spend": 4.0}).guards.max_hourly_spend == 4.0
    config = tmp_path / "c.toml"
    config.write_text(
        '[guards]\nmax_hourly_spend = 3\n[[policies]]\nname = "budget"\noptions = { max_hourly_spend = 4 }\n'
    )
    with pytest.raises(ConfigError, match=r"max_hourly_spend \(4\) disagrees with guards\.max_hourly_spend \(3\)"):
        load_settings(config)


def test_a_misspelt_environment_variable_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: TDAS_DRYRUN=true was ignored, and an operator who believed dry_run on got a live daemon."""
    config = tmp_path / "c.toml"
    config.write_text(f'[tensordock]\ntoken = "{TOKEN}"\n[fleet]\nssh_key = "k"\n')
    monkeypatch.setenv("TDAS_DRYRUN", "true")
    monkeypatch.setenv("TDAS_GUARD__MAX_GPUS", "3")
    monkeypatch.setenv("TDAS_GUARDS_MAX_GPUS", "3")  # one underscore where the level needs two
    monkeypatch.setenv("TDAS_REDIS_URL", "redis://localhost:6379/0")  # a source's credential: not a setting
    monkeypatch.setenv("TDAS_SIGNAL_TOKEN", "t")  # a name of the user's own, in no section's settings
    for command in (["check-config", str(config)], ["run", "--config", str(config)]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "TDAS_DRYRUN is not a setting; did you mean TDAS_DRY_RUN?" in err
        assert "TDAS_GUARD__MAX_GPUS is not a setting; did you mean TDAS_GUARDS__MAX_GPUS?" in err
        assert "TDAS_GUARDS_MAX_GPUS is not a setting; did you mean TDAS_GUARDS__MAX_GPUS?" in err
        assert "TDAS_REDIS_URL" not in err and "TDAS_SIGNAL_TOKEN" not in err
    for misspelt in ("TDAS_DRYRUN", "TDAS_GUARD__MAX_GPUS", "TDAS_GUARDS_MAX_GPUS"):
        monkeypatch.delenv(misspelt)
    monkeypatch.setenv("TDAS_DRY_RUN", "true")
    assert load_settings(config).dry_run is True


def test_an_empty_token_file_is_named_as_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("\n")
    config = tmp_path / "c.toml"
    config.write_text(f'[tensordock]\ntoken_file = "{token_file}"\n[fleet]\nssh_key = "k"\n')
    assert main(["check-config", str(config)]) == 2
    assert f"tensordock.token_file: {token_file} is empty" in capsys.readouterr().err


def test_a_negative_speed_is_refused_and_unknown_models_or_odd_vcpus_are_warned_of(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: all three passed check-config in silence; `plan` then showed `0 offers` with jobs
    waiting and nothing naming `allowed_gpu_models = ["h100"]` (found by an adversarial probe)."""
    config = tmp_path / "c.toml"
    head = f'[tensordock]\ntoken = "{TOKEN}"\n[fleet]\nssh_key = "ssh-ed25519 AAAA"\n'
    config.write_text(head + 'throughput = { "h100-sxm5-80gb" = -1 }\n')
    assert main(["check-config", "--offline", str(config)]) == 2
    err = capsys.readouterr().err
    assert "fleet.throughput" in err and "h100-sxm5-80gb = -1" in err and "from 0" in err
    config.write_text(
        head + 'allowed_gpu_models = ["h100"]\nthroughput = { "nonexistent-gpu" = 2 }\nvcpu_per_gpu = 3\n'
    )
    assert main(["check-config", "--offline", str(config)]) == 0  # warned, not refused: new models appear
    err = capsys.readouterr().err
    assert "fleet.allowed_gpu_models: 'h100' is not a GPU model" in err and "did you mean 'h100-sxm5-80gb'" in err
    assert "no known model is allowed" in err
    assert "fleet.throughput: 'nonexistent-gpu'" in err
    assert "fleet.vcpu_per_gpu: 3 is odd" in err
