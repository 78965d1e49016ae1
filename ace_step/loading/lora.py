"""LoRA adapters for ACE-Step v1's transformer: read the common spellings and scale them as trained (ComfyUI
applies them as weight patches; `tests/fixtures/lora.py` merges them into a plain module as the tests' reference).

Accepted files (`.safetensors` only, through the safe reader):
- PEFT / diffusers, as ACE-Step's trainer saves them: `transformer_blocks.N.attn.to_q.lora_A.weight` + `lora_B`,
  also with PEFT's `base_model.model.` or diffusers' `transformer.` prefix, or PEFT's adapter name
  (`lora_A.default.weight`);
- ComfyUI / kohya: `diffusion_model.<module>.lora_down.weight` + `lora_up` (also `model.diffusion_model.`), or
  `lora_unet_<module with '_' for '.'>`, with optional per-module `<module>.alpha` tensors.
Targets are named by our transformer's parameter names, e.g. `transformer_blocks.0.attn.to_q.weight`,
`lyric_encoder.encoders.0.self_attn.linear_q.weight`, `speaker_embedder.weight` (the keys of the checkpoint's
`model.diffusion_model.*`).

Scale. delta W = scale · up @ down with scale = alpha / rank, or alpha / √rank for rsLoRA. For each, the first
source that has it wins:
1. the caller's override (`LoraScaling`; the LoRA node's `alpha` and `rank_scaling` inputs);
2. per-module `.alpha` tensors (alpha only);
3. the file's safetensors metadata: a PEFT config as JSON under `lora_adapter_metadata` (what diffusers >= 0.34
   writes) or `adapter_config`, else flat `lora_alpha` / `r` / `use_rslora` entries;
4. a PEFT `adapter_config.json` next to the file: `<file stem>.adapter_config.json`, or `adapter_config.json` when
   the folder holds no other `.safetensors` file (so one config is never applied to several LoRAs);
5. none: alpha = rank, so scale 1, without rsLoRA.

Decision for files that carry no alpha, such as RapMachine (ACE-Step/ACE-Step-v1-chinese-rap-LoRA, trained with
r=256, alpha 32, rsLoRA, i.e. scale 32/√256 = 2): scale 1. That is what ACE-Step's own pipeline applies to them
(diffusers 0.33 loads an alpha-less file with alpha = rank, so the published RapMachine examples were made at
1.0 × lora_weight) and what ComfyUI's core LoRA loader does, so songs match theirs. The training-time scale is one
step away: strength 2, or the override alpha 32 + rsLoRA, or the training config saved next to the file.
"""
from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterable, Mapping, Optional, Union

import torch
from torch import nn

from ..models.v1.transformer import TransformerConfig, unused_checkpoint_shapes
from .errors import CheckpointMismatchError, CorruptCheckpointError, UnsupportedCheckpointError, WrongModelError
from .foreign import describe_foreign
from .safetensors_io import SafetensorsFile
from .state_loading import listing

log = logging.getLogger(__name__)

# RapMachine's target_modules (ACE-Step config/zh_rap_lora_config.json): the lyric encoder's and every block's
# attention projections, and the speaker embedder.
DEFAULT_TARGETS = ("speaker_embedder", "linear_q", "linear_k", "linear_v", "to_q", "to_k", "to_v", "to_out.0")
CONFIG_METADATA_KEYS = ("lora_adapter_metadata", "adapter_config")
ADAPTER_CONFIG_NAME = "adapter_config.json"
KEY_STYLES = ("peft", "peft_prefixed", "comfyui", "kohya")

_DOWN = (".lora_A.weight", ".lora_A.default.weight", ".lora_down.weight")
_UP = (".lora_B.weight", ".lora_B.default.weight", ".lora_up.weight")
_ALPHA = ".alpha"
_PREFIXES = ("base_model.model.", "model.diffusion_model.", "diffusion_model.", "transformer.")
_KOHYA_PREFIX = "lora_unet_"
# Adapter kinds other than plain LoRA, by a key pattern only they use.
_OTHER_ADAPTERS = ((r"dora_scale|lora_magnitude_vector", "DoRA"), (r"hada_w\d", "LoHa"), (r"lokr_w\d", "LoKr"),
                   (r"\.oft_", "OFT"), (r"\.lora_mid\.", "LoCon (Tucker)"), (r"\.diff(_b)?$", "weight-diff"))
