"""LoRA and LoKr adapters for ACE-Step 1.5's DiT, as ACE-Step's trainer saves them, matched to `AceStep15`'s
parameter names (`decoder.layers.0.self_attn.q_proj.weight`, ...). The result is per-parameter factors: the bridge
turns each into a ComfyUI weight patch (`comfy_kind`, `comfy_weights()`: the tuples of ComfyUI's `LoRAAdapter` and
`LoKrAdapter`), so several adapters stack and any strength (also above 1) applies.

What the original trains (ace-step/ACE-Step-1.5):
- LoRA (`acestep/training/lora_utils.py` @ f30aee4c): PEFT `get_peft_model` on `model.decoder` with r = 8,
  lora_alpha = 16, target_modules q_proj, k_proj, v_proj, o_proj (self- and cross-attention of every DiT layer);
  `save_pretrained` writes `adapter_model.safetensors` with keys
  `base_model.model.layers.N.self_attn.q_proj.lora_A.weight` / `lora_B` and `adapter_config.json` (r, lora_alpha,
  use_rslora) beside it; inference (`acestep/handler.py` @ f30aee4c) loads it with PEFT: delta W =
  scale · (lora_alpha / r) · B @ A (rsLoRA: lora_alpha / √r), scale the UI's 0..1 LoRA scale.
- LoKr (PR #471 "support lokr", `acestep/training/lokr_utils.py` as in riversedge/ACE-Step-1.5 @ 88691a0f): LyCORIS
  `create_lycoris(model.decoder, ..., algo="lokr")` with linear_dim 64, linear_alpha 128, factor -1,
  decompose_both / use_tucker / full_matrix options; `save_weights` writes `lokr_weights.safetensors` (metadata
  algo "lokr", format "lycoris") with keys `lycoris_<decoder module, '.' -> '_'>.lokr_w1`, `.lokr_w2` or
  `.lokr_w2_a` / `.lokr_w2_b` (also `.lokr_w1_a` / `.lokr_w1_b`) and `.alpha`. LyCORIS (lycoris-lora 4.1.3,
  `lycoris/modules/lokr.py`): delta W = multiplier · (alpha / dim) · kron(w1, w2) with w1 = w1_a @ w1_b and
  w2 = w2_a @ w2_b when factored, dim their rank; with neither side factored the scale is 1 whatever alpha; a module
  built with rs_lora saves alpha · √dim, so saved alpha / dim is its scale too. The trainer's target names do not
  match in LyCORIS 4.x, which then wraps every Linear and Conv1d of the decoder (mlp, time_embed*,
  condition_embedder, proj_in.1 too): any decoder module is accepted here.
ComfyUI maps the same spellings for its ACE-Step 1.5 model (`comfy/lora.py` `model_lora_keys_unet`:
`base_model.model.<decoder module>` and `lycoris_<decoder module>`), plus its own `diffusion_model.<parameter>`.

Accepted spellings, all matched against the model's own module names (so any size loads): PEFT on the decoder
(`base_model.model.layers...`, also `lora_A.default.weight`) or on the whole model (`base_model.model.decoder...`);
LyCORIS (`lycoris_layers_0_self_attn_q_proj`); ComfyUI (`diffusion_model.decoder...`, `model.diffusion_model.`),
bare names (`decoder.layers...`) and kohya (`lora_unet_decoder_layers_0_self_attn_q_proj`).

LoRA scale: the rules of `ace_step.loading.lora` (override, `.alpha` tensors, metadata, adapter_config.json beside
the file, else alpha = rank). LoKr scale: override alpha (over the rank, or its square root with rsLoRA), else the
`.alpha` tensor; none stored, or no factored side: 1.

Refused with the reason and the fix: ACE-Step v1 LoRAs (and, in `lora.parse_lora`, 1.5 adapters given to v1), DoRA
(PEFT `lora_magnitude_vector` or LyCORIS `dora_scale`: a weight renormalization, not a delta), LoHa, Tucker LoKr
(`lokr_t2`), OFT, LoCon mid weights and full weight diffs.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar, Mapping, Optional, Union

import torch

from .errors import CheckpointMismatchError, UnsupportedCheckpointError, WrongModelError
from .lora import (V1_MARKERS, LoraFile, LoraScaling, LoraWeight, ModelLike, _other_model, _shapes, describe_scales,
                   lora_pair_weights, read_lora_file)
from .state_loading import listing

MODEL_NAME = "ACE-Step 1.5"
_FIX_MODEL = "Use an adapter trained for this ACE-Step 1.5 model (ACE-Step's LoRA or LoKr trainer)."
# Suffix -> role, longest first where one ends another.
_ROLES = ((".lora_A.default.weight", "down"), (".lora_B.default.weight", "up"), (".lora_A.weight", "down"),
          (".lora_B.weight", "up"), (".lora_down.weight", "down"), (".lora_up.weight", "up"),
          (".lokr_w1_a", "w1_a"), (".lokr_w1_b", "w1_b"), (".lokr_w2_a", "w2_a"), (".lokr_w2_b", "w2_b"),
          (".lokr_w1", "w1"), (".lokr_w2", "w2"), (".alpha", "alpha"))
_LORA_ROLES, _LOKR_ROLES = {"down", "up"}, {"w1", "w1_a", "w1_b", "w2", "w2_a", "w2_b"}
_REFUSED = ((r"dora_scale|lora_magnitude_vector", "DoRA"), (r"hada_w\d|hada_t\d", "LoHa"),
            (r"lokr_t\d", "Tucker LoKr (use_tucker)"), (r"\.oft_|oft_blocks", "OFT"),
            (r"\.lora_mid\.", "LoCon (Tucker)"), (r"\.diff(_b)?$", "weight-diff"))


@dataclass(frozen=True)
class LokrWeight:
    """One target weight's Kronecker factors: delta = scale · kron(w1, w2), w1 = w1_a @ w1_b and w2 = w2_a @ w2_b
    where factored (w2 may carry a conv kernel: [b, d, *k], or w2_b [rank, d · k]), reshaped like the weight."""

    w1: Optional[torch.Tensor]
    w1_a: Optional[torch.Tensor]
    w1_b: Optional[torch.Tensor]
    w2: Optional[torch.Tensor]
    w2_a: Optional[torch.Tensor]
    w2_b: Optional[torch.Tensor]
    scale: float
    comfy_kind: ClassVar[str] = "lokr"

    @property
    def rank(self) -> Optional[int]:
        """The rank alpha is divided by: w2's when factored, else w1's, else None (ComfyUI's and LyCORIS's rule)."""
        if self.w2_b is not None:
            return self.w2_b.shape[0]
        return None if self.w1_b is None else self.w1_b.shape[0]

    def factors(self, device=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(w1 [a, c], w2 [b, d · k]) in float32."""
        def build(full, a, b):
            if full is not None:
                return full.to(device=device, dtype=torch.float32).flatten(1)
            return torch.mm(a.to(device=device, dtype=torch.float32), b.to(device=device, dtype=torch.float32))
        return build(self.w1, self.w1_a, self.w1_b), build(self.w2, self.w2_a, self.w2_b)

    def product(self, shape, device=None) -> torch.Tensor:
        """kron(w1, w2) in float32, without the scale, shaped `shape` (for a conv weight [a·b, c·d, k] this is
        LyCORIS's kron of w1[..., None] and w2 [b, d, k])."""
        return torch.kron(*self.factors(device)).reshape(shape)

    def comfy_weights(self) -> tuple:
        """The weights tuple of ComfyUI's `LoKrAdapter` (comfy/weight_adapter/lokr.py, 0.3.75): (lokr_w1, lokr_w2,
        alpha, lokr_w1_a, lokr_w1_b, lokr_w2_a, lokr_w2_b, lokr_t2, dora_scale). ComfyUI scales by alpha / rank
        (`rank`) when a side is factored, else by 1, so alpha = scale · rank. A full conv w2 goes flattened to
        [b, d · k]: ComfyUI takes kron(w1, w2) and reshapes it to the weight, which is only right for a 2-D w2
        (it unsqueezes w1 for 4-D w2 only)."""
        w2 = None if self.w2 is None else self.w2.flatten(1)
        alpha = None if self.rank is None else self.scale * self.rank
        return (self.w1, w2, alpha, self.w1_a, self.w1_b, self.w2_a, self.w2_b, None, None)


