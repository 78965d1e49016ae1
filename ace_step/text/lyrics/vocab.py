"""Locating and loading the lyric BPE vocabulary.

The vocabulary is data, not code: the HuggingFace `tokenizers` JSON that ACE-Step ships (6681 BPE entries plus added
tokens, 6693 ids in all, sha256 c2a66ea4...cc558). ComfyUI carries an identical copy, so inside ComfyUI we read
that one; outside it the user points at a file.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from ...errors import PlainName

ENV_VAR = "ACE_STEP_LYRICS_VOCAB"
COMFYUI_RELATIVE = Path("comfy") / "text_encoders" / "ace_lyrics_tokenizer" / "vocab.json"
VOCAB_SIZE = 6693  # = the transformer's lyric embedding rows

START, SPACE, STOP, UNK = 261, 2, 0, 1
LANGUAGE_TOKENS = {
    "en": 259, "de": 260, "fr": 262, "es": 284, "it": 285, "pt": 286, "pl": 294, "tr": 295, "ru": 267, "cs": 293,
    "nl": 297, "ar": 5022, "zh": 5023, "ja": 5412, "hu": 5753, "ko": 6152, "hi": 6680,
}
SUPPORTED_LANGUAGES = tuple(LANGUAGE_TOKENS)
LANGUAGE_NAMES = {
    "en": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian", "pt": "Portuguese",
    "pl": "Polish", "tr": "Turkish", "ru": "Russian", "cs": "Czech", "nl": "Dutch", "ar": "Arabic", "zh": "Chinese",
    "ja": "Japanese", "hu": "Hungarian", "ko": "Korean", "hi": "Hindi",
}
STRUCTURE_TAGS = ("start", "intro", "verse", "chorus", "bridge", "outro", "end", "inst", "solo", "hook",
                  "pre-chorus", "break")  # ids 6681..6692, matched only as exact lowercase "[tag]"


class VocabNotFoundError(PlainName, FileNotFoundError):
    """No lyric vocabulary file could be found; the message lists where we looked and how to fix it."""


def find_vocab(comfyui_root: str | os.PathLike | None = None, explicit_path: str | os.PathLike | None = None) -> Path:
    """Returns the path of the lyric vocab.json.

    Looks, in order, at: `explicit_path`; the `ACE_STEP_LYRICS_VOCAB` environment variable; the ComfyUI install at
    `comfyui_root` (comfy/text_encoders/ace_lyrics_tokenizer/vocab.json); the ComfyUI at `$COMFYUI_PATH`.
    An explicit path that does not exist is an error at once (the user asked for that file).
    """
    looked: list[str] = []
    if explicit_path is not None:
        path = Path(explicit_path).expanduser()
        if path.is_dir():
            path = path / "vocab.json"
        if path.is_file():
            return path
        raise VocabNotFoundError(
            f"ACE-Step lyric vocabulary not found at the given path {path}. Pass the path of the tokenizers JSON "
            f"'vocab.json' (364,005 bytes; ComfyUI ships it as {COMFYUI_RELATIVE.as_posix()})."
        )
    candidates: list[tuple[str, Path]] = []
    if os.environ.get(ENV_VAR):
        candidates.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR]).expanduser()))
    if comfyui_root is not None:
        candidates.append(("ComfyUI root", Path(comfyui_root).expanduser() / COMFYUI_RELATIVE))
    if os.environ.get("COMFYUI_PATH"):
        candidates.append(("$COMFYUI_PATH", Path(os.environ["COMFYUI_PATH"]).expanduser() / COMFYUI_RELATIVE))
    for label, path in candidates:
        if path.is_dir():
            path = path / "vocab.json"
        if path.is_file():
            return path
        looked.append(f"{label}: {path}")
    where = "; ".join(looked) if looked else "nowhere (no path, no ComfyUI root and no environment variable given)"
    raise VocabNotFoundError(
        "ACE-Step lyric vocabulary (vocab.json) not found. Looked at: " + where + ". Fix: run inside ComfyUI "
        f"(which ships it as <ComfyUI>/{COMFYUI_RELATIVE.as_posix()}) and pass its root, or set {ENV_VAR} to the "
        "file's path, or pass the path explicitly. The file is the HuggingFace tokenizers JSON from ACE-Step "
        "(acestep/models/lyrics_utils/vocab.json)."
    )


@lru_cache(maxsize=4)
def load_bpe(path: str):
    """The `tokenizers.Tokenizer` for a vocab file, loaded once per path and checked to be the ACE-Step one."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as err:  # a corrupt or foreign file: say which and why
        raise ValueError(f"{path} is not a readable tokenizers JSON vocabulary: {err}") from err
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    expected = {"[STOP]": 0, "[UNK]": 1, "[SPACE]": 2, "[START]": 261, "[en]": 259, "[zh-cn]": 5023, "[break]": 6692}
    wrong = {tok: tokenizer.token_to_id(tok) for tok, i in expected.items() if tokenizer.token_to_id(tok) != i}
    if size != VOCAB_SIZE or wrong:
        raise ValueError(
            f"{path} is not the ACE-Step lyric vocabulary: {size} ids (expected {VOCAB_SIZE})"
            + (f", unexpected ids {wrong}" if wrong else "")
        )
    return tokenizer
