"""Policy plugins written before the core moved still import: the old paths of the plugin API give
the core modules' own objects. (tools/restructure.py keeps this old import path.)
"""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("name", ["plan", "policy", "snapshot"])
def test_an_old_plugin_path_gives_the_core_modules_objects(name: str) -> None:
    old = importlib.import_module(f"autoscaler.{name}")
    new = importlib.import_module(f"autoscaler.core.{name}")
    public = getattr(new, "__all__", [n for n in vars(new) if not n.startswith("_")])
    assert public
    assert all(getattr(old, n) is getattr(new, n) for n in public)
