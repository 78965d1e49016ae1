"""ACE-Step 1.5's condition encoder: caption hidden states (text projector), lyric embeddings (lyric encoder) and
reference-audio latents (timbre encoder) packed into one cross-attention memory for the DiT.

Layout and numerics: comfy/ldm/ace/ace_step15.py `AceStepConditionEncoder`, `AceStepLyricEncoder`,
`AceStepTimbreEncoder`, `pack_sequences` (comfyanonymous/ComfyUI @ e9d082a228febb6f79d1ee899d32a299da9b10ca); the
original is acestep/models/*/modeling_acestep_v15_*.py in ace-step/ACE-Step-1.5. Keys: `encoder.*` of the DiT file.

Masks. ComfyUI passes no text or lyric mask, so padding tokens are attended (and a row's output depends on how far
other rows pad it). Here, when `text_keep` / `lyric_keep` are given, padding keys are hidden from the lyric encoder
(as the original does) and the packed memory carries a mask the DiT applies to its cross-attention; without them
the result is ComfyUI's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn

from ..operations import TorchOps, cast_to, sdpa_attention
from .layers import StackConfig, build_layers, run_bidirectional


@dataclass(frozen=True)
class ConditionEncoderConfig:
    lyric: StackConfig  # 8 layers in the real model
    timbre: StackConfig  # 4 layers
    text_hidden_dim: int = 1024  # Qwen3-Embedding-0.6B width
    timbre_hidden_dim: int = 64  # latent channels of the reference audio
    # Put `timbre_encoder.special_token` in front of the reference before the layers (its output is the timbre
    # vector). ComfyUI and the original 2B models do not (the line is commented out in
    # acestep/models/turbo/modeling_acestep_v15_turbo.py), so token 0 is the first reference frame; the original XL
    # models do (acestep/models/xl_turbo/modeling_acestep_v15_xl_turbo.py @ 3450c0537ba26a9f7a55d3c27d4d6228b9217ed6).
    timbre_special_token: bool = False

    def __post_init__(self):
        if self.lyric.hidden_size != self.timbre.hidden_size:
            raise ValueError(f"ConditionEncoderConfig: lyric width {self.lyric.hidden_size} != timbre width "
                             f"{self.timbre.hidden_size}")
        if self.text_hidden_dim <= 0 or self.timbre_hidden_dim <= 0:
            raise ValueError("ConditionEncoderConfig.text_hidden_dim and timbre_hidden_dim must be positive, got "
                             f"{self.text_hidden_dim}, {self.timbre_hidden_dim}")

    @property
    def hidden_size(self) -> int:
        return self.lyric.hidden_size


def pack_sequences(first: torch.Tensor, second: torch.Tensor, first_keep: Optional[torch.Tensor],
                   second_keep: Optional[torch.Tensor]) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Joins two [B, L, H] sequences along L. With both masks (True = real token), each row's real tokens move to
    the front in their order (stable) and the returned mask is that prefix; with either mask missing, a plain
    concatenation and no mask (ComfyUI `pack_sequences`)."""
    joined = torch.cat([first, second], dim=1)
    if first_keep is None or second_keep is None:
        return joined, None
    keep = torch.cat([first_keep, second_keep], dim=1).long()
    order = keep.argsort(dim=1, descending=True, stable=True)
    packed = joined.gather(1, order[..., None].expand_as(joined))
    lengths = keep.sum(dim=1, keepdim=True)
    return packed, torch.arange(joined.shape[1], device=joined.device)[None] < lengths


