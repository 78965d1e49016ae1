"""Japanese: romaji as the original made it, with cutlet (MeCab via fugashi, UniDic-lite dictionary), lowercased.

Cutlet writes every character its dictionary cannot read (simplified-only Chinese such as 难 办, Hangul, Cyrillic,
Hebrew, emoji MeCab does not class as a symbol) as one "?", and leaves out symbols it has no romaji for (♪ ★ € ¥ 〜).
The token ids keep both behaviours, as the original; `romanize_japanese` also returns those characters, so that the
caller can tell the user instead of losing them silently.

We always point MeCab at UniDic-lite (the dictionary the original installed with `fugashi[unidic-lite]`): fugashi
would otherwise prefer a full `unidic` package when one is installed, whose readings differ (and which is empty until
its separate download has run).
"""
from __future__ import annotations

import os
import unicodedata
from functools import lru_cache
from typing import NamedTuple


class JapaneseReading(NamedTuple):
    romaji: str  # what the original tokenizer encodes: cutlet's romaji, lowercased
    unreadable: str  # characters written as "?" or left out, in order of appearance, each once


@lru_cache(maxsize=1)
def _cutlet():
    import cutlet
    import unidic_lite

    dicdir = unidic_lite.DICDIR
    return cutlet.Cutlet(mecab_args=f'-d "{dicdir}" -r "{os.path.join(dicdir, "mecabrc")}"')


def _is_content(ch: str) -> bool:
    # Letters, digits and symbols carry meaning; punctuation and spaces that cutlet drops do not.
    return unicodedata.category(ch)[0] in "LNS"


def romanize_japanese(text: str) -> JapaneseReading:
    """`cutlet.Cutlet().romaji(text).lower()`, and the characters that reading could not render."""
    from cutlet.cutlet import normalize_text

    katsu = _cutlet()
    words = katsu.tagger(normalize_text(text))
    tokens = katsu.romaji_tokens(words)  # one token per word, as Cutlet.romaji joins them
    romaji = "".join(str(token) for token in tokens).strip().lower()
    unreadable: dict[str, None] = {}
    for word, token in zip(words, tokens):
        surface = word.surface
        unknown = not surface.isascii() and token.surface == "?" * len(surface)
        dropped = token.surface == ""
        for ch in surface:
            if unknown or (dropped and _is_content(ch)):
                unreadable[ch] = None
    return JapaneseReading(romaji, "".join(unreadable))
