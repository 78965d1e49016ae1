"""ACE-Step 1.5's 5 Hz audio codes: the tokenizer (25 Hz latents -> attention pooling over windows of 5 frames ->
residual FSQ codes) and the detokenizer (codes -> 25 Hz "LM hint" latents the DiT takes as its source).

FSQ: Mentzer et al. 2023, "Finite Scalar Quantization: VQ-VAE Made Simple", levels (8, 8, 8, 5, 5, 5) = 64,000 codes,
in the residual form of vector_quantize_pytorch's `ResidualFSQ` with its `bound_hard_clamp` soft clamp. Layout and
numerics follow comfy/ldm/ace/ace_step15.py (`AttentionPooler`, `FSQ`, `ResidualFSQ`, `AceStepAudioTokenizer`,
`AudioTokenDetokenizer`; comfyanonymous/ComfyUI @ e9d082a228febb6f79d1ee899d32a299da9b10ca). Keys: `tokenizer.*` and
`detokenizer.*` of the DiT file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..operations import TorchOps, cast_to, sdpa_attention
from .layers import StackConfig, build_layers, run_bidirectional

FSQ_LEVELS = (8, 8, 8, 5, 5, 5)


@dataclass(frozen=True)
class AudioTokenizerConfig:
    pooler: StackConfig  # the attention pooler's layers (ComfyUI: 16 heads / 8 kv, 3 x hidden MLP)
    latent_channels: int = 64
    pool_window_size: int = 5  # 25 Hz latent frames per 5 Hz code
    fsq_levels: Tuple[int, ...] = FSQ_LEVELS
    num_quantizers: int = 1

    def __post_init__(self):
        if self.latent_channels <= 0 or self.pool_window_size <= 0 or self.num_quantizers <= 0:
            raise ValueError("AudioTokenizerConfig.latent_channels, pool_window_size and num_quantizers must be "
                             f"positive, got {self.latent_channels}, {self.pool_window_size}, {self.num_quantizers}")
        if not self.fsq_levels or any(level < 2 for level in self.fsq_levels):
            raise ValueError(f"AudioTokenizerConfig.fsq_levels must be levels >= 2, got {self.fsq_levels}")

    @property
    def codebook_size(self) -> int:
        return math.prod(self.fsq_levels)


@dataclass(frozen=True)
class AudioDetokenizerConfig:
    stack: StackConfig  # ComfyUI: 2 layers, 16 heads / 8 kv, 3 x hidden MLP, eps 1e-6
    latent_channels: int = 64
    pool_window_size: int = 5
    # ComfyUI builds `detokenizer.norm` without an eps, so torch uses the activations' dtype epsilon (1.19e-7 in fp32,
    # 7.8e-3 in bf16); None reproduces that. The original (acestep/models/*/modeling_acestep_v15_*.py) uses
    # rms_norm_eps (1e-6) there.
    norm_eps: Optional[float] = None

    def __post_init__(self):
        if self.latent_channels <= 0 or self.pool_window_size <= 0:
            raise ValueError("AudioDetokenizerConfig.latent_channels and pool_window_size must be positive, got "
                             f"{self.latent_channels}, {self.pool_window_size}")


class ResidualFSQ(nn.Module):
    """project_in (dim -> len(levels)), soft clamp tanh(x / c) * c with c = 1 + 1/(L - 1), then `num_quantizers` FSQ
    rounds on the residual (round q scaled by L^-q), project_out. Rounding runs in float32 so a code cannot flip with
    the activations' dtype; returns the quantized vectors in the input's dtype and the codes [..., num_quantizers]."""

    def __init__(self, dim: int, levels: Sequence[int], num_quantizers: int, dtype=None, device=None,
                 operations=TorchOps):
        super().__init__()
        self.levels, self.num_quantizers = tuple(levels), num_quantizers
        self.project_in = operations.Linear(dim, len(levels), dtype=dtype, device=device)
        self.project_out = operations.Linear(len(levels), dim, dtype=dtype, device=device)

    def _constants(self, device) -> Tuple[torch.Tensor, torch.Tensor]:
        levels = torch.tensor(self.levels, dtype=torch.float32, device=device)
        basis = torch.cumprod(torch.tensor((1,) + self.levels[:-1], dtype=torch.long, device=device), 0)
        return levels, basis

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        dtype = x.dtype
        z = self.project_in(x).float()
        levels, basis = self._constants(z.device)
        clamp = 1 + 1 / (levels - 1)
        residual = (z / clamp).tanh() * clamp
        total = torch.zeros_like(residual)
        codes = []
        for q in range(self.num_quantizers):
            scale = levels ** -q
            steps = ((levels - 1) * ((residual / scale).tanh() + 1) / 2 + 0.5).floor()  # 0 .. L-1 per axis
            quantized = (2.0 / (levels - 1) * steps - 1) * scale
            residual = residual - quantized
            total = total + quantized
            codes.append((steps.long() * basis).sum(-1))
        return self.project_out(total.to(dtype)), torch.stack(codes, -1)

    def from_codes(self, codes: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The quantized vectors [B, n, dim] of codes [B, n, num_quantizers] (or [B, n] for one quantizer)."""
        if codes.ndim == 2:
            codes = codes[..., None]
        if codes.ndim != 3 or codes.shape[-1] != self.num_quantizers or codes.dtype.is_floating_point:
            raise ValueError(f"audio codes must be integers [batch, n] or [batch, n, {self.num_quantizers}], got "
                             f"{codes.dtype} {tuple(codes.shape)}")
        size = math.prod(self.levels)
        if codes.numel() and (codes.min() < 0 or codes.max() >= size):
            raise ValueError(f"audio codes must lie in [0, {size}), got {codes.min().item()}..{codes.max().item()}")
        levels, basis = self._constants(codes.device)
        total = 0
        for q in range(self.num_quantizers):
            steps = (codes[..., q, None] // basis) % levels.long()
            total = total + (2.0 / (levels - 1) * steps - 1) * levels ** -q
        return self.project_out(total.to(dtype))


class AttentionPooler(nn.Module):
    """Pools each window of P frames [B, T, P, H] to one vector [B, T, H]: a learned token is put in front of the
    window, the layers run over the P + 1 tokens, and the learned token's output (after the norm) is kept."""

    def __init__(self, config: StackConfig, dtype=None, device=None, operations=TorchOps, attention=sdpa_attention):
        super().__init__()
        self.config = config
        h = config.hidden_size
        self.embed_tokens = operations.Linear(h, h, dtype=dtype, device=device)
        self.special_token = nn.Parameter(torch.empty(1, 1, h, dtype=dtype, device=device))
        self.layers = build_layers(config, dtype=dtype, device=device, operations=operations, attention=attention)
        self.norm = operations.RMSNorm(h, eps=config.rms_norm_eps, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, transformer_options: Optional[dict] = None) -> torch.Tensor:
        b, t, p, h = x.shape
        x = self.embed_tokens(x)
        token = cast_to(self.special_token, x.dtype, x.device).expand(b, t, 1, h)
        x = torch.cat([token, x], dim=2).reshape(b * t, p + 1, h)
        x = run_bidirectional(self.layers, self.config, x, transformer_options=transformer_options)
        return self.norm(x)[:, 0].reshape(b, t, h)


class AudioTokenizer(nn.Module):
    """25 Hz latents -> 5 Hz quantized vectors and codes. Keys: `audio_acoustic_proj`, `attention_pooler`,
    `quantizer` (`project_in` / `project_out`)."""

    def __init__(self, config: AudioTokenizerConfig, dtype=None, device=None, operations=TorchOps,
                 attention=sdpa_attention):
        super().__init__()
        self.config = config
        h = config.pooler.hidden_size
        self.audio_acoustic_proj = operations.Linear(config.latent_channels, h, dtype=dtype, device=device)
        self.attention_pooler = AttentionPooler(config.pooler, dtype=dtype, device=device, operations=operations,
                                                attention=attention)
        self.quantizer = ResidualFSQ(h, config.fsq_levels, config.num_quantizers, dtype=dtype, device=device,
                                     operations=operations)

    def forward(self, windows: torch.Tensor, transformer_options: Optional[dict] = None
                ) -> Tuple[torch.Tensor, torch.Tensor]:
        """windows [B, T5, P, C] -> (quantized [B, T5, H], codes [B, T5, num_quantizers])."""
        pooled = self.attention_pooler(self.audio_acoustic_proj(windows), transformer_options)
        return self.quantizer(pooled)

    def tokenize(self, latents: torch.Tensor, transformer_options: Optional[dict] = None
                 ) -> Tuple[torch.Tensor, torch.Tensor]:
        """latents [B, T, C] (channels last), zero-padded at the end to whole windows as ComfyUI does (the original
        pads with its silence latent instead) -> (quantized [B, ceil(T/P), H], codes [B, ceil(T/P), Q])."""
        p = self.config.pool_window_size
        b, t, c = latents.shape
        latents = F.pad(latents, (0, 0, 0, -t % p))
        return self.forward(latents.reshape(b, -1, p, c), transformer_options)


class AudioDetokenizer(nn.Module):
    """5 Hz vectors [B, n, H] -> 25 Hz latents [B, n * P, C]: each vector is repeated P times, a learned vector per
    frame of the window is added, the layers run over each window of P, then norm and projection to latent
    channels."""

    def __init__(self, config: AudioDetokenizerConfig, dtype=None, device=None, operations=TorchOps,
                 attention=sdpa_attention):
        super().__init__()
        self.config = config
        h, p = config.stack.hidden_size, config.pool_window_size
        self.embed_tokens = operations.Linear(h, h, dtype=dtype, device=device)
        self.special_tokens = nn.Parameter(torch.empty(1, p, h, dtype=dtype, device=device))
        self.layers = build_layers(config.stack, dtype=dtype, device=device, operations=operations,
                                   attention=attention)
        self.norm = operations.RMSNorm(h, eps=config.norm_eps, dtype=dtype, device=device)
        self.proj_out = operations.Linear(h, config.latent_channels, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor, transformer_options: Optional[dict] = None) -> torch.Tensor:
        b, n, h = x.shape
        p = self.config.pool_window_size
        x = self.embed_tokens(x)[:, :, None] + cast_to(self.special_tokens, x.dtype, x.device)[:, None]
        x = run_bidirectional(self.layers, self.config.stack, x.reshape(b * n, p, h),
                              transformer_options=transformer_options)
        return self.proj_out(self.norm(x)).reshape(b, n * p, -1)
