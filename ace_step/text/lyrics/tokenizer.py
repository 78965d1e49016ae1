"""ACE-Step v1 lyric tokenizer: lyrics text -> the token ids the lyric encoder embeds.

Output layout (as the original pipeline's `tokenize_lyrics`): [START] (261), then for every line of
``lyrics.split("\\n")``, stripped: an empty line gives [SPACE] (2); any other line gives its language token, the BPE
ids of the cleaned line, and [SPACE] (2) as line separator.

Per line:
* An explicit ``[xx]`` prefix with one of the 17 supported codes (ComfyUI's convention, e.g. ``[ko]saranghae``)
  forces the language; the prefix is removed. Otherwise the language is detected like the original does
  (`langdetect.detect_language`); codes outside the 17 become "en".
* A line that starts with a ``[...]`` tag (``[verse]``, ``[Chorus 2]``) is encoded as English, whatever its language.
* Cleaning per language: zh -> numbers in Chinese, then tone-numbered pinyin; ko -> romanised Hangul; ja -> romaji
  (pykakasi, see ja.py); hi -> lowercase only; the others -> numbers/abbreviations/symbols spelled out.
  A forced ``[zh]`` line without Chinese characters is taken as pinyin the user wrote (tone digits kept).
* Parentheses are kept as ordinary characters (ComfyUI's weight parser removes them; we do not).
* Errors never lose a line: the original printed and dropped a line whose cleaner failed; we encode it as English
  with basic cleaning instead and log a warning.

Empty lyrics: `encode("")` gives ``[261]`` (ComfyUI's output); `encode_with_mask("")` gives the original pipeline's
``([0], [0])`` (one [STOP] token, masked out). Non-empty lyrics always have a mask of ones.
"""
from __future__ import annotations

import logging
import os
import re
import unicodedata

from ...text_tokenizer import valid_unicode
from .cleaners import MULTILINGUAL, basic_cleaners, collapse_whitespace, multilingual_cleaners
from .ja import romanize_japanese
from .ko import romanize_korean
from .langdetect import detect_language as _detect_raw
from .vocab import find_vocab, load_bpe
from .zh import to_pinyin

log = logging.getLogger(__name__)

START, SPACE, STOP, UNK = 261, 2, 0, 1
LANGUAGE_TOKENS = {
    "en": 259, "de": 260, "fr": 262, "es": 284, "it": 285, "pt": 286, "pl": 294, "tr": 295, "ru": 267, "cs": 293,
    "nl": 297, "ar": 5022, "zh": 5023, "ja": 5412, "hu": 5753, "ko": 6152, "hi": 6680,
}
SUPPORTED_LANGUAGES = tuple(LANGUAGE_TOKENS)
STRUCTURE_TAGS = ("start", "intro", "verse", "chorus", "bridge", "outro", "end", "inst", "solo", "hook",
                  "pre-chorus", "break")  # ids 6681..6692, matched only as exact lowercase "[tag]"
_STRUCTURE_LINE = re.compile(r"\[.*?\]")
# Invisible characters that carry no sound: control characters other than whitespace (category Cc) and format
# characters (Cf: zero-width space/joiners, BOM, bidi marks, soft hyphen). The original turned each into [UNK] or
# split words with them; we drop them (a deliberate difference; real lyrics do not contain them).
_INVISIBLE_CATEGORIES = ("Cc", "Cf")
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def sanitize(text: str) -> str:
    """Valid text without invisible characters: lone surrogates become U+FFFD, Cc/Cf characters are removed."""
    text = valid_unicode(text)
    if text.isprintable():
        return text
    return "".join(c for c in text if c.isspace() or unicodedata.category(c) not in _INVISIBLE_CATEGORIES)


def language_of_line(line: str) -> str:
    """The supported language code the original pipeline would pick for a (stripped, non-empty) line."""
    lang = _detect_raw(line)
    return lang if lang in LANGUAGE_TOKENS else "en"


def split_language_prefix(line: str) -> tuple[str | None, str]:
    """``"[ko]saranghae"`` -> ("ko", "saranghae"); lines without a supported ``[xx]`` prefix -> (None, line)."""
    if len(line) >= 4 and line[0] == "[" and line[3] == "]":
        code = line[1:3].lower()
        if code in LANGUAGE_TOKENS:
            return code, line[4:].strip()
    return None, line


def preprocess(text: str, lang: str) -> str:
    """The cleaned text for one line in one language (before the language token and [SPACE] substitution)."""
    if lang in MULTILINGUAL:
        text = multilingual_cleaners(text, lang)
        if lang == "zh":
            text = to_pinyin(text)
        elif lang == "ko":
            text = romanize_korean(text)
        return text
    if lang == "ja":
        return romanize_japanese(text)
    return basic_cleaners(text)  # hi (the original's "basic" path) and anything else


class LyricTokenizer:
    """Lyrics -> lyric token ids. The vocabulary is loaded once per path (shared between instances)."""

    def __init__(self, vocab_path: str | os.PathLike | None = None, comfyui_root: str | os.PathLike | None = None):
        self.vocab_path = find_vocab(comfyui_root=comfyui_root, explicit_path=vocab_path)
        self.bpe = load_bpe(str(self.vocab_path))

    # -- one line ------------------------------------------------------------------------------------------------
    def detect_language(self, line: str) -> str:
        return language_of_line(line.strip())

    def _bpe(self, text: str, lang: str) -> list[int]:
        tag = "zh-cn" if lang == "zh" else lang
        return self.bpe.encode(f"[{tag}]" + text.replace(" ", "[SPACE]")).ids

    def encode_line(self, text: str, lang: str) -> list[int]:
        """[lang] + BPE ids of `text` cleaned for `lang` (no trailing [SPACE]); like the original `encode`."""
        if lang not in LANGUAGE_TOKENS:
            raise ValueError(f"unsupported lyric language {lang!r}; supported: {', '.join(SUPPORTED_LANGUAGES)}")
        return self._bpe(preprocess(text, lang), lang)

    def line_ids(self, line: str) -> list[int]:
        """Ids for one lyric line, without the trailing [SPACE]; empty for a blank line."""
        line = sanitize(line).strip()
        if not line:
            return []
        forced, content = split_language_prefix(line)
        if _STRUCTURE_LINE.match(content):
            lang = "en"
        elif forced is not None:
            lang = forced
        else:
            lang = language_of_line(content)
        try:
            if forced == "zh" and lang == "zh" and not _HAN.search(content):
                # The user wrote pinyin ("[zh]ni3 hao3"): keep it, tone digits included.
                return self._bpe(collapse_whitespace(content.replace('"', "").lower()), "zh")
            return self.encode_line(content, lang)
        except Exception as err:  # a cleaner failed: keep the line, as English with basic cleaning
            log.warning("lyric line %r could not be cleaned as %s (%s); encoding it as English", line, lang, err)
            return self._bpe(basic_cleaners(content), "en")

    # -- whole lyrics ----------------------------------------------------------------------------------------------
    def encode(self, lyrics: str) -> list[int]:
        """[START], then per line: language token + content ids + [SPACE] (a blank line is just [SPACE])."""
        ids = [START]
        if not lyrics:
            return ids
        for line in sanitize(lyrics).split("\n"):
            ids += self.line_ids(line) + [SPACE]
        return ids

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