AdapterWeight = Union[LoraWeight, LokrWeight]


def weight_delta(weight: AdapterWeight, shape, strength: float = 1.0, device=None) -> torch.Tensor:
    """strength · scale · (up @ down or kron(w1, w2)) in float32, shaped `shape`: what the patch adds."""
    return (strength * weight.scale) * weight.product(shape, device)


@dataclass
class Adapter:
    weights: dict[str, AdapterWeight]  # AceStep15 parameter name -> factors
    kind: str  # "LoRA", "LoKr" or "LoRA + LoKr"
    scaling: str  # where the scales came from, in words

    def comfy_patches(self, prefix: str = "diffusion_model.") -> dict[str, tuple[str, tuple]]:
        """{patch key: (ComfyUI adapter name "lora" | "lokr", its weights tuple)}: the bridge builds
        `LoRAAdapter(set(), weights)` / `LoKrAdapter(set(), weights)` and adds them with the strength."""
        return {prefix + name: (w.comfy_kind, w.comfy_weights()) for name, w in self.weights.items()}


def load_v15_adapter(path, model: ModelLike, scaling: LoraScaling = LoraScaling()) -> Adapter:
    """Reads an adapter file (and a PEFT adapter_config.json beside it) and matches it to `model` (an AceStep15, its
    state dict or {parameter name: shape})."""
    return parse_v15_adapter(read_lora_file(path), model, scaling)


