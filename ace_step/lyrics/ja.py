"""Japanese: kana and kanji to lowercase Hepburn romaji, one space between words, punctuation as ASCII.

The original used cutlet (MeCab + UniDic word segmentation). We do not ship MeCab; we use pykakasi, whose
dictionary segmentation is coarser (kana runs such as どうしたの stay one word) and whose kanji readings sometimes
differ (君 -> "kun" where cutlet says "kimi"). The output has the same form as cutlet's (words separated by spaces,
the topic particle は read "wa", へ read "e", 、。？！… written , . ? ! ...), so the tokens are close but not always
equal to the original's. Everything that is not Japanese script passes through unchanged (pykakasi would drop
characters it does not know, such as emoji).
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# Hiragana, katakana (incl. ー and halfwidth forms after NFKC), CJK ideographs and 々〆ヶ: what pykakasi converts.
_JAPANESE_RUN = re.compile(r"[\u3041-\u3096\u309d-\u309f\u30a1-\u30fa\u30fc-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff々〆ヶ]+")
_PUNCTUATION = {"、": ",", "。": ".", "・": " ", "「": '"', "」": '"', "『": '"', "』": '"', "〜": "~", "～": "~"}
_PARTICLES = {"は": "wa", "へ": "e", "を": "wo"}
_GLUED = re.compile(r"\s+([,.?!;:]|\.\.\.)")  # punctuation sticks to the word before it
_SMALL_VOWELS = {"ぁ": "A", "ぃ": "I", "ぅ": "U", "ぇ": "E", "ぉ": "O", "ァ": "A", "ィ": "I", "ゥ": "U", "ェ": "E", "ォ": "O"}


@lru_cache(maxsize=1)
def _kakasi():
    import pykakasi

    return pykakasi.kakasi()


def _drop_echo_vowels(text: str) -> str:
    """ねぇ -> ね: a small vowel after a kana ending in that same vowel only lengthens it (cutlet writes "ne")."""
    out = []
    for ch in text:
        vowel = _SMALL_VOWELS.get(ch)
        if vowel and out:
            name = unicodedata.name(out[-1], "")
            if ("HIRAGANA" in name or "KATAKANA" in name) and name.endswith(vowel) and "SMALL" not in name:
                continue
        out.append(ch)
    return "".join(out)


def _romanize_run(run: str) -> list[str]:
    words = []
    for chunk in _kakasi().convert(_drop_echo_vowels(run)):
        orig, roman = chunk["orig"], chunk["hepburn"]
        if orig in _PARTICLES:
            roman = _PARTICLES[orig]
        if roman:
            words.append(roman)
    return words


def romanize_japanese(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)  # fullwidth ASCII, halfwidth kana, ？！… -> ? ! ...
    text = "".join(_PUNCTUATION.get(c, c) for c in text)
    pieces = []
    pos = 0
    for match in _JAPANESE_RUN.finditer(text):
        pieces.append(text[pos:match.start()])
        pieces.append(" " + " ".join(_romanize_run(match.group(0))) + " ")
        pos = match.end()
    pieces.append(text[pos:])
    out = re.sub(r"\s+", " ", "".join(pieces)).strip()
    return _GLUED.sub(r"\1", out).lower()
