"""The pack's ComfyUI nodes: thin translations between ComfyUI types and the `ace_step` core."""
from .save_audio import SaveAudio

NODES = [SaveAudio]
