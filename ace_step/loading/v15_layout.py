"""Finding ACE-Step 1.5 weights on disk, and what their names say.

Accepted (key spellings: `v15_keys`):
- single files: ComfyUI's all-in-one `checkpoints/ace_step_1.5_turbo_aio.safetensors`, the split files of
  `diffusion_models/`, `text_encoders/`, `vae/`, or one original folder's weights file; several paths at once
  (e.g. the text encoder and an LM);
- one original model folder (`acestep-v15-sft/`, `Qwen3-Embedding-0.6B/`, `acestep-5Hz-lm-1.7B/`, `vae/`) holding
  its weights (`v15_keys.HF_WEIGHT_FILES`: one file or a shard index);
- the original Hugging Face layout: a root holding such folders (ACE-Step/Ace-Step1.5: `acestep-v15-turbo/`,
  `Qwen3-Embedding-0.6B/`, `acestep-5Hz-lm-1.7B/`, `vae/`; ace-step/ACE-Step-1.5 acestep/model_downloader.py @
  f30aee4c186c33b7b8a6ea59a4b7fc36f795b49f downloads the other DiTs and LMs as sibling folders), given directly or
  anywhere up to four levels above it, e.g. a Hugging Face cache, whose `models--ACE-Step--<repo>/snapshots/<rev>/`
  folders are read too (the newest revision; a per-model repo such as ACE-Step/acestep-v15-sft counts as the folder
  of its name).

Names are also read for what the weights cannot tell: which DiT variant (turbo / sft / base) a file is, a guess
(`guess_variant`).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .errors import (PICKLE_SUFFIXES, CONVERT_HINT, CheckpointNotFoundError, CorruptCheckpointError,
                     UnsafeCheckpointError)
from .folder_search import find_root
from .v15_keys import DIT, HF_FOLDERS, HF_WEIGHT_FILES, LM

AIO_NAME = "ace_step_1.5_turbo_aio.safetensors"
TEXT_ENCODER_FOLDER = "Qwen3-Embedding-0.6B"
VAE_FOLDER = "vae"
DEFAULT_LM_FOLDER = "acestep-5Hz-lm-1.7B"  # the original's default planner, in its main repo
DIT_PREFIX, LM_PREFIX = "acestep-v15-", "acestep-5Hz-lm-"


# ---------------------------------------------------------------------------------------------------------------
# What names say

@dataclass(frozen=True)
class SamplingHint:
    """How a DiT variant is sampled: steps, CFG scale (1.0 = no guidance) and ComfyUI's timestep shift."""

    steps: int
    cfg: float
    shift: float


# turbo: 8 steps without guidance (the original clamps turbo to 8 steps and ignores guidance_scale, ace-step/
# ACE-Step-1.5 acestep/inference.py @ f30aee4c: "8 for turbo", "Only support for non-turbo model"); sft / base: 50
# steps with guidance at the original's default scale 7.0. Shift 3: ComfyUI's ACEStep15 sampling_settings for every
# variant (Comfy-Org/ComfyUI comfy/supported_models.py @ 01f03bbd), unless the folder name states another.
SAMPLING_HINTS = {
    "turbo": SamplingHint(steps=8, cfg=1.0, shift=3.0),
    "sft": SamplingHint(steps=50, cfg=7.0, shift=3.0),
    "base": SamplingHint(steps=50, cfg=7.0, shift=3.0),
}


@dataclass(frozen=True)
class VariantGuess:
    """Which DiT a name suggests, a GUESS from words in it (the weights of turbo, sft and base have the same keys
    and shapes): `kind` "turbo", "sft", "base" or None; `xl` from an "xl" word (the loader overrides it from the
    shapes); `shift` when the name states one ("turbo-shift1"); `name`: the name read."""

    kind: Optional[str] = None
    xl: Optional[bool] = None
    shift: Optional[float] = None
    name: Optional[str] = None

    @property
    def sampling(self) -> Optional[SamplingHint]:
        hint = SAMPLING_HINTS.get(self.kind)
        if hint is None or self.shift is None:
            return hint
        return SamplingHint(hint.steps, hint.cfg, self.shift)


def guess_variant(name: str) -> VariantGuess:
    """The variant a file or folder name suggests: "acestep_v1.5_xl_sft_bf16.safetensors" -> sft, XL;
    "acestep-v15-turbo-shift1" -> turbo, shift 1; "ace_step_1.5_turbo_aio.safetensors" -> turbo."""
    plain = Path(name).name.lower().removesuffix(".safetensors")
    words = re.split(r"[^a-z0-9]+", plain)
    kinds = [w for w in words if w in SAMPLING_HINTS]
    shift = re.search(r"(?:^|[^a-z0-9])shift(\d+(?:\.\d+)?)(?:$|[^a-z0-9.])", plain)
    return VariantGuess(kind=kinds[0] if len(set(kinds)) == 1 else None, xl=True if "xl" in words else None,
                        shift=float(shift.group(1)) if shift else None, name=Path(name).name)


