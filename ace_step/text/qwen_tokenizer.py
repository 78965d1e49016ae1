"""Qwen3 tokenizer for ACE-Step 1.5: the Qwen3-Embedding-0.6B text encoder and the 5 Hz LM planner.

Runs on the `tokenizers` library (its byte-level BPE), from one of two layouts, nothing downloaded:
- a Hugging Face `tokenizer.json`: the original checkpoint folders ship one each (`Qwen3-Embedding-0.6B/`,
  `acestep-5Hz-lm-*/`, ace-step/ACE-Step-1.5 `acestep/handler.py` and `acestep/llm_inference.py` load them with
  `AutoTokenizer.from_pretrained`);
- the Qwen tokenizer folder a host ComfyUI bundles (`comfy/text_encoders/qwen25_tokenizer/`: vocab.json,
  merges.txt, tokenizer_config.json), which ComfyUI's `ace15.py` reads with `transformers.Qwen2Tokenizer`
  (Comfy-Org/ComfyUI `comfy/text_encoders/anima.py` @ 5f291bf0, class `Qwen3Tokenizer`). We rebuild the same
  pipeline: NFC normalisation, Qwen's split regex, byte-level BPE.

Token ids (Qwen3 vocabulary, then ACE-Step's additions):
- 0..151642 byte-level BPE; 151643 `<|endoftext|>` (padding, and the end token Qwen3-Embedding's tokenizer.json
  appends to every text); 151644 `<|im_start|>`; 151645 `<|im_end|>` (the LM's EOS); ... 151667 `<think>`,
  151668 `</think>`.
  Older ComfyUI builds (0.3.75 among them) bundle 151665..151668 as `<|img|> <|endofimg|> <|meta|> <|endofmeta|>`;
  Comfy-Org/ComfyUI PR #11029 (2025-12-01) replaced them with Qwen3's `<tool_response> </tool_response> <think>
  </think>`. We always use Qwen3's entries, so "<think>" is one token (151667) with either folder.
- 151669.. `<|audio_code_N|>`: the LM's vocabulary has 65,535 of them (LM `vocab_size` 217204 = 151669 + 65535,
  Comfy-Org/ComfyUI `comfy/text_encoders/llama.py`, `Qwen3_2B_ACE15_lm_Config` / `Qwen3_4B_ACE15_lm_Config`), of
  which codes 0..63999 are the FSQ codebook (levels [8,8,8,5,5,5]; ace-step/ACE-Step-1.5
  `acestep/constrained_logits_processor.py` @ f30aee4c, MAX_AUDIO_CODE = 63999). ComfyUI adds none to its tokenizer
  (it samples by id range 151669..215669 and subtracts 151669, `comfy/text_encoders/ace15.py` @ 523fba4d); we add
  all 65,535 to the bundled folder's vocabulary so that `<|audio_code_N|>` text round-trips like the LM's own
  tokenizer.json.
The Qwen3-Embedding table has 151669 rows, so the text-encoder flavour (`audio_codes=False`) keeps no token above
151668, whatever file it was loaded from.

`encode` never adds special tokens; the prompt builders in `v15_prompts` append the end token where the original
pipeline's tokenizer does, so both layouts give the same ids.
"""
from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

PathLike = Union[str, os.PathLike]

ENDOFTEXT_ID = 151643
IM_START_ID = 151644
IM_END_ID = 151645
THINK_ID = 151667
THINK_END_ID = 151668
AUDIO_CODE_FIRST_ID = 151669
AUDIO_CODE_TOKENS = 65535  # <|audio_code_0|> .. <|audio_code_65534|> in the LM vocabulary
AUDIO_CODEBOOK_SIZE = 64000  # codes the FSQ quantiser can produce: 8*8*8*5*5*5
TEXT_ENCODER_VOCAB_SIZE = AUDIO_CODE_FIRST_ID  # Qwen3-Embedding-0.6B embedding rows
LM_VOCAB_SIZE = AUDIO_CODE_FIRST_ID + AUDIO_CODE_TOKENS  # 217204, the 5 Hz LM embedding rows

# Qwen3's added tokens (Qwen/Qwen3-* tokenizer_config.json, `added_tokens_decoder`): id, text, special flag.
QWEN3_ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
    (151665, "<tool_response>", False),
    (151666, "</tool_response>", False),
    (151667, "<think>", False),
    (151668, "</think>", False),
)
# Ids at which an older bundled tokenizer_config.json may hold other tokens (see module docstring).
_REPLACED_BY_QWEN3 = range(151665, 151669)

