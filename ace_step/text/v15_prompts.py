"""ACE-Step 1.5 prompts: the token sequences its text encoder and its 5 Hz LM planner are fed, the LM output parser,
and the valid metadata values (the one source of truth the nodes import).

Sources: ace-step/ACE-Step-1.5 @ f30aee4c (main, 2026-02-08): `acestep/constants.py` (valid values,
instructions, SFT_GEN_PROMPT), `acestep/handler.py` (text-encoder inputs), `acestep/llm_inference.py` (LM prompts,
CoT format, output parser), `acestep/inference.py` (how the two meet); ComfyUI's port: Comfy-Org/ComfyUI
`comfy/text_encoders/ace15.py` @ 523fba4d and `comfy_extras/nodes_ace.py` (comfyanonymous/ComfyUI @ 0b72b50b).

Text encoder (Qwen3-Embedding-0.6B), `handler.py` `_prepare_batch` / `preprocess_batch`:
- caption: `SFT_GEN_PROMPT`,
  "# Instruction\\n{instruction}\\n\\n# Caption\\n{caption}\\n\\n# Metas\\n{metas}<|endoftext|>\\n",
  with metas "- bpm: B\\n- timesignature: T\\n- keyscale: K\\n- duration: D seconds\\n" ("N/A" for an unknown
  field, "30 seconds" for an unknown duration). It goes through the whole encoder; its last hidden state
  [B, L, 1024] is the DiT's text context. The tokenizer (Qwen3-Embedding's tokenizer.json) appends
  <|endoftext|> (151643); truncation at 256 tokens, end token included.
- lyrics: "# Languages\\n{language}\\n\\n# Lyric\\n{lyrics}<|endoftext|>" plus the appended <|endoftext|>, truncated
  at 2048. Only the encoder's token-embedding table is applied (`text_encoder.embed_tokens`): [B, L, 1024] lyric
  embeddings for the DiT's lyric encoder, no transformer layer.
- instruction: "Fill the audio semantic mask based on the given conditions:" for text-to-music without LM codes;
  with LM audio codes the original switches the task to "cover" and the instruction to "Generate audio semantic
  tokens based on the given conditions:" (`handler.py` `generate_music`).
- caption and language after planning (`inference.py` `generate_music`): the DiT gets the LM's caption when
  use_cot_caption is on; for the language the code means the LM's (use_cot_language) but reads the key
  "vocal_language", which the parser never writes, so the user's vocal_language ("unknown" by default) is used.

5 Hz LM (`llm_inference.py`), Qwen3's chat template with system "# Instruction\\n{LM instruction}\\n\\n":
- phase 1, chain of thought (only when the user did not give all of bpm, keyscale, time signature, duration):
  user "# Caption\\n{caption}\\n\\n# Lyric\\n{lyrics}\\n", then "<|im_start|>assistant\\n"; the LM writes
  "<think>\\nbpm: ..\\ncaption: ..\\nduration: ..\\nkeyscale: ..\\nlanguage: ..\\ntimesignature: ..\\n" under
  constrained decoding (`ace_step.sampling.planner_grammar`). CFG's unconditional prompt drops the caption:
  user "# Lyric\\n{lyrics}\\n" (or the negative prompt as caption when one is given).
- phase 2, audio codes: the metadata as YAML (sorted keys, `yaml.dump`) in the assistant turn:
  "<|im_start|>assistant\\n<think>\\n{yaml}\\n</think>\\n\\n<|im_end|>\\n", then the LM writes 5 codes per second.
  Unconditional: the same caption (or the negative prompt) with an empty think block "<think>\\n\\n</think>\\n\\n".

ComfyUI native vs the original (we follow the original):
- ComfyUI has no phase 1: its node requires bpm, duration, time signature and key, which is the original's
  all-metadata-given path, so its phase-2 prompts are the original's for those inputs.
- ComfyUI strips caption and lyrics (`text.strip()`, `lyrics.strip()`); the original passes them as typed.
- ComfyUI rounds the duration up (`math.ceil`) for the code count, the CoT and the metas; the original takes
  `int(duration)` for the CoT and metas and `int(duration * 5)` codes.
- ComfyUI always uses the "Generate audio semantic tokens ..." instruction for the text encoder, also without LM
  codes; the original uses "Fill the audio semantic mask ..." then.
- ComfyUI does not truncate; the original truncates the caption prompt at 256 and the lyric prompt at 2048 tokens.
- ComfyUI writes the end token into the template ("...<|endoftext|>\\n<|endoftext|>"); the original's
  tokenizer appends it: the same ids.
- ComfyUI's combos offer 23 languages, 34 keys and bpm 10-300, duration 0-2000 s; the original accepts the
  51 languages, 70 keys (A-G, natural/#/b/♯/♭, major/minor), bpm 30-300 and duration 10-600 s below.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Optional

import yaml

from .qwen_tokenizer import ENDOFTEXT_ID, QwenTokenizer

# Valid values (acestep/constants.py).
VALID_LANGUAGES: tuple[str, ...] = (
    "ar", "az", "bg", "bn", "ca", "cs", "da", "de", "el", "en",
    "es", "fa", "fi", "fr", "he", "hi", "hr", "ht", "hu", "id",
    "is", "it", "ja", "ko", "la", "lt", "ms", "ne", "nl", "no",
    "pa", "pl", "pt", "ro", "ru", "sa", "sk", "sr", "sv", "sw",
    "ta", "te", "th", "tl", "tr", "uk", "ur", "vi", "yue", "zh",
    "unknown",
)
KEYSCALE_NOTES: tuple[str, ...] = ("A", "B", "C", "D", "E", "F", "G")
KEYSCALE_ACCIDENTALS: tuple[str, ...] = ("", "#", "b", "♯", "♭")
KEYSCALE_MODES: tuple[str, ...] = ("major", "minor")
VALID_KEYSCALES: tuple[str, ...] = tuple(
    f"{note}{accidental} {mode}" for note in KEYSCALE_NOTES for accidental in KEYSCALE_ACCIDENTALS
    for mode in KEYSCALE_MODES
)
BPM_MIN, BPM_MAX = 30, 300
DURATION_MIN, DURATION_MAX = 10, 600  # seconds
VALID_TIME_SIGNATURES: tuple[int, ...] = (2, 3, 4, 6)  # 2/4, 3/4, 4/4, 6/8
CODES_PER_SECOND = 5  # the LM's audio codes: 5 Hz (25 Hz latents pooled by 5)

LM_INSTRUCTION = "Generate audio semantic tokens based on the given conditions:"
DIT_INSTRUCTION_TEXT2MUSIC = "Fill the audio semantic mask based on the given conditions:"
DIT_INSTRUCTION_WITH_CODES = "Generate audio semantic tokens based on the given conditions:"  # the "cover" task's
DEFAULT_NEGATIVE_PROMPT = "NO USER INPUT"  # the original's "no negative prompt" marker
CAPTION_MAX_TOKENS = 256  # end token included
LYRICS_MAX_TOKENS = 2048
# The CoT fields in the order the LM writes them (= YAML's sorted order).
COT_FIELDS: tuple[str, ...] = ("bpm", "caption", "duration", "keyscale", "language", "timesignature")
# The fields whose presence lets the original skip phase 1 (`LLMHandler.has_all_metas`).
PLANNING_FIELDS: tuple[str, ...] = ("bpm", "duration", "keyscale", "timesignature")


@dataclass(frozen=True)
class SongMetadata:
    """What the planner knows about a song; None = unknown (the LM decides, or "N/A" for the text encoder).
    `duration` is in seconds and may be fractional; `timesignature` is the beats per bar (2, 3, 4 or 6)."""

    bpm: Optional[int] = None
    duration: Optional[float] = None
    keyscale: Optional[str] = None
    timesignature: Optional[int] = None
    language: Optional[str] = None
    caption: Optional[str] = None

    def __post_init__(self):
        if self.bpm is not None and not (isinstance(self.bpm, int) and BPM_MIN <= self.bpm <= BPM_MAX):
            raise ValueError(f"bpm must be a whole number in {BPM_MIN}..{BPM_MAX} (or None for the LM to choose), "
                             f"got {self.bpm!r}")
        if self.duration is not None and not DURATION_MIN <= self.duration <= DURATION_MAX:
            raise ValueError(f"duration must be {DURATION_MIN}..{DURATION_MAX} seconds (or None for the LM to "
                             f"choose), got {self.duration!r}")
        if self.keyscale is not None and self.keyscale not in VALID_KEYSCALES:
            raise ValueError(f"keyscale {self.keyscale!r} is not one of ACE-Step's keys: a note A-G, an optional "
                             "#, b, ♯ or ♭, a space and major/minor (e.g. 'F# minor')")
        if self.timesignature is not None and self.timesignature not in VALID_TIME_SIGNATURES:
            raise ValueError(f"timesignature must be one of {VALID_TIME_SIGNATURES} (beats per bar), "
                             f"got {self.timesignature!r}")
        if self.language is not None and self.language not in VALID_LANGUAGES:
            raise ValueError(f"language {self.language!r} is not one of {', '.join(VALID_LANGUAGES)}")

    def merged_over(self, other: "SongMetadata") -> "SongMetadata":
        """These values, with `other`'s where these are None."""
        return replace(other, **{k: v for k, v in self.__dict__.items() if v is not None})

    def has_planning_fields(self) -> bool:
        return all(getattr(self, name) is not None for name in PLANNING_FIELDS)


