"""ACE-Step 1.5 files -> ComfyUI MODEL / CLIP / VAE, every network built with ComfyUI's operations and attention
(`ace_step.loading.v15_checkpoint.load_ace_step15` finds and reads the tensors of every file kind users have).

Dtypes follow ComfyUI's own loaders: the DiT's weights in the dtype `weight_dtype` asks for (default: what ComfyUI
picks for the device among bf16 / fp32), computed in what `unet_manual_cast` decides; the text encoder and the LM in
bf16 where the device computes it well, else fp32; the VAE in ComfyUI's VAE dtype for the device (fp16, bf16, fp32,
as ComfyUI's 1.5 VAE). Weights go to the offload devices; ComfyUI moves them when a node runs the model.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import comfy.model_management as mm
import torch

from ..ace_step.loading.v15_checkpoint import inspect_ace_step15, load_ace_step15
from . import v15_silence
from .operations import (diffusion_attention, diffusion_operations, text_encoder_attention, text_encoder_operations,
                         vae_operations)
from .paths import comfyui_root
from .v15_clip import AceStep15Clip
from .v15_models import INFERENCE_DTYPES, ComfyCallableAceStep15, model_patcher
from .v15_vae import AceStep15Vae

log = logging.getLogger(__name__)
VAE_DTYPES = [torch.float16, torch.bfloat16, torch.float32]  # ComfyUI's working dtypes for the 1.5 VAE


def _text_dtype(device) -> torch.dtype:
    return torch.bfloat16 if mm.should_use_bf16(device) else torch.float32


def _vae_dtype() -> torch.dtype:
    return mm.vae_dtype(mm.vae_device(), VAE_DTYPES)


def _silence(dit_weights: Path, vae: Optional[AceStep15Vae]) -> v15_silence.SilenceLatent:
    def from_vae():
        return v15_silence.from_posterior_mean(vae.silence_mean, vae.vae.encoder_context, vae.samples_per_frame)

    silence = v15_silence.choose(dit_weights, from_vae if vae is not None else None)
    if silence is None:
        raise ValueError("ACE-Step 1.5 needs its silence latent (the VAE's encoding of silence, its input when a song "
                         "has no reference audio) and none was found: connect the ACE-Step 1.5 VAE to this loader's "
                         f"vae input, or put the original {v15_silence.FILE_NAME} (from the acestep-v15-* model "
                         "folder) next to the diffusion model file")
    log.info("ACE-Step 1.5 silence latent: %s", silence.source)
    return silence


def _dit_options(weight_dtype: str) -> tuple[dict, dict, dict, object]:
    """(dtype, operations, attention) entries for the DiT and its compute dtype."""
    unet_dtype, compute_dtype, ops = diffusion_operations(weight_dtype, mm.get_torch_device(), INFERENCE_DTYPES)
    return {"dit": unet_dtype}, {"dit": ops}, {"dit": diffusion_attention}, compute_dtype


def _text_options() -> tuple[dict, dict, dict]:
    dtypes = {"text_encoder": _text_dtype(mm.text_encoder_device()), "lm": _text_dtype(mm.get_torch_device())}
    ops = {name: text_encoder_operations() for name in dtypes}
    attention = {name: text_encoder_attention for name in dtypes}
    return dtypes, ops, attention


def _clip(models) -> AceStep15Clip:
    return AceStep15Clip(models.text_encoder, models.text_tokenizer, models.lm,
                         models.lm_tokenizer if models.lm is not None else None)


def load_checkpoint(path: Path, weight_dtype: str = "default", variant: Optional[str] = None) -> tuple:
    """(MODEL, CLIP, VAE) from an all-in-one ACE-Step 1.5 checkpoint or an original Hugging Face folder (`variant`:
    the DiT folder to use when it holds several, e.g. "acestep-v15-sft")."""
    info = inspect_ace_step15(path, variant)
    components = ["dit", "text_encoder", "vae", "tokenizers"] + (["lm"] if "lm" in info.components else [])
    dtypes, ops, attention, compute_dtype = _dit_options(weight_dtype)
    text_dtypes, text_ops, text_attention = _text_options()
    models = load_ace_step15(
        path, components=tuple(components), dtype={**dtypes, **text_dtypes, "vae": _vae_dtype()},
        device=mm.unet_offload_device(), operations={**ops, **text_ops, "vae": vae_operations()},
        attention={**attention, **text_attention}, dit_cls=ComfyCallableAceStep15, comfyui_root=comfyui_root(),
        variant=variant)
    vae = AceStep15Vae(models.vae)
    silence = _silence(dit_weights_path(models.info), vae)
    return with_variant(model_patcher(models.dit, compute_dtype, silence), models.info), _clip(models), vae


def load_diffusion_model(path: Path, weight_dtype: str = "default", vae: Optional[AceStep15Vae] = None):
    """MODEL from an ACE-Step 1.5 DiT file; `vae` computes the silence latent when neither a silence_latent.pt
    beside the file nor the host ComfyUI provides one."""
    dtypes, ops, attention, compute_dtype = _dit_options(weight_dtype)
    models = load_ace_step15(path, components=("dit",), dtype=dtypes, device=mm.unet_offload_device(),
                             operations=ops, attention=attention, dit_cls=ComfyCallableAceStep15)
    return with_variant(model_patcher(models.dit, compute_dtype, _silence(dit_weights_path(models.info), vae)),
                        models.info)


def with_variant(patcher, info):
    """Records on the MODEL which DiT variant its file or folder name (or a tiny demo file's metadata) says it is
    (`v15_layout.VariantGuess`; kind None when unknown): the base-only tasks check it."""
    patcher.model.variant_guess = info.variant
    return patcher


def load_text_encoders(text_encoder: Path, lm: Optional[Path] = None) -> AceStep15Clip:
    """CLIP from the Qwen3-Embedding-0.6B file and, optionally, a 5 Hz LM file."""
    paths = [text_encoder] + ([lm] if lm is not None else [])
    components = ("text_encoder", "tokenizers") + (("lm",) if lm is not None else ())
    dtypes, ops, attention = _text_options()
    models = load_ace_step15(paths, components=components, dtype=dtypes, device=mm.text_encoder_offload_device(),
                             operations=ops, attention=attention, comfyui_root=comfyui_root())
    return _clip(models)


def load_vae(path: Path) -> AceStep15Vae:
    models = load_ace_step15(path, components=("vae",), dtype={"vae": _vae_dtype()}, device=mm.vae_offload_device(),
                             operations={"vae": vae_operations()})
    return AceStep15Vae(models.vae)


def dit_weights_path(info) -> Path:
    """Where the DiT's weights were read from (the first file), to look for silence_latent.pt beside them."""
    return Path(info.files["dit"][0])
