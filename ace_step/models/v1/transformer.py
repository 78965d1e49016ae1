"""ACE-Step v1 diffusion transformer (`ACEStepTransformer2DModel`, tech report arXiv 2506.00045 §3.2; original code:
ace-step/ACE-Step `acestep/models/ace_step_transformer.py`).

Flow-matching velocity model on DCAE latents [B, 8, 16, W] (W frames at ~10.77 per second).

    condition = [speaker (1 token) | genre/tags (N UMT5 tokens) | lyrics (L tokens)]       -> encode_condition
    velocity  = final_layer(blocks(patch_embed(x), condition, timestep))                   -> decode

`encode_condition` is a pure function of its inputs, so a sampler computes it once per run and calls
`decode` at every step. State-dict keys equal the real checkpoint's keys under `model.diffusion_model.`,
except the dead tensors listed by `unused_checkpoint_shapes`.
"""
import math
from dataclasses import dataclass
from typing import Mapping, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..operations import TorchOps, additive_mask, cast_to, sdpa_attention
from .lyric_encoder import LyricEncoder, LyricEncoderConfig
from .rope import rope_tables
from .transformer_blocks import LinearTransformerBlock, modulate, rms_norm

MaskLike = Optional[torch.Tensor]


@dataclass(frozen=True)
class TransformerConfig:
    in_channels: int = 8  # DCAE latent channels
    out_channels: int = 8
    patch_size: tuple = (16, 1)  # (mel-height rows, frames) per token: one token per latent frame
    patch_embed_dim: int = 2048  # width of proj_in's first conv; the original ties it to 256 * in_channels
    hidden_size: int = 2560  # = num_heads * head_dim
    num_heads: int = 20
    head_dim: int = 128
    num_layers: int = 24
    mlp_ratio: float = 2.5  # GLUMBConv hidden = int(hidden_size * mlp_ratio) = 6400
    timestep_channels: int = 256  # sinusoidal timestep features
    speaker_embedding_dim: int = 512
    text_embedding_dim: int = 768  # UMT5-base d_model
    lyric_vocab_size: int = 6693
    lyric_hidden_size: int = 1024  # lyric embedding and Conformer width
    lyric_encoder_heads: int = 16
    lyric_encoder_linear_units: int = 4096
    lyric_encoder_blocks: int = 6
    rope_theta: float = 1_000_000.0
    ssl_latent_dims: tuple = (1024, 768)  # training-only REPA projector outputs (MERT, mHuBERT)

    @property
    def ff_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def lyric_encoder_config(self) -> LyricEncoderConfig:
        return LyricEncoderConfig(
            input_size=self.lyric_hidden_size,
            hidden_size=self.lyric_hidden_size,
            num_heads=self.lyric_encoder_heads,
            linear_units=self.lyric_encoder_linear_units,
            num_blocks=self.lyric_encoder_blocks,
        )

    @classmethod
    def full_size(cls) -> "TransformerConfig":
        return cls()

    @staticmethod
    def head_dim_rule(hidden_size: int) -> int:
        """Heads cannot be read from shapes. Rule: head width 128 (the real model: 2560 = 20 x 128), but at
        least 2 heads for narrow test models (tiny: 64 = 2 x 32)."""
        return min(128, hidden_size // 2)

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple], num_heads: Optional[int] = None) -> "TransformerConfig":
        """Infers the config from the state-dict shapes (prefix `model.diffusion_model.` stripped).

        `projectors.*` may be absent (then ssl_latent_dims is empty). `num_heads` overrides head_dim_rule.
        """
        shapes = {k: tuple(v) for k, v in shapes.items()}
        patch_dim, in_channels, ph, pw = shapes["proj_in.early_conv_layers.0.weight"]
        hidden, text_dim = shapes["genre_embedder.weight"]
        heads = num_heads or hidden // cls.head_dim_rule(hidden)
        lyric = LyricEncoderConfig.from_shapes(
            {k[len("lyric_encoder.") :]: v for k, v in shapes.items() if k.startswith("lyric_encoder.")}
        )
        vocab, lyric_hidden = shapes["lyric_embs.weight"]
        ssl = []
        while f"projectors.{len(ssl)}.4.weight" in shapes:
            ssl.append(shapes[f"projectors.{len(ssl)}.4.weight"][0])
        return cls(
            in_channels=in_channels,
            out_channels=shapes["final_layer.linear.weight"][0] // (ph * pw),
            patch_size=(ph, pw),
            patch_embed_dim=patch_dim,
            hidden_size=hidden,
            num_heads=heads,
            head_dim=hidden // heads,
            num_layers=1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("transformer_blocks.")),
            mlp_ratio=shapes["transformer_blocks.0.ff.point_conv.conv.weight"][1] / hidden,
            timestep_channels=shapes["timestep_embedder.linear_1.weight"][1],
            speaker_embedding_dim=shapes["speaker_embedder.weight"][1],
            text_embedding_dim=text_dim,
            lyric_vocab_size=vocab,
            lyric_hidden_size=lyric_hidden,
            lyric_encoder_heads=lyric.num_heads,
            lyric_encoder_linear_units=lyric.linear_units,
            lyric_encoder_blocks=lyric.num_blocks,
            ssl_latent_dims=tuple(ssl),
        )