def audio_code_count(duration: float) -> int:
    """Codes the LM writes for `duration` seconds (the original's `int(duration * 5)`)."""
    return int(duration * CODES_PER_SECOND)


# ---------------------------------------------------------------------------------------------- text encoder


def dit_instruction(has_audio_codes: bool) -> str:
    return DIT_INSTRUCTION_WITH_CODES if has_audio_codes else DIT_INSTRUCTION_TEXT2MUSIC


def dit_metas(metadata: SongMetadata) -> str:
    """The "# Metas" block of the caption prompt (`handler.py` `_build_metadata_dict` + `_dict_to_meta_string`)."""
    def known(value: Any) -> str:
        return "N/A" if value is None else str(value)

    duration = 30 if metadata.duration is None else int(metadata.duration)
    return (f"- bpm: {known(metadata.bpm)}\n- timesignature: {known(metadata.timesignature)}\n"
            f"- keyscale: {known(metadata.keyscale)}\n- duration: {duration} seconds\n")


def dit_caption_prompt(caption: str, metadata: SongMetadata, instruction: str) -> str:
    if not instruction.endswith(":"):  # handler.py `_format_instruction`
        instruction += ":"
    return f"# Instruction\n{instruction}\n\n# Caption\n{caption}\n\n# Metas\n{dit_metas(metadata)}<|endoftext|>\n"


