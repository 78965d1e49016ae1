"""The ACE-Step v1 nodes' input checks: an ACE-Step 1.5 MODEL, CLIP, VAE, LATENT or CONDITIONING (or a LATENT of no
ACE-Step shape) is refused at the node's start, naming what arrived, what to connect instead and which 1.5 node does
the job. The mirror of `v15_family.py`, whose latent description, CONDITIONING test and message builder it uses.

Without these, a 1.5 object in a v1 node fails deep inside a network (a missing attribute, a float tensor used as
token ids) or, worse, runs: the v1 text node encodes with a 1.5 CLIP, the original sampler takes a 1.5 latent's length
in v1 frames. ComfyUI's own v1 objects (its ACE-Step CLIP and MODEL) pass where the nodes take them today; only
what is ACE-Step 1.5, or no ACE-Step latent at all, is refused.
"""
from __future__ import annotations

from ..ace_step.models.v1.latent import CHANNELS, HEIGHT
from .v15_family import (
    V1_SHAPE,
    conditioning_family,
    describe_latent,
    family_error,
    is_v15_latent,
)

V1_LOADER = "Load ACE-Step Checkpoint"
V1_TEXT = "ACE-Step Tags + Lyrics"
LATENT_FIX = ("connect an ACE-Step latent (Empty ACE-Step Latent Audio, Audio to ACE-Step Latent, or a sampler fed by "
              "them)")


def for_15(node: str) -> str:
    return f"for ACE-Step 1.5 use {node}"


def is_v15(obj) -> bool:
    """An ACE-Step 1.5 MODEL (the pack's, or ComfyUI's own `ACEStep15` where the installed ComfyUI has one), or the
    pack's 1.5 CLIP or VAE."""
    import comfy.model_base

    from .v15_clip import AceStep15Clip
    from .v15_models import AceStep15Model
    from .v15_vae import AceStep15Vae

    models = tuple(c for c in (AceStep15Model, getattr(comfy.model_base, "ACEStep15", None)) if c is not None)
    return isinstance(obj, (AceStep15Clip, AceStep15Vae)) or isinstance(getattr(obj, "model", None), models)


def _refuse_15(what: str, got, source: str, use_15: str):
    if is_v15(got):
        raise family_error(what, f"an ACE-Step 1.5 {what}", f"an ACE-Step v1 {what}",
                           f"connect the {what} output of {source}; {for_15(use_15)}")


def require_model(model, use_15: str):
    """The MODEL unless it is ACE-Step 1.5 (ComfyUI's own v1 MODEL passes: the nodes that cannot run it say so)."""
    _refuse_15("MODEL", model, V1_LOADER, use_15)
    return model


def require_clip(clip, use_15: str):
    """The CLIP unless it is ACE-Step 1.5 (ComfyUI's own ACE-Step CLIP passes: the v1 text node takes it)."""
    _refuse_15("CLIP", clip, V1_LOADER, use_15)
    return clip


def require_vae(vae, use_15: str):
    """The pack's v1 VAE: the v1 audio nodes call its `encode_audio` / `decode_audio`, which no other VAE has (for
    those, core VAE Encode/Decode Audio)."""
    from .models import AceStepVae

    if isinstance(vae, AceStepVae):
        return vae
    _refuse_15("VAE", vae, V1_LOADER, use_15)
    raise family_error("VAE", f"a {type(vae).__name__}", "an ACE-Step v1 VAE of ACE-Step Studio",
                       f"connect the VAE output of {V1_LOADER} (for another VAE, use core VAE Encode/Decode Audio)")


def check_latent(latent, what: str = "this LATENT", use_15: str | None = None):
    """Refuses what is not an ACE-Step v1 song latent [batch, 8, 16, frames] (a 1.5 latent, an image's, an empty
    one) before it reaches a layer whose shape error would say nothing useful. `use_15`: the 1.5 node that does the
    job, named when a 1.5 latent arrives."""
    shape = tuple(latent.shape) if hasattr(latent, "shape") else None
    if shape is not None and len(shape) == 4 and shape[1:3] == (CHANNELS, HEIGHT) and 0 not in shape:
        return latent
    if is_v15_latent(latent):
        cause = "it is an ACE-Step 1.5 latent" + (f": {for_15(use_15)}" if use_15 else ", for the 1.5 nodes")
    else:
        cause = "it comes from an image or another audio model, or is empty"
    raise ValueError(f"{what} ({describe_latent(latent)}) is not an ACE-Step song latent {V1_SHAPE}: {cause}; "
                     f"for this node {LATENT_FIX}")


def require_conditioning(conditioning, use_15: str, what: str = "positive CONDITIONING"):
    """Refuses a 1.5 CONDITIONING (its lyrics are float embeddings where v1 takes token ids); anything else passes
    to the checks the original sampling makes itself."""
    if conditioning_family(conditioning) == "1.5":
        raise family_error(what, "an ACE-Step 1.5 CONDITIONING (ACE-Step 1.5 Text Encode)",
                           "an ACE-Step v1 CONDITIONING", f"connect {V1_TEXT} fed by the CLIP of {V1_LOADER}; "
                           f"{for_15(use_15)}", ValueError)
    return conditioning
