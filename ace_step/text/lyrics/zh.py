"""Chinese: spell numbers out in Chinese characters, turn all punctuation into ",", then convert to tone-numbered
pinyin (pypinyin Style.TONE3, neutral tone 5, syllables joined without spaces: 我走过 -> "wo3zou3guo4").

The number normaliser reproduces what the original tokenizer's `zh_num2words.TextNorm()` (default options; ACE-Step
`acestep/models/lyrics_utils/zh_num2words.py`) does for the cases it recognises, in the same order: dates, money,
phone numbers, fractions, percentages, numbers with a measure word, runs of 4+ digits (read digit by digit), then
plain numbers. Each rule, like the original, replaces the first occurrence of the matched number string. Numerals
are spelled here from the Chinese number system (num2words has no Chinese); the measure words, currency units and
punctuation list are the original's data, kept with origin and licence in `data/zh_text_norm.json`.
"""
from __future__ import annotations

import re
import string

from .tables import load_table

_DIGITS = "零一二三四五六七八九"
_LIANG = "两"
# (power of ten, character), "mid" numbering system: 万 = 10^4, 亿 = 10^8, 兆 = 10^12, then every 10^4.
_UNITS = [(1, "十"), (2, "百"), (3, "千"), (4, "万")] + [(8 + 4 * i, c) for i, c in enumerate("亿兆京垓秭穰沟涧正载")]

_TABLES = load_table("zh_text_norm")
_CURRENCY_UNITS = _TABLES["currency_units"]
_QUANTIFIERS = _TABLES["quantifiers"]  # measure words: a number before one of them is read with units

_DATE = re.compile(r"\D+((([089]\d|(19|20)\d{2})年)?(\d{1,2}月(\d{1,2}[日号])?)?)")
# The original's money pattern starts with "\D+", which is quadratic on long digit-free text; a look-behind plus
# the check in _money_matches finds exactly the same matches in linear time.
_MONEY = re.compile(r"(?<=\D)((\d+(\.\d+)?)[多余几]?" + _CURRENCY_UNITS + r"(\d" + _CURRENCY_UNITS + r"?)?)")
_MOBILE = re.compile(r"\D((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})\D")
_LANDLINE = re.compile(r"\D((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})\D")
_FRACTION = re.compile(r"(\d+/\d+)")
_PERCENT = re.compile(r"(\d+(\.\d+)?%)")
_COUNTED = re.compile(r"(\d+(\.\d+)?)[多余几]?" + _QUANTIFIERS)
_DIGIT_RUN = re.compile(r"(\d{4,32})")
_NUMBER = re.compile(r"(\d+(\.\d+)?)")
_LATIN_2_LATIN = re.compile(r"(([a-zA-Z]+)二([a-zA-Z]+))")  # P2P, B2B: the "2" stays a digit

_PUNCTUATION = _TABLES["punctuation"] + string.punctuation  # all mapped to ","
_TO_COMMA = str.maketrans(_PUNCTUATION, "," * len(_PUNCTUATION))


def _integer_symbols(digits: str) -> list:
    """Digits -> [int digit | (power, unit char)], e.g. "1005" -> [1, (3, "千"), 0, 5] (零 marks a gap)."""
    significant = digits.lstrip("0")
    if not significant:
        return []
    if len(significant) == 1:
        return ([0] if len(digits) != len(significant) else []) + [int(significant)]
    unit = max(u for u in _UNITS if u[0] < len(significant))
    return _integer_symbols(digits[: -unit[0]]) + [unit] + _integer_symbols(significant[-unit[0]:])


