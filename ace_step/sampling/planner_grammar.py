"""The LM planner's constrained decoding: a state machine per sample that says, before each token, which tokens
may come (a mask row of `PlannerVocab`, a forced token, or a greedy pick) and follows the token chosen.

`MetadataGrammar` is phase 1 of ace-step/ACE-Step-1.5 (`acestep/constrained_logits_processor.py` @ f30aee4c,
`MetadataConstrainedLogitsProcessor` with stop_at_reasoning): "<think>\\n", then per field in the order bpm,
caption, duration, keyscale, language, timesignature its forced name tokens and its value (injected when the user
gave it, else sampled within the field's trie, the caption freely), each value ended by "\\n". Genres are skipped
(the original's default); caption and language can be skipped. The original then forces EOS in place of
"</think>"; the grammar is complete at that point and the block is parsed without the closing tag.
`CodesGrammar` is phase 2: exactly N audio-code tokens (the original blocks EOS until N codes, then forces it).

Where we differ from the original, each time to keep the block well-formed:
- language: the original picks the first token of the language greedily (the top logit among the languages'
  first tokens), then samples the rest within the trie; so do we.
- caption lines: after a token that ends a line, the original looks at the top logit: a token starting with a
  space or tab continues the caption (YAML's indented continuation), anything else ends it and the LM writes the
  next field name freely. We take the same top-logit decision (among the caption's allowed tokens), then sample
  the continuation among tokens that start with a space or tab, or force the next field's name.
- at 512 caption tokens the original forces a newline (and repeats that while the top logit indents); we end the
  caption at that newline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ..text.qwen_tokenizer import IM_END_ID
from ..text.v15_prompts import SongMetadata
from .planner_vocab import PlannerVocab

CAPTION_MAX_TOKENS = 512


@dataclass(frozen=True)
class Rule:
    """What may come next: `forced` (a token id), or a mask `row`, sampled, or its top logit when `greedy`;
    `gate` asks the decoder for the top logit within the row first (`resolve_gate`)."""

    row: int = 0
    forced: Optional[int] = None
    greedy: bool = False
    gate: bool = False


_FORCED_SEGMENT, _CHOICE_SEGMENT, _CAPTION_SEGMENT = "forced", "choice", "caption"


class MetadataGrammar:
    """Phase 1 for one sample. `known` values are injected; `write_caption` / `write_language` False leave those
    fields out (the original's use_cot_caption / use_cot_language)."""

    def __init__(self, vocab: PlannerVocab, known: SongMetadata, write_caption: bool = True,
                 write_language: bool = True):
        self.vocab = vocab
        self.tokens: list[int] = []
        self.segments: list[tuple[str, object]] = [(_FORCED_SEGMENT, [*vocab.think, vocab.newline])]
        for name in ("bpm", "caption", "duration", "keyscale", "language", "timesignature"):
            if (name == "caption" and not write_caption) or (name == "language" and not write_language):
                continue
            self.segments.append((_FORCED_SEGMENT, list(vocab.name_tokens[name])))
            value = getattr(known, name)
            if name == "caption":
                self.segments.append((_CAPTION_SEGMENT, None))
            elif value is not None:
                text = str(int(value)) if name == "duration" else str(value)  # the original's user_metadata text
                self.segments.append((_FORCED_SEGMENT, vocab.injected_tokens(text)))
            else:
                self.segments.append((_CHOICE_SEGMENT, name))
        self.segment = 0
        self._enter_segment()

    def _enter_segment(self) -> None:
        self.position = 0  # forced: index; choice: trie node; caption: tokens written
        self.at_line_start = False
        self.indenting = False

    @property
    def done(self) -> bool:
        return self.segment >= len(self.segments)

    def rule(self) -> Rule:
        if self.done:
            return Rule(forced=IM_END_ID)
        kind, data = self.segments[self.segment]
        if kind == _FORCED_SEGMENT:
            return Rule(forced=data[self.position])
        if kind == _CHOICE_SEGMENT:
            trie = self.vocab.tries[data]
            return Rule(row=trie.row[self.position], greedy=data == "language" and self.position == 0)
        if self.at_line_start:
            return Rule(row=self.vocab.caption_row, gate=True)
        if self.indenting:
            return Rule(row=self.vocab.caption_indent_row)
        if self.position >= CAPTION_MAX_TOKENS:
            return Rule(forced=self.vocab.newline)
        return Rule(row=self.vocab.caption_row)

    def _next_segment(self) -> None:
        self.segment += 1
        self._enter_segment()

    def resolve_gate(self, top_token: int) -> Rule:
        """At a caption line start, given the top-logit token: continue the caption (indented line) or end it."""
        self.at_line_start = False
        if bool(self.vocab.indents[top_token]):
            self.indenting = True
        else:
            self._next_segment()
        return self.rule()

    def advance(self, token: int) -> None:
        if self.done:
            return
        self.tokens.append(token)
        kind, data = self.segments[self.segment]
        if kind == _FORCED_SEGMENT:
            self.position += 1
            finished = self.position == len(data)
        elif kind == _CHOICE_SEGMENT:
            finished = token == self.vocab.newline
            if not finished:
                self.position = self.vocab.tries[data].children[self.position][token]
        else:
            self.position += 1
            self.indenting = False
            self.at_line_start = bool(self.vocab.opens_line[token])
            finished = self.at_line_start and self.position >= CAPTION_MAX_TOKENS
        if finished:
            self._next_segment()

    def max_tokens(self) -> int:
        """An upper bound on the tokens this grammar writes."""
        bound = 0
        for kind, data in self.segments:
            if kind == _FORCED_SEGMENT:
                bound += len(data)
            elif kind == _CHOICE_SEGMENT:
                bound += len(self.vocab.tries[data].children)  # a path is shorter than the node count
            else:
                bound += CAPTION_MAX_TOKENS + 1
        return bound


class CodesGrammar:
    """Phase 2 for one sample: exactly `count` audio-code tokens."""

    def __init__(self, vocab: PlannerVocab, count: int):
        if count < 1:
            raise ValueError(f"the planner writes at least one audio code, asked for {count}")
        self.vocab = vocab
        self.count = count
        self.tokens: list[int] = []

    @property
    def done(self) -> bool:
        return len(self.tokens) >= self.count

    def rule(self) -> Rule:
        return Rule(forced=IM_END_ID) if self.done else Rule(row=self.vocab.codes_row)

    def resolve_gate(self, top_token: int) -> Rule:
        raise AssertionError("audio codes have no gate")

    def advance(self, token: int) -> None:
        if not self.done:
            self.tokens.append(token)

    def max_tokens(self) -> int:
        return self.count
