"""Finds and loads ACE-Step v1 weights from the files users really have.

Accepted layouts:
- ComfyUI's all-in-one `ace_step_v1_3.5b.safetensors`: `model.diffusion_model.*` (transformer incl. lyric encoder),
  `vae.dcae.*`, `vae.vocoder.*`, `text_encoders.umt5base.*`, `text_encoders.spiece_model` (tokenizer bytes);
- the original ACE-Step folder (`ace_step_transformer/`, `music_dcae_f8c8/`, `music_vocoder/`, `umt5-base/`, each
  with its safetensors file and config.json; umt5-base also with tokenizer.json), directly or inside a HF cache;
- split files from ComfyUI's folders (diffusion_models, vae, text_encoders), with or without their prefixes.

How a network is loaded: route every key to its network and strip the layout's prefix; infer the config from the
tensor shapes (`XConfig.from_shapes`), so any size of the same architecture loads through the same code; build the
model without allocating its parameters (parameters on `meta`); check the keys strictly (missing tensors, wrong
shapes and unknown keys are errors that name them; known training-only tensors are skipped without being read);
read only the needed tensors, converted one by one to the requested dtype; `load_state_dict(assign=True)`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from .safetensors_file import (
    CONVERT_HINT,
    PICKLE_SUFFIXES,
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    SafetensorsFile,
    UnsafeCheckpointError,
    UnsupportedCheckpointError,
    WrongModelError,
)

__all__ = [
    "AceStepModels", "CheckpointInfo", "COMPONENTS", "load_ace_step", "load_transformer", "load_vae",
    "load_text_encoder", "load_text_tokenizer", "inspect_checkpoint", "infer_configs", "file_layout_shapes",
    "route_key", "describe_foreign", "build_empty",
    "CheckpointError", "CheckpointNotFoundError", "UnsafeCheckpointError", "CorruptCheckpointError",
    "UnsupportedCheckpointError", "CheckpointMismatchError", "WrongModelError",
]

log = logging.getLogger(__name__)

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer")
# The network behind each component (the tokenizer is not a network). The VAE is one module, MusicVAE, whose state
# dict holds the DCAE under `dcae.` and the vocoder under `vocoder.`.
_NETWORK_OF = {"transformer": "transformer", "vae": "vae", "text_encoder": "umt5"}

# Where each network's keys sit in the all-in-one file (our modules' state-dict keys follow the prefix).
ALL_IN_ONE_PREFIX = {"transformer": "model.diffusion_model.", "vae": "vae.", "umt5": "text_encoders.umt5base."}
SPIECE_KEY = "text_encoders.spiece_model"
ALL_IN_ONE_NAME = "ace_step_v1_3.5b.safetensors"

# The original ACE-Step folder layout (HF ACE-Step/ACE-Step-v1-3.5B): part -> folder, file name, and how its bare
# keys map into our networks (network, prefix added; None = UMT5's HF naming, mapped by _route_text).
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
_FOLDER_ROUTE = {"transformer": ("transformer", ""), "dcae": ("vae", "dcae."), "vocoder": ("vae", "vocoder."),
                 "umt5": ("umt5", None)}

_TRANSFORMER_TOP = {
    "transformer_blocks", "lyric_encoder", "lyric_embs", "lyric_proj", "proj_in", "t_block", "timestep_embedder",
    "final_layer", "genre_embedder", "speaker_embedder", "projectors",
}
_VOCODER_TOP = {"backbone", "head", "mel_transform"}
# Keys of a full UMT5 (encoder + decoder) that the encoder-only model does not use.
_T5_DECODER_PREFIXES = ("transformer.decoder.", "transformer.lm_head.")
_TIED_EMBEDDING = "transformer.encoder.embed_tokens.weight"  # HF's tied copy of shared.weight

TINY_DEMO_METADATA_KEY = "ace_step_studio.tiny_demo"


# ---------------------------------------------------------------------------------------------------------------
# The networks, imported lazily.

@dataclass(frozen=True)
class _Network:
    kind: str
    title: str
    config_cls: type
    model_cls: type
    unused_shapes: object  # callable(config) -> {key: shape}


def _network(kind: str) -> _Network:
    if kind == "transformer":
        from ..models.v1 import transformer as m

        return _Network(kind, "diffusion transformer", m.TransformerConfig, m.ACEStepTransformer,
                        m.unused_checkpoint_shapes)
    if kind == "vae":
        from ..models.v1 import music_vae as m

        return _Network(kind, "music VAE (DCAE + vocoder)", m.MusicVAEConfig, m.MusicVAE, m.unused_checkpoint_shapes)
    if kind == "umt5":
        from ..models.v1 import umt5 as m

        return _Network(kind, "UMT5 text encoder", m.UMT5Config, m.UMT5Encoder, m.unused_checkpoint_shapes)
    raise ValueError(kind)


# ---------------------------------------------------------------------------------------------------------------
# Results

@dataclass
class CheckpointInfo:
    """What was found and how it was read."""

    path: str
    layout: str  # "all-in-one", "folder" (original ACE-Step) or "split" (a single-component file)
    files: dict[str, list[str]] = field(default_factory=dict)  # network -> files its weights come from
    components: tuple = ()  # components present in the source
    configs: dict = field(default_factory=dict)  # network ("transformer", "vae", "umt5") -> inferred config
    dtype: object = None  # as asked: a torch.dtype or {component: dtype}
    file_dtypes: dict[str, list[str]] = field(default_factory=dict)  # network -> stored dtypes of what was read
    vocoder_weight_norm: Optional[str] = None  # "weight_norm" (weight_g/_v), "parametrizations" or "fused"
    skipped: dict[str, int] = field(default_factory=dict)  # network -> training-only tensors skipped unread
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors __metadata__ (merged over files)
    config_json: dict[str, dict] = field(default_factory=dict)  # folder layout: each part's config.json
    tokenizer_source: Optional[str] = None
    warnings: list[str] = field(default_factory=list)

    @property
    def is_tiny_demo(self) -> bool:
        """True for checkpoints written by tiny_checkpoint.py (random weights: the audio is noise)."""
        return TINY_DEMO_METADATA_KEY in self.metadata


@dataclass
class AceStepModels:
    """The loaded networks (None where a component was not asked for) and how they were found."""

    transformer: Optional[nn.Module]  # ACEStepTransformer (with its lyric encoder)
    vae: Optional[nn.Module]  # MusicVAE (DCAE + vocoder)
    text_encoder: Optional[nn.Module]  # UMT5Encoder
    tokenizer: object  # UMT5Tokenizer or None
    info: CheckpointInfo


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
        return _route_vae(key[len("vae."):])
    if key.startswith("text_encoders."):
        return _route_text(key[len("text_encoders."):])
    top = key.split(".", 1)[0]
    if top in _TRANSFORMER_TOP:
        return "transformer", key
    if top in ("dcae", "vocoder") or top in _VOCODER_TOP:
        return _route_vae(key)
    if top in ("umt5base", "spiece_model", "transformer", "shared", "logit_scale", "lm_head"):
        return _route_text(key)
    # Bare `encoder.*`/`decoder.*`: the DCAE's halves (original music_dcae folder) or HF UMT5's stacks.
    if key.startswith(("encoder.block.", "encoder.final_layer_norm.", "encoder.embed_tokens.",
                       "decoder.block.", "decoder.final_layer_norm.", "decoder.embed_tokens.")):
        return _route_text(key)
    if top in ("encoder", "decoder"):
        return "vae", "dcae." + key
    return None


def _route_vae(key: str) -> Optional[tuple[str, str]]:
    top = key.split(".", 1)[0]
    if top in ("dcae", "vocoder"):
        return "vae", key
    if top in ("encoder", "decoder"):
        return "vae", "dcae." + key
    if top in _VOCODER_TOP:
        return "vae", "vocoder." + key
    return None


def _route_text(key: str) -> Optional[tuple[str, str]]:
    if key == "spiece_model":
        return "spiece", key
    if key.startswith("umt5base."):
        key = key[len("umt5base."):]
    if key == "logit_scale" or key.startswith("transformer."):
        return "umt5", key
    if key.startswith(("shared.", "encoder.", "decoder.", "lm_head.")):
        return "umt5", "transformer." + key  # HF UMT5EncoderModel naming
    return None


# ---------------------------------------------------------------------------------------------------------------
# Foreign checkpoints: say what the file is instead of listing a thousand unexpected keys.

def describe_foreign(keys: Iterable[str]) -> Optional[str]:
    """A short description if the keys belong to a known non-ACE-Step-v1 model family, else None."""
    joined = "\n".join(keys)
    if any(m in joined for m in ("lora_A.", "lora_B.", "lora_up.", "lora_down.", ".lora.", "lora_unet_",
                                 "lora_te", "hada_w1", "lokr_w1", ".oft_", "lora_magnitude")):
        return ("this looks like a LoRA (low-rank adapter weights), not an ACE-Step v1 base checkpoint: load the "
                "base model first and apply the LoRA with the LoRA node")
    if "conditioner.embedders.1." in joined or ("model.diffusion_model.label_emb." in joined
                                                 and "model.diffusion_model.input_blocks." in joined):
        return "this looks like an SDXL image checkpoint, not ACE-Step v1"
    if "model.diffusion_model.input_blocks." in joined or "cond_stage_model." in joined:
        return "this looks like a Stable Diffusion 1.x/2.x image checkpoint, not ACE-Step v1"
    if "double_blocks." in joined and "single_blocks." in joined:
        return "this looks like a Flux image model, not ACE-Step v1"
    if "joint_blocks." in joined:
        return "this looks like a Stable Diffusion 3 image model, not ACE-Step v1"
    if "first_stage_model." in joined or "encoder.down.0.block." in joined or "decoder.up.0.block." in joined:
        return "this looks like an image VAE, not the ACE-Step music VAE"
    if "text_model.encoder.layers." in joined:
        return "this looks like a CLIP text encoder, not ACE-Step's UMT5"
    if ("block.0.layer.0.SelfAttention.relative_attention_bias.weight" in joined
            and "block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in joined
            and "block.1.layer.0.SelfAttention.q.weight" in joined):
        return ("this looks like a T5 text encoder (one position-bias table shared by all layers), not UMT5, "
                "which has one per layer: ACE-Step v1 needs umt5-base")
    return None


def _foreign_error(path, keys, fallback: str = "") -> WrongModelError:
    keys = list(keys)
    what = describe_foreign(keys)
    if what is None:
        sample = ", ".join(sorted(keys)[:5])
        what = fallback or f"no ACE-Step v1 weights were recognised in it (first keys: {sample or 'none'})"
    return WrongModelError(path, what + ".",
                           f"Use ComfyUI's {ALL_IN_ONE_NAME} or the original ACE-Step-v1-3.5B folder.")


# ---------------------------------------------------------------------------------------------------------------
# Sources: which file and key each tensor of each network comes from

@dataclass
class _Ref:
    source: object  # SafetensorsFile, or anything with .path and .read(key, dtype)
    key: str
    shape: Optional[tuple]


class _Plan:
    """Every network's tensors: network -> {key in our module: where to read it}."""

    def __init__(self):
        self.groups: dict[str, dict[str, _Ref]] = {}
        self.files: dict[str, list[str]] = {}

    def add_source(self, source, shapes: Mapping[str, Optional[Sequence[int]]], part: Optional[str] = None):
        """Routes every key of `source`; `part`: the original folder this file came from (bare keys)."""
        path = getattr(source, "path", "<tensors>")
        if describe_foreign(shapes):  # a LoRA, an image model...: say so rather than list its keys
            raise _foreign_error(path, shapes)
        unknown = []
        for key, shape in shapes.items():
            routed = _route_in_folder(key, part) if part else route_key(key)
            if routed is None:
                unknown.append(key)
                continue
            net, local = routed
            group = self.groups.setdefault(net, {})
            if local in group:
                other = group[local]
                raise CheckpointMismatchError(
                    path, f"tensor {key!r} is stored twice (also as {other.key!r} in {other.source.path}).",
                    "Keep one copy: remove the duplicate file or key.",
                )
            group[local] = _Ref(source, key, tuple(shape) if shape is not None else None)
            files = self.files.setdefault(net, [])
            if str(path) not in files:
                files.append(str(path))
        if unknown:
            if len(unknown) == len(shapes):
                raise _foreign_error(path, shapes)
            raise CheckpointMismatchError(
                path, f"{len(unknown)} tensors belong to no part of ACE-Step v1: {_listing(unknown)}.",
                "Is this an ACE-Step v1 checkpoint? Remove the extra tensors or use the original file.",
            )


