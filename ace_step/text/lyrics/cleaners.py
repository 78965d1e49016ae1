"""Text cleaners of the original lyric tokenizer (ACE-Step `acestep/models/lyrics_utils/lyric_tokenizer.py`, which
took them from Coqui TTS's XTTS tokenizer): numbers, abbreviations and symbols spelled out per language, lowercase,
whitespace collapsed.

Number words come from `num2words`; the per-language word tables and suffix patterns must match the original for
identical token ids and are kept as data, with their origin and licence, in `data/xtts_cleaners.json` (see
data/README.md). The step order and the error behaviour also match the original: each of the three expansion stages
either succeeds as a whole or leaves the text as it was. One exception is currencies: a failing currency stops the
remaining currency rules but not the rest.
"""
from __future__ import annotations

import re

from .tables import load_table
from .zh import normalize_zh_numbers

# Languages that go through `multilingual_cleaners` in the original (ja and hi have their own paths).
MULTILINGUAL = frozenset("ar cs de en es fr hu it nl pl pt ru tr zh ko".split())

_TABLES = load_table("xtts_cleaners")
# Abbreviation -> word, matched as "\b<abbr>\." case-insensitively (Russian: "\b<abbr>\b"), in the listed order.
_ABBREVIATION_RES = {
    lang: [(re.compile(r"\b" + re.escape(a) + (r"\b" if lang == "ru" else r"\."), re.IGNORECASE), w)
           for a, w in pairs.items()]
    for lang, pairs in _TABLES["abbreviations"].items()
}
_SYMBOL_WORDS = _TABLES["symbols"]  # symbol -> word, applied in the listed order
_ORDINAL_RES = {lang: re.compile(p) for lang, p in _TABLES["ordinals"].items()}  # "<digits><suffix>" read as ordinal
# What num2words puts between the units and the cents of an amount; dropped for whole amounts ("twenty dollars").
_CURRENCY_AND = _TABLES["currency_and"]
_CURRENCIES = (  # applied in this order
    ("GBP", re.compile(r"((£[0-9\.\,]*[0-9]+)|([0-9\.\,]*[0-9]+£))")),
    ("USD", re.compile(r"((\$[0-9\.\,]*[0-9]+)|([0-9\.\,]*[0-9]+\$))")),
    ("EUR", re.compile(r"(([0-9\.\,]*[0-9]+€)|((€[0-9\.\,]*[0-9]+)))")),
)
_THOUSANDS_COMMA = re.compile(r"\b\d{1,3}(,\d{3})*(\.\d+)?\b")  # en, ru: "100,000.5"
_THOUSANDS_DOT = re.compile(r"\b\d{1,3}(.\d{3})*(\,\d+)?\b")  # others: "100.000,5" (the "." is any char, as in the original)
_DECIMAL = re.compile(r"([0-9]+[.,][0-9]+)")
_NUMBER = re.compile(r"[0-9]+")
_WHITESPACE = re.compile(r"\s+")


def _num2words(value, lang: str, **kwargs) -> str:
    from num2words import num2words

    return num2words(value, lang="cz" if lang == "cs" else lang, **kwargs)


def _currency(match: re.Match, lang: str, currency: str) -> str:
    amount = float(re.sub(r"[^\d.]", "", match.group(0).replace(",", ".")))
    words = _num2words(amount, lang, to="currency", currency=currency)
    if amount.is_integer():
        cut = words.rfind(_CURRENCY_AND[lang])
        if cut != -1:
            words = words[:cut]
    return words


def expand_numbers(text: str, lang: str) -> str:
    if lang == "zh":
        return normalize_zh_numbers(text)
    separators = _THOUSANDS_COMMA if lang in ("en", "ru") else _THOUSANDS_DOT
    drop = "," if lang in ("en", "ru") else "."
    text = separators.sub(lambda m: m.group(0).replace(drop, ""), text)
    try:
        for code, pattern in _CURRENCIES:
            text = pattern.sub(lambda m, c=code: _currency(m, lang, c), text)
    except Exception:
        pass  # e.g. "$1,000.50" -> "1.000.50" is no float: the remaining currency rules are skipped
    if lang != "tr":
        text = _DECIMAL.sub(lambda m: _num2words(float(m.group(1).replace(",", ".")), lang), text)
    text = _ORDINAL_RES[lang].sub(lambda m: _num2words(int(m.group(1)), lang, ordinal=True), text)
    return _NUMBER.sub(lambda m: _num2words(int(m.group(0)), lang), text)


def expand_abbreviations(text: str, lang: str) -> str:
    for pattern, word in _ABBREVIATION_RES[lang]:
        text = pattern.sub(word, text)
    return text


def expand_symbols(text: str, lang: str) -> str:
    for symbol, word in _SYMBOL_WORDS[lang].items():
        text = text.replace(symbol, f" {word} ").replace("  ", " ")
    return text.strip()


def collapse_whitespace(text: str) -> str:
    return _WHITESPACE.sub(" ", text)


def multilingual_cleaners(text: str, lang: str) -> str:
    text = text.replace('"', "")
    if lang == "tr":
        text = text.replace("İ", "i").replace("Ö", "ö").replace("Ü", "ü")
    text = text.lower()
    for stage in (expand_numbers, expand_abbreviations, expand_symbols):
        try:
            text = stage(text, lang)
        except Exception:
            pass  # the original ignores a failing stage (e.g. a number num2words cannot spell in that language)
    return collapse_whitespace(text)


def basic_cleaners(text: str) -> str:
    return collapse_whitespace(text.lower())
