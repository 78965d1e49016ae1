"""The native-to-pack workflow converter (scripts/workflow_converter.py, scripts/convert_workflow.py): native ACE-Step
graphs in UI and API format, subgraphs included, become the same graphs on the pack's nodes; the result matches the
real server's node definitions and runs through it."""
import copy
import json
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import av
import pytest

from build_workflows import Node, Workflow, to_api, to_ui
from comfy_harness import run_prompt
import workflow_converter as wc
from measure import OUTPUT_DIR
from workflow_prompts import ROOT, expected_samples, prepare

TAGS = "synth pop, female vocals, dreamy, 100 BPM"
LYRICS = "[verse]\nNeon lights they flicker bright\n\n[chorus]\nTurn it up and let it flow"
FRONTEND_ONLY = {"MarkdownNote", "Note", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NATIVE_ACE_TYPES = set(wc.NATIVE)
MCV = [("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]


def song(kind: str, pack: bool) -> Workflow:
    """The official template's graph ("t2a": text to music, "a2a": LoadAudio + VAE encode, denoise 0.5) on native
    nodes, or (pack=True) what the converter must make of it."""
    def t(native, ours):
        return ours if pack else native

    latent = (17, 0) if kind == "t2a" else (68, 0)
    nodes = [
        Node(40, t("CheckpointLoaderSimple", "AceStudioCheckpointLoader"),
             widgets=[("ckpt_name", "ace_step_v1_3.5b.safetensors")] + ([("weight_dtype", "default")] if pack else []),
             outputs=MCV),
        Node(14, t("TextEncodeAceStepAudio", "AceStudioTextEncode"),
             widgets=[("tags", TAGS), ("lyrics", LYRICS), ("lyrics_strength", 0.99)],
             inputs=[("clip", "CLIP", (40, 1))], outputs=[("CONDITIONING", "CONDITIONING")]),
        Node(44, "ConditioningZeroOut", inputs=[("conditioning", "CONDITIONING", (14, 0))],
             outputs=[("CONDITIONING", "CONDITIONING")]),
        Node(51, "ModelSamplingSD3", widgets=[("shift", 5.0)], inputs=[("model", "MODEL", (40, 0))],
             outputs=[("MODEL", "MODEL")]),
        *([] if pack else [Node(50, "LatentOperationTonemapReinhard", widgets=[("multiplier", 0.8)],
                                outputs=[("LATENT_OPERATION", "LATENT_OPERATION")])]),
        Node(49, t("LatentApplyOperationCFG", "AceStudioTonemapReinhard"), widgets=t([], [("multiplier", 0.8)]),
             inputs=[("model", "MODEL", (51, 0))] + t([("operation", "LATENT_OPERATION", (50, 0))], []),
             outputs=[("MODEL", "MODEL")]),
        Node(52, "KSampler", seed_widget="seed",
             widgets=[("seed", 7), ("steps", 50), ("cfg", 5.0), ("sampler_name", "euler"), ("scheduler", "simple"),
                      ("denoise", 1.0 if kind == "t2a" else 0.5)],
             inputs=[("model", "MODEL", (49, 0)), ("positive", "CONDITIONING", (14, 0)),
                     ("negative", "CONDITIONING", (44, 0)), ("latent_image", "LATENT", latent)],
             outputs=[("LATENT", "LATENT")]),
        Node(18, t("VAEDecodeAudio", "AceStudioLatentToAudio"), widgets=t([], [("normalize", True)]),
             inputs=[("samples", "LATENT", (52, 0)), ("vae", "VAE", (40, 2))], outputs=[("AUDIO", "AUDIO")]),
    ]
    if kind == "t2a":
        nodes += [
            Node(17, t("EmptyAceStepLatentAudio", "AceStudioEmptyLatentAudio"),
                 widgets=[("seconds", 120.0), ("batch_size", 1)], outputs=[("LATENT", "LATENT")]),
            Node(59, "SaveAudioMP3", widgets=[("filename_prefix", "tests/converted_t2a"), ("quality", "V0")],
                 inputs=[("audio", "AUDIO", (18, 0))]),
        ]
    else:
        nodes += [
            Node(64, "LoadAudio", widgets=[("audio", "example_song.flac")], ui_only_widgets=[None, None],
                 outputs=[("AUDIO", "AUDIO")]),
            Node(68, t("VAEEncodeAudio", "AceStudioAudioToLatent"),
                 inputs=[("audio", "AUDIO", (64, 0)), ("vae", "VAE", (40, 2))], outputs=[("LATENT", "LATENT")]),
            Node(59, "SaveAudio", widgets=[("filename_prefix", "tests/converted_a2a")],
                 inputs=[("audio", "AUDIO", (18, 0))]),
        ]
    return Workflow(f"native_{kind}", nodes)


def link_ends(graph: dict) -> dict:
    """Link id -> (origin id, origin slot, target id, target slot, type), for list- and dict-form links."""
    fields = ("id", "origin_id", "origin_slot", "target_id", "target_slot", "type")
    rows = [link if isinstance(link, list) else [link[f] for f in fields] for link in graph["links"]]
    return {row[0]: tuple(row[1:6]) for row in rows}


def assert_links_consistent(graph: dict):
    """Every link is named by its origin's output and its target's input at the slots it says, and nothing else."""
    ends = link_ends(graph)
    nodes = {n["id"]: n for n in graph["nodes"]}
    named = set()
    for node in graph["nodes"]:
        for slot, entry in enumerate(node.get("inputs", [])):
            if entry.get("link") is not None:
                assert ends[entry["link"]][2:4] == (node["id"], slot), (node["id"], entry)
                named.add(entry["link"])
        for slot, entry in enumerate(node.get("outputs", [])):
            for link_id in entry.get("links") or []:
                assert ends[link_id][:2] == (node["id"], slot), (node["id"], entry)
    internal = {i for i, e in ends.items() if e[0] in nodes and e[2] in nodes}
    assert internal <= named, f"links that no input names: {internal - named}"


@pytest.mark.parametrize("kind", ["t2a", "a2a"])
def test_ui_format_converts_to_the_expected_graph(kind):
    native = to_ui(song(kind, pack=False))
    before = copy.deepcopy(native)
    result = wc.convert_workflow(native)
    assert native == before, "the input workflow was modified"
    assert result.format == "ui" and result.warnings == []
    converted, expected = result.workflow, to_ui(song(kind, pack=True))
    assert result.changes == [
        "#40 CheckpointLoaderSimple -> AceStudioCheckpointLoader",
        "#14 TextEncodeAceStepAudio -> AceStudioTextEncode",
        "#49 LatentApplyOperationCFG + #50 LatentOperationTonemapReinhard -> AceStudioTonemapReinhard "
        "(keeps the first id)",
        "#18 VAEDecodeAudio -> AceStudioLatentToAudio",
        "#17 EmptyAceStepLatentAudio -> AceStudioEmptyLatentAudio" if kind == "t2a" else
        "#68 VAEEncodeAudio -> AceStudioAudioToLatent",
    ]

    got = {n["id"]: n for n in converted["nodes"]}
    want = {n["id"]: n for n in expected["nodes"]}
    assert set(got) == set(want)
    native_nodes = {n["id"]: n for n in native["nodes"]}
    for node_id, node in want.items():
        for key in ("type", "widgets_values", "properties", "mode", "flags"):
            assert got[node_id][key] == node[key], (node_id, key)
        assert [(i["name"], i["type"]) for i in got[node_id]["inputs"]] == \
               [(i["name"], i["type"]) for i in node["inputs"]], node_id
        assert [(o["name"], o["type"]) for o in got[node_id]["outputs"]] == \
               [(o["name"], o["type"]) for o in node["outputs"]], node_id
        assert got[node_id]["pos"] == native_nodes[node_id]["pos"], "nodes keep their place"
    # The same wiring, on the native workflow's own link ids (the LATENT_OPERATION link is gone).
    assert sorted(link_ends(converted).values()) == sorted(link_ends(expected).values())
    native_links = link_ends(native)
    assert all(native_links[i] == ends for i, ends in link_ends(converted).items())
    assert_links_consistent(converted)
    for key in ("last_node_id", "last_link_id", "groups", "extra", "version"):
        assert converted[key] == native[key]


@pytest.mark.parametrize("kind", ["t2a", "a2a"])
def test_api_format_converts_to_the_expected_prompt(kind):
    result = wc.convert_workflow(to_api(song(kind, pack=False)))
    assert result.format == "api" and result.warnings == [] and len(result.changes) == 5
    assert result.workflow == to_api(song(kind, pack=True))


def widget_inputs(info_node: dict) -> list[tuple[str, dict]]:
    """A node's widget inputs from /object_info, in the frontend's widget order."""
    widgets = []
    for section in ("required", "optional"):
        for name, spec in info_node["input"].get(section, {}).items():
            if isinstance(spec[0], list) or spec[0] in WIDGET_TYPES:
                widgets.append((name, spec[1] if len(spec) > 1 else {}))
    return widgets


def assert_loads(workflow: dict, info: dict, skip=()):
    """What the frontend needs to rebuild each node: a known type and one saved value per widget (plus the seed's
    control value); upload widgets keep extra UI values. `skip`: node types to leave out (API nodes the test server
    does not load)."""
    graphs = [workflow] + workflow.get("definitions", {}).get("subgraphs", [])
    subgraph_ids = {g["id"] for g in graphs[1:]}
    for graph in graphs:
        for node in graph["nodes"]:
            if node["type"] in FRONTEND_ONLY or node["type"] in subgraph_ids or node["type"] in skip:
                continue
            assert node["type"] in info, f"#{node['id']}: unknown node type {node['type']}"
            widgets = widget_inputs(info[node["type"]])
            count = len(widgets) + sum(bool(opts.get("control_after_generate")) for _, opts in widgets)
            values = node.get("widgets_values", [])
            if any(opts.get("audio_upload") for _, opts in widgets):
                assert len(values) >= count, node
            else:
                assert len(values) == count, (node["id"], node["type"], values)
            assert node["properties"]["Node name for S&R"] == node["type"]


def test_tables_match_the_servers_nodes(comfy_server):
    """The converter's knowledge of both node sets is what the running server defines, and every pack node takes
    its native counterpart's sockets in the same order (the converter keeps input slots and links)."""
    info = comfy_server.get_json("/object_info")

    def sockets(node):
        widgets = {name for name, _ in widget_inputs(info[node])}
        return [n for n in info[node]["input_order"]["required"] if n not in widgets]

    assert wc.NEWER_NATIVE == set(wc.NATIVE) - set(info)  # newer ones are tested in test_user_trial.py
    for native, spec in wc.NATIVE.items():
        if native in wc.NEWER_NATIVE:
            continue
        assert tuple(name for name, _ in widget_inputs(info[native])) == spec.widgets, native
        assert (info[native]["display_name"] or native) == spec.display_name, native
    for pack, widgets in wc.PACK_WIDGETS.items():
        # A text widget without a default starts empty in the frontend.
        inputs = {**info[pack]["input"]["required"], **info[pack]["input"].get("optional", {})}
        defaults = [(name, opts.get("default", "" if inputs[name][0] == "STRING" else None))
                    for name, opts in widget_inputs(info[pack])]
        assert defaults == [(name, default) for name, default in widgets if name != wc.CONTROL], pack
        controls = [name for name, opts in widget_inputs(info[pack]) if opts.get("control_after_generate")]
        names = [name for name, _ in widgets]
        assert ([names[names.index(wc.CONTROL) - 1]] if wc.CONTROL in names else []) == controls, pack
    for native, pack in [*wc.RENAMED.items(), *wc.RENAMED_15.items()]:
        if native in wc.NEWER_NATIVE:
            continue
        assert sockets(pack) == sockets(native) and info[pack]["output"] == info[native]["output"], native
    batch = dict(widget_inputs(info["AceStudioEmptyLatentAudio"]))["batch_size"]
    assert batch["max"] == wc.MAX_BATCH_SIZE
    assert sockets(wc.MERGED) == ["model"] and info[wc.MERGED]["output"] == info["LatentApplyOperationCFG"]["output"]


@pytest.mark.parametrize("kind", ["t2a", "a2a"])
def test_converted_ui_workflow_loads(comfy_server, kind):
    assert_loads(wc.convert_workflow(to_ui(song(kind, pack=False))).workflow, comfy_server.get_json("/object_info"))


@pytest.mark.parametrize("kind", ["t2a", "a2a"])
def test_converted_api_workflow_runs(comfy_server, tiny_checkpoint, kind):
    seconds = 4.0
    prompt = prepare(wc.convert_workflow(to_api(song(kind, pack=False))).workflow, tiny_checkpoint, seconds)
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "success", f"{result.error}\n{comfy_server.log_tail()}"
    [saved] = result.output_files("audio")
    path = OUTPUT_DIR / "comfy-base" / "output" / saved["subfolder"] / saved["filename"]
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        rate, channels = stream.rate, stream.channels
        meta = {k.lower(): v for k, v in container.metadata.items()}
        samples = sum(frame.samples for frame in container.decode(stream))
    assert (rate, channels) == (44100, 2)
    # a2a: the whole input song, padded to whole latent frames; the MP3's encoder delay and padding are trimmed
    assert samples == expected_samples(prompt, seconds)
    assert json.loads(meta["prompt"])["40"]["class_type"] == "AceStudioCheckpointLoader"


def test_mixed_and_partial_workflows_warn_and_keep_what_cannot_move():
    """An ACE-Step graph next to a Stable Audio one: only the ACE-Step side moves; what stays is listed."""
    prompt = to_api(song("t2a", pack=False))
    prompt["40"]["_meta"]["title"] = "My ACE loader"
    prompt["17"]["inputs"]["batch_size"] = 100
    prompt.update({
        "80": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "stable_audio_open_1.0.safetensors"}},
        "81": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["52", 0], "vae": ["80", 2]}},
        "82": {"class_type": "LatentApplyOperationCFG", "inputs": {"model": ["80", 0], "operation": ["50", 0]}},
        "83": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "ace-step-v1.ckpt"}},
    })
    result = wc.convert_workflow(prompt)
    out = result.workflow
    assert {k: out[k]["class_type"] for k in ("40", "14", "17", "18", "49", "50", "80", "81", "82", "83")} == {
        "40": "AceStudioCheckpointLoader", "14": "AceStudioTextEncode", "17": "AceStudioEmptyLatentAudio",
        "18": "AceStudioLatentToAudio", "49": "LatentApplyOperationCFG", "50": "LatentOperationTonemapReinhard",
        "80": "CheckpointLoaderSimple", "81": "VAEDecodeAudio", "82": "LatentApplyOperationCFG",
        "83": "CheckpointLoaderSimple"}
    assert out["40"]["_meta"]["title"] == "My ACE loader", "a title the user chose stays"
    assert out["14"]["_meta"]["title"] == "AceStudioTextEncode"
    assert out["17"]["inputs"]["batch_size"] == wc.MAX_BATCH_SIZE
    assert sorted(result.warnings) == sorted([
        "#83 CheckpointLoaderSimple left as is: the pack loads .safetensors checkpoints, not 'ace-step-v1.ckpt'",
        "#80 CheckpointLoaderSimple left as is: its file name does not say ACE-Step and its CLIP feeds no "
        "TextEncodeAceStepAudio",
        "#17 batch_size 100 lowered to the pack's maximum 64",
        "#50 LatentOperationTonemapReinhard left as is with #49 LatentApplyOperationCFG: it also feeds other nodes",
        "#50 LatentOperationTonemapReinhard left as is with #82 LatentApplyOperationCFG: it also feeds other nodes",
        "#81 VAEDecodeAudio left as is: its VAE does not come from a converted ACE-Step checkpoint loader",
    ])


