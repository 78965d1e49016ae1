"""What the lyric tokenizer could not give the model, said so the user can act on it: lines with characters the
vocabulary has no token for (or that the Japanese reader could not read), and lyrics longer than the model was
trained on."""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass

from .vocab import STRUCTURE_TAGS

# ACE-Step v1 was trained on lyrics of up to 4096 tokens: its trainer cuts lyric ids there (ACE-Step
# `acestep/text2music_dataset.py`, and the tech report's 4096-token lyric context). Inference does not cut.
TRAINED_LYRIC_TOKENS = 4096
_SHOWN_LINES = 10  # lines listed in a message; the rest are counted
_SHOWN_TEXT = 60  # characters of a line quoted in a message
# First words of Unicode character names that are not a script's name. Variation selectors and the keycap mark
# build emoji ("❤️", "1️⃣").
_SCRIPT_NAMES = {"CJK": "Chinese characters", "VARIATION": "emoji or symbols", "COMBINING": "combining marks",
                 "": "other letters"}


def describe_characters(chars: str) -> str:
    """A short name for what the characters are, by Unicode script or kind: "Hebrew", "Thai, emoji or symbols"."""
    kinds: dict[str, None] = {}
    for ch in chars:
        category = unicodedata.category(ch)
        if category[0] == "S":
            kinds["emoji or symbols"] = None
        elif category[0] in "LM":
            script = unicodedata.name(ch, "").split(" ")[0]
            kinds[_SCRIPT_NAMES.get(script, script.capitalize())] = None
        else:
            kinds["punctuation or other"] = None
    return ", ".join(kinds)


def _quote(text: str) -> str:
    return '"' + (text if len(text) <= _SHOWN_TEXT else text[: _SHOWN_TEXT - 1] + "…") + '"'


@dataclass(frozen=True)
class UnreadableLine:
    """One lyric line with characters the model cannot read."""

    number: int  # 1-based, counting every line of the lyrics as given (blank ones too)
    text: str  # the line, stripped
    language: str  # the language code it was encoded as
    why_language: str  # how that language was chosen, e.g. "detected as 'he', which ACE-Step v1 does not read"
    characters: str  # the characters the model cannot read, each once, in order of appearance

    def describe(self) -> str:
        return (f"line {self.number} {_quote(self.text)}: cannot read {self.characters} "
                f"({describe_characters(self.characters)}); {self.why_language}")


@dataclass(frozen=True)
class LyricReport:
    """What went wrong, if anything, turning lyrics into tokens. `message()` is empty when nothing did."""

    token_count: int  # ids the model receives, [START] included
    unreadable_lines: tuple[UnreadableLine, ...] = ()
    # Lines that start with a [tag] that is not one of the model's structure tags ("[Verse 1]"): only their brackets
    # are unreadable (the words are read). Listed apart: they are common and lose no lyrics.
    unknown_tags: tuple[UnreadableLine, ...] = ()
    limit: int = TRAINED_LYRIC_TOKENS

    @property
    def over_limit(self) -> bool:
        return self.token_count > self.limit

    @property
    def ok(self) -> bool:
        return not (self.unreadable_lines or self.unknown_tags or self.over_limit)

    def message(self) -> str:
        """Plain text for a log line and for the node's UI; one paragraph per finding, "" when all is well."""
        parts = []
        if self.unreadable_lines:
            count = len(self.unreadable_lines)
            lines = [f"ACE-Step lyrics: {count} line{'s' if count > 1 else ''} with characters the model cannot "
                     "read (they become unknown tokens, a '?' or nothing, so those words are not sung):"]
            lines += ["  " + line.describe() for line in self.unreadable_lines[:_SHOWN_LINES]]
            if count > _SHOWN_LINES:
                lines.append(f"  ... and {count - _SHOWN_LINES} more lines")
            lines.append("  Fix: write those words in one of ACE-Step v1's languages or in Latin letters, or force "
                         "a line's language with a prefix such as [ja] or [ko].")
            parts.append("\n".join(lines))
        if self.unknown_tags:
            shown = ", ".join(f"{tag.text} (line {tag.number})" for tag in self.unknown_tags[:_SHOWN_LINES])
            more = f" and {len(self.unknown_tags) - _SHOWN_LINES} more" if len(self.unknown_tags) > _SHOWN_LINES else ""
            parts.append(f"ACE-Step lyrics: section tags the model has no token for: {shown}{more}; their brackets "
                         "become unknown tokens. Its tags are "
                         + ", ".join(f"[{tag}]" for tag in STRUCTURE_TAGS) + ".")
        if self.over_limit:
            parts.append(f"ACE-Step lyrics: {self.token_count:,} tokens, more than the {self.limit:,} ACE-Step v1 was "
                         "trained on: the song may skip or garble the words past that point. Fix: shorten the "
                         "lyrics or split the song into parts.")
        return "\n".join(parts)
