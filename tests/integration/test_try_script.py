"""The README's first command: ``hack/try.sh`` (and with it ``infleet dev up | status | env |
down``) against a cluster of its own, exactly as a new user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
INFLEET = [sys.executable, "-m", "infleet"]


def _infleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*INFLEET, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )


def test_try_script_brings_up_the_fleet_applies_the_sample_and_plans_it() -> None:
    name = f"pytest-try-{os.getpid()}"
    env = {**os.environ, "INFLEET_TRY_CLUSTER": name}
    try:
        run = subprocess.run(
            ["bash", "hack/try.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=600, check=False,
        )
        out = run.stdout + run.stderr
        assert run.returncode == 0, out
        assert f"cluster '{name}' is up" in out
        # Every node of the dev profile is listed, the sample is stored, the bad one refused.
        assert out.count(" Ready ") == 13, out
        assert "inferencedeployment.infleet.dev/resnet50 created" in out
        assert "scaling.maxReplicas must be greater than or equal to scaling.minReplicas" in out
        assert "PLAN: " in out and "NO FEASIBLE PLAN" not in out

        status = _infleet("dev", "status", "--name", name)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "nodes: 13/13 Ready" in status.stdout

        exports = _infleet("dev", "env", "--name", name)
        assert exports.returncode == 0, exports.stderr
        kubeconfig = exports.stdout.split("export KUBECONFIG=", 1)[1].split("\n", 1)[0]
        assert Path(kubeconfig).is_file()
        assert "export PATH=" in exports.stdout

        # A second run reuses the running cluster instead of failing on "already up".
        again = subprocess.run(
            ["bash", "hack/try.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=600, check=False,
        )
        assert again.returncode == 0, again.stdout + again.stderr
        assert "inferencedeployment.infleet.dev/resnet50 unchanged" in again.stdout
    finally:
        down = _infleet("dev", "down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert _infleet("dev", "env", "--name", name).returncode == 1
    assert _infleet("dev", "status", "--name", name).returncode == 1
