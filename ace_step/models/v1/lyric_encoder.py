"""The Conformer lyric encoder of ACE-Step v1 (tech report §3.2, "adopted from SongGen"; reference doc 1.3).

A WeNet/CosyVoice-style Conformer reduced to what the checkpoint uses: no convolution module, no macaron FFN.

    x = LayerNorm(Linear(emb)) * sqrt(d)                    (input "LinearEmbed")
    each block:  x += RelPosMHSA(LayerNorm(x));  x += FFN(LayerNorm(x))     (pre-LN, FFN = Linear-SiLU-Linear)
    out = LayerNorm(x)                                       ("after_norm")

Self-attention uses Transformer-XL relative positions with the ESPnet sinusoidal table:
    score(i, j) = [(q_i + u) . k_j  +  (q_i + v) . W_pos pe(i - j)] / sqrt(d_k)
Attribute names mirror the checkpoint keys under `model.diffusion_model.lyric_encoder.` so that state dicts
load directly and the original pipeline's ERG hooks on `encoders[i].self_attn.linear_q` apply.
"""
import math
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class LyricEncoderConfig:
    input_size: int = 1024  # width of the lyric token embeddings fed in
    hidden_size: int = 1024  # model width ("output_size")
    num_heads: int = 16
    linear_units: int = 4096  # FFN hidden width
    num_blocks: int = 6

    @classmethod
    def full_size(cls) -> "LyricEncoderConfig":
        return cls()

    @classmethod
    def tiny(cls) -> "LyricEncoderConfig":
        return cls(input_size=64, hidden_size=64, num_heads=4, linear_units=128, num_blocks=2)

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple]) -> "LyricEncoderConfig":
        """Shapes of the encoder's own state dict (keys like `encoders.0.self_attn.pos_bias_u`)."""
        hidden, input_size = shapes["embed.out.0.weight"]
        blocks = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("encoders."))
        heads, _ = shapes["encoders.0.self_attn.pos_bias_u"]  # [heads, d_k]: heads are readable here
        units = shapes["encoders.0.feed_forward.w_1.weight"][0]
        return cls(input_size=input_size, hidden_size=hidden, num_heads=heads, linear_units=units, num_blocks=blocks)


def relative_position_table(length: int, dim: int, device=None) -> torch.Tensor:
    """ESPnet relative sinusoidal encodings [2*length-1, dim] (float32), rows for relative positions
    length-1, ..., 1, 0, -1, ..., -(length-1); even columns sin, odd columns cos (base 10000)."""
    rel = torch.arange(length - 1, -length, -1, dtype=torch.float32, device=device)
    inv_freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * -(math.log(10000.0) / dim))
    angles = rel[:, None] * inv_freq[None, :]
    return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)


def relative_to_absolute(scores: torch.Tensor) -> torch.Tensor:
    """[..., L, 2L-1] scores indexed by relative-table row -> [..., L, L] indexed by key position.

    Query i and key j are i-j apart, which is table row (L-1) - i + j, so entry (i, j) sits at flat offset
    (L-1) + i*(2L-2) + j of each contiguous [L, 2L-1] matrix: a strided view, no copy (same result as the
    Transformer-XL pad-and-reshape "rel_shift").
    """
    length = scores.shape[-2]
    scores = scores.contiguous()
    *lead_strides, row_stride, _ = scores.stride()
    return scores.as_strided(
        (*scores.shape[:-1], length), (*lead_strides, row_stride - 1, 1), scores.storage_offset() + length - 1
    )


class RelPositionSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.linear_q = nn.Linear(dim, dim)
        self.linear_k = nn.Linear(dim, dim)
        self.linear_v = nn.Linear(dim, dim)
        self.linear_out = nn.Linear(dim, dim)
        self.linear_pos = nn.Linear(dim, dim, bias=False)
        # Transformer-XL's global content (u) and position (v) biases, one vector per head.
        self.pos_bias_u = nn.Parameter(torch.empty(num_heads, self.head_dim))
        self.pos_bias_v = nn.Parameter(torch.empty(num_heads, self.head_dim))
        nn.init.xavier_uniform_(self.pos_bias_u)
        nn.init.xavier_uniform_(self.pos_bias_v)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # [B, L, H*d] -> [B, L, H, d]
        return t.unflatten(-1, (self.num_heads, self.head_dim))

    def forward(self, x: torch.Tensor, pos_table: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """x [B, L, D]; pos_table [2L-1, D]; key_mask bool [B, L] (True = real token) or None."""
        q = self._heads(self.linear_q(x))  # [B, L, H, d]
        k = self._heads(self.linear_k(x)).transpose(1, 2)  # [B, H, L, d]
        v = self._heads(self.linear_v(x)).transpose(1, 2)
        p = self._heads(self.linear_pos(pos_table)).transpose(0, 1)  # [H, 2L-1, d]

        q_u = (q + self.pos_bias_u.to(q.dtype)).transpose(1, 2)
        q_v = (q + self.pos_bias_v.to(q.dtype)).transpose(1, 2)
        content = q_u @ k.transpose(-2, -1)  # [B, H, L, L]
        position = relative_to_absolute(q_v @ p.transpose(-2, -1))  # [B, H, L, 2L-1] -> [B, H, L, L]
        scores = (content + position) / math.sqrt(self.head_dim)

        if key_mask is None:
            weights = scores.softmax(dim=-1)
        else:
            # Padded keys get no weight. A row with no real key at all (empty lyrics: one token with mask 0)
            # would be NaN after softmax; the original zeroes it, leaving only linear_out's bias.
            hidden = ~key_mask[:, None, None, :]
            weights = scores.masked_fill(hidden, float("-inf")).softmax(dim=-1).masked_fill(hidden, 0.0)
        out = (weights @ v).transpose(1, 2).flatten(2)  # [B, L, H*d], heads in order
        return self.linear_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w_1 = nn.Linear(dim, hidden)
        self.w_2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    """Pre-LN block: self-attention then FFN (ff scale 1.0, since there is no macaron half-FFN)."""

    def __init__(self, dim: int, num_heads: int, linear_units: int):
        super().__init__()
        self.self_attn = RelPositionSelfAttention(dim, num_heads)
        self.feed_forward = FeedForward(dim, linear_units)
        self.norm_mha = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm_ff = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x, pos_table, key_mask):
        x = x + self.self_attn(self.norm_mha(x), pos_table, key_mask)
        return x + self.feed_forward(self.norm_ff(x))


class LinearEmbed(nn.Module):
    """Input layer: Linear -> LayerNorm, then scaled by sqrt(width) (ESPnet's x-scale of the pos. encoding)."""

    def __init__(self, input_size: int, dim: int):
        super().__init__()
        self.out = nn.Sequential(nn.Linear(input_size, dim), nn.LayerNorm(dim, eps=LAYER_NORM_EPS))
        self.scale = math.sqrt(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x) * self.scale


class LyricEncoder(nn.Module):
    def __init__(self, config: LyricEncoderConfig):
        super().__init__()
        self.config = config
        self.embed = LinearEmbed(config.input_size, config.hidden_size)
        self.encoders = nn.ModuleList(
            ConformerLayer(config.hidden_size, config.num_heads, config.linear_units) for _ in range(config.num_blocks)
        )
        self.after_norm = nn.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS)

    def working_bytes(self, length: int, batch: int = 1) -> int:
        """Peak memory of `forward` on [batch, length] tokens beyond the weights. The attention's [B, H, L, L]
        tensors dominate: content and position scores (the latter 2L-1 wide), their sum and its softmax, in the
        activation dtype (with a mask, also its filled copies); measured at a little over 5·B·H·L² elements without
        a mask, so 6 here (the linear layers add only B·L·width)."""
        element = next(self.parameters()).element_size()
        c = self.config
        width = 4 * c.hidden_size + c.linear_units
        return element * batch * (6 * c.num_heads * length * length + length * width)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: embedded lyric tokens [B, L, input_size]; mask [B, L] (nonzero = real token) or None (attend to
        all, as ComfyUI does). Returns [B, L, hidden_size]; rows at padded positions are meaningless."""
        x = self.embed(x)
        # The table is float32 math, then cast to the activation dtype as the original's cached table is.
        pos_table = relative_position_table(x.shape[1], self.config.hidden_size, device=x.device).to(x.dtype)
        key_mask = None if mask is None else mask.to(device=x.device) != 0
        for layer in self.encoders:
            x = layer(x, pos_table, key_mask)
        return self.after_norm(x)
