"""UMT5-base text encoder (encoder half only), the "genre"/tags encoder of ACE-Step v1.

ACE-Step feeds the tag prompt through google/umt5-base and uses the last hidden state (after the final norm) as the
text condition. This is a plain-torch encoder with the checkpoint's key layout (component prefix
`text_encoders.umt5base.` stripped):

    transformer.shared.weight
    transformer.encoder.block.N.layer.0.{layer_norm, SelfAttention.{q,k,v,o,relative_attention_bias}}
    transformer.encoder.block.N.layer.1.{layer_norm, DenseReluDense.{wi_0,wi_1,wo}}
    transformer.encoder.final_layer_norm.weight

T5 numerics, all on purpose:
- RMS norm without mean subtraction or bias, variance taken in fp32 (eps 1e-6);
- no 1/sqrt(d_kv) scaling of the attention logits (T5 folds it into the initialisation);
- relative-position bias, bidirectional buckets; UMT5 (unlike T5) has its own bias table in EVERY layer;
- gated-GELU feed-forward with the tanh approximation.

Like ComfyUI, the embeddings are looked up and the whole encoder is computed in fp32 by default, whatever the stored
weight dtype: with weights stored in another dtype, pass casting `operations` (ComfyUI's manual cast, or
`ManualCastOps`), which compute each layer in the activations' dtype. The softmax runs through the injected
attention function with the position bias as its additive mask; T5 does not scale the logits, so the keys are
multiplied by √d_kv beforehand (exact for d_kv = 64), as ComfyUI's T5 does.

ERG ("entropy rectifying guidance") for tags: the original pipeline multiplies the outputs of
`transformer.encoder.block[8].layer[0].SelfAttention.q` and of block 9 by 0.01 through forward hooks. Here that is
`model(ids, q_scale=erg_tag_q_scale(12))`; the q modules stay ordinary, hookable Linears.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ...sampling.erg import UMT5_BLOCKS, same_relative_depth
from ..operations import TorchOps, cast_to, sdpa_attention

EOS_ID = 1
PAD_ID = 0

@dataclass
class UMT5Config:
    vocab_size: int = 256384
    d_model: int = 768
    d_kv: int = 64
    num_heads: int = 12
    d_ff: int = 2048
    num_layers: int = 12
    relative_attention_num_buckets: int = 32
    # Not stored in any weight: fixed at the UMT5 value.
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6

    @classmethod
    def full_size(cls) -> "UMT5Config":
        return cls()

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[int]]) -> "UMT5Config":
        """Infers the config from key -> shape (prefix stripped). Heads come from the bias table's second dim."""
        vocab_size, d_model = shapes["transformer.shared.weight"]
        attn = "transformer.encoder.block.0.layer.0.SelfAttention."
        buckets, heads = shapes[attn + "relative_attention_bias.weight"]
        inner = shapes[attn + "q.weight"][0]
        d_ff = shapes["transformer.encoder.block.0.layer.1.DenseReluDense.wi_0.weight"][0]
        num_layers = 1 + max(int(k.split(".")[3]) for k in shapes if k.startswith("transformer.encoder.block."))
        return cls(vocab_size=vocab_size, d_model=d_model, d_kv=inner // heads, num_heads=heads, d_ff=d_ff,
                   num_layers=num_layers, relative_attention_num_buckets=buckets)


def unused_checkpoint_shapes(config: UMT5Config) -> dict[str, tuple]:
    """Checkpoint tensors of this component that the encoder never reads (CLIP-style scalar left by SDClipModel)."""
    return {"logit_scale": ()}


def erg_tag_q_scale(num_layers: int, scale: float = 0.01) -> dict[int, float]:
    """The ERG-tag q scales for an encoder of `num_layers` blocks.

    12 blocks (the real model) give the original {8: scale, 9: scale}. Other depths get the blocks at the same
    relative depth (`erg.same_relative_depth`), so tiny test models can run the same pipeline.
    """
    return {i: scale for i in same_relative_depth(*UMT5_BLOCKS, num_layers)}


