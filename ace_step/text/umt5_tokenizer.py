"""UMT5 tokenizer for the tag prompt, with ComfyUI's prompt-weight syntax.

Two interchangeable backends give the same ids for the same SentencePiece model:
- the SentencePiece model bytes stored in the all-in-one checkpoint (`text_encoders.spiece_model`, a uint8 tensor),
  read with the `sentencepiece` package, which is what ComfyUI does;
- a HuggingFace `tokenizer.json` (the original ACE-Step folder `umt5-base/tokenizer.json`), read with `tokenizers`.

`encode(text)` reproduces ComfyUI's UMT5BaseTokenizer: the `(text:1.2)` weight syntax is parsed and stripped, each
weighted segment is tokenised on its own, EOS (id 1) is appended, no BOS, no padding, no truncation.
`encode(text, weight_syntax=False, max_length=256)` is the original ACE-Step pipeline instead: the whole prompt in
one piece, truncated to 255 tokens + EOS.
One known backend difference: a tokenizer.json matches control pieces written literally in the text ("</s>",
"<pad>") as those tokens, SentencePiece (and so ComfyUI) reads them as plain characters.
`encode_with_weights(text)` returns the (id, weight) pairs that `umt5.encode_token_weights` turns into ComfyUI's
weighted conditioning.
"""
from __future__ import annotations

import math
import os
import re

EOS_ID = 1
PAD_ID = 0
ORIGINAL_MAX_LENGTH = 256  # the original ACE-Step pipeline: truncation=True, max_length=256 (EOS included)

_EMBEDDING_PREFIX = "embedding:"
MAX_NESTING = 100  # deeper "((( ... )))" is no emphasis anyone means (1.1^100 = 13781), only a recursion risk
# ComfyUI lets "\(" and "\)" stand for literal parentheses; they hide behind these codes while weights are parsed.
_ESCAPES = (("\\)", "\0\1"), ("\\(", "\0\2"))


