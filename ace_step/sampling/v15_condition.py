"""The DiT condition of a task plan, as the original's `prepare_condition` builds it: the timbre reference and the
source latents are separate inputs (ace-step/ACE-Step-1.5 `acestep/models/base/modeling_acestep_v15_base.py` @
14bd1db1, `AceStepConditionGenerationModel.prepare_condition` and `tokenize`; `acestep/handler.py` @ f30aee4c,
`_prepare_batch`, `infer_refer_latent`, `process_reference_audio`).

- timbre: the reference song's latents [N, C, Tr] with `timbre_order` [N] (the row of each), or, without a reference,
  the first 750 frames (30 s) of the silence latent for every row (`no_timbre_reference`). The original cuts a
  reference waveform to 30 s from three random 10 s pieces before encoding it (`timbre_reference_audio`).
- source: the plan's source; cover rows get the LM hints instead: the source's 5 Hz codes decoded back to 25 Hz
  (the source padded with the silence latent's first frames to whole 5-frame windows, as the original's `tokenize`;
  ComfyUI pads with zeros), or the hints of the plan's LM codes, padded with the silence latent's first frames when
  shorter than the plan (the original's `precomputed_lm_hints_25Hz`; ComfyUI pads the codes with code 35847).

`AceStep15.encode_condition` feeds one tensor to both the timbre encoder and the source (ComfyUI's interface); this
module takes the model's parts (`encoder`, `lm_hints`, `decoder.memory_kv`) to keep them apart.
"""
from __future__ import annotations

import random
from typing import Optional

import torch

from ..models.v15.model import AceStep15, Condition
from ..models.operations import cast_to
from .v15_tasks import FRAMES_PER_SECOND, SAMPLE_RATE, TaskPlan

TIMBRE_FRAMES = 30 * FRAMES_PER_SECOND  # 750: the original's reference length
TIMBRE_SECONDS, TIMBRE_PIECE_SECONDS = 30, 10


