"""ACE-Step 1.5's text side as a ComfyUI CLIP: the Qwen3-Embedding-0.6B text encoder and, optionally, a 5 Hz LM
planner, each in its own ModelPatcher (ComfyUI loads and offloads them like any model; the LM goes to the main
compute device, the GPU when there is one, since writing audio codes is the slowest part of a 1.5 song).

Interface (what core `TextEncodeAceStepAudio1.5` and the pack's ACE-Step 1.5 Text Encode call):
`tokenize(tags, lyrics=..., bpm=..., duration=..., timesignature=..., language=..., keyscale=..., seed=...,
generate_audio_codes=..., cfg_scale=..., temperature=..., top_p=..., top_k=..., min_p=...)` -> tokens;
`encode_from_tokens_scheduled(tokens)` -> CONDITIONING [[caption states [1, L, 1024], {"conditioning_lyrics":
lyric embeddings [1, Ll, 1024], "audio_codes": [codes] (when the LM wrote them), "pooled_output": None,
"ace_step15_metadata": the song's metadata after planning}]], the keys ComfyUI's ACE-Step 1.5 model reads
(comfy/text_encoders/ace15.py and comfy/model_base.py `ACEStep15` in Comfy-Org/ComfyUI @
0f1fa67ad8a68b62c65ebc97a7bf485df2459c3a).

Prompts and planning follow the original pipeline, not ComfyUI's port (differences in ace_step/text/v15_prompts.py):
metadata may be unknown (None, "auto"), and the planner (`ace_step.sampling.planner.plan`) then writes it first
(phase 1, the original's chain of thought) before the audio codes (phase 2); the text encoder gets the
"Fill the audio semantic mask" instruction without codes and "Generate audio semantic tokens" with them, and the
planner's caption when it wrote one (the original's use_cot_caption). Language: the user's; when it is "auto", the
planner's (the original means to do this but reads a key its parser never writes), else "unknown".
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import torch

from ..ace_step.sampling.planner import PlanRequest, plan
from ..ace_step.sampling.planner_grammar import CAPTION_MAX_TOKENS
from ..ace_step.sampling.planner_lm import Qwen3PlannerLM
from ..ace_step.sampling.planner_sampling import SamplingParams
from ..ace_step.text.v15_prompts import (DURATION_MAX, SongMetadata, audio_code_count, caption_encoder_ids,
                                         lm_codes_prompt, lyric_encoder_ids)
from .memory import require_memory

TOKENS_KEY = "ace_step15"
METADATA_KEY = "ace_step15_metadata"
AUTO = "auto"
UNKNOWN_LANGUAGE = "unknown"
# Tokens of the phase-2 prompt beyond caption and lyrics: template, and the metadata YAML (its caption included).
PROMPT_OVERHEAD_TOKENS = 64 + CAPTION_MAX_TOKENS + 1


@dataclass(frozen=True)
class TextRequest:
    """What `tokenize` hands `encode_from_tokens`: the text as typed, the metadata the user gave (None = unknown),
    and the planner's settings."""

    caption: str
    lyrics: str
    known: SongMetadata
    generate_audio_codes: bool
    write_caption: bool
    sampling: SamplingParams


def _unknown(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in ("", AUTO, UNKNOWN_LANGUAGE))


def known_metadata(bpm=None, duration=None, timesignature=None, language=None, keyscale=None) -> SongMetadata:
    """The user's metadata, each field None when unknown: None, "auto", "" (and "unknown" for the language), or 0
    for bpm and duration (ComfyUI's widgets have no empty value). Out-of-range values are refused with the valid
    ones (SongMetadata)."""
    if isinstance(timesignature, str) and not _unknown(timesignature):
        timesignature = timesignature.strip()
        timesignature = timesignature[:-2] if timesignature.endswith(("/4", "/8")) else timesignature
        if not timesignature.isdecimal():
            raise ValueError(f"timesignature {timesignature!r} is not a number of beats per bar (2, 3, 4 or 6)")
        timesignature = int(timesignature)
    return SongMetadata(
        bpm=None if _unknown(bpm) or bpm == 0 else int(bpm),
        duration=None if _unknown(duration) or duration == 0 else float(duration),
        keyscale=None if _unknown(keyscale) else keyscale,
        timesignature=None if _unknown(timesignature) else timesignature,
        language=None if _unknown(language) else language)


