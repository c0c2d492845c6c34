#!/usr/bin/env bash
# Prepares what runs aarch64 code on an x86-64 host, idempotently:
#   - Debian's aarch64 cross compiler (TVM exports the engine's .so with it),
#   - Debian's qemu-user-static (runs aarch64 programs without binfmt or a VM),
#   - an arm64 root with Debian's python3.11 and aarch64 wheels of the TVM runtime and numpy
#     (the TVM builder's accuracy gate) and of what `infleet serve` imports (pydantic,
#     httptools, uvloop, orjson, prometheus_client: the dev cluster's emulated arm64 class
#     serves from it), plus an `infleet` entry point in usr/local/bin. infleet itself is not
#     installed there: it is pure Python, and whoever runs it puts the checkout on PYTHONPATH.
#     Cached outside the clone and keyed by the versions, so a second run is instant.
# Prints the root's path on its last line. Needs root (apt-get) the first time only.
#
# Use: ROOT=$(hack/arm64-sysroot.sh | tail -n1); export INFLEET_ARM64_ROOT=$ROOT
# Versions: TVM_VERSION/TVM_FFI_VERSION/NUMPY_VERSION and the serving packages' default to the
# build venv's own.
set -euo pipefail

PY=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$here/.venv/bin/python" ] && PY=${PYTHON:-$here/.venv/bin/python}
pkgver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || echo "$2"; }
TVM_VERSION=${TVM_VERSION:-$(pkgver apache-tvm 0.27.0.post1)}
TVM_FFI_VERSION=${TVM_FFI_VERSION:-$(pkgver apache-tvm-ffi 0.1.15.post2)}
NUMPY_VERSION=${NUMPY_VERSION:-$(pkgver numpy 2.4.6)}
ML_DTYPES_VERSION=${ML_DTYPES_VERSION:-$(pkgver ml_dtypes 0.6.0)}
# What `infleet serve` (and the `infleet` command line that starts it) imports, pinned to the
# venv's versions so the emulated server runs the code the tests ran here.
SERVE_PINS="pydantic==$(pkgver pydantic 2.14.3) pydantic_core==$(pkgver pydantic_core 2.50.4)
    annotated-types==$(pkgver annotated-types 0.8.0)
    typing-inspection==$(pkgver typing-inspection 0.4.5)
    typing_extensions==$(pkgver typing_extensions 4.16.0) httptools==$(pkgver httptools 0.9.0)
    uvloop==$(pkgver uvloop 0.23.0) orjson==$(pkgver orjson 3.13.0)
    prometheus_client==$(pkgver prometheus_client 0.26.0)"
# The interpreter and the shared libraries it and the wheels load, and coreutils (sleep, cat...:
# what pods of the emulated class may run besides python); no maintainer scripts run.
debs="libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libffi8 libbz2-1.0 liblzma5 libnsl2 libtirpc3 libdb5.3
      libssl3 libuuid1 libcrypt1 libsqlite3-0 libncursesw6 libtinfo6 libreadline8 libzstd1 libgssapi-krb5-2 libkrb5-3 libk5crypto3 libkrb5support0 libcom-err2 libkeyutils1
      libpython3.11-minimal libpython3.11-stdlib python3.11-minimal python3.11
      coreutils libacl1 libattr1 libgmp10 libselinux1 libpcre2-8-0"
serve_key=$(echo $SERVE_PINS $debs | sha256sum | cut -c1-8)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/infleet
ROOT=$CACHE/arm64-root-py311-tvm$TVM_VERSION-ffi$TVM_FFI_VERSION-np$NUMPY_VERSION-serve$serve_key

sudo_() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

if ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
    sudo_ apt-get update -qq
    sudo_ env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user-static >/dev/null
fi

if [ -f "$ROOT/.complete" ]; then echo "$ROOT"; exit 0; fi

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    sudo_ dpkg --add-architecture arm64
fi
sudo_ apt-get update -qq
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -qq $(for d in $debs; do echo "$d:arm64"; done))
mkdir -p "$work/root"
for d in "$work"/*.deb; do dpkg -x "$d" "$work/root"; done
"$PY" -m pip install -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
    --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 \
    --platform manylinux_2_24_aarch64 --platform manylinux_2_27_aarch64 \
    --platform manylinux_2_28_aarch64 --target "$work/root/opt/infleet/site" \
    "apache-tvm==$TVM_VERSION" "apache-tvm-ffi==$TVM_FFI_VERSION" "numpy==$NUMPY_VERSION" \
    "ml_dtypes==$ML_DTYPES_VERSION" $SERVE_PINS
# The compiler library is never loaded (TVM_USE_RUNTIME_LIB=1); dropping it saves 240 MB.
rm -f "$work/root/opt/infleet/site/tvm/lib/libtvm_compiler.so"
mkdir -p "$work/root/usr/local/bin"
cat > "$work/root/usr/local/bin/infleet" <<'EOF'
#!/usr/bin/python3.11
# infleet's entry point in the arm64 root. The package comes from PYTHONPATH (a checkout):
# it is pure Python, so the emulated interpreter runs the same code as the host.
import sys

from infleet.cli import main

sys.exit(main())
EOF
chmod 755 "$work/root/usr/local/bin/infleet"
# Bytecode compiled here (same 3.11 magic) spares every emulated start compiling the standard
# library and the wheels under qemu; file names as the emulated interpreter sees them.
if "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    "$PY" -m compileall -q -j0 -s "$work/root" -p / \
        "$work/root/usr/lib/python3.11" "$work/root/opt/infleet/site" >/dev/null || true
fi
mkdir -p "$CACHE"
rm -rf "$ROOT.partial"
mv "$work/root" "$ROOT.partial"
touch "$ROOT.partial/.complete"
mv "$ROOT.partial" "$ROOT"
echo "$ROOT"
