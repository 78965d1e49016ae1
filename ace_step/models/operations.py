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

import functools
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


class _CastToInput:
    """Casts a layer's weight and bias to the input's dtype and device at call time (ComfyUI's manual cast)."""

    def _cast(self, x: torch.Tensor):
        bias = None if getattr(self, "bias", None) is None else self.bias.to(device=x.device, dtype=x.dtype)
        return self.weight.to(device=x.device, dtype=x.dtype), bias


class ManualCastOps(TorchOps):
    """Plain torch layers that compute in the input's dtype whatever the weights' dtype (bf16 or fp8 storage, fp32
    compute), as `comfy.ops.manual_cast` does; for running the core without ComfyUI."""

    class Linear(_CastToInput, nn.Linear):
        def forward(self, x):
            return F.linear(x, *self._cast(x))

    class Conv1d(_CastToInput, nn.Conv1d):
        def forward(self, x):
            return self._conv_forward(x, *self._cast(x))

    class Conv2d(_CastToInput, nn.Conv2d):
        def forward(self, x):
            return self._conv_forward(x, *self._cast(x))

    class ConvTranspose1d(_CastToInput, nn.ConvTranspose1d):
        def forward(self, x):
            weight, bias = self._cast(x)
            return F.conv_transpose1d(x, weight, bias, self.stride, self.padding, self.output_padding, self.groups,
                                      self.dilation)

    class GroupNorm(_CastToInput, nn.GroupNorm):
        def forward(self, x):
            return F.group_norm(x, self.num_groups, *self._cast(x), self.eps)

    class LayerNorm(_CastToInput, nn.LayerNorm):
        def forward(self, x):
            weight, bias = self._cast(x) if self.weight is not None else (None, None)
            return F.layer_norm(x, self.normalized_shape, weight, bias, self.eps)

    class RMSNorm(_CastToInput, nn.RMSNorm):
        def forward(self, x):
            weight = self._cast(x)[0] if self.weight is not None else None
            return F.rms_norm(x, self.normalized_shape, weight, self.eps)

    class Embedding(nn.Embedding):
        """Looks rows up in the stored dtype (the caller casts the result, as with ComfyUI's Embedding)."""


@functools.lru_cache(maxsize=None)
def with_conv_forward(conv_class: type, conv_forward, name: str) -> type:
    """`conv_class` (a Conv1d/Conv2d of some `operations`) computing its output with `conv_forward(self, input,
    weight, bias)`. Torch's and ComfyUI's conv layers all end in `_conv_forward(input, weight, bias)` with the weight
    already cast and patched, so a different algorithm for the same convolution (a pointwise conv as a matrix
    product, a sub-pixel upsampling conv) keeps offloading and weight patches working."""
    return type(name, (conv_class,), {"_conv_forward": conv_forward, "__module__": conv_forward.__module__})


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