def test_workflow_without_ace_step_is_left_alone():
    stable_audio = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "stable_audio_open_1.0.safetensors"}},
        "2": {"class_type": "EmptyLatentAudio", "inputs": {"seconds": 10.0, "batch_size": 1}},
        "3": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "LatentOperationTonemapReinhard", "inputs": {"multiplier": 1.0}},
        "5": {"class_type": "LatentApplyOperationCFG", "inputs": {"model": ["1", 0], "operation": ["4", 0]}},
    }
    result = wc.convert_workflow(stable_audio)
    assert result.workflow == stable_audio and result.changes == []
    assert result.warnings == ["no native ACE-Step nodes found: nothing to convert"]
    with pytest.raises(ValueError, match="not a ComfyUI workflow"):
        wc.convert_workflow({"hello": "world"})


def _subgraph(sid: str, name: str, inputs: list, outputs: list, nodes: list, links: list) -> dict:
    def slots(kind, pairs):
        return [{"id": f"{sid}-{kind}{i}", "name": n, "type": t, "linkIds": []} for i, (n, t) in enumerate(pairs)]

    return {"id": sid, "name": name, "version": 1, "nodes": nodes, "groups": [],
            "inputs": slots("in", inputs), "outputs": slots("out", outputs),
            "links": [dict(zip(("id", "origin_id", "origin_slot", "target_id", "target_slot", "type"), link))
                      for link in links]}


