"""The ACE-Step 1.5 diffusion model file as one network (ComfyUI's `AceStepConditionGenerationModel`): `decoder`
(the DiT), `encoder` (condition encoder), `tokenizer` / `detokenizer` (5 Hz audio codes) and `null_condition_emb`.
State-dict keys equal the file's (ComfyUI split files and the original `model.safetensors`: no prefix; the
all-in-one checkpoint: under `model.diffusion_model.`; see ace_step/loading/v15_keys.py).

    condition = encode_condition(caption states, lyric embeddings, reference latents, ...)   once per sampling run
    velocity  = decode(x, sigma, condition)                                                  every step
    forward(x, timestep, context, lyric_embed, refer_audio, ...)                             what ComfyUI calls

Sources: comfy/ldm/ace/ace_step15.py (comfyanonymous/ComfyUI @ e9d082a228febb6f79d1ee899d32a299da9b10ca) for the
network and its forward; comfy/model_base.py `ACEStep15.extra_conds` for what ComfyUI feeds it (refer_audio is always
given: a reference latent cut to the length -> cover mode `is_covers=True`; otherwise the silence latent, with LM
`audio_codes` when the LM ran, else `is_covers=False`; `replace_with_null_embeds` when the caption conditioning is
all zeros).

Deliberate differences from ComfyUI's forward, each reproducible by an argument:
- references: ComfyUI puts every reference in batch row 0 (order zeros(B)), so rows leak into each other; here row i
  gets reference i (`refer_order=None`). `refer_order=torch.zeros(B, dtype=torch.long)` reproduces ComfyUI.
- masks: ComfyUI attends to padding tokens; `text_keep` / `lyric_keep` hide them (None = ComfyUI).
- LM hints are only computed when used (ComfyUI tokenizes the reference even when `is_covers=False` throws the result
  away); the result is the same.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import nn

from ..operations import TorchOps, cast_to, sdpa_attention
from .audio_codes import FSQ_LEVELS, AudioDetokenizer, AudioDetokenizerConfig, AudioTokenizer, AudioTokenizerConfig
from .condition_encoder import ConditionEncoder, ConditionEncoderConfig
from .dit import CrossKV, DiTConfig, DiTDecoder
from .layers import StackConfig, count_layers, shape

# ComfyUI pads LM codes shorter than the latent with this code (comfy/ldm/ace/ace_step15.py `prepare_condition`).
PAD_AUDIO_CODE = 35847


@dataclass(frozen=True)
class AceStep15Config:
    decoder: DiTConfig
    encoder: ConditionEncoderConfig
    tokenizer: AudioTokenizerConfig
    detokenizer: AudioDetokenizerConfig

    def __post_init__(self):
        width = self.encoder.hidden_size
        checks = {
            "decoder.condition_size": self.decoder.condition_size,
            "tokenizer.pooler.hidden_size": self.tokenizer.pooler.hidden_size,
            "detokenizer.stack.hidden_size": self.detokenizer.stack.hidden_size,
        }
        for name, value in checks.items():
            if value != width:
                raise ValueError(f"AceStep15Config.{name} ({value}) must equal the condition encoder width ({width})")
        c = self.decoder.latent_channels
        if self.decoder.in_channels != 3 * c:
            raise ValueError(f"AceStep15Config.decoder.in_channels ({self.decoder.in_channels}) must be 3 x latent "
                             f"channels ({c}): source latents, chunk mask, noisy latents")
        for name, value in (("tokenizer.latent_channels", self.tokenizer.latent_channels),
                            ("detokenizer.latent_channels", self.detokenizer.latent_channels),
                            ("encoder.timbre_hidden_dim", self.encoder.timbre_hidden_dim)):
            if value != c:
                raise ValueError(f"AceStep15Config.{name} ({value}) must equal the latent channels ({c})")
        if self.tokenizer.pool_window_size != self.detokenizer.pool_window_size:
            raise ValueError("AceStep15Config: tokenizer and detokenizer pool_window_size differ "
                             f"({self.tokenizer.pool_window_size} vs {self.detokenizer.pool_window_size})")

    @property
    def latent_channels(self) -> int:
        return self.decoder.latent_channels

    @property
    def pool_window_size(self) -> int:
        return self.tokenizer.pool_window_size

    @classmethod
    def full_size(cls, variant: str = "2B") -> "AceStep15Config":
        """'2B': acestep-v15-turbo / -sft / -base (ComfyUI's constructor defaults; 2,393,872,518 parameters).
        'XL': acestep-v15-xl-turbo / -xl-sft / -xl-base: a 2560-wide, 32-layer decoder (32 query / 8 kv heads,
        SwiGLU 9728) over the same 2048-wide condition encoder, tokenizer and detokenizer, `condition_embedder`
        2048 -> 2560 (ace-step/ACE-Step-1.5 acestep/models/xl_turbo/modeling_acestep_v15_xl_turbo.py @
        3450c0537ba26a9f7a55d3c27d4d6228b9217ed6: the encoder, tokenizer, detokenizer and null embedding built from a
        copy of the config at `encoder_hidden_size`; sizes as rAIdio-bot/rAIdio-nodes rAIdio_xl_patch/__init__.py @
        18d0757f7055ec64571eb69517ff86f22a10b18a lists them from the real file and ports ComfyUI 0.18+'s
        `encoder_hidden_size` / `encoder_num_heads` / `encoder_intermediate_size`). XL turns on
        `timbre_special_token`, as the original XL code does."""
        encoder_stack = StackConfig(hidden_size=2048, num_layers=8, num_heads=16, num_kv_heads=8, head_dim=128,
                                    intermediate_size=6144)
        if variant == "2B":
            decoder = DiTConfig()
        elif variant == "XL":
            decoder = DiTConfig(hidden_size=2560, num_layers=32, num_heads=32, num_kv_heads=8,
                                intermediate_size=9728, condition_size=2048)
        else:
            raise ValueError(f"unknown ACE-Step 1.5 DiT variant '{variant}'; choose '2B' or 'XL'")
        return cls(
            decoder=decoder,
            encoder=ConditionEncoderConfig(lyric=encoder_stack, timbre=_resized(encoder_stack, 4),
                                           timbre_special_token=variant == "XL"),
            tokenizer=AudioTokenizerConfig(pooler=_resized(encoder_stack, 2)),
            detokenizer=AudioDetokenizerConfig(stack=_resized(encoder_stack, 2)))

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[int]], *, sliding_window: int = 128,
                    layer_types: Optional[Sequence[str]] = None, rms_norm_eps: float = 1e-6,
                    encoder_sliding_window: Optional[int] = None, timbre_special_token: Optional[bool] = None,
                    detokenizer_norm_eps: Optional[float] = None, fsq_levels: Optional[Sequence[int]] = None,
                    num_quantizers: int = 1) -> "AceStep15Config":
        """Every size from the DiT file's tensor shapes (prefix stripped). The keyword arguments are what shapes
        cannot tell, defaulting to the real models' values. `timbre_special_token=None`: as the family's own code
        does, on for XL (decoder wider than its condition memory), off otherwise. `encoder_sliding_window`: None as
        ComfyUI (encoders attend to every token); 128 as the original, whose encoder layers follow its default
        `layer_types` (even layers windowed)."""
        s = {k: tuple(v) for k, v in shapes.items()}
        hidden, in_channels, patch = shape(s, "decoder.proj_in.1.weight")
        condition_size = shape(s, "decoder.condition_embedder.weight")[1]
        q_out = shape(s, "decoder.layers.0.self_attn.q_proj.weight")[0]
        head_dim = shape(s, "decoder.layers.0.self_attn.q_norm.weight")[0]
        decoder = DiTConfig(
            hidden_size=hidden, num_layers=count_layers(s, "decoder.layers."), num_heads=q_out // head_dim,
            num_kv_heads=shape(s, "decoder.layers.0.self_attn.k_proj.weight")[0] // head_dim, head_dim=head_dim,
            intermediate_size=shape(s, "decoder.layers.0.mlp.gate_proj.weight")[0], condition_size=condition_size,
            latent_channels=shape(s, "decoder.proj_out.1.weight")[1], in_channels=in_channels, patch_size=patch,
            sliding_window=sliding_window, layer_types=None if layer_types is None else tuple(layer_types),
            rms_norm_eps=rms_norm_eps, timestep_channels=shape(s, "decoder.time_embed.linear_1.weight")[1])
        stack = dict(rms_norm_eps=rms_norm_eps)
        windowed = dict(stack, sliding_window=encoder_sliding_window)
        special = hidden != condition_size if timbre_special_token is None else timbre_special_token
        encoder = ConditionEncoderConfig(
            lyric=StackConfig.from_shapes(s, "encoder.lyric_encoder.", **windowed),
            timbre=StackConfig.from_shapes(s, "encoder.timbre_encoder.", **windowed),
            text_hidden_dim=shape(s, "encoder.text_projector.weight")[1],
            timbre_hidden_dim=shape(s, "encoder.timbre_encoder.embed_tokens.weight")[1], timbre_special_token=special)
        levels = tuple(fsq_levels) if fsq_levels is not None else FSQ_LEVELS
        if shape(s, "tokenizer.quantizer.project_in.weight")[0] != len(levels):
            raise ValueError(f"tokenizer.quantizer.project_in has {s['tokenizer.quantizer.project_in.weight'][0]} "
                             f"outputs but fsq_levels has {len(levels)} levels; pass fsq_levels")
        tokenizer = AudioTokenizerConfig(
            pooler=StackConfig.from_shapes(s, "tokenizer.attention_pooler.", **windowed),
            latent_channels=shape(s, "tokenizer.audio_acoustic_proj.weight")[1],
            pool_window_size=shape(s, "detokenizer.special_tokens")[1], fsq_levels=levels,
            num_quantizers=num_quantizers)
        detokenizer = AudioDetokenizerConfig(
            stack=StackConfig.from_shapes(s, "detokenizer.", **windowed),
            latent_channels=shape(s, "detokenizer.proj_out.weight")[0],
            pool_window_size=shape(s, "detokenizer.special_tokens")[1], norm_eps=detokenizer_norm_eps)
        return cls(decoder=decoder, encoder=encoder, tokenizer=tokenizer, detokenizer=detokenizer)


def _resized(stack: StackConfig, num_layers: int) -> StackConfig:
    return StackConfig(**{**stack.__dict__, "num_layers": num_layers})


@dataclass(frozen=True)
class Condition:
    """Everything `decode` needs that does not change during a sampling run.

    memory [B, L, H_enc]: the packed condition (or the null embedding everywhere); memory_keep [B, L] (True = real
    token) or None; context_latents [B, T, 2C] channels last: source latents, then the chunk mask; cross_kv: each DiT
    layer's cross-attention keys/values of `memory`."""

    memory: torch.Tensor
    memory_keep: Optional[torch.Tensor]
    context_latents: torch.Tensor
    cross_kv: CrossKV


class AceStep15(nn.Module):
    def __init__(self, config: AceStep15Config, dtype=None, device=None, operations=TorchOps,
                 attention=sdpa_attention):
        super().__init__()
        self.config = config
        kw = dict(dtype=dtype, device=device, operations=operations, attention=attention)
        self.decoder = DiTDecoder(config.decoder, **kw)
        self.encoder = ConditionEncoder(config.encoder, **kw)
        self.tokenizer = AudioTokenizer(config.tokenizer, **kw)
        self.detokenizer = AudioDetokenizer(config.detokenizer, **kw)
        # The "no condition" memory for classifier-free guidance (ComfyUI: `replace_with_null_embeds`).
        self.null_condition_emb = nn.Parameter(torch.empty(1, 1, config.encoder.hidden_size, dtype=dtype,
                                                           device=device))

    def lm_hints(self, length: int, refer_latents: Optional[torch.Tensor] = None,
                 audio_codes: Optional[torch.Tensor] = None, dtype: torch.dtype = torch.float32,
                 transformer_options: Optional[dict] = None) -> torch.Tensor:
        """The 25 Hz latents [B, length, C] the 5 Hz codes stand for: from `audio_codes` [B, n] (padded with
        PAD_AUDIO_CODE to cover `length`), else from tokenizing `refer_latents` [B, T, C] (channels last)."""
        p = self.config.pool_window_size
        if audio_codes is not None:
            if audio_codes.shape[-1] * p < length:
                audio_codes = torch.nn.functional.pad(audio_codes, (0, math.ceil(length / p) - audio_codes.shape[-1]),
                                                      value=PAD_AUDIO_CODE)
            vectors = self.tokenizer.quantizer.from_codes(audio_codes, dtype)
        elif refer_latents is not None:
            if refer_latents.shape[1] + (-refer_latents.shape[1] % p) < length:
                raise ValueError(f"the reference ({refer_latents.shape[1]} frames) is shorter than the latent "
                                 f"({length} frames): pad it (ComfyUI pads with the silence latent)")
            vectors = self.tokenizer.tokenize(refer_latents, transformer_options)[0]
        else:
            raise ValueError("lm_hints needs audio_codes or refer_latents")
        return self.detokenizer(vectors, transformer_options)[:, :length]

    def encode_condition(self, text_hidden: torch.Tensor, lyric_embed: torch.Tensor, refer_audio: torch.Tensor,
                         length: int, *, text_keep: Optional[torch.Tensor] = None,
                         lyric_keep: Optional[torch.Tensor] = None, refer_order: Optional[torch.Tensor] = None,
                         audio_codes: Optional[torch.Tensor] = None,
                         is_covers: Union[None, bool, torch.Tensor] = None,
                         chunk_mask: Optional[torch.Tensor] = None, replace_with_null: bool = False,
                         transformer_options: Optional[dict] = None) -> Condition:
        """Pure in its inputs: compute once per sampling run.

        text_hidden [B, Lt, 1024] caption states; lyric_embed [B, Ll, 1024]; refer_audio [N, C, Tr] reference
        latents, channels first (ComfyUI's layout; its silence latent when there is no reference); length: T, the
        latent frames to generate. refer_order [N]: the row of each reference (default: reference i -> row i).
        Source latents: with audio_codes [B, n] or is_covers None/True, the LM hints (of the codes, else of the
        reference); with is_covers False, the reference itself; is_covers may be a bool tensor [B] (per row).
        chunk_mask: [B, C or 1, T] (default ones, as ComfyUI). replace_with_null: the memory becomes
        `null_condition_emb` at every position (ComfyUI's unconditional pass)."""
        batch, dtype = text_hidden.shape[0], text_hidden.dtype
        refer = refer_audio.movedim(-1, -2)
        if refer_order is None:
            if refer.shape[0] != batch:
                raise ValueError(f"{refer.shape[0]} references for {batch} rows: pass refer_order (the row of each "
                                 "reference)")
            refer_order = torch.arange(batch, device=refer.device)
        memory, keep = self.encoder(text_hidden, lyric_embed, refer, refer_order, text_keep, lyric_keep,
                                    transformer_options)
        if replace_with_null:
            memory = cast_to(self.null_condition_emb, memory.dtype, memory.device).expand_as(memory)
        source = self._source_latents(refer, length, audio_codes, is_covers, batch, dtype, transformer_options)
        if chunk_mask is None:
            chunk = torch.ones_like(source)
        else:
            chunk = chunk_mask.movedim(-1, -2).to(source.dtype).expand_as(source)
        return Condition(memory=memory, memory_keep=keep, context_latents=torch.cat([source, chunk], dim=-1),
                         cross_kv=self.decoder.memory_kv(memory))

    def _source_latents(self, refer: torch.Tensor, length: int, audio_codes, is_covers, batch: int,
                        dtype: torch.dtype, transformer_options) -> torch.Tensor:
        per_row = is_covers if isinstance(is_covers, torch.Tensor) else None
        if per_row is None and is_covers not in (None, True, False):
            raise ValueError(f"is_covers must be None, a bool or a bool tensor [batch], got {is_covers!r}")
        reference = None
        if is_covers is False or per_row is not None:
            if refer.shape[0] != batch or refer.shape[1] < length:
                raise ValueError(f"the reference is the source latent of its row: it needs {batch} rows of at least "
                                 f"{length} frames, got {tuple(refer.shape[:2])}")
            reference = refer[:, :length].to(dtype)
            if per_row is None:
                return reference
        if audio_codes is None and refer.shape[0] != batch:
            raise ValueError(f"LM hints from the reference need one reference per row: {refer.shape[0]} references "
                             f"for {batch} rows (or pass audio_codes)")
        hints = self.lm_hints(length, refer, audio_codes, dtype, transformer_options).expand(batch, -1, -1)
        if per_row is None:
            return hints
        return torch.where(per_row.to(torch.bool).reshape(batch, 1, 1), hints, reference)

    def decode(self, x: torch.Tensor, timestep: torch.Tensor, condition: Condition,
               timestep_r: Optional[torch.Tensor] = None, transformer_options: Optional[dict] = None) -> torch.Tensor:
        """x [B, C, T] noisy latents (channels first), timestep [B] sigma -> velocity [B, C, T]."""
        out = self.decoder(x.movedim(-1, -2), timestep, condition.context_latents, condition.cross_kv,
                           condition.memory_keep, timestep_r, transformer_options)
        return out.movedim(-1, -2)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                lyric_embed: Optional[torch.Tensor] = None, refer_audio: Optional[torch.Tensor] = None,
                audio_codes: Optional[torch.Tensor] = None, is_covers: Union[None, bool, torch.Tensor] = None,
                replace_with_null_embeds: bool = False, refer_order: Optional[torch.Tensor] = None,
                transformer_options: Optional[dict] = None, **kwargs) -> torch.Tensor:
        """ComfyUI's call (`BaseModel.apply_model` with `ACEStep15.extra_conds`): x [B, C, T], timestep [B],
        context [B, Lt, 1024] caption states, lyric_embed [B, Ll, 1024], refer_audio [B, C, T] -> [B, C, T].
        Other ComfyUI keywords (control, ...) are accepted and unused."""
        if lyric_embed is None or refer_audio is None:
            raise ValueError("ACE-Step 1.5 needs lyric_embed and refer_audio (ComfyUI's extra_conds give both; "
                             "refer_audio is the silence latent when there is no reference)")
        condition = self.encode_condition(context, lyric_embed, refer_audio, x.shape[-1], refer_order=refer_order,
                                          audio_codes=audio_codes, is_covers=is_covers,
                                          replace_with_null=replace_with_null_embeds,
                                          transformer_options=transformer_options)
        return self.decode(x, timestep, condition, transformer_options=transformer_options)
