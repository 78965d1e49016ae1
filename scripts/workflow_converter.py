"""Converts a workflow built from ComfyUI's native ACE-Step nodes (v1 or 1.5) to the same workflow on this pack's nodes.

Both of ComfyUI's formats are handled: the UI format the frontend saves (node ids, positions, links, groups and
subgraph definitions kept) and the API format `/prompt` takes. Plain Python without ComfyUI imports, so
`scripts/convert_workflow.py` runs without ComfyUI; the tables below are checked against a live server's
/object_info by tests/test_workflow_convert.py (the 1.5 nodes, newer than ComfyUI 0.3.75, against
comfyanonymous/ComfyUI comfy_extras/nodes_ace.py and the official templates in Comfy-Org/workflow_templates
templates/audio_ace_step_1_5_*.json, rebuilt in tests/test_workflow_convert_v15.py).

Mapping, ACE-Step v1 (native -> pack):
- CheckpointLoaderSimple -> AceStudioCheckpointLoader, when it loads ACE-Step: its file name says ACE-Step, or its CLIP
  feeds a TextEncodeAceStepAudio.
- EmptyAceStepLatentAudio -> AceStudioEmptyLatentAudio; TextEncodeAceStepAudio -> AceStudioTextEncode.
- VAEEncodeAudio -> AceStudioAudioToLatent, VAEDecodeAudio -> AceStudioLatentToAudio (normalize on, as the native
  node always normalises), when their VAE comes from a converted loader (Stable Audio's VAE needs the native nodes).
- LatentApplyOperationCFG fed by a LatentOperationTonemapReinhard that feeds nothing else -> one
  AceStudioTonemapReinhard (the same pre-CFG tonemap of cond - uncond).

Mapping, ACE-Step 1.5 (native -> pack):
- CheckpointLoaderSimple -> AceStudio15CheckpointLoader, when its file name says ACE-Step 1.5 (ace_step_1.5_*,
  acestep_v1.5_*, *ace15*) or its CLIP feeds a TextEncodeAceStepAudio1.5.
- UNETLoader -> AceStudio15DiffusionModelLoader (same weight_dtype); its optional vae input is linked to the
  workflow's one 1.5 VAELoader in the same graph, which the pack needs for the DiT's silence latent.
- DualCLIPLoader / CLIPLoader whose CLIP feeds a TextEncodeAceStepAudio1.5 (or whose file names say 1.5) ->
  AceStudio15TextEncoderLoader: the text encoder (qwen_0.6b) is text_encoder_name, the 5 Hz LM (qwen_1.7b / qwen_4b)
  lm_name ("none" from a one-file CLIPLoader); type and device are dropped (the pack's loader has neither).
- UNETLoader and VAELoader in the same connected graph as a native 1.5 node, or whose file name says 1.5 ->
  the pack's 1.5 loaders.
- TextEncodeAceStepAudio1.5 -> AceStudio15TextEncode: every value by name (cfg_scale -> lm_cfg_scale; the seed and
  its control value move to the end, the pack's widget order); planner_caption off, because the native node keeps the
  tags as typed; widgets an older template lacks (generate_audio_codes, cfg_scale, temperature, top_p, top_k, min_p)
  take the pack's defaults, which are the native node's. The native node always states bpm, time signature, language
  and key, so the pack's "auto" (0 for bpm) is never chosen; the native spellings ("4", "en", "E minor") are the
  pack's. Numbers past the pack's limits are moved to them with a warning.
- EmptyAceStep1.5LatentAudio -> AceStudio15EmptyLatentAudio (batch capped at 64).
- ReferenceTimbreAudio -> AceStudio15ReferenceTimbre (its latent must be linked: the pack's node needs one).
- VAEEncodeAudio / VAEDecodeAudio whose VAE comes from a converted 1.5 loader -> AceStudio15AudioToLatent /
  AceStudio15LatentToAudio (normalize on).

Both: SaveAudioAdvanced (the current official templates' saver, newer than ComfyUI 0.3.75) -> AceStudioSaveAudio with
the same format and quality, when its AUDIO output feeds nothing (the pack's saver has no output). Links into widget
inputs (a PrimitiveNode's seed or duration, a subgraph's promoted widget) stay, on the pack's input name.
Every other node (KSampler, ModelSamplingSD3, ModelSamplingAuraFlow, ConditioningZeroOut, LoadAudio, SaveAudio,
SaveAudioMP3, PrimitiveNode, ...) stays: it takes the pack's MODEL, CLIP, VAE and LATENT as it takes ComfyUI's own.

What cannot be converted raises ConversionError (nothing is converted): a native ACE-Step node the pack has no
equivalent for, v1 and 1.5 nodes in one workflow, a 1.5 loader whose file the pack cannot load (not .safetensors /
.sft) or whose files' roles cannot be told apart (two text encoders or two LMs, a lone LM, swapped linked names).
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

CONTROL = "control_after_generate"  # the frontend's value after a seed widget (UI format only)


@dataclass(frozen=True)
class Native:
    display_name: str  # the frontend's default title, replaced along with the type
    widgets: tuple[str, ...]  # in the node's widget order (UI format), CONTROL where the frontend saves one
    renamed: dict = field(default_factory=dict)  # a native input's name -> the pack's (every other name is the same)


NATIVE = {
    "CheckpointLoaderSimple": Native("Load Checkpoint", ("ckpt_name",)),
    "EmptyAceStepLatentAudio": Native("EmptyAceStepLatentAudio", ("seconds", "batch_size")),
    "TextEncodeAceStepAudio": Native("TextEncodeAceStepAudio", ("tags", "lyrics", "lyrics_strength")),
    "VAEEncodeAudio": Native("VAE Encode Audio", ()),
    "VAEDecodeAudio": Native("VAE Decode Audio", ()),
    "LatentApplyOperationCFG": Native("LatentApplyOperationCFG", ()),
    "LatentOperationTonemapReinhard": Native("LatentOperationTonemapReinhard", ("multiplier",)),
    # comfyanonymous/ComfyUI comfy_extras/nodes_audio.py (V3, after 0.3.76): `format` is a DynamicCombo whose mp3 and
    # opus options add a `quality` combo, sent as "format.quality".
    "SaveAudioAdvanced": Native("Save Audio (Advanced)", ("filename_prefix", "format", "format.quality"),
                                {"format.quality": "quality"}),
    # ACE-Step 1.5 (comfy_extras/nodes_ace.py, after 0.3.75). Templates saved by older frontends stop after keyscale
    # (zip stops there too); min_p came last.
    "TextEncodeAceStepAudio1.5": Native(
        "TextEncodeAceStepAudio1.5", ("tags", "lyrics", "seed", CONTROL, "bpm", "duration", "timesignature",
                                      "language", "keyscale", "generate_audio_codes", "cfg_scale", "temperature",
                                      "top_p", "top_k", "min_p"), {"cfg_scale": "lm_cfg_scale"}),
    "EmptyAceStep1.5LatentAudio": Native("Empty Ace Step 1.5 Latent Audio", ("seconds", "batch_size")),
    "ReferenceTimbreAudio": Native("Reference Audio", ()),
    # Core loaders (nodes.py), converted only in a 1.5 workflow.
    "UNETLoader": Native("Load Diffusion Model", ("unet_name", "weight_dtype")),
    "CLIPLoader": Native("Load CLIP", ("clip_name", "type", "device"), {"clip_name": "text_encoder_name"}),
    "DualCLIPLoader": Native("DualCLIPLoader", ("clip_name1", "clip_name2", "type", "device"),
                             {"clip_name1": "text_encoder_name", "clip_name2": "lm_name"}),
    "VAELoader": Native("Load VAE", ("vae_name",)),
}
# Not in ComfyUI 0.3.75, so the tests cannot check them against a live server.
NEWER_NATIVE = {"SaveAudioAdvanced", "TextEncodeAceStepAudio1.5", "EmptyAceStep1.5LatentAudio", "ReferenceTimbreAudio"}
# The pack's widgets as (name, default), in widget order; the default fills a widget the native node lacks.
PACK_WIDGETS = {
    "AceStudioCheckpointLoader": (("ckpt_name", None), ("weight_dtype", "default")),
    "AceStudioEmptyLatentAudio": (("seconds", 120.0), ("batch_size", 1)),
    "AceStudioTextEncode": (("tags", ""), ("lyrics", ""), ("lyrics_strength", 1.0)),
    "AceStudioTonemapReinhard": (("multiplier", 1.0),),
    "AceStudioAudioToLatent": (),
    "AceStudioLatentToAudio": (("normalize", True),),
    "AceStudioSaveAudio": (("filename_prefix", "audio/ACE-Step"), ("format", "flac"), ("quality", "V0")),
    "AceStudio15CheckpointLoader": (("ckpt_name", None), ("weight_dtype", "default")),
    "AceStudio15DiffusionModelLoader": (("unet_name", None), ("weight_dtype", "default")),
    "AceStudio15TextEncoderLoader": (("text_encoder_name", None), ("lm_name", "none")),
    "AceStudio15VaeLoader": (("vae_name", None),),
    "AceStudio15TextEncode": (("tags", ""), ("lyrics", ""), ("bpm", 0), ("duration", 120.0), ("timesignature", "auto"),
                              ("language", "auto"), ("keyscale", "auto"), ("generate_audio_codes", True),
                              ("planner_caption", True), ("lm_cfg_scale", 2.0), ("temperature", 0.85), ("top_p", 0.9),
                              ("top_k", 0), ("min_p", 0.0), ("seed", 0), (CONTROL, "fixed")),
    "AceStudio15EmptyLatentAudio": (("seconds", 120.0), ("batch_size", 1)),
    "AceStudio15ReferenceTimbre": (),
    "AceStudio15AudioToLatent": (),
    "AceStudio15LatentToAudio": (("normalize", True),),
}
RENAMED = {  # ACE-Step v1
    "CheckpointLoaderSimple": "AceStudioCheckpointLoader",
    "EmptyAceStepLatentAudio": "AceStudioEmptyLatentAudio",
    "TextEncodeAceStepAudio": "AceStudioTextEncode",
    "VAEEncodeAudio": "AceStudioAudioToLatent",
    "VAEDecodeAudio": "AceStudioLatentToAudio",
}
RENAMED_15 = {
    "CheckpointLoaderSimple": "AceStudio15CheckpointLoader",
    "UNETLoader": "AceStudio15DiffusionModelLoader",
    "CLIPLoader": "AceStudio15TextEncoderLoader",
    "DualCLIPLoader": "AceStudio15TextEncoderLoader",
    "VAELoader": "AceStudio15VaeLoader",
    "TextEncodeAceStepAudio1.5": "AceStudio15TextEncode",
    "EmptyAceStep1.5LatentAudio": "AceStudio15EmptyLatentAudio",
    "ReferenceTimbreAudio": "AceStudio15ReferenceTimbre",
    "VAEEncodeAudio": "AceStudio15AudioToLatent",
    "VAEDecodeAudio": "AceStudio15LatentToAudio",
}
# Values a converted node needs to behave as the native one, which has no such widget: ComfyUI's 1.5 text encoder
# conditions the DiT on the tags as typed, while the pack's planner rewrites them by default.
NATIVE_BEHAVIOUR = {"AceStudio15TextEncode": {"planner_caption": False}}
MAX_BATCH_SIZE = 64  # the pack's empty latents' limit; the native nodes allow 4096
# The pack's limits where the native node allows more (nodes/latent.py, nodes/v15_text.py, ace_step/text/
# v15_prompts.py): a number outside is moved to the nearest limit, with a warning. A duration of 0 is the pack's auto.
LIMITS = {
    "AceStudioEmptyLatentAudio": {"batch_size": (1, MAX_BATCH_SIZE)},
    "AceStudio15EmptyLatentAudio": {"batch_size": (1, MAX_BATCH_SIZE)},
    "AceStudio15TextEncode": {"bpm": (30, 300), "duration": (10.0, 600.0), "top_p": (0.0, 1.0)},
}
ZERO_IS_AUTO = {"duration"}
# Outputs a pack node has after those of its native counterpart (the frontend shows the saved ones).
EXTRA_OUTPUTS = {"AceStudio15TextEncode": (("metadata", "STRING"),)}
MERGED = "AceStudioTonemapReinhard"  # LatentApplyOperationCFG + LatentOperationTonemapReinhard
SAVERS = {"SaveAudioAdvanced": "AceStudioSaveAudio"}  # the pack's saver has no AUDIO output: only unused ones move
ACE_ONLY = {"EmptyAceStepLatentAudio", "TextEncodeAceStepAudio"}  # nodes that exist only for ACE-Step v1
ACE15_ONLY = {"EmptyAceStep1.5LatentAudio", "TextEncodeAceStepAudio1.5", "ReferenceTimbreAudio"}
CODECS = {"VAEEncodeAudio", "VAEDecodeAudio"}  # converted only when their VAE comes from a converted loader
FILE_WIDGETS = {"CheckpointLoaderSimple": ("ckpt_name",), "UNETLoader": ("unet_name",), "VAELoader": ("vae_name",),
                "CLIPLoader": ("clip_name",), "DualCLIPLoader": ("clip_name1", "clip_name2")}
CLIP_LOADERS = {"CLIPLoader", "DualCLIPLoader"}
ACE_FILE_NAME = re.compile(r"ace[-_ .]?step", re.IGNORECASE)
# ComfyUI's 1.5 files (Comfy-Org/ace_step_1.5_ComfyUI_files): ace_step_1.5_turbo_aio, acestep_v1.5_turbo,
# qwen_0.6b_ace15, qwen_1.7b_ace15, qwen_4b_ace15, ace_1.5_vae. v1's ace_step_v1_3.5b does not match.
ACE15_FILE_NAME = re.compile(r"ace[-_ .]?(?:step)?[-_ .]?v?1[._]?5(?![0-9])", re.IGNORECASE)
# The 1.5 text encoder (Qwen3-Embedding-0.6B) and the 5 Hz LM planner (acestep-5Hz-lm-1.7B / 4B) by file name.
TEXT_ENCODER_FILE_NAME = re.compile(r"0[._]6b|embedding", re.IGNORECASE)
LM_FILE_NAME = re.compile(r"(?<![0-9.])(?:1[._]7b|4b)|[-_ ]lm[-_ .]|5hz", re.IGNORECASE)
PACK_CHECKPOINT_SUFFIXES = (".safetensors", ".sft")  # what the pack's loaders list besides original-layout folders
PACK_ID = "comfyui-acestep-studio"  # the registry id the frontend records in a node's properties
# A regex, not tomllib: the command also runs on Python 3.10.
PACK_VERSION = re.search(r'^version\s*=\s*"([^"]+)"', (Path(__file__).resolve().parent.parent / "pyproject.toml")
                         .read_text(encoding="utf-8"), re.MULTILINE)[1]
SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20  # ids of a subgraph's input and output nodes in its links
REROUTE = "Reroute"


class ConversionError(Exception):
    """The workflow holds ACE-Step nodes that cannot move to the pack; `reasons` says which and why."""

    def __init__(self, reasons: list[str]):
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass
class Conversion:
    workflow: dict
    format: str  # "ui" or "api"
    changes: list[str]
    warnings: list[str]


def detect_format(workflow) -> str:
    if isinstance(workflow, dict) and isinstance(workflow.get("nodes"), list):
        return "ui"
    if isinstance(workflow, dict) and workflow and all(
            isinstance(node, dict) and "class_type" in node for node in workflow.values()):
        return "api"
    raise ValueError("not a ComfyUI workflow: expected the UI format (with a 'nodes' list) or the API format "
                     "({id: {'class_type': ..., 'inputs': {...}}})")


def convert_workflow(workflow: dict) -> Conversion:
    """The converted copy of `workflow` (left unchanged), with one line per change and per node left as is.
    Raises ConversionError when ACE-Step nodes in it cannot be converted."""
    fmt = detect_format(workflow)
    converted = copy.deepcopy(workflow)
    graph = _UiWorkflow(converted) if fmt == "ui" else _ApiWorkflow(converted)
    changes, warnings = _convert(graph)
    return Conversion(converted, fmt, changes, warnings)


def _is_ace15_file(name) -> bool:
    return isinstance(name, str) and bool(ACE15_FILE_NAME.search(name))


def _is_ace_v1_file(name) -> bool:
    return isinstance(name, str) and bool(ACE_FILE_NAME.search(name)) and not ACE15_FILE_NAME.search(name)


def _files(graph, key) -> list:
    widgets = graph.widgets(key)
    names = NATIVE[graph.type(key)].renamed
    return [widgets.get(names.get(w, w)) for w in FILE_WIDGETS[graph.type(key)]]


def _clip_role(name) -> str | None:
    """'text_encoder' or 'lm' when the file name tells, else None."""
    if not isinstance(name, str):
        return None
    encoder, lm = TEXT_ENCODER_FILE_NAME.search(name), LM_FILE_NAME.search(name)
    return "text_encoder" if encoder and not lm else "lm" if lm and not encoder else None


def _convert(graph) -> tuple[list[str], list[str]]:
    keys = graph.keys()
    types = {k: graph.type(k) for k in keys}
    present = set(types.values())
    v1 = sorted(ACE_ONLY & present) + [f"{graph.label(k)} CheckpointLoaderSimple {_files(graph, k)[0]!r}"
                                        for k in keys if types[k] == "CheckpointLoaderSimple"
                                        and _is_ace_v1_file(_files(graph, k)[0])]
    v15 = sorted(ACE15_ONLY & present) + [f"{graph.label(k)} {types[k]}" for k in keys if types[k] in FILE_WIDGETS
                                          and any(map(_is_ace15_file, _files(graph, k)))]
    if v1 and v15:
        raise ConversionError([f"the workflow mixes ACE-Step v1 ({', '.join(v1)}) and ACE-Step 1.5 "
                               f"({', '.join(v15)}): the two models do not share files, latents or conditioning; "
                               f"split it into one workflow per model and convert each"])
    errors, changes, warnings = [], [], []
    renamed = RENAMED_15 if v15 else RENAMED
    loaders = (_ace15_loaders if v15 else _ace_v1_loaders)(graph, types, errors, warnings)
    if not loaders and not (ACE_ONLY | ACE15_ONLY) & present:
        if errors:
            raise ConversionError(errors)
        return [], ["no native ACE-Step nodes found: nothing to convert"]

    for k in keys:
        t = types[k]
        if t in FILE_WIDGETS and k not in loaders:
            continue
        if t in CODECS:
            sources = graph.origins(k, "vae")
            if not sources or not set(sources) <= loaders:
                warnings.append(f"{graph.label(k)} {t} left as is: its VAE does not come from a converted ACE-Step "
                                f"{'1.5 ' if v15 else 'checkpoint '}loader")
                continue
        if t == "ReferenceTimbreAudio" and not graph.origins(k, "latent"):
            errors.append(f"{graph.label(k)} ReferenceTimbreAudio has no latent: the pack's Reference Timbre needs "
                          f"the reference audio's latent (link one, or remove the node, which then does nothing)")
            continue
        if t in renamed:
            overrides = dict(NATIVE_BEHAVIOUR.get(renamed[t], {}))
            if t in CLIP_LOADERS:
                overrides.update(_clip_roles(graph, k, errors))
            overrides.update(_within_limits(graph, k, renamed[t], warnings))
            graph.retype(k, renamed[t], overrides)
            changes.append(f"{graph.label(k)} {t} -> {renamed[t]}")
        elif t == "LatentApplyOperationCFG" and not v15:
            ops = graph.origins(k, "operation")
            if len(ops) != 1 or types[ops[0]] != "LatentOperationTonemapReinhard":
                continue  # another operation: the CFG node applies it to the pack's MODEL as it is
            op = ops[0]
            if graph.consumers(op) != [k]:
                warnings.append(f"{graph.label(op)} LatentOperationTonemapReinhard left as is with {graph.label(k)} "
                                f"LatentApplyOperationCFG: it also feeds other nodes")
                continue
            graph.merge(k, op)
            changes.append(f"{graph.label(k)} LatentApplyOperationCFG + {graph.label(op)} "
                           f"LatentOperationTonemapReinhard -> {MERGED} (keeps the first id)")
        elif t in SAVERS:
            if graph.consumers(k):
                warnings.append(f"{graph.label(k)} {t} left as is: its AUDIO output feeds other nodes, and the "
                                f"pack's Save Audio has no output")
                continue
            graph.retype(k, SAVERS[t], {})
            changes.append(f"{graph.label(k)} {t} -> {SAVERS[t]}")
        elif "acestep" in t.lower() and not t.startswith("AceStudio"):
            errors.append(f"{graph.label(k)} {t}: the pack has no equivalent of this native ACE-Step node")
    if errors:
        raise ConversionError(errors)
    if v15:
        _link_vae_into_diffusion_models(graph, types, loaders, changes, warnings)
    return changes, warnings


def _ace_v1_loaders(graph, types, errors, warnings) -> set:
    """The CheckpointLoaderSimple nodes that load ACE-Step v1: the file name says so, or the CLIP feeds the v1 text
    encoder. Others are left as they are (a .ckpt one with a warning: the pack loads .safetensors)."""
    keys = graph.keys()
    clip_sources = {src for k in keys if types[k] == "TextEncodeAceStepAudio" for src in graph.origins(k, "clip")}
    loaders = set()
    for k in keys:
        if types[k] != "CheckpointLoaderSimple":
            continue
        name = _files(graph, k)[0]
        if not ((isinstance(name, str) and ACE_FILE_NAME.search(name)) or k in clip_sources):
            warnings.append(f"{graph.label(k)} CheckpointLoaderSimple left as is: its file name does not say "
                            f"ACE-Step and its CLIP feeds no TextEncodeAceStepAudio")
        elif isinstance(name, str) and not name.lower().endswith(PACK_CHECKPOINT_SUFFIXES):
            warnings.append(f"{graph.label(k)} CheckpointLoaderSimple left as is: the pack loads .safetensors "
                            f"checkpoints, not {name!r}")
        else:
            loaders.add(k)
    return loaders


def _ace15_loaders(graph, types, errors, warnings) -> set:
    """The loaders of a 1.5 workflow to convert: checkpoint and CLIP loaders whose file says 1.5 or whose CLIP feeds
    the 1.5 text encoder; diffusion model and VAE loaders whose file says 1.5 or that are linked (through any nodes)
    to a native 1.5 node. A chosen loader whose file the pack cannot load is an error."""
    keys = graph.keys()
    clip_sources = {src for k in keys if types[k] == "TextEncodeAceStepAudio1.5" for src in graph.origins(k, "clip")}
    component = _components(graph, keys)
    ace15_components = {component[k] for k in keys if types[k] in ACE15_ONLY}
    loaders = set()
    for k in keys:
        t = types[k]
        if t not in FILE_WIDGETS:
            continue
        files = _files(graph, k)
        if any(map(_is_ace15_file, files)) or k in clip_sources:
            loaders.add(k)
        elif t in ("UNETLoader", "VAELoader") and component[k] in ace15_components:
            loaders.add(k)
        else:
            warnings.append(f"{graph.label(k)} {t} left as is: its file name does not say ACE-Step 1.5 and "
                            + ("its CLIP feeds no TextEncodeAceStepAudio1.5" if t in CLIP_LOADERS or
                               t == "CheckpointLoaderSimple" else "it is not linked to a native ACE-Step 1.5 node"))
            continue
        for name in files:
            if isinstance(name, str) and not name.lower().endswith(PACK_CHECKPOINT_SUFFIXES):
                errors.append(f"{graph.label(k)} {t} loads {name!r}, a file type the pack's ACE-Step 1.5 loaders do "
                              f"not load: they take .safetensors or .sft files")
    return loaders


def _clip_roles(graph, key, errors) -> dict:
    """Which file is the text encoder and which the 5 Hz LM, by name, where the native order says otherwise or
    cannot hold: DualCLIPLoader's first file is the text encoder in ComfyUI's templates, so an unnamed pair keeps that
    order; a swapped pair of plain values is swapped back."""
    label, t = graph.label(key), graph.type(key)
    names = _files(graph, key)
    roles = [_clip_role(n) for n in names]
    if t == "CLIPLoader":
        if roles[0] == "lm":
            errors.append(f"{label} CLIPLoader loads only {names[0]!r}, which is named as the 5 Hz LM: the pack's "
                          f"Text Encoders node needs the text encoder (qwen_0.6b_ace15), the LM is optional")
        return {}
    if roles[0] is not None and roles[0] == roles[1]:
        errors.append(f"{label} DualCLIPLoader loads two files named as the {roles[0].replace('_', ' ')} "
                      f"({names[0]!r}, {names[1]!r}): ACE-Step 1.5 takes one text encoder and one 5 Hz LM")
    elif roles == ["lm", "text_encoder"]:
        if any(graph.linked(key, name) for name in FILE_WIDGETS[t]):
            errors.append(f"{label} DualCLIPLoader's clip_name1 is the 5 Hz LM and clip_name2 the text encoder, and "
                          f"one of them is linked: swap them (the pack's Text Encoders node takes the text encoder "
                          f"first)")
        else:
            return {"text_encoder_name": names[1], "lm_name": names[0]}
    return {}


def _within_limits(graph, key, pack_type: str, warnings) -> dict:
    """Plain numbers moved inside the pack node's limits (linked values are the source node's business)."""
    moved = {}
    widgets = graph.widgets(key)
    for name, (low, high) in LIMITS.get(pack_type, {}).items():
        value = widgets.get(name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if value == 0 and name in ZERO_IS_AUTO:
            continue
        if value > high:
            moved[name] = high
            warnings.append(f"{graph.label(key)} {name} {value} lowered to the pack's maximum {high}")
        elif value < low:
            moved[name] = low
            warnings.append(f"{graph.label(key)} {name} {value} raised to the pack's minimum {low}")
    return moved


def _components(graph, keys) -> dict:
    """Each node's connected component (links followed both ways, through reroutes and subgraph boundaries)."""
    parent = {k: k for k in keys}

    def root(k):
        while parent[k] != k:
            parent[k] = parent[parent[k]]
            k = parent[k]
        return k

    for k in keys:
        for name in graph.input_names(k):
            for origin in graph.origins(k, name):
                if origin in parent:
                    parent[root(origin)] = root(k)
    return {k: root(k) for k in keys}


