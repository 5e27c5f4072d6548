"""`tensordock-autoscaler adopt`: take over prefix-named instances the store does not know.

After a lost or replaced store the daemon refuses to act while the provider lists instances that
carry the fleet's prefix (rule 13). The operator decides: adopt them (this command), or reap
them (`reap_orphans`). What each one is comes from a GET by id where TensorDock says it; what it
does not say stays unknown and counts in full against every bound until it does.
"""

from __future__ import annotations

import math
from typing import Any

from autoscaler.engine.reconcile import shape_from
from autoscaler.service.runtime import Runtime
from autoscaler.tensordock import TensorDockError


def orphans_to_adopt(runtime: Runtime, *, commit: bool) -> list[dict[str, Any]]:
    """Each prefix-named instance the store does not own; adopted when `commit`."""
    config = runtime.engine.config
    prefix = f"{config.name_prefix}-"
    owned = runtime.store.owned()
    now = runtime.engine.clock.now()
    rows = []
    for listed in runtime.client.list_instances():
        if listed.id in owned or not (listed.name or "").startswith(prefix):
            continue
        try:
            detail = runtime.client.get_instance(listed.id)
        except TensorDockError as exc:
            detail, note = listed, f"GET failed ({exc}); shape unknown"
        else:
            note = ""
        shape = shape_from(detail) or shape_from(listed)
        rate = detail.rate_hourly if detail.rate_hourly is not None else listed.rate_hourly
        believable = rate is not None and math.isfinite(rate) and rate >= 0
        if commit:
            runtime.store.adopt(
                listed.id,
                listed.name or listed.id,
                now,
                None,
                runtime.engine.reconciler.storage_rate(None, shape),
                shape=shape,
                expected_rate=rate if believable else None,
            )
        rows.append(
            {
                "name": listed.name,
                "id": listed.id,
                "status": listed.status.value,
                "gpus": f"{shape.gpus}x {shape.gpu_model}" if shape else "unknown (counted as 8)",
                "usd_per_hour": round(rate, 4) if believable and rate is not None else None,
                "adopted": commit,
                "note": note or ("" if shape else "TensorDock did not say its GPUs"),
            }
        )
    return rows
