"""ACE-Step v1 lyric tokenizer (text -> lyric token ids), independent of ComfyUI.

    from ace_step.text.lyrics import LyricTokenizer, find_vocab
    tok = LyricTokenizer(find_vocab(comfyui_root="/path/to/ComfyUI"))
    ids, report = tok.encode_with_report("[verse]\\n我走过深夜的街道\\nNeon lights they flicker bright")
    if not report.ok:
        print(report.message())
"""
from .langdetect import detect_language
from .report import TRAINED_LYRIC_TOKENS, LyricReport, UnreadableLine
from .tokenizer import LyricTokenizer, line_language, preprocess, split_language_prefix
from .vocab import (
    ENV_VAR,
    LANGUAGE_NAMES,
    LANGUAGE_TOKENS,
    SPACE,
    START,
    STOP,
    STRUCTURE_TAGS,
    SUPPORTED_LANGUAGES,
    UNK,
    VOCAB_SIZE,
    VocabNotFoundError,
    find_vocab,
)

__all__ = [
    "ENV_VAR", "LANGUAGE_NAMES", "LANGUAGE_TOKENS", "LyricReport", "LyricTokenizer", "SPACE", "START", "STOP",
    "STRUCTURE_TAGS", "SUPPORTED_LANGUAGES", "TRAINED_LYRIC_TOKENS", "UNK", "UnreadableLine", "VOCAB_SIZE",
    "VocabNotFoundError", "detect_language", "find_vocab", "line_language", "preprocess", "split_language_prefix",
]