class T5LayerNorm(nn.Module):
    """RMS norm: scale only, no mean subtraction, no bias; statistics in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6, dtype=None, device=None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype)
        return cast_to(self.weight, x.dtype, x.device) * x


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int = 32,
                             max_distance: int = 128) -> torch.Tensor:
    """Bidirectional T5 bucketing of (key - query) offsets.

    Half the buckets per direction; inside a direction, offsets below half of that are their own bucket, larger ones
    share log-spaced buckets up to max_distance (everything beyond lands in the last bucket). The float32 log
    formula is the one the model was trained with, so boundary offsets fall into the same buckets.
    """
    half = num_buckets // 2
    bucket = (relative_position > 0).long() * half  # keys after the query use the upper half
    distance = relative_position.abs()
    exact = half // 2
    # clamp_min(1) only avoids log(0); those offsets take the exact branch anyway.
    log_ratio = torch.log(distance.clamp_min(1).float() / exact) / math.log(max_distance / exact)
    far = exact + (log_ratio * (half - exact)).long()
    far = far.clamp_max(half - 1)
    return bucket + torch.where(distance < exact, distance, far)


class UMT5Attention(nn.Module):
    def __init__(self, cfg: UMT5Config, dtype=None, device=None, operations=TorchOps, attention=sdpa_attention):
        super().__init__()
        inner = cfg.num_heads * cfg.d_kv
        self.num_heads = cfg.num_heads
        self.d_kv = cfg.d_kv
        self.attention = attention
        self.q = operations.Linear(cfg.d_model, inner, bias=False, dtype=dtype, device=device)
        self.k = operations.Linear(cfg.d_model, inner, bias=False, dtype=dtype, device=device)
        self.v = operations.Linear(cfg.d_model, inner, bias=False, dtype=dtype, device=device)
        self.o = operations.Linear(inner, cfg.d_model, bias=False, dtype=dtype, device=device)
        self.relative_attention_bias = operations.Embedding(cfg.relative_attention_num_buckets, cfg.num_heads,
                                                            dtype=dtype, device=device)

    def position_bias(self, buckets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """[N, N] bucket ids -> [1, H, N, N] additive logit bias of this layer."""
        return self.relative_attention_bias(buckets).to(dtype).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, buckets: torch.Tensor, mask_bias: torch.Tensor | None,
                q_scale: float = 1.0, transformer_options: dict | None = None) -> torch.Tensor:
        b, n, _ = x.shape
        q = self.q(x)
        if q_scale != 1.0:
            q = q * q_scale  # ERG: flattens this layer's content attention (the position bias is untouched)
        q, k, v = (t.view(b, n, self.num_heads, self.d_kv).transpose(1, 2) for t in (q, self.k(x), self.v(x)))
        bias = self.position_bias(buckets, x.dtype)
        if mask_bias is not None:
            bias = bias + mask_bias
        # T5 has no 1/sqrt(d) scaling: undo the attention function's on the keys.
        out = self.attention(q, k * math.sqrt(self.d_kv), v, self.num_heads, mask=bias, skip_reshape=True,
                             transformer_options=transformer_options or {})
        return self.o(out)


class UMT5LayerSelfAttention(nn.Module):
    def __init__(self, cfg: UMT5Config, dtype=None, device=None, operations=TorchOps, attention=sdpa_attention):
        super().__init__()
        self.SelfAttention = UMT5Attention(cfg, dtype, device, operations, attention)
        self.layer_norm = T5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon, dtype, device)

    def forward(self, x, buckets, mask_bias, q_scale: float = 1.0, transformer_options=None):
        return x + self.SelfAttention(self.layer_norm(x), buckets, mask_bias, q_scale, transformer_options)


class T5DenseGatedGelu(nn.Module):
    def __init__(self, cfg: UMT5Config, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        self.wi_0 = operations.Linear(cfg.d_model, cfg.d_ff, bias=False, dtype=dtype, device=device)
        self.wi_1 = operations.Linear(cfg.d_model, cfg.d_ff, bias=False, dtype=dtype, device=device)
        self.wo = operations.Linear(cfg.d_ff, cfg.d_model, bias=False, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.wo(F.gelu(self.wi_0(x), approximate="tanh") * self.wi_1(x))


class UMT5LayerFF(nn.Module):
    def __init__(self, cfg: UMT5Config, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        self.DenseReluDense = T5DenseGatedGelu(cfg, dtype, device, operations)
        self.layer_norm = T5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon, dtype, device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.DenseReluDense(self.layer_norm(x))


class UMT5Block(nn.Module):
    def __init__(self, cfg: UMT5Config, dtype=None, device=None, operations=TorchOps, attention=sdpa_attention):
        super().__init__()
        # layer[0] = self-attention, layer[1] = feed-forward: indices are part of the checkpoint keys.
        self.layer = nn.ModuleList([UMT5LayerSelfAttention(cfg, dtype, device, operations, attention),
                                    UMT5LayerFF(cfg, dtype, device, operations)])

    def forward(self, x, buckets, mask_bias, q_scale: float = 1.0, transformer_options=None):
        return self.layer[1](self.layer[0](x, buckets, mask_bias, q_scale, transformer_options))


class UMT5Stack(nn.Module):
    def __init__(self, cfg: UMT5Config, dtype=None, device=None, operations=TorchOps, attention=sdpa_attention):
        super().__init__()
        self.block = nn.ModuleList([UMT5Block(cfg, dtype, device, operations, attention)
                                    for _ in range(cfg.num_layers)])
        self.final_layer_norm = T5LayerNorm(cfg.d_model, cfg.layer_norm_epsilon, dtype, device)


class _T5Transformer(nn.Module):
    def __init__(self, cfg: UMT5Config, dtype=None, device=None, operations=TorchOps, attention=sdpa_attention):
        super().__init__()
        self.shared = operations.Embedding(cfg.vocab_size, cfg.d_model, dtype=dtype, device=device)
        self.encoder = UMT5Stack(cfg, dtype, device, operations, attention)


class UMT5Encoder(nn.Module):
    """UMT5 encoder. `forward(input_ids [B,N], attention_mask [B,N] or None) -> last_hidden_state [B,N,d]`."""

    def __init__(self, config: UMT5Config, dtype=None, device=None, operations=TorchOps, attention=sdpa_attention):
        super().__init__()
        self.config = config
        self.transformer = _T5Transformer(config, dtype, device, operations, attention)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.transformer.encoder.block

    def working_bytes(self, tokens: int, rows: int = 1) -> int:
        """Peak memory of `forward` on [rows, tokens] ids beyond the weights, dominated by [N, N] tables: the int64
        relative-position buckets and their intermediates (measured at up to 48 bytes per entry) and one layer's
        [rows, H, N, N] float32 position bias and attention scores."""
        cfg = self.config
        return tokens * tokens * (48 + 8 * cfg.num_heads * rows) + 4 * rows * tokens * (4 * cfg.d_model + 3 * cfg.d_ff)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                q_scale: Mapping[int, float] | None = None, dtype: torch.dtype = torch.float32,
                transformer_options: dict | None = None) -> torch.Tensor:
        """Last hidden state after the final norm, [B, N, d_model], in `dtype` (fp32 by default, as ComfyUI).

        attention_mask: 1 = real token, 0 = padding; padded keys are excluded (query rows are still computed).
        q_scale: {block index: factor} multiplying that block's query projection output (ERG); None = plain pass.
        """
        cfg = self.config
        scales = dict(q_scale or {})
        for i in scales:
            if not 0 <= i < cfg.num_layers:
                raise ValueError(f"q_scale block {i} out of range for {cfg.num_layers} blocks")
        n = input_ids.shape[1]
        x = self.transformer.shared(input_ids).to(dtype)

        pos = torch.arange(n, device=input_ids.device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], cfg.relative_attention_num_buckets,
                                           cfg.relative_attention_max_distance)
        mask_bias = None
        if attention_mask is not None:
            # Additive key mask, [B, 1, 1, N]: the most negative finite value, like HF/ComfyUI (not -inf).
            keep = attention_mask.to(device=x.device).bool()[:, None, None, :]
            mask_bias = torch.zeros(keep.shape, dtype=dtype, device=x.device).masked_fill(~keep, torch.finfo(dtype).min)

        for i, block in enumerate(self.transformer.encoder.block):
            x = block(x, buckets, mask_bias, scales.get(i, 1.0), transformer_options)
        return self.transformer.encoder.final_layer_norm(x)


def comfy_attention_mask(ids: Sequence[int]) -> list[int]:
    """ComfyUI's mask for one token row: 1 up to and including the first EOS, 0 after it."""
    mask, seen_eos = [], False
    for t in ids:
        mask.append(0 if seen_eos else 1)
        seen_eos = seen_eos or t == EOS_ID
    return mask


