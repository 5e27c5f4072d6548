"""The billed-rate rule, in one table: what an instance costs in each state (everything uses it:
the snapshot, the ledger, `status`, the unmanaged-cost metric)."""

from __future__ import annotations

import pytest

from autoscaler.core.snapshot import billed_rate
from autoscaler.tensordock import InstanceStatus

FULL, STORAGE = 1.25, 0.01


@pytest.mark.parametrize(
    ("status", "rate"),
    [
        (InstanceStatus.STARTING, FULL),
        (InstanceStatus.RUNNING, FULL),
        (InstanceStatus.STOPPING, FULL),  # billed until it has stopped
        (InstanceStatus.STOPPED, STORAGE),
        (InstanceStatus.STOPPED_DISASSOCIATED, STORAGE),
        (InstanceStatus.DELETING, 0.0),
        (InstanceStatus.DELETED, 0.0),
        (InstanceStatus.ERROR, FULL),  # rule 11: it may be billing
        (InstanceStatus.UNKNOWN, FULL),  # rule 11: it may be billing
    ],
)
def test_what_an_instance_costs_in_each_state(status: InstanceStatus, rate: float) -> None:
    assert billed_rate(status, FULL, STORAGE) == rate


def test_every_status_has_a_row() -> None:
    assert len(InstanceStatus) == 9