# Module names of other model families, as they appear in their LoRA keys (dotted or kohya-underscored).
_OTHER_MODELS = (
    (("down_blocks", "input_blocks", "middle_block", "mid_block"), "a Stable Diffusion / SDXL image model"),
    (("double_blocks", "single_blocks", "single_transformer_blocks"), "a Flux image model"),
    (("joint_blocks", "context_embedder"), "a Stable Diffusion 3 image model"),
    (("lora_te", "text_model", "text_encoder"), "a text encoder (CLIP / T5)"),
)
_FOR_ACE = "Use a LoRA trained for ACE-Step v1 3.5B (its keys name transformer_blocks.N.attn.to_q and the like)."
# Module names only one ACE-Step generation has, as they appear in adapter keys (dotted or underscored).
V1_MARKERS = re.compile(r"transformer_blocks|lyric_encoder[._]encoders|speaker_embedder|genre_embedder")
V15_MARKERS = re.compile(r"(?:^base_model\.model\.|^lycoris_|decoder[._])layers[._]\d+[._](?:self_attn|cross_attn|mlp)"
                         r"|condition_embedder|time_embed_r")


@dataclass(frozen=True)
class LoraScaling:
    """The caller's override of the file's scaling; None keeps what the file says."""

    alpha: Optional[float] = None
    rslora: Optional[bool] = None


@dataclass(frozen=True)
class LoraWeight:
    """One target weight's low-rank pair: delta = scale · up @ down (flattened past dim 1, shaped like the weight)."""

    down: torch.Tensor  # [rank, in, *kernel]
    up: torch.Tensor  # [out, rank, 1, ...]
    scale: float
    comfy_kind: ClassVar[str] = "lora"  # the ComfyUI weight adapter this pair becomes (`comfy_weights`)

    @property
    def rank(self) -> int:
        return self.down.shape[0]

    def product(self, shape, device=None) -> torch.Tensor:
        """up @ down in float32, without the scale, shaped `shape`."""
        up = self.up.to(device=device, dtype=torch.float32).flatten(1)
        down = self.down.to(device=device, dtype=torch.float32).flatten(1)
        return torch.mm(up, down).reshape(shape)

    def comfy_weights(self) -> tuple:
        """The weights tuple of ComfyUI's `LoRAAdapter` (comfy/weight_adapter/lora.py, 0.3.75): (up, down, alpha,
        mid, dora_scale, reshape). ComfyUI scales by alpha / down.shape[0], so alpha = scale · rank gives this
        weight's scale, rsLoRA included."""
        return (self.up, self.down, self.scale * self.rank, None, None, None)


@dataclass
class Lora:
    weights: dict[str, LoraWeight]  # our transformer's parameter name -> its low-rank pair
    scaling: str  # where the scale came from, in words
    ignored: tuple[str, ...] = ()  # modules on layers ACE-Step v1 never runs (their LoRA could change nothing)


@dataclass
class LoraFile:
    """A LoRA file as read, before it is matched to a model."""

    path: Optional[str]
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    adapter_config: Optional[dict] = None  # a PEFT adapter_config.json found next to the file
    adapter_config_path: Optional[str] = None


@dataclass(frozen=True)
class _Config:
    """Scale information from metadata or adapter_config.json."""

    source: str
    r: Optional[int] = None
    alpha: Optional[float] = None
    rslora: Optional[bool] = None
    rank_pattern: tuple = ()  # ((regex, rank), ...) in the file's order: PEFT uses the first match
    alpha_pattern: tuple = ()


ModelLike = Union[nn.Module, Mapping[str, Union[torch.Tensor, tuple]]]  # a module, its state dict or its shapes


def _shapes(model: ModelLike) -> dict[str, tuple]:
    items = model.state_dict().items() if isinstance(model, nn.Module) else model.items()
    return {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in items}


# ---------------------------------------------------------------------------------------------------------------
# Reading

def read_lora_file(path) -> LoraFile:
    """Reads every tensor of a LoRA `.safetensors` file (validated header first), its metadata, and a PEFT
    adapter_config.json beside it when there is one (see the module docstring for which)."""
    path = Path(path)
    with SafetensorsFile(path) as f:
        tensors = f.read_many(f.keys())
        metadata = dict(f.metadata)
    config_path = _adapter_config_path(path)
    config = None
    if config_path is not None:
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise CorruptCheckpointError(config_path, f"is not a readable JSON file ({e}).",
                                         "Fix or remove it; it is read as the LoRA's PEFT adapter config.") from None
        if not isinstance(config, dict):
            raise CorruptCheckpointError(config_path, "is not a JSON object.", "Fix or remove it.")
    return LoraFile(str(path), tensors, metadata, config, str(config_path) if config_path else None)