def dit_lyrics_prompt(lyrics: str, language: str) -> str:
    return f"# Languages\n{language}\n\n# Lyric\n{lyrics}<|endoftext|>"


def text_encoder_ids(tokenizer: QwenTokenizer, text: str, max_tokens: int) -> list[int]:
    """`text` as Qwen3-Embedding's tokenizer gives it to the encoder: truncated to `max_tokens` - 1 ids, then the
    <|endoftext|> its tokenizer.json appends (QwenLM/Qwen3-Embedding issue #122: "test" -> [1944, 151643])."""
    return tokenizer.encode(text)[: max_tokens - 1] + [ENDOFTEXT_ID]


def caption_encoder_ids(tokenizer: QwenTokenizer, caption: str, metadata: SongMetadata,
                        has_audio_codes: bool) -> list[int]:
    prompt = dit_caption_prompt(caption, metadata, dit_instruction(has_audio_codes))
    return text_encoder_ids(tokenizer, prompt, CAPTION_MAX_TOKENS)


def lyric_encoder_ids(tokenizer: QwenTokenizer, lyrics: str, language: str) -> list[int]:
    return text_encoder_ids(tokenizer, dit_lyrics_prompt(lyrics, language), LYRICS_MAX_TOKENS)


# ---------------------------------------------------------------------------------------------- 5 Hz LM


