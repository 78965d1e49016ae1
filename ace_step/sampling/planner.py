"""The ACE-Step 1.5 5 Hz LM planner's decoding, independent of the network: the two phases of the original
pipeline (ace-step/ACE-Step-1.5 `acestep/llm_inference.py` @ f30aee4c, `generate_with_stop_condition`), each a
guided, constrained decode over an abstract LM (`PlannerLM`).

- Phase 1 (chain of thought) runs when the user did not give all of bpm, duration, keyscale and time signature: the
  LM writes the metadata block (`MetadataGrammar`), the given values injected; its result is parsed.
- Phase 2 writes exactly int(duration * 5) audio codes (`CodesGrammar`) after a prompt that holds the metadata as
  YAML. Skipped with `generate_codes=False` (the original's infer_type "dit": metadata only).
Conditional and unconditional (CFG) rows go through the LM in one batch: rows [0, n) conditional, [n, 2n)
unconditional; both get the token chosen from the guided logits, as in the original.

Differences from the original: the code count is always fixed, from the user's duration or else the one the LM
wrote (the original fixes it only for a user duration and lets the LM stop itself otherwise); one seeded
torch.Generator per plan instead of the global RNG; the grammar differences listed in `planner_grammar`.

ComfyUI native (Comfy-Org/ComfyUI `comfy/text_encoders/ace15.py` @ 523fba4d, `sample_manual_loop_no_classes`) runs
phase 2 only (its node requires all four planning fields) with the prompts of `v15_prompts`, restricts the logits
to the code ids 151669..215668 from the first step and writes ceil(duration) * 5 codes; guidance whenever
cfg_scale != 1; sampling as `planner_sampling` (plus min-p); its generator is seeded per call like ours.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, Sequence, Union

import torch

from ..text.qwen_tokenizer import AUDIO_CODE_FIRST_ID, ENDOFTEXT_ID, QwenTokenizer
from ..text.v15_prompts import (DEFAULT_NEGATIVE_PROMPT, SongMetadata, audio_code_count, lm_codes_prompt,
                                lm_codes_unconditional_prompt, lm_cot_prompt, lm_cot_unconditional_prompt,
                                parse_lm_output)
from .planner_grammar import CodesGrammar, MetadataGrammar
from .planner_sampling import SamplingParams, draw, filter_logits, guided_logits
from .planner_vocab import PlannerVocab, planner_vocab

ProgressCallback = Callable[[int, int], None]
Grammar = Union[MetadataGrammar, CodesGrammar]
PROGRESS_EVERY = 25  # tokens between progress reports (5 seconds of audio codes)
COT_PROGRESS_TOKENS = 100  # the share of a progress bar phase 1 takes until its real length is known


class PlannerLM(Protocol):
    """What the planner needs from the 5 Hz LM (a Qwen3 causal LM with a KV cache).

    `prefill` starts new sequences: input_ids [B, L] int64, rows left-padded with <|endoftext|>; key_padding [B, L]
    bool, True at padding, which attention must ignore (positions should count the real tokens only, as the
    original's nano-vllm backend has no padding at all). Returns the logits [B, V] of each row's last position,
    V >= 217204. `step` appends token_ids [B, 1] (same device as the logits) and returns the next logits [B, V].
    An LM may also have `release()`, which frees what it holds for the sequences (a KV cache): `plan` calls it
    when it ends, by an exception too (a ComfyUI interrupt raised from `on_progress`)."""

    def prefill(self, input_ids: torch.Tensor, key_padding: torch.Tensor) -> torch.Tensor: ...

    def step(self, token_ids: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class PlanRequest:
    """caption, lyrics: as the user typed them. known: the metadata the user gave (injected, never re-decided);
    the original passes bpm, duration, keyscale and time signature; a language given here is injected too.
    write_caption / write_language: let the LM write a caption / a language (the original's use_cot_caption and
    use_cot_language). batch_size: code sequences to draw from one metadata block (the original's batch mode)."""

    caption: str
    lyrics: str
    known: SongMetadata = field(default_factory=SongMetadata)
    generate_codes: bool = True
    write_caption: bool = True
    write_language: bool = True
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    batch_size: int = 1

    def __post_init__(self):
        if self.known.caption is not None:
            raise ValueError("PlanRequest.known.caption must be None: the caption goes in PlanRequest.caption")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass(frozen=True)
class PlanResult:
    """metadata: the known values with the LM's for the rest. codes: per batch item, audio codes 0..63999 (empty
    lists without codes). cot_tokens: the token ids phase 1 wrote (empty when it was skipped)."""

    metadata: SongMetadata
    codes: list[list[int]]
    cot_tokens: list[int]


class _Progress:
    """One progress bar over both phases: phase 1 counts as COT_PROGRESS_TOKENS (or its length so far, if longer)
    until it ends, phase 2 as its code count (per sample)."""

    def __init__(self, callback: Optional[ProgressCallback], every: int, codes: int):
        self.callback = callback
        self.every = every
        self.codes = codes  # phase-2 steps; 0 while the duration is not known yet
        self.cot_tokens = 0

    def _due(self, step: int, finished: bool) -> bool:
        return self.callback is not None and (finished or step % self.every == 0)

    def cot(self, step: int, finished: bool) -> None:
        self.cot_tokens = step
        if self._due(step, finished):
            self.callback(step, (step if finished else max(COT_PROGRESS_TOKENS, step + 1)) + self.codes)

    def code(self, step: int, finished: bool) -> None:
        if self._due(step, finished):
            self.callback(self.cot_tokens + step, self.cot_tokens + self.codes)


def _pad_left(rows: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), ENDOFTEXT_ID, dtype=torch.long)
    padding = torch.ones((len(rows), length), dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, length - len(row):] = torch.tensor(row, dtype=torch.long)
        padding[i, length - len(row):] = False
    return ids.to(device), padding.to(device)


def decode(lm: PlannerLM, vocab: PlannerVocab, grammars: Sequence[Grammar], cond: Sequence[Sequence[int]],
           uncond: Optional[Sequence[Sequence[int]]], params: SamplingParams, generator: Optional[torch.Generator],
           progress: Callable[[int, bool], None], device: torch.device) -> None:
    """Runs `grammars` (one per conditional row) to completion; their `tokens` hold the result. `uncond` rows
    (same count) make the unconditional half of the batch when params.guided."""
    n = len(grammars)
    rows = list(cond) + (list(uncond) if params.guided else [])
    input_ids, key_padding = _pad_left(rows, device)
    logits = lm.prefill(input_ids, key_padding)
    limit = max(g.max_tokens() for g in grammars)
    for step in range(limit + 1):
        rules = [g.rule() for g in grammars]
        if any(r.forced is None for r in rules):
            guided = guided_logits(logits[:n], logits[n:] if params.guided else None, params.cfg_scale)
            blocked = vocab.blocked_on(guided.device, guided.shape[-1])
            gates = [i for i, r in enumerate(rules) if r.gate]
            if gates:
                rows_gate = torch.tensor([rules[i].row for i in gates], device=guided.device)
                top = guided[gates].masked_fill(blocked[rows_gate], float("-inf")).argmax(dim=-1).tolist()
                for i, token in zip(gates, top):
                    rules[i] = grammars[i].resolve_gate(token)
            mask_rows = torch.tensor([r.row for r in rules], device=guided.device)
            guided = guided.masked_fill(blocked[mask_rows], float("-inf"))
            chosen = draw(filter_logits(guided, params), params.temperature, generator)
            if any(r.greedy for r in rules):
                greedy = torch.tensor([r.greedy for r in rules], device=guided.device)
                chosen = torch.where(greedy, guided.argmax(dim=-1), chosen)
            tokens = [r.forced if r.forced is not None else t for r, t in zip(rules, chosen.tolist())]
        else:
            tokens = [r.forced for r in rules]
        for grammar, token in zip(grammars, tokens):
            grammar.advance(token)
        finished = all(g.done for g in grammars)
        progress(step + 1, finished)
        if finished:
            return
        next_ids = torch.tensor(tokens * (2 if params.guided else 1), dtype=torch.long, device=logits.device)
        logits = lm.step(next_ids[:, None])
    raise RuntimeError(f"the planner grammar did not finish within {limit} tokens")


def plan(lm: PlannerLM, tokenizer: QwenTokenizer, request: PlanRequest, params: SamplingParams = SamplingParams(),
         on_progress: Optional[ProgressCallback] = None, progress_every: int = PROGRESS_EVERY,
         device: Union[str, torch.device] = "cpu") -> PlanResult:
    """Metadata (phase 1 when needed) and audio codes (phase 2 when asked) for one song. `on_progress(done, total)`
    is called every `progress_every` tokens and at the end of each phase; it may raise to interrupt. `device`:
    where the prompt ids go (the LM's)."""
    try:
        return _plan(lm, tokenizer, request, params, on_progress, progress_every, device)
    finally:
        release = getattr(lm, "release", None)
        if release is not None:
            release()


def _plan(lm: PlannerLM, tokenizer: QwenTokenizer, request: PlanRequest, params: SamplingParams,
          on_progress: Optional[ProgressCallback], progress_every: int, device: Union[str, torch.device]
          ) -> PlanResult:
    vocab = planner_vocab(tokenizer)
    device = torch.device(device)
    generator = torch.Generator(device=device).manual_seed(params.seed)
    known = request.known
    run_cot = not known.has_planning_fields()
    codes_known = audio_code_count(known.duration) if request.generate_codes and known.duration is not None else 0
    progress = _Progress(on_progress, progress_every, codes_known)

    metadata, cot_tokens = known, []
    if run_cot:
        grammar = MetadataGrammar(vocab, known, request.write_caption, request.write_language)
        cond = [tokenizer.encode(lm_cot_prompt(request.caption, request.lyrics))]
        uncond = [tokenizer.encode(lm_cot_unconditional_prompt(request.lyrics, request.negative_prompt))]
        decode(lm, vocab, [grammar], cond, uncond, params, generator, progress.cot, device)
        cot_tokens = grammar.tokens
        metadata = known.merged_over(parse_lm_output(tokenizer.decode(cot_tokens))[0])
    if not request.generate_codes:
        return PlanResult(metadata, [[] for _ in range(request.batch_size)], cot_tokens)

    count = audio_code_count(metadata.duration)
    progress.codes = count
    grammars = [CodesGrammar(vocab, count) for _ in range(request.batch_size)]
    cond = [tokenizer.encode(lm_codes_prompt(request.caption, request.lyrics, metadata))] * request.batch_size
    uncond = [tokenizer.encode(lm_codes_unconditional_prompt(request.caption, request.lyrics,
                                                             request.negative_prompt))] * request.batch_size
    decode(lm, vocab, grammars, cond, uncond, params, generator, progress.code, device)
    codes = [[token - AUDIO_CODE_FIRST_ID for token in g.tokens] for g in grammars]
    return PlanResult(metadata, codes, cot_tokens)
