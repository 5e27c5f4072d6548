"""The README's worked plugin example really works, through the same machinery as the built-ins."""

from __future__ import annotations

import re
import sys
import types
from typing import Any

from autoscaler.core.plan import Plan
from autoscaler.core.planner import run_chain
from autoscaler.core.policy import PolicySpec, available_policies, build_chain

from ..conftest import REPO
from .builders import NOW, snapshot


def load_example() -> Any:
    text = (REPO / "README.md").read_text()
    section = text[text.index("### Writing a policy plugin") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code, "the README lost its plugin example"
    module = types.ModuleType("weekend_cap")
    sys.modules["weekend_cap"] = module
    exec(compile(code.group(1), "README.md", "exec"), module.__dict__)
    return module.WeekendCap


def test_the_readme_plugin_caps_weekends_only() -> None:
    registry = {**available_policies(), "weekend_cap": load_example()}
    chain = build_chain(
        [PolicySpec(name="queue_target"), PolicySpec(name="weekend_cap", options={"max_gpus": 2})], registry
    )
    thursday = run_chain(snapshot(queued=5, now=NOW), chain)
    saturday = run_chain(snapshot(queued=5, now=NOW + 2 * 86400), chain)
    assert (thursday.desired_gpus, saturday.desired_gpus) == (5, 2)
    assert isinstance(saturday, Plan) and "weekend_cap" in saturday.notes[-1]
