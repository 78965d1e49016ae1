"""Building blocks of the ACE-Step v1 diffusion transformer (tech report arXiv 2506.00045 §3.2: a Sana-style linear
DiT; original code: ace-step/ACE-Step `acestep/models/ace_step_transformer.py`, `attention.py`).

Each `LinearTransformerBlock` is
    h = RMSNorm(x)*(1+scale_msa)+shift_msa;  x += gate_msa * LinearSelfAttention(h)      (ReLU linear attention)
    x += CrossAttention(x, cond)                                  (softmax; no norm, no gate, raw residual)
    h = RMSNorm(x)*(1+scale_mlp)+shift_mlp;  x += gate_mlp * GLUMBConv(h)                (1-D conv FFN)
with the six modulation vectors shared by all blocks (adaLN-single) plus a per-block learned offset.
Module names mirror the checkpoint (`attn.to_q`, `cross_attn.to_out.0`, `ff.depth_conv.conv`, ...). Layers come from
the injected `operations`, the cross-attention's softmax from the injected `attention` (see `..operations`).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..operations import TorchOps, cast_to, sdpa_attention, with_conv_forward
from .rope import apply_rope

RMS_EPS = 1e-6
LINEAR_ATTN_EPS = 1e-15  # denominator guard of the linear attention, as in the original
FP16_MAX = 65504.0


def rms_norm(x: torch.Tensor) -> torch.Tensor:
    """RMSNorm without affine weights (eps 1e-6), as all norms of the DiT are."""
    return F.rms_norm(x, (x.shape[-1],), eps=RMS_EPS)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def split_heads(t: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[B, L, H*d] -> [B, H, L, d] (channel c = head * d + i, heads in order)."""
    return t.unflatten(-1, (num_heads, -1)).transpose(1, 2)


class _Projections(nn.Module):
    """q, k, v and output projections with the checkpoint's names (`to_q`, `to_k`, `to_v`, `to_out.0`)."""

    def __init__(self, dim: int, num_heads: int, head_dim: int, dtype=None, device=None, operations=TorchOps,
                 attention=sdpa_attention):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.attention = attention
        inner = num_heads * head_dim
        self.to_q = operations.Linear(dim, inner, dtype=dtype, device=device)
        self.to_k = operations.Linear(dim, inner, dtype=dtype, device=device)
        self.to_v = operations.Linear(dim, inner, dtype=dtype, device=device)
        self.to_out = nn.ModuleList([operations.Linear(inner, dim, dtype=dtype, device=device)])


