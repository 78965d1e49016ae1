#!/usr/bin/env bash
# The main job: set up (idempotent), start ComfyUI with the pack, generate a song from the workflow, print its path.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/scripts/setup.sh"
source "$ROOT/scripts/env.sh"
ckpt=ace_step_v1_3.5b.safetensors
if [ ! -f "$COMFYUI_PATH/models/checkpoints/$ckpt" ]; then
  ckpt=ace_step_v1_tiny_demo.safetensors
  echo "NOTE: $COMFYUI_PATH/models/checkpoints/ace_step_v1_3.5b.safetensors not found: using the tiny random demo"
  echo "      checkpoint, which makes noise, not music. Put the real file there for songs."
fi
exec "$PY" "$ROOT/scripts/run_workflow.py" "$ROOT/workflows/api/ace_step_song.json" --checkpoint "$ckpt" "$@"
