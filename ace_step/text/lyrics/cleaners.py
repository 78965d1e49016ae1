"""Text cleaners of the original lyric tokenizer (inherited from Coqui XTTS): numbers, abbreviations and symbols
spelled out per language, lowercase, whitespace collapsed.

The word tables below are data that must match the original for identical token ids. The step order and the error
behaviour also match it: each of the three expansion stages either succeeds as a whole or leaves the text as it
was. One exception is currencies: a failing currency stops the remaining currency rules but not the rest.
"""
from __future__ import annotations

import re

from .zh import normalize_zh_numbers

# Languages that go through `multilingual_cleaners` in the original (ja and hi have their own paths).
MULTILINGUAL = frozenset("ar cs de en es fr hu it nl pl pt ru tr zh ko".split())

# Abbreviation -> word. Matched as "\b<abbr>\." case-insensitively (Russian: "\b<abbr>\b").
_ABBREVIATIONS = {
    "en": [("mrs", "misess"), ("mr", "mister"), ("dr", "doctor"), ("st", "saint"), ("co", "company"),
           ("jr", "junior"), ("maj", "major"), ("gen", "general"), ("drs", "doctors"), ("rev", "reverend"),
           ("lt", "lieutenant"), ("hon", "honorable"), ("sgt", "sergeant"), ("capt", "captain"),
           ("esq", "esquire"), ("ltd", "limited"), ("col", "colonel"), ("ft", "fort")],
    "es": [("sra", "señora"), ("sr", "señor"), ("dr", "doctor"), ("dra", "doctora"), ("st", "santo"),
           ("co", "compañía"), ("jr", "junior"), ("ltd", "limitada")],
    "fr": [("mme", "madame"), ("mr", "monsieur"), ("dr", "docteur"), ("st", "saint"), ("co", "compagnie"),
           ("jr", "junior"), ("ltd", "limitée")],
    "de": [("fr", "frau"), ("dr", "doktor"), ("st", "sankt"), ("co", "firma"), ("jr", "junior")],
    "pt": [("sra", "senhora"), ("sr", "senhor"), ("dr", "doutor"), ("dra", "doutora"), ("st", "santo"),
           ("co", "companhia"), ("jr", "júnior"), ("ltd", "limitada")],
    "it": [("sig", "signore"), ("dr", "dottore"), ("st", "santo"), ("co", "compagnia"), ("jr", "junior"),
           ("ltd", "limitata")],
    "pl": [("p", "pani"), ("m", "pan"), ("dr", "doktor"), ("sw", "święty"), ("jr", "junior")],
    "ar": [],
    "zh": [],
    "cs": [("dr", "doktor"), ("ing", "inženýr"), ("p", "pan")],
    "ru": [("г-жа", "госпожа"), ("г-н", "господин"), ("д-р", "доктор")],
    "nl": [("dhr", "de heer"), ("mevr", "mevrouw"), ("dr", "dokter"), ("jhr", "jonkheer")],
    "tr": [("b", "bay"), ("byk", "büyük"), ("dr", "doktor")],
    "hu": [("dr", "doktor"), ("b", "bácsi"), ("nőv", "nővér")],
    "ko": [],
}
_ABBREVIATION_RES = {
    lang: [(re.compile(r"\b" + re.escape(a) + (r"\b" if lang == "ru" else r"\."), re.IGNORECASE), w) for a, w in pairs]
    for lang, pairs in _ABBREVIATIONS.items()
}

# Words for the symbols & @ % # $ £ ° (in this order), per language.
_SYMBOL_WORDS = {
    "en": ("and", "at", "percent", "hash", "dollar", "pound", "degree"),
    "es": ("y", "arroba", "por ciento", "numeral", "dolar", "libra", "grados"),
    "fr": ("et", "arobase", "pour cent", "dièse", "dollar", "livre", "degrés"),
    "de": ("und", "at", "prozent", "raute", "dollar", "pfund", "grad"),
    "pt": ("e", "arroba", "por cento", "cardinal", "dólar", "libra", "graus"),
    "it": ("e", "chiocciola", "per cento", "cancelletto", "dollaro", "sterlina", "gradi"),
    "pl": ("i", "małpa", "procent", "krzyżyk", "dolar", "funt", "stopnie"),
    "ar": ("و", "على", "في المئة", "رقم", "دولار", "جنيه", "درجة"),
    "zh": ("和", "在", "百分之", "号", "美元", "英镑", "度"),
    "cs": ("a", "na", "procento", "křížek", "dolar", "libra", "stupně"),
    "ru": ("и", "собака", "процентов", "номер", "доллар", "фунт", "градус"),
    "nl": ("en", "bij", "procent", "hekje", "dollar", "pond", "graden"),
    "tr": ("ve", "at", "yüzde", "diyez", "dolar", "sterlin", "derece"),
    "hu": ("és", "kukac", "százalék", "kettőskereszt", "dollár", "font", "fok"),
    "ko": ("그리고", "에", "퍼센트", "번호", "달러", "파운드", "도"),
}
_SYMBOLS = "&@%#$£°"

# "<digits><suffix>" read as an ordinal.
_ORDINAL_RES = {
    "en": r"([0-9]+)(st|nd|rd|th)",
    "es": r"([0-9]+)(º|ª|er|o|a|os|as)",
    "fr": r"([0-9]+)(º|ª|er|re|e|ème)",
    "de": r"([0-9]+)(st|nd|rd|th|º|ª|\.(?=\s|$))",
    "pt": r"([0-9]+)(º|ª|o|a|os|as)",
    "it": r"([0-9]+)(º|°|ª|o|a|i|e)",
    "pl": r"([0-9]+)(º|ª|st|nd|rd|th)",
    "ar": r"([0-9]+)(ون|ين|ث|ر|ى)",
    "cs": r"([0-9]+)\.(?=\s|$)",
    "ru": r"([0-9]+)(-й|-я|-е|-ое|-ье|-го)",
    "nl": r"([0-9]+)(de|ste|e)",
    "tr": r"([0-9]+)(\.|inci|nci|uncu|üncü|\.)",
    "hu": r"([0-9]+)(\.|adik|edik|odik|edik|ödik|ödike|ik)",
    "ko": r"([0-9]+)(번째|번|차|째)",
}
_ORDINAL_RES = {lang: re.compile(p) for lang, p in _ORDINAL_RES.items()}
# What num2words puts between the units and the cents of an amount; dropped for whole amounts ("twenty dollars").
_CURRENCY_AND = {"es": " con ", "fr": " et ", "de": " und ", "pt": " e ", "it": " e "}  # others: ", "
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
        cut = words.rfind(_CURRENCY_AND.get(lang, ", "))
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
    for symbol, word in zip(_SYMBOLS, _SYMBOL_WORDS[lang]):
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
