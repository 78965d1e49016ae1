"""What every ACE-Step 1.5 node shares: its category and the checks that its CLIP and VAE inputs are the pack's
ACE-Step 1.5 ones (a v1 object, or another pack's, would fail later inside a network with an error that names
neither the cause nor the fix)."""
from ..comfy_bridge.v15_clip import AceStep15Clip
from ..comfy_bridge.v15_family import wrong_object
from ..comfy_bridge.v15_vae import AceStep15Vae
from .common import CATEGORY as PACK_CATEGORY

CATEGORY = f"{PACK_CATEGORY}/1.5"
LOADERS = "Load ACE-Step 1.5 Checkpoint or Load ACE-Step 1.5"


def require_clip(clip):
    if not isinstance(clip, AceStep15Clip):
        raise wrong_object("CLIP", clip, f"{LOADERS} Text Encoders (for ComfyUI's own ACE-Step 1.5 CLIP, use core "
                                         "TextEncodeAceStepAudio1.5)")
    return clip


def require_vae(vae):
    if not isinstance(vae, AceStep15Vae):
        raise wrong_object("VAE", vae, f"{LOADERS} VAE (for ComfyUI's own VAE, use core VAE Encode/Decode Audio)")
    return vae
