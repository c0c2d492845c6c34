"""Pods of the dev fleet's emulated arm64 class: their containers run under qemu-user.

The local executor plans every pod alike (:mod:`infleet.devcluster.podspec`: argv, env, mapped
paths); on a node of an emulated class (fleet profile ``executor: qemu``) the plan is then
rewritten here, container by container, as if the container's image were the arm64 root
(:mod:`infleet.runtime.arm64root`):

- the program (``argv[0]``) is looked up inside the root on the image's ``PATH``
  (:func:`find_program`). An aarch64 ELF runs as ``qemu-aarch64-static -L ROOT -cpu CPU
  PROGRAM ARGS``; a script runs as its ``#!`` interpreter from the root does (qemu-user starts
  ELF files only). Anything else cannot run on an arm64 node, and the pod fails saying so;
- the environment is the image's, under the pod's own variables: ``PATH`` inside the root,
  ``PYTHONPATH`` the root's aarch64 wheels and this checkout's ``infleet`` (pure Python, the
  same code the host runs), ``TVM_USE_RUNTIME_LIB=1`` (the root holds TVM's runtime only);
- exec readiness probes are rewritten the same way.

``-cpu`` is the core the node's labels describe (``qemuCpu`` in the fleet profile), so an
engine compiled for features that core lacks fails with SIGILL here as it would there.

Engine build pods are the one exception (:func:`cross_build`): they run on the host as x86
processes, because the engine compiler (TVM with LLVM) and the FP32 reference (ONNX Runtime,
whose aarch64 wheel crashes under qemu) cannot run emulated. They cross-compile for the
hardware the build Job names and gate the engine under qemu emulating the node's core
(``QEMU_CPU``), with the root the executor checked (``INFLEET_ARM64_ROOT``).

Pure except :func:`find_program`, which reads the root.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from infleet.devcluster.podspec import ContainerPlan, PodPlan, Probe, ProbeKind

IMAGE_PATH = ("/usr/local/bin", "/usr/bin", "/bin")
"""``PATH`` inside the root, as an image sets it."""
ELF_MAGIC = b"\x7fELF"
EM_AARCH64 = 183
BUILD_COMPONENT = "engine-build"
"""``app.kubernetes.io/component`` of engine build pods (what the operator labels them)."""


@dataclass(frozen=True)
class Emulator:
    """How this machine runs aarch64 code."""

    qemu: str
    """qemu-aarch64-static, as a path on this machine."""
    root: Path
    """The arm64 root (Debian's python3.11 and the aarch64 wheels)."""
    cpu: str
    """The core qemu emulates (``-cpu``): the one the node's NFD labels describe."""
    python_path: tuple[Path, ...]
    """``PYTHONPATH`` entries every process gets: the root's wheels, this checkout's infleet."""


@dataclass(frozen=True)
class Program:
    """An aarch64 program found in the root, as a path inside it."""

    path: str
    interpreter: tuple[str, ...] = ()
    """For a script, its ``#!`` line (interpreter inside the root, and its one argument)."""


def find_program(root: Path, name: str, search: Iterable[str] = IMAGE_PATH) -> Program | str:
    """``name`` inside ``root`` as the image's shell would find it: a path as given, a bare
    name on ``search``. Returns the program, or why it cannot run on an arm64 node."""
    dirs = [""] if "/" in name else list(search)
    for directory in dirs:
        guest = name if not directory else f"{directory}/{name}"
        if not guest.startswith("/"):
            return f"{name}: a relative program path has no meaning in the arm64 image"
        host = root / guest.lstrip("/")
        if not host.is_file():
            continue
        with host.open("rb") as f:
            head = f.read(256)
        if head.startswith(b"#!"):
            line = head[2:].split(b"\n", 1)[0].decode(errors="replace").strip()
            words = line.split(None, 1)
            if not words:
                return f"{guest}: an empty #! line"
            if not (root / words[0].lstrip("/")).is_file():
                return f"{guest}: its interpreter {words[0]} is not in the arm64 root"
            return Program(guest, tuple(words))
        if head[:4] == ELF_MAGIC and len(head) >= 20:
            machine = int.from_bytes(head[18:20], "little")
            if machine != EM_AARCH64:
                return (f"{guest} is no aarch64 program (ELF machine {machine}): an emulated "
                        "arm64 node runs aarch64 programs only")
            return Program(guest)
        return f"{guest} is neither an aarch64 ELF program nor a #! script"
    where = ", ".join(dirs) if dirs != [""] else name
    return f"{name} not found in the arm64 root ({where})"


def programs_of(plan: PodPlan) -> set[str]:
    """Every program a pod's containers and exec probes start."""
    out: set[str] = set()
    for c in (*plan.init_containers, *plan.containers):
        if c.argv:
            out.add(c.argv[0])
        if c.readiness is not None and c.readiness.kind is ProbeKind.EXEC and c.readiness.argv:
            out.add(c.readiness.argv[0])
    return out


def emulated_argv(argv: tuple[str, ...], program: Program, emulator: Emulator
                  ) -> tuple[str, ...]:
    """The host command that runs ``argv`` (whose first word resolved to ``program``)."""
    qemu = (emulator.qemu, "-L", str(emulator.root), "-cpu", emulator.cpu)
    if not program.interpreter:
        return (*qemu, str(emulator.root / program.path.lstrip("/")), *argv[1:])
    interpreter = str(emulator.root / program.interpreter[0].lstrip("/"))
    return (*qemu, interpreter, *program.interpreter[1:], program.path, *argv[1:])


def image_env(env: Mapping[str, str], emulator: Emulator) -> dict[str, str]:
    """The container's environment on the emulated node: the image's variables, then the
    pod's own (as a runtime layers them), with the image's ``PYTHONPATH`` always first."""
    out = dict(env)
    out["PATH"] = ":".join(IMAGE_PATH)  # the executor's PATH names x86 programs
    ours = ":".join(str(p) for p in emulator.python_path)
    out["PYTHONPATH"] = f"{ours}:{env['PYTHONPATH']}" if env.get("PYTHONPATH") else ours
    out.setdefault("PYTHONNOUSERSITE", "1")
    out.setdefault("TVM_USE_RUNTIME_LIB", "1")
    return out


def emulate(plan: PodPlan, emulator: Emulator, programs: Mapping[str, Program | str]
            ) -> PodPlan:
    """``plan`` with every container (and exec probe) started under qemu; a program that
    cannot run on an arm64 node becomes one of the plan's problems (the pod fails with it)."""
    problems = list(plan.problems)

    def wrap(argv: tuple[str, ...], what: str) -> tuple[str, ...]:
        if not argv:
            return argv
        found = programs.get(argv[0], f"{argv[0]}: not looked up")
        if isinstance(found, str):
            problems.append(f"{what}: {found}")
            return argv
        return emulated_argv(argv, found, emulator)

    def container(c: ContainerPlan) -> ContainerPlan:
        readiness: Probe | None = c.readiness
        if readiness is not None and readiness.kind is ProbeKind.EXEC:
            readiness = dataclasses.replace(
                readiness, argv=wrap(readiness.argv, f"container {c.name}: readiness probe"))
        env = image_env(dict(c.env), emulator)
        return dataclasses.replace(c, argv=wrap(c.argv, f"container {c.name}"),
                                   env=tuple(sorted(env.items())), readiness=readiness)

    init = tuple(container(c) for c in plan.init_containers)
    main = tuple(container(c) for c in plan.containers)
    return dataclasses.replace(plan, init_containers=init, containers=main,
                               problems=tuple(problems))


def is_build(pod: Mapping[str, object]) -> bool:
    meta = pod.get("metadata")
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    return isinstance(labels, Mapping) and labels.get(
        "app.kubernetes.io/component") == BUILD_COMPONENT


def cross_build(plan: PodPlan, root: Path, cpu: str) -> PodPlan:
    """An engine build pod on an emulated node: host processes (the x86 venv's ``infleet``
    cross-compiles for the hardware the Job names), whose accuracy gate runs the engine under
    qemu emulating the node's core, with the root the executor checked."""
    def container(c: ContainerPlan) -> ContainerPlan:
        env = {**dict(c.env), "INFLEET_ARM64_ROOT": str(root), "QEMU_CPU": cpu}
        return dataclasses.replace(c, env=tuple(sorted(env.items())))

    return dataclasses.replace(
        plan, init_containers=tuple(container(c) for c in plan.init_containers),
        containers=tuple(container(c) for c in plan.containers))


def unavailable(plan: PodPlan, why: str) -> PodPlan:
    """``plan`` failing with ``why`` (the node cannot run anything: no root, no qemu)."""
    return dataclasses.replace(plan, problems=(*plan.problems, f"emulated arm64 node: {why}"))
