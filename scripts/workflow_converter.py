"""Converts a workflow built from ComfyUI's native ACE-Step v1 nodes to the same workflow on this pack's nodes.

Both of ComfyUI's formats are handled: the UI format the frontend saves (node ids, positions, links, groups and
subgraph definitions kept) and the API format `/prompt` takes. Plain Python without ComfyUI imports, so
`scripts/convert_workflow.py` runs without ComfyUI; the tables below are checked against a live server's
/object_info by tests/test_workflow_convert.py.

Mapping (native -> pack):
- CheckpointLoaderSimple -> AceStudioCheckpointLoader, when it loads ACE-Step: its file name says ACE-Step, or its CLIP
  feeds a TextEncodeAceStepAudio.
- EmptyAceStepLatentAudio -> AceStudioEmptyLatentAudio; TextEncodeAceStepAudio -> AceStudioTextEncode.
- VAEEncodeAudio -> AceStudioAudioToLatent, VAEDecodeAudio -> AceStudioLatentToAudio (normalize on, as the native
  node always normalises), when their VAE comes from a converted loader (Stable Audio's VAE needs the native nodes).
- LatentApplyOperationCFG fed by a LatentOperationTonemapReinhard that feeds nothing else -> one
  AceStudioTonemapReinhard (the same pre-CFG tonemap of cond - uncond).
- SaveAudioAdvanced (the current official templates' saver, newer than ComfyUI 0.3.75) -> AceStudioSaveAudio with
  the same format and quality, when its AUDIO output feeds nothing (the pack's saver has no output).
Every other node (KSampler, ModelSamplingSD3, ConditioningZeroOut, LoadAudio, SaveAudio, SaveAudioMP3, ...) stays: it
takes the pack's MODEL, CLIP, VAE and LATENT as it takes ComfyUI's own.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Native:
    display_name: str  # the frontend's default title, replaced along with the type
    widgets: tuple[str, ...]  # in the node's widget order


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
    "SaveAudioAdvanced": Native("Save Audio (Advanced)", ("filename_prefix", "format", "format.quality")),
}
NEWER_NATIVE = {"SaveAudioAdvanced"}  # not in ComfyUI 0.3.75, so the tests cannot check it against a live server
# The pack's widgets as (name, default), in widget order; the default fills a widget the native node lacks.
PACK_WIDGETS = {
    "AceStudioCheckpointLoader": (("ckpt_name", None), ("weight_dtype", "default")),
    "AceStudioEmptyLatentAudio": (("seconds", 120.0), ("batch_size", 1)),
    "AceStudioTextEncode": (("tags", ""), ("lyrics", ""), ("lyrics_strength", 1.0)),
    "AceStudioTonemapReinhard": (("multiplier", 1.0),),
    "AceStudioAudioToLatent": (),
    "AceStudioLatentToAudio": (("normalize", True),),
    "AceStudioSaveAudio": (("filename_prefix", "audio/ACE-Step"), ("format", "flac"), ("quality", "V0")),
}
RENAMED = {
    "CheckpointLoaderSimple": "AceStudioCheckpointLoader",
    "EmptyAceStepLatentAudio": "AceStudioEmptyLatentAudio",
    "TextEncodeAceStepAudio": "AceStudioTextEncode",
    "VAEEncodeAudio": "AceStudioAudioToLatent",
    "VAEDecodeAudio": "AceStudioLatentToAudio",
}
MERGED = "AceStudioTonemapReinhard"  # LatentApplyOperationCFG + LatentOperationTonemapReinhard
SAVERS = {"SaveAudioAdvanced": "AceStudioSaveAudio"}  # the pack's saver has no AUDIO output: only unused ones move
INPUT_NAMES = {"format.quality": "quality"}  # a native input's name -> the pack's (every other name is the same)
MAX_BATCH_SIZE = 64  # AceStudioEmptyLatentAudio's limit; the native node allows 4096
ACE_ONLY = {"EmptyAceStepLatentAudio", "TextEncodeAceStepAudio"}  # nodes that exist only for ACE-Step
ACE_FILE_NAME = re.compile(r"ace[-_ .]?step", re.IGNORECASE)
PACK_CHECKPOINT_SUFFIXES = (".safetensors", ".sft")  # what the pack's loader lists besides original-layout folders
PACK_ID = "comfyui-acestep-studio"  # the registry id the frontend records in a node's properties
# A regex, not tomllib: the command also runs on Python 3.10.
PACK_VERSION = re.search(r'^version\s*=\s*"([^"]+)"', (Path(__file__).resolve().parent.parent / "pyproject.toml")
                         .read_text(encoding="utf-8"), re.MULTILINE)[1]
SUBGRAPH_INPUT, SUBGRAPH_OUTPUT = -10, -20  # ids of a subgraph's input and output nodes in its links
REROUTE = "Reroute"


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
    """The converted copy of `workflow` (left unchanged), with one line per change and per node left as is."""
    fmt = detect_format(workflow)
    converted = copy.deepcopy(workflow)
    graph = _UiWorkflow(converted) if fmt == "ui" else _ApiWorkflow(converted)
    changes, warnings = _convert(graph)
    return Conversion(converted, fmt, changes, warnings)


def _convert(graph) -> tuple[list[str], list[str]]:
    keys = graph.keys()
    types = {k: graph.type(k) for k in keys}
    clip_sources = {src for k in keys if types[k] == "TextEncodeAceStepAudio" for src in graph.origins(k, "clip")}
    loaders, unrecognised, changes, warnings = set(), [], [], []
    for k in keys:
        if types[k] != "CheckpointLoaderSimple":
            continue
        name = graph.widgets(k).get("ckpt_name")
        if not ((isinstance(name, str) and ACE_FILE_NAME.search(name)) or k in clip_sources):
            unrecognised.append(k)
            continue
        if isinstance(name, str) and not name.lower().endswith(PACK_CHECKPOINT_SUFFIXES):
            warnings.append(f"{graph.label(k)} CheckpointLoaderSimple left as is: the pack loads .safetensors "
                            f"checkpoints, not {name!r}")
            continue
        loaders.add(k)
    if not loaders and not ACE_ONLY & set(types.values()):
        return [], ["no native ACE-Step nodes found: nothing to convert"]
    warnings += [f"{graph.label(k)} CheckpointLoaderSimple left as is: its file name does not say ACE-Step and its "
                 f"CLIP feeds no TextEncodeAceStepAudio" for k in unrecognised]

    for k in keys:
        t = types[k]
        if t == "CheckpointLoaderSimple" and k not in loaders:
            continue
        if t in ("VAEEncodeAudio", "VAEDecodeAudio"):
            sources = graph.origins(k, "vae")
            if not sources or not set(sources) <= loaders:
                warnings.append(f"{graph.label(k)} {t} left as is: its VAE does not come from a converted ACE-Step "
                                f"checkpoint loader")
                continue
        if t in RENAMED:
            overrides = {}
            batch = graph.widgets(k).get("batch_size")
            if t == "EmptyAceStepLatentAudio" and isinstance(batch, int) and batch > MAX_BATCH_SIZE:
                overrides["batch_size"] = MAX_BATCH_SIZE
                warnings.append(f"{graph.label(k)} batch_size {batch} lowered to the pack's maximum {MAX_BATCH_SIZE}")
            graph.retype(k, RENAMED[t], overrides)
            changes.append(f"{graph.label(k)} {t} -> {RENAMED[t]}")
        elif t == "LatentApplyOperationCFG":
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
        elif "acestep" in t.lower():
            warnings.append(f"{graph.label(k)} {t} left as is: the pack has no equivalent")
    return changes, warnings


def _pack_values(native_values: dict, pack_type: str, overrides: dict) -> dict:
    """The pack node's widget values (or, in the API format, links into widget inputs) by name, in widget order."""
    values = {**native_values, **overrides}
    return {name: values.get(name, default) for name, default in PACK_WIDGETS[pack_type]}