def _link_vae_into_diffusion_models(graph, types, loaders, changes, warnings):
    """The pack's diffusion model loader computes the DiT's silence latent with the VAE (ComfyUI's own 1.5 support
    has it built in): link the one converted VAE loader of the same graph into it."""
    vaes = [k for k in loaders if types[k] == "VAELoader"]
    for k in sorted(k for k in loaders if types[k] == "UNETLoader"):
        if graph.origins(k, "vae"):
            continue
        same = [v for v in vaes if graph.same_graph(k, v)]
        if len(same) == 1 and graph.connect(same[0], 0, k, "vae", "VAE"):
            changes.append(f"{graph.label(same[0])} VAE linked into {graph.label(k)} "
                           f"AceStudio15DiffusionModelLoader's vae input")
        else:
            warnings.append(f"{graph.label(k)} AceStudio15DiffusionModelLoader: link the ACE-Step 1.5 VAE into its "
                            f"vae input unless silence_latent.pt lies next to the DiT file (no single VAE loader "
                            f"beside it to link)")


def _pack_values(native_values: dict, pack_type: str, overrides: dict) -> dict:
    """The pack node's widget values (or, in the API format, links into widget inputs) by name, in widget order."""
    values = {**native_values, **overrides}
    return {name: values.get(name, default) for name, default in PACK_WIDGETS[pack_type]}


