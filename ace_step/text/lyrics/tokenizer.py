"""ACE-Step v1 lyric tokenizer: lyrics text -> the token ids the lyric encoder embeds.

Output layout (as the original pipeline's `tokenize_lyrics`): [START] (261), then for every line of
``lyrics.split("\\n")``, stripped: an empty line gives [SPACE] (2); any other line gives its language token, the BPE
ids of the cleaned line, and [SPACE] (2) as line separator.

Per line:
* An explicit ``[xx]`` prefix with one of the 17 supported codes (ComfyUI's convention, e.g. ``[ko]saranghae``)
  forces the language; the prefix is removed. Otherwise the language is detected like the original does
  (`langdetect.detect_language`); codes outside the 17 become "en".
* A line that starts with a ``[...]`` tag (``[verse]``, ``[Chorus 2]``) is encoded as English, whatever its language.
* Cleaning per language: zh -> numbers in Chinese, then tone-numbered pinyin; ko -> romanised Hangul (hangul-romanize);
  ja -> romaji (cutlet, see ja.py); hi -> lowercase only; the others -> numbers/abbreviations/symbols spelled out.
  A forced ``[zh]`` line without Chinese characters is taken as pinyin the user wrote (tone digits kept).
* Parentheses are kept as ordinary characters (ComfyUI's weight parser removes them; we do not).
* Errors never lose a line: the original printed and dropped a line whose cleaner failed; we encode it as English
  with basic cleaning instead and log a warning.

`encode_with_report` also says what the model will not get (`report.LyricReport`): the lines with characters it
cannot read (ids [UNK], or a "?" or nothing in Japanese), with the language each was encoded as and why, and
whether the lyrics are longer than the 4096 tokens ACE-Step v1 was trained on.

Empty lyrics: `encode("")` gives ``[261]`` (ComfyUI's output); `encode_with_mask("")` gives the original pipeline's
``([0], [0])`` (one [STOP] token, masked out). Non-empty lyrics always have a mask of ones.
"""
from __future__ import annotations

import logging
import os
import re
import unicodedata
from typing import NamedTuple

from ..umt5_tokenizer import valid_unicode
from .cleaners import MULTILINGUAL, basic_cleaners, collapse_whitespace, multilingual_cleaners
from .ja import romanize_japanese
from .ko import romanize_korean
from .langdetect import detect_language
from .report import LyricReport, UnreadableLine
from .vocab import LANGUAGE_NAMES, LANGUAGE_TOKENS, SPACE, START, STOP, SUPPORTED_LANGUAGES, UNK, find_vocab, load_bpe
from .zh import to_pinyin

log = logging.getLogger(__name__)

_STRUCTURE_LINE = re.compile(r"\[.*?\]")
# Invisible characters that carry no sound: control characters other than whitespace (category Cc) and format
# characters (Cf: zero-width space/joiners, BOM, bidi marks, soft hyphen). The original turned each into [UNK] or
# split words with them; we drop them (a deliberate difference; real lyrics do not contain them).
_INVISIBLE_CATEGORIES = ("Cc", "Cf")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_TAG_BRACKETS = frozenset("[]")


def sanitize(text: str) -> str:
    """Valid text without invisible characters: lone surrogates become U+FFFD, Cc/Cf characters are removed."""
    text = valid_unicode(text)
    if text.isprintable():
        return text
    return "".join(c for c in text if c.isspace() or unicodedata.category(c) not in _INVISIBLE_CATEGORIES)


def split_language_prefix(line: str) -> tuple[str | None, str]:
    """``"[ko]saranghae"`` -> ("ko", "saranghae"); lines without a supported ``[xx]`` prefix -> (None, line)."""
    if len(line) >= 4 and line[0] == "[" and line[3] == "]":
        code = line[1:3].lower()
        if code in LANGUAGE_TOKENS:
            return code, line[4:].strip()
    return None, line


def line_language(content: str, forced: str | None = None) -> tuple[str, str]:
    """The language a line (without its [xx] prefix) is encoded in, and why, in words for the user."""
    if _STRUCTURE_LINE.match(content):
        return "en", "a line that starts with a [tag] is encoded as English"
    if forced is not None:
        return forced, f"{LANGUAGE_NAMES[forced]}, as its [{forced}] prefix says"
    detected = detect_language(content)
    if detected in LANGUAGE_TOKENS:
        return detected, f"detected as {LANGUAGE_NAMES[detected]}"
    return "en", f"detected as '{detected}', a language ACE-Step v1 does not read, so encoded as English"


def _clean(text: str, lang: str) -> tuple[str, str]:
    """(the cleaned text for one line in one language, characters the cleaning could not render)."""
    if lang in MULTILINGUAL:
        text = multilingual_cleaners(text, lang)
        if lang == "zh":
            text = to_pinyin(text)
        elif lang == "ko":
            text = romanize_korean(text)
        return text, ""
    if lang == "ja":
        return romanize_japanese(text)
    return basic_cleaners(text), ""  # hi (the original's "basic" path) and anything else


def preprocess(text: str, lang: str) -> str:
    """The cleaned text for one line in one language (before the language token and [SPACE] substitution)."""
    return _clean(text, lang)[0]


