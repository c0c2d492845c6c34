"""Runs a cross-compiled arm64 TVM engine under qemu-user, for the accuracy gate on x86 hosts.

The one engine the build does not run through the server's engines: an aarch64 library cannot
be loaded into an x86 process. It has the server's engine interface, and only its outputs
count (no latency profile is taken under emulation).

Debian's ``qemu-aarch64-static`` is called explicitly with ``-L ROOT`` (no binfmt needed) on
Debian's arm64 python3.11 inside ROOT, which `hack/arm64-sysroot.sh` prepares with aarch64
wheels of the TVM runtime and numpy. The reference outputs come from ONNX Runtime on the host:
onnxruntime's aarch64 wheel crashes under qemu. On a real arm64 build node none of this runs:
the engine loads natively.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from infleet.runtime.builders.base import Feeds
from infleet.runtime.builders.tvm import ELF_MACHINE, elf_machine
from infleet.runtime.errors import BackendUnavailable, BuildError
from infleet.runtime.hardware import host_arch
from infleet.runtime.manifest import EngineManifest

QEMU = "qemu-aarch64-static"
ROOT_ENV = "INFLEET_ARM64_ROOT"
TIMEOUT_S = 600.0


def arm64_root() -> Path:
    """The arm64 root: $INFLEET_ARM64_ROOT, else the newest complete one in ~/.cache/infleet."""
    env = os.environ.get(ROOT_ENV)
    if env:
        root = Path(env)
    else:
        cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "infleet"
        roots = sorted(cache.glob("arm64-root-*/.complete"), key=lambda p: p.stat().st_mtime)
        root = roots[-1].parent if roots else cache / "arm64-root-missing"
    if not (root / ".complete").is_file() or not (root / "usr/bin/python3.11").exists():
        raise BackendUnavailable(
            f"no arm64 root at {root}: run hack/arm64-sysroot.sh (or set {ROOT_ENV})"
        )
    return root


def needs_emulation(engine: Path) -> bool:
    """Whether ``engine`` is a library for another arch than this host's (an arm64 engine built
    on x86): then it runs under qemu, else in the server's engine."""
    machine = elf_machine(engine) if engine.suffix == ".so" and engine.is_file() else None
    return machine is not None and machine != ELF_MACHINE[host_arch()]


class QemuTvmEngine:
    """The server's engine interface over a qemu-user process. Takes any number of rows per
    call (the script pads and splits to the compiled sizes), so one emulator start covers the
    whole gate."""

    text_strings = False
    warm_batch_sizes: tuple[int, ...] = ()

    def __init__(self, engine: Path, manifest: EngineManifest) -> None:
        if shutil.which(QEMU) is None:
            raise BackendUnavailable(f"{QEMU} not found (apt-get install qemu-user-static)")
        self.root = arm64_root()
        self.engine = engine
        self.manifest = manifest
        self.inputs = tuple(manifest.inputs)
        self.outputs = tuple(manifest.outputs)
        self.description = f"tvm aarch64 engine under {QEMU}"

    def close(self) -> None:
        pass

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        site = self.root / "opt/infleet/site"
        with tempfile.TemporaryDirectory() as tmp:
            # Run a copy: beside the original sits builders/tvm.py, which `import tvm` would find.
            script = Path(tmp) / "tvm_vmrun.py"
            shutil.copyfile(Path(__file__).resolve().with_name("tvm_vmrun.py"), script)
            inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
            np.savez(inp, **dict(feeds))  # type: ignore[arg-type]
            opts = self.manifest.options
            cmd = [
                QEMU,
                "-L",
                str(self.root),
                str(self.root / "usr/bin/python3.11"),
                str(script),
                str(self.engine),
                str(inp),
                str(out),
                opts["entry"],
                ",".join(map(str, self.manifest.batch_sizes)),
                opts["input_order"],
            ]
            # Only the runtime library exists in the root; TVM must not look for its compiler.
            env = {
                "PATH": "/usr/bin:/bin",
                "PYTHONPATH": str(site),
                "TVM_USE_RUNTIME_LIB": "1",
                "PYTHONNOUSERSITE": "1",
                "HOME": tmp,
            }
            try:
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, env=env, timeout=TIMEOUT_S
                )
            except subprocess.TimeoutExpired as e:
                raise BuildError(f"arm64 engine under qemu: no answer in {TIMEOUT_S:.0f}s") from e
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                raise BuildError(f"arm64 engine under qemu failed (exit {proc.returncode}): {tail}")
            with np.load(out) as data:
                values = [data[f"arr_{i}"] for i in range(len(data.files))]
        if len(values) != len(self.outputs):
            raise BuildError(
                f"arm64 engine under qemu returned {len(values)} outputs, the manifest lists "
                f"{len(self.outputs)}"
            )
        return {s.name: v for s, v in zip(self.outputs, values, strict=True)}