def dit_folder_name(variant: str) -> str:
    """"sft", "xl-sft", "xl_sft" or "acestep-v15-sft" -> "acestep-v15-sft"."""
    v = variant.strip().strip("/").replace("_", "-")
    return v if v.startswith(DIT_PREFIX) else DIT_PREFIX + v


def lm_folder_name(size: str) -> str:
    """"1.7B", "1.7b" or "acestep-5Hz-lm-1.7B" -> "acestep-5Hz-lm-1.7B"."""
    s = size.strip().strip("/")
    return s if s.startswith(LM_PREFIX) else LM_PREFIX + s.upper()


# ---------------------------------------------------------------------------------------------------------------
# Finding the files

@dataclass(frozen=True)
class Source:
    """One weights file; `folder`: the original folder it belongs to (its name in HF_FOLDERS) or None;
    `tokenizer_dir`: a folder that may hold its tokenizer (an original model folder), or None."""

    path: Path
    folder: Optional[str] = None
    tokenizer_dir: Optional[Path] = None

    @property
    def network(self) -> Optional[str]:
        """The network the folder name promises, if any."""
        return HF_FOLDERS.get(self.folder)


@dataclass
class Found:
    layout: str  # "hf-folder" (the original layout, or one of its folders) or "files"
    sources: List[Source]
    root: Optional[Path] = None  # the original layout's root
    dit_folders: tuple = ()  # every DiT folder of the root
    lm_folders: tuple = ()
    config_json: Dict[str, dict] = field(default_factory=dict)  # folder name -> its config.json
    warnings: List[str] = field(default_factory=list)


def _newest_snapshot(repo: Path) -> Optional[Path]:
    snapshots = repo / "snapshots"
    try:
        revisions = [p for p in snapshots.iterdir() if p.is_dir()]
    except OSError:
        return None
    return max(revisions, key=lambda p: p.stat().st_mtime) if revisions else None


