"""The arm64 root: what runs aarch64 code on an x86 host under qemu-user.

`hack/arm64-sysroot.sh` prepares it once, in the cache, keyed by the versions it holds:
Debian's arm64 ``python3.11`` and the libraries it loads, aarch64 wheels of the TVM runtime and
of what ``infleet serve`` imports (``SITE``), and an ``infleet`` console script
(``CONSOLE_SCRIPT``). infleet itself is pure Python and is not in the root: whoever runs it
there puts the checkout's package on ``PYTHONPATH``. Two users: the TVM builder's accuracy gate
(``builders/qemu.py``) and the dev cluster's emulated arm64 class, whose pods run under qemu
(``infleet.devcluster.emulation``).

Light on purpose (no numpy, no tvm): the dev cluster's executor imports it.
"""

from __future__ import annotations

import os
from pathlib import Path

from infleet.runtime.errors import BackendUnavailable

QEMU = "qemu-aarch64-static"
ROOT_ENV = "INFLEET_ARM64_ROOT"
PYTHON = "usr/bin/python3.11"
"""The interpreter, relative to the root."""
SITE = "opt/infleet/site"
"""The aarch64 wheels, relative to the root."""
CONSOLE_SCRIPT = "usr/local/bin/infleet"
"""``infleet``'s entry point inside the root (written by the script since it holds the serving
packages; older roots lack it)."""
COMPLETE = ".complete"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "infleet"


def arm64_root() -> Path:
    """$INFLEET_ARM64_ROOT, else the newest complete root in the cache; BackendUnavailable
    (saying how to make one) when there is none."""
    env = os.environ.get(ROOT_ENV)
    if env:
        root = Path(env)
    else:
        roots = sorted(cache_dir().glob(f"arm64-root-*/{COMPLETE}"),
                       key=lambda p: p.stat().st_mtime)
        root = roots[-1].parent if roots else cache_dir() / "arm64-root-missing"
    if not (root / COMPLETE).is_file() or not (root / PYTHON).exists():
        raise BackendUnavailable(
            f"no arm64 root at {root}: run hack/arm64-sysroot.sh (or set {ROOT_ENV})"
        )
    return root


def serving_root() -> Path:
    """The arm64 root, checked to hold what ``infleet serve`` needs (a root made before the
    serving packages were added has the gate's packages only)."""
    root = arm64_root()
    if not (root / CONSOLE_SCRIPT).is_file():
        raise BackendUnavailable(
            f"the arm64 root at {root} predates infleet's serving packages (no "
            f"{CONSOLE_SCRIPT}): run hack/arm64-sysroot.sh again"
        )
    return root