def _route_in_folder(key: str, part: str) -> Optional[tuple[str, str]]:
    net, prefix = _FOLDER_ROUTE[part]
    if prefix is None:
        return _route_text(key)
    return net, prefix + key


def _listing(names: Sequence[str], limit: int = 10) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def _file_key(local: str, group: Mapping[str, _Ref]) -> str:
    """How a (missing) module key would be spelled in the file, guessed from a sibling tensor's spelling."""
    top = local.split(".", 1)[0]
    for sib_local, ref in group.items():
        if sib_local.split(".", 1)[0] != top:
            continue
        if ref.key.endswith(sib_local):
            return ref.key[: len(ref.key) - len(sib_local)] + local
        rest = sib_local.split(".", 1)[-1]
        if ref.key.endswith(rest):
            return ref.key[: len(ref.key) - len(rest)] + local.split(".", 1)[-1]
    return local


# ---------------------------------------------------------------------------------------------------------------
# Building without allocating

_build_lock = threading.Lock()


@contextlib.contextmanager
def _parameters_on_meta():
    """Every parameter registered inside is replaced by a `meta` tensor of the same shape and dtype.

    Unlike `with torch.device("meta")`, buffers that constructors compute (window functions, filterbanks) stay
    real CPU tensors, so nothing a module computes for itself is lost; parameters cost nothing until loaded.
    (Patches nn.Module.register_parameter for the duration, under a lock.)
    """
    original = nn.Module.register_parameter

    def register_parameter(module, name, param):
        if param is not None and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    with _build_lock:
        nn.Module.register_parameter = register_parameter
        try:
            yield
        finally:
            nn.Module.register_parameter = original


