"""Finds and loads ACE-Step 1.5 weights from the files users have: ComfyUI's all-in-one checkpoint, its split files
(diffusion_models/, text_encoders/, vae/) and the original Hugging Face folders (finding them: `v15_layout`; key
spellings: `v15_keys`).

How a network is loaded (as the v1 loader does): every file key routed to its network with the layout's prefix
stripped; the config read from the tensor shapes (`AceStep15Config`, `Qwen3Config`, `OobleckConfig.from_shapes`),
so any size of the architecture (2B or XL DiT, each LM size, the tiny test models) loads through the same code; the
network built on `meta`; the keys checked strictly and only the needed tensors read, each converted once to the
requested dtype (`state_loading.load_group`). What shapes cannot tell takes the real models' values (sliding window
128, RMSNorm eps 1e-6, RoPE base 1e6), as ComfyUI hard-codes them; an original folder's config.json is kept in
`info.config_json` but not read.

Tokenizers (Qwen3 BPE, `text.qwen_tokenizer`): the tokenizer.json of the user's original folders
(Qwen3-Embedding-0.6B/ for the text encoder, acestep-5Hz-lm-*/ for the LM, each the other's fallback), else the
Qwen tokenizer folder ComfyUI bundles; the LM's has the 65,535 audio-code tokens.
"""
from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Optional, Sequence

from torch import nn

from ..models.operations import ManualCastOps, sdpa_attention
from .errors import CheckpointError, CheckpointMismatchError, CheckpointNotFoundError, WrongModelError
from .foreign import V15, V15_CHECKPOINT_NODE, V15_DIT_NODE, V15_TEXT_NODE, V15_VAE_NODE, wrong_family_error
from .safetensors_io import SafetensorsFile
from .state_loading import TensorRef, build_on_meta, fold_weight_norm, listing, load_group
from .v1_checkpoint import TINY_DEMO_METADATA_KEY
from .v15_keys import DIT, LM, TEXT_ENCODER, VAE, detect_layout, route_keys
from .v15_layout import Found, Source, VariantGuess, find_sources, guess_variant

log = logging.getLogger(__name__)

COMPONENTS = ("dit", "text_encoder", "lm", "vae", "tokenizers")
NETWORKS = (DIT, TEXT_ENCODER, LM, VAE)
TITLES = {DIT: "diffusion model (DiT)", TEXT_ENCODER: "text encoder (Qwen3-Embedding-0.6B)", LM: "5 Hz LM",
          VAE: "VAE"}
NODES = {DIT: V15_DIT_NODE, TEXT_ENCODER: V15_TEXT_NODE, LM: V15_TEXT_NODE, VAE: V15_VAE_NODE}
# The tiny demo files (tests/fixtures/v15_tiny_checkpoint.py) state their variant, which their names may not.
VARIANT_METADATA_KEY = "ace_step_studio.variant"
_FIX = ("The file is incomplete, modified or not ACE-Step 1.5: use ComfyUI's ace_step_1.5_turbo_aio.safetensors, its "
        "split files, or the original ACE-Step/Ace-Step1.5 folder.")


# ---------------------------------------------------------------------------------------------------------------
# Results