def number_to_chinese(number: str, use_units: bool = True, liang: bool = True) -> str:
    """Reads a number string: "12" -> 十二, "2000" -> 两千, "3.14" -> 三点一四; with use_units=False digit by digit."""
    parts = number.split(".")
    if len(parts) > 2:
        raise ValueError(f"more than one decimal point in {number!r}")
    whole, decimals = parts[0], (parts[1] if len(parts) == 2 else "")
    symbols = _integer_symbols(whole) if use_units and len(whole) > 1 else [int(c) for c in whole]
    if decimals:
        symbols += ["点"] + [int(c) for c in decimals]
    out = []
    for i, s in enumerate(symbols):
        if isinstance(s, int):
            prev = symbols[i - 1] if i > 0 else None
            nxt = symbols[i + 1] if i + 1 < len(symbols) else None
            # 2 before 百/千/万/... (not before 十, not after 十) is read 两.
            if (liang and s == 2 and isinstance(nxt, tuple) and nxt[0] != 1
                    and (prev is None or (isinstance(prev, tuple) and prev[0] != 1))):
                out.append(_LIANG)
            else:
                out.append(_DIGITS[s])
        else:
            out.append(s[1] if isinstance(s, tuple) else s)
    text = "".join(out)
    if text.startswith("点"):
        text = "零" + text
    if len(text) >= 2 and text[0] == "一" and text[1] == "十":
        text = text[1:]  # 10..19 are read 十, 十一, ... (also 十万 for 100000)
    return text


def _digits(number: str) -> str:
    return number_to_chinese(number, use_units=False, liang=False)


def _date(text: str) -> str:
    year, rest = "", text
    if "年" in text:
        head, rest = text.strip().split("年", 1)
        year = _digits(head) + "年"
    if not rest:
        return year
    month, day = rest.strip().split("月", 1)
    out = year + number_to_chinese(month) + "月"
    if day:
        out += number_to_chinese(day[:-1]) + day[-1]
    return out


def _money(text: str) -> str:
    for number, _ in _NUMBER.findall(text):
        text = text.replace(number, number_to_chinese(number))
    return text


def _phone(text: str, landline: bool) -> str:
    parts = text.split("-") if landline else text.strip("+").split()
    return "".join(_digits(p) for p in parts)


def _fraction(text: str) -> str:
    numerator, denominator = text.split("/")
    return number_to_chinese(denominator) + "分之" + number_to_chinese(numerator)


def _money_matches(text: str) -> list[str]:
    # Like findall with a leading "\D+": the non-digit before a match must not belong to the previous match.
    found, pos, last_end = [], 0, 0
    while (m := _MONEY.search(text, pos)) is not None:
        if m.start() - 1 < last_end:
            pos = m.start() + 1
            continue
        found.append(m.group(1))
        pos = last_end = m.end()
    return found


def _replace_first(text: str, pattern: re.Pattern, convert) -> str:
    matches = _money_matches(text) if pattern is _MONEY else pattern.findall(text)
    for match in matches:
        found = match[0] if isinstance(match, tuple) else match
        if found:
            text = text.replace(found, convert(found), 1)
    return text


def normalize_zh_numbers(text: str) -> str:
    """Numbers to Chinese characters, then every punctuation mark to ","."""
    text = "^" + text + "$"  # sentinels so the patterns needing a non-digit on each side match at the ends
    text = _replace_first(text, _DATE, _date)
    text = _replace_first(text, _MONEY, _money)
    text = _replace_first(text, _MOBILE, lambda t: _phone(t, landline=False))
    text = _replace_first(text, _LANDLINE, lambda t: _phone(t, landline=True))
    text = _replace_first(text, _FRACTION, _fraction)
    text = text.replace("％", "%")
    text = _replace_first(text, _PERCENT, lambda t: "百分之" + number_to_chinese(t.strip().strip("%")))
    text = _replace_first(text, _COUNTED, number_to_chinese)
    text = _replace_first(text, _DIGIT_RUN, _digits)
    text = _replace_first(text, _NUMBER, number_to_chinese)
    for whole, left, right in _LATIN_2_LATIN.findall(text):
        text = text.replace(whole, left + "2" + right, 1)
    return text.lstrip("^").rstrip("$").translate(_TO_COMMA)


def to_pinyin(text: str) -> str:
    """Han characters -> tone-numbered pinyin joined without spaces; everything else passes through."""
    from pypinyin import Style, pinyin

    return "".join(p[0] for p in pinyin(text, style=Style.TONE3, heteronym=False, neutral_tone_with_five=True))
