"""What the pack's networks are built with inside ComfyUI: `comfy.ops` layers and ComfyUI's attention.

`comfy.ops` layers cast weights left on the offload device (partial / low-VRAM loads) and apply weight patches such
as LoRA at call time; ComfyUI's attention brings its backends (`--use-sage-attention`, `--use-flash-attention`, ...)
and `transformer_options` patches. Dtypes follow ComfyUI's own loaders (`comfy/sd.py`, `nodes.py` UNETLoader):
weights in the dtype the loader asks for, computation in what `unet_manual_cast` decides for the device.
"""
from __future__ import annotations

import comfy.model_management as mm
import comfy.ops
import comfy.supported_models
import torch
from comfy.ldm.modules.attention import optimized_attention, optimized_attention_for_device

# The weight dtypes ComfyUI's UNETLoader offers, and whether the fast fp8 matrix multiply is asked for.
WEIGHT_DTYPES = {
    "default": (None, False),
    "fp8_e4m3fn": (torch.float8_e4m3fn, False),
    "fp8_e4m3fn_fast": (torch.float8_e4m3fn, True),
    "fp8_e5m2": (torch.float8_e5m2, False),
}
V1_INFERENCE_DTYPES = comfy.supported_models.ACEStep.supported_inference_dtypes

diffusion_attention = optimized_attention


def text_encoder_attention(q, k, v, heads, mask=None, **kwargs):
    """ComfyUI's choice for text encoders' short sequences (as its T5 makes it), picked for the call's device."""
    return optimized_attention_for_device(q.device, mask=mask is not None, small_input=True)(q, k, v, heads,
                                                                                              mask=mask, **kwargs)


def diffusion_operations(weight_dtype_choice: str, load_device, supported_dtypes) -> tuple:
    """(weight dtype, compute dtype or None, operations) for a diffusion model, as ComfyUI's loaders choose them."""
    weight_dtype, fast = WEIGHT_DTYPES[weight_dtype_choice]
    weight_dtype = weight_dtype or mm.unet_dtype(supported_dtypes=supported_dtypes)
    compute = mm.unet_manual_cast(weight_dtype, load_device, supported_dtypes)
    return weight_dtype, compute, comfy.ops.pick_operations(weight_dtype, compute, load_device=load_device,
                                                            fp8_optimizations=fast)


def text_encoder_operations():
    """ComfyUI's text encoders compute in the activations' dtype whatever their weights' (`manual_cast`)."""
    return comfy.ops.manual_cast


def vae_operations():
    """The VAE computes in its weights' dtype, fully loaded (ComfyUI loads VAEs whole)."""
    return comfy.ops.disable_weight_init
