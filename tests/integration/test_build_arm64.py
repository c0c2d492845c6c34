"""The arm64 path on an x86 host: TVM cross-compiles with Debian's aarch64 toolchain, and the
accuracy gate runs the engine under qemu-user (Debian's arm64 python3.11 + aarch64 wheels of the
TVM runtime and numpy, prepared by hack/arm64-sysroot.sh). In a cluster this gate runs natively
on the arm64 build node."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from build_helpers import (
    assert_engine_matches,
    built,
    cpu_class,
    engine_dir,
    images,
    ort_reference,
    stored_manifests,
)

from infleet.runtime.builders.tvm import elf_machine
from infleet.runtime.zoo import synthetic

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def arm64_root() -> Iterator[Path]:
    # Idempotent and instant once done; .ci/run calls it up front as well.
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "arm64-sysroot.sh")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    root = Path(out.stdout.strip().splitlines()[-1])
    old = os.environ.get("INFLEET_ARM64_ROOT")
    os.environ["INFLEET_ARM64_ROOT"] = str(root)
    yield root
    if old is None:
        os.environ.pop("INFLEET_ARM64_ROOT", None)
    else:
        os.environ["INFLEET_ARM64_ROOT"] = old


def test_cross_compiled_engine_is_aarch64_and_matches_the_reference_under_qemu(
    tmp_path: Path,
) -> None:
    model = synthetic.small_cnn(tmp_path / "cnn.onnx")
    store = tmp_path / "store"
    n1 = cpu_class("arm64", "ASIMDDP", "ASIMDHP")  # Graviton2, Ampere Altra
    assert n1.name == "arm64-asimddp"
    r = built(model, store=store, cls=n1.name, hardware=n1.hardware, backend="tvm", max_batch=4)
    s = r.summary
    assert s["backend"] == "tvm" and s["key"]["hardware_fingerprint"] == n1.fingerprint
    assert s["accuracy"][-1]["passed"] and s["accuracy"][-1]["deviation"] < 1e-4
    # The gate ran under qemu: the summary says so, and its profile (the timings of the
    # gate's own calls) is marked emulated; the store's manifest keeps none, so a native arm64
    # node that reuses the engine never inherits the emulator's speed.
    assert s["emulated"] and [p["batch_size"] for p in s["profile"]] == [4]
    assert any("qemu-user emulation" in n and "not the hardware's" in n for n in s["notes"])
    assert "under emulation" in r.stderr
    (manifest,) = stored_manifests(store)
    assert manifest.profile == []
    engine = engine_dir(store, manifest) / manifest.engine_file
    head = engine.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[4] == 2 and head[5] == 1  # 64-bit, little-endian
    assert elf_machine(engine) == 183  # EM_AARCH64
    target = json.loads(manifest.options["target"])
    assert target["mcpu"] == "neoverse-n1" and "+dotprod" in target["mattr"]
    assert manifest.options["cross_compiled"] == "true"
    # Fresh inputs, 5 rows over compiled sizes (1, 4): the qemu runner pads and splits.
    feeds = images(5, seed=11)
    (ref,) = ort_reference(model, feeds)
    assert_engine_matches(store, manifest, feeds, ref, 1e-4)


def test_sve_class_gets_its_tier_and_matches_under_qemu(tmp_path: Path) -> None:
    """Graviton3's class from this x86 host: -mcpu neoverse-v1 with SVE and I8MM, as its tier
    implies, and the SVE code runs correctly (qemu-user emulates SVE)."""
    model = synthetic.small_cnn(tmp_path / "cnn.onnx")
    store = tmp_path / "store"
    v1 = cpu_class("arm64", "SVE", "I8MM", "ASIMDDP", "ASIMDHP", instance_type="c7g.xlarge")
    assert v1.name == "arm64-sve-c7g-xlarge"
    r = built(model, store=store, cls=v1.name, hardware=v1.hardware, backend="tvm", max_batch=2)
    assert r.summary["key"]["hardware_fingerprint"] == v1.fingerprint
    (manifest,) = stored_manifests(store)
    target = json.loads(manifest.options["target"])
    assert target["mcpu"] == "neoverse-v1" and {"+sve", "+i8mm"} <= set(target["mattr"])
    assert elf_machine(engine_dir(store, manifest) / manifest.engine_file) == 183
    feeds = images(3, seed=4)
    (ref,) = ort_reference(model, feeds)
    assert_engine_matches(store, manifest, feeds, ref, 1e-4)


def test_integer_and_half_inputs_cross_compile_and_match(tmp_path: Path) -> None:
    model = synthetic.mixed_dtypes(tmp_path / "mixed.onnx")
    n1 = cpu_class("arm64", "ASIMDDP", "ASIMDHP")
    r = built(
        model,
        store=tmp_path / "store",
        cls=n1.name,
        hardware=n1.hardware,
        backend="tvm",
        max_batch=2,
        metric="max-abs-error",
        max_deviation=1e-2,
    )
    assert r.summary["accuracy"][-1]["passed"]


def test_real_model_minilm_runs_on_arm64_under_qemu(tmp_path: Path) -> None:
    from infleet.runtime.zoo import minilm_l6

    model = minilm_l6(tmp_path / "minilm.onnx")
    store = tmp_path / "store"
    n1 = cpu_class("arm64", "ASIMDDP", "ASIMDHP")
    built(
        model,
        store=store,
        cls=n1.name,
        hardware=n1.hardware,
        backend="tvm",
        max_batch=1,
        dim="seq=16",
    )
    (manifest,) = stored_manifests(store)
    assert elf_machine(engine_dir(store, manifest) / manifest.engine_file) == 183
    rng = np.random.default_rng(2)
    ids = rng.integers(1000, 30522, (2, 16)).astype(np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones((2, 16), np.int64)}
    (ref,) = ort_reference(model, feeds)
    assert_engine_matches(store, manifest, feeds, ref, 1e-3)
