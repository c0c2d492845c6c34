#!/usr/bin/env bash
# Builds (once) the local control plane's Go binaries (kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, etcd, kwok, kwokctl, helm), the Gateway API implementation (Traefik,
# with the Gateway API CRDs) and the test S3 server (versitygw) into the user cache, each keyed
# by its pins in devcluster/gotools/*/go.mod. Seconds when already built; cold on 2 cores about
# 15-20 minutes for the cluster binaries plus 10-18 for Traefik. Everything comes from the Go
# module proxy, the Go toolchain included when the machine has none recent enough.
set -euo pipefail
cd "$(dirname "$0")/../.."

log() { printf '[cluster-tools %s] %s\n' "$(date +%H:%M:%S)" "$*"; }

if .venv/bin/infleet dev tools --check >/dev/null 2>&1; then
  .venv/bin/infleet dev tools --check
  exit 0
fi

want_go="go1.26.8"
go_ok() {  # Go >= 1.21 fetches the toolchain the go.mod files ask for by itself (GOTOOLCHAIN)
  local v
  v=$("$1" env GOVERSION 2>/dev/null) || return 1
  [[ "$v" =~ ^go1\.([0-9]+) ]] && (( BASH_REMATCH[1] >= 21 ))
}
GO=$(command -v go || true)
[[ -z "$GO" && -x /usr/local/go/bin/go ]] && GO=/usr/local/go/bin/go
if [[ -z "$GO" ]] || ! go_ok "$GO"; then
  cache="${INFLEET_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/infleet}/go/$want_go"
  if [[ ! -x "$cache/bin/go" ]]; then
    arch=$(uname -m); case "$arch" in x86_64) arch=amd64;; aarch64) arch=arm64;; esac
    log "no Go >= 1.21 here: fetching $want_go from the Go module proxy"
    mkdir -p "$cache.tmp"
    curl -fsSL -o "$cache.tmp/go.zip" \
      "https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-$want_go.linux-$arch.zip"
    python3 -m zipfile -e "$cache.tmp/go.zip" "$cache.tmp/x"
    rm -rf "$cache" && mv "$cache.tmp/x/golang.org/toolchain@v0.0.1-$want_go.linux-$arch" "$cache"
    rm -rf "$cache.tmp"
    chmod +x "$cache"/bin/* "$cache"/pkg/tool/*/*  # zipfile drops the mode bits
  fi
  export PATH="$cache/bin:$PATH"
fi
log "building the control-plane binaries and Traefik (cold: about 25-40 minutes on 2 cores)"
.venv/bin/infleet dev tools
