"""What the LM planner's grammar needs from the tokenizer, built once per tokenizer: the token sequences of the
metadata field names and injected values, a token trie per constrained field, and one boolean vocabulary mask per
distinct allowed-token set (rows of one [S, V] tensor, so a decoding step masks every row with one masked_fill).

Facts reproduced from ace-step/ACE-Step-1.5 `acestep/constrained_logits_processor.py` @ f30aee4c
(`MetadataConstrainedLogitsProcessor`):
- a field name ("bpm:", "caption:", ...) is forced token by token, each time the longest prefix of the rest that
  is a single token. For "bpm:" that gives "bp" "m" ":" (17808, 76, 25), not the plain tokenization "b" "pm" ":"
  (65, 5187, 25); we keep the original's tokens.
- a value is constrained by a trie of the value tokens of "name: value" (the tokens after those of "name:"), so the
  leading space is part of the value: bpm 30..300 and duration 10..600 (digit by digit), the 70 keys, the 51
  languages, time signatures 2/3/4/6; a complete value allows the newline token (and, for bpm and duration, more
  digits: "30" may become "300"). The original forces the newline after a complete key, language or time
  signature; with Qwen's tokens none of those continues, so one rule serves all fields.
- a value the user gave is injected as the tokens of " {value}\\n".
- the caption is free text without backticks or audio-code tokens, at most 512 tokens. We also keep the other
  added tokens (<|im_end|>, <think>, ...) out of it, which the original leaves possible; one would cut the block.
- audio codes: <|audio_code_0|>..<|audio_code_63999|> only.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Iterable

import torch

from ..text.qwen_tokenizer import AUDIO_CODE_FIRST_ID, AUDIO_CODEBOOK_SIZE, ENDOFTEXT_ID, QwenTokenizer
from ..text.v15_prompts import (BPM_MAX, BPM_MIN, DURATION_MAX, DURATION_MIN, VALID_KEYSCALES, VALID_LANGUAGES,
                                VALID_TIME_SIGNATURES)

CHOICE_FIELDS = ("bpm", "duration", "keyscale", "language", "timesignature")
NAMED_FIELDS = ("bpm", "caption", "duration", "keyscale", "language", "timesignature")


def _field_values(name: str) -> list[str]:
    return {
        "bpm": [str(v) for v in range(BPM_MIN, BPM_MAX + 1)],
        "duration": [str(v) for v in range(DURATION_MIN, DURATION_MAX + 1)],
        "keyscale": list(VALID_KEYSCALES),
        "language": list(VALID_LANGUAGES),
        "timesignature": [str(v) for v in VALID_TIME_SIGNATURES],
    }[name]


@dataclass
class ChoiceTrie:
    """Token trie of one field's values. Node 0 is the root; `row[node]` is the mask row of its allowed tokens."""

    children: list[dict[int, int]] = field(default_factory=lambda: [{}])
    complete: list[bool] = field(default_factory=lambda: [False])
    row: list[int] = field(default_factory=list)

    def add(self, tokens: Iterable[int]) -> None:
        node = 0
        for token in tokens:
            nxt = self.children[node].get(token)
            if nxt is None:
                nxt = len(self.children)
                self.children[node][token] = nxt
                self.children.append({})
                self.complete.append(False)
            node = nxt
        self.complete[node] = True

    def allowed(self, node: int, newline: int) -> frozenset[int]:
        return frozenset(self.children[node]) | ({newline} if self.complete[node] else set())


