"""Pods of the emulated arm64 class: plans rewritten to run under qemu-user (no cluster, no
qemu). The arm64 root here is a folder made by the test with the kinds of files a real one
holds: a #! script, an aarch64 ELF header, an x86-64 ELF header."""

from __future__ import annotations

from pathlib import Path

import pytest

from infleet.devcluster import emulation, podspec
from infleet.devcluster.emulation import Emulator, Program

ENV = podspec.Environment(
    pod_ip="127.1.2.3", host_ip="127.0.0.1", api_host="127.0.0.1", api_port=6443,
    base_path="/venv/bin:/usr/bin", pods_root=Path("/pods"), claims_root=Path("/claims"),
)


def elf(machine: int) -> bytes:
    # e_ident (64-bit, little-endian), e_type, then e_machine at offset 18
    return b"\x7fELF\x02\x01\x01" + b"\0" * 9 + (2).to_bytes(2, "little") + \
        machine.to_bytes(2, "little") + b"\0" * 40


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    (r / "usr/bin").mkdir(parents=True)
    (r / "usr/local/bin").mkdir(parents=True)
    (r / "usr/bin/python3.11").write_bytes(elf(183))
    (r / "usr/bin/x86tool").write_bytes(elf(62))
    (r / "usr/bin/notes.txt").write_text("hello")
    (r / "usr/local/bin/infleet").write_text("#!/usr/bin/python3.11\nimport sys\n")
    (r / "usr/local/bin/orphan").write_text("#!/usr/bin/perl -w\n")
    return r


def emulator(root: Path) -> Emulator:
    return Emulator(qemu="/usr/bin/qemu-aarch64-static", root=root, cpu="neoverse-n1",
                    python_path=(root / "opt/infleet/site", Path("/cluster/arm64-python")))


def pod(command: list[str], **container: object) -> dict:
    return {
        "metadata": {"name": "p", "namespace": "ns", "uid": "0a1b2c3d-0000-4000-8000-00000000000a",
                     "labels": {"app.kubernetes.io/component": "serving"}},
        "spec": {"nodeName": "arm64-qemu-0", "containers": [
            {"name": "server", "image": "x", "command": command,
             "args": ["serve", "--host", "$(POD_IP)"], **container}]},
    }


def test_programs_are_found_in_the_root_as_an_image_would(root: Path) -> None:
    assert emulation.find_program(root, "infleet") == Program(
        "/usr/local/bin/infleet", ("/usr/bin/python3.11",))
    assert emulation.find_program(root, "python3.11") == Program("/usr/bin/python3.11")
    assert emulation.find_program(root, "/usr/bin/python3.11") == Program("/usr/bin/python3.11")
    assert "no aarch64 program (ELF machine 62)" in str(emulation.find_program(root, "x86tool"))
    assert "neither an aarch64 ELF" in str(emulation.find_program(root, "notes.txt"))
    assert "interpreter /usr/bin/perl is not in the arm64 root" in str(
        emulation.find_program(root, "orphan"))
    assert "not found in the arm64 root" in str(emulation.find_program(root, "bash"))
    assert "relative program path" in str(emulation.find_program(root, "bin/x"))


def test_a_serving_pod_runs_under_qemu_with_the_images_environment(root: Path) -> None:
    plan = podspec.plan_pod(pod(["infleet"], env=[{"name": "PYTHONPATH", "value": "/extra"}],
                                readinessProbe={"exec": {"command": ["python3.11", "-V"]}}),
                            ENV)
    found = {name: emulation.find_program(root, name) for name in emulation.programs_of(plan)}
    out = emulation.emulate(plan, emulator(root), found)
    assert out.problems == ()
    (c,) = out.containers
    # qemu with the root and the node's core, the script's interpreter from the root, the
    # script by its path inside the root, then the pod's own arguments untouched
    assert c.argv == ("/usr/bin/qemu-aarch64-static", "-L", str(root), "-cpu", "neoverse-n1",
                      str(root / "usr/bin/python3.11"), "/usr/local/bin/infleet",
                      "serve", "--host", "127.1.2.3")
    env = dict(c.env)
    assert env["PATH"] == "/usr/local/bin:/usr/bin:/bin"  # never the host's x86 venv
    assert env["PYTHONPATH"] == f"{root}/opt/infleet/site:/cluster/arm64-python:/extra"
    assert env["TVM_USE_RUNTIME_LIB"] == "1" and env["POD_IP"] == "127.1.2.3"
    assert c.readiness is not None and c.readiness.argv[:5] == (
        "/usr/bin/qemu-aarch64-static", "-L", str(root), "-cpu", "neoverse-n1")
    assert c.readiness.argv[5:] == (str(root / "usr/bin/python3.11"), "-V")
    # what the pod's plan had otherwise stays (mounts, termination path, cpus)
    assert c.mounts == plan.containers[0].mounts and c.cwd == plan.containers[0].cwd


def test_a_program_that_cannot_run_on_arm64_fails_the_pod_saying_why(root: Path) -> None:
    plan = podspec.plan_pod(pod(["x86tool"]), ENV)
    found = {name: emulation.find_program(root, name) for name in emulation.programs_of(plan)}
    out = emulation.emulate(plan, emulator(root), found)
    (problem,) = out.problems
    assert problem.startswith("container server: /usr/bin/x86tool is no aarch64 program")
    assert out.containers[0].argv[0] == "x86tool"  # never started under a wrong guess


def test_build_pods_stay_on_the_host_and_gate_under_the_nodes_core(root: Path) -> None:
    build = pod(["infleet"])
    build["metadata"]["labels"]["app.kubernetes.io/component"] = "engine-build"
    assert emulation.is_build(build) and not emulation.is_build(pod(["infleet"]))
    plan = podspec.plan_pod(build, ENV)
    out = emulation.cross_build(plan, root, "neoverse-n1")
    (c,) = out.containers
    assert c.argv == plan.containers[0].argv  # the host's infleet, cross-compiling
    env = dict(c.env)
    assert env["INFLEET_ARM64_ROOT"] == str(root) and env["QEMU_CPU"] == "neoverse-n1"
    assert env["PATH"] == "/venv/bin:/usr/bin"


def test_without_a_root_the_pods_fail_with_the_reason() -> None:
    plan = podspec.plan_pod(pod(["infleet"]), ENV)
    out = emulation.unavailable(plan, "no arm64 root at /x: run hack/arm64-sysroot.sh")
    assert out.problems == ("emulated arm64 node: no arm64 root at /x: run "
                            "hack/arm64-sysroot.sh",)
