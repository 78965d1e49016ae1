"""The Conformer lyric encoder of ACE-Step v1 (tech report arXiv 2506.00045 §3.2, "adopted from SongGen"; original code:
ace-step/ACE-Step `acestep/models/lyrics_utils/` and `acestep/models/ace_step_transformer.py`).

A WeNet/CosyVoice-style Conformer reduced to what the checkpoint uses: no convolution module, no macaron FFN.

    x = LayerNorm(Linear(emb)) * sqrt(d)                    (input "LinearEmbed")
    each block:  x += RelPosMHSA(LayerNorm(x));  x += FFN(LayerNorm(x))     (pre-LN, FFN = Linear-SiLU-Linear)
    out = LayerNorm(x)                                       ("after_norm")

Self-attention uses Transformer-XL relative positions with the ESPnet sinusoidal table:
    score(i, j) = [(q_i + u) . k_j  +  (q_i + v) . W_pos pe(i - j)] / sqrt(d_k)
The softmax runs through the injected attention function (see `..operations`): the content term is its q·k, the
position term (divided by √d_k like the rest) its additive mask, together with the key padding.
Attribute names mirror the checkpoint keys under `model.diffusion_model.lyric_encoder.` so that state dicts
load directly and the original pipeline's ERG hooks on `encoders[i].self_attn.linear_q` apply.
"""
import math
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..operations import TorchOps, cast_to, sdpa_attention

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
    def __init__(self, dim: int, num_heads: int, dtype=None, device=None, operations=TorchOps,
                 attention=sdpa_attention):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attention = attention
        self.linear_q = operations.Linear(dim, dim, dtype=dtype, device=device)
        self.linear_k = operations.Linear(dim, dim, dtype=dtype, device=device)
        self.linear_v = operations.Linear(dim, dim, dtype=dtype, device=device)
        self.linear_out = operations.Linear(dim, dim, dtype=dtype, device=device)
        self.linear_pos = operations.Linear(dim, dim, bias=False, dtype=dtype, device=device)
        # Transformer-XL's global content (u) and position (v) biases, one vector per head.
        self.pos_bias_u = nn.Parameter(torch.empty(num_heads, self.head_dim, dtype=dtype, device=device))
        self.pos_bias_v = nn.Parameter(torch.empty(num_heads, self.head_dim, dtype=dtype, device=device))
        if self.pos_bias_u.device.type != "meta":
            nn.init.xavier_uniform_(self.pos_bias_u)
            nn.init.xavier_uniform_(self.pos_bias_v)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # [B, L, H*d] -> [B, L, H, d]
        return t.unflatten(-1, (self.num_heads, self.head_dim))

    def forward(self, x: torch.Tensor, pos_table: torch.Tensor, key_mask: Optional[torch.Tensor],
                transformer_options: Optional[dict] = None) -> torch.Tensor:
        """x [B, L, D]; pos_table [2L-1, D]; key_mask bool [B, L] (True = real token) or None."""
        q = self._heads(self.linear_q(x))  # [B, L, H, d]
        k = self._heads(self.linear_k(x)).transpose(1, 2)  # [B, H, L, d]
        v = self._heads(self.linear_v(x)).transpose(1, 2)
        p = self._heads(self.linear_pos(pos_table)).transpose(0, 1)  # [H, 2L-1, d]

        q_u = (q + cast_to(self.pos_bias_u, q.dtype, q.device)).transpose(1, 2)
        q_v = (q + cast_to(self.pos_bias_v, q.dtype, q.device)).transpose(1, 2)
        # [B, H, L, 2L-1] -> [B, H, L, L], scaled as the content scores are inside the attention function.
        bias = relative_to_absolute(q_v @ p.transpose(-2, -1)) / math.sqrt(self.head_dim)
        if key_mask is not None:
            bias = bias.masked_fill(~key_mask[:, None, None, :], torch.finfo(bias.dtype).min)
        out = self.attention(q_u, k, v, self.num_heads, mask=bias, skip_reshape=True,
                             transformer_options=transformer_options or {})  # [B, L, H*d]
        if key_mask is not None:
            # A row with no real key at all (empty lyrics: one token with mask 0) gets no attention output in the
            # original (its softmax is NaN, zeroed), leaving only linear_out's bias.
            out = out * key_mask.any(dim=1).to(out.dtype)[:, None, None]
        return self.linear_out(out)


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        self.w_1 = operations.Linear(dim, hidden, dtype=dtype, device=device)
        self.w_2 = operations.Linear(hidden, dim, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w_2(F.silu(self.w_1(x)))


class ConformerLayer(nn.Module):
    """Pre-LN block: self-attention then FFN (ff scale 1.0, since there is no macaron half-FFN)."""

    def __init__(self, dim: int, num_heads: int, linear_units: int, dtype=None, device=None, operations=TorchOps,
                 attention=sdpa_attention):
        super().__init__()
        self.self_attn = RelPositionSelfAttention(dim, num_heads, dtype, device, operations, attention)
        self.feed_forward = FeedForward(dim, linear_units, dtype, device, operations)
        self.norm_mha = operations.LayerNorm(dim, eps=LAYER_NORM_EPS, dtype=dtype, device=device)
        self.norm_ff = operations.LayerNorm(dim, eps=LAYER_NORM_EPS, dtype=dtype, device=device)

    def forward(self, x, pos_table, key_mask, transformer_options=None):
        x = x + self.self_attn(self.norm_mha(x), pos_table, key_mask, transformer_options)
        return x + self.feed_forward(self.norm_ff(x))


class LinearEmbed(nn.Module):
    """Input layer: Linear -> LayerNorm, then scaled by sqrt(width) (ESPnet's x-scale of the pos. encoding)."""

    def __init__(self, input_size: int, dim: int, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        self.out = nn.Sequential(operations.Linear(input_size, dim, dtype=dtype, device=device),
                                 operations.LayerNorm(dim, eps=LAYER_NORM_EPS, dtype=dtype, device=device))
        self.scale = math.sqrt(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(x) * self.scale


class LyricEncoder(nn.Module):
    def __init__(self, config: LyricEncoderConfig, dtype=None, device=None, operations=TorchOps,
                 attention=sdpa_attention):
        super().__init__()
        self.config = config
        self.embed = LinearEmbed(config.input_size, config.hidden_size, dtype, device, operations)
        self.encoders = nn.ModuleList(
            ConformerLayer(config.hidden_size, config.num_heads, config.linear_units, dtype, device, operations,
                           attention) for _ in range(config.num_blocks)
        )
        self.after_norm = operations.LayerNorm(config.hidden_size, eps=LAYER_NORM_EPS, dtype=dtype, device=device)

    def working_bytes(self, length: int, batch: int = 1, element: int = 4) -> int:
        """Peak memory of `forward` on [batch, length] tokens beyond the weights, for activations of `element` bytes.
        The attention's [B, H, L, L] tensors dominate: position scores (2L-1 wide), their absolute-position bias,
        the content scores and their softmax inside the attention function; 6·B·H·L² elements (the linear layers add
        only B·L·width)."""
        c = self.config
        width = 4 * c.hidden_size + c.linear_units
        return element * batch * (6 * c.num_heads * length * length + length * width)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None,
                transformer_options: Optional[dict] = None) -> torch.Tensor:
        """x: embedded lyric tokens [B, L, input_size]; mask [B, L] (nonzero = real token) or None (attend to
        all, as ComfyUI does). Returns [B, L, hidden_size]; rows at padded positions are meaningless."""
        x = self.embed(x)
        # The table is float32 math, then cast to the activation dtype as the original's cached table is.
        pos_table = relative_position_table(x.shape[1], self.config.hidden_size, device=x.device).to(x.dtype)
        key_mask = None if mask is None else mask.to(device=x.device) != 0
        for layer in self.encoders:
            x = layer(x, pos_table, key_mask, transformer_options)
        return self.after_norm(x)