def _is_default_title(title, native_type: str) -> bool:
    return title in (native_type, NATIVE[native_type].display_name)


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


def _renames(node_type: str) -> dict:
    return NATIVE[node_type].renamed if node_type in NATIVE else {}


class _ApiWorkflow:
    """{id: {class_type, inputs, _meta}}: links are [source id, output slot] input values."""

    def __init__(self, prompt: dict):
        self.prompt = prompt

    def keys(self) -> list[str]:
        return list(self.prompt)

    def type(self, key) -> str:
        return self.prompt[key]["class_type"]

    def label(self, key) -> str:
        return f"#{key}"

    def widgets(self, key) -> dict:
        names = _renames(self.type(key))
        return {names.get(k, k): v for k, v in self.prompt[key].get("inputs", {}).items()}

    def input_names(self, key) -> list:
        return list(self.prompt[key].get("inputs", {}))

    def linked(self, key, input_name) -> bool:
        return _is_link(self.prompt[key].get("inputs", {}).get(input_name))

    def origins(self, key, input_name) -> list:
        value = self.prompt[key].get("inputs", {}).get(input_name)
        return [str(value[0])] if _is_link(value) and str(value[0]) in self.prompt else []

    def same_graph(self, a, b) -> bool:
        return True

    def connect(self, source, slot: int, target, input_name: str, _type: str) -> bool:
        self.prompt[target].setdefault("inputs", {})[input_name] = [source, slot]
        return True

    def consumers(self, key) -> list:
        return [k for k, node in self.prompt.items() for v in node.get("inputs", {}).values()
                if _is_link(v) and str(v[0]) == key]

    def _set_type(self, node: dict, native_type: str, pack_type: str):
        node["class_type"] = pack_type
        meta = node.get("_meta")
        if meta is not None and _is_default_title(meta.get("title"), native_type):
            meta["title"] = pack_type

    def retype(self, key, pack_type: str, overrides: dict):
        node = self.prompt[key]
        inputs = self.widgets(key)
        # The API format has no control_after_generate: the frontend applied it before queueing.
        values = {k: v for k, v in _pack_values(inputs, pack_type, overrides).items() if k != CONTROL}
        node["inputs"] = {**{k: v for k, v in inputs.items() if _is_link(v) or k in values}, **values}
        self._set_type(node, node["class_type"], pack_type)

    def merge(self, cfg_key, op_key):
        cfg, op = self.prompt[cfg_key], self.prompt.pop(op_key)
        model = cfg.get("inputs", {}).get("model")
        cfg["inputs"] = {**({"model": model} if model else {}),
                         **_pack_values(op.get("inputs", {}), MERGED, {})}
        self._set_type(cfg, "LatentApplyOperationCFG", MERGED)