@dataclass
class AceStep15Info:
    """What was found and how it was read (from the headers alone for `inspect_ace_step15`)."""

    path: str
    layout: str  # "all-in-one" (one file, several networks), "split" (a file per network) or "hf-folder"
    components: tuple = ()  # networks present: "dit", "text_encoder", "lm", "vae"
    files: dict = field(default_factory=dict)  # network -> files its weights come from
    file_layouts: dict = field(default_factory=dict)  # file -> v15_keys layout name
    configs: dict = field(default_factory=dict)  # network -> config inferred from the shapes
    dit_size: Optional[str] = None  # "2B", "XL", or None for another size
    xl: Optional[bool] = None  # decoder wider than its condition memory (the XL design), from the shapes
    lm_size: Optional[str] = None  # "0.6B", "1.7B", "4B", or None for another size
    variant: VariantGuess = VariantGuess()  # a GUESS from the DiT's file or folder name (turbo / sft / base)
    dit_folders: tuple = ()  # original layout: every DiT folder it holds (choose with `variant`)
    lm_folders: tuple = ()
    vae_layout: Optional[str] = None  # "comfyui" or "diffusers" key spelling
    vae_weight_norm: Optional[str] = None  # "weight_norm", "parametrizations" or "fused"
    dtype: object = None  # as asked: None (as stored), a torch.dtype or {component: dtype}
    file_dtypes: dict = field(default_factory=dict)  # network -> stored dtypes of what was read
    unused_keys: list = field(default_factory=list)  # file keys no network reads (never read)
    metadata: dict = field(default_factory=dict)  # safetensors __metadata__, merged over files
    config_json: dict = field(default_factory=dict)  # original folder name -> its config.json
    tokenizer_sources: dict = field(default_factory=dict)  # "text_encoder" / "lm" -> where the tokenizer came from
    warnings: list = field(default_factory=list)

    @property
    def is_tiny_demo(self) -> bool:
        """True for the random-weight demo files of tests/fixtures/v15_tiny_checkpoint.py (their audio is noise)."""
        return TINY_DEMO_METADATA_KEY in self.metadata

    @property
    def sampling(self):
        """Steps, CFG and shift for the guessed variant (`v15_layout.SamplingHint`), or None when unknown."""
        return self.variant.sampling


@dataclass
class AceStep15Models:
    """The loaded networks (None where not asked for or absent) and how they were found."""

    dit: Optional[nn.Module]  # AceStep15 (or dit_cls)
    text_encoder: Optional[nn.Module]  # Qwen3Model
    lm: Optional[nn.Module]  # Qwen3CausalLM
    vae: Optional[nn.Module]  # OobleckVAE
    text_tokenizer: object  # QwenTokenizer (text-encoder flavour) or None
    lm_tokenizer: object  # QwenTokenizer with the audio codes, or None
    info: AceStep15Info


# ---------------------------------------------------------------------------------------------------------------
# Sources of tensors that are not plain file reads

class _Wrapped:
    """A source read through another (`TensorRef.source`): the same path, offsets and stored dtypes."""

    def __init__(self, source):
        self.source, self.path = source, source.path

    def read(self, key, dtype=None):
        return self.source.read(key, dtype)

    def offset(self, key):
        return self.source.offset(key) if hasattr(self.source, "offset") else 0

    def dtypes(self):
        return self.source.dtypes() if hasattr(self.source, "dtypes") else {}


class _Flattened(_Wrapped):
    """Tensors read flat (diffusers stores Snake parameters as [1, C, 1]; ours are [C])."""

    def read(self, key, dtype=None):
        return self.source.read(key, dtype).reshape(-1)


class _ChecksPassed(Exception):
    """Raised by the first read of a check-only load: `load_group` reads only after every check passed."""


class _CheckOnly(_Wrapped):
    def read(self, key, dtype=None):
        raise _ChecksPassed


class _Shapes:
    """A file that has shapes but no data (`check_shapes15`)."""

    def __init__(self, name: str):
        self.path = name

    def read(self, key, dtype=None):
        raise RuntimeError("shapes only: nothing to read")


# ---------------------------------------------------------------------------------------------------------------
# Routing every file's tensors to its network