class PlannerVocab:
    """The grammar's token facts for one tokenizer (LM flavour). Build through `planner_vocab(tokenizer)`."""

    def __init__(self, tokenizer: QwenTokenizer):
        if not tokenizer.has_audio_codes:
            raise ValueError("the planner needs the LM tokenizer (load it with audio_codes=True)")
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.vocab_size
        self.newline = tokenizer.encode("\n")[-1]
        self.think = tokenizer.encode("<think>")
        self.name_tokens = {name: tuple(self._forced_tokens(f"{name}:")) for name in NAMED_FIELDS}
        token_bytes = [tokenizer.token_bytes(i) for i in range(ENDOFTEXT_ID)]
        self.opens_line = torch.tensor([b"\n" in b for b in token_bytes] + [False] * (self.vocab_size - ENDOFTEXT_ID))
        self.indents = torch.tensor([b[:1] in (b" ", b"\t") for b in token_bytes]
                                    + [False] * (self.vocab_size - ENDOFTEXT_ID))

        self._rows: dict[frozenset[int] | str, int] = {}
        self._allowed: list[torch.Tensor] = []
        backtick = tokenizer.encode("`")[-1]
        caption = torch.zeros(self.vocab_size, dtype=torch.bool)
        caption[:ENDOFTEXT_ID] = True
        caption[backtick] = False
        self.caption_row = self._add_row("caption", caption)
        self.caption_indent_row = self._add_row("caption_indent", caption & self.indents)
        codes = torch.zeros(self.vocab_size, dtype=torch.bool)
        codes[AUDIO_CODE_FIRST_ID:AUDIO_CODE_FIRST_ID + AUDIO_CODEBOOK_SIZE] = True
        self.codes_row = self._add_row("codes", codes)
        self.tries = {name: self._build_trie(name) for name in CHOICE_FIELDS}
        self.blocked = ~torch.stack(self._allowed)  # [S, V], True = masked out
        self._on_device: dict[tuple[torch.device, int], torch.Tensor] = {}

    def _forced_tokens(self, text: str) -> list[int]:
        """The original's fixed-string rule: repeatedly the longest prefix of the rest that is one token."""
        tokens: list[int] = []
        rest = text
        while rest:
            for end in range(len(rest), 0, -1):
                ids = self.tokenizer.encode(rest[:end])
                if len(ids) == 1:
                    tokens.append(ids[0])
                    rest = rest[end:]
                    break
            else:
                raise ValueError(f"no single token starts {rest!r}")
        return tokens

    def value_tokens(self, name: str, value: str) -> list[int]:
        """The tokens of `value` after the field name "name:", as the tokenizer splits "name: value"."""
        context = self.tokenizer.encode(f"{name}:")
        full = self.tokenizer.encode(f"{name}: {value}")
        if full[: len(context)] != context:
            raise ValueError(f"the tokens of {name + ': ' + value!r} do not start with those of {name + ':'!r}")
        return full[len(context):]

    def injected_tokens(self, value: str) -> list[int]:
        """A value the user gave: the tokens of " {value}\\n"."""
        return self.tokenizer.encode(f" {value}\n")

    def _add_row(self, key: frozenset[int] | str, allowed: torch.Tensor) -> int:
        if key not in self._rows:
            self._rows[key] = len(self._allowed)
            self._allowed.append(allowed)
        return self._rows[key]

    def _row_of(self, tokens: frozenset[int]) -> int:
        if tokens not in self._rows:
            allowed = torch.zeros(self.vocab_size, dtype=torch.bool)
            allowed[list(tokens)] = True
            self._add_row(tokens, allowed)
        return self._rows[tokens]

    def _build_trie(self, name: str) -> ChoiceTrie:
        trie = ChoiceTrie()
        for value in _field_values(name):
            trie.add(self.value_tokens(name, value))
        trie.row = [self._row_of(trie.allowed(node, self.newline)) for node in range(len(trie.children))]
        return trie

    @property
    def mask_rows(self) -> int:
        return self.blocked.shape[0]

    def blocked_on(self, device: torch.device, width: int) -> torch.Tensor:
        """The masks [S, width] on `device`, columns past the tokenizer's ids blocked; made once per device/width."""
        key = (torch.device(device), width)
        if key not in self._on_device:
            if width < self.vocab_size:
                raise ValueError(f"the LM gives {width} logits, its tokenizer has {self.vocab_size} ids")
            pad = torch.ones(self.mask_rows, width - self.vocab_size, dtype=torch.bool)
            self._on_device[key] = torch.cat([self.blocked, pad], dim=1).to(device)
        return self._on_device[key]


_VOCABS: "weakref.WeakKeyDictionary[QwenTokenizer, PlannerVocab]" = weakref.WeakKeyDictionary()


def planner_vocab(tokenizer: QwenTokenizer) -> PlannerVocab:
    """The PlannerVocab of `tokenizer`, built on first use and kept as long as the tokenizer lives."""
    vocab = _VOCABS.get(tokenizer)
    if vocab is None:
        vocab = _VOCABS[tokenizer] = PlannerVocab(tokenizer)
    return vocab
