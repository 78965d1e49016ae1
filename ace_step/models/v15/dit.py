"""ACE-Step 1.5's diffusion transformer (the `decoder.*` keys of the DiT file): patchified latents, layers of
AdaLN-modulated self-attention (sliding-window or full), un-modulated cross-attention to the condition memory and a
modulated SwiGLU, then a modulated output norm and un-patchify. A flow-matching velocity model (Lipman et al. 2023).

Layout and numerics: comfy/ldm/ace/ace_step15.py `AceStepDiTModel`, `AceStepDiTLayer`, `TimestepEmbedding`
(comfyanonymous/ComfyUI @ e9d082a228febb6f79d1ee899d32a299da9b10ca); the XL variant's wider decoder reads a narrower
condition memory through `condition_embedder` (acestep/models/xl_turbo/modeling_acestep_v15_xl_turbo.py in
ace-step/ACE-Step-1.5 @ 3450c0537ba26a9f7a55d3c27d4d6228b9217ed6, `condition_dim = config.encoder_hidden_size`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..operations import TorchOps, cast_to, sdpa_attention
from .layers import Attention, RopeTables, SwiGLU, attention_bias, rope_tables, visibility

CrossKV = Tuple[Tuple[torch.Tensor, torch.Tensor], ...]
SLIDING, FULL = "sliding_attention", "full_attention"


def alternating_layer_types(num_layers: int) -> Tuple[str, ...]:
    """ComfyUI's and the original's default: even layers sliding-window, odd layers full attention."""
    return tuple(SLIDING if i % 2 == 0 else FULL for i in range(num_layers))


@dataclass(frozen=True)
class DiTConfig:
    hidden_size: int = 2048
    num_layers: int = 24
    num_heads: int = 16
    num_kv_heads: int = 8
    head_dim: int = 128
    intermediate_size: int = 6144
    condition_size: int = 2048  # width of the condition memory (the condition encoder's)
    latent_channels: int = 64
    in_channels: int = 192  # source latents, chunk mask, noisy latents
    patch_size: int = 2
    sliding_window: int = 128  # in patched tokens, each side
    layer_types: Optional[Tuple[str, ...]] = None  # None: alternating_layer_types
    rms_norm_eps: float = 1e-6
    rope_base: float = 1_000_000.0
    timestep_channels: int = 256
    timestep_scale: float = 1000.0  # sigma in [0, 1] -> 0..1000 before the sinusoid

    def __post_init__(self):
        for name in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "head_dim", "intermediate_size",
                     "condition_size", "latent_channels", "in_channels", "patch_size", "timestep_channels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"DiTConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"DiTConfig.num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads})")
        if self.sliding_window < 0:
            raise ValueError(f"DiTConfig.sliding_window must be >= 0, got {self.sliding_window}")
        if self.layer_types is None:
            object.__setattr__(self, "layer_types", alternating_layer_types(self.num_layers))
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        if len(self.layer_types) != self.num_layers or set(self.layer_types) - {SLIDING, FULL}:
            raise ValueError(f"DiTConfig.layer_types must be {self.num_layers} of '{SLIDING}'/'{FULL}', got "
                             f"{self.layer_types}")


class TimestepEmbedding(nn.Module):
    """Sinusoid [cos, sin] of scale * t (Vaswani et al. 2017 frequencies, 10000^(-k/half)), two Linears with SiLU
    (`linear_1`, `linear_2`) giving temb [B, H], and `time_proj` of silu(temb) giving the six modulation rows
    [B, 6, H]."""

    def __init__(self, channels: int, hidden_size: int, scale: float, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        self.channels, self.scale = channels, scale
        self.linear_1 = operations.Linear(channels, hidden_size, dtype=dtype, device=device)
        self.linear_2 = operations.Linear(hidden_size, hidden_size, dtype=dtype, device=device)
        self.time_proj = operations.Linear(hidden_size, 6 * hidden_size, dtype=dtype, device=device)

    def forward(self, t: torch.Tensor, dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
        half = self.channels // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        angles = (t * self.scale).float()[:, None] * freqs
        sinusoid = torch.cat([angles.cos(), angles.sin()], dim=-1).to(dtype)
        temb = self.linear_2(F.silu(self.linear_1(sinusoid)))
        return temb, self.time_proj(F.silu(temb)).unflatten(-1, (6, -1))


class DiTLayer(nn.Module):
    """x += gate * self_attn(norm(x) * (1 + scale) + shift); x += cross_attn(norm(x), memory);
    x += c_gate * mlp(norm(x) * (1 + c_scale) + c_shift), the six rows from `scale_shift_table` + the timestep's."""

    def __init__(self, config: DiTConfig, dtype=None, device=None, operations=TorchOps, attention=sdpa_attention):
        super().__init__()
        c, h = config, config.hidden_size

        def norm():
            return operations.RMSNorm(h, eps=c.rms_norm_eps, dtype=dtype, device=device)

        def attn():
            return Attention(h, c.num_heads, c.num_kv_heads, c.head_dim, c.rms_norm_eps, dtype=dtype, device=device,
                             operations=operations, attention=attention)

        self.self_attn_norm, self.self_attn = norm(), attn()
        self.cross_attn_norm, self.cross_attn = norm(), attn()
        self.mlp_norm = norm()
        self.mlp = SwiGLU(h, c.intermediate_size, dtype=dtype, device=device, operations=operations)
        self.scale_shift_table = nn.Parameter(torch.empty(1, 6, h, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor, modulation: torch.Tensor, rope: RopeTables, self_mask: Optional[torch.Tensor],
                cross_kv: Tuple[torch.Tensor, torch.Tensor], cross_mask: Optional[torch.Tensor],
                transformer_options: Optional[dict] = None) -> torch.Tensor:
        rows = cast_to(self.scale_shift_table, modulation.dtype, modulation.device) + modulation
        shift, scale, gate, c_shift, c_scale, c_gate = rows.chunk(6, dim=1)
        h = self.self_attn_norm(x) * (1 + scale) + shift
        x = x + self.self_attn(h, rope=rope, mask=self_mask, transformer_options=transformer_options) * gate
        x = x + self.cross_attn(self.cross_attn_norm(x), kv=cross_kv, mask=cross_mask,
                                transformer_options=transformer_options)
        h = self.mlp_norm(x) * (1 + c_scale) + c_shift
        return x + self.mlp(h) * c_gate


class DiTDecoder(nn.Module):
    """Keys: `proj_in.1`, `time_embed`, `time_embed_r`, `condition_embedder`, `layers.N`, `norm_out`, `proj_out.1`,
    `scale_shift_table` (index 0 of proj_in/proj_out is a weightless slot the original fills with a transpose)."""

    def __init__(self, config: DiTConfig, dtype=None, device=None, operations=TorchOps, attention=sdpa_attention):
        super().__init__()
        self.config = c = config
        h = c.hidden_size
        self.proj_in = nn.Sequential(nn.Identity(), operations.Conv1d(c.in_channels, h, c.patch_size,
                                                                      stride=c.patch_size, dtype=dtype, device=device))
        self.time_embed = TimestepEmbedding(c.timestep_channels, h, c.timestep_scale, dtype=dtype, device=device,
                                            operations=operations)
        self.time_embed_r = TimestepEmbedding(c.timestep_channels, h, c.timestep_scale, dtype=dtype, device=device,
                                              operations=operations)
        self.condition_embedder = operations.Linear(c.condition_size, h, dtype=dtype, device=device)
        self.layers = nn.ModuleList(DiTLayer(c, dtype=dtype, device=device, operations=operations,
                                             attention=attention) for _ in range(c.num_layers))
        self.norm_out = operations.RMSNorm(h, eps=c.rms_norm_eps, dtype=dtype, device=device)
        self.proj_out = nn.Sequential(nn.Identity(), operations.ConvTranspose1d(
            h, c.latent_channels, c.patch_size, stride=c.patch_size, dtype=dtype, device=device))
        self.scale_shift_table = nn.Parameter(torch.empty(1, 2, h, dtype=dtype, device=device))

    def memory_kv(self, memory: torch.Tensor) -> CrossKV:
        """Every layer's cross-attention keys and values for a condition memory [B, L, condition_size]: a pure
        function of the condition, so a sampler computes it once per run."""
        memory = self.condition_embedder(memory)
        return tuple(layer.cross_attn.project_kv(memory) for layer in self.layers)

    def time_conditioning(self, timestep: torch.Tensor, timestep_r: torch.Tensor, dtype: torch.dtype
                          ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(temb [B, H], modulation [B, 6, H]): embeddings of t and of t - r, summed."""
        temb_t, mod_t = self.time_embed(timestep, dtype)
        temb_r, mod_r = self.time_embed_r(timestep - timestep_r, dtype)
        return temb_t + temb_r, mod_t + mod_r

    def self_attention_masks(self, tokens: int, dtype: torch.dtype, device) -> Sequence[Optional[torch.Tensor]]:
        """Each layer's self-attention mask: the symmetric band for sliding layers (None when it covers every
        token), none for full layers."""
        band = None
        if SLIDING in self.config.layer_types and tokens > self.config.sliding_window + 1:
            positions = torch.arange(tokens, device=device)
            band = attention_bias(visibility(positions, positions, window=self.config.sliding_window), None, dtype)
        return [band if kind == SLIDING else None for kind in self.config.layer_types]

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context_latents: torch.Tensor, cross_kv: CrossKV,
                cross_keep: Optional[torch.Tensor] = None, timestep_r: Optional[torch.Tensor] = None,
                transformer_options: Optional[dict] = None) -> torch.Tensor:
        """x [B, T, C] noisy latents (channels last), timestep [B] (sigma), context_latents [B, T, 2C] (source
        latents, chunk mask), cross_kv from `memory_kv`, cross_keep [B, L] (True = real memory token) or None,
        timestep_r [B] (default t: the t - r embedding then sees 0, as in ComfyUI). Returns the velocity [B, T, C]."""
        c = self.config
        if len(cross_kv) != c.num_layers:
            raise ValueError(f"cross_kv has {len(cross_kv)} layers, the DiT {c.num_layers}: build it with memory_kv")
        batch, length = x.shape[:2]
        timestep = timestep.reshape(-1).expand(batch) if timestep.numel() == 1 else timestep
        timestep_r = timestep if timestep_r is None else timestep_r
        temb, modulation = self.time_conditioning(timestep, timestep_r, x.dtype)
        h = torch.cat([context_latents, x], dim=-1)
        h = F.pad(h, (0, 0, 0, -length % c.patch_size))
        h = self.proj_in(h.transpose(1, 2)).transpose(1, 2)
        tokens = h.shape[1]
        rope = rope_tables(torch.arange(tokens, device=h.device), c.head_dim, c.rope_base, h.dtype)
        self_masks = self.self_attention_masks(tokens, h.dtype, h.device)
        cross_mask = attention_bias(None, cross_keep, h.dtype)
        for layer, self_mask, kv in zip(self.layers, self_masks, cross_kv, strict=True):
            h = layer(h, modulation, rope, self_mask, kv, cross_mask, transformer_options)
        shift, scale = (cast_to(self.scale_shift_table, temb.dtype, temb.device) + temb[:, None]).chunk(2, dim=1)
        h = self.norm_out(h) * (1 + scale) + shift
        return self.proj_out(h.transpose(1, 2)).transpose(1, 2)[:, :length]