def lm_working_bytes(config, rows: int, prompt_tokens: int, max_tokens: int, element: int) -> int:
    """Peak memory of planning beyond the LM's weights: the KV cache (keys and values of every layer for `rows`
    sequences of `max_tokens`), the prefill's activations (residual stream, projections, SwiGLU maps, and one
    layer's attention over the prompt: scores, softmax and masked copies per head, and the causal mask, which the
    planner's adapter attends to in windows of the cache) and a few float32 logit rows (guidance, masks,
    filtering)."""
    kv = 2 * config.num_layers * rows * config.num_kv_heads * max_tokens * config.head_dim * element
    prefill = rows * prompt_tokens * (8 * config.hidden_size + 3 * config.num_heads * config.head_dim
                                      + 3 * config.intermediate_size + (4 * config.num_heads + 2) * prompt_tokens) * element
    logits = 8 * rows * config.vocab_size * 4
    return kv + prefill + logits


def encoder_working_bytes(config, tokens: int, element: int) -> int:
    """Peak memory of one text-encoder pass over `tokens` beyond the weights (as `lm_working_bytes`'s prefill)."""
    return tokens * (8 * config.hidden_size + 3 * config.num_heads * config.head_dim + 3 * config.intermediate_size
                     + config.num_heads * tokens) * element


