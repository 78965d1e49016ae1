"""Telling ACE-Step 1.5 inputs from ACE-Step v1 ones (and from anything else) before they reach a network.

ComfyUI's sockets say only MODEL, LATENT, VAE, CLIP: a v1 latent or VAE plugged into a 1.5 node would otherwise fail
deep inside a layer with a shape error that names neither the cause nor the fix. The 1.5 song latent is
[batch, 64, frames] at 25 frames per second of 48 kHz audio; v1's is [batch, 8, 16, frames] at 44.1 kHz.

What both directions share lives here: the latent description, the CONDITIONING family test and the message
builder; the v1 nodes' own checks are in `v1_family.py`.
"""
from __future__ import annotations

import torch

from ..ace_step.models.v1 import latent as v1_latent
from ..ace_step.models.v15.vae import OobleckConfig
from .v15_clip import METADATA_KEY

_VAE = OobleckConfig.full_size()
SAMPLE_RATE = _VAE.sample_rate  # 48 kHz
SAMPLES_PER_FRAME = _VAE.hop_length  # 1920: 25 latent frames per second
CHANNELS = _VAE.latent_channels  # 64
V1_SHAPE = f"[batch, {v1_latent.CHANNELS}, {v1_latent.HEIGHT}, frames]"
V15_SHAPE = f"[batch, {CHANNELS}, frames]"
LATENT_FIX = ("connect an ACE-Step 1.5 latent: Empty ACE-Step 1.5 Latent Audio, Audio to ACE-Step 1.5 Latent, or a "
              "sampler fed by them")


def frames_for_seconds(seconds: float) -> int:
    """Latent frames for a song of `seconds` (ComfyUI's EmptyAceStep1.5LatentAudio: round(s · 48000 / 1920))."""
    return round(seconds * SAMPLE_RATE / SAMPLES_PER_FRAME)


def seconds_for_frames(frames: int) -> float:
    return frames * SAMPLES_PER_FRAME / SAMPLE_RATE


def is_v1_latent(latent) -> bool:
    # Only the height is tested: ComfyUI widens an all-zero latent to the model's channel count before sampling
    # ([B, 8, 16, W] -> 64), so a v1 empty latent sampled on a 1.5 MODEL still reads as v1 here.
    return isinstance(latent, torch.Tensor) and latent.ndim == 4 and latent.shape[2] == v1_latent.HEIGHT


def is_v15_latent(latent) -> bool:
    return isinstance(latent, torch.Tensor) and latent.ndim == 3 and latent.shape[1] == CHANNELS


def describe_latent(latent) -> str:
    """What a LATENT is, for an error message: its shape, and which ACE-Step family's song latent it is."""
    if not isinstance(latent, torch.Tensor):
        return type(latent).__name__
    shape = list(latent.shape)
    if is_v1_latent(latent):
        return f"shape {shape}, an ACE-Step v1 song latent {V1_SHAPE}"
    if is_v15_latent(latent):
        return f"shape {shape}, an ACE-Step 1.5 song latent {V15_SHAPE}"
    return f"shape {shape}"


def check_latent(latent, what: str = "this LATENT"):
    """Refuses what is not an ACE-Step 1.5 song latent [batch, 64, frames] (a v1 latent, an image's, an empty one),
    naming what it is and what to connect instead."""
    if not (is_v15_latent(latent) and 0 not in latent.shape):
        raise ValueError(f"{what} ({describe_latent(latent)}) is not an ACE-Step 1.5 song latent {V15_SHAPE}: "
                         f"{LATENT_FIX}. ACE-Step v1 latents {V1_SHAPE} go to the v1 nodes and models.")
    return latent


def is_v1(obj) -> bool:
    """An ACE-Step v1 MODEL (the pack's or ComfyUI's own), CLIP or VAE of the pack."""
    import comfy.model_base

    from .models import AceStepClip, AceStepVae

    return isinstance(obj, (AceStepClip, AceStepVae)) or isinstance(getattr(obj, "model", None),
                                                                   comfy.model_base.ACEStep)


def family_error(what: str, arrived: str, expected: str, fix: str, error=TypeError) -> Exception:
    """The one wording of every wrong-family refusal, both directions: what arrived, what the input takes, the fix."""
    return error(f"this {what} is {arrived}, not {expected}: {fix}")


def wrong_object(what: str, got, source: str) -> TypeError:
    """The error for a MODEL / CLIP / VAE that is not the pack's ACE-Step 1.5 one, naming what arrived and where the
    right one comes from."""
    kind = f"an ACE-Step v1 {what}" if is_v1(got) else f"a {type(got).__name__}"
    return family_error(what, kind, f"an ACE-Step 1.5 {what} of ACE-Step Studio", f"connect the {what} output of "
                        f"{source}")


def conditioning_family(conditioning) -> str | None:
    """"v1", "1.5" or None (neither can be told) for a CONDITIONING, from what the text encoders put beside the
    text states (not from widths, which the tiny test models share):

    - ACE-Step v1 (the pack's ACE-Step Tags + Lyrics, and ComfyUI's TextEncodeAceStepAudio, comfy/text_encoders/
      ace.py): "conditioning_lyrics" holds lyric token ids, an integer [batch, tokens] tensor, embedded by the DiT.
    - ACE-Step 1.5 (the pack's ACE-Step 1.5 Text Encode, which also stores its metadata under METADATA_KEY, and
      ComfyUI's TextEncodeAceStepAudio1.5, comfy/text_encoders/ace15.py): "conditioning_lyrics" holds the lyric
      encoder's float embeddings [batch, tokens, width].
    Every entry is looked at; the first that tells decides."""
    if not isinstance(conditioning, list):
        return None
    for entry in conditioning:
        extras = entry[1] if isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[1], dict) \
            else {}
        if METADATA_KEY in extras:
            return "1.5"
        lyrics = extras.get("conditioning_lyrics")
        if isinstance(lyrics, torch.Tensor):
            if lyrics.is_floating_point() and lyrics.ndim == 3:
                return "1.5"
            if not lyrics.is_floating_point():
                return "v1"
    return None


V1_CONDITIONING = "an ACE-Step v1 CONDITIONING (ACE-Step Tags + Lyrics or core TextEncodeAceStepAudio)"
V15_TEXT_FIX = "connect ACE-Step 1.5 Text Encode, fed by the ACE-Step 1.5 CLIP"


def refuse_v1_conditioning(conditioning, what: str = "CONDITIONING"):
    """Refuses a v1 CONDITIONING on a 1.5 input: the DiT would get lyric token ids where it embeds float states."""
    if conditioning_family(conditioning) == "v1":
        raise family_error(what, V1_CONDITIONING, "an ACE-Step 1.5 CONDITIONING", V15_TEXT_FIX, ValueError)
    return conditioning
