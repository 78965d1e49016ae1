# Shared locations for the scripts; sourced, not run.
ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PACK_DIRNAME=comfyui-acestep-studio
if [ -n "${COMFYUI_PATH:-}" ]; then
  COMFYUI_PATH_FROM_USER=1
else
  COMFYUI_PATH="$ROOT/.comfyui"
fi
export COMFYUI_PATH