def _ui_node(node_id: int, node_type: str, inputs=(), outputs=(), widgets=()) -> dict:
    """inputs: (name, type, link id); outputs: (name, type, [link ids])."""
    return {"id": node_id, "type": node_type, "pos": [node_id * 10, 0], "size": [200, 60], "flags": {}, "order": 0,
            "mode": 0, "inputs": [{"name": n, "type": t, "link": link} for n, t, link in inputs],
            "outputs": [{"name": n, "type": t, "links": links} for n, t, links in outputs],
            "properties": {"Node name for S&R": node_type}, "widgets_values": list(widgets)}


def test_subgraphs_and_reroutes_are_followed():
    """The loader inside one subgraph (its file name says nothing), its CLIP through a Reroute into another subgraph
    that holds the ACE text encoder and a VAE decode: the loader is recognised through both boundaries, and every
    VAE decode whose VAE comes from it, inside or outside the subgraphs, moves to the pack; one fed by the other VAE
    that leaves the same subgraph stays."""
    loader = _subgraph("sg-loader", "Loader", [], MCV + [("VAE", "VAE")], [
        _ui_node(1, "CheckpointLoaderSimple", outputs=[("MODEL", "MODEL", [1]), ("CLIP", "CLIP", [2]),
                                                        ("VAE", "VAE", [3])], widgets=["my_song_model.safetensors"]),
        _ui_node(2, "VAELoader", outputs=[("VAE", "VAE", [4])], widgets=["other_vae.safetensors"]),
    ], [(1, 1, 0, -20, 0, "MODEL"), (2, 1, 1, -20, 1, "CLIP"), (3, 1, 2, -20, 2, "VAE"), (4, 2, 0, -20, 3, "VAE")])
    encode = _subgraph("sg-encode", "Encode", [("clip", "CLIP"), ("vae", "VAE"), ("samples", "LATENT")],
                       [("AUDIO", "AUDIO"), ("CONDITIONING", "CONDITIONING")], [
        _ui_node(1, "TextEncodeAceStepAudio", inputs=[("clip", "CLIP", 1)],
                 outputs=[("CONDITIONING", "CONDITIONING", [4])], widgets=[TAGS, LYRICS, 1.0]),
        _ui_node(2, "VAEDecodeAudio", inputs=[("samples", "LATENT", 2), ("vae", "VAE", 3)],
                 outputs=[("AUDIO", "AUDIO", [5])]),
    ], [(1, -10, 0, 1, 0, "CLIP"), (3, -10, 1, 2, 1, "VAE"), (2, -10, 2, 2, 0, "LATENT"),
        (4, 1, 0, -20, 1, "CONDITIONING"), (5, 2, 0, -20, 0, "AUDIO")])
    workflow = {
        "last_node_id": 15, "last_link_id": 8, "groups": [], "config": {}, "extra": {}, "version": 0.4,
        "nodes": [
            _ui_node(10, "sg-loader", outputs=[("MODEL", "MODEL", []), ("CLIP", "CLIP", [1]), ("VAE", "VAE", [2, 6]),
                                               ("VAE", "VAE", [7])]),
            _ui_node(11, "Reroute", inputs=[("", "*", 1)], outputs=[("", "CLIP", [3])]),
            _ui_node(12, "sg-encode", inputs=[("clip", "CLIP", 3), ("vae", "VAE", 2), ("samples", "LATENT", 4)],
                     outputs=[("AUDIO", "AUDIO", []), ("CONDITIONING", "CONDITIONING", [])]),
            _ui_node(13, "EmptyAceStepLatentAudio", outputs=[("LATENT", "LATENT", [4, 5, 8])], widgets=[30.0, 1]),
            _ui_node(14, "VAEDecodeAudio", inputs=[("samples", "LATENT", 5), ("vae", "VAE", 6)],
                     outputs=[("AUDIO", "AUDIO", [])]),
            _ui_node(15, "VAEDecodeAudio", inputs=[("samples", "LATENT", 8), ("vae", "VAE", 7)],
                     outputs=[("AUDIO", "AUDIO", [])]),
        ],
        "links": [[1, 10, 1, 11, 0, "CLIP"], [2, 10, 2, 12, 1, "VAE"], [3, 11, 0, 12, 0, "CLIP"],
                  [4, 13, 0, 12, 2, "LATENT"], [5, 13, 0, 14, 0, "LATENT"], [6, 10, 2, 14, 1, "VAE"],
                  [7, 10, 3, 15, 1, "VAE"], [8, 13, 0, 15, 0, "LATENT"]],
        "definitions": {"subgraphs": [loader, encode]},
    }
    result = wc.convert_workflow(workflow)
    assert result.warnings == [
        "#15 VAEDecodeAudio left as is: its VAE does not come from a converted ACE-Step checkpoint loader"]
    out = result.workflow
    types = {(g.get("name", "root"), n["id"]): n["type"]
             for g in [out] + out["definitions"]["subgraphs"] for n in g["nodes"]}
    assert types == {("root", 10): "sg-loader", ("root", 11): "Reroute", ("root", 12): "sg-encode",
                     ("root", 13): "AceStudioEmptyLatentAudio", ("root", 14): "AceStudioLatentToAudio",
                     ("root", 15): "VAEDecodeAudio", ("Loader", 1): "AceStudioCheckpointLoader",
                     ("Loader", 2): "VAELoader", ("Encode", 1): "AceStudioTextEncode",
                     ("Encode", 2): "AceStudioLatentToAudio"}
    assert "subgraph 'Encode' #2 VAEDecodeAudio -> AceStudioLatentToAudio" in result.changes
    assert out["links"] == workflow["links"] and out["definitions"]["subgraphs"][1]["links"] == encode["links"]