def _is_default_title(title, native_type: str) -> bool:
    return title in (native_type, NATIVE[native_type].display_name)


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int)


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
        return {INPUT_NAMES.get(k, k): v for k, v in self.prompt[key].get("inputs", {}).items()}

    def origins(self, key, input_name) -> list:
        value = self.prompt[key].get("inputs", {}).get(input_name)
        return [str(value[0])] if _is_link(value) and str(value[0]) in self.prompt else []

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
        values = _pack_values(inputs, pack_type, overrides)
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
        if isinstance(values, dict):
            return {INPUT_NAMES.get(k, k): v for k, v in values.items()}
        names = [INPUT_NAMES.get(n, n) for n in NATIVE[node["type"]].widgets] if node["type"] in NATIVE else []
        return dict(zip(names, values))

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
        for entry in node.get("inputs", []):  # a widget's input slot (linked or not) follows the widget's new name
            entry["name"] = INPUT_NAMES.get(entry["name"], entry["name"])
            if "widget" in entry:
                entry["widget"]["name"] = INPUT_NAMES.get(entry["widget"]["name"], entry["widget"]["name"])
        if pack_type in SAVERS.values():
            node["outputs"] = []  # only savers whose output feeds nothing are converted
        self._set_type(node, node["type"], pack_type, _pack_values(self.widgets(key), pack_type, overrides))

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
