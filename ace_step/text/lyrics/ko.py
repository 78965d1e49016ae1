"""Korean: Hangul to Latin letters with the `hangul-romanize` package's "academic" rule, as the original did
(사랑해요 -> "salanghae-yo"); other characters pass through unchanged."""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def _transliter():
    from hangul_romanize import Transliter
    from hangul_romanize.rule import academic

    return Transliter(academic)


def romanize_korean(text: str) -> str:
    return _transliter().translit(text)
