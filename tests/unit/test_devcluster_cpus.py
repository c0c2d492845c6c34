"""Exclusive CPUs of Guaranteed containers in the local executor (the static CPU manager's
rule): which containers get them, how the pool hands them out, and that a process started
with them is really confined to them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from infleet.devcluster.cpus import CpuPool, exclusive_cpus
from infleet.devcluster.podrunner import _child_setup


@pytest.mark.parametrize(("resources", "want"), [
    ({"requests": {"cpu": "1"}, "limits": {"cpu": "1"}}, 1),
    ({"requests": {"cpu": "2000m"}, "limits": {"cpu": "2000m"}}, 2),
    ({"limits": {"cpu": "2"}}, 2),  # requests default to limits
    ({"requests": {"cpu": "1"}, "limits": {"cpu": "2"}}, 0),  # Burstable: shares
    ({"requests": {"cpu": "500m"}, "limits": {"cpu": "500m"}}, 0),  # not a whole CPU
    ({"requests": {"cpu": "1.5"}, "limits": {"cpu": "1.5"}}, 0),
    ({"requests": {"cpu": "1"}}, 0),  # no limit
    ({}, 0),
])
def test_only_whole_guaranteed_cpus_are_exclusive(resources: dict, want: int) -> None:
    assert exclusive_cpus({"resources": resources}) == want


def test_the_pool_hands_out_the_least_held_cpus_first() -> None:
    pool = CpuPool((0, 1, 2))
    a, b = pool.take(1), pool.take(1)
    assert a == (0,) and b == (1,)
    assert pool.take(2) == (0, 2)
    pool = CpuPool((0, 1))
    first = pool.take(1)
    second = pool.take(1)
    assert {first, second} == {(0,), (1,)}
    pool.give(first)
    assert pool.take(1) == first  # freed, so least held again
    assert pool.take(5) == (0, 1)  # more than there are: all of them, shared


def test_a_process_started_with_cpus_runs_only_on_them() -> None:
    mine = sorted(os.sched_getaffinity(0))
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
        preexec_fn=_child_setup((), (mine[-1],)), capture_output=True, text=True, check=True,
    )
    assert out.stdout.strip() == str([mine[-1]])