def _adapter_config_path(path: Path) -> Optional[Path]:
    own = path.with_name(path.stem + "." + ADAPTER_CONFIG_NAME)
    if own.is_file():
        return own
    shared = path.with_name(ADAPTER_CONFIG_NAME)
    if not shared.is_file():
        return None
    others = [p for p in path.parent.glob("*.safetensors") if p.name != path.name]
    if others:
        log.warning("%s ignored for %s: the folder holds other LoRAs too (%s); name it %s to apply it to this one.",
                    shared, path.name, others[0].name, own.name)
        return None
    return shared


def load_lora(path, model: ModelLike, scaling: LoraScaling = LoraScaling()) -> Lora:
    """Reads a LoRA file and matches it to `model` (our transformer, its state dict or {parameter name: shape})."""
    return parse_lora(read_lora_file(path), model, scaling)


# ---------------------------------------------------------------------------------------------------------------
# Matching to the model

def _role(key: str) -> tuple[Optional[str], str]:
    """("down" | "up" | "alpha" | None, the module as spelled in the file)."""
    for role, suffixes in (("down", _DOWN), ("up", _UP), ("alpha", (_ALPHA,))):
        for suffix in suffixes:
            if key.endswith(suffix):
                return role, key[: -len(suffix)]
    return None, key


def _other_model(spellings: Iterable[str]) -> Optional[str]:
    for spelling in spellings:
        for markers, family in _OTHER_MODELS:
            if any(m in spelling for m in markers):
                return family
    return None


def _module_name(spelling: str, modules: set[str], kohya: Mapping[str, str]) -> Optional[str]:
    if spelling.startswith(_KOHYA_PREFIX):
        return kohya.get(spelling[len(_KOHYA_PREFIX):])
    for prefix in _PREFIXES:
        if spelling.startswith(prefix):
            spelling = spelling[len(prefix):]
            break
    return spelling if spelling in modules else None


def parse_lora(file: LoraFile, model: ModelLike, scaling: LoraScaling = LoraScaling()) -> Lora:
    """Matches a read LoRA to `model`'s parameters and resolves each target's scale.

    Raises (all CheckpointError, with the keys at fault and the fix): UnsupportedCheckpointError for other adapter
    kinds (DoRA, LoHa, LoKr...); WrongModelError for a file that is no LoRA or a LoRA of another model;
    CheckpointMismatchError for target modules the model lacks, a missing lora_A/lora_B partner, rank mismatches
    (between the pair, or with the config's r) and shapes that do not fit the target weight.
    """
    path, tensors = file.path, file.tensors
    shapes = _shapes(model)
    v15 = [k for k in tensors if V15_MARKERS.search(k)]
    if v15:
        raise WrongModelError(path, f"this adapter is for ACE-Step 1.5 (keys such as {listing(v15, 2)}), not "
                                    "ACE-Step v1.",
                              "Apply it to an ACE-Step 1.5 model with the ACE-Step 1.5 LoRA node.")
    for pattern, kind in _OTHER_ADAPTERS:
        found = [k for k in tensors if re.search(pattern, k)]
        if found:
            raise UnsupportedCheckpointError(
                path, f"this is a {kind} adapter ({listing(found, 3)}); only plain LoRA is supported here.",
                "ComfyUI's core 'Load LoRA' node applies other adapter kinds to this MODEL too.")

    groups: dict[str, dict[str, str]] = {}
    strays = []
    for key in tensors:
        role, spelling = _role(key)
        if role is None:
            strays.append(key)
        else:
            groups.setdefault(spelling, {})[role] = key
    if not any("down" in g or "up" in g for g in groups.values()):
        what = describe_foreign(tensors)
        what = what if what and "LoRA" not in what else "it holds no LoRA tensors (lora_A/lora_B or lora_down/lora_up)"
        raise WrongModelError(path, f"is not a LoRA: {what} (first keys: {listing(list(tensors), 3)}).",
                              "Put LoRAs in models/loras/ and checkpoints in models/checkpoints/.")

    modules = {k[: -len(".weight")] for k in shapes if k.endswith(".weight") and len(shapes[k]) >= 2}
    kohya: dict[str, Optional[str]] = {}
    for m in modules:  # an underscored spelling two modules share would be ambiguous: map it to neither
        u = m.replace(".", "_")
        kohya[u] = None if u in kohya else m
    dead = {k[: -len(".weight")] for k in unused_checkpoint_shapes(TransformerConfig.from_shapes(shapes))}
    dead_k = {m.replace(".", "_"): m for m in dead}

    named: dict[str, dict[str, str]] = {}
    ignored, unknown = [], []
    for spelling, group in groups.items():
        name = _module_name(spelling, modules, kohya)
        if name is None:
            lost = _module_name(spelling, dead, dead_k)
            (ignored if lost else unknown).append(lost or spelling)
            continue
        if name in named:
            raise CheckpointMismatchError(path, f"module {name!r} appears twice ({listing(group.values())} and "
                                                f"{listing(named[name].values())}).", "Keep one spelling of it.")
        named[name] = group
    family = _other_model(unknown)
    if family:
        raise WrongModelError(path, f"this LoRA is for {family}, not ACE-Step v1 (modules such as "
                                    f"{listing(unknown, 3)}).", _FOR_ACE)
    if unknown and not named:
        raise WrongModelError(path, f"none of this LoRA's {len(unknown)} target modules is a layer of ACE-Step v1's "
                                    f"transformer (e.g. {listing(unknown, 3)}): it is for another model.", _FOR_ACE)
    if unknown:
        raise CheckpointMismatchError(
            path, f"{len(unknown)} target modules are not layers of ACE-Step v1's transformer: {listing(unknown)}.",
            "The LoRA was made for another model or a changed architecture; use one made for ACE-Step v1 3.5B.")
    if strays:
        raise CheckpointMismatchError(path, f"tensors that belong to no LoRA pair: {listing(strays)}.",
                                      "Remove them, or use the file as its trainer saved it.")
    if ignored:
        log.info("%s: %d LoRA modules sit on layers ACE-Step v1 never runs and are skipped: %s",
                 path, len(ignored), listing(ignored, 3))

    weights, sources = lora_pair_weights(file, named, shapes, scaling, "ACE-Step v1 3.5B")
    return Lora(weights, describe_scales(weights, sources), tuple(sorted(ignored)))


