"""Per-line language detection that makes the same decisions as the original ACE-Step pipeline.

The original (``ACEStepPipeline.get_lang``) runs the LangSegment library over each lyric line with a 96-language
filter, then ranks languages by how many characters were attributed to them (Chinese characters count double) and
takes the top one, or the second one when the top is English. The decision therefore depends on LangSegment's exact
segmentation, including its quirks, e.g.:

* a line that starts with punctuation (``*"The streets..."``) first books that punctuation as Chinese (2 points),
  then the English text; English wins and, being English, yields to the runner-up: the line is "zh";
* ``[verse]`` is split into "[" (Chinese) and "verse]" (English), so structure tags detect as "zh" (they are
  encoded as English anyway);
* Latin-script runs are classified per sentence by py3langid, so short English lines may come out as "it" or "fr".

This module re-implements that segmentation compactly (own code, same rules). It is a pure function of the line
(the pipeline also detects one line at a time, so LangSegment's cross-line merging never applies). The rules (script
patterns, the 96-language filter list, the zh/ja tie-breaks) are LangSegment 0.3.5's (juntaosun/LangSegment,
BSD-3-Clause), as vendored in ACE-Step `acestep/language_segmentation/LangSegment.py`; py3langid (BSD-3-Clause) is
its classifier and ours.

Why not the `LangSegment` package itself: its detector is a class with global, class-level state (the language
filter), so any other custom node in the same ComfyUI process that sets its own filter would change our decisions;
two incompatible distributions on PyPI (LangSegment 0.2.0 and an unofficial 0.3.5 backup) install the same
top-level `LangSegment` module, which other node packs pin; and we differ from it on purpose in two places:

* emoji and other pictographic symbols are removed before detection. LangSegment books them as Chinese, so that
  "I ❤️ you 😀" came out Chinese (English yields to the runner-up); emoji are not Chinese. A line of symbols only is
  English;
* inside SSML tags (``<number>12</number>``) LangSegment spells digits out in Chinese before counting; we count the
  text as written.
"""
from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

# ISO codes py3langid may answer with that LangSegment keeps (its `language_filters.default`). Every py3langid
# class is in this list, so in practice nothing is filtered; it is kept for fidelity.
_FILTER = (
    "af am an ar as az be bg bn br bs ca cs cy da de dz el en eo es et eu fa fi fo fr ga gl gu he hi hr ht hu hy id "
    "is it ja jv ka kk km kn ko ku ky la lb lo lt lv mg mk ml mn mr ms mt nb ne nl nn no oc or pa pl ps pt qu ro ru "
    "rw se si sk sl sq sr sv sw ta te th tl tr ug uk ur vi vo wa xh zh zu"
).split()
_FILTER_SET = frozenset(_FILTER)
_FILTER_STRING = "-".join(_FILTER)
# Short Chinese-looking runs with a weak score go to whichever of ja/zh comes first in the filter string: ja.
_JA_BEFORE_ZH = _FILTER_STRING.find("ja") < _FILTER_STRING.find("zh")

# Because "fr" and "vi" are in the filter, LangSegment's "preview" mode is on: French/Vietnamese lowercase letters
# join the Latin class and Latin runs are classified sentence by sentence instead of being called English.
_LATIN = "a-zA-Z" + "àáâãäåæçèéêëìíîïðñòóôõöùúûüýþÿ" + "đơưăáàảãạắằẳẵặấầẩẫậéèẻẽẹếềểễệíìỉĩịóòỏõọốồổỗộớờởỡợúùủũụứừửữựôâêơưỷỹ"


def _script_run(letters: str) -> re.Pattern:
    # A run of words of one script, with opening quotes before and any non-word characters after each word.
    return re.compile(r"(([【《（(“‘\"']*[" + letters + r"]+[\W\s]*)+)")


