#!/usr/bin/env bash
# The test command: set up (idempotent), then run the whole suite against the real ComfyUI.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
source "$ROOT/scripts/env.sh"
cd "$ROOT"
exec "$PY" -m pytest tests "$@"
