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
    """Paths of the built binaries (the gateway's live in a folder of their own)."""

    bin_dir: Path
    kubernetes_version: str
    gateway: Gateway | None = None

    def path(self, binary: str) -> Path:
        return self.bin_dir / binary

    def gateway_tools(self) -> Gateway:
        return self.gateway if self.gateway is not None else locate_gateway()


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
    """The cached binaries and the gateway, or ToolsMissingError saying how to build them."""
    binaries = _locate_binaries()
    return Tools(binaries.bin_dir, binaries.kubernetes_version, locate_gateway())


def _locate_binaries() -> Tools:
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
    """Build every binary into the cache unless already there. Idempotent, seconds when cached:
    the cluster binaries, then the gateway (each only when missing)."""
    try:
        _locate_binaries()
    except ToolsMissingError:
        _build_binaries(log)
    gateway(build=True, log=log)
    return locate()


def _build_binaries(log: bool) -> None:
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


# --- the Gateway API implementation: Traefik ----------------------------------------------

GATEWAY = "traefik"
"""gotools/traefik pins Traefik and the Gateway API release of its CRDs. Built into a folder
of its own (``bin/gateway-<hash>/``), so adding or bumping it never rebuilds the cluster."""
TRAEFIK_MODULE = "github.com/traefik/traefik/v3"
GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api"
# Traefik's go.mod replaces this module with ./pkg/config/dynamic/ext, a nested module of its
# repository that the module zip leaves out (the zip of a module never holds nested modules). It
# is an empty extension point of Traefik's dynamic configuration; the build writes it from the
# names Traefik's sources use of it.
_TRAEFIK_EXT = ("github.com/traefik/traefik/dynamic/ext", "pkg/config/dynamic/ext")
_TRAEFIK_EXT_GO = """package ext

// Empty extension points of Traefik's dynamic configuration, written by infleet dev tools:
// the module zip leaves this nested module out.

// HTTP is a dynamic.HTTP extension.
type HTTP struct{}

// Router is a dynamic.Router extension.
type Router struct{}

// RouterIng is a RouterIng extension for ingress provider annotations.
type RouterIng struct{}

// ToRouter converts RouterIng to a Router.
func (r RouterIng) ToRouter() Router { return Router{} }
"""


@dataclass(frozen=True)
class Gateway:
    """Traefik's binary and the Gateway API CRDs it supports (standard channel)."""

    traefik: Path
    crds: tuple[Path, ...]
    traefik_version: str
    gateway_api_version: str


def gateway_versions() -> dict[str, str]:
    return {
        "traefik": pinned_version(GATEWAY, TRAEFIK_MODULE),
        "gateway-api": pinned_version(GATEWAY, GATEWAY_API_MODULE),
    }


def gateway_dir() -> Path:
    digest = hashlib.sha256(f"recipe={RECIPE} arch={platform.machine()}\n".encode())
    for name in ("go.mod", "go.sum"):
        digest.update((GOTOOLS / GATEWAY / name).read_bytes())
    digest.update(_TRAEFIK_EXT_GO.encode())
    return cache_root() / "bin" / f"gateway-{digest.hexdigest()[:16]}"


def locate_gateway() -> Gateway:
    """The cached Traefik build and CRDs, or ToolsMissingError saying how to build them."""
    directory = gateway_dir()
    manifest = directory / "manifest.json"
    versions = gateway_versions()
    if not manifest.is_file() or not (directory / "traefik").is_file():
        raise ToolsMissingError(
            f"the dev cluster's Gateway API implementation (Traefik {versions['traefik']}, "
            f"Gateway API {versions['gateway-api']} CRDs) is not built (expected in {directory}); "
            "build it with `infleet dev tools` (about 10 minutes on 2 cores)"
        )
    crds = tuple(directory / "crds" / name for name in json.loads(manifest.read_text())["crds"])
    return Gateway(directory / "traefik", crds, versions["traefik"], versions["gateway-api"])


def _pinned_sums() -> dict[str, str]:
    """go.sum of gotools/traefik: ``"<module> <version>[/go.mod]"`` -> ``h1:`` hash."""
    sums: dict[str, str] = {}
    for line in (GOTOOLS / GATEWAY / "go.sum").read_text().splitlines():
        if line.strip():
            module, version, digest = line.split()
            sums[f"{module} {version}"] = digest
    return sums


