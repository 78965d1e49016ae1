#!/usr/bin/env bash
# The main job: set up (idempotent), start ComfyUI with the pack, generate a song from the workflow, print its path.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
source "$ROOT/scripts/env.sh"
exec "$PY" "$ROOT/scripts/run_workflow.py" "$ROOT/workflows/api/ace_step_song.json" "$@"
