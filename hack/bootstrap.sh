#!/usr/bin/env bash
# Prepares a fresh machine (or refreshes a used one) for infleet development and tests:
# Debian packages, the .venv with pinned Python dependencies, and the cached cluster
# binaries. Idempotent: on a prepared machine it takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[bootstrap %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# --- Debian packages --------------------------------------------------------------------
APT_PACKAGES=()
while read -r pkg _; do
  [[ -z "$pkg" || "$pkg" == \#* ]] && continue
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || APT_PACKAGES+=("$pkg")
done < hack/apt-packages.txt
if ((${#APT_PACKAGES[@]})); then
  log "installing Debian packages: ${APT_PACKAGES[*]}"
  SUDO=""; [[ $(id -u) -eq 0 ]] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
fi

# --- Python -----------------------------------------------------------------------------
PYTHON=${PYTHON:-python3}
"$PYTHON" -c 'import sys; assert sys.version_info >= (3, 11), sys.version' \
  || { echo "infleet needs Python >= 3.11 (set PYTHON=...)" >&2; exit 1; }
if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.infleet-installed"
want="$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]] || ! .venv/bin/python -c 'import infleet.api' 2>/dev/null; then
  log "installing Python dependencies (constraints.txt)"
  .venv/bin/pip install -q --upgrade "pip>=24" 
  # strict editable mode: operator/ is a namespace subpackage (see pyproject.toml)
  .venv/bin/pip install -q -c constraints.txt -e ".[${INFLEET_EXTRAS:-dev,onnxruntime,tvm,zoo}]" \
    --config-settings editable_mode=strict
  echo "$want" > "$stamp"
fi

# --- extra steps (cluster binaries, arm64 sysroot) ----------------------------------------
for step in hack/bootstrap.d/*.sh; do
  [[ -e "$step" ]] || continue
  log "running $step"
  bash "$step"
done
log "ready"