class _Plan:
    def __init__(self):
        self.groups: dict[str, dict[str, TensorRef]] = {}
        self.files: dict[str, list[str]] = {}
        self.sources: dict[str, list[Source]] = {}
        self.file_layouts: dict[str, str] = {}
        self.unused: list[str] = []
        self.metadata: dict[str, str] = {}

    def add(self, files: Sequence[tuple]):
        """Routes one file, or the shards of one folder, given as (reader, Source, key -> shape) each."""
        path = files[0][1].path if len(files) == 1 else files[0][1].path.parent
        source = files[0][1]
        shapes = {k: v for _, _, file_shapes in files for k, v in file_shapes.items()}
        wrong = wrong_family_error(path, shapes, V15)  # ACE-Step v1, a LoRA, an image model...: say so
        if wrong is not None:
            raise wrong
        try:
            layout = detect_layout(shapes)
        except ValueError as e:
            raise WrongModelError(path, f"no ACE-Step 1.5 weights were recognised in it: {e}.", _FIX) from None
        try:
            routed, unrouted = route_keys(shapes, layout)
        except ValueError as e:
            raise CheckpointMismatchError(path, f"it stores a tensor twice: {e}.", "Keep one copy (one LM per "
                                          "file).") from None
        if unrouted:
            raise CheckpointMismatchError(path, f"{len(unrouted)} tensors belong to no part of ACE-Step 1.5: "
                                          f"{listing(unrouted)}.", "Remove the extra tensors or use the original file.")
        if source.network is not None and set(routed) != {source.network}:
            raise CheckpointMismatchError(
                path, f"the {source.folder}/ folder should hold the {TITLES[source.network]}, but this file holds the "
                f"{', '.join(TITLES[n] for n in routed)}.",
                "Put each model in its own folder, as the original ships it.")
        self.unused += [k for k in shapes if k in layout.unused]
        for reader, file_source, file_shapes in files:
            self.file_layouts[str(file_source.path)] = layout.name
            for network, keys in route_keys(file_shapes, layout)[0].items():
                group = self.groups.setdefault(network, {})
                for local, file_key in keys.items():
                    if local in group:
                        raise self._duplicate(network, group[local], file_source.path)
                    group[local] = TensorRef(reader, file_key, tuple(file_shapes[file_key]))
                self.files.setdefault(network, []).append(str(file_source.path))
                self.sources.setdefault(network, []).append(file_source)

    @staticmethod
    def _duplicate(network: str, first: TensorRef, path) -> CheckpointError:
        return CheckpointMismatchError(
            path, f"both this file and {first.source.path} hold the {TITLES[network]}.",
            "Pass one of them" + (": the text encoder is Qwen3-Embedding-0.6B (qwen_0.6b_ace15), the LM a "
                                  "qwen_1.7b_ace15 / qwen_4b_ace15 or acestep-5Hz-lm-* file."
                                  if network in (TEXT_ENCODER, LM) else "."))


def _open(found: Found, stack: contextlib.ExitStack) -> _Plan:
    """Every file's header read and routed; the shards of one folder together."""
    plan, units = _Plan(), {}
    for source in found.sources:
        reader = stack.enter_context(SafetensorsFile(source.path))
        plan.metadata.update(reader.metadata)
        unit = source.tokenizer_dir if source.folder else source.path  # an original folder's files form one model
        units.setdefault(unit, []).append((reader, source, reader.shapes()))
    for files in units.values():
        plan.add(files)
    return plan


# ---------------------------------------------------------------------------------------------------------------
# Configs and networks

def _vae_group(group: dict[str, TensorRef], path):
    """The VAE's refs under our module's keys (diffusers names mapped, Snake parameters flat), weight-norm pairs
    fused; also its key spelling and weight-norm spelling."""
    from ..models.v15 import vae

    try:
        layout = vae.detect_layout(group)
        levels = vae.count_levels(group, layout)
        renamed = {}
        for key, ref in group.items():
            local = vae.module_key(key, layout, levels)
            if local.endswith((".alpha", ".beta")) and ref.shape is not None and len(ref.shape) != 1:
                ref = TensorRef(_Flattened(ref.source), ref.key, (math.prod(ref.shape),))
            renamed[local] = ref
    except ValueError as e:
        raise CheckpointMismatchError(path, f"the VAE's keys are not an Oobleck VAE's ({e}).", _FIX) from None
    fused, pairs, spelling = fold_weight_norm(renamed, path)
    return fused, pairs, layout, spelling


