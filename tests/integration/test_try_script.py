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


def test_try_script_runs_the_product_on_the_sample_and_answers_through_the_gateway() -> None:
    name = f"pytest-try-{os.getpid()}"
    env = {**os.environ, "INFLEET_TRY_CLUSTER": name}
    operator_pid = None
    try:
        run = subprocess.run(
            ["bash", "hack/try.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=1500, check=False,
        )
        out = run.stdout + run.stderr
        assert run.returncode == 0, out
        assert f"cluster '{name}' is up" in out
        # Every node of the dev profile is listed, the bad one refused, the sample applied.
        fleet = out.split("the fleet:", 1)[1].split("== the operator", 1)[0]
        assert fleet.count(" Ready ") == 14, out
        assert "scaling.maxReplicas must be greater than or equal to scaling.minReplicas" in out
        assert f"operator of cluster '{name}' is running" in out
        assert "job.batch/sample-model condition met" in out
        assert "inferencedeployment.infleet.dev/efficientnet created" in out
        assert "inferencedeployment.infleet.dev/efficientnet condition met" in out
        # kubectl get idep: the sample Available; the per-class table shows the real class
        # built and serving, the simulated ones marked simulated, and the emulated arm64 class
        # left out (the sample does not name it in spec.classes.allow).
        table = out.split("per class: backend", 1)[1]
        rows = [line.split() for line in table.splitlines()[1:]
                if line.startswith(("x86", "arm", "nvidia"))]
        real = [r for r in rows if r[4] == "real"]
        assert real, table
        assert all(r[3] == "Ready" and int(r[6]) >= 1 and int(r[7]) > 0 for r in real), table
        assert any(r[4] == "simulated" for r in rows), table
        (emulated,) = [r for r in rows if r[4] == "emulated"]
        assert emulated[3] == "excluded", table
        assert "Available=True" in out
        # The answer came through the gateway and matches ONNX Runtime on the same model.
        assert "OK: the answer matches the model" in out, out

        status = _infleet("dev", "status", "--name", name)
        assert status.returncode == 0, status.stdout + status.stderr
        assert "nodes: 14/14 Ready" in status.stdout
        operator_line = next(line for line in status.stdout.splitlines()
                             if line.split()[:1] == ["operator"])
        assert "running" in operator_line
        operator_pid = int(operator_line.rsplit(" ", 1)[1])

        exports = _infleet("dev", "env", "--name", name)
        assert exports.returncode == 0, exports.stderr
        kubeconfig = exports.stdout.split("export KUBECONFIG=", 1)[1].split("\n", 1)[0]
        assert Path(kubeconfig).is_file()
        assert "export PATH=" in exports.stdout
        assert "export INFLEET_GATEWAY=" in exports.stdout

        # A second run reuses the running cluster, operator and engine instead of failing.
        again = subprocess.run(
            ["bash", "hack/try.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=600, check=False,
        )
        out = again.stdout + again.stderr
        assert again.returncode == 0, out
        assert "already running" in out
        assert "inferencedeployment.infleet.dev/efficientnet unchanged" in out
        assert "OK: the answer matches the model" in out
    finally:
        down = _infleet("dev", "down", "--name", name)
    assert down.returncode == 0, down.stderr
    assert _infleet("dev", "env", "--name", name).returncode == 1
    assert _infleet("dev", "status", "--name", name).returncode == 1
    if operator_pid is not None:  # `dev down` stopped the operator with the cluster
        assert not Path(f"/proc/{operator_pid}").exists() or \
            Path(f"/proc/{operator_pid}/stat").read_text().split()[2] == "Z"