# (kind, pattern), applied in this order; each match is replaced by a placeholder before the next pattern runs.
_PATTERNS = (
    ("tag", re.compile(r"(<([a-zA-Z|-]*)>(.*?)<\/*[a-zA-Z|-]*>)")),
    ("ko", _script_run("\uac00-\ud7a3")),
    ("th", _script_run("\u0e00-\u0e7f")),
    ("ru", _script_run("А-Яа-яЁё")),
    ("num", re.compile(r"(\W*\d+\W+\d*\W*\d*)")),
    ("latin", _script_run(_LATIN)),
    ("quote", re.compile(r"([\"'])(.*?)(\1)")),
    ("quote", re.compile(r"([\n]*[【《（(“‘])([^【《（(“‘’”)）》】]{3,})([’”)）》】][\W\s]*[\n]{,1})")),
)
_PUNCT_SPLIT = re.compile(r"([^\w\s]+)")
_SENTENCE_SPLIT = re.compile(r"(.*?[。.?？!！]+[\n]{,1})")
_KANA = re.compile(r"[\u3040-\u309F\u30A0-\u30FF]")
# Placeholders: CJK Extension B characters. They are word characters that no pattern above can swallow (LangSegment
# uses "⑥...⑥" keys for the same reason), and they never reach the classifier.
_PLACEHOLDER_BASE = 0x20000
_PLACEHOLDER_COUNT = 0x2A6DF - 0x20000
# Besides the pictographs themselves (category So), what emoji sequences are built with: skin-tone modifiers, text
# and emoji presentation selectors, the keycap mark.
_EMOJI_MODIFIERS = frozenset([chr(c) for c in range(0x1F3FB, 0x1F400)] + ["\ufe0e", "\ufe0f", "\u20e3"])
_MAX_LINE = 5000  # longer lines are judged on their first 5000 characters (cost bound; lyric lines never get close)


@lru_cache(maxsize=1)
def _identifier():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_pickled_model(MODEL_FILE, norm_probs=True)


@lru_cache(maxsize=65536)
def _classify(text: str) -> tuple[str, float]:
    lang, score = _identifier().classify(text)
    return lang, round(float(score), 3)


def _is_han(text: str) -> bool:
    return any("\u4e00" <= c <= "\u9fff" for c in text)


def _clean_for_classifier(text: str) -> str:
    # Every run of non-word characters becomes one space, then repeated characters collapse ("ll" -> "l").
    text = re.sub(r"[^\w]+", " ", text)
    return re.sub(r"(.)\1+", r"\1", text).strip()


def _strip_symbols(text: str) -> tuple[str, bool]:
    """Text without punctuation, and whether what is left is only digits (or nothing)."""
    clear = _PUNCT_SPLIT.sub("", text.replace("\n", "")).strip()
    return clear, not re.sub(r"\d+", "", clear)


def _english_spacing(text: str) -> str:
    # LangSegment splits camel case ("iPhone" -> "i Phone") and appends a space to English pieces; the extra
    # characters count towards English, so we do the same.
    return re.sub(r"(?<!\b)([A-Z])", r" \1", text).strip("-") + " "


