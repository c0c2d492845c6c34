"""The arm64 root (``hack/arm64-sysroot.sh``) for tests that run aarch64 code under qemu-user."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def prepare_arm64_root() -> Path:
    """Make sure the root exists and return it: idempotent, instant once done (CI's bootstrap
    made it already)."""
    out = subprocess.run(["bash", str(ROOT / "hack" / "arm64-sysroot.sh")], capture_output=True,
                         text=True, check=False)
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip().splitlines()[-1])