def _spellings(shapes: Mapping[str, tuple]) -> dict[str, Optional[str]]:
    """Every accepted spelling of every weighted module -> the module (None where two modules share one)."""
    out: dict[str, Optional[str]] = {}

    def add(spelling: str, module: str) -> None:
        out[spelling] = None if out.get(spelling, module) != module else module

    for key, shape in shapes.items():
        if not key.endswith(".weight") or len(shape) < 2:
            continue
        module = key[: -len(".weight")]
        for prefix in ("", "diffusion_model.", "model.diffusion_model.", "base_model.model."):
            add(prefix + module, module)
        add("lora_unet_" + module.replace(".", "_"), module)
        if module.startswith("decoder."):  # the trainer wraps the decoder: names relative to it
            inner = module[len("decoder."):]
            add("base_model.model." + inner, module)
            add("lycoris_" + inner.replace(".", "_"), module)
    return out


def _split(key: str) -> tuple[Optional[str], str]:
    for suffix, role in _ROLES:
        if key.endswith(suffix):
            return role, key[: -len(suffix)]
    return None, key


def parse_v15_adapter(file: LoraFile, model: ModelLike, scaling: LoraScaling = LoraScaling()) -> Adapter:
    """Matches a read LoRA / LoKr file to `model`'s parameters and resolves each target's scale. Raises
    WrongModelError (not an adapter, an ACE-Step v1 or other model's adapter), UnsupportedCheckpointError (other
    adapter kinds), CheckpointMismatchError (unknown modules, missing partners, shapes that do not fit)."""
    path, tensors = file.path, file.tensors
    shapes = _shapes(model)
    v1 = [k for k in tensors if V1_MARKERS.search(k)]
    if v1:
        raise WrongModelError(path, f"this is an ACE-Step v1 LoRA (keys such as {listing(v1, 2)}), not one for "
                                    "ACE-Step 1.5.", "Apply it to an ACE-Step v1 model with the ACE-Step LoRA node, "
                                                     "or use a LoRA trained for ACE-Step 1.5.")
    for pattern, kind in _REFUSED:
        found = [k for k in tensors if re.search(pattern, k)]
        if found:
            raise UnsupportedCheckpointError(
                path, f"this is a {kind} adapter ({listing(found, 3)}); ACE-Step 1.5 adapters are supported as plain "
                      "LoRA and LoKr.", "Retrain it as LoRA or LoKr, or try ComfyUI's core 'Load LoRA' node.")

    groups: dict[str, dict[str, str]] = {}
    strays = []
    for key in tensors:
        role, spelling = _split(key)
        if role is None:
            strays.append(key)
        else:
            groups.setdefault(spelling, {})[role] = key
    if not any(set(g) - {"alpha"} for g in groups.values()):
        raise WrongModelError(path, f"is not a LoRA or LoKr adapter (first keys: {listing(list(tensors), 3)}).",
                              "Put adapters in models/loras/ and checkpoints in models/checkpoints/.")

    spellings = _spellings(shapes)
    named: dict[str, dict[str, str]] = {}
    unknown = []
    for spelling, group in groups.items():
        module = spellings.get(spelling)
        if module is None:
            unknown.append(spelling)
            continue
        if module in named:
            raise CheckpointMismatchError(path, f"module {module!r} appears twice ({listing(group.values())} and "
                                                f"{listing(named[module].values())}).", "Keep one spelling of it.")
        named[module] = group
    family = _other_model(unknown)
    if family:
        raise WrongModelError(path, f"this adapter is for {family}, not {MODEL_NAME} (modules such as "
                                    f"{listing(unknown, 3)}).", _FIX_MODEL)
    if unknown:
        what = "none of its" if not named else f"{len(unknown)} of its"
        raise (WrongModelError if not named else CheckpointMismatchError)(
            path, f"{what} target modules are layers of this {MODEL_NAME} model: {listing(unknown)}.", _FIX_MODEL)
    if strays:
        raise CheckpointMismatchError(path, f"tensors that belong to no LoRA or LoKr module: {listing(strays)}.",
                                      "Remove them, or use the file as its trainer saved it.")

    lora_groups, lokr_groups = {}, {}
    for module, group in named.items():
        is_lora, is_lokr = bool(set(group) & _LORA_ROLES), bool(set(group) & _LOKR_ROLES)
        if is_lora == is_lokr:
            raise CheckpointMismatchError(path, f"module {module!r} has {listing(group.values())}: neither one LoRA "
                                                "pair nor one set of LoKr factors.", "Export the adapter again.")
        (lora_groups if is_lora else lokr_groups)[module] = group
    weights, sources = lora_pair_weights(file, lora_groups, shapes, scaling, MODEL_NAME) if lora_groups else ({}, set())
    for module, group in sorted(lokr_groups.items()):
        weights[module + ".weight"], source = _lokr(path, module, group, tensors, shapes[module + ".weight"], scaling)
        sources.add(source)
    kind = " + ".join(k for k, g in (("LoRA", lora_groups), ("LoKr", lokr_groups)) if g)
    return Adapter(weights, kind, describe_scales(weights, sources))