@torch.no_grad()
def is_weighted(token_weights) -> bool:
    """Whether any (token, weight) pair carries a weight other than 1: such prompts also encode an empty row."""
    return any(float(w) != 1.0 for _, w in token_weights)


def encode_token_weights(model: UMT5Encoder, token_weights: Sequence[tuple[int, float]], *,
                         q_scale: Mapping[int, float] | None = None) -> torch.Tensor:
    """Encodes one tokenised prompt [(id, weight), ...] the way ComfyUI's CLIP encode does -> [1, N, d] fp32.

    If any weight differs from 1, an "empty" row [EOS, PAD, PAD, ...] of the same length is encoded in the same
    batch, and each weighted token's vector z becomes (z - z_empty) * w + z_empty, pulling it away from (w > 1) or
    towards (w < 1) what the encoder outputs at that position for no prompt.
    """
    if len(token_weights) == 0:
        raise ValueError("empty token list: tokenise with the EOS appended")
    device = model.transformer.shared.weight.device
    ids = [int(t) for t, _ in token_weights]
    weights = torch.tensor([float(w) for _, w in token_weights], dtype=torch.float32, device=device)
    weighted = is_weighted(token_weights)

    rows = [ids]
    if weighted:
        rows.append([EOS_ID] + [PAD_ID] * (len(ids) - 1))
    input_ids = torch.tensor(rows, dtype=torch.long, device=device)
    mask = torch.tensor([comfy_attention_mask(r) for r in rows], dtype=torch.long, device=device)
    out = model(input_ids, mask, q_scale=q_scale).float()

    z = out[:1]
    if weighted:
        z_empty = out[1:2]
        w = weights[None, :, None]
        z = torch.where(w != 1.0, (z - z_empty) * w + z_empty, z)
    return z
