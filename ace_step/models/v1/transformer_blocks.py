"""Building blocks of the ACE-Step v1 diffusion transformer (tech report §3.2: a Sana-style linear DiT).

Each `LinearTransformerBlock` (reference doc 1.2) is
    h = RMSNorm(x)*(1+scale_msa)+shift_msa;  x += gate_msa * LinearSelfAttention(h)      (ReLU linear attention)
    x += CrossAttention(x, cond)                                  (softmax; no norm, no gate, raw residual)
    h = RMSNorm(x)*(1+scale_mlp)+shift_mlp;  x += gate_mlp * GLUMBConv(h)                (1-D conv FFN)
with the six modulation vectors shared by all blocks (adaLN-single) plus a per-block learned offset.
Module names mirror the checkpoint (`attn.to_q`, `cross_attn.to_out.0`, `ff.depth_conv.conv`, ...).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

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

    def __init__(self, dim: int, num_heads: int, head_dim: int):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        inner = num_heads * head_dim
        self.to_q = nn.Linear(dim, inner)
        self.to_k = nn.Linear(dim, inner)
        self.to_v = nn.Linear(dim, inner)
        self.to_out = nn.ModuleList([nn.Linear(inner, dim)])


class LinearSelfAttention(_Projections):
    """ReLU linear attention over latent frames (Sana "LiteLA"), RoPE on q and k.

    Per head: out_i = sum_j v_j (k_j . q_i) / (sum_j k_j . q_i + 1e-15), with q, k after ReLU, no 1/sqrt(d)
    scaling, computed in float32 (linear attention's sums overflow/underflow easily in half precision).
    """

    def forward(self, x: torch.Tensor, rope: tuple, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x [B, T, dim]; rope = (cos, sin) for the T latent positions; mask [B, T] float or None."""
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
        # The original clips to the fp16 range (its autocast check is always true, see reference doc 1.2).
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
                kv: Optional[tuple] = None) -> torch.Tensor:
        """x [B, T, dim]; cond [B, S, dim]; key_mask bool [B, S] (True = attend) or None; kv: `key_value(cond,
        rope_cond)` computed beforehand, or None."""
        q = apply_rope(split_heads(self.to_q(x), self.num_heads), *rope_x)
        k, v = self.key_value(cond, rope_cond) if kv is None else kv
        attn_mask = None if key_mask is None else key_mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.to_out[0](out.transpose(1, 2).flatten(2))


class _Conv1dHolder(nn.Module):
    """Gives the checkpoint's `<name>.conv.weight` nesting."""

    def __init__(self, conv: nn.Conv1d):
        super().__init__()
        self.conv = conv

    def forward(self, x):
        return self.conv(x)


class PointwiseConv1d(nn.Conv1d):
    """A kernel-1 Conv1d (checkpoint layout [out, in, 1]) applied to time-last input [B, T, in] as a matrix product:
    on CPU about 1.4x faster than conv1d's path, bit-identical there. Called as a module, so forward hooks
    (unmerged LoRA, ERG-style scaling) still see it."""

    time_last = True

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[..., 0], self.bias)


class GLUMBConv(nn.Module):
    """Gated 1-D conv FFN along time: 1x1 conv (dim -> 2*hidden) + SiLU, depthwise k=3 conv, split into
    value and gate, value * SiLU(gate), 1x1 conv (hidden -> dim, no bias). The 1x1 convs work time-last."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.inverted_conv = _Conv1dHolder(PointwiseConv1d(dim, 2 * hidden))
        self.depth_conv = _Conv1dHolder(nn.Conv1d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden))
        self.point_conv = _Conv1dHolder(PointwiseConv1d(hidden, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, T, dim]
        h = F.silu(self.inverted_conv(x))
        value, gate = self.depth_conv(h.transpose(1, 2)).chunk(2, dim=1)
        return self.point_conv((value * F.silu(gate)).transpose(1, 2))


class LinearTransformerBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int, ff_hidden: int):
        super().__init__()
        self.attn = LinearSelfAttention(dim, num_heads, head_dim)
        self.cross_attn = CrossAttention(dim, num_heads, head_dim)
        self.ff = GLUMBConv(dim, ff_hidden)
        # Learned offsets for (shift, scale, gate) x (attention, FFN), added to the shared timestep vector.
        self.scale_shift_table = nn.Parameter(torch.randn(6, dim) / dim**0.5)

    def forward(self, x, cond, temb, rope_x, rope_cond, latent_mask=None, cond_key_mask=None, cross_kv=None):
        """x [B, T, dim]; cond [B, S, dim]; temb [B, 6*dim] (t_block output); cross_kv: the cross-attention's
        `key_value(cond, rope_cond)` if computed beforehand."""
        mod = self.scale_shift_table[None].to(temb.dtype) + temb.unflatten(1, (6, -1))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)  # each [B, 1, dim]

        x = x + gate_msa * self.attn(modulate(rms_norm(x), shift_msa, scale_msa), rope_x, latent_mask)
        x = x + self.cross_attn(x, cond, rope_x, rope_cond, cond_key_mask, cross_kv)
        return x + gate_mlp * self.ff(modulate(rms_norm(x), shift_mlp, scale_mlp))
