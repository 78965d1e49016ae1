"""Korean: Hangul syllables to Latin letters, syllable by syllable (the "academic" transliteration of the
hangul-romanize package that the original used).

Each precomposed syllable U+AC00..U+D7A3 is (initial * 21 + vowel) * 28 + final. Every jamo is written with its
Revised Romanization letters, except that ㄹ is always "l" and nothing is assimilated. A "-" separates two
syllables where the reading would otherwise be ambiguous: before a syllable starting with the silent ㅇ
(사랑해요 -> "salanghae-yo"), and where the letters of a final plus the next initial could be split another way.
Other characters pass through unchanged.
"""
from __future__ import annotations

from functools import lru_cache

INITIALS = ("g", "kk", "n", "d", "tt", "l", "m", "b", "pp", "s", "ss", "", "j", "jj", "ch", "k", "t", "p", "h")
VOWELS = ("a", "ae", "ya", "yae", "eo", "e", "yeo", "ye", "o", "wa", "wae", "oe", "yo", "u", "wo", "we", "wi",
          "yu", "eu", "ui", "i")
FINALS = ("", "g", "kk", "gs", "n", "nj", "nh", "d", "l", "lg", "lm", "lb", "ls", "lt", "lp", "lh", "m", "b", "bs",
          "s", "ss", "ng", "j", "ch", "k", "t", "p", "h")
_FIRST, _LAST = 0xAC00, 0xD7A3
_SILENT_INITIAL = INITIALS.index("")


@lru_cache(maxsize=None)
def _ambiguous(final: int, initial: int) -> bool:
    """True when final+initial letters also read as a different (final, initial) pair, e.g. "g"+"s" vs "gs"+""."""
    joined = FINALS[final] + INITIALS[initial]
    splits = sum(1 for i in range(len(joined)) if joined[:i] in FINALS and joined[i:] in INITIALS)
    return splits >= 2


def _jamo(ch: str):
    code = ord(ch) - _FIRST
    if not 0 <= code <= _LAST - _FIRST:
        return None
    return code // 588, (code // 28) % 21, code % 28


def romanize_korean(text: str) -> str:
    out = []
    prev = None  # jamo of the previous character, None when it was not a Hangul syllable
    for ch in text:
        jamo = _jamo(ch)
        if jamo is None:
            out.append(ch)
        else:
            initial, vowel, final = jamo
            if prev is not None and (initial == _SILENT_INITIAL or _ambiguous(prev[2], initial)):
                out.append("-")
            out.append(INITIALS[initial] + VOWELS[vowel] + FINALS[final])
        prev = jamo
    return "".join(out)