class _Line:
    """The segmentation state of one line: attributed pieces, pieces waiting for a zh/ja decision, counts."""

    def __init__(self):
        self.words: list[dict] = []
        self.waits: list[dict] = []
        self.counts: dict[str, int] = {}
        self.at_end = False  # the piece being parsed is the last top-level piece of the line

    def count(self, lang: str, text: str):
        if "|" not in lang:
            self.counts[lang] = self.counts.get(lang, 0) + (2 * len(text) if lang == "zh" else len(text))

    # -- storing pieces (LangSegment's _saveData / _addwords) -------------------------------------------------
    def save(self, lang: str, text: str, tag=None) -> dict:
        clear, is_number = _strip_symbols(text)
        prev = self.words[-1] if self.words else None
        if tag is None and prev is not None and prev["tag"] is None:  # tagged pieces are kept as they are
            if not clear or is_number:
                lang = prev["lang"]  # punctuation or digits only: belongs to the previous piece
            if prev["lang"] == lang:
                self.count(lang, text)
                prev["text"] += text
                return prev
            if _strip_symbols(prev["text"])[1]:
                # The previous piece was only punctuation/digits: it is absorbed into this one. Its points stay
                # booked to its old language (this is what makes a leading "*" or "[" vote for Chinese).
                text = prev["text"] + text
                self.words.pop()
        data = {"lang": lang, "text": text, "tag": tag}
        if lang in _FILTER_SET or "?" in lang or lang in _FILTER[0]:
            self.words.append(data)
            self.count(lang, text)
        return data

    def add(self, lang: str, text: str, tag=None):
        if text != "\n" and (text is None or not text.strip()):
            return
        lang = (lang or "").lower()
        if lang == "en":
            text = _english_spacing(text)
        from_waits = bool(self.waits)
        pre = self.waits.pop() if from_waits else (self.words[-1] if self.words else None)
        if pre and "|" in pre["lang"]:
            # Resolve an undecided zh/ja piece with the language of the piece that follows it.
            if lang in pre["lang"]:
                pre["lang"] = lang = lang.split("|")[0]
            else:
                pre["lang"] = pre["lang"].split("|")[0]
            if from_waits:
                pre = self.save(pre["lang"], pre["text"], pre["tag"])
        pre_lang = pre["lang"] if pre else None
        if "|" in lang and pre_lang and pre_lang not in lang and "…" not in lang:
            lang = lang.split("|")[0]
        if "|" in lang:
            self.waits.append({"lang": lang, "text": text, "tag": tag})
        else:
            self.save(lang, text, tag)

    # -- parsing ----------------------------------------------------------------------------------------------
    def parse_plain(self, segment: str):
        """Text without placeholders: split at punctuation and classify each piece (LangSegment's _parse_language)."""
        parts = _PUNCT_SPLIT.split(segment)
        last = len(parts) - 1
        for i, text in enumerate(parts):
            if not text:
                continue
            eos = i >= last
            nxt = parts[i + 1] if not eos else ""
            if not eos and (_is_punct_only(text) or _is_punct_only(nxt)):
                parts[i + 1] = text + nxt  # punctuation sticks to the following piece
                continue
            cleaned = _clean_for_classifier(re.sub(r"\d+", "", text))
            if not eos and len(cleaned) <= 2:
                parts[i + 1] = text + nxt  # too short to classify: glue to the next piece
                continue
            lang, score = _classify(cleaned)
            prev_lang = self.words[-1]["lang"] if self.words else None
            if lang != "zh" and all("\u4e00" <= c <= "\u9fff" for c in re.sub(r"\s", "", cleaned)):
                lang, score = "zh", 1.0
            if len(cleaned) <= 5 and _is_han(cleaned):
                lang = self._short_han(lang, score, cleaned, text, eos, prev_lang)
            self.add(lang, text)

    def _short_han(self, lang, score, cleaned, text, eos, prev_lang):
        # A few Han characters alone cannot tell Chinese from Japanese.
        if score < 0.89:
            lang = "ja" if _JA_BEFORE_ZH else "zh"
        if _KANA.search(cleaned):
            return "ja"
        if len(cleaned) > 2 and score > 0.90:
            return lang
        if eos and self.at_end:
            return "zh" if len(cleaned) <= 1 else lang
        unknown = "zh|ja" if lang == "zh" or (len(cleaned) <= 2 and prev_lang == "zh") else "ja|zh"
        squeezed = re.sub(r"\s+", "", text)
        last_char = squeezed[-1] if squeezed else None
        if last_char is None:
            raise ValueError("no ending character")  # LangSegment fails here; the caller falls back to "en"
        if last_char in "。.":
            referenced = bool(prev_lang) and (prev_lang in unknown or unknown in prev_lang)
            return prev_lang if referenced and self.words else lang
        return unknown + "|…"

    def add_tagged(self, name: str, text: str):
        # LangSegment's manual tags "<ja>text</ja>": a name found in the filter string (a substring test, as in
        # LangSegment) is the language; SSML names count as Chinese (LangSegment also spells their digits out in
        # Chinese; we count the text as written); any other name becomes a language that is not counted.
        if name in _FILTER_STRING:
            self.add(name, text, tag=True)
        else:
            self.add("zh" if name in ("telephone", "number", "currency", "date") else name, text, tag=name)

    def parse_latin(self, text: str):
        # Preview mode: each sentence of a Latin run is classified on its own.
        for sentence in _SENTENCE_SPLIT.split(text):
            if sentence.strip():
                lang, _ = _classify(_clean_for_classifier(sentence))
                self.add(lang, sentence)

    def parse_quote(self, groups: tuple, table: dict, placeholder_re: re.Pattern):
        text = "".join(groups)
        if placeholder_re.search(text):
            self.parse_tagged(text, table, placeholder_re, root=False)
        elif len(_clean_for_classifier(groups[1])) <= 5:
            self.parse_plain(text)
        else:
            self.add(_classify(_clean_for_classifier(groups[1]))[0], text)

    def parse_tagged(self, text: str, table: dict, placeholder_re: re.Pattern, root: bool):
        pieces = placeholder_re.split(text)
        for i, piece in enumerate(pieces):
            if root:
                self.at_end = i >= len(pieces) - 1
            if piece in table:
                kind, groups = table[piece]
                if kind == "tag":
                    self.add_tagged(*groups[1:])
                elif kind in ("ko", "th", "ru"):
                    self.add(kind, groups[0])
                elif kind == "num":
                    # Digits alone say nothing: they take the language of the line's first piece.
                    self.add(self.words[0]["lang"] if self.words else "zh", groups[0])
                elif kind == "latin":
                    self.parse_latin(groups[0])
                else:
                    self.parse_quote(groups, table, placeholder_re)
            elif piece:
                self.parse_plain(piece)