def _config(network: str, shapes: Mapping[str, tuple], path):
    from ..models.v15.model import AceStep15Config
    from ..models.v15.qwen3 import Qwen3Config
    from ..models.v15.vae import OobleckConfig

    try:
        if network == DIT:
            return AceStep15Config.from_shapes(shapes)
        if network == VAE:
            config = OobleckConfig.from_shapes(shapes)
        else:
            config = Qwen3Config.from_shapes(shapes)
    except (ValueError, KeyError, IndexError, TypeError, ZeroDivisionError) as e:
        raise CheckpointMismatchError(path, f"the {TITLES[network]} tensors do not describe an ACE-Step 1.5 "
                                      f"{TITLES[network]} ({e}).", _FIX) from None
    if network == VAE:
        real = OobleckConfig.full_size()
        if config.strides != real.strides:
            raise WrongModelError(
                path, f"this Oobleck VAE downsamples by {'·'.join(map(str, config.strides))} ({config.hop_length} "
                f"samples per latent frame): not ACE-Step 1.5's ({'·'.join(map(str, real.strides))}, "
                f"{real.hop_length} samples per frame at 48 kHz); Stable Audio Open's VAE has this layout.",
                "Use ComfyUI's vae/ace_1.5_vae.safetensors or the original vae/ folder.")
    return config


def network_class(network: str, dit_cls=None) -> type:
    """The class of one network ("dit", "text_encoder", "lm", "vae"); `dit_cls` replaces AceStep15."""
    if network == DIT:
        from ..models.v15.model import AceStep15

        return dit_cls or AceStep15
    if network == VAE:
        from ..models.v15.vae import OobleckVAE

        return OobleckVAE
    from ..models.v15.qwen3 import Qwen3CausalLM, Qwen3Model

    return Qwen3Model if network == TEXT_ENCODER else Qwen3CausalLM


def _sizes(info: AceStep15Info):
    """Names the full-size configs the inferred ones equal."""
    from ..models.v15.model import AceStep15Config
    from ..models.v15.qwen3 import FULL_SIZES

    dit = info.configs.get(DIT)
    if dit is not None:
        info.xl = dit.decoder.hidden_size != dit.decoder.condition_size
        info.dit_size = next((s for s in ("2B", "XL") if AceStep15Config.full_size(s) == dit), None)
        info.variant = VariantGuess(info.variant.kind, info.xl, info.variant.shift, info.variant.name)
    lm = info.configs.get(LM)
    if lm is not None:
        info.lm_size = next((name.split("-", 1)[1] for name, c in FULL_SIZES.items()
                             if name.startswith("lm-") and c == lm), None)


def _network(network: str, group: dict[str, TensorRef], info: AceStep15Info, *, check_only: bool, dtype=None,
             device=None, operations=ManualCastOps, attention=sdpa_attention, dit_cls=None) -> Optional[nn.Module]:
    """Config from the shapes, the network on meta, the strict key/shape check; then (unless `check_only`) the
    tensors read into it."""
    path = info.files[network][0]
    pairs = {}
    if network == VAE:
        group, pairs, info.vae_layout, info.vae_weight_norm = _vae_group(group, path)
    config = _config(network, {k: r.shape for k, r in group.items()}, path)
    info.configs[network] = config
    kwargs = {"operations": operations} if network == VAE else {"operations": operations, "attention": attention}
    model = build_on_meta(network_class(network, dit_cls), config, **kwargs)
    if check_only:
        group = {k: TensorRef(_CheckOnly(r.source), r.key, r.shape) for k, r in group.items()}
        pairs = {k: tuple(TensorRef(_CheckOnly(r.source), r.key, r.shape) for r in pair) for k, pair in pairs.items()}
    try:
        _, info.file_dtypes[network] = load_group(model, group, title=TITLES[network], path=path, fix=_FIX,
                                                  pairs=pairs, dtype=dtype, device=device)
    except _ChecksPassed:
        return None
    return model


# ---------------------------------------------------------------------------------------------------------------
# Describing what was found

def _layout_name(found: Found, plan: _Plan) -> str:
    if found.layout == "hf-folder":
        return "hf-folder"
    return "all-in-one" if any(len({n for n, fs in plan.files.items() if f in fs}) > 1
                               for f in plan.file_layouts) else "split"


def _variant(plan: _Plan) -> VariantGuess:
    sources = plan.sources.get(DIT, [])
    if not sources:
        return VariantGuess()
    source = sources[0]
    guess = guess_variant(source.folder or source.path.name)
    stated = plan.metadata.get(VARIANT_METADATA_KEY)
    if guess.kind is None and stated:
        return VariantGuess(stated, guess.xl, guess.shift, guess.name)
    return guess


