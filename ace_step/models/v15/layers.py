"""The Qwen3-style pieces every ACE-Step 1.5 network is built from: rotary position tables, grouped-query attention
with per-head q/k RMSNorm, the SwiGLU MLP, the pre-norm transformer layer, and the attention masks they take.

One implementation serves the DiT's condition encoders, the audio-code pooler and detokenizer, the Qwen3 text encoder
and the Qwen3 5 Hz language model. Module attribute names are the checkpoint's (`q_proj`, `k_norm`, `gate_proj`,
`input_layernorm`, ...), as in huggingface/transformers `src/transformers/models/qwen3/modeling_qwen3.py` (4.57)
and comfyanonymous/ComfyUI `comfy/ldm/ace/ace_step15.py` @ e9d082a228febb6f79d1ee899d32a299da9b10ca.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..operations import TorchOps, additive_mask, sdpa_attention

RopeTables = Tuple[torch.Tensor, torch.Tensor]


def rope_tables(positions: torch.Tensor, head_dim: int, base: float, dtype: torch.dtype) -> RopeTables:
    """cos and sin tables [..., S, head_dim] for integer `positions` [..., S] (Su et al. 2021, RoFormer, in the
    "rotate half" layout Qwen3 uses: the angle of frequency k fills channels k and k + head_dim/2).

    Angles are computed in float32 (as transformers and ComfyUI do) and the tables returned in `dtype`."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim))
    angles = positions.to(torch.float32)[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rope(x: torch.Tensor, rope: RopeTables) -> torch.Tensor:
    """Rotates x [B, heads, S, D] by tables [S, D] (shared by the batch) or [B, S, D] (a position row per item)."""
    cos, sin = rope
    if cos.ndim == 3:
        cos, sin = cos[:, None], sin[:, None]
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def visibility(query_pos: torch.Tensor, key_pos: torch.Tensor, *, causal: bool = False,
               window: Optional[int] = None) -> torch.Tensor:
    """Which key each query may see (bool [..., Sq, Sk], True = visible), from the positions of both sides.

    `causal`: keys at later positions are hidden. `window`: keys further than `window` positions away are hidden
    (with `causal` only the past side remains), the symmetric band ACE-Step 1.5's DiT uses
    (comfy/ldm/ace/ace_step15.py: `abs(i - j) <= sliding_window`)."""
    diff = query_pos[..., :, None] - key_pos[..., None, :]
    keep = torch.ones_like(diff, dtype=torch.bool)
    if causal:
        keep &= diff >= 0
    if window is not None:
        keep &= diff.abs() <= window
    return keep


def attention_bias(keep: Optional[torch.Tensor], key_keep: Optional[torch.Tensor], dtype: torch.dtype
                   ) -> Optional[torch.Tensor]:
    """The additive mask [B or 1, 1, Sq, Sk] for a visibility pattern `keep` ([Sq, Sk] or [B, Sq, Sk]) and a
    key-padding row `key_keep` ([B, Sk], True = a real token); None when nothing is hidden."""
    if keep is None and key_keep is None:
        return None
    if keep is None:
        combined = key_keep[:, None, None, :]
    else:
        combined = keep if keep.ndim == 3 else keep[None]
        combined = combined[:, None]
        if key_keep is not None:
            combined = combined & key_keep[:, None, None, :]
    return additive_mask(combined, dtype)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), bias-free (Shazeer 2020, "GLU Variants Improve Transformer")."""

    def __init__(self, hidden_size: int, intermediate_size: int, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        self.gate_proj = operations.Linear(hidden_size, intermediate_size, bias=False, dtype=dtype, device=device)
        self.up_proj = operations.Linear(hidden_size, intermediate_size, bias=False, dtype=dtype, device=device)
        self.down_proj = operations.Linear(intermediate_size, hidden_size, bias=False, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Attention(nn.Module):
    """Grouped-query attention with RMSNorm on every query and key head (Qwen3), self or cross.

    Self-attention: keys and values come from `x`, RoPE is applied to queries and keys. Cross-attention: pass `kv`
    from `project_kv(memory)` (no RoPE), which a caller can compute once and reuse across calls. With a `cache`
    (one layer of `KVCache`), the new keys and values are written at `cache_slots` and attention reads the whole
    cache. K/V heads are repeated up to the query heads before the injected attention function, whose backends need
    equal head counts."""

    def __init__(self, hidden_size: int, num_heads: int, num_kv_heads: int, head_dim: int, eps: float = 1e-6,
                 dtype=None, device=None, operations=TorchOps, attention=sdpa_attention):
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.attention = attention
        self.q_proj = operations.Linear(hidden_size, num_heads * head_dim, bias=False, dtype=dtype, device=device)
        self.k_proj = operations.Linear(hidden_size, num_kv_heads * head_dim, bias=False, dtype=dtype, device=device)
        self.v_proj = operations.Linear(hidden_size, num_kv_heads * head_dim, bias=False, dtype=dtype, device=device)
        self.o_proj = operations.Linear(num_heads * head_dim, hidden_size, bias=False, dtype=dtype, device=device)
        self.q_norm = operations.RMSNorm(head_dim, eps=eps, dtype=dtype, device=device)
        self.k_norm = operations.RMSNorm(head_dim, eps=eps, dtype=dtype, device=device)

    def _heads(self, t: torch.Tensor, heads: int) -> torch.Tensor:
        return t.unflatten(-1, (heads, self.head_dim))

    def project_kv(self, source: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normed keys and values [B, kv_heads, S, head_dim] of `source` [B, S, hidden] (before RoPE)."""
        k = self.k_norm(self._heads(self.k_proj(source), self.num_kv_heads)).transpose(1, 2)
        v = self._heads(self.v_proj(source), self.num_kv_heads).transpose(1, 2)
        return k, v

    def _expand_kv(self, t: torch.Tensor) -> torch.Tensor:
        # Query head h reads kv head h // repeats (the order of repeat_interleave), without copying when repeats == 1.
        repeats = self.num_heads // self.num_kv_heads
        if repeats == 1:
            return t
        b, h, s, d = t.shape
        return t[:, :, None].expand(b, h, repeats, s, d).reshape(b, h * repeats, s, d)

    def forward(self, x: torch.Tensor, *, rope: Optional[RopeTables] = None, mask: Optional[torch.Tensor] = None,
                kv: Optional[Tuple[torch.Tensor, torch.Tensor]] = None, cache: Optional["LayerCache"] = None,
                cache_slots: Optional[torch.Tensor] = None,
                transformer_options: Optional[dict] = None) -> torch.Tensor:
        q = self.q_norm(self._heads(self.q_proj(x), self.num_heads)).transpose(1, 2)
        if kv is None:
            k, v = self.project_kv(x)
            if rope is not None:
                q, k = apply_rope(q, rope), apply_rope(k, rope)
            if cache is not None:
                k, v = cache.write(k, v, cache_slots)
        else:
            k, v = kv
        out = self.attention(q, self._expand_kv(k), self._expand_kv(v), self.num_heads, mask=mask,
                             skip_reshape=True, transformer_options=transformer_options or {})
        return self.o_proj(out)


