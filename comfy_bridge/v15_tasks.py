"""ACE-Step 1.5 tasks (cover, repaint, extend) sampled on the pack's 1.5 MODEL: the glue between ComfyUI's objects
and the core's task rules (`ace_step/sampling/v15_tasks.py`, `v15_condition.py`, `v15_sampling.py`).

- The caption is re-encoded with the task's instruction and the source's duration in its metas (the original's
  `_prepare_batch`): the CONDITIONING must come from ACE-Step 1.5 Text Encode, whose metadata (caption as used,
  bpm, key, time signature, language) it carries; the lyric embeddings are taken as they are (they do not depend on
  the task). The CLIP must be the one that made it.
- The DiT's condition is built per plan with separate timbre (the conditioning's reference timbre, else the silence
  latent's first 750 frames, as the original) and source (`encode_task_condition`); LM audio codes in the
  conditioning are not used (the source song stands for the song).
- The loop is `sample_task` (Euler, the original's ODE), the DiT called directly on the MODEL loaded through
  ComfyUI's model management (LoRA weight patches and transformer_options patches apply; MODEL wrappers and
  ModelSampling patches do not: the schedule is the original's, from `sampling_sigmas`). Guidance: CFG as ComfyUI's
  samplers compute it, uncond + cfg · (cond − uncond), the unconditional pass with the DiT's null condition
  (cfg 1: no unconditional pass). The latent stays float32 between steps (as in ComfyUI's samplers), so the kept
  part of a repaint is the source bit for bit.
"""
from __future__ import annotations

import copy
from typing import Optional

import comfy.model_management as mm
import comfy.sampler_helpers
import comfy.utils
import torch

from ..ace_step.sampling.v15_condition import TIMBRE_FRAMES, encode_task_condition, no_timbre_reference
from ..ace_step.sampling.v15_sampling import RepaintMerge, sample_task
from ..ace_step.sampling.v15_tasks import TaskPlan
from ..ace_step.text.v15_prompts import CAPTION_MAX_TOKENS, dit_caption_prompt, text_encoder_ids
from .v15_clip import METADATA_KEY
from .v15_family import CHANNELS, check_latent, refuse_v1_conditioning, wrong_object
from .v15_models import AceStep15Model, ComfyCallableAceStep15, require_dit_memory

REFERENCE_KEY = "reference_audio_timbre_latents"
MODEL_SOURCE = "Load ACE-Step 1.5 Checkpoint or Load ACE-Step 1.5 Diffusion Model"


def require_model(model):
    """The pack's ACE-Step 1.5 MODEL (a ModelPatcher around `AceStep15Model` with the pack's DiT)."""
    base = getattr(model, "model", None)
    if not (isinstance(base, AceStep15Model) and isinstance(getattr(base, "diffusion_model", None),
                                                            ComfyCallableAceStep15)):
        raise wrong_object("MODEL", model, MODEL_SOURCE)
    return model


def source_latent(latent, what: str = "the source latent") -> torch.Tensor:
    """The [B, 64, T] samples of a LATENT input, float32 on the CPU (v1 latents refused with the fix)."""
    samples = latent["samples"] if isinstance(latent, dict) else latent
    return check_latent(samples, what).float().cpu()


def _entry(positive) -> tuple[torch.Tensor, dict]:
    if not isinstance(positive, list) or len(positive) != 1 or len(positive[0]) != 2:
        raise ValueError("the positive CONDITIONING must be one entry from ACE-Step 1.5 Text Encode (optionally "
                         "through ACE-Step 1.5 Reference Timbre); combined or scheduled conditionings are not "
                         "supported by the 1.5 task nodes")
    return positive[0][0], positive[0][1]


def task_metadata(positive):
    refuse_v1_conditioning(positive, "positive CONDITIONING")
    cond, extra = _entry(positive)
    metadata = extra.get(METADATA_KEY)
    if metadata is None:
        raise ValueError("the positive input is a conditioning without ACE-Step 1.5 metadata (core "
                         "TextEncodeAceStepAudio1.5 or another node): the 1.5 task nodes re-encode the caption with "
                         "the task's instruction and need the metadata ACE-Step 1.5 Text Encode stores; connect its "
                         "output")
    return metadata


def caption_states(clip, metadata, instruction: str, duration: float) -> torch.Tensor:
    """The caption states [1, L, W] of the original's caption prompt with `instruction` and `duration` seconds in its
    metas (the original writes int(seconds) whatever the length; SongMetadata's 10-600 s range is for user input)."""
    metas = copy.copy(metadata)
    object.__setattr__(metas, "duration", float(duration))
    ids = text_encoder_ids(clip.text_tokenizer, dit_caption_prompt(metadata.caption or "", metas, instruction),
                           CAPTION_MAX_TOKENS)
    caption, _ = clip._encode_text(ids, ids[-1:])  # the lyric half is unused: the conditioning holds the lyrics
    return caption