def _new_info(path, found: Found, plan: _Plan, dtype=None) -> AceStep15Info:
    info = AceStep15Info(
        str(path) if not isinstance(path, (list, tuple)) else ", ".join(map(str, path)),
        _layout_name(found, plan), components=tuple(n for n in NETWORKS if n in plan.groups), files=plan.files,
        file_layouts=plan.file_layouts, variant=_variant(plan), dit_folders=found.dit_folders,
        lm_folders=found.lm_folders, dtype=dtype, unused_keys=list(plan.unused), metadata=plan.metadata,
        config_json=found.config_json, warnings=list(found.warnings))
    for folder, cfg in found.config_json.items():
        if "_unreadable" in cfg:
            info.warnings.append(f"{folder}/config.json is unreadable ({cfg['_unreadable']}); the config comes from "
                                 "the tensor shapes anyway")
    return info


def _missing_error(path, missing: Sequence[str], info: AceStep15Info) -> CheckpointError:
    held = ", ".join(f"the {TITLES[n]}" for n in info.components) or "nothing usable"
    nodes = sorted({NODES[n] for n in info.components}
                   | ({V15_CHECKPOINT_NODE} if len(info.components) > 1 else set()))
    where = {DIT: "diffusion_models/acestep_v1.5_*.safetensors or an acestep-v15-*/ folder",
             TEXT_ENCODER: "text_encoders/qwen_0.6b_ace15.safetensors or Qwen3-Embedding-0.6B/",
             LM: "text_encoders/qwen_1.7b_ace15 / qwen_4b_ace15.safetensors or an acestep-5Hz-lm-*/ folder",
             VAE: "vae/ace_1.5_vae.safetensors or the original vae/ folder"}
    return CheckpointNotFoundError(
        path, f"has no {', '.join(TITLES[n] for n in missing)} (it holds {held}).",
        ". ".join(f"The {TITLES[n]} comes from {where[n]}" for n in missing)
        + (f". This file loads with: {', '.join(repr(n) for n in nodes)}." if info.components else "."))


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers

def _bundled_tokenizer_dir(comfyui_root) -> Optional[Path]:
    from ..text.qwen_tokenizer import host_comfy_tokenizer_dir

    if comfyui_root is None:
        return host_comfy_tokenizer_dir()
    return Path(comfyui_root) / "comfy" / "text_encoders" / "qwen25_tokenizer"


def _tokenizer(plan: _Plan, network: str, comfyui_root, info: AceStep15Info):
    from ..text.qwen_tokenizer import load_qwen3_tokenizer

    other = LM if network == TEXT_ENCODER else TEXT_ENCODER
    places = [s.tokenizer_dir for n in (network, other) for s in plan.sources.get(n, []) if s.tokenizer_dir]
    places.append(_bundled_tokenizer_dir(comfyui_root))
    try:
        tokenizer = load_qwen3_tokenizer(places, audio_codes=network == LM)
    except FileNotFoundError as e:
        raise CheckpointNotFoundError(None, str(e), "") from None
    except ValueError as e:
        raise CheckpointMismatchError(None, f"the {TITLES[network]}'s tokenizer is not ACE-Step 1.5's: {e}.",
                                      "Use the original folder's tokenizer.json or ComfyUI's bundled one.") from None
    info.tokenizer_sources[network] = tokenizer.source
    return tokenizer


# ---------------------------------------------------------------------------------------------------------------
# Public API

def _components(components: Iterable[str]) -> tuple:
    components = (components,) if isinstance(components, str) else tuple(components)
    bad = [c for c in components if c not in COMPONENTS]
    if bad:
        raise ValueError(f"unknown components {bad}; choose from {COMPONENTS}")
    return components


def _per_component(value, component: str, default):
    return value.get(component, default) if isinstance(value, Mapping) else value


