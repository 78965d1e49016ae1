"""What every network is built with: a namespace of layer classes (`operations`) and one attention function.

ComfyUI builds its own networks this way (`comfy/ldm/*`: constructors take `dtype`, `device`, `operations`, and
attention goes through `comfy.ldm.modules.attention.optimized_attention` with the call's `transformer_options`).
The core defaults to plain torch, so `ace_step` imports no ComfyUI module; the ComfyUI bridge passes `comfy.ops`
layers (they cast weights left on the offload device at call time and apply weight patches such as LoRA there) and
ComfyUI's attention (its backends, and `transformer_options["optimized_attention_override"]` patches).

Contract every network follows:
- every layer with weights comes from `operations` (`operations.Linear(...)`, never `nn.Linear(...)`), built with
  the `dtype` and `device` the network was given;
- weights and parameters that live outside a layer (modulation tables, learned tokens) are cast to the activations'
  dtype and device where they are used (`cast_to(p, x.dtype, x.device)`), as ComfyUI's own models do;
- activations run in the dtype of the input the network receives (ComfyUI's BaseModel casts inputs to the compute
  dtype, which with fp8 weights is not the weights' dtype): never cast activations to a parameter's dtype;
- attention runs through `attention(q, k, v, heads, mask=..., skip_reshape=True, transformer_options=...)`;
  masks are additive float masks (0 = attend, a large negative value = do not), broadcastable to
  [batch, heads, queries, keys], in the activations' dtype; bool masks are not accepted by every ComfyUI backend.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class TorchOps:
    """Plain torch layers: the default `operations`. The ComfyUI bridge passes `comfy.ops.disable_weight_init`,
    `comfy.ops.manual_cast` or what `comfy.ops.pick_operations` chooses, which subclass these same layers."""

    Linear = nn.Linear
    Conv1d = nn.Conv1d
    Conv2d = nn.Conv2d
    ConvTranspose1d = nn.ConvTranspose1d
    GroupNorm = nn.GroupNorm
    LayerNorm = nn.LayerNorm
    RMSNorm = nn.RMSNorm
    Embedding = nn.Embedding


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: Optional[torch.Tensor] = None,
                   attn_precision=None, skip_reshape: bool = False, skip_output_reshape: bool = False,
                   **kwargs) -> torch.Tensor:
    """Softmax attention, scale 1/sqrt(head width), with the signature and tensor layouts of ComfyUI's
    `optimized_attention` (`comfy/ldm/modules/attention.py`, `attention_pytorch`), so the bridge can pass that instead.

    q, k, v: [B, H, L, d] when `skip_reshape`, else [B, L, H·d]. mask: additive float, [Lq, Lk], [B, Lq, Lk] or
    [B, H or 1, Lq or 1, Lk]. Returns [B, Lq, H·d], or [B, H, Lq, d] when `skip_output_reshape`. Extra keywords
    (`transformer_options`, ...) are accepted and ignored, as ComfyUI's backends do."""
    if not skip_reshape:
        q, k, v = (t.unflatten(-1, (heads, -1)).transpose(1, 2) for t in (q, k, v))
    if mask is not None:
        if mask.ndim == 2:
            mask = mask[None]
        if mask.ndim == 3:
            mask = mask[:, None]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out if skip_output_reshape else out.transpose(1, 2).flatten(2)


def additive_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A bool or 0/1 mask (True = attend) as the additive float mask attention functions take."""
    keep = keep.bool() if keep.dtype != torch.bool else keep
    return torch.zeros(keep.shape, dtype=dtype, device=keep.device).masked_fill(~keep, torch.finfo(dtype).min)


def cast_to(t: torch.Tensor, dtype: Optional[torch.dtype], device) -> torch.Tensor:
    """A parameter that lives outside a layer, on the activations' device and in their dtype (ComfyUI:
    `comfy.model_management.cast_to`). A no-op when it is already there."""
    return t.to(device=device, dtype=dtype)