def unused_checkpoint_shapes(config: TransformerConfig) -> dict:
    """Checkpoint tensors this model never uses (prefix stripped), with their shapes:
    - `projectors.*`: the REPA heads aligning block-8 features to MERT / mHuBERT, used only in training;
    - `transformer_blocks.N.cross_attn.{add_q_proj,add_k_proj,add_v_proj,to_add_out}.*`: created by diffusers'
      joint-attention constructor but never called by the cross-attention processor."""
    d = config.hidden_size
    inner = config.num_heads * config.head_dim
    out = {}
    for j, ssl_dim in enumerate(config.ssl_latent_dims):
        for idx, (o, i) in zip((0, 2, 4), ((2 * d, d), (2 * d, 2 * d), (ssl_dim, 2 * d))):
            out[f"projectors.{j}.{idx}.weight"] = (o, i)
            out[f"projectors.{j}.{idx}.bias"] = (o,)
    for n in range(config.num_layers):
        for name, (o, i) in (("add_q_proj", (inner, d)), ("add_k_proj", (inner, d)), ("add_v_proj", (inner, d)),
                             ("to_add_out", (d, inner))):
            out[f"transformer_blocks.{n}.cross_attn.{name}.weight"] = (o, i)
            out[f"transformer_blocks.{n}.cross_attn.{name}.bias"] = (o,)
    return out


def timestep_features(timestep: torch.Tensor, channels: int) -> torch.Tensor:
    """Sinusoidal features [B, channels] in float32: [cos | sin] of t * 10000^(-k/half), k < half
    (diffusers Timesteps with flip_sin_to_cos=True, downscale_freq_shift=0)."""
    half = channels // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half)
    angles = timestep.float()[:, None] * freqs[None, :]
    return torch.cat((angles.cos(), angles.sin()), dim=-1)