def _download(go: str, modules: list[str], workdir: Path) -> dict[str, dict[str, str]]:
    """``go mod download -json`` the pinned modules; each must match its pinned hashes."""
    versions = {TRAEFIK_MODULE: pinned_version(GATEWAY, TRAEFIK_MODULE),
                GATEWAY_API_MODULE: pinned_version(GATEWAY, GATEWAY_API_MODULE)}
    proc = subprocess.run(
        [go, "mod", "download", "-json", *(f"{m}@{versions[m]}" for m in modules)],
        cwd=workdir,
        capture_output=True, text=True, check=False,
    )
    infos: dict[str, dict[str, str]] = {}
    decoder = json.JSONDecoder()
    text = proc.stdout.strip()
    while text:  # a stream of JSON objects, one per module
        info, end = decoder.raw_decode(text)
        infos[info["Path"]] = info
        text = text[end:].strip()
    sums = _pinned_sums()
    for module in modules:
        info = infos.get(module)
        if info is None or info.get("Error"):
            detail = info.get("Error") if info else proc.stderr.strip()[-2000:]
            raise ToolsBuildError(f"go mod download {module}@{versions[module]} failed: {detail}")
        for key, field in ((f"{module} {info['Version']}", "Sum"),
                           (f"{module} {info['Version']}/go.mod", "GoModSum")):
            if sums.get(key) != info.get(field):
                raise ToolsBuildError(
                    f"{key} has hash {info.get(field)}, but gotools/{GATEWAY}/go.sum pins "
                    f"{sums.get(key)}: refusing to build from it"
                )
    return infos


def _gateway_api_crds(module_dir: Path) -> list[Path]:
    """The standard-channel CRD files, as config/crd/kustomization.yaml lists them."""
    import yaml

    crd_dir = module_dir / "config" / "crd"
    listed = yaml.safe_load((crd_dir / "kustomization.yaml").read_text())["resources"]
    files = [crd_dir / name for name in listed if name.startswith("standard/")]
    if not files:
        raise ToolsBuildError(f"{crd_dir}/kustomization.yaml lists no standard-channel CRDs")
    return files


def gateway(build: bool = False, log: bool = True) -> Gateway:
    """The cached Traefik and CRDs; built first when ``build`` (cold: see the README)."""
    try:
        return locate_gateway()
    except ToolsMissingError:
        if not build:
            raise
    go = _go()
    versions = gateway_versions()

    def fill(staging: Path) -> None:
        started = time.monotonic()
        if log:
            print(f"[infleet dev tools] building traefik {versions['traefik']} "
                  f"(Gateway API {versions['gateway-api']})", flush=True)
        infos = _download(go, [TRAEFIK_MODULE, GATEWAY_API_MODULE], staging)
        traefik_dir = Path(infos[TRAEFIK_MODULE]["Dir"])
        wanted = pinned_version(GATEWAY, GATEWAY_API_MODULE)
        required = re.search(rf"^\s*{re.escape(GATEWAY_API_MODULE)}\s+(v\S+)",
                             (traefik_dir / "go.mod").read_text(), re.MULTILINE)
        if required is None or required.group(1) != wanted:
            raise ToolsBuildError(
                f"traefik {versions['traefik']} requires {GATEWAY_API_MODULE} "
                f"{required.group(1) if required else '(none)'}, but gotools/{GATEWAY}/go.mod pins "
                f"{wanted}: pin the release Traefik supports"
            )
        # The module cache is read-only and Traefik must be the main module (its replace and
        # exclude directives count only there): build in a writable copy.
        src = staging / "src" / GATEWAY
        shutil.copytree(traefik_dir, src)
        for path in (src, *src.rglob("*")):
            if not path.is_symlink():
                path.chmod(path.stat().st_mode | 0o200)
        ext_path, ext_dir = _TRAEFIK_EXT
        if not (src / ext_dir).exists():
            (src / ext_dir).mkdir(parents=True)
            (src / ext_dir / "go.mod").write_text(f"module {ext_path}\n\ngo 1.24.0\n")
            (src / ext_dir / "ext.go").write_text(_TRAEFIK_EXT_GO)
        ldflags = f"{BASE_LDFLAGS} -X {TRAEFIK_MODULE}/pkg/version.Version={versions['traefik']}"
        proc = subprocess.run(
            [go, "build", *BUILD_FLAGS, "-ldflags", ldflags, "-o", str(staging / "traefik"),
             "./cmd/traefik"],
            cwd=src, env=dict(os.environ, CGO_ENABLED="0", GOFLAGS="-buildvcs=false -mod=readonly"),
            capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-30:])
            raise ToolsBuildError(f"go build of traefik failed:\n{tail}")
        (staging / "crds").mkdir()
        names = []
        for crd in _gateway_api_crds(Path(infos[GATEWAY_API_MODULE]["Dir"])):
            shutil.copyfile(crd, staging / "crds" / crd.name)
            names.append(crd.name)
        (staging / "manifest.json").write_text(json.dumps({
            "versions": versions, "crds": names,
            "build_seconds": round(time.monotonic() - started, 1),
        }, indent=2) + "\n")

    _build_into(gateway_dir(), fill)
    return locate_gateway()