class AceStep15Clip:
    """CLIP for ACE-Step 1.5 (module docstring). `lm` / `lm_tokenizer` None: no planner (metadata left unknown
    stays "N/A" for the text encoder; asking for audio codes is refused with the fix)."""

    def __init__(self, text_encoder, text_tokenizer, lm=None, lm_tokenizer=None, patcher=None, lm_patcher=None):
        self.text_encoder, self.text_tokenizer = text_encoder, text_tokenizer
        self.lm, self.lm_tokenizer = lm, lm_tokenizer
        self.patcher = patcher or comfy.model_patcher.ModelPatcher(
            text_encoder, load_device=mm.text_encoder_device(), offload_device=mm.text_encoder_offload_device())
        self.patcher.is_clip = True
        self.lm_patcher = lm_patcher
        if lm is not None and lm_patcher is None:
            self.lm_patcher = comfy.model_patcher.ModelPatcher(
                lm, load_device=mm.get_torch_device(), offload_device=mm.text_encoder_offload_device())

    def clone(self) -> "AceStep15Clip":
        return AceStep15Clip(self.text_encoder, self.text_tokenizer, self.lm, self.lm_tokenizer, self.patcher.clone(),
                             None if self.lm_patcher is None else self.lm_patcher.clone())

    @property
    def has_planner(self) -> bool:
        return self.lm is not None

    # ------------------------------------------------------------------------------------------------ tokenize
    def tokenize(self, text: str, lyrics: str = "", bpm=None, duration=None, timesignature=None, language=None,
                 keyscale=None, seed: int = 0, generate_audio_codes: bool = True, cfg_scale: float = 2.0,
                 temperature: float = 0.85, top_p: float = 0.9, top_k: int = 0, min_p: float = 0.0,
                 write_caption: bool = True, **kwargs) -> dict:
        """The request `encode_from_tokens` runs (the prompts depend on the plan, so they are tokenized there)."""
        sampling = SamplingParams(cfg_scale=float(cfg_scale), temperature=float(temperature), top_k=int(top_k),
                                  top_p=float(top_p), min_p=float(min_p), seed=int(seed))
        known = known_metadata(bpm, duration, timesignature, language, keyscale)
        return {TOKENS_KEY: TextRequest(text, lyrics, known, bool(generate_audio_codes), bool(write_caption),
                                        sampling)}

    # ------------------------------------------------------------------------------------------------ planning
    def _plan(self, request: TextRequest) -> tuple[SongMetadata, list[int]]:
        """(metadata with the planner's values for the unknown fields, audio codes or []) for a request."""
        if self.lm is None:
            if request.generate_audio_codes:
                raise ValueError("generate_audio_codes is on but no 5 Hz LM is loaded: choose an LM file "
                                 "(lm_name) in Load ACE-Step 1.5 Text Encoders, use a checkpoint that holds one, "
                                 "or turn generate_audio_codes off")
            return request.known, []
        if not request.generate_audio_codes and request.known.has_planning_fields():
            return request.known, []  # nothing for the planner to write
        rows = 2 if request.sampling.guided else 1
        prompt = len(self.lm_tokenizer.encode(lm_codes_prompt(request.caption, request.lyrics, SongMetadata())))
        prompt += PROMPT_OVERHEAD_TOKENS
        codes = audio_code_count(request.known.duration or DURATION_MAX) if request.generate_audio_codes else 0
        max_tokens = prompt + max(codes, CAPTION_MAX_TOKENS + PROMPT_OVERHEAD_TOKENS)
        dtype = self.lm_dtype
        device = self.lm_patcher.load_device
        work = lm_working_bytes(self.lm.config, rows, prompt, max_tokens, torch.finfo(dtype).bits // 8)
        require_memory(work, device, f"planning with the 5 Hz LM ({prompt:,} prompt tokens, {codes:,} audio codes)",
                       "shorten the lyrics or the song, use a smaller LM, or turn generate_audio_codes off")
        mm.load_models_gpu([self.lm_patcher], memory_required=work)
        progress = comfy.utils.ProgressBar(1)

        def on_progress(done: int, total: int):
            mm.throw_exception_if_processing_interrupted()
            progress.update_absolute(done, total)

        plan_request = PlanRequest(caption=request.caption, lyrics=request.lyrics, known=request.known,
                                   generate_codes=request.generate_audio_codes, write_caption=request.write_caption)
        # CUDA graphs need every weight on the device: not after a partial (low-VRAM) load.
        whole = self.lm_patcher.loaded_size() >= self.lm_patcher.model_size()
        lm = Qwen3PlannerLM(self.lm, max_tokens, device, dtype, rows=rows, cuda_graphs=whole)
        result = plan(lm, self.lm_tokenizer, plan_request, request.sampling, on_progress=on_progress, device=device)
        return result.metadata, result.codes[0]

    @property
    def lm_dtype(self) -> torch.dtype:
        return self.lm.model.embed_tokens.weight.dtype

    # ------------------------------------------------------------------------------------------------ encode
    def load_model(self):
        mm.load_model_gpu(self.patcher)
        return self.patcher

    def _encode_text(self, caption_ids: list[int], lyric_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        element = torch.finfo(self.text_encoder.embed_tokens.weight.dtype).bits // 8
        work = encoder_working_bytes(self.text_encoder.config, len(caption_ids), element)
        require_memory(work, self.patcher.load_device, f"encoding {len(caption_ids):,} caption tokens",
                       "shorten the tags")
        mm.load_models_gpu([self.patcher], memory_required=work)
        device = self.patcher.load_device
        with torch.no_grad():
            caption = self.text_encoder(torch.tensor([caption_ids], device=device))
            lyrics = self.text_encoder.embed(torch.tensor([lyric_ids], device=device))
        out = mm.intermediate_device()
        return caption.float().to(out), lyrics.float().to(out)

    def encode_from_tokens(self, tokens: dict, return_pooled=False, return_dict=False):
        request = tokens.get(TOKENS_KEY)
        if not isinstance(request, TextRequest):
            raise ValueError("these tokens were not made by an ACE-Step 1.5 CLIP's tokenize: tokenize the text with "
                             "the same CLIP")
        metadata, codes = self._plan(request)
        caption = metadata.caption if request.write_caption and metadata.caption else request.caption
        language = request.known.language or metadata.language or UNKNOWN_LANGUAGE
        metadata = replace(metadata, caption=caption, language=language)
        cond, lyrics = self._encode_text(
            caption_encoder_ids(self.text_tokenizer, caption, metadata, has_audio_codes=bool(codes)),
            lyric_encoder_ids(self.text_tokenizer, request.lyrics, language))
        extra = {"pooled_output": None, "conditioning_lyrics": lyrics, METADATA_KEY: metadata}
        if codes:
            extra["audio_codes"] = [codes]
        if return_dict:
            return {"cond": cond, **extra}
        return (cond, None) if return_pooled else cond

    def encode_from_tokens_scheduled(self, tokens: dict, unprojected=False, add_dict=None, show_pbar=True):
        out = self.encode_from_tokens(tokens, return_dict=True)
        cond = out.pop("cond")
        return [[cond, {**out, **(add_dict or {})}]]