class _Line(NamedTuple):
    text: str  # stripped
    ids: list[int]  # without the trailing [SPACE]
    language: str
    why_language: str
    unreadable: str  # characters the model does not get, each once

    @property
    def only_tag_brackets(self) -> bool:
        return bool(_STRUCTURE_LINE.match(self.text)) and set(self.unreadable) <= _TAG_BRACKETS


def _merge(*groups: str) -> str:
    return "".join(dict.fromkeys("".join(groups)))


class LyricTokenizer:
    """Lyrics -> lyric token ids. The vocabulary is loaded once per path (shared between instances)."""

    def __init__(self, vocab_path: str | os.PathLike | None = None, comfyui_root: str | os.PathLike | None = None):
        self.vocab_path = find_vocab(comfyui_root=comfyui_root, explicit_path=vocab_path)
        self.bpe = load_bpe(str(self.vocab_path))

    # -- one line ------------------------------------------------------------------------------------------------
    def _bpe(self, text: str, lang: str) -> tuple[list[int], str]:
        """([lang] + BPE ids of the cleaned text, the characters that became [UNK])."""
        tag = "zh-cn" if lang == "zh" else lang
        text = f"[{tag}]" + text.replace(" ", "[SPACE]")
        encoding = self.bpe.encode(text)
        ids = encoding.ids
        if UNK not in ids:
            return ids, ""
        return ids, _merge(*(text[a:b] for i, (a, b) in zip(ids, encoding.offsets) if i == UNK))

    def encode_line(self, text: str, lang: str) -> list[int]:
        """[lang] + BPE ids of `text` cleaned for `lang` (no trailing [SPACE]); like the original `encode`."""
        if lang not in LANGUAGE_TOKENS:
            raise ValueError(f"unsupported lyric language {lang!r}; supported: {', '.join(SUPPORTED_LANGUAGES)}")
        return self._bpe(preprocess(text, lang), lang)[0]

    def _line(self, line: str) -> _Line | None:
        line = sanitize(line).strip()
        if not line:
            return None
        forced, content = split_language_prefix(line)
        lang, why = line_language(content, forced)
        try:
            if forced == "zh" and lang == "zh" and not _HAN.search(content):
                # The user wrote pinyin ("[zh]ni3 hao3"): keep it, tone digits included.
                ids, unknown = self._bpe(collapse_whitespace(content.replace('"', "").lower()), "zh")
                return _Line(line, ids, lang, why + " (no Chinese characters: read as pinyin)", unknown)
            text, lost = _clean(content, lang)
            ids, unknown = self._bpe(text, lang)
            return _Line(line, ids, lang, why, _merge(lost, unknown))
        except Exception as err:  # a cleaner failed: keep the line, as English with basic cleaning
            log.warning("lyric line %r could not be cleaned as %s (%s); encoding it as English", line, lang, err)
            ids, unknown = self._bpe(basic_cleaners(content), "en")
            return _Line(line, ids, "en", f"{why}, but its {LANGUAGE_NAMES[lang]} cleaning failed ({err}), so "
                         "encoded as English", unknown)

    def line_ids(self, line: str) -> list[int]:
        """Ids for one lyric line, without the trailing [SPACE]; empty for a blank line."""
        result = self._line(line)
        return [] if result is None else result.ids

    # -- whole lyrics ----------------------------------------------------------------------------------------------
    def encode_with_report(self, lyrics: str) -> tuple[list[int], LyricReport]:
        """`encode(lyrics)` and what the model will not get from them (`LyricReport.message()` says it in words)."""
        ids = [START]
        unreadable, tags = [], []
        for number, line in enumerate(sanitize(lyrics).split("\n") if lyrics else (), start=1):
            result = self._line(line)
            if result is None:
                ids.append(SPACE)
                continue
            ids += result.ids + [SPACE]
            if result.unreadable:
                entry = UnreadableLine(number, result.text, result.language, result.why_language, result.unreadable)
                (tags if result.only_tag_brackets else unreadable).append(entry)
        return ids, LyricReport(len(ids), tuple(unreadable), tuple(tags))

    def encode(self, lyrics: str) -> list[int]:
        """[START], then per line: language token + content ids + [SPACE] (a blank line is just [SPACE])."""
        return self.encode_with_report(lyrics)[0]

    def encode_with_mask(self, lyrics: str) -> tuple[list[int], list[int]]:
        """What the original pipeline feeds the model: empty lyrics -> ([0], [0]); otherwise (encode(), ones)."""
        if not lyrics:
            return [STOP], [0]
        ids = self.encode(lyrics)
        return ids, [1] * len(ids)

    def __call__(self, lyrics: str) -> list[int]:
        return self.encode(lyrics)

    def decode(self, ids) -> str:
        """Readable text for ids (for debugging): [SPACE] shown as a space, other special tokens as written."""
        pieces = [self.bpe.id_to_token(int(i)) or "[UNK]" for i in ids]
        return "".join(" " if p == "[SPACE]" else p for p in pieces)

    @property
    def vocab_size(self) -> int:
        return self.bpe.get_vocab_size(with_added_tokens=True)
