"""Finds and loads ACE-Step v1 weights from the files users really have (layouts: `v1_layout`).

How a network is loaded: route every key to its network and strip the layout's prefix; infer the config from the
tensor shapes (`XConfig.from_shapes`), so any size of the same architecture loads through the same code; build the
model on `meta`; check the keys strictly and read only the needed tensors, converted one by one to the requested
dtype (`state_loading.load_group`). The networks are built with the `operations` and `attention` given (plain torch
by default; ComfyUI's when the bridge loads them).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from ..models.operations import ManualCastOps, sdpa_attention
from .errors import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    WrongModelError,
)
from .foreign import V1, describe_foreign, wrong_family_error
from .safetensors_io import SafetensorsFile
from .state_loading import TensorRef, build_on_meta, fold_weight_norm, listing, load_group
from .v1_layout import (
    ALL_IN_ONE_NAME,
    ALL_IN_ONE_PREFIX,
    ORIGINAL_FOLDERS,
    SPIECE_KEY,
    T5_DECODER_PREFIXES,
    TIED_EMBEDDING,
    FoundFiles,
    find_files,
    route_in_folder,
    route_key,
)

log = logging.getLogger(__name__)

COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer")
# The network behind each component (the tokenizer is not a network). The VAE is one module, MusicVAE, whose state
# dict holds the DCAE under `dcae.` and the vocoder under `vocoder.`.
_NETWORK_OF = {"transformer": "transformer", "vae": "vae", "text_encoder": "umt5"}

TINY_DEMO_METADATA_KEY = "ace_step_studio.tiny_demo"
_FIX = (f"The file is incomplete, modified or not ACE-Step v1: use the original {ALL_IN_ONE_NAME} or the "
        "ACE-Step-v1-3.5B folder.")


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
# Foreign checkpoints

def _foreign_error(path, keys, fallback: str = "") -> WrongModelError:
    keys = list(keys)
    what = describe_foreign(keys)
    if what is None:
        sample = ", ".join(sorted(keys)[:5])
        what = fallback or f"no ACE-Step v1 weights were recognised in it (first keys: {sample or 'none'})"
    return WrongModelError(path, what + ".",
                           f"Use ComfyUI's {ALL_IN_ONE_NAME} or the original ACE-Step-v1-3.5B folder.")


# ---------------------------------------------------------------------------------------------------------------
# Tensors of each network

class _Plan:
    """Every network's tensors: network -> {key in our module: where to read it}."""

    def __init__(self):
        self.groups: dict[str, dict[str, TensorRef]] = {}
        self.files: dict[str, list[str]] = {}

    def add_source(self, source, shapes: Mapping[str, Optional[Sequence[int]]], part: Optional[str] = None):
        """Routes every key of `source`; `part`: the original folder this file came from (bare keys)."""
        path = getattr(source, "path", "<tensors>")
        wrong = wrong_family_error(path, shapes, V1)  # ACE-Step 1.5, a LoRA, an image model...: say so
        if wrong is not None:
            raise wrong
        unknown = []
        for key, shape in shapes.items():
            routed = route_in_folder(key, part) if part else route_key(key)
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
            group[local] = TensorRef(source, key, tuple(shape) if shape is not None else None)
            files = self.files.setdefault(net, [])
            if str(path) not in files:
                files.append(str(path))
        if unknown:
            if len(unknown) == len(shapes):
                raise _foreign_error(path, shapes)
            raise CheckpointMismatchError(
                path, f"{len(unknown)} tensors belong to no part of ACE-Step v1: {listing(unknown)}.",
                "Is this an ACE-Step v1 checkpoint? Remove the extra tensors or use the original file.",
            )


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
            group, _, _ = fold_weight_norm(group, "<shapes>")
        configs[kind] = _infer_config(kind, {k: r.shape for k, r in group.items()}, "<shapes>")
    return configs


def _normalise_group(kind: str, group: dict[str, TensorRef], info: Optional[CheckpointInfo]):
    """UMT5 from HF or full T5 files: use `shared.weight` over its tied copy, drop the decoder half."""
    if kind != "umt5":
        return group, 0
    group = dict(group)
    if TIED_EMBEDDING in group:
        tied = group.pop(TIED_EMBEDDING)  # never read
        group.setdefault("transformer.shared.weight", tied)
    decoder = [k for k in group if k.startswith(T5_DECODER_PREFIXES)]
    for k in decoder:
        del group[k]
    if decoder and info is not None:
        info.warnings.append(f"skipped {len(decoder)} UMT5 decoder tensors (ACE-Step uses the encoder only)")
    return group, len(decoder)


# ---------------------------------------------------------------------------------------------------------------
# Loading one network

