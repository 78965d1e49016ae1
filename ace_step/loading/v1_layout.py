"""Where ACE-Step v1's tensors live in the files users have, and finding those files.

- ComfyUI's all-in-one `ace_step_v1_3.5b.safetensors`: `model.diffusion_model.*` (transformer incl. lyric encoder),
  `vae.dcae.*`, `vae.vocoder.*`, `text_encoders.umt5base.*`, `text_encoders.spiece_model` (tokenizer bytes);
- the original ACE-Step folder (Hugging Face ACE-Step/ACE-Step-v1-3.5B: `ace_step_transformer/`, `music_dcae_f8c8/`,
  `music_vocoder/`, `umt5-base/`, each with its safetensors file and config.json; umt5-base also with
  tokenizer.json), directly or inside a Hugging Face cache;
- split files from ComfyUI's folders (diffusion_models, vae, text_encoders), with or without their prefixes.
`route_key` maps any file key to (network, key in our module).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import CONVERT_HINT, PICKLE_SUFFIXES, CheckpointNotFoundError, UnsafeCheckpointError
from .folder_search import find_root

# Where each network's keys sit in the all-in-one file (our modules' state-dict keys follow the prefix).
ALL_IN_ONE_PREFIX = {"transformer": "model.diffusion_model.", "vae": "vae.", "umt5": "text_encoders.umt5base."}
SPIECE_KEY = "text_encoders.spiece_model"
ALL_IN_ONE_NAME = "ace_step_v1_3.5b.safetensors"

# The original ACE-Step folder layout (HF ACE-Step/ACE-Step-v1-3.5B): part -> folder, file name, and how its bare
# keys map into our networks (network, prefix added; None = UMT5's HF naming, mapped by `route_text`).
ORIGINAL_FOLDERS = {
    "transformer": "ace_step_transformer",
    "dcae": "music_dcae_f8c8",
    "vocoder": "music_vocoder",
    "umt5": "umt5-base",
}
ORIGINAL_FILES = {
    "transformer": "diffusion_pytorch_model.safetensors",
    "dcae": "diffusion_pytorch_model.safetensors",
    "vocoder": "diffusion_pytorch_model.safetensors",
    "umt5": "model.safetensors",
}
FOLDER_ROUTE = {"transformer": ("transformer", ""), "dcae": ("vae", "dcae."), "vocoder": ("vae", "vocoder."),
                 "umt5": ("umt5", None)}

_TRANSFORMER_TOP = {
    "transformer_blocks", "lyric_encoder", "lyric_embs", "lyric_proj", "proj_in", "t_block", "timestep_embedder",
    "final_layer", "genre_embedder", "speaker_embedder", "projectors",
}
_VOCODER_TOP = {"backbone", "head", "mel_transform"}
# Keys of a full UMT5 (encoder + decoder) that the encoder-only model does not use.
T5_DECODER_PREFIXES = ("transformer.decoder.", "transformer.lm_head.")
TIED_EMBEDDING = "transformer.encoder.embed_tokens.weight"  # HF's tied copy of shared.weight


# ---------------------------------------------------------------------------------------------------------------
# Key routing: file key -> (network, key in our module's state dict)

def route_key(key: str) -> Optional[tuple[str, str]]:
    """The network a checkpoint key belongs to and its key in our module, for any accepted layout; None if unknown.

    Networks: "transformer", "vae" (keys `dcae.*`/`vocoder.*`), "umt5" and "spiece" (the tokenizer bytes).
    """
    for prefix in ("model.diffusion_model.", "diffusion_model."):
        if key.startswith(prefix):
            return "transformer", key[len(prefix):]
    if key.startswith("vae."):
        return route_vae(key[len("vae."):])
    if key.startswith("text_encoders."):
        return route_text(key[len("text_encoders."):])
    top = key.split(".", 1)[0]
    if top in _TRANSFORMER_TOP:
        return "transformer", key
    if top in ("dcae", "vocoder") or top in _VOCODER_TOP:
        return route_vae(key)
    if top in ("umt5base", "spiece_model", "transformer", "shared", "logit_scale", "lm_head"):
        return route_text(key)
    # Bare `encoder.*`/`decoder.*`: the DCAE's halves (original music_dcae folder) or HF UMT5's stacks.
    if key.startswith(("encoder.block.", "encoder.final_layer_norm.", "encoder.embed_tokens.",
                       "decoder.block.", "decoder.final_layer_norm.", "decoder.embed_tokens.")):
        return route_text(key)
    if top in ("encoder", "decoder"):
        return "vae", "dcae." + key
    return None


def route_vae(key: str) -> Optional[tuple[str, str]]:
    top = key.split(".", 1)[0]
    if top in ("dcae", "vocoder"):
        return "vae", key
    if top in ("encoder", "decoder"):
        return "vae", "dcae." + key
    if top in _VOCODER_TOP:
        return "vae", "vocoder." + key
    return None


def route_text(key: str) -> Optional[tuple[str, str]]:
    if key == "spiece_model":
        return "spiece", key
    if key.startswith("umt5base."):
        key = key[len("umt5base."):]
    if key == "logit_scale" or key.startswith("transformer."):
        return "umt5", key
    if key.startswith(("shared.", "encoder.", "decoder.", "lm_head.")):
        return "umt5", "transformer." + key  # HF UMT5EncoderModel naming
    return None



def route_in_folder(key: str, part: str) -> Optional[tuple[str, str]]:
    net, prefix = FOLDER_ROUTE[part]
    if prefix is None:
        return route_text(key)
    return net, prefix + key


# ---------------------------------------------------------------------------------------------------------------
# Finding the files

@dataclass
class FoundFiles:
    layout: str  # "single" (one file) or "folder"
    root: Path
    files: dict[str, list[Path]]  # folder part -> safetensors files; "*" for a single file
    tokenizer_files: list[Path] = field(default_factory=list)
    config_json: dict[str, dict] = field(default_factory=dict)


def _folder_safetensors(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    if not files:
        pickles = sorted(p for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            raise UnsafeCheckpointError(
                pickles[0], "this folder has only pickle weights; ACE-Step Studio only loads .safetensors files, "
                "because opening a pickle can run arbitrary code.", CONVERT_HINT)
    return files


def _original_folders(path: Path) -> dict[str, Path]:
    """The original sub-folders present directly in `path` (network -> folder)."""
    return {net: path / name for net, name in ORIGINAL_FOLDERS.items() if (path / name).is_dir()}


def find_files(path) -> FoundFiles:
    path = Path(path).expanduser()
    if path.is_file():
        return FoundFiles("single", path.parent, {"*": [path]})
    if not path.exists():
        raise CheckpointNotFoundError(path, "no such file or folder.", "Check the path.")
    root = find_root(path, _original_folders)
    if root is not None:
        files, configs = {}, {}
        for part, name in ORIGINAL_FOLDERS.items():
            folder = root / name
            if not folder.is_dir():
                continue
            files[part] = _folder_safetensors(folder)
            cfg = folder / "config.json"
            if cfg.is_file():
                try:
                    configs[part] = json.loads(cfg.read_text(encoding="utf-8"))
                except (OSError, ValueError) as e:
                    configs[part] = {"_unreadable": str(e)}
        umt5 = root / ORIGINAL_FOLDERS["umt5"]
        tok = [p for p in (umt5 / "tokenizer.json", umt5 / "spiece.model") if p.is_file()]
        return FoundFiles("folder", root, files, tok, configs)
    single = path / ALL_IN_ONE_NAME
    candidates = [single] if single.is_file() else sorted(path.glob("*.safetensors"))
    if len(candidates) == 1:
        return FoundFiles("single", path, {"*": candidates})
    raise CheckpointNotFoundError(
        path, "found no ACE-Step v1 checkpoint here" + (f" (it holds {len(candidates)} .safetensors files: pass one)"
                                                         if candidates else "") + ".",
        f"Pass {ALL_IN_ONE_NAME} (ComfyUI's all-in-one file), a split component file, or the ACE-Step-v1-3.5B "
        f"folder holding {', '.join(ORIGINAL_FOLDERS.values())}.",
    )