def _side(path, module: str, group: Mapping[str, str], tensors, side: str):
    """(full, a, b) of one Kronecker side ("w1" or "w2"): the full factor, or the two low-rank ones."""
    full, a, b = (group.get(side + s) for s in ("", "_a", "_b"))
    if full is not None and (a or b) or full is None and not (a and b):
        raise CheckpointMismatchError(path, f"LoKr module {module!r} has {listing(group.values())}: each side needs "
                                            f"lokr_{side} or both lokr_{side}_a and lokr_{side}_b.",
                                      "The file is incomplete: export the adapter again.")
    if full is not None:
        return tensors[full], None, None
    ta, tb = tensors[a], tensors[b]
    if ta.ndim != 2 or tb.ndim != 2 or ta.shape[1] != tb.shape[0]:
        raise CheckpointMismatchError(path, f"rank mismatch in {module!r}: {a} is {list(ta.shape)} and {b} is "
                                            f"{list(tb.shape)}.", "The file is damaged: export the adapter again.")
    return None, ta, tb


def _lokr(path, module: str, group: Mapping[str, str], tensors, weight_shape: tuple,
          scaling: LoraScaling) -> tuple[LokrWeight, str]:
    w1, w1_a, w1_b = _side(path, module, group, tensors, "w1")
    w2, w2_a, w2_b = _side(path, module, group, tensors, "w2")
    if w1 is not None and w1.ndim != 2:
        raise CheckpointMismatchError(path, f"{group['w1']} is {list(w1.shape)}; lokr_w1 must be 2-D.",
                                      "The file is damaged: export the adapter again.")
    if w1_b is not None and w2_b is not None and w1_b.shape[0] != w2_b.shape[0]:
        raise CheckpointMismatchError(path, f"LoKr module {module!r} has rank {w1_b.shape[0]} on w1 and "
                                            f"{w2_b.shape[0]} on w2; LyCORIS gives both sides one rank.",
                                      "The file is damaged or mixed: export the adapter again.")
    rows1, cols1 = (w1.shape if w1 is not None else (w1_a.shape[0], w1_b.shape[1]))
    rows2 = w2.shape[0] if w2 is not None else w2_a.shape[0]
    cols2 = math.prod(w2.shape[1:]) if w2 is not None else w2_b.shape[1]
    if rows1 * rows2 != weight_shape[0] or cols1 * cols2 != math.prod(weight_shape[1:]):
        raise CheckpointMismatchError(
            path, f"{module!r} is {list(weight_shape)} in this model, but the LoKr factors give "
                  f"[{rows1 * rows2}, {cols1 * cols2}] ({listing(group.values())}).",
            f"The adapter was made for a model of another size: use one made for this checkpoint ({MODEL_NAME}).")
    weight = LokrWeight(w1, w1_a, w1_b, w2, w2_a, w2_b, 1.0)
    rank = weight.rank
    if rank is None:
        return weight, "LoKr without a factored side: scale 1"
    if scaling.alpha is not None:
        alpha, source = float(scaling.alpha), "alpha from the override"
    elif "alpha" in group:
        alpha, source = float(tensors[group["alpha"]].float().item()), "alpha from .alpha tensors"
    else:
        return weight, "LoKr without alpha: scale 1"
    rslora = bool(scaling.rslora) and scaling.alpha is not None  # a stored alpha already holds rsLoRA's factor
    scale = alpha / (math.sqrt(rank) if rslora else rank)
    return LokrWeight(w1, w1_a, w1_b, w2, w2_a, w2_b, scale), f"{source}; LoKr alpha/{'√rank' if rslora else 'rank'}"