TEMPLATES = find_spec("comfyui_workflow_templates_media_other")
TEMPLATE_DIR = Path(TEMPLATES.origin).parent / "templates" if TEMPLATES else None
OFFICIAL = ["audio_ace_step_1_t2a_song", "audio_ace_step_1_t2a_instrumentals", "audio_ace_step_1_m2m_editing",
            "05_audio_ace_step_1_t2a_song_subgraphed"]


def official(name: str) -> dict:
    """An official ACE-Step template as ComfyUI 0.3.75 installs it (the workflow-templates package)."""
    if TEMPLATE_DIR is None:
        pytest.skip("ComfyUI's workflow-templates package is not installed (scripts/setup.sh installs it)")
    return json.loads((TEMPLATE_DIR / f"{name}.json").read_text())


@pytest.mark.parametrize("name", OFFICIAL)
def test_official_templates_convert_and_load(comfy_server, name):
    template = official(name)
    result = wc.convert_workflow(template)
    assert result.warnings == [] and len(result.changes) == (6 if "subgraphed" in name else 5)
    graphs = [result.workflow] + result.workflow.get("definitions", {}).get("subgraphs", [])
    assert not NATIVE_ACE_TYPES & {n["type"] for g in graphs for n in g["nodes"]}
    for graph in graphs:
        assert_links_consistent(graph)
    assert_loads(result.workflow, comfy_server.get_json("/object_info"))