class TimestepEmbedding(nn.Module):
    def __init__(self, in_channels: int, dim: int, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        self.linear_1 = operations.Linear(in_channels, dim, dtype=dtype, device=device)
        self.linear_2 = operations.Linear(dim, dim, dtype=dtype, device=device)

    def forward(self, x):
        return self.linear_2(F.silu(self.linear_1(x)))


class PatchEmbed(nn.Module):
    """[B, C, 16, W] -> [B, W, dim]: a (16, 1) strided conv folds the mel rows into channels, then
    GroupNorm(32, eps 1e-6) and a 1x1 conv to the model width."""

    def __init__(self, config: TransformerConfig, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        c, p = config.in_channels, config.patch_embed_dim
        self.early_conv_layers = nn.Sequential(
            operations.Conv2d(c, p, kernel_size=config.patch_size, stride=config.patch_size, dtype=dtype,
                              device=device),
            operations.GroupNorm(32, p, eps=1e-6, dtype=dtype, device=device),
            operations.Conv2d(p, config.hidden_size, kernel_size=1, dtype=dtype, device=device),
        )

    def forward(self, x):
        return self.early_conv_layers(x).flatten(2).transpose(1, 2)


class FinalLayer(nn.Module):
    """RMSNorm modulated by the *embedded timestep* (not the 6x t_block vector), then Linear to the patch."""

    def __init__(self, config: TransformerConfig, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        ph, pw = config.patch_size
        self.linear = operations.Linear(config.hidden_size, ph * pw * config.out_channels, dtype=dtype, device=device)
        self.scale_shift_table = nn.Parameter(
            torch.randn(2, config.hidden_size, dtype=dtype, device=device) / config.hidden_size**0.5)

    def forward(self, x, embedded_timestep):
        table = cast_to(self.scale_shift_table, x.dtype, x.device)
        shift, scale = (table[None] + embedded_timestep[:, None]).chunk(2, dim=1)
        return self.linear(modulate(rms_norm(x), shift, scale))


class ACEStepTransformer(nn.Module):
    """Weights in `dtype` (any: fp8 with casting `operations`); activations in `compute_dtype` (None: the weights'
    dtype), which ComfyUI's manual cast sets for fp8 or half-precision weights a device cannot compute in."""

    compute_dtype: Optional[torch.dtype] = None

    def __init__(self, config: TransformerConfig, dtype=None, device=None, operations=TorchOps,
                 attention=sdpa_attention):
        super().__init__()
        self.config = config
        d = config.hidden_size
        if config.num_heads * config.head_dim != d:
            raise ValueError("hidden_size must equal num_heads * head_dim")
        kw = dict(dtype=dtype, device=device, operations=operations)
        self.proj_in = PatchEmbed(config, **kw)
        self.timestep_embedder = TimestepEmbedding(config.timestep_channels, d, **kw)
        # adaLN-single, shared by all blocks
        self.t_block = nn.Sequential(nn.SiLU(), operations.Linear(d, 6 * d, dtype=dtype, device=device))
        self.speaker_embedder = operations.Linear(config.speaker_embedding_dim, d, dtype=dtype, device=device)
        self.genre_embedder = operations.Linear(config.text_embedding_dim, d, dtype=dtype, device=device)
        self.lyric_embs = operations.Embedding(config.lyric_vocab_size, config.lyric_hidden_size, dtype=dtype,
                                               device=device)
        self.lyric_encoder = LyricEncoder(config.lyric_encoder_config, attention=attention, **kw)
        self.lyric_proj = operations.Linear(config.lyric_hidden_size, d, dtype=dtype, device=device)
        self.transformer_blocks = nn.ModuleList(
            LinearTransformerBlock(d, config.num_heads, config.head_dim, config.ff_hidden, attention=attention, **kw)
            for _ in range(config.num_layers)
        )
        self.final_layer = FinalLayer(config, **kw)

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (what ComfyUI's BaseModel reads as the model dtype)."""
        return self.genre_embedder.weight.dtype

    @property
    def activation_dtype(self) -> torch.dtype:
        return self.compute_dtype or self.dtype

    @property
    def device(self) -> torch.device:
        return self.genre_embedder.weight.device

    def working_bytes(self, batch: int, frames: int, text_tokens: int, lyric_tokens: int) -> int:
        """Peak memory of `forward` beyond the weights: the lyric encoder's attention (quadratic in the lyrics),
        the condition sequence, and per latent frame the patch embedding's two [B, patch_embed_dim] maps, the
        FFN's [B, 2·ff_hidden] maps and the float32 linear attention (measured at 4096 elements per frame for the
        tiny model, where this gives 5568)."""
        c = self.config
        element = torch.finfo(self.activation_dtype).bits // 8
        per_frame = 2 * c.patch_embed_dim + 6 * c.ff_hidden + 8 * c.hidden_size
        condition = batch * (1 + text_tokens + lyric_tokens) * c.hidden_size * 3
        return (self.lyric_encoder.working_bytes(lyric_tokens, batch, element)
                + element * (batch * frames * per_frame + condition))

    # ---------------------------------------------------------------- condition
    def encode_lyrics(self, lyric_ids: torch.Tensor, lyric_mask: MaskLike = None,
                      transformer_options: Optional[dict] = None) -> torch.Tensor:
        """Token ids [B, L] -> lyric tokens in model width [B, L, hidden_size] (before lyrics_strength), computed
        where the ids are."""
        emb = self.lyric_embs(lyric_ids).to(self.activation_dtype)
        return self.lyric_proj(self.lyric_encoder(emb, lyric_mask, transformer_options))

    def encode_condition(
        self,
        text_hidden: torch.Tensor,
        lyric_ids: torch.Tensor,
        text_mask: MaskLike = None,
        lyric_mask: MaskLike = None,
        speaker_embeds: Optional[torch.Tensor] = None,
        lyrics_strength: Union[float, torch.Tensor] = 1.0,
        transformer_options: Optional[dict] = None,
    ):
        """Condition sequence [B, 1+N+L, hidden] = [speaker | genre(text_hidden) | lyrics * lyrics_strength],
        and its mask [B, 1+N+L] (float 0/1) or None when neither text_mask nor lyric_mask is given
        (ComfyUI: attend to everything). Pure function of its inputs.

        text_hidden [B, N, text_dim] (UMT5 last hidden state); lyric_ids [B, L] long; speaker_embeds
        [B, speaker_dim] or None (zeros: the released checkpoint does not support speakers);
        lyrics_strength: float or [B] tensor (ComfyUI's TextEncodeAceStepAudio scale).
        """
        # Computed where the inputs are (ComfyUI's load device), not where the weights are: a partial load leaves some
        # on the offload device, and its layers cast them at call time.
        dtype, device = self.activation_dtype, text_hidden.device
        text_hidden = text_hidden.to(dtype=dtype)
        batch = text_hidden.shape[0]
        if speaker_embeds is None:
            speaker_embeds = torch.zeros(batch, self.config.speaker_embedding_dim, device=device, dtype=dtype)
        speaker = self.speaker_embedder(speaker_embeds.to(device=device, dtype=dtype))[:, None]
        genre = self.genre_embedder(text_hidden)
        lyrics = self.encode_lyrics(lyric_ids.to(device), lyric_mask, transformer_options)
        if isinstance(lyrics_strength, torch.Tensor) and lyrics_strength.ndim == 1:
            lyrics_strength = lyrics_strength.to(device=device, dtype=dtype)[:, None, None]
        lyrics = lyrics * lyrics_strength
        cond = torch.cat((speaker, genre, lyrics), dim=1)

        if text_mask is None and lyric_mask is None:
            return cond, None
        parts = [torch.ones(batch, 1), text_mask, lyric_mask]  # the speaker token is always attended
        for i, (part, n) in enumerate(zip(parts, (1, genre.shape[1], lyrics.shape[1]))):
            parts[i] = torch.ones(batch, n) if part is None else part
        return cond, torch.cat([p.to(device=device, dtype=torch.float32) for p in parts], dim=1)

    # ---------------------------------------------------------------- denoiser
    def decode(
        self,
        x: torch.Tensor,
        timestep: Union[torch.Tensor, float],
        cond: torch.Tensor,
        cond_mask: MaskLike = None,
        latent_mask: MaskLike = None,
        cross_kv: Optional[list] = None,
        transformer_options: Optional[dict] = None,
    ) -> torch.Tensor:
        """Velocity (noise - clean) [B, 8, 16, W] for latent x [B, 8, 16, W] at timestep t = 1000 * sigma
        ([B] or scalar, float), given `encode_condition` output. Returned in x's dtype.
        cross_kv: `cross_attention_kv(cond)`, when a sampler computed it once for all its steps.

        Masks follow the original pipeline: latent_mask [B, W] zeroes padded frames' q/k/v in self-attention;
        cond_mask [B, S] removes padded condition tokens from cross-attention. (The original builds the
        cross mask as outer(latent_mask, cond_mask), which only differs by giving NaN rows for padded frames;
        here those rows just use cond_mask.) None = attend to everything, as ComfyUI does.
        """
        out_dtype = x.dtype
        dtype, device = self.activation_dtype, x.device
        batch, width = x.shape[0], x.shape[-1]
        ph, pw = self.config.patch_size
        if x.shape[2] != ph:
            raise ValueError(f"latent height {x.shape[2]} must equal the patch height {ph}")
        x = x.to(device=device, dtype=dtype)
        cond = cond.to(device=device, dtype=dtype)
        timestep = torch.as_tensor(timestep, device=device)
        timestep = timestep.reshape(-1).expand(batch) if timestep.numel() == 1 else timestep.reshape(batch)

        embedded_timestep = self.timestep_embedder(timestep_features(timestep, self.config.timestep_channels).to(dtype))
        temb = self.t_block(embedded_timestep)

        h = self.proj_in(x)  # [B, T, D]
        rope_x = rope_tables(h.shape[1], self.config.head_dim, self.config.rope_theta, device=device)
        rope_cond = None if cross_kv is not None else self._cond_rope(cond)  # cached keys carry it already
        if latent_mask is not None:
            latent_mask = latent_mask.to(device=device, dtype=dtype)
        key_mask = None if cond_mask is None else additive_mask(cond_mask.to(device) != 0, dtype)[:, None, None, :]

        for i, block in enumerate(self.transformer_blocks):
            kv = None if cross_kv is None else cross_kv[i]
            h = block(h, cond, temb, rope_x, rope_cond, latent_mask, key_mask, kv, transformer_options)

        h = self.final_layer(h, embedded_timestep)  # [B, T, ph*pw*C], C fastest
        out = self._unpatchify(h, width)
        return out.to(out_dtype)

    def cross_attention_kv(self, cond: torch.Tensor) -> list:
        """Every block's cross-attention keys and values [(k, v) each [B, H, S, d]] for an `encode_condition`
        output: constant over a sampling run, so `decode(..., cross_kv=)` need not recompute them per step."""
        cond = cond.to(dtype=self.activation_dtype)
        rope_cond = self._cond_rope(cond)
        return [block.cross_attn.key_value(cond, rope_cond) for block in self.transformer_blocks]

    def _cond_rope(self, cond: torch.Tensor) -> tuple:
        return rope_tables(cond.shape[1], self.config.head_dim, self.config.rope_theta, device=cond.device)

    def _unpatchify(self, h: torch.Tensor, width: int) -> torch.Tensor:
        ph, pw = self.config.patch_size
        b, t, _ = h.shape
        out = h.reshape(b, t, ph, pw, self.config.out_channels).permute(0, 4, 2, 1, 3).reshape(b, -1, ph, t * pw)
        # A patch width > 1 drops trailing frames in proj_in; pad them back with zeros (or crop).
        if out.shape[-1] < width:
            out = F.pad(out, (0, width - out.shape[-1]))
        return out[..., :width]

    def forward(
        self,
        x: torch.Tensor,
        timestep: Union[torch.Tensor, float],
        text_hidden: torch.Tensor,
        lyric_ids: torch.Tensor,
        text_mask: MaskLike = None,
        lyric_mask: MaskLike = None,
        speaker_embeds: Optional[torch.Tensor] = None,
        lyrics_strength: Union[float, torch.Tensor] = 1.0,
        latent_mask: MaskLike = None,
        transformer_options: Optional[dict] = None,
    ) -> torch.Tensor:
        cond, cond_mask = self.encode_condition(
            text_hidden, lyric_ids, text_mask, lyric_mask, speaker_embeds, lyrics_strength, transformer_options
        )
        return self.decode(x, timestep, cond, cond_mask, latent_mask, transformer_options=transformer_options)
