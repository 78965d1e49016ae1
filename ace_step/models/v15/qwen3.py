"""Qwen3 (Qwen Team 2025, "Qwen3 Technical Report") as ACE-Step 1.5 uses it: the Qwen3-Embedding-0.6B text encoder
and the 5 Hz "planner" language models (0.6B, 1.7B, 4B) that write audio-code tokens, with a static KV cache.

Text encoder (how ACE-Step 1.5 reads it; comfy/text_encoders/ace15.py and comfy/text_encoders/llama.py in
comfyanonymous/ComfyUI @ 4dffde991f70238b017d98008a4b4b7251e5afe7, and acestep/handler.py `infer_text_embeddings` /
`infer_lyric_embeddings` in ace-step/ACE-Step-1.5 @ f30aee4c186c33b7b8a6ea59a4b7fc36f795b49f):
- the caption is the LAST hidden state AFTER the final norm, every position (`Qwen3Model.forward`), causal attention
  (ComfyUI passes the tokenizer's attention mask; a single caption has no padding);
- the lyrics are only the token embeddings, `embed_tokens(ids)` (`Qwen3Model.embed`), with no transformer layer and
  no norm (ComfyUI asks for intermediate layer 0, the input of layer 0, with `layer_norm_hidden_state=False`).

Language models: the same network plus logits. Every ACE-Step LM ties its output projection to `embed_tokens`
(ComfyUI `BaseQwen3.logits`; acestep.cpp `qwen3-lm.h` "tied lm_head"); a file with its own `lm_head.weight` is
supported too. Their vocabulary (217,204) holds Qwen3's 151,669 tokens, then the 64,000 audio codes
`<|audio_code_0|>`.. at ids 151,669..215,668 (ComfyUI `sample_manual_loop_no_classes`), then spare ids.

Batched generation (`KVCache`, `Qwen3Model.forward(cache=...)`): rows with different prompt lengths are LEFT padded
to one length; `key_padding` marks real tokens; each row's RoPE positions count its real tokens only; prefill writes
the prompt into cache slots 0..S-1 and each decode step writes one slot. Shapes stay fixed across decode steps
(keys are always the whole cache, hidden slots masked), so a step can be captured in a CUDA graph when the caller
passes `cache_slots`, `positions` and `key_padding` as tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..operations import TorchOps, cast_to, sdpa_attention
from .layers import LayerCache, StackConfig, attention_bias, build_layers, rope_tables, shape, visibility

AUDIO_CODE_FIRST_ID = 151_669
AUDIO_CODE_COUNT = 64_000


@dataclass(frozen=True)
class Qwen3Config:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = True

    def __post_init__(self):
        if self.vocab_size <= 0:
            raise ValueError(f"Qwen3Config.vocab_size must be positive, got {self.vocab_size}")
        _ = self.stack  # builds (so validates) the transformer sizes

    @property
    def stack(self) -> StackConfig:
        return StackConfig(hidden_size=self.hidden_size, num_layers=self.num_layers, num_heads=self.num_heads,
                           num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
                           intermediate_size=self.intermediate_size, rms_norm_eps=self.rms_norm_eps,
                           rope_base=self.rope_theta)

    @classmethod
    def full_size(cls, name: str) -> "Qwen3Config":
        """The real configs: 'embedding-0.6B' (Qwen3-Embedding-0.6B, the text encoder), 'lm-0.6B', 'lm-1.7B',
        'lm-4B' (acestep-5Hz-lm-*). Sources: comfy/text_encoders/llama.py `Qwen3_06B_ACE15_Config`,
        `Qwen3_2B_ACE15_lm_Config`, `Qwen3_4B_ACE15_lm_Config` (comfyanonymous/ComfyUI); the 0.6B LM's sizes from
        ServeurpersoCom/acestep.cpp src/qwen3-lm.h (its 0.6B defaults, vocab 217,204)."""
        if name not in FULL_SIZES:
            raise ValueError(f"unknown Qwen3 size '{name}'; choose one of {sorted(FULL_SIZES)}")
        return FULL_SIZES[name]

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[int]], **fixed) -> "Qwen3Config":
        """Sizes from a `Qwen3Model` state dict's shapes (keys `embed_tokens.weight`, `layers.N.*`, `norm.weight`) or a
        `Qwen3CausalLM`'s (`model.` in front, optional `lm_head.weight`: untied when present). `fixed` sets
        rms_norm_eps / rope_theta, which shapes cannot tell."""
        prefix = "model." if "model.embed_tokens.weight" in shapes else ""
        vocab, hidden = shape(shapes, prefix + "embed_tokens.weight")
        stack = StackConfig.from_shapes(shapes, prefix)
        if stack.hidden_size != hidden:
            raise ValueError(f"embed_tokens width {hidden} != attention input width {stack.hidden_size}")
        return cls(vocab_size=vocab, hidden_size=hidden, intermediate_size=stack.intermediate_size,
                   num_layers=stack.num_layers, num_heads=stack.num_heads,
                   num_kv_heads=stack.num_kv_heads, head_dim=stack.head_dim,
                   tie_word_embeddings="lm_head.weight" not in shapes, **fixed)


_LM = dict(vocab_size=217_204, head_dim=128, num_kv_heads=8)
FULL_SIZES = {
    "embedding-0.6B": Qwen3Config(vocab_size=151_669, hidden_size=1024, intermediate_size=3072, num_layers=28,
                                  num_heads=16, num_kv_heads=8),
    "lm-0.6B": Qwen3Config(hidden_size=1024, intermediate_size=3072, num_layers=28, num_heads=16, **_LM),
    "lm-1.7B": Qwen3Config(hidden_size=2048, intermediate_size=6144, num_layers=28, num_heads=16, **_LM),
    "lm-4B": Qwen3Config(hidden_size=2560, intermediate_size=9728, num_layers=36, num_heads=32, **_LM),
}


class KVCache:
    """Preallocated keys and values for every layer, [batch, kv_heads, max_len, head_dim] each (zeros, so slots
    not yet written are finite), and `filled`, the next free slot when the caller lets the model pick slots."""

    def __init__(self, layers: List[LayerCache], max_len: int):
        self.layers, self.max_len, self.filled = layers, max_len, 0

    @classmethod
    def allocate(cls, config: Qwen3Config, batch: int, max_len: int, dtype: torch.dtype, device) -> "KVCache":
        if batch <= 0 or max_len <= 0:
            raise ValueError(f"KVCache needs batch > 0 and max_len > 0, got batch={batch}, max_len={max_len}")
        size = (batch, config.num_kv_heads, max_len, config.head_dim)
        return cls([LayerCache(torch.zeros(size, dtype=dtype, device=device),
                               torch.zeros(size, dtype=dtype, device=device)) for _ in range(config.num_layers)],
                   max_len)


def default_positions(key_padding: Optional[torch.Tensor], query_slots: torch.Tensor, batch: int) -> torch.Tensor:
    """RoPE positions [B, S] of the tokens at `query_slots`: how many real tokens precede them in their row (left
    padding does not move a row's first real token off position 0), or the slots themselves without padding."""
    if key_padding is None:
        return query_slots[None].expand(batch, -1)
    counts = key_padding.long().cumsum(-1) - 1
    return counts.index_select(1, query_slots).clamp_min(0)


class Qwen3Model(nn.Module):
    """Token embedding, causal pre-norm layers, final RMSNorm. Keys: `embed_tokens.weight`, `layers.N.*`,
    `norm.weight` (the Qwen3-Embedding-0.6B file's own spelling)."""

    def __init__(self, config: Qwen3Config, dtype=None, device=None, operations=TorchOps, attention=sdpa_attention):
        super().__init__()
        self.config = config
        stack = config.stack
        self.embed_tokens = operations.Embedding(config.vocab_size, config.hidden_size, dtype=dtype, device=device)
        self.layers = build_layers(stack, dtype=dtype, device=device, operations=operations, attention=attention)
        self.norm = operations.RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=dtype, device=device)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings [B, S, H]: what ACE-Step 1.5 feeds its lyric encoder."""
        return self.embed_tokens(input_ids)

    def forward(self, input_ids: Optional[torch.Tensor] = None, inputs_embeds: Optional[torch.Tensor] = None,
                positions: Optional[torch.Tensor] = None, key_padding: Optional[torch.Tensor] = None,
                cache: Optional[KVCache] = None, cache_slots: Optional[torch.Tensor] = None,
                transformer_options: Optional[dict] = None) -> torch.Tensor:
        """Hidden states [B, S, H] after the final norm.

        input_ids [B, S] or inputs_embeds [B, S, H]: the new tokens. key_padding (bool, True = real token): without a
        cache [B, S] over the new tokens; with a cache [B, cache.max_len] over cache slots (the new tokens' slots
        included). positions [B, S]: RoPE positions (default: `default_positions`). cache_slots [S]: where the new
        tokens go in the cache (default: cache.filled onwards, then `filled` advances). A token sees the keys at
        slots up to its own that key_padding marks real."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        batch, length = x.shape[:2]
        if cache is None:
            if cache_slots is not None:
                raise ValueError("cache_slots needs a cache")
            query_slots = torch.arange(length, device=x.device)
            key_slots = query_slots
        else:
            if cache_slots is None:
                if cache.filled + length > cache.max_len:
                    raise ValueError(f"KV cache full: {cache.filled} + {length} tokens > max_len {cache.max_len}; "
                                     "allocate a longer cache")
                cache_slots = torch.arange(cache.filled, cache.filled + length, device=x.device)
                cache.filled += length
            query_slots = cache_slots
            key_slots = torch.arange(cache.max_len, device=x.device)
        if key_padding is not None and tuple(key_padding.shape) != (batch, key_slots.shape[0]):
            raise ValueError(f"key_padding must be [batch, {key_slots.shape[0]}] "
                             f"({'cache slots' if cache is not None else 'tokens'}), got {tuple(key_padding.shape)}")
        if positions is None:
            positions = default_positions(key_padding, query_slots, batch)
        rope = rope_tables(positions, self.config.head_dim, self.config.rope_theta, x.dtype)
        key_padding = None if key_padding is None else key_padding.bool()
        mask = attention_bias(visibility(query_slots, key_slots, causal=True), key_padding, x.dtype)
        for index, layer in enumerate(self.layers):
            layer_cache = None if cache is None else cache.layers[index]
            x = layer(x, rope, mask, cache=layer_cache, cache_slots=cache_slots,
                      transformer_options=transformer_options)
        return self.norm(x)