def _is_punct_only(text: str) -> bool:
    return not _PUNCT_SPLIT.sub("", text.replace("\n", "")).strip()


@lru_cache(maxsize=4096)
def language_counts(line: str) -> tuple[tuple[str, int], ...]:
    """LangSegment's ranking for one line: (language, characters) sorted by count, Chinese counted twice."""
    line = line[:_MAX_LINE]
    used = set(line)
    free = (chr(c) for c in range(_PLACEHOLDER_BASE, _PLACEHOLDER_BASE + _PLACEHOLDER_COUNT) if chr(c) not in used)
    table: dict[str, tuple[str, tuple]] = {}

    def protect(kind, pattern, text):
        matches = list(pattern.finditer(text))
        if len(matches) == 1 and kind in ("num", "quote", "tag") and "".join(matches[0].groups()) == text:
            return text  # LangSegment leaves a line that is one single number or quote as it is

        def sub(m):
            key = next(free)
            table[key] = (kind, m.groups() if kind in ("quote", "tag") else (m.group(1),))
            return key

        return pattern.sub(sub, text)

    text = line
    for kind, pattern in _PATTERNS:
        text = protect(kind, pattern, text)
    state = _Line()
    placeholder_re = re.compile("([" + "".join(table) + "])" if table else "(?!x)x")
    state.parse_tagged(text, table, placeholder_re, root=True)
    # Stable sort: ties keep the order in which the languages were first counted, as in LangSegment.
    return tuple(sorted(state.counts.items(), key=lambda kv: kv[1], reverse=True))


def _without_pictographs(line: str) -> str:
    return "".join(c for c in line if unicodedata.category(c) != "So" and c not in _EMOJI_MODIFIERS)


def detect_language(line: str) -> str:
    """The language code the original pipeline picks for one lyric line: any py3langid code, so possibly one ACE-Step
    v1 does not read (the tokenizer encodes those lines as English). Emoji do not vote (see the module docstring).
    Never raises: where LangSegment would fail the original falls back to "en", and so do we."""
    line = _without_pictographs(line)
    if not line.strip():
        return "en"
    try:
        ranked = language_counts(line)
    except Exception:
        return "en"
    if not ranked:
        return "zh"  # LangSegment reports [("zh", 0)] when nothing was attributed
    lang = ranked[0][0]
    if lang == "en" and len(ranked) > 1:
        lang = ranked[1][0]
    return lang
