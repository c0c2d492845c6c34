"""Runs a cross-compiled arm64 TVM engine under qemu-user, for the accuracy gate on x86 hosts.

The one engine the build does not run through the server's engines: an aarch64 library cannot
be loaded into an x86 process. It has the server's engine interface, and its outputs are judged
as any engine's. It also times the calls the gate makes (:meth:`QemuTvmEngine.emulated_profile`),
which the build records marked *emulated*: the emulator's speed, never taken for the hardware's.

Debian's ``qemu-aarch64-static`` is called explicitly with ``-L ROOT`` (no binfmt needed) on
Debian's arm64 python3.11 inside ROOT (:mod:`infleet.runtime.arm64root`). The CPU it emulates is
qemu's default unless ``QEMU_CPU`` (qemu's own variable) names one: the dev fleet's emulated
node sets it to the core its labels describe. The reference outputs come from ONNX Runtime on
the host: onnxruntime's aarch64 wheel crashes under qemu. On a real arm64 build node none of
this runs: the engine loads natively.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from infleet.api import LatencyPoint
from infleet.runtime.arm64root import PYTHON, QEMU, ROOT_ENV, SITE, arm64_root
from infleet.runtime.builders.base import Feeds
from infleet.runtime.builders.tvm import ELF_MACHINE, elf_machine
from infleet.runtime.errors import BackendUnavailable, BuildError
from infleet.runtime.hardware import host_arch
from infleet.runtime.manifest import EngineManifest
from infleet.runtime.profile import percentile_ms

__all__ = ["QEMU", "ROOT_ENV", "QemuTvmEngine", "arm64_root", "needs_emulation"]
TIMEOUT_S = 600.0


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
        self.seconds: dict[int, list[float]] = {}
        """Wall time of every call the emulated engine made, by compiled batch size."""

    def close(self) -> None:
        pass

    def emulated_profile(self) -> list[LatencyPoint]:
        """The calls made so far as latency points: the emulator's speed, for the record.
        The first call of a size pays the VM's first-run allocations; it is left out when
        there are others."""
        points = []
        for batch, seconds in sorted(self.seconds.items()):
            samples = seconds[1:] if len(seconds) > 1 else seconds
            p50 = percentile_ms(samples, 50)
            points.append(LatencyPoint(
                batch_size=batch, p50_ms=round(p50, 2),
                p99_ms=round(percentile_ms(samples, 99), 2),
                throughput_ips=round(batch / (p50 / 1e3), 3) if p50 > 0 else 0.0,
            ))
        return points

    def run(self, feeds: Feeds) -> dict[str, np.ndarray]:
        site = self.root / SITE
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
                str(self.root / PYTHON),
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
            if os.environ.get("QEMU_CPU"):  # the core the dev fleet's emulated node describes
                env["QEMU_CPU"] = os.environ["QEMU_CPU"]
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
                values = [data[f"arr_{i}"] for i in range(len(data.files))
                          if f"arr_{i}" in data.files]
                for name in data.files:
                    if name.startswith("seconds_b"):
                        batch = int(name.removeprefix("seconds_b"))
                        self.seconds.setdefault(batch, []).extend(float(t) for t in data[name])
        if len(values) != len(self.outputs):
            raise BuildError(
                f"arm64 engine under qemu returned {len(values)} outputs, the manifest lists "
                f"{len(self.outputs)}"
            )
        return {s.name: v for s, v in zip(self.outputs, values, strict=True)}