class _UiWorkflow:
    """The frontend's format: the root graph and every subgraph definition, each with nodes and links. Keys are
    (graph index, node id); links are handled as dicts and written back in their graph's own form (lists in the
    root of older files, dicts in subgraphs and newer files)."""

    def __init__(self, workflow: dict):
        self.graphs = [workflow] + list(workflow.get("definitions", {}).get("subgraphs", []))
        self.subgraph_index = {g["id"]: i for i, g in enumerate(self.graphs) if i > 0}
        self.nodes = [{n["id"]: n for n in g.get("nodes", [])} for g in self.graphs]
        self.list_links = [any(isinstance(link, list) for link in g.get("links", [])) for g in self.graphs]
        self.links = [{link["id"]: link for link in map(_link_dict, g.get("links", []))} for g in self.graphs]
        # Where each subgraph is used: its instance nodes, whose type is the subgraph's id.
        self.instances = {sid: [(g, n) for g, nodes in enumerate(self.nodes) for n in nodes.values()
                                if n.get("type") == sid] for sid in self.subgraph_index}

    def keys(self) -> list[tuple[int, int]]:
        return [(g, node_id) for g, nodes in enumerate(self.nodes) for node_id in nodes]

    def type(self, key) -> str:
        return self.nodes[key[0]][key[1]].get("type", "")

    def label(self, key) -> str:
        g, node_id = key
        return (f"subgraph {self.graphs[g].get('name', self.graphs[g]['id'])!r} " if g else "") + f"#{node_id}"

    def widgets(self, key) -> dict:
        node = self.nodes[key[0]][key[1]]
        values = node.get("widgets_values") or []
        renames = _renames(node.get("type", ""))
        if isinstance(values, dict):
            return {renames.get(k, k): v for k, v in values.items()}
        names = [renames.get(n, n) for n in NATIVE[node["type"]].widgets] if node["type"] in NATIVE else []
        return dict(zip(names, values))

    def input_names(self, key) -> list:
        return [entry["name"] for entry in self.nodes[key[0]][key[1]].get("inputs", [])]

    def linked(self, key, input_name) -> bool:
        return any(entry["name"] == input_name and entry.get("link") is not None
                   for entry in self.nodes[key[0]][key[1]].get("inputs", []))

    def same_graph(self, a, b) -> bool:
        return a[0] == b[0]

    def connect(self, source, slot: int, target, input_name: str, link_type: str) -> bool:
        """A new link from output `slot` of `source` to a new input slot `input_name` at the end of `target`'s inputs
        (appended, so the slots other links name stay), on an id no graph uses yet."""
        g = source[0]
        src, dst = self.nodes[g][source[1]], self.nodes[g][target[1]]
        if slot >= len(src.get("outputs", [])):
            return False
        graph = self.graphs[g]
        used = [i for links in self.links for i in links] + [self.graphs[0].get("last_link_id") or 0] + [
            (gr.get("state") or {}).get("lastLinkId") or 0 for gr in self.graphs]
        link_id = max(used) + 1
        self.links[g][link_id] = {"id": link_id, "origin_id": src["id"], "origin_slot": slot, "target_id": dst["id"],
                                  "target_slot": len(dst.get("inputs", [])), "type": link_type}
        dst.setdefault("inputs", []).append({"name": input_name, "type": link_type, "shape": 7, "link": link_id})
        output = src["outputs"][slot]
        output["links"] = (output.get("links") or []) + [link_id]
        graph["links"] = [_link_list(link) if self.list_links[g] else link for link in self.links[g].values()]
        if g == 0 and "last_link_id" in graph:
            graph["last_link_id"] = max(graph["last_link_id"], link_id)
        if isinstance(graph.get("state"), dict) and "lastLinkId" in graph["state"]:
            graph["state"]["lastLinkId"] = max(graph["state"]["lastLinkId"], link_id)
        return True

    def origins(self, key, input_name) -> list:
        g, node_id = key
        slot = next((i for i in self.nodes[g][node_id].get("inputs", []) if i["name"] == input_name), None)
        link = self.links[g].get(slot.get("link")) if slot else None
        return self._resolve(g, link["origin_id"], link["origin_slot"]) if link else []

    def _resolve(self, g: int, node_id: int, slot: int) -> list:
        """The nodes that really produce output `slot` of `node_id`: through Reroutes, into the subgraph an instance
        node stands for, and out of a subgraph to what every instance of it is given."""
        if node_id == SUBGRAPH_INPUT and g:
            name = self.graphs[g]["inputs"][slot]["name"]
            return [origin for pg, instance in self.instances[self.graphs[g]["id"]]
                    for origin in self.origins((pg, instance["id"]), name)]
        node = self.nodes[g].get(node_id)
        if node is None:
            return []
        if node.get("type") == REROUTE:
            return self.origins((g, node_id), node["inputs"][0]["name"])
        if node.get("type") in self.subgraph_index:
            inner = self.subgraph_index[node["type"]]
            return [origin for link in self.links[inner].values()
                    if link["target_id"] == SUBGRAPH_OUTPUT and link["target_slot"] == slot
                    for origin in self._resolve(inner, link["origin_id"], link["origin_slot"])]
        return [(g, node_id)]

    def consumers(self, key) -> list:
        g, node_id = key
        return [(g, link["target_id"]) for link in self.links[g].values() if link["origin_id"] == node_id]

    def _set_type(self, node: dict, native_type: str, pack_type: str, values: dict):
        node["type"] = pack_type
        node["widgets_values"] = list(values.values())
        node["properties"] = {**node.get("properties", {}), "Node name for S&R": pack_type, "cnr_id": PACK_ID,
                              "ver": PACK_VERSION}
        if _is_default_title(node.get("title"), native_type):
            node.pop("title", None)  # the frontend then shows the pack node's own name

    def retype(self, key, pack_type: str, overrides: dict):
        node = self.nodes[key[0]][key[1]]
        values = _pack_values(self.widgets(key), pack_type, overrides)
        renames = _renames(node["type"])
        for entry in node.get("inputs", []):  # a widget's input slot (linked or not) follows the widget's new name
            entry["name"] = renames.get(entry["name"], entry["name"])
            if "widget" in entry:
                entry["widget"]["name"] = renames.get(entry["widget"]["name"], entry["widget"]["name"])
            if "localized_name" in entry:
                entry["localized_name"] = renames.get(entry["localized_name"], entry["localized_name"])
        # Widgets a subgraph's instances promoted from this node follow their new names.
        for _, instance in self.instances.get(self.graphs[key[0]].get("id"), []):
            for proxy in instance.get("properties", {}).get("proxyWidgets", []):
                if str(proxy[0]) == str(node["id"]) and proxy[1] in renames:
                    proxy[1] = renames[proxy[1]]
        outputs = node.setdefault("outputs", [])
        outputs += [{"name": name, "type": t, "links": []} for name, t in EXTRA_OUTPUTS.get(pack_type, ())
                    if name not in {o.get("name") for o in outputs}]
        if pack_type in SAVERS.values():
            node["outputs"] = []  # only savers whose output feeds nothing are converted
        self._set_type(node, node["type"], pack_type, values)

    def merge(self, cfg_key, op_key):
        g = cfg_key[0]
        values = _pack_values(self.widgets(op_key), MERGED, {})
        cfg, op = self.nodes[g][cfg_key[1]], self.nodes[g].pop(op_key[1])
        self.graphs[g]["nodes"] = [n for n in self.graphs[g]["nodes"] if n is not op]
        for link_id in [i for i, link in self.links[g].items() if link["origin_id"] == op["id"]]:
            del self.links[g][link_id]  # the LATENT_OPERATION link into the CFG node
        # model first, then the tonemap's widget inputs (a linked one follows its widget onto the merged node)
        cfg["inputs"] = ([i for i in cfg.get("inputs", []) if i["name"] == "model"]
                         + [i for i in op.get("inputs", []) if "widget" in i])
        for slot, entry in enumerate(cfg["inputs"]):
            if entry.get("link") in self.links[g]:
                self.links[g][entry["link"]].update(target_id=cfg["id"], target_slot=slot)
        self.graphs[g]["links"] = [_link_list(link) if self.list_links[g] else link for link in self.links[g].values()]
        if "size" in cfg and "size" in op:
            cfg["size"] = [max(a, b) for a, b in zip(cfg["size"], op["size"])]
        self._set_type(cfg, "LatentApplyOperationCFG", MERGED, values)
        # Widgets an instance promoted from the removed node now live on the merged node.
        for _, instance in self.instances.get(self.graphs[g].get("id"), []):
            for proxy in instance.get("properties", {}).get("proxyWidgets", []):
                if str(proxy[0]) == str(op["id"]):
                    proxy[0] = str(cfg["id"])


_LINK_FIELDS = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")


def _link_dict(link) -> dict:
    return dict(zip(_LINK_FIELDS, link)) if isinstance(link, list) else link


def _link_list(link: dict) -> list:
    return [link[f] for f in _LINK_FIELDS]