def _chat(user: str, think: Optional[str]) -> str:
    """Qwen3's chat template for [system, user] (+ an assistant turn holding only a think block). `think=None`
    ends with the generation prompt "<|im_start|>assistant\\n"."""
    text = (f"<|im_start|>system\n# Instruction\n{LM_INSTRUCTION}\n\n<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
    if think is None:
        return text
    return text + f"<think>\n{think.strip(chr(10))}\n</think>\n\n<|im_end|>\n"


def has_negative_prompt(negative_prompt: Optional[str]) -> bool:
    return bool(negative_prompt and negative_prompt.strip() and negative_prompt.strip() != DEFAULT_NEGATIVE_PROMPT)


def lm_cot_prompt(caption: str, lyrics: str) -> str:
    """Phase 1, conditional: the LM writes the metadata think block after this."""
    return _chat(f"# Caption\n{caption}\n\n# Lyric\n{lyrics}\n", None)


def lm_cot_unconditional_prompt(lyrics: str, negative_prompt: Optional[str] = None) -> str:
    if has_negative_prompt(negative_prompt):
        return _chat(f"# Caption\n{negative_prompt}\n\n# Lyric\n{lyrics}\n", None)
    return _chat(f"# Lyric\n{lyrics}\n", None)


def cot_yaml(metadata: SongMetadata) -> str:
    """The known metadata as the original's `_format_metadata_as_cot` writes it: YAML, sorted keys, whole seconds,
    strings of digits as numbers."""
    items: dict[str, Any] = {}
    for name in COT_FIELDS:
        value = getattr(metadata, name)
        if value is None:
            continue
        if name == "duration":
            value = int(value)
        if isinstance(value, str) and value.isdecimal():
            value = int(value)
        items[name] = value
    return yaml.safe_dump(items, allow_unicode=True, sort_keys=True).strip() if items else ""


def format_cot(metadata: SongMetadata) -> str:
    return f"<think>\n{cot_yaml(metadata)}\n</think>"


def lm_codes_prompt(caption: str, lyrics: str, metadata: SongMetadata) -> str:
    """Phase 2, conditional: the LM writes the audio codes after this."""
    return _chat(f"# Caption\n{caption}\n\n# Lyric\n{lyrics}\n", cot_yaml(metadata))


def lm_codes_unconditional_prompt(caption: str, lyrics: str, negative_prompt: Optional[str] = None) -> str:
    caption = negative_prompt if has_negative_prompt(negative_prompt) else caption
    return _chat(f"# Caption\n{caption}\n\n# Lyric\n{lyrics}\n", "")


# ---------------------------------------------------------------------------------------------- LM output

_AUDIO_CODE = re.compile(r"<\|audio_code_(\d+)\|>")
_THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def _single_line(caption: str) -> str:
    """YAML's folded caption lines joined with single spaces (`postprocess_caption` in the original)."""
    return " ".join(line.strip() for line in caption.split("\n") if line.strip())


def parse_lm_fields(text: str) -> dict[str, str]:
    """The "key: value" fields of the LM's think block (or, without one, of the text before the first audio code):
    a field starts on a line without indentation that has a colon, indented lines continue it, tag lines are
    skipped. Keys lowercased; values stripped; the caption joined into one line (`parse_lm_output` in the original).
    """
    block = _THINK_BLOCK.search(text)
    body = block.group(1).strip() if block else text.split("<|audio_code_")[0].strip()
    fields: dict[str, str] = {}
    key: Optional[str] = None
    lines: list[str] = []

    def close() -> None:
        if key and lines:
            value = "\n".join(lines)
            fields[key] = _single_line(value) if key == "caption" else value.strip()

    for line in body.split("\n"):
        if line.strip().startswith("<"):
            continue
        if line and not line[0].isspace() and ":" in line:
            close()
            name, value = line.split(":", 1)
            key, lines = name.strip().lower(), ([value] if value.strip() else [])
        elif line.startswith((" ", "\t")) and key:
            lines.append(line)
    close()
    return fields


def parse_audio_codes(text: str) -> list[int]:
    return [int(code) for code in _AUDIO_CODE.findall(text)]


def metadata_from_fields(fields: dict[str, str]) -> SongMetadata:
    """The valid fields as SongMetadata; a value outside ACE-Step's ranges or sets is left unknown (None)."""
    def whole(name: str, low: int, high: int) -> Optional[int]:
        value = fields.get(name, "")
        return int(value) if value.isdecimal() and low <= int(value) <= high else None

    timesignature = fields.get("timesignature", "")
    timesignature = timesignature[:-2] if timesignature.endswith("/4") else timesignature
    return SongMetadata(
        bpm=whole("bpm", BPM_MIN, BPM_MAX),
        duration=whole("duration", DURATION_MIN, DURATION_MAX),
        keyscale=fields.get("keyscale") if fields.get("keyscale") in VALID_KEYSCALES else None,
        timesignature=int(timesignature) if timesignature in {str(t) for t in VALID_TIME_SIGNATURES} else None,
        language=fields.get("language") if fields.get("language") in VALID_LANGUAGES else None,
        caption=fields.get("caption") or None,
    )


def parse_lm_output(text: str) -> tuple[SongMetadata, list[int]]:
    """The LM's decoded output -> (metadata, audio codes)."""
    return metadata_from_fields(parse_lm_fields(text)), parse_audio_codes(text)