def no_timbre_reference(silence: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(timbre [batch, C, 750], order [batch]) when no reference is given: the silence latent's first 750 frames."""
    if silence.ndim == 2:
        silence = silence[None]
    if silence.shape[-1] < TIMBRE_FRAMES:
        raise ValueError(f"the silence latent has {silence.shape[-1]} frames; the timbre reference needs "
                         f"{TIMBRE_FRAMES}: pass silence({TIMBRE_FRAMES})")
    return silence[:1, :, :TIMBRE_FRAMES].expand(batch, -1, -1), torch.arange(batch, device=silence.device)


def timbre_reference_audio(waveform: torch.Tensor, rng: random.Random) -> Optional[torch.Tensor]:
    """The original's reference waveform: [2, samples] at 48 kHz, repeated to at least 30 s, then three 10 s pieces,
    one from a random place in each third, joined (30 s). None for digital silence (all |x| < 1e-6: no reference).
    `rng` stands for the original's global `random` module."""
    if waveform.ndim != 2 or waveform.shape[0] != 2:
        raise ValueError(f"the reference audio must be stereo [2, samples] at {SAMPLE_RATE} Hz, got "
                         f"{tuple(waveform.shape)}: resample it and make it stereo first (the audio input does)")
    if waveform.shape[-1] == 0:
        raise ValueError("the reference audio is empty")
    if bool((waveform.abs() < 1e-6).all()):
        return None
    target, piece = TIMBRE_SECONDS * SAMPLE_RATE, TIMBRE_PIECE_SECONDS * SAMPLE_RATE
    if waveform.shape[-1] < target:
        waveform = waveform.repeat(1, -(-target // waveform.shape[-1]))
    total = waveform.shape[-1]
    third = total // 3
    starts = (rng.randint(0, max(0, third - piece)),
              third + rng.randint(0, max(0, third - piece)),
              2 * third + rng.randint(0, max(0, (total - 2 * third) - piece)))
    return torch.cat([waveform[:, s:s + piece] for s in starts], dim=-1)


def _pad_with_silence_head(latents: torch.Tensor, frames: int, silence: torch.Tensor) -> torch.Tensor:
    """latents [B, T, C] (channels last) padded to `frames` with the silence latent's FIRST frames (the original
    pads with silence_latent[:, :pad] wherever the padding goes)."""
    pad = frames - latents.shape[1]
    if pad <= 0:
        return latents[:, :frames]
    if silence.shape[-1] < pad:
        raise ValueError(f"the silence latent has {silence.shape[-1]} frames, the padding needs {pad}")
    head = silence[0, :, :pad].movedim(0, -1).to(latents)
    return torch.cat([latents, head.expand(latents.shape[0], -1, -1)], dim=1)


def lm_hints(model: AceStep15, plan: TaskPlan, transformer_options: Optional[dict] = None) -> torch.Tensor:
    """The 25 Hz LM hints [B, T, C] (channels last) of the plan's codes, else of its source."""
    t, p = plan.frames, model.config.pool_window_size
    dtype = plan.source.dtype
    if plan.audio_codes is not None:
        n = plan.audio_codes.shape[-1] * p
        hints = model.lm_hints(n, audio_codes=plan.audio_codes.to(plan.source.device), dtype=dtype,
                               transformer_options=transformer_options)
        return _pad_with_silence_head(hints, t, plan.silence)
    source = _pad_with_silence_head(plan.source.movedim(1, -1), t + (-t % p), plan.silence)
    return model.lm_hints(t, refer_latents=source, dtype=dtype, transformer_options=transformer_options)


def context_latents(model: AceStep15, plan: TaskPlan, transformer_options: Optional[dict] = None) -> torch.Tensor:
    """The DiT's context [B, T, 2C] (channels last): source (LM hints on cover rows), then the chunk mask."""
    source = plan.source.movedim(1, -1)
    if bool(plan.is_covers.any()):
        hints = lm_hints(model, plan, transformer_options).to(source)
        source = torch.where(plan.is_covers.reshape(-1, 1, 1), hints.expand_as(source), source)
    chunk = plan.chunk_mask.movedim(1, -1).to(source.dtype).expand_as(source)
    return torch.cat([source, chunk], dim=-1)


def encode_task_condition(model: AceStep15, plan: TaskPlan, text_hidden: torch.Tensor, lyric_embed: torch.Tensor,
                          timbre: torch.Tensor, timbre_order: Optional[torch.Tensor] = None, *,
                          text_keep: Optional[torch.Tensor] = None, lyric_keep: Optional[torch.Tensor] = None,
                          replace_with_null: bool = False, transformer_options: Optional[dict] = None) -> Condition:
    """The `Condition` for `AceStep15.decode`, once per plan (and once more for `plan.text2music_phase()` when the
    cover strength is below 1). text_hidden [B, Lt, 1024] from the caption prompt with `plan.instruction`;
    lyric_embed [B, Ll, 1024]; timbre [N, C, Tr] with timbre_order [N] (default: reference i -> row i).
    replace_with_null: the unconditional pass (memory = null_condition_emb everywhere)."""
    batch = text_hidden.shape[0]
    if plan.source.shape[0] != batch:
        raise ValueError(f"the plan has {plan.source.shape[0]} rows, the caption {batch}")
    if timbre.ndim != 3 or timbre.shape[1] != plan.source.shape[1]:
        raise ValueError(f"timbre must be reference latents [N, {plan.source.shape[1]}, frames], got "
                         f"{tuple(timbre.shape)}")
    if timbre_order is None:
        if timbre.shape[0] != batch:
            raise ValueError(f"{timbre.shape[0]} timbre references for {batch} rows: pass timbre_order")
        timbre_order = torch.arange(batch, device=timbre.device)
    memory, keep = model.encoder(text_hidden, lyric_embed, timbre.movedim(-1, -2).to(text_hidden.dtype),
                                 timbre_order, text_keep, lyric_keep, transformer_options)
    if replace_with_null:
        memory = cast_to(model.null_condition_emb, memory.dtype, memory.device).expand_as(memory)
    context = context_latents(model, plan, transformer_options).to(text_hidden.dtype)
    return Condition(memory=memory, memory_keep=keep, context_latents=context, cross_kv=model.decoder.memory_kv(memory))