@dataclass(frozen=True)
class StackConfig:
    """A stack of pre-norm Qwen3 layers (attention then SwiGLU, RMSNorm before each, residual around each).

    `sliding_window`: when set, even-index layers see only keys within that many positions (symmetric band), the
    pattern of the original ACE-Step 1.5 encoders' default `layer_types`; None = every layer sees every key."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    rms_norm_eps: float = 1e-6
    rope_base: float = 1_000_000.0
    sliding_window: Optional[int] = None

    def __post_init__(self):
        for name in ("hidden_size", "num_heads", "num_kv_heads", "head_dim", "intermediate_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"StackConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_layers < 0:
            raise ValueError(f"StackConfig.num_layers must be >= 0, got {self.num_layers}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"StackConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads})")
        if self.head_dim % 2:
            raise ValueError(f"StackConfig.head_dim must be even for RoPE, got {self.head_dim}")
        if self.sliding_window is not None and self.sliding_window < 0:
            raise ValueError(f"StackConfig.sliding_window must be >= 0 or None, got {self.sliding_window}")

    def window(self, index: int) -> Optional[int]:
        return self.sliding_window if index % 2 == 0 else None

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[int]], prefix: str = "", **fixed) -> "StackConfig":
        """Sizes from the tensors under `prefix` (`{prefix}layers.N.*`); `fixed` sets what shapes cannot tell
        (rms_norm_eps, rope_base, sliding_window)."""
        num_layers = count_layers(shapes, f"{prefix}layers.")
        if num_layers == 0:
            raise ValueError(f"no '{prefix}layers.0.*' tensors: not a transformer stack at '{prefix}'")
        attn = f"{prefix}layers.0.self_attn."
        hidden, heads, kv_heads, head_dim = attention_sizes(shapes, attn)
        return cls(hidden_size=hidden, num_layers=num_layers, num_heads=heads, num_kv_heads=kv_heads,
                   head_dim=head_dim, intermediate_size=shape(shapes, f"{prefix}layers.0.mlp.gate_proj.weight")[0],
                   **fixed)


def shape(shapes: Mapping[str, Sequence[int]], key: str) -> Tuple[int, ...]:
    """A tensor's shape from a state dict's shape map, with an error that names the missing key."""
    if key not in shapes:
        raise ValueError(f"missing tensor '{key}': the file is not this network's layout (or is truncated)")
    return tuple(shapes[key])


def count_layers(shapes: Mapping[str, Sequence[int]], prefix: str) -> int:
    """Number of `{prefix}N.` blocks (0 when none)."""
    indices = {int(k[len(prefix):].split(".", 1)[0]) for k in shapes if k.startswith(prefix)}
    if indices and indices != set(range(len(indices))):
        raise ValueError(f"'{prefix}N' blocks are not numbered 0..{len(indices) - 1}: {sorted(indices)}")
    return len(indices)


def attention_sizes(shapes: Mapping[str, Sequence[int]], prefix: str) -> Tuple[int, int, int, int]:
    """(input width, query heads, kv heads, head width) of the attention at `prefix` (q_norm's width is the head's)."""
    head_dim = shape(shapes, prefix + "q_norm.weight")[0]
    q_out, hidden = shape(shapes, prefix + "q_proj.weight")
    kv_out = shape(shapes, prefix + "k_proj.weight")[0]
    return hidden, q_out // head_dim, kv_out // head_dim, head_dim


class TransformerLayer(nn.Module):
    """x + attn(input_layernorm(x)), then + mlp(post_attention_layernorm(x)): the Qwen3 decoder layer and the
    ACE-Step 1.5 encoder layer (bidirectional or causal is the mask's business)."""

    def __init__(self, config: StackConfig, dtype=None, device=None, operations=TorchOps, attention=sdpa_attention):
        super().__init__()
        c = config
        self.self_attn = Attention(c.hidden_size, c.num_heads, c.num_kv_heads, c.head_dim, c.rms_norm_eps,
                                   dtype=dtype, device=device, operations=operations, attention=attention)
        self.mlp = SwiGLU(c.hidden_size, c.intermediate_size, dtype=dtype, device=device, operations=operations)
        self.input_layernorm = operations.RMSNorm(c.hidden_size, eps=c.rms_norm_eps, dtype=dtype, device=device)
        self.post_attention_layernorm = operations.RMSNorm(c.hidden_size, eps=c.rms_norm_eps, dtype=dtype,
                                                           device=device)

    def forward(self, x: torch.Tensor, rope: RopeTables, mask: Optional[torch.Tensor] = None,
                cache: Optional["LayerCache"] = None, cache_slots: Optional[torch.Tensor] = None,
                transformer_options: Optional[dict] = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), rope=rope, mask=mask, cache=cache, cache_slots=cache_slots,
                               transformer_options=transformer_options)
        return x + self.mlp(self.post_attention_layernorm(x))