def test_subgraphed_template_keeps_promoted_and_linked_widgets():
    """In the subgraphed template the tonemap's multiplier comes from a subgraph input: that link now ends on the
    merged node's multiplier; a widget promoted from the removed node follows it to the merged node."""
    template = official("05_audio_ace_step_1_t2a_song_subgraphed")
    [instance] = [n for n in template["nodes"] if n["type"] == template["definitions"]["subgraphs"][0]["id"]]
    instance["properties"]["proxyWidgets"].append(["50", "multiplier"])
    out = wc.convert_workflow(template).workflow
    inner = out["definitions"]["subgraphs"][0]
    merged = next(n for n in inner["nodes"] if n["id"] == 49)
    assert merged["type"] == "AceStudioTonemapReinhard" and merged["widgets_values"] == [1]
    assert [(i["name"], i["link"]) for i in merged["inputs"]] == [("model", 113), ("multiplier", 138)]
    assert link_ends(inner)[138] == (-10, 0, 49, 1, "FLOAT")
    assert 114 not in link_ends(inner) and all(n["id"] != 50 for n in inner["nodes"])
    [promoted] = [n for n in out["nodes"] if n["type"] == inner["id"]]
    assert promoted["properties"]["proxyWidgets"][-1] == ["49", "multiplier"]