def valid_unicode(text: str) -> str:
    """`text` with lone surrogates (which JSON can carry but no tokenizer takes) replaced by U+FFFD."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _split_top_level_groups(text: str) -> list[str]:
    """Cuts text into plain runs and top-level "( ... )" groups, ComfyUI's way.

    Quirks kept on purpose (they decide which ids the prompt gets): a ")" without an opener drives the depth below
    zero and is kept as text, so the following "(" only brings the depth back to zero and opens no group; an
    unclosed group runs to the end of the text.
    """
    parts: list[str] = []
    current = ""
    depth = 0
    for ch in text:
        if ch == "(":
            if depth == 0:
                if current:
                    parts.append(current)
                current = ""
            current += ch
            depth += 1
        elif ch == ")":
            depth -= 1
            current += ch
            if depth == 0:
                parts.append(current)
                current = ""
        else:
            current += ch
    if current:
        parts.append(current)
    return parts


def _parse_weights(text: str, weight: float, depth: int = 0) -> list[tuple[str, float]]:
    if depth > MAX_NESTING:
        raise ValueError(f"the tags nest parentheses more than {MAX_NESTING} deep: "
                         "close them sooner, or write \\( and \\) for literal parentheses")
    segments: list[tuple[str, float]] = []
    for part in _split_top_level_groups(text):
        if not (len(part) >= 2 and part[0] == "(" and part[-1] == ")"):
            segments.append((part, weight))
            continue
        inner = part[1:-1]
        inner_weight = weight * 1.1  # "(x)" emphasises by 1.1 per level
        colon = inner.rfind(":")
        if colon > 0:  # "(x:1.3)" sets the weight outright; a tail that is no number stays text
            try:
                inner_weight = float(inner[colon + 1:])
                inner = inner[:colon]
            except ValueError:
                pass
            # A NaN or infinite weight would turn the whole condition, and so the song, into NaN.
            if not math.isfinite(inner_weight):
                raise ValueError(f"the tag weight in {part!r} is not a finite number: use a weight such as 1.2")
        segments.extend(_parse_weights(inner, inner_weight, depth + 1))
    return segments


def parse_prompt_weights(text: str) -> list[tuple[str, float]]:
    """Splits a prompt into (text, weight) segments with ComfyUI's syntax.

    "(x)" multiplies the enclosing weight by 1.1, "(x:w)" sets it to w, groups nest, "\\(" and "\\)" are literal
    parentheses. Segments come back in order, escapes resolved, possibly with empty or whitespace-only text.
    """
    for raw, code in _ESCAPES:
        text = text.replace(raw, code)
    segments = _parse_weights(text, 1.0)
    out = []
    for segment, weight in segments:
        for raw, code in _ESCAPES:
            segment = segment.replace(code, raw[1:])
        out.append((segment, weight))
    return out


def _comfy_words(segment: str) -> list[str]:
    """The pieces of one weighted segment that ComfyUI tokenises separately.

    ComfyUI cuts a segment before every " embedding:" / "\\nembedding:" (dropping that space or newline) to look
    for textual-inversion embeddings. UMT5BaseTokenizer gets no embeddings folder, so the "embedding:NAME" words
    stay text, but the cut still changes the ids (each piece gets its own leading "▁"): we cut the same way.
    """
    parts = re.split(f" {_EMBEDDING_PREFIX}|\n{_EMBEDDING_PREFIX}", segment)
    words = [parts[0]] + [_EMBEDDING_PREFIX + p for p in parts[1:]]
    return [w for w in words if w]


class UMT5Tokenizer:
    """UMT5 tokenizer: `encode(text) -> list[int]` with EOS appended (see the module doc for the modes)."""

    def __init__(self, backend):
        self._backend = backend

    @classmethod
    def from_spiece_model(cls, data) -> "UMT5Tokenizer":
        """From SentencePiece model bytes: `bytes`, a uint8 torch tensor (the checkpoint's spiece_model) or numpy."""
        if hasattr(data, "numpy"):
            data = data.detach().cpu().numpy()
        if hasattr(data, "tobytes"):
            data = data.tobytes()
        return cls(_SentencePieceBackend(bytes(data)))

    @classmethod
    def from_tokenizer_json(cls, source: str | os.PathLike) -> "UMT5Tokenizer":
        """From a HF tokenizer.json: a file, a folder holding one (e.g. `umt5-base/`), or the JSON text itself."""
        source = os.fspath(source)
        if source.lstrip().startswith("{"):
            return cls(_TokenizersBackend(source))
        if os.path.isdir(source):
            source = os.path.join(source, "tokenizer.json")
        with open(source, encoding="utf-8") as f:
            return cls(_TokenizersBackend(f.read()))

    @property
    def vocab_size(self) -> int:
        return self._backend.vocab_size

    def tokenize_segment(self, text: str) -> list[int]:
        """Ids of one piece of text, no EOS."""
        return self._backend.encode(text)

    def encode_with_weights(self, text: str, *, weight_syntax: bool = True,
                            max_length: int | None = None) -> list[tuple[int, float]]:
        """[(id, weight), ...] ending with (EOS, 1.0).

        weight_syntax=True: ComfyUI's UMT5BaseTokenizer (weights parsed, each segment tokenised on its own).
        weight_syntax=False: the whole text in one piece, every weight 1.0 (the original pipeline).
        max_length: keep at most max_length - 1 tokens before the EOS (None: no limit, as ComfyUI).
        """
        text = valid_unicode(text)
        pairs: list[tuple[int, float]] = []
        if weight_syntax:
            for segment, weight in parse_prompt_weights(text):
                for word in _comfy_words(segment):
                    pairs.extend((t, weight) for t in self._backend.encode(word))
        else:
            pairs = [(t, 1.0) for t in self._backend.encode(text)]
        if max_length is not None:
            pairs = pairs[:max(max_length - 1, 0)]
        return pairs + [(EOS_ID, 1.0)]

    def encode(self, text: str, *, weight_syntax: bool = True, max_length: int | None = None) -> list[int]:
        """Token ids ending with EOS; the same modes as encode_with_weights, weights dropped."""
        return [t for t, _ in self.encode_with_weights(text, weight_syntax=weight_syntax, max_length=max_length)]

    def encode_original(self, text: str) -> list[int]:
        """The original ACE-Step pipeline: the raw prompt, truncated to 256 tokens including EOS."""
        return self.encode(text, weight_syntax=False, max_length=ORIGINAL_MAX_LENGTH)


class _SentencePieceBackend:
    def __init__(self, model_bytes: bytes):
        import sentencepiece

        # add_eos off: the EOS is appended once per prompt, not once per weighted segment.
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=model_bytes, add_bos=False, add_eos=False)
        self.vocab_size = self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))


class _TokenizersBackend:
    def __init__(self, json_text: str):
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_str(json_text)
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        # The file's post-processor would append "</s>" itself; we append the EOS ourselves, once.
        return self._tok.encode(text, add_special_tokens=False).ids