# Qwen2/Qwen3 pre-tokenizer split pattern (the `Split` step of Qwen's tokenizer.json; transformers' Qwen2Tokenizer
# uses the same expression).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

BUNDLED_FOLDER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


def audio_code_text(code: int) -> str:
    return f"<|audio_code_{code}|>"


def _byte_level_alphabet() -> dict[str, int]:
    """The byte-level BPE alphabet, character -> byte: printable Latin-1 bytes stand for themselves, the other 68
    bytes (controls, space, soft hyphen, ...) for the code points 256, 257, ... in byte order."""
    visible = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    chars = {b: b for b in visible}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return {chr(c): b for b, c in chars.items()}


_BYTE_OF_CHAR = _byte_level_alphabet()


class QwenTokenizer:
    """A loaded Qwen3 tokenizer. `flavour` is "lm" (audio-code tokens present, 217204 ids) or "text_encoder"
    (151669 ids); `source` says which file or folder it came from."""

    def __init__(self, backend: Tokenizer, source: str, flavour: str):
        self.backend = backend
        self.source = source
        self.flavour = flavour
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self.has_audio_codes = flavour == "lm"
        _check_layout(self)

    def encode(self, text: str) -> list[int]:
        """Ids of `text`; special-token strings in it (e.g. "<|im_end|>") become those tokens; nothing is added."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for (added tokens: their text in UTF-8). Decoding single tokens this way is
        exact where `decode([id])` is not (a token can hold part of a multi-byte character)."""
        piece = self.backend.id_to_token(token_id)
        if piece is None:
            raise ValueError(f"token id {token_id} is outside this tokenizer ({self.vocab_size} ids)")
        if token_id >= ENDOFTEXT_ID:
            return piece.encode("utf-8")
        return bytes(_BYTE_OF_CHAR[ch] for ch in piece)

    def audio_code_id(self, code: int) -> int:
        if not self.has_audio_codes:
            raise ValueError("this is the text-encoder tokenizer; audio codes need the LM flavour (audio_codes=True)")
        if not 0 <= code < AUDIO_CODE_TOKENS:
            raise ValueError(f"audio code {code} is outside 0..{AUDIO_CODE_TOKENS - 1}")
        return AUDIO_CODE_FIRST_ID + code


def _check_layout(tok: QwenTokenizer) -> None:
    for token_id, text, _ in QWEN3_ADDED_TOKENS:
        found = tok.backend.token_to_id(text)
        if found != token_id:
            raise ValueError(
                f"{tok.source}: {text!r} has id {found}, Qwen3 has {token_id}; this is not a Qwen3 tokenizer (ACE-Step "
                "1.5 needs the Qwen3-Embedding-0.6B or 5 Hz LM tokenizer.json, or ComfyUI's qwen25_tokenizer folder)"
            )
    expected = LM_VOCAB_SIZE if tok.flavour == "lm" else TEXT_ENCODER_VOCAB_SIZE
    if tok.vocab_size != expected:
        raise ValueError(f"{tok.source}: {tok.vocab_size} ids, the ACE-Step 1.5 {tok.flavour} tokenizer has {expected}")
    if tok.flavour == "lm":
        for code in (0, AUDIO_CODEBOOK_SIZE - 1, AUDIO_CODE_TOKENS - 1):
            if tok.backend.token_to_id(audio_code_text(code)) != AUDIO_CODE_FIRST_ID + code:
                raise ValueError(f"{tok.source}: {audio_code_text(code)} is not id {AUDIO_CODE_FIRST_ID + code}")


def _audio_code_tokens() -> list[AddedToken]:
    return [AddedToken(audio_code_text(c), special=True, normalized=False) for c in range(AUDIO_CODE_TOKENS)]


def _qwen3_added_tokens() -> list[AddedToken]:
    return [AddedToken(text, special=special, normalized=False) for _, text, special in QWEN3_ADDED_TOKENS]


def _finish(backend: Tokenizer, source: str, audio_codes: bool) -> QwenTokenizer:
    has_codes = backend.token_to_id(audio_code_text(0)) is not None
    if audio_codes and not has_codes:
        backend.add_tokens(_audio_code_tokens())
    return QwenTokenizer(backend, source, "lm" if audio_codes else "text_encoder")


