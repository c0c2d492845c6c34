#!/usr/bin/env bash
# Re-pins constraints.txt to what the current .venv holds (after a tested dependency change).
set -euo pipefail
cd "$(dirname "$0")/.."
{
  echo "# Exact versions CI installs (pip install -c constraints.txt). Regenerate with hack/lock.sh."
  .venv/bin/pip freeze --exclude-editable | grep -v '^-e'
} > constraints.txt