class LinearSelfAttention(_Projections):
    """ReLU linear attention over latent frames (Sana "LiteLA"), RoPE on q and k.

    Per head: out_i = sum_j v_j (k_j . q_i) / (sum_j k_j . q_i + 1e-15), with q, k after ReLU, no 1/sqrt(d)
    scaling, computed in float32 (linear attention's sums overflow/underflow easily in half precision).
    """

    def forward(self, x: torch.Tensor, rope: tuple, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [B, T, dim]; rope = (cos, sin) for the T latent positions; mask [B, T] float or None. Linear attention
        has no softmax, so it does not go through the injected attention function."""
        q = apply_rope(split_heads(self.to_q(x), self.num_heads), *rope)  # [B, H, T, d]
        k = apply_rope(split_heads(self.to_k(x), self.num_heads), *rope)
        v = split_heads(self.to_v(x), self.num_heads)
        if mask is not None:
            # Original semantics: padded frames are zeroed in q, k and v (so they neither read nor are read).
            m = mask[:, None, :, None].to(q.dtype)
            q, k, v = q * m, k * m, v * m
        q, k, v = F.relu(q).float(), F.relu(k).float(), v.float()

        kv = k.transpose(-2, -1) @ v  # [B, H, d, d]: sum_j k_j v_j^T
        k_sum = k.sum(dim=-2, keepdim=True)  # [B, H, 1, d]
        numerator = q @ kv  # [B, H, T, d]
        denominator = (q * k_sum).sum(dim=-1, keepdim=True)  # [B, H, T, 1]
        out = (numerator / (denominator + LINEAR_ATTN_EPS)).to(x.dtype)

        out = self.to_out[0](out.transpose(1, 2).flatten(2))
        # The original clips to the fp16 range: the autocast check guarding its clip is always true
        # (ace-step/ACE-Step `acestep/models/attention.py`, CustomLiteLAProcessor2_0).
        return out.clamp(-FP16_MAX, FP16_MAX)


class CrossAttention(_Projections):
    """Softmax attention from latent frames (queries, RoPE at frame positions) to the condition sequence
    (keys, RoPE at condition positions 0..S-1), scale 1/sqrt(head_dim).

    The checkpoint also holds add_{q,k,v}_proj / to_add_out (diffusers' joint-attention extras); nothing ever calls
    them, so they are not modules here (see transformer.unused_checkpoint_shapes)."""

    def key_value(self, cond: torch.Tensor, rope_cond: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys (RoPE applied) and values of the condition, each [B, H, S, d]: they depend on the condition alone,
        so a sampler may compute them once per run and pass them to `forward` as `kv`."""
        k = apply_rope(split_heads(self.to_k(cond), self.num_heads), *rope_cond)
        return k, split_heads(self.to_v(cond), self.num_heads)

    def forward(self, x, cond, rope_x, rope_cond, key_mask: Optional[torch.Tensor] = None,
                kv: Optional[tuple] = None, transformer_options: Optional[dict] = None) -> torch.Tensor:
        """x [B, T, dim]; cond [B, S, dim]; key_mask additive float [B, 1, 1, S] or None; kv: `key_value(cond,
        rope_cond)` computed beforehand, or None."""
        q = apply_rope(split_heads(self.to_q(x), self.num_heads), *rope_x)
        k, v = self.key_value(cond, rope_cond) if kv is None else kv
        out = self.attention(q, k, v, self.num_heads, mask=key_mask, skip_reshape=True,
                             transformer_options=transformer_options or {})
        return self.to_out[0](out)


class _Conv1dHolder(nn.Module):
    """Gives the checkpoint's `<name>.conv.weight` nesting."""

    def __init__(self, conv: nn.Module):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x)


def _time_last_pointwise(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """A kernel-1 conv (checkpoint layout [out, in, 1]) on time-last input [B, T, in] as a matrix product: on CPU
    about 1.4x faster than conv1d's path, bit-identical there."""
    return F.linear(x, weight[..., 0], bias)


def pointwise_conv1d(operations, in_channels: int, out_channels: int, bias: bool = True, dtype=None, device=None):
    """A kernel-1 `operations.Conv1d` taking time-last input. Called as a module, so forward hooks (ERG-style
    scaling, unmerged LoRA) and ComfyUI's weight casting and patches still apply."""
    cls = with_conv_forward(operations.Conv1d, _time_last_pointwise, "PointwiseConv1d")
    conv = cls(in_channels, out_channels, 1, bias=bias, dtype=dtype, device=device)
    conv.time_last = True
    return conv


class GLUMBConv(nn.Module):
    """Gated 1-D conv FFN along time: 1x1 conv (dim -> 2*hidden) + SiLU, depthwise k=3 conv, split into
    value and gate, value * SiLU(gate), 1x1 conv (hidden -> dim, no bias). The 1x1 convs work time-last."""

    def __init__(self, dim: int, hidden: int, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        self.inverted_conv = _Conv1dHolder(pointwise_conv1d(operations, dim, 2 * hidden, dtype=dtype, device=device))
        self.depth_conv = _Conv1dHolder(operations.Conv1d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden,
                                                          dtype=dtype, device=device))
        self.point_conv = _Conv1dHolder(pointwise_conv1d(operations, hidden, dim, bias=False, dtype=dtype,
                                                         device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, dim]
        h = F.silu(self.inverted_conv(x))
        value, gate = self.depth_conv(h.transpose(1, 2)).chunk(2, dim=1)
        return self.point_conv((value * F.silu(gate)).transpose(1, 2))


class LinearTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int, ff_hidden: int, dtype=None, device=None,
                 operations=TorchOps, attention=sdpa_attention):
        super().__init__()
        self.attn = LinearSelfAttention(dim, num_heads, head_dim, dtype, device, operations)
        self.cross_attn = CrossAttention(dim, num_heads, head_dim, dtype, device, operations, attention)
        self.ff = GLUMBConv(dim, ff_hidden, dtype, device, operations)
        # Learned offsets for (shift, scale, gate) x (attention, FFN), added to the shared timestep vector.
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim, dtype=dtype, device=device) / dim**0.5)

    def forward(self, x, cond, temb, rope_x, rope_cond, latent_mask=None, cond_key_mask=None, cross_kv=None,
                transformer_options: Optional[dict] = None):
        """x [B, T, dim]; cond [B, S, dim]; temb [B, 6*dim] (t_block output); cond_key_mask additive float
        [B, 1, 1, S] or None; cross_kv: the cross-attention's `key_value(cond, rope_cond)` if computed beforehand."""
        mod = cast_to(self.scale_shift_table, temb.dtype, temb.device)[None] + temb.unflatten(1, (6, -1))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)  # each [B, 1, dim]

        x = x + gate_msa * self.attn(modulate(rms_norm(x), shift_msa, scale_msa), rope_x, latent_mask)
        x = x + self.cross_attn(x, cond, rope_x, rope_cond, cond_key_mask, cross_kv, transformer_options)
        return x + gate_mlp * self.ff(modulate(rms_norm(x), shift_mlp, scale_mlp))