def lora_pair_weights(file: LoraFile, named: Mapping[str, Mapping[str, str]], shapes: Mapping[str, tuple],
                      scaling: LoraScaling, model_name: str) -> tuple[dict[str, LoraWeight], set[str]]:
    """{parameter name: LoraWeight} of the low-rank pairs `named` ({module: {"down"|"up"|"alpha": key}}), each scaled
    by the first source that has its alpha and rank scaling (module docstring), and the sources in words."""
    config = _config(file, scaling)
    weights, sources = {}, set()
    for name, group in sorted(named.items()):
        down, up = _pair(file.path, name, group, file.tensors, shapes[name + ".weight"], model_name)
        expected = _pattern(config.rank_pattern, name, config.r) if config else None
        if expected is not None and expected != down.shape[0]:
            raise CheckpointMismatchError(
                file.path, f"{config.source} says rank {expected} for {name!r}, but its tensors have rank "
                           f"{down.shape[0]} ({group['down']}).",
                "That config belongs to another LoRA: remove it, or override alpha and rank scaling.")
        alpha, source = _alpha(name, group, file.tensors, config, scaling, down.shape[0])
        rslora = scaling.rslora if scaling.rslora is not None else bool(config and config.rslora)
        scale = alpha / (math.sqrt(down.shape[0]) if rslora else down.shape[0])
        weights[name + ".weight"] = LoraWeight(down, up, scale)
        sources.add(f"{source}; {'alpha/√rank (rsLoRA)' if rslora else 'alpha/rank'}")
    return weights, sources


def describe_scales(weights: Mapping[str, object], sources: Iterable[str]) -> str:
    scales = sorted({w.scale for w in weights.values()})
    shown = ", ".join(f"{s:g}" for s in scales[:3]) + (", ..." if len(scales) > 3 else "")
    return f"scale {shown} ({' | '.join(sorted(sources))})"


