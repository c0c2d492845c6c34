"""tests/conftest.py under ``INFLEET_FAIL_ON_SKIP=1`` (what ``.ci/run`` sets): a skip is a
failure, except under the gpu marker. Checked on a throwaway suite run by a real pytest."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]

MODULE_SKIP = """
import pytest
pytest.importorskip("no_such_module_for_infleet")  # "never skips in CI": now enforced

def test_never_collected():
    pass
"""

MIXED = """
import pytest

@pytest.mark.gpu
def test_needs_a_gpu():
    pytest.skip("needs an NVIDIA GPU")

def test_skipped_for_no_good_reason():
    pytest.skip("a tool is missing")

def test_runs():
    pass

@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    assert False
"""


def _run(tmp_path: Path, strict: bool) -> tuple[int, str]:
    (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    (tmp_path / "test_mixed.py").write_text(MIXED)
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    env.pop("INFLEET_FAIL_ON_SKIP", None)
    if strict:
        env["INFLEET_FAIL_ON_SKIP"] = "1"
    out = subprocess.run(
        [
            *(sys.executable, "-m", "pytest", "-p", "conftest", "-c", os.devnull),
            *("--rootdir", str(tmp_path), "-p", "no:cacheprovider", "-rA", str(tmp_path)),
            *("-W", "ignore::pytest.PytestUnknownMarkWarning"),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    return out.returncode, out.stdout + out.stderr


def _counts(output: str) -> dict[str, int]:
    summary = output.strip().splitlines()[-1]
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", summary)}


def test_without_the_variable_a_skip_is_a_skip(tmp_path) -> None:
    code, output = _run(tmp_path, strict=False)
    assert code == 0, output
    assert _counts(output) == {"passed": 1, "skipped": 3, "xfailed": 1}, output


def test_with_the_variable_every_skip_fails_but_the_gpu_ones(tmp_path) -> None:
    code, output = _run(tmp_path, strict=True)
    assert code == 1, output
    # the module-level importorskip is an error of its file; the plain skip a failure; the
    # gpu skip stays a skip and is listed with its reason; an xfail is no skip
    assert _counts(output) == {"failed": 1, "passed": 1, "skipped": 1, "xfailed": 1, "error": 1}
    assert "test_skipped_for_no_good_reason was skipped (a tool is missing)" in output
    assert "test_module_skip.py was skipped (could not import 'no_such_module_for_" in output
    assert "skipped, allowed by INFLEET_FAIL_ON_SKIP (gpu marker)" in output
    assert "test_mixed.py::test_needs_a_gpu: needs an NVIDIA GPU" in output
