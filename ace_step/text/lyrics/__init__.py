"""ACE-Step v1 lyric tokenizer (text -> lyric token ids), independent of ComfyUI.

    from ace_step.text.lyrics import LyricTokenizer, find_vocab
    tok = LyricTokenizer(find_vocab(comfyui_root="/path/to/ComfyUI"))
    ids = tok.encode("[verse]\\n我走过深夜的街道\\nNeon lights they flicker bright")
"""
from .langdetect import language_counts
from .tokenizer import (
    LANGUAGE_TOKENS,
    START,
    SPACE,
    STOP,
    STRUCTURE_TAGS,
    SUPPORTED_LANGUAGES,
    UNK,
    LyricTokenizer,
    language_of_line,
    preprocess,
    split_language_prefix,
)
from .vocab import ENV_VAR, VOCAB_SIZE, VocabNotFoundError, find_vocab

detect_language = language_of_line

__all__ = [
    "ENV_VAR", "LANGUAGE_TOKENS", "LyricTokenizer", "START", "SPACE", "STOP", "STRUCTURE_TAGS",
    "SUPPORTED_LANGUAGES", "UNK", "VOCAB_SIZE", "VocabNotFoundError", "detect_language", "find_vocab",
    "language_counts", "language_of_line", "preprocess", "split_language_prefix",
]