def tokenizer_from_json(path: PathLike, *, audio_codes: bool) -> QwenTokenizer:
    """A Hugging Face tokenizer.json (Qwen3-Embedding or a 5 Hz LM folder). `audio_codes=True` gives the LM flavour
    (codes added when the file lacks them), False the text-encoder flavour (codes in the file dropped)."""
    path = Path(path)
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as error:  # `tokenizers` raises a bare Exception for a file it cannot read
        raise ValueError(f"{path} is not a Hugging Face tokenizer.json ({error})") from error
    if not audio_codes and backend.get_vocab_size(with_added_tokens=True) > TEXT_ENCODER_VOCAB_SIZE:
        # Rebuilt without them: `tokenizers` cannot remove added tokens in place.
        data = json.loads(path.read_text(encoding="utf-8"))
        data["added_tokens"] = [t for t in data.get("added_tokens", []) if t["id"] < AUDIO_CODE_FIRST_ID]
        backend = Tokenizer.from_str(json.dumps(data))
    return _finish(backend, str(path), audio_codes)


def _read_bundled_config(folder: Path) -> None:
    """Checks that tokenizer_config.json holds Qwen's added tokens (apart from the four ids older ComfyUI builds
    fill with other tokens, which Qwen3's replace)."""
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    declared = {int(k): v["content"] for k, v in config.get("added_tokens_decoder", {}).items()}
    for token_id, text, _ in QWEN3_ADDED_TOKENS:
        if token_id in _REPLACED_BY_QWEN3:
            continue
        if declared.get(token_id) != text:
            raise ValueError(
                f"{folder / 'tokenizer_config.json'}: id {token_id} is {declared.get(token_id)!r}, Qwen has {text!r}; "
                "not a Qwen tokenizer folder"
            )


def tokenizer_from_vocab_folder(folder: PathLike, *, audio_codes: bool) -> QwenTokenizer:
    """ComfyUI's bundled Qwen tokenizer folder (vocab.json, merges.txt, tokenizer_config.json), with Qwen3's added
    tokens and, for the LM flavour, the 65,535 audio-code tokens."""
    folder = Path(folder)
    _read_bundled_config(folder)
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = []
    for line in (folder / "merges.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#version"):
            left, right = line.split(" ")
            merges.append((left, right))
    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = decoders.ByteLevel()
    backend.add_tokens(_qwen3_added_tokens())
    return _finish(backend, str(folder), audio_codes)


def host_comfy_tokenizer_dir() -> Optional[Path]:
    """The host ComfyUI's bundled Qwen tokenizer folder, found without importing ComfyUI (ComfyUI's own ACE-Step 1.5
    text encoder reads this folder); None outside ComfyUI."""
    try:
        spec = importlib.util.find_spec("comfy")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "text_encoders" / "qwen25_tokenizer"
        if folder.is_dir():
            return folder
    return None


def load_qwen3_tokenizer(places: Sequence[Optional[PathLike]], *, audio_codes: bool) -> QwenTokenizer:
    """The first usable tokenizer among `places`, in order: a tokenizer.json file, a folder holding one (the original
    checkpoint layout), or a folder with vocab.json + merges.txt + tokenizer_config.json (ComfyUI's bundled one;
    `host_comfy_tokenizer_dir()` finds it). None entries are skipped. `audio_codes=True` for the 5 Hz LM, False for
    the Qwen3-Embedding text encoder."""
    looked: list[str] = []
    for place in places:
        if place is None:
            continue
        path = Path(place)
        if path.is_file():
            return tokenizer_from_json(path, audio_codes=audio_codes)
        if (path / "tokenizer.json").is_file():
            return tokenizer_from_json(path / "tokenizer.json", audio_codes=audio_codes)
        if all((path / name).is_file() for name in BUNDLED_FOLDER_FILES):
            return tokenizer_from_vocab_folder(path, audio_codes=audio_codes)
        looked.append(str(path))
    where = "\n  ".join(looked) if looked else "(no places were given)"
    raise FileNotFoundError(
        "No Qwen3 tokenizer for ACE-Step 1.5. Looked for a tokenizer.json, or vocab.json + merges.txt + "
        f"tokenizer_config.json, in:\n  {where}\nPut the original checkpoint folder (Qwen3-Embedding-0.6B/ or "
        "acestep-5Hz-lm-*/, each with its tokenizer.json) in ComfyUI's text_encoders folder, or run inside a ComfyUI "
        "that bundles comfy/text_encoders/qwen25_tokenizer/."
    )