class Qwen3CausalLM(nn.Module):
    """`Qwen3Model` under `model.` plus logits: `lm_head` when the file has one, else the tied `embed_tokens`."""

    def __init__(self, config: Qwen3Config, dtype=None, device=None, operations=TorchOps, attention=sdpa_attention):
        super().__init__()
        self.config = config
        self.model = Qwen3Model(config, dtype=dtype, device=device, operations=operations, attention=attention)
        if not config.tie_word_embeddings:
            self.lm_head = operations.Linear(config.hidden_size, config.vocab_size, bias=False, dtype=dtype,
                                             device=device)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.config.tie_word_embeddings:
            weight = self.model.embed_tokens.weight
            return F.linear(hidden, cast_to(weight, hidden.dtype, hidden.device))
        return self.lm_head(hidden)

    def forward(self, input_ids: Optional[torch.Tensor] = None, inputs_embeds: Optional[torch.Tensor] = None,
                positions: Optional[torch.Tensor] = None, key_padding: Optional[torch.Tensor] = None,
                cache: Optional[KVCache] = None, cache_slots: Optional[torch.Tensor] = None,
                logits_at: Union[None, int, torch.Tensor] = None,
                transformer_options: Optional[dict] = None) -> torch.Tensor:
        """Logits [B, k, vocab] at the sequence indices `logits_at` (an int, e.g. -1 for the last token, or a
        LongTensor [k], which a CUDA-graph capture needs); every position when None. Other arguments as
        `Qwen3Model.forward`."""
        hidden = self.model(input_ids, inputs_embeds, positions, key_padding, cache, cache_slots,
                            transformer_options)
        if logits_at is not None:
            if isinstance(logits_at, int):
                logits_at = torch.tensor([logits_at % hidden.shape[1]], device=hidden.device)
            hidden = hidden.index_select(1, logits_at)
        return self.logits(hidden)


def audio_code_ids(config: Qwen3Config) -> range:
    """The token ids of the 64,000 audio codes (code c is id AUDIO_CODE_FIRST_ID + c)."""
    if config.vocab_size < AUDIO_CODE_FIRST_ID + AUDIO_CODE_COUNT:
        raise ValueError(f"vocab_size {config.vocab_size} has no audio-code tokens: this is not an ACE-Step LM")
    return range(AUDIO_CODE_FIRST_ID, AUDIO_CODE_FIRST_ID + AUDIO_CODE_COUNT)


__all__ = ["Qwen3Config", "Qwen3Model", "Qwen3CausalLM", "KVCache", "FULL_SIZES", "AUDIO_CODE_FIRST_ID",
           "AUDIO_CODE_COUNT", "audio_code_ids", "default_positions"]