def build_layers(config: StackConfig, dtype=None, device=None, operations=TorchOps,
                 attention=sdpa_attention) -> nn.ModuleList:
    return nn.ModuleList(TransformerLayer(config, dtype=dtype, device=device, operations=operations,
                                          attention=attention) for _ in range(config.num_layers))


def run_bidirectional(layers: nn.ModuleList, config: StackConfig, x: torch.Tensor,
                      key_keep: Optional[torch.Tensor] = None,
                      transformer_options: Optional[dict] = None) -> torch.Tensor:
    """Runs an encoder stack over x [B, S, H] with positions 0..S-1, every token seeing every other (apart from
    padding keys, `key_keep` [B, S] False, and the stack's sliding window on even layers)."""
    positions = torch.arange(x.shape[1], device=x.device)
    rope = rope_tables(positions, config.head_dim, config.rope_base, x.dtype)
    full = attention_bias(None, key_keep, x.dtype)
    windowed = None
    if config.sliding_window is not None and x.shape[1] > config.sliding_window + 1:
        windowed = attention_bias(visibility(positions, positions, window=config.sliding_window), key_keep, x.dtype)
    for index, layer in enumerate(layers):
        mask = windowed if config.window(index) is not None and windowed is not None else full
        x = layer(x, rope, mask, transformer_options=transformer_options)
    return x


class LayerCache:
    """One layer's slice of a `KVCache`: static keys and values [B, kv_heads, max_len, head_dim]."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor):
        self.keys, self.values = keys, values

    def write(self, k: torch.Tensor, v: torch.Tensor, slots: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Stores k, v [B, kv_heads, S, D] at cache positions `slots` [S] and returns the whole cache."""
        self.keys.index_copy_(2, slots, k.to(self.keys.dtype))
        self.values.index_copy_(2, slots, v.to(self.values.dtype))
        return self.keys, self.values