def weight_files(folder: Path) -> List[Path]:
    """The weights of one original folder: the single file or the shards its index names ([] when none)."""
    for name in HF_WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        try:
            shards = sorted(set(json.loads(path.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise CorruptCheckpointError(path, f"this shard index is unreadable ({e}).",
                                         "Download the folder again.") from None
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise CheckpointNotFoundError(path, f"the shard index names files that are not there: {missing}.",
                                          "The download is incomplete: download the folder again.")
        return [folder / s for s in shards]
    pickles = sorted(p.name for p in folder.glob("*") if p.suffix.lower() in PICKLE_SUFFIXES
                     and p.name != "silence_latent.pt")
    if pickles:
        raise UnsafeCheckpointError(
            folder / pickles[0], "this folder has only pickle weights; ACE-Step Studio only loads .safetensors "
            "files, because opening a pickle can run arbitrary code.", CONVERT_HINT)
    return []


def model_folders(directory: Path) -> Dict[str, Path]:
    """The original folders directly in `directory` (name -> path), those of Hugging Face cache repos in it
    included."""
    found = _named_children(directory)
    try:
        repos = sorted(c for c in directory.iterdir() if c.is_dir() and c.name.startswith("models--"))
    except OSError:
        return found
    for child in repos:
        snapshot = _newest_snapshot(child)
        if snapshot is None:
            continue
        repo = child.name.split("--")[-1]
        if repo in HF_FOLDERS and weight_files(snapshot):
            found.setdefault(repo, snapshot)
        else:  # a repo holding several folders (ACE-Step/Ace-Step1.5)
            for name, path in _named_children(snapshot).items():
                found.setdefault(name, path)
    return found


def _named_children(directory: Path) -> Dict[str, Path]:
    try:
        return {c.name: c for c in sorted(directory.iterdir()) if c.is_dir() and c.name in HF_FOLDERS}
    except OSError:
        return {}


def _read_config(folder: Path) -> Optional[dict]:
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {"_unreadable": "not a JSON object"}
    except (OSError, ValueError) as e:
        return {"_unreadable": str(e)}


def _folder_sources(folder: Path, name: Optional[str], found: Found) -> List[Source]:
    files = weight_files(folder)
    if not files:
        raise CheckpointNotFoundError(folder, "this model folder holds no weights.",
                                      f"Expected one of {', '.join(HF_WEIGHT_FILES)}: download the folder again.")
    config = _read_config(folder)
    if config is not None:
        found.config_json[name or folder.name] = config
    return [Source(f, name, folder) for f in files]


def _choose_dit(folders: Dict[str, Path], variant: Optional[str], need: bool, root: Path) -> Optional[str]:
    dits = sorted(n for n in folders if HF_FOLDERS[n] == DIT)
    if variant is not None:
        name = dit_folder_name(variant)
        if name not in folders:
            raise CheckpointNotFoundError(root, f"has no {name}/ folder (variant {variant!r}); it holds "
                                          f"{', '.join(dits) or 'no DiT folder'}.",
                                          "Pass one of those as variant, or download that DiT into this folder.")
        return name
    if len(dits) == 1:
        return dits[0]
    if dits and need:
        raise CheckpointNotFoundError(root, f"holds several DiTs ({', '.join(dits)}).",
                                      "Choose one: pass its folder name as variant (e.g. variant='acestep-v15-sft').")
    return None


def _choose_lm(folders: Dict[str, Path], lm_variant: Optional[str], root: Path, found: Found) -> Optional[str]:
    lms = sorted(n for n in folders if HF_FOLDERS[n] == LM)
    if lm_variant is not None:
        name = lm_folder_name(lm_variant)
        if name not in folders:
            raise CheckpointNotFoundError(root, f"has no {name}/ folder; it holds {', '.join(lms) or 'no LM folder'}.",
                                          "Pass one of those as lm_variant, or download that LM into this folder.")
        return name
    if not lms:
        return None
    chosen = DEFAULT_LM_FOLDER if DEFAULT_LM_FOLDER in lms else lms[0]
    if len(lms) > 1:
        found.warnings.append(f"several LMs ({', '.join(lms)}): using {chosen} (pass lm_variant to choose)")
    return chosen


def _from_root(root: Path, variant: Optional[str], lm_variant: Optional[str], need_dit: bool) -> Found:
    folders = model_folders(root)
    found = Found("hf-folder", [], root=root,
                  dit_folders=tuple(sorted(n for n in folders if HF_FOLDERS[n] == DIT)),
                  lm_folders=tuple(sorted(n for n in folders if HF_FOLDERS[n] == LM)))
    chosen = [_choose_dit(folders, variant, need_dit, root), _choose_lm(folders, lm_variant, root, found)]
    chosen += [n for n in (TEXT_ENCODER_FOLDER, VAE_FOLDER) if n in folders]
    for name in chosen:
        if name is not None:
            found.sources += _folder_sources(folders[name], name, found)
    return found


def _is_model_folder(folder: Path) -> bool:
    return any((folder / name).is_file() for name in HF_WEIGHT_FILES)


def find_sources(paths, variant: Optional[str] = None, lm_variant: Optional[str] = None,
                 need_dit: bool = True) -> Found:
    """The weights files behind `paths` (one path or several). `variant` / `lm_variant` choose the DiT / LM folder
    of an original layout; `need_dit`: several DiT folders without a `variant` are an error (else none is read)."""
    if isinstance(paths, (str, Path)) or not isinstance(paths, Sequence):
        paths = [paths]
    if not paths:
        raise CheckpointNotFoundError(None, "no path was given.", "Pass a checkpoint file or folder.")
    results = [_find_one(Path(p).expanduser(), variant, lm_variant, need_dit) for p in paths]
    if len(results) == 1:
        return results[0]
    merged = Found("hf-folder" if all(r.layout == "hf-folder" for r in results) else "files", [])
    for r in results:
        merged.sources += r.sources
        merged.config_json.update(r.config_json)
        merged.warnings += r.warnings
        merged.dit_folders += r.dit_folders
        merged.lm_folders += r.lm_folders
        merged.root = merged.root or r.root
    return merged


def _find_one(path: Path, variant: Optional[str], lm_variant: Optional[str], need_dit: bool) -> Found:
    if path.is_file() and path.name.endswith(".index.json"):
        path = path.parent  # a shard index: its folder
    elif path.is_file():
        folder = path.parent.name if path.parent.name in HF_FOLDERS else None
        if folder is None:
            return Found("files", [Source(path)])
        config = _read_config(path.parent)
        return Found("hf-folder", [Source(path, folder, path.parent)],
                     config_json={folder: config} if config is not None else {})
    if not path.exists():
        raise CheckpointNotFoundError(path, "no such file or folder.", "Check the path.")
    if _is_model_folder(path):
        name = path.name if path.name in HF_FOLDERS else None
        found = Found("hf-folder", [])
        found.sources = _folder_sources(path, name, found)
        return found
    root = find_root(path, model_folders)
    if root is not None:
        return _from_root(root, variant, lm_variant, need_dit)
    aio = path / AIO_NAME
    if aio.is_file():
        return Found("files", [Source(aio)])
    candidates = sorted(path.glob("*.safetensors"))
    raise CheckpointNotFoundError(
        path, "found no ACE-Step 1.5 model here" + (f" (it holds {len(candidates)} .safetensors files: pass one)"
                                                     if candidates else "") + ".",
        f"Pass {AIO_NAME} (ComfyUI's all-in-one file), a split file (diffusion_models/, text_encoders/, vae/), or the "
        f"original folder holding {', '.join(sorted(HF_FOLDERS)[:3])}, ... (ACE-Step/Ace-Step1.5).")