def _load_network(kind: str, group: dict[str, TensorRef], dtype: torch.dtype, device, info: CheckpointInfo,
                  overrides: Optional[dict], operations, attention, model_cls=None) -> nn.Module:
    net = _network(kind)
    path = (info.files.get(kind) or [info.path])[0]
    group, skipped = _normalise_group(kind, group, info)
    pairs: dict[str, tuple[TensorRef, TensorRef]] = {}
    if kind == "vae":
        group, pairs, info.vocoder_weight_norm = fold_weight_norm(group, path)
    config = _infer_config(kind, {k: r.shape for k, r in group.items()}, path, overrides)
    info.configs[kind] = config
    kwargs = {"operations": operations} if kind == "vae" else {"operations": operations, "attention": attention}
    model = build_on_meta(model_cls or net.model_cls, config, **kwargs)
    unread, info.file_dtypes[kind] = load_group(
        model, group, title=net.title, path=path, fix=_FIX, unused=net.unused_shapes(config), pairs=pairs,
        dtype=dtype, device=device, describe=describe_foreign)
    info.skipped[kind] = skipped + unread
    return model


# ---------------------------------------------------------------------------------------------------------------
# Finding the files

def _overrides(kind: str, found: FoundFiles) -> Optional[dict]:
    """Heads are not readable from the transformer's shapes: an original config.json that states them wins over
    the head-width rule."""
    if kind != "transformer":
        return None
    heads = found.config_json.get("transformer", {}).get("num_attention_heads")
    return {"num_heads": heads} if isinstance(heads, int) and not isinstance(heads, bool) and heads > 0 else None


def _open_plan(found: FoundFiles, stack: contextlib.ExitStack) -> tuple[_Plan, dict]:
    plan, metadata = _Plan(), {}
    for part, paths in found.files.items():
        for p in paths:
            f = stack.enter_context(SafetensorsFile(p))
            metadata.update(f.metadata)
            plan.add_source(f, f.shapes(), part=None if part == "*" else part)
    return plan, metadata


def _vae_parts(plan: _Plan) -> set:
    return {k.split(".", 1)[0] for k in plan.groups.get("vae", {})}


def _components_present(plan: _Plan, found: FoundFiles) -> tuple:
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


def _layout_name(found: FoundFiles, present: tuple) -> str:
    if found.layout == "folder":
        return "folder"
    return "all-in-one" if len([c for c in present if c != "tokenizer"]) >= 2 else "split"


def _new_info(path, found: FoundFiles, plan: _Plan, metadata: dict, dtype=None) -> CheckpointInfo:
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
    found = find_files(path)
    with contextlib.ExitStack() as stack:
        plan, metadata = _open_plan(found, stack)
        info = _new_info(path, found, plan, metadata)
        for kind, group in plan.groups.items():
            if kind == "spiece":
                continue
            group, _ = _normalise_group(kind, group, None)
            if kind == "vae":
                group, _, info.vocoder_weight_norm = fold_weight_norm(group, path)
            with contextlib.suppress(CheckpointError):
                info.configs[kind] = _infer_config(kind, {k: r.shape for k, r in group.items()}, path,
                                                   _overrides(kind, found))
    return info


def load_ace_step(path, dtype=torch.bfloat16, components: Iterable[str] = COMPONENTS, device=None,
                  operations=ManualCastOps, attention=sdpa_attention, transformer_cls=None) -> AceStepModels:
    """Loads ACE-Step v1 from an all-in-one file, the original folder, or a split component file.

    dtype: floating-point weights are converted to it, tensor by tensor (the tokenizer bytes stay uint8); either
    one dtype or a mapping per component, e.g. {"transformer": torch.bfloat16, "vae": torch.float32} (components
    not in the mapping get bf16).
    components: any of "transformer", "vae", "text_encoder", "tokenizer"; tensors of the others are not read.
    device: where the weights go (default: CPU).
    operations: the layer namespace every network is built with, or a mapping per component (see
    `models.operations`; the default computes in the activations' dtype whatever the weights' dtype, so the UMT5
    runs in fp32 over bf16 weights as ComfyUI runs it); attention: the softmax attention function, or a mapping per
    component; transformer_cls: a subclass of `ACEStepTransformer` to build instead (the ComfyUI bridge's).
    Raises a CheckpointError subclass whose message names the file, the problem and the fix.
    """
    if isinstance(components, str):
        components = (components,)
    components = tuple(components)
    bad = [c for c in components if c not in COMPONENTS]
    if bad:
        raise ValueError(f"unknown components {bad}; choose from {COMPONENTS}")
    found = find_files(path)
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
                ops = operations.get(comp, ManualCastOps) if isinstance(operations, Mapping) else operations
                attn = attention.get(comp, sdpa_attention) if isinstance(attention, Mapping) else attention
                nets[comp] = _load_network(kind, plan.groups[kind], dtypes[comp], device, info,
                                           _overrides(kind, found), ops, attn,
                                           transformer_cls if kind == "transformer" else None)
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


def _load_tokenizer(plan: _Plan, found: FoundFiles, info: CheckpointInfo):
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