def build_empty(kind: str, config) -> nn.Module:
    """The network `kind` ("transformer", "vae", "umt5") for `config`, parameters on meta (shapes only)."""
    with _parameters_on_meta():
        return _network(kind).model_cls(config)


def _state_shapes(model: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------------------------
# Vocoder weight norm: three spellings of the same convolution weight (names as vocoder.checkpoint_shapes).

_WN_FORMS = {
    "weight_norm": (".weight_g", ".weight_v"),
    "parametrizations": (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
}


def _fold_weight_norm(group: dict[str, _Ref], path) -> tuple[dict[str, _Ref], dict[str, tuple[_Ref, _Ref]], str]:
    """Renames weight-norm pairs (g, v) to the fused module key `<conv>.weight`, whose shape is v's.

    Returns (group with fused keys, {fused key: (g ref, v ref)}, the form found: "weight_norm",
    "parametrizations" or "fused").
    """
    out, pairs, forms = {}, {}, set()
    pending: dict[str, dict[str, _Ref]] = {}
    for key, ref in group.items():
        for form, suffixes in _WN_FORMS.items():
            hit = next(((part, s) for part, s in zip("gv", suffixes) if key.endswith(s)), None)
            if hit:
                pending.setdefault(key[: -len(hit[1])], {})[hit[0]] = ref
                forms.add(form)
                break
        else:
            out[key] = ref
    for base, parts in pending.items():
        if set(parts) != {"g", "v"}:
            have = next(iter(parts.values())).key
            lacking = "magnitude (g)" if "v" in parts else "direction (v)"
            raise CheckpointMismatchError(path, f"weight-norm tensor {have!r} has no partner: its {lacking} tensor "
                                          "is missing.", "The file is incomplete: download it again.")
        if base + ".weight" in out:
            raise CheckpointMismatchError(path, f"{parts['v'].key!r} is stored both fused and weight-normed.",
                                          "Keep one form.")
        out[base + ".weight"] = parts["v"]
        pairs[base + ".weight"] = (parts["g"], parts["v"])
    if len(forms) > 1:
        raise CheckpointMismatchError(path, "the vocoder mixes two weight-norm spellings (weight_g/weight_v and "
                                      "parametrizations.weight.original0/1).", "Re-save the vocoder in one form.")
    return out, pairs, (forms.pop() if forms else "fused")


def _fuse(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from ..models.v1.vocoder import fuse_weight_norm

    return fuse_weight_norm({"w.weight_g": g, "w.weight_v": v})["w.weight"]


# ---------------------------------------------------------------------------------------------------------------
# Config inference

def _infer_config(kind: str, shapes: Mapping[str, tuple], path, overrides: Optional[dict] = None):
    net = _network(kind)
    try:
        if kind == "transformer" and overrides and overrides.get("num_heads"):
            return net.config_cls.from_shapes(shapes, num_heads=overrides["num_heads"])
        return net.config_cls.from_shapes(shapes)
    except KeyError as e:
        name = e.args[0] if e.args else "?"
        raise CheckpointMismatchError(
            path, f"the {net.title} weights are incomplete: tensor {name!r} (under "
            f"{ALL_IN_ONE_PREFIX[kind]!r} in the all-in-one layout) is missing, so its size cannot be determined.",
            "The file is incomplete or not ACE-Step v1: download it again.",
        ) from None
    except (ValueError, IndexError, TypeError, StopIteration, ZeroDivisionError) as e:
        raise CheckpointMismatchError(
            path, f"the {net.title} tensor shapes do not describe a valid ACE-Step v1 {net.title} ({e}).",
            "The file is damaged or not ACE-Step v1.",
        ) from None


class _ShapesOnly:
    """A source that has shapes but no data (config inference from a key list)."""

    path = "<shapes>"

    def read(self, key, dtype=None):
        raise RuntimeError("shapes only")


def infer_configs(shapes: Mapping[str, Optional[Sequence[int]]]) -> dict:
    """network -> config, inferred from a checkpoint's key -> shape mapping (any accepted layout, nothing read)."""
    plan = _Plan()
    plan.add_source(_ShapesOnly(), shapes)
    configs = {}
    for kind, group in plan.groups.items():
        if kind == "spiece":
            continue
        group, _ = _normalise_group(kind, group, None)
        if kind == "vae":
            group, _, _ = _fold_weight_norm(group, "<shapes>")
        configs[kind] = _infer_config(kind, {k: r.shape for k, r in group.items()}, "<shapes>")
    return configs


def _normalise_group(kind: str, group: dict[str, _Ref], info: Optional[CheckpointInfo]):
    """UMT5 from HF or full T5 files: use `shared.weight` over its tied copy, drop the decoder half."""
    if kind != "umt5":
        return group, 0
    group = dict(group)
    if _TIED_EMBEDDING in group:
        tied = group.pop(_TIED_EMBEDDING)  # never read
        group.setdefault("transformer.shared.weight", tied)
    decoder = [k for k in group if k.startswith(_T5_DECODER_PREFIXES)]
    for k in decoder:
        del group[k]
    if decoder and info is not None:
        info.warnings.append(f"skipped {len(decoder)} UMT5 decoder tensors (ACE-Step uses the encoder only)")
    return group, len(decoder)


# ---------------------------------------------------------------------------------------------------------------
# Loading one network

def _load_network(kind: str, group: dict[str, _Ref], dtype: torch.dtype, device, info: CheckpointInfo,
                  overrides: Optional[dict] = None) -> nn.Module:
    net = _network(kind)
    path = (info.files.get(kind) or [info.path])[0]
    group, skipped = _normalise_group(kind, group, info)
    pairs: dict[str, tuple[_Ref, _Ref]] = {}
    if kind == "vae":
        group, pairs, info.vocoder_weight_norm = _fold_weight_norm(group, path)

    config = _infer_config(kind, {k: r.shape for k, r in group.items()}, path, overrides)
    info.configs[kind] = config
    model = build_empty(kind, config)
    expected = _state_shapes(model)
    unused = set(net.unused_shapes(config))

    missing = [_file_key(k, group) for k in expected if k not in group]
    wrong = [f"{group[k].key} {list(group[k].shape)} (expected {list(s)})"
             for k, s in expected.items() if k in group and group[k].shape != s]
    unexpected = [group[k].key for k in group if k not in expected and k not in unused]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors are missing: {_listing(missing)}")
    if wrong:
        problems.append(f"{len(wrong)} tensors have the wrong shape: {_listing(wrong)}")
    if unexpected:
        hint = describe_foreign(unexpected)
        problems.append(f"{len(unexpected)} tensors are not part of the {net.title}: {_listing(unexpected)}"
                        + (f" ({hint})" if hint else ""))
    if problems:
        cls = WrongModelError if unexpected and describe_foreign(unexpected) else CheckpointMismatchError
        raise cls(
            path, f"these weights do not fit the {net.title} their shapes describe: " + "; ".join(problems) + ".",
            f"The file is incomplete, modified or not ACE-Step v1: use the original {ALL_IN_ONE_NAME} or the "
            "ACE-Step-v1-3.5B folder.",
        )
    info.skipped[kind] = skipped + sum(1 for k in group if k in unused)

    # Read what the model uses, in file order; the training-only tensors are never read.
    state, stored = {}, set()
    for k in sorted(expected, key=lambda k: (str(group[k].source.path), _offset(group[k]))):
        ref = group[k]
        if k in pairs:
            g_ref, v_ref = pairs[k]
            # Fuse in fp32, then round once to the target dtype.
            t = _fuse(g_ref.source.read(g_ref.key, torch.float32), v_ref.source.read(v_ref.key, torch.float32))
            t = t.to(dtype)
            stored.add(_dtype_name(g_ref))
        else:
            t = ref.source.read(ref.key, dtype)
        stored.add(_dtype_name(ref))
        state[k] = t if device is None else t.to(device)
    info.file_dtypes[kind] = sorted(x for x in stored if x)

    model.load_state_dict(state, strict=True, assign=True)
    del state
    if device is not None:
        model.to(device)  # the buffers modules compute for themselves
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(None, f"internal error: the {net.title} still has unloaded tensors: {_listing(left)}.")
    model.eval().requires_grad_(False)
    return model


def _offset(ref: _Ref) -> int:
    entry = getattr(ref.source, "entry", None)
    return entry(ref.key).begin if entry else 0


def _dtype_name(ref: _Ref) -> Optional[str]:
    entry = getattr(ref.source, "entry", None)
    return entry(ref.key).dtype_name if entry else None


# ---------------------------------------------------------------------------------------------------------------
# Finding the files

@dataclass
class _Found:
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


def _find_original_root(path: Path, depth: int = 4) -> Optional[Path]:
    """The folder holding `ace_step_transformer/` etc.: `path` itself or below it (e.g. a HF cache snapshot)."""
    if any((path / name).is_dir() for name in ORIGINAL_FOLDERS.values()):
        return path
    if depth == 0:
        return None
    try:
        children = sorted(c for c in path.iterdir() if c.is_dir() and not c.name.startswith("."))
    except OSError:
        return None
    found = [r for r in (_find_original_root(c, depth - 1) for c in children) if r is not None]
    if not found:
        return None
    # Several snapshots (HF cache): the newest.
    return max(found, key=lambda p: max((p / n).stat().st_mtime for n in ORIGINAL_FOLDERS.values()
                                        if (p / n).exists()))


def _find(path) -> _Found:
    path = Path(path).expanduser()
    if path.is_file():
        return _Found("single", path.parent, {"*": [path]})
    if not path.exists():
        raise CheckpointNotFoundError(path, "no such file or folder.", "Check the path.")
    root = _find_original_root(path)
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
        return _Found("folder", root, files, tok, configs)
    single = path / ALL_IN_ONE_NAME
    candidates = [single] if single.is_file() else sorted(path.glob("*.safetensors"))
    if len(candidates) == 1:
        return _Found("single", path, {"*": candidates})
    raise CheckpointNotFoundError(
        path, "found no ACE-Step v1 checkpoint here" + (f" (it holds {len(candidates)} .safetensors files: pass one)"
                                                         if candidates else "") + ".",
        f"Pass {ALL_IN_ONE_NAME} (ComfyUI's all-in-one file), a split component file, or the ACE-Step-v1-3.5B "
        f"folder holding {', '.join(ORIGINAL_FOLDERS.values())}.",
    )


def _overrides(kind: str, found: _Found) -> Optional[dict]:
    """Heads are not readable from the transformer's shapes: an original config.json that states them wins over
    the head-width rule."""
    if kind != "transformer":
        return None
    heads = found.config_json.get("transformer", {}).get("num_attention_heads")
    return {"num_heads": heads} if isinstance(heads, int) and not isinstance(heads, bool) and heads > 0 else None


def _open_plan(found: _Found, stack: contextlib.ExitStack) -> tuple[_Plan, dict]:
    plan, metadata = _Plan(), {}
    for part, paths in found.files.items():
        for p in paths:
            f = stack.enter_context(SafetensorsFile(p))
            metadata.update(f.metadata)
            plan.add_source(f, f.shapes(), part=None if part == "*" else part)
    return plan, metadata


def _vae_parts(plan: _Plan) -> set:
    return {k.split(".", 1)[0] for k in plan.groups.get("vae", {})}


def _components_present(plan: _Plan, found: _Found) -> tuple:
    present = []
    if "transformer" in plan.groups:
        present.append("transformer")
    if _vae_parts(plan) >= {"dcae", "vocoder"}:
        present.append("vae")
    if "umt5" in plan.groups:
        present.append("text_encoder")
    if "spiece" in plan.groups or found.tokenizer_files:
        present.append("tokenizer")
    return tuple(present)


def _layout_name(found: _Found, present: tuple) -> str:
    if found.layout == "folder":
        return "folder"
    return "all-in-one" if len([c for c in present if c != "tokenizer"]) >= 2 else "split"


def _new_info(path, found: _Found, plan: _Plan, metadata: dict, dtype=None) -> CheckpointInfo:
    present = _components_present(plan, found)
    info = CheckpointInfo(str(path), _layout_name(found, present), files=plan.files, components=present,
                          metadata=metadata, config_json=found.config_json, dtype=dtype)
    for part, cfg in found.config_json.items():
        if "_unreadable" in cfg:
            info.warnings.append(f"{ORIGINAL_FOLDERS[part]}/config.json is unreadable ({cfg['_unreadable']}); "
                                 "the config comes from the tensor shapes anyway")
    return info


# ---------------------------------------------------------------------------------------------------------------
# Public API

def inspect_checkpoint(path) -> CheckpointInfo:
    """What a checkpoint holds (components, layout, configs, metadata), from its headers alone."""
    found = _find(path)
    with contextlib.ExitStack() as stack:
        plan, metadata = _open_plan(found, stack)
        info = _new_info(path, found, plan, metadata)
        for kind, group in plan.groups.items():
            if kind == "spiece":
                continue
            group, _ = _normalise_group(kind, group, None)
            if kind == "vae":
                group, _, info.vocoder_weight_norm = _fold_weight_norm(group, path)
            with contextlib.suppress(CheckpointError):
                info.configs[kind] = _infer_config(kind, {k: r.shape for k, r in group.items()}, path,
                                                   _overrides(kind, found))
    return info


def load_ace_step(path, dtype=torch.bfloat16, components: Iterable[str] = COMPONENTS,
                  device=None) -> AceStepModels:
    """Loads ACE-Step v1 from an all-in-one file, the original folder, or a split component file.

    dtype: floating-point weights are converted to it, tensor by tensor (the tokenizer bytes stay uint8); either
    one dtype or a mapping per component, e.g. {"transformer": torch.bfloat16, "vae": torch.float32} (components
    not in the mapping get bf16).
    components: any of "transformer", "vae", "text_encoder", "tokenizer"; tensors of the others are not read.
    device: where the weights go (default: CPU).
    Raises a CheckpointError subclass whose message names the file, the problem and the fix.
    """
    if isinstance(components, str):
        components = (components,)
    components = tuple(components)
    bad = [c for c in components if c not in COMPONENTS]
    if bad:
        raise ValueError(f"unknown components {bad}; choose from {COMPONENTS}")
    found = _find(path)
    with contextlib.ExitStack() as stack:
        plan, metadata = _open_plan(found, stack)
        dtypes = {c: (dtype.get(c, torch.bfloat16) if isinstance(dtype, Mapping) else dtype) for c in COMPONENTS}
        info = _new_info(path, found, plan, metadata, dtype)
        missing = [c for c in components if c not in info.components]
        if missing:
            raise _missing_components_error(path, plan, missing, info.components)
        nets = {}
        for comp in components:
            if comp in _NETWORK_OF:
                kind = _NETWORK_OF[comp]
                nets[comp] = _load_network(kind, plan.groups[kind], dtypes[comp], device, info,
                                           _overrides(kind, found))
        tokenizer = _load_tokenizer(plan, found, info) if "tokenizer" in components else None
    for warning in info.warnings:
        log.warning("%s: %s", path, warning)
    return AceStepModels(nets.get("transformer"), nets.get("vae"), nets.get("text_encoder"), tokenizer, info)


def _missing_components_error(path, plan: _Plan, missing, present) -> CheckpointError:
    if not plan.groups:
        return _foreign_error(path, [])
    where = {
        "transformer": f"{ALL_IN_ONE_PREFIX['transformer']}* (all-in-one), ace_step_transformer/ (folder) or a "
                       "diffusion_models file",
        "vae": "vae.dcae.* and vae.vocoder.* (all-in-one), music_dcae_f8c8/ and music_vocoder/ (folder) or a vae file",
        "text_encoder": f"{ALL_IN_ONE_PREFIX['umt5']}* (all-in-one), umt5-base/ (folder) or a text_encoders file",
        "tokenizer": f"{SPIECE_KEY} (all-in-one), umt5-base/tokenizer.json (folder) or a text_encoders file with "
                     "spiece_model",
    }
    partial = ""
    if "vae" in missing and _vae_parts(plan):
        have = sorted(_vae_parts(plan))
        partial = f"; the VAE is only partly there ({', '.join(have)} without " \
                  f"{', '.join(p for p in ('dcae', 'vocoder') if p not in have)})"
    return CheckpointNotFoundError(
        path, f"has no {', '.join(missing)} weights (it holds: {', '.join(present) or 'nothing usable'}){partial}.",
        "Expected " + "; ".join(f"{c}: {where[c]}" for c in missing)
        + ". Load that component from its own file, or ask only for the components this one has.",
    )


def _load_tokenizer(plan: _Plan, found: _Found, info: CheckpointInfo):
    from ..text.umt5_tokenizer import UMT5Tokenizer

    spiece = plan.groups.get("spiece", {}).get("spiece_model")
    if spiece is not None:
        data = spiece.source.read(spiece.key)
        if data.dtype == torch.int8:
            data = data.view(torch.uint8)  # bytes all the same
        if data.dtype != torch.uint8 or data.dim() != 1:
            raise CheckpointMismatchError(spiece.source.path, f"tensor {spiece.key!r} should be the SentencePiece "
                                          f"model as 1-D uint8 bytes, not {data.dtype} {list(data.shape)}.",
                                          "Re-save the text encoder with ComfyUI.")
        info.tokenizer_source = f"{spiece.source.path}:{spiece.key}"
        try:
            return UMT5Tokenizer.from_spiece_model(data.numpy().tobytes())
        except Exception as e:  # sentencepiece raises RuntimeError/OSError variants
            raise CorruptCheckpointError(spiece.source.path, f"its SentencePiece model ({spiece.key}) does not "
                                         f"load ({e}).", "Download the file again.") from None
    for p in found.tokenizer_files:
        info.tokenizer_source = str(p)
        return _tokenizer_from_file(p)
    raise CheckpointNotFoundError(found.root, "found no UMT5 tokenizer.", f"Expected {SPIECE_KEY} in the "
                                  "checkpoint or umt5-base/tokenizer.json in the folder.")


def _tokenizer_from_file(p: Path):
    from ..text.umt5_tokenizer import UMT5Tokenizer

    try:
        if p.suffix == ".json":
            return UMT5Tokenizer.from_tokenizer_json(p)
        return UMT5Tokenizer.from_spiece_model(p.read_bytes())
    except Exception as e:
        raise CorruptCheckpointError(p, f"the tokenizer does not load ({e}).", "Download it again.") from None


def load_transformer(path, dtype: torch.dtype = torch.bfloat16, device=None) -> nn.Module:
    """The diffusion transformer (with its lyric encoder) from any file or folder that holds it."""
    return load_ace_step(path, dtype, ("transformer",), device).transformer


def load_vae(path, dtype: torch.dtype = torch.float32, device=None) -> nn.Module:
    """The MusicVAE (DCAE + vocoder) from any file or folder that holds it."""
    return load_ace_step(path, dtype, ("vae",), device).vae


def load_text_encoder(path, dtype: torch.dtype = torch.float32, device=None) -> nn.Module:
    """The UMT5 encoder from any file or folder that holds it."""
    return load_ace_step(path, dtype, ("text_encoder",), device).text_encoder


def load_text_tokenizer(path):
    """The UMT5 tokenizer from a checkpoint's spiece_model, a tokenizer.json, an spiece.model, or the folder."""
    p = Path(path)
    if p.is_file() and p.suffix in (".json", ".model"):
        return _tokenizer_from_file(p)
    return load_ace_step(path, components=("tokenizer",)).tokenizer


# ---------------------------------------------------------------------------------------------------------------
# The file layout our modules correspond to (for the tiny-checkpoint writer and the key-list test)

def file_layout_shapes(configs: Mapping[str, object], layout: str = "all-in-one",
                       vocoder_variant: str = "weight_norm") -> dict[str, dict[str, tuple]]:
    """file -> {key: shape} of a checkpoint for these configs ({"transformer"|"vae"|"umt5": config}): our module
    keys plus the unused (training-only, derived) ones, the vocoder in the given weight-norm form
    ("weight_norm", "parametrizations" or "fused"). Built on meta: free at full size.

    layout "all-in-one": {ALL_IN_ONE_NAME: {prefixed key: shape}} (without spiece_model: its length depends on data).
    layout "folder": {"ace_step_transformer/diffusion_pytorch_model.safetensors": {...}, ...}, HF UMT5 naming.
    """
    from ..models.v1 import music_vae

    per_net: dict[str, dict[str, tuple]] = {}
    for kind, config in configs.items():
        if kind == "vae":
            shapes = dict(music_vae.checkpoint_shapes(config, vocoder_variant))
        else:
            shapes = _state_shapes(build_empty(kind, config))
            shapes.update(_network(kind).unused_shapes(config))
        per_net[kind] = {k: tuple(v) for k, v in shapes.items()}
    if layout == "all-in-one":
        return {ALL_IN_ONE_NAME: {ALL_IN_ONE_PREFIX[kind] + key: s
                                  for kind, shapes in per_net.items() for key, s in shapes.items()}}
    if layout != "folder":
        raise ValueError(f"unknown layout {layout!r}")
    out = {}
    for part, (net, prefix) in _FOLDER_ROUTE.items():
        if net not in per_net:
            continue
        shapes = per_net[net]
        if prefix is None:  # HF UMT5EncoderModel naming: no `transformer.` level, no CLIP-style logit_scale
            shapes = {k[len("transformer."):]: s for k, s in shapes.items() if k.startswith("transformer.")}
        else:
            shapes = {k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}
        out[f"{ORIGINAL_FOLDERS[part]}/{ORIGINAL_FILES[part]}"] = shapes
    return out
