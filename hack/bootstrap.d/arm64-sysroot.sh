#!/usr/bin/env bash
# The arm64 root for the TVM accuracy gate under qemu-user (idempotent; instant once cached).
set -euo pipefail
bash "$(dirname "$0")/../arm64-sysroot.sh" >/dev/null