def _pair(path, name: str, group: Mapping[str, str], tensors, weight_shape: tuple,
          model_name: str) -> tuple[torch.Tensor, ...]:
    if "down" not in group or "up" not in group:
        have, lack = ("down", "up") if "down" in group else ("up", "down")
        raise CheckpointMismatchError(path, f"module {name!r} has a LoRA {have} tensor ({group.get(have)}) but no "
                                            f"{lack} tensor.", "The file is incomplete: export the LoRA again.")
    down, up = tensors[group["down"]], tensors[group["up"]]
    if down.ndim < 2 or up.ndim < 2 or up.shape[1] != down.shape[0]:
        raise CheckpointMismatchError(
            path, f"rank mismatch in {name!r}: {group['down']} is {list(down.shape)} and {group['up']} is "
                  f"{list(up.shape)}; down must be [rank, in, ...] and up [out, rank, ...] with one rank.",
            "The file is damaged or mislabelled: export the LoRA again.")
    fits = (up.shape[0] == weight_shape[0] and all(d == 1 for d in up.shape[2:])
            and down[0].numel() == math.prod(weight_shape[1:]))
    if not fits:
        raise CheckpointMismatchError(
            path, f"{name!r} is {list(weight_shape)} in this model, but the LoRA's up @ down gives "
                  f"{[up.shape[0], down[0].numel()]} ({group['up']} {list(up.shape)}, {group['down']} "
                  f"{list(down.shape)}).",
            f"The LoRA was made for a model of another size: use one made for this checkpoint ({model_name}).")
    return down, up


def _pattern(patterns: tuple, name: str, default):
    """PEFT's rank_pattern / alpha_pattern: the first key that matches the end of the module name."""
    for key, value in patterns:
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def _alpha(name, group, tensors, config: Optional[_Config], scaling: LoraScaling, rank: int) -> tuple[float, str]:
    if scaling.alpha is not None:
        return float(scaling.alpha), "alpha from the override"
    if "alpha" in group:
        return float(tensors[group["alpha"]].float().item()), "alpha from .alpha tensors"
    if config is not None:
        alpha = _pattern(config.alpha_pattern, name, config.alpha)
        if alpha is not None:
            return float(alpha), f"alpha from {config.source}"
    return float(rank), "no alpha stored, so alpha = rank"


def _config(file: LoraFile, scaling: LoraScaling) -> Optional[_Config]:
    """The first scale information found: metadata PEFT JSON, flat metadata entries, adapter_config.json."""
    if scaling.alpha is not None and scaling.rslora is not None:
        return None  # fully overridden: nothing of the file's config is used
    meta = file.metadata
    for key in CONFIG_METADATA_KEYS:
        if key in meta:
            try:
                data = json.loads(meta[key])
            except ValueError as e:
                raise CorruptCheckpointError(file.path, f"metadata {key!r} is not valid JSON ({e}).",
                                             "Re-save the LoRA, or override alpha and rank scaling.") from None
            if not isinstance(data, dict):
                raise CorruptCheckpointError(file.path, f"metadata {key!r} is not a JSON object.",
                                             "Re-save the LoRA, or override alpha and rank scaling.")
            return _config_from(data, f"metadata {key}", file.path)
    flat = {k: meta[k] for k in ("r", "lora_alpha", "use_rslora") if k in meta}
    if flat:
        return _config_from(flat, "metadata", file.path)
    if file.adapter_config is not None:
        return _config_from(file.adapter_config, Path(file.adapter_config_path).name, file.adapter_config_path)
    return None


def _config_from(data: Mapping, source: str, where) -> _Config:
    # diffusers' pipeline-level save prefixes every field with the component: transformer.r, transformer.lora_alpha
    data = {k.removeprefix("transformer."): v for k, v in data.items()}

    def number(value, field, kind):
        try:
            out = kind(value)
        except (TypeError, ValueError):
            out = None
        if out is None or not math.isfinite(out) or out <= 0:
            raise CorruptCheckpointError(where, f"{source}: {field} = {value!r} is not a positive number.",
                                         "Fix it, or override alpha and rank scaling in the LoRA node.")
        return out

    def patterns(field, kind):
        value = data.get(field) or {}
        if not isinstance(value, dict):
            raise CorruptCheckpointError(where, f"{source}: {field} is not a JSON object.", "Fix or remove it.")
        return tuple((k, number(v, f"{field}[{k!r}]", kind)) for k, v in value.items())

    rslora = data.get("use_rslora")
    if rslora is not None and not isinstance(rslora, bool):
        text = str(rslora).strip().lower()
        if text not in ("true", "false", "1", "0"):
            raise CorruptCheckpointError(where, f"{source}: use_rslora = {rslora!r} is not true or false.",
                                         "Fix it, or set rank scaling in the LoRA node.")
        rslora = text in ("true", "1")
    return _Config(source,
                   None if data.get("r") is None else number(data["r"], "r", int),
                   None if data.get("lora_alpha") is None else number(data["lora_alpha"], "lora_alpha", float),
                   rslora, patterns("rank_pattern", int), patterns("alpha_pattern", float))
