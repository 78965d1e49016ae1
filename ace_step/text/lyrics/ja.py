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
_HAS_KANJI = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff々]")
_HIRAGANA_START = re.compile(r"[\u3041-\u3096]")
_PARTICLE_STARTS = set("をはがのにへとでもやよね")  # a chunk starting with these is (usually) a particle: own word
_CONJUNCTIONS = ("から", "なら")
_FINAL_PARTICLES = "よのね"
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


def _glues(prev: dict, chunk: dict) -> bool:
    """Whether pykakasi split a word that cutlet (MeCab) keeps whole: 閉じ|て, 待っ|て, 悪い|なら, お|願い."""
    orig, before = chunk["orig"], prev["orig"]
    if before in ("お", "ご") and _HAS_KANJI.search(orig[:1]):
        return True  # honorific prefix: お願い -> "onegai"
    if not _HAS_KANJI.search(before) or not _HIRAGANA_START.match(orig):
        return False
    if before[-1] in "いうる":
        return orig.startswith(_CONJUNCTIONS)  # a finished word (悪い, 言う) only takes から/なら: 悪い|なら
    return orig[0] not in _PARTICLE_STARTS  # a stem and its ending: 閉じ|て, 待っ|て, 見な|かった


def _kana_romaji(hira: str) -> str:
    return "".join(c["hepburn"] for c in _kakasi().convert(hira))


def _romanize_run(run: str) -> list[str]:
    # Group pykakasi's chunks into words: (original text, hiragana reading, romaji of a lone chunk or None).
    words: list[list] = []
    prev = None
    for chunk in _kakasi().convert(_drop_echo_vowels(run)):
        if prev is not None and _glues(prev, chunk):
            words[-1][0] += chunk["orig"]
            words[-1][1] += chunk["hira"]
            words[-1][2] = None
        else:
            words.append([chunk["orig"], chunk["hira"], chunk["hepburn"]])
        prev = chunk
    # A sentence-final particle closing the run is a word of its own: やめてよ -> "yamete yo".
    if words:
        orig, hira, _ = words[-1]
        if len(orig) >= 3 and orig[-1] in _FINAL_PARTICLES and hira.endswith(orig[-1]):
            words[-1:] = [[orig[:-1], hira[:-1], None], [orig[-1], orig[-1], None]]
    out = []
    for orig, hira, roman in words:
        if orig in _PARTICLES:
            roman = _PARTICLES[orig]
        elif roman is None:
            # Romanise the joined reading, so that a っ at a chunk border doubles the next consonant
            # (待っ|て -> "matte", not "matsu te").
            roman = _kana_romaji(hira)
        if roman:
            out.append(roman)
    return out


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