def inspect_ace_step15(path, variant: Optional[str] = None, lm_variant: Optional[str] = None) -> AceStep15Info:
    """What a file, several files or a folder hold, from the headers alone: layout, networks, their configs (2B or
    XL DiT, the LM size), the guessed variant, metadata. Every network is checked strictly against the network its
    shapes describe (nothing is read); a problem there is a warning here and an error at load time."""
    found = find_sources(path, variant, lm_variant, need_dit=False)
    with contextlib.ExitStack() as stack:
        plan = _open(found, stack)
        info = _new_info(path, found, plan)
        for network in info.components:
            try:
                _network(network, plan.groups[network], info, check_only=True)
            except CheckpointError as e:
                info.warnings.append(f"{TITLES[network]}: {e}")
    _sizes(info)
    return info


def check_shapes15(shapes: Mapping[str, Sequence[int]], name: str = "<shapes>") -> AceStep15Info:
    """Runs the loader's checks on one file's key -> shape map (nothing to read): family, layout, routing, configs and
    the strict key/shape check of every network. Raises what loading such a file would raise."""
    plan = _Plan()
    plan.add([(_Shapes(name), Source(Path(name)), shapes)])
    info = _new_info(name, Found("files", []), plan)
    for network in info.components:
        _network(network, plan.groups[network], info, check_only=True)
    _sizes(info)
    return info


def load_ace_step15(path_or_paths, components: Iterable[str] = COMPONENTS, dtype=None, device=None,
                    operations=ManualCastOps, attention=sdpa_attention, dit_cls=None, comfyui_root=None,
                    variant: Optional[str] = None, lm_variant: Optional[str] = None) -> AceStep15Models:
    """Loads ACE-Step 1.5 from ComfyUI's all-in-one file, its split files (one path or several), or the original
    Hugging Face folder layout.

    components: any of "dit", "text_encoder", "lm", "vae", "tokenizers"; tensors of the others are not read. Asking
    for a network the files lack is an error naming the file that has it; "lm" and "tokenizers" give the LM's
    tokenizer too.
    dtype: None (each tensor as stored), a torch.dtype for every floating-point weight, or {component: dtype} (others
    as stored). device: where the weights go (default CPU).
    operations: the layer namespace (see `models.operations`), or {component: namespace} (default ManualCastOps);
    attention: the attention function, or {component: function} (default sdpa_attention); dit_cls: an AceStep15
    subclass to build instead (the ComfyUI bridge's).
    comfyui_root: a ComfyUI installation whose bundled Qwen tokenizer is the fallback tokenizer; None: the host
    ComfyUI's, found without importing it (`text.qwen_tokenizer.host_comfy_tokenizer_dir`).
    variant / lm_variant: which DiT / LM folder of an original layout ("acestep-v15-sft" or "sft"; "1.7B"); without,
    the only DiT (several are an error) and the 1.7B LM, else the only or first LM.
    Raises a CheckpointError subclass whose message names the file, the problem and the fix.
    """
    components = _components(components)
    found = find_sources(path_or_paths, variant, lm_variant, need_dit="dit" in components)
    with contextlib.ExitStack() as stack:
        plan = _open(found, stack)
        info = _new_info(path_or_paths, found, plan, dtype)
        missing = [c for c in components if c in NETWORKS and c not in info.components]
        if missing:
            raise _missing_error(path_or_paths, missing, info)
        nets = {}
        for network in (c for c in components if c in NETWORKS):
            nets[network] = _network(
                network, plan.groups[network], info, check_only=False, dtype=_per_component(dtype, network, None),
                device=device, operations=_per_component(operations, network, ManualCastOps),
                attention=_per_component(attention, network, sdpa_attention), dit_cls=dit_cls)
    _sizes(info)
    text_tokenizer = lm_tokenizer = None
    if "tokenizers" in components:
        text_tokenizer = _tokenizer(plan, TEXT_ENCODER, comfyui_root, info)
        if "lm" in components or LM in info.components:
            lm_tokenizer = _tokenizer(plan, LM, comfyui_root, info)
    for warning in info.warnings:
        log.warning("%s: %s", info.path, warning)
    return AceStep15Models(nets.get(DIT), nets.get(TEXT_ENCODER), nets.get(LM), nets.get(VAE), text_tokenizer,
                           lm_tokenizer, info)