def task_noise(noise, seed: int, batch: int, frames: int) -> torch.Tensor:
    """The run's initial noise [batch, 64, frames]: a NOISE input's (e.g. ACE-Step 1.5 Retake Noise), else the
    original's seeded noise, row i from seed + i."""
    from ..ace_step.sampling.v15_sampling import seed_noise

    if noise is None:
        return seed_noise([(seed + i) % 2**64 for i in range(batch)], CHANNELS, frames)
    out = noise.generate_noise({"samples": torch.zeros(batch, CHANNELS, frames)})
    if tuple(out.shape) != (batch, CHANNELS, frames):
        raise ValueError(f"the noise input gave {tuple(out.shape)}, the task needs {(batch, CHANNELS, frames)}")
    return out.float().cpu()


def run_task(model, clip, positive, plan: TaskPlan, noise: torch.Tensor, sigmas: torch.Tensor, cfg: float, *,
             cover_switch: Optional[int] = None, merge: Optional[RepaintMerge] = None) -> torch.Tensor:
    """Samples `plan` from `noise` [B, C, T] over `sigmas`; returns the latent [B, C, T] (float32, CPU), before
    `plan.finish`."""
    _, extra = _entry(positive)
    metadata = task_metadata(positive)
    lyrics = extra.get("conditioning_lyrics")
    if lyrics is None:
        raise ValueError("the positive conditioning has no lyric embeddings: use ACE-Step 1.5 Text Encode")
    batch, frames = plan.source.shape[0], plan.frames
    texts = {True: caption_states(clip, metadata, plan.instruction, plan.metas_duration)}
    phase = None
    if cover_switch is not None and cover_switch < len(sigmas) - 1:
        phase = plan.text2music_phase()
        texts[False] = caption_states(clip, metadata, phase.instruction, plan.metas_duration)
    references = extra.get(REFERENCE_KEY)
    silence = model.model.silence
    dm: ComfyCallableAceStep15 = model.model.diffusion_model
    device = model.load_device
    rows = batch * (1 if cfg == 1.0 else 2)
    require_dit_memory(dm, device, rows, frames, texts[True].shape[1], lyrics.shape[1])
    real_model, _, loaded = comfy.sampler_helpers.prepare_sampling(model, [batch, CHANNELS, frames], {},
                                                                   model.model_options)
    model.pre_run()
    try:
        dm = real_model.diffusion_model
        dtype = dm.activation_dtype
        options = dict(model.model_options.get("transformer_options", {}))
        if references:
            timbre = check_latent(references[-1], "the reference timbre latent").to(device, dtype)
            timbre, order = timbre.expand(batch, -1, -1), torch.arange(batch, device=device)
        else:
            timbre, order = no_timbre_reference(silence(TIMBRE_FRAMES, device), batch)
            timbre = timbre.to(dtype)

        def condition(p: TaskPlan, text: torch.Tensor, null: bool):
            p = TaskPlan(**{**p.__dict__, "source": p.source.to(device, dtype), "chunk_mask": p.chunk_mask.to(device),
                            "is_covers": p.is_covers.to(device), "silence": p.silence.to(device, dtype)})
            with torch.no_grad():
                return encode_task_condition(dm, p, text.to(device, dtype).expand(batch, -1, -1),
                                             lyrics.to(device, dtype).expand(batch, -1, -1), timbre, order,
                                             replace_with_null=null, transformer_options=options)

        conds = {True: (condition(plan, texts[True], False),
                        None if cfg == 1.0 else condition(plan, texts[True], True))}
        if phase is not None:
            conds[False] = (condition(phase, texts[False], False),
                            None if cfg == 1.0 else condition(phase, texts[False], True))

        def velocity(x, t, i, cover):
            cond, uncond = conds[cover] if cover in conds else conds[True]
            xd, td = x.to(dtype), t.to(dtype)
            with torch.no_grad():
                v = dm.decode(xd, td, cond, transformer_options=options).float()
                if uncond is not None:
                    u = dm.decode(xd, td, uncond, transformer_options=options).float()
                    v = u + cfg * (v - u)
            return v

        progress = comfy.utils.ProgressBar(len(sigmas) - 1)

        def callback(i, total, x):
            mm.throw_exception_if_processing_interrupted()
            progress.update_absolute(i, total)

        if merge is not None:
            merge = RepaintMerge(merge.region.to(device), merge.clean.to(device), merge.noise.to(device),
                                 merge.injection_ratio, merge.crossfade_frames)
        out = sample_task(velocity, noise.to(device), sigmas.to(device), cover_switch=cover_switch, merge=merge,
                          callback=callback)
        return out.cpu()
    finally:
        model.cleanup()
        comfy.sampler_helpers.cleanup_models({}, loaded)