def unpack_references(vectors: torch.Tensor, order: torch.Tensor, batch: int
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Timbre vectors [N, H] of N references -> [batch, most references of one row, H] and its mask (True = a
    reference), reference i going to row order[i] in its order of appearance (the original's
    `unpack_timbre_embeddings`).

    ComfyUI's forward passes order = zeros(N): every reference lands in row 0 and the other rows get zero vectors,
    so batch items leak into each other; `AceStep15.encode_condition` defaults to one reference per row instead."""
    if order.ndim != 1 or order.shape[0] != vectors.shape[0]:
        raise ValueError(f"refer_order must be [{vectors.shape[0]}] (the row of each reference), got "
                         f"{tuple(order.shape)}")
    if order.numel() and (order.min() < 0 or order.max() >= batch):
        raise ValueError(f"refer_order values must be rows 0..{batch - 1}, got {order.tolist()}")
    order = order.long()
    seen = torch.nn.functional.one_hot(order, batch).cumsum(0)
    slot = seen.gather(1, order[:, None])[:, 0] - 1
    width = int(seen[-1].max()) if order.numel() else 0
    out = vectors.new_zeros(batch, width, vectors.shape[-1])
    out[order, slot] = vectors
    keep = torch.zeros(batch, width, dtype=torch.bool, device=vectors.device)
    keep[order, slot] = True
    return out, keep


class LyricEncoder(nn.Module):
    """Lyric token embeddings [B, L, 1024] -> [B, L, H]: Linear with bias, bidirectional layers, RMSNorm."""

    def __init__(self, config: StackConfig, input_dim: int, dtype=None, device=None, operations=TorchOps,
                 attention=sdpa_attention):
        super().__init__()
        self.config = config
        self.embed_tokens = operations.Linear(input_dim, config.hidden_size, dtype=dtype, device=device)
        self.layers = build_layers(config, dtype=dtype, device=device, operations=operations, attention=attention)
        self.norm = operations.RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=dtype, device=device)

    def forward(self, lyric_embed: torch.Tensor, keep: Optional[torch.Tensor] = None,
                transformer_options: Optional[dict] = None) -> torch.Tensor:
        x = run_bidirectional(self.layers, self.config, self.embed_tokens(lyric_embed), keep, transformer_options)
        return self.norm(x)


class TimbreEncoder(nn.Module):
    """Reference latents [N, T, C] (channels last) -> one timbre vector per reference [N, H]: the output at token 0
    after bidirectional layers and RMSNorm."""

    def __init__(self, config: StackConfig, input_dim: int, special_token_first: bool, dtype=None, device=None,
                 operations=TorchOps, attention=sdpa_attention):
        super().__init__()
        self.config, self.special_token_first = config, special_token_first
        self.embed_tokens = operations.Linear(input_dim, config.hidden_size, dtype=dtype, device=device)
        self.special_token = nn.Parameter(torch.empty(1, 1, config.hidden_size, dtype=dtype, device=device))
        self.layers = build_layers(config, dtype=dtype, device=device, operations=operations, attention=attention)
        self.norm = operations.RMSNorm(config.hidden_size, eps=config.rms_norm_eps, dtype=dtype, device=device)

    def forward(self, refer_latents: torch.Tensor, transformer_options: Optional[dict] = None) -> torch.Tensor:
        x = self.embed_tokens(refer_latents)
        if self.special_token_first:
            token = cast_to(self.special_token, x.dtype, x.device).expand(x.shape[0], 1, -1)
            x = torch.cat([token, x], dim=1)
        x = run_bidirectional(self.layers, self.config, x, transformer_options=transformer_options)
        return self.norm(x)[:, 0]


class ConditionEncoder(nn.Module):
    """The packed memory [lyrics ; timbre vectors ; caption] the DiT cross-attends to. Keys: `text_projector`,
    `lyric_encoder`, `timbre_encoder`."""

    def __init__(self, config: ConditionEncoderConfig, dtype=None, device=None, operations=TorchOps,
                 attention=sdpa_attention):
        super().__init__()
        self.config = config
        self.text_projector = operations.Linear(config.text_hidden_dim, config.hidden_size, bias=False,
                                                dtype=dtype, device=device)
        self.lyric_encoder = LyricEncoder(config.lyric, config.text_hidden_dim, dtype=dtype, device=device,
                                          operations=operations, attention=attention)
        self.timbre_encoder = TimbreEncoder(config.timbre, config.timbre_hidden_dim, config.timbre_special_token,
                                            dtype=dtype, device=device, operations=operations, attention=attention)

    def forward(self, text_hidden: torch.Tensor, lyric_embed: torch.Tensor, refer_latents: torch.Tensor,
                refer_order: torch.Tensor, text_keep: Optional[torch.Tensor] = None,
                lyric_keep: Optional[torch.Tensor] = None, transformer_options: Optional[dict] = None
                ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """text_hidden [B, Lt, 1024], lyric_embed [B, Ll, 1024], refer_latents [N, T, C], refer_order [N] (row of
        each reference), optional masks [B, Lt] / [B, Ll] (True = real token). Returns (memory [B, L, H], its mask
        or None when no text/lyric mask was given)."""
        batch = text_hidden.shape[0]
        if lyric_embed.shape[0] != batch:
            raise ValueError(f"lyric_embed has {lyric_embed.shape[0]} rows, the caption {batch}")
        masked = text_keep is not None or lyric_keep is not None
        if masked:
            text_keep = _mask_or_all(text_keep, text_hidden, "text_keep")
            lyric_keep = _mask_or_all(lyric_keep, lyric_embed, "lyric_keep")
        text = self.text_projector(text_hidden)
        lyrics = self.lyric_encoder(lyric_embed, lyric_keep, transformer_options)
        timbre, timbre_keep = unpack_references(self.timbre_encoder(refer_latents, transformer_options),
                                                refer_order, batch)
        memory, keep = pack_sequences(lyrics, timbre, lyric_keep, timbre_keep if masked else None)
        return pack_sequences(memory, text, keep, text_keep)


def _mask_or_all(keep: Optional[torch.Tensor], sequence: torch.Tensor, name: str) -> torch.Tensor:
    if keep is None:
        return torch.ones(sequence.shape[:2], dtype=torch.bool, device=sequence.device)
    if tuple(keep.shape) != tuple(sequence.shape[:2]):
        raise ValueError(f"{name} must be [batch, tokens] = {tuple(sequence.shape[:2])}, got {tuple(keep.shape)}")
    return keep.bool()
