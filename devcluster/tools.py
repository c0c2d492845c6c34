"""Build and locate the Go binaries of the local control plane.

The pinned versions live in ``gotools/<module>/go.mod`` + ``go.sum`` (one consumer module per
upstream project, so their dependency graphs never tangle). Binaries are built from the Go module
proxy into a cache outside the clone::

    ${INFLEET_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/infleet}/bin/<versions-hash>/

keyed by a hash of every go.mod/go.sum, the build recipe and the machine architecture, so a
fresh clone on the same machine and every warm start rebuild nothing. A finished directory is
marked by ``manifest.json``, written last; a half-built one is never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from infleet.devcluster.errors import ToolsBuildError, ToolsMissingError

GOTOOLS = Path(__file__).resolve().parent / "gotools"

# Bump when the way binaries are built changes (flags, layout), so old caches are not reused.
RECIPE = "3"
# Static binaries, no cgo toolchain needed; smaller and faster to link without DWARF/symbols.
BUILD_FLAGS = ("-trimpath",)
BASE_LDFLAGS = "-s -w"


@dataclass(frozen=True)
class GoModule:
    """One consumer module and the binaries built from it (output name -> package)."""

    name: str
    binaries: tuple[tuple[str, str], ...]


MODULES: tuple[GoModule, ...] = (
    GoModule("etcd", (("etcd", "go.etcd.io/etcd/server/v3"),)),
    GoModule(
        "kube",
        (
            ("kube-apiserver", "k8s.io/kubernetes/cmd/kube-apiserver"),
            ("kube-controller-manager", "k8s.io/kubernetes/cmd/kube-controller-manager"),
            ("kube-scheduler", "k8s.io/kubernetes/cmd/kube-scheduler"),
            ("kubectl", "k8s.io/kubernetes/cmd/kubectl"),
        ),
    ),
    GoModule(
        "kwok",
        (("kwok", "sigs.k8s.io/kwok/cmd/kwok"), ("kwokctl", "sigs.k8s.io/kwok/cmd/kwokctl")),
    ),
    GoModule("helm", (("helm", "helm.sh/helm/v3/cmd/helm"),)),
)

BINARIES: tuple[str, ...] = tuple(b for m in MODULES for b, _ in m.binaries)


@dataclass(frozen=True)
class Tools:
    """Paths of the built binaries."""

    bin_dir: Path
    kubernetes_version: str

    def path(self, binary: str) -> Path:
        return self.bin_dir / binary


def cache_root() -> Path:
    explicit = os.environ.get("INFLEET_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "infleet"


def pinned_version(module: str, dependency: str) -> str:
    """The version `gotools/<module>/go.mod` requires of ``dependency``."""
    text = (GOTOOLS / module / "go.mod").read_text()
    match = re.search(rf"^\s*(?:require\s+)?{re.escape(dependency)}\s+(v\S+)", text, re.MULTILINE)
    if match is None:
        raise ToolsBuildError(f"gotools/{module}/go.mod does not require {dependency}")
    return match.group(1)


def versions() -> dict[str, str]:
    return {
        "kubernetes": pinned_version("kube", "k8s.io/kubernetes"),
        "etcd": pinned_version("etcd", "go.etcd.io/etcd/server/v3"),
        "kwok": pinned_version("kwok", "sigs.k8s.io/kwok"),
        "helm": pinned_version("helm", "helm.sh/helm/v3"),
    }


def versions_hash() -> str:
    digest = hashlib.sha256(f"recipe={RECIPE} arch={platform.machine()}\n".encode())
    for module in MODULES:
        for name in ("go.mod", "go.sum"):
            digest.update(f"{module.name}/{name}\n".encode())
            digest.update((GOTOOLS / module.name / name).read_bytes())
    return digest.hexdigest()[:16]


def bin_dir() -> Path:
    return cache_root() / "bin" / versions_hash()


def _kube_ldflags(version: str) -> str:
    # A plain module build reports v0.0.0-master; stamp the real version like hack/lib/version.sh
    # does, so discovery, kwokctl and kubectl's skew warnings see the pinned release.
    major, minor = version.lstrip("v").split(".")[:2]
    flags = [BASE_LDFLAGS]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def locate() -> Tools:
    """The cached binaries, or ToolsMissingError saying how to build them."""
    directory = bin_dir()
    manifest = directory / "manifest.json"
    missing = [b for b in BINARIES if not (directory / b).is_file()]
    if not manifest.is_file() or missing:
        raise ToolsMissingError(
            f"the local control plane's Go binaries are not built for these pinned versions "
            f"({', '.join(f'{k} {v}' for k, v in versions().items())}; expected in {directory}). "
            "Build them once with `infleet dev tools` (or hack/bootstrap.sh); it needs Go >= 1.26 "
            "and the Go module proxy, and takes about 15-20 minutes on 2 cores"
        )
    return Tools(directory, versions()["kubernetes"])


def _go() -> str:
    fallback = Path("/usr/local/go/bin/go")  # the official tarball's place, often not on PATH
    go = shutil.which("go") or (str(fallback) if fallback.exists() else None)
    if go is None:
        raise ToolsBuildError("`go` is not on PATH; install Go >= 1.26 (https://go.dev/dl)")
    return go


def build(log: bool = True) -> Tools:
    """Build every binary into the cache unless already there. Idempotent, seconds when cached."""
    try:
        return locate()
    except ToolsMissingError:
        pass
    go = _go()
    kube_version = versions()["kubernetes"]

    def fill(staging: Path) -> None:
        timings: dict[str, float] = {}
        for module in MODULES:
            ldflags = BASE_LDFLAGS
            if module.name == "kube":
                ldflags = _kube_ldflags(kube_version)
            elif module.name == "helm":  # otherwise `helm version` says v3.22, no patch
                helm = versions()["helm"]
                ldflags += f" -X helm.sh/helm/v3/internal/version.version={helm}"
            timings[module.name] = _build_module(go, module, staging, ldflags, log)
        (staging / "manifest.json").write_text(
            json.dumps({"versions": versions(), "build_seconds": timings}, indent=2) + "\n"
        )

    _build_into(bin_dir(), fill)
    return locate()


def _build_into(final: Path, fill: Callable[[Path], None]) -> None:
    """Fill a staging folder beside ``final`` and rename it into place, so a half-built
    folder is never seen under its final name; the Go sources copied in are dropped."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{final.name}.partial-", dir=final.parent))
    try:
        fill(staging)
        shutil.rmtree(staging / "src")
        if final.exists():  # another process finished first; keep theirs
            shutil.rmtree(staging)
        else:
            staging.rename(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _build_module(go: str, module: GoModule, out_dir: Path, ldflags: str, log: bool) -> float:
    """``go build`` one consumer module's commands into ``out_dir``; returns the seconds."""
    # Build from a copy: the package folder may be read-only (site-packages).
    src = out_dir / "src" / module.name
    src.mkdir(parents=True)
    for name in ("go.mod", "go.sum"):
        shutil.copyfile(GOTOOLS / module.name / name, src / name)
    started = time.monotonic()
    if log:
        print(
            f"[infleet dev tools] building {module.name}: "
            f"{', '.join(b for b, _ in module.binaries)}",
            flush=True,
        )
    # One `go build` per module for all its commands: they share compiled packages.
    if len(module.binaries) == 1:
        ((name, pkg),) = module.binaries
        out = str(out_dir / name)
        pkgs = [pkg]
    else:
        out = str(out_dir) + os.sep
        pkgs = [pkg for _, pkg in module.binaries]
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-buildvcs=false -mod=readonly")
    proc = subprocess.run(
        [go, "build", *BUILD_FLAGS, "-ldflags", ldflags, "-o", out, *pkgs],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
        raise ToolsBuildError(f"go build of {module.name} failed:\n{tail}")
    return round(time.monotonic() - started, 1)


# --- a test-only S3-compatible server -------------------------------------------------------

S3_SERVER = GoModule("s3", (("versitygw", "github.com/versity/versitygw/cmd/versitygw"),))
"""versitygw, a real S3 gateway over a folder, for the tests of the s3:// model fetch. Kept
out of MODULES and of their hash, so adding or bumping it never rebuilds the cluster."""


def s3_server_path() -> Path:
    digest = hashlib.sha256(f"recipe={RECIPE} arch={platform.machine()}\n".encode())
    for name in ("go.mod", "go.sum"):
        digest.update((GOTOOLS / S3_SERVER.name / name).read_bytes())
    return cache_root() / "bin" / f"s3-{digest.hexdigest()[:16]}" / "versitygw"


def s3_server(build: bool = False, log: bool = True) -> Path:
    """The cached versitygw binary; built first when ``build`` (about a minute on 2 cores)."""
    path = s3_server_path()
    if path.is_file():
        return path
    if not build:
        version = pinned_version(S3_SERVER.name, "github.com/versity/versitygw")
        raise ToolsMissingError(
            f"the test S3 server (versitygw {version}) is not built (expected {path}); "
            "build it with `infleet dev tools`"
        )
    go = _go()

    def fill(staging: Path) -> None:
        _build_module(go, S3_SERVER, staging, BASE_LDFLAGS, log)

    _build_into(path.parent, fill)
    return path
