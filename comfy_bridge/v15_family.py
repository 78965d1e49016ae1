"""Telling ACE-Step 1.5 inputs from ACE-Step v1 ones (and from anything else) before they reach a network.

ComfyUI's sockets say only MODEL, LATENT, VAE, CLIP: a v1 latent or VAE plugged into a 1.5 node would otherwise fail
deep inside a layer with a shape error that names neither the cause nor the fix. The 1.5 song latent is
[batch, 64, frames] at 25 frames per second of 48 kHz audio; v1's is [batch, 8, 16, frames] at 44.1 kHz.
"""
from __future__ import annotations

import torch

from ..ace_step.models.v15.vae import OobleckConfig

_VAE = OobleckConfig.full_size()
SAMPLE_RATE = _VAE.sample_rate  # 48 kHz
SAMPLES_PER_FRAME = _VAE.hop_length  # 1920: 25 latent frames per second
CHANNELS = _VAE.latent_channels  # 64
V1_SHAPE = "[batch, 8, 16, frames]"
LATENT_FIX = ("connect an ACE-Step 1.5 latent: Empty ACE-Step 1.5 Latent Audio, Audio to ACE-Step 1.5 Latent, or a "
              "sampler fed by them")


def frames_for_seconds(seconds: float) -> int:
    """Latent frames for a song of `seconds` (ComfyUI's EmptyAceStep1.5LatentAudio: round(s · 48000 / 1920))."""
    return round(seconds * SAMPLE_RATE / SAMPLES_PER_FRAME)


def seconds_for_frames(frames: int) -> float:
    return frames * SAMPLES_PER_FRAME / SAMPLE_RATE


def describe_latent(latent) -> str:
    if not isinstance(latent, torch.Tensor):
        return type(latent).__name__
    shape = list(latent.shape)
    if latent.ndim == 4 and shape[2] == 16:
        # ComfyUI widens an all-zero latent to the model's channel count before sampling ([B, 8, 16, W] -> 64).
        return f"shape {shape}, an ACE-Step v1 song latent {V1_SHAPE}"
    return f"shape {shape}"


def check_latent(latent, what: str = "this LATENT"):
    """Refuses what is not an ACE-Step 1.5 song latent [batch, 64, frames] (a v1 latent, an image's, an empty one),
    naming what it is and what to connect instead."""
    ok = isinstance(latent, torch.Tensor) and latent.ndim == 3 and latent.shape[1] == CHANNELS and 0 not in latent.shape
    if not ok:
        raise ValueError(f"{what} ({describe_latent(latent)}) is not an ACE-Step 1.5 song latent [batch, {CHANNELS}, "
                         f"frames]: {LATENT_FIX}. ACE-Step v1 latents {V1_SHAPE} go to the v1 nodes and models.")
    return latent


def is_v1(obj) -> bool:
    """An ACE-Step v1 MODEL (the pack's or ComfyUI's own), CLIP or VAE of the pack."""
    import comfy.model_base

    from .models import AceStepClip, AceStepVae

    return isinstance(obj, (AceStepClip, AceStepVae)) or isinstance(getattr(obj, "model", None),
                                                                   comfy.model_base.ACEStep)


def wrong_object(what: str, got, source: str) -> TypeError:
    """The error for a MODEL / CLIP / VAE that is not the pack's ACE-Step 1.5 one, naming what arrived and where the
    right one comes from."""
    kind = f"an ACE-Step v1 {what}" if is_v1(got) else f"a {type(got).__name__}"
    return TypeError(f"this {what} is {kind}, not an ACE-Step 1.5 {what} of ACE-Step Studio: connect the {what} "
                     f"output of {source}")
