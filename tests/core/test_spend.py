"""`spend`: per UTC day, what the ledger charged, with instance-hours and GPU-hours by model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from autoscaler.commands.cli import main
from autoscaler.commands.spend import render_spend, spend_report

from ..conftest import TOKEN
from .conftest import MakeWorld


def test_spend_reports_days_models_hours_and_budget(
    make_world: MakeWorld, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = make_world()
    day = 86400.0
    world.clock.advance((int(time.time() // day) - 1) * day + 20 * 3600 - world.clock.now())  # yesterday 20:00
    world.signal.set(2)
    for _ in range(16 * 6):  # 16 h at 10-minute cycles, across midnight
        world.cycle(600)
    runtime = world.runtime
    spent = runtime.store.spend(world.clock.now()).total_usd
    assert spent > 0
    creates = runtime.store.creates()
    assert creates, "the engine created nothing"
    report = spend_report(runtime.store, world.clock.now(), 3, daily_budget_usd=1.0)
    days = report["days"]
    assert [d["day"] for d in days][-1] == time.strftime("%Y-%m-%d", time.gmtime(world.clock.now()))
    assert days[0]["usd"] == 0 and days[1]["usd"] > 0 and days[2]["usd"] > 0  # yesterday's 4 h and today's
    assert report["total_usd"] == pytest.approx(spent, rel=1e-6)
    gpus = sum(entry.gpus for entry in creates.values())
    total_gpu_hours = sum(sum(d["gpu_hours"].values()) for d in days)
    total_instance_hours = sum(d["instance_hours"] for d in days)
    assert total_gpu_hours == pytest.approx(16 * gpus, rel=0.1)  # 2 GPUs for ~16 h, bought at once
    assert total_instance_hours == pytest.approx(16 * len(creates), rel=0.1)
    models = {model for d in days for model in d["gpu_hours"]}
    assert models and all("/" not in m for m in models)

    text = render_spend(report, bars=True)
    assert "█" in text and "daily budget $1.00" in text and "over budget" in text
    assert "█" not in render_spend(report, bars=False)

    runtime.close()
    config = tmp_path / "spend.toml"
    config.write_text(
        f'[tensordock]\ntoken = "{TOKEN}"\n[store]\nurl = "sqlite:///{world.store_path}"\n'
        '[[policies]]\nname = "budget"\noptions = { daily_budget_usd = 1.0 }\n'
    )
    assert main(["spend", "--config", str(config), "--days", "3", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["daily_budget_usd"] == 1.0 and len(printed["days"]) == 3
    assert main(["spend", "--config", str(config)]) == 0
    assert "GPU-HOURS BY MODEL" in capsys.readouterr().out