def ui_to_api(workflow: dict, info: dict) -> dict:
    """What the frontend queues for a one-level UI workflow: widget values by the server's widget order (the seed's
    control value skipped), linked inputs as [origin id, slot], a PrimitiveNode's value in place of its link; notes
    and bypassed nodes left out."""
    links = link_ends(workflow)
    primitives = {n["id"]: n["widgets_values"][0] for n in workflow["nodes"] if n["type"] == "PrimitiveNode"}
    prompt = {}
    for node in workflow["nodes"]:
        if node["type"] in FRONTEND_ONLY or node.get("mode", 0) != 0:
            continue
        values, inputs = iter(node.get("widgets_values", [])), {}
        for name, opts in widget_inputs(info[node["type"]]):
            inputs[name] = next(values)
            if opts.get("control_after_generate"):
                next(values)
        for entry in node.get("inputs", []):
            if entry.get("link") is not None:
                origin, slot = links[entry["link"]][:2]
                inputs[entry["name"]] = primitives[origin] if origin in primitives else [str(origin), slot]
        prompt[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return prompt


def test_converted_official_template_runs(comfy_server, tiny_checkpoint):
    """The official text-to-song template, converted and queued as the frontend queues it, runs on the pack."""
    ui = wc.convert_workflow(official("audio_ace_step_1_t2a_song")).workflow
    prompt = prepare(ui_to_api(ui, comfy_server.get_json("/object_info")), tiny_checkpoint, seconds=4.0)
    [saver] = [node for node in prompt.values() if node["class_type"] == "SaveAudioMP3"]
    saver["inputs"]["filename_prefix"] = "tests/official_t2a_song"
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "success", f"{result.error}\n{comfy_server.log_tail()}"
    [saved] = result.output_files("audio")
    with av.open(str(OUTPUT_DIR / "comfy-base" / "output" / saved["subfolder"] / saved["filename"])) as container:
        assert sum(frame.samples for frame in container.decode(audio=0)) == expected_samples(prompt, 4.0)


def test_command_converts_a_file_and_refuses_a_converted_one(tmp_path):
    """The command runs without ComfyUI (isolated interpreter, outside ComfyUI's folder)."""
    source = tmp_path / "native.json"
    source.write_text(json.dumps(to_ui(song("a2a", pack=False))))
    run = subprocess.run([sys.executable, "-I", str(ROOT / "scripts" / "convert_workflow.py"), str(source)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert run.returncode == 0, run.stderr
    target = tmp_path / "native_acestudio.json"
    assert json.loads(target.read_text()) == wc.convert_workflow(json.loads(source.read_text())).workflow
    assert run.stdout.splitlines()[0] == f"{source}: UI format, 5 change(s)"
    assert "  #68 VAEEncodeAudio -> AceStudioAudioToLatent" in run.stdout.splitlines()
    again = subprocess.run([sys.executable, "-I", str(ROOT / "scripts" / "convert_workflow.py"), str(target),
                            str(tmp_path / "twice.json")], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "nothing to convert" in again.stdout
    assert not (tmp_path / "twice.json").exists()
