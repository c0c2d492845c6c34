"""Lint and type checks are part of the test run (one command proves everything)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_ruff_is_clean() -> None:
    out = subprocess.run([BIN / "ruff", "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_mypy_is_clean() -> None:
    # Strict for the API, scheduler and operator packages (see pyproject), checked on the
    # installed package so the folder mapping resolves exactly as users import it.
    out = subprocess.run(
        [BIN / "mypy", "-p", "infleet"], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
