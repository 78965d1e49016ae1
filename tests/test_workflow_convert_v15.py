"""The workflow converter on ComfyUI's four official ACE-Step 1.5 templates (Comfy-Org/workflow_templates
templates/audio_ace_step_1_5_checkpoint.json, audio_ace_step_1_5_split.json, audio_ace_step_1_5_split_4b.json,
audio_ace_step_1_5_split_llm.json), rebuilt here node for node (types, widget value order, links, the subgraph of the
split_llm one; long texts shortened, notes left out): both formats convert to exactly the pack graph the pack's own
workflows/ace_step15_turbo_*.json use, the result matches the real server's node definitions and runs on it with the
tiny 1.5 files; what cannot be converted is refused, by the command too."""
import copy
import json
import subprocess
import sys

import av
import pytest

from build_workflows import Node, Workflow, to_api, to_ui
from comfy_harness import run_prompt
import workflow_converter as wc
from measure import OUTPUT_DIR
from test_workflow_convert import _subgraph, assert_links_consistent, assert_loads, link_ends, ui_to_api
from workflow_prompts import ROOT, V15_SAMPLE_RATE, expected_samples, prepare, tiny15_files  # noqa: F401

TEMPLATES = ["checkpoint", "split", "split_4b", "split_llm"]
TAGS = "Neo-Soul: A warm, organic neo-soul track dripping with live instrumentation and effortless groove."
LYRICS = "[Verse 1]\nLate night glow on your skin\nWindow cracked, city hums again\n\n[Chorus]\nStay right there"
LM = {"split": "qwen_1.7b_ace15.safetensors", "split_4b": "qwen_4b_ace15.safetensors",
      "split_llm": "qwen_4b_ace15.safetensors"}
SOCKETS = {"MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "AUDIO", "*"}
SUBGRAPH_ID = "7aaae2b3-4151-4452-854b-653cf02fb752"
# The split_llm subgraph's inputs, in order (the duration's is named "value", labelled "duration"), and the values
# its instance node holds for them (promoted widgets).
SUBGRAPH_INPUTS = [("tags", "STRING", TAGS), ("lyrics", "STRING", LYRICS), ("timesignature", "COMBO", "4"),
                   ("language", "COMBO", "en"), ("keyscale", "COMBO", "E minor"),
                   ("generate_audio_codes", "BOOLEAN", True), ("cfg_scale", "FLOAT", 2),
                   ("temperature", "FLOAT", 0.85), ("top_p", "FLOAT", 0.9), ("top_k", "INT", 0),
                   ("unet_name", "COMBO", "acestep_v1.5_turbo.safetensors"),
                   ("clip_name1", "COMBO", "qwen_0.6b_ace15.safetensors"), ("clip_name2", "COMBO", LM["split_llm"]),
                   ("vae_name", "COMBO", "ace_1.5_vae.safetensors"), ("value", "FLOAT", 120)]
FROM_SUBGRAPH = {name: (-10, slot) for slot, (name, _, _) in enumerate(SUBGRAPH_INPUTS)}
LITERAL = {name: value for name, _, value in SUBGRAPH_INPUTS}
# Widgets the frontend saves but the test server does not load (API nodes are off there) or that are not ACE-Step's.
ROOT_ONLY = {"GeminiNode", "RegexExtract", "PreviewAny"}


def core(kind: str, pack: bool, api: bool) -> list[Node]:
    """The template's ACE-Step graph (for split_llm: its subgraph's nodes) on native nodes, or (pack=True) what the
    converter must make of it. api=True: as the frontend queues it (PrimitiveNode values and the subgraph's inputs
    written into the widgets they feed)."""
    def t(native, ours):
        return ours if pack else native

    llm = kind == "split_llm"
    seed = 27660246420877 if llm else 31

    def fed(name: str, value, typ: str):
        """(widget, linked input) for a widget the template feeds from its subgraph's inputs (split_llm, UI)."""
        link = [] if api or not llm or name not in FROM_SUBGRAPH else [(name, typ, FROM_SUBGRAPH[name])]
        return (name, LITERAL.get(name, value) if llm else value), link

    def widgets_and_links(pairs):
        widgets, links = [], []
        for name, value, typ in pairs:
            widget, link = fed(name, value, typ)
            widgets.append(widget)
            links += link
        return widgets, links

    seed_link = [] if api else [("seed", "INT", (102, 0))]
    duration_link = [("duration", "FLOAT", (110, 0))] if llm else [] if api else [("duration", "FLOAT", (99, 0))]
    seconds_link = [("seconds", "FLOAT", (110, 0))] if llm else [] if api else [("seconds", "FLOAT", (99, 0))]
    text, text_links = widgets_and_links([("tags", TAGS, "STRING"), ("lyrics", LYRICS, "STRING")])
    meta, meta_links = widgets_and_links([("timesignature", "4", "COMBO"), ("language", "en", "COMBO"),
                                          ("keyscale", "E minor", "COMBO")])
    lm_values = [("generate_audio_codes", True, "BOOLEAN"), ("cfg_scale", 2, "FLOAT"), ("temperature", 0.85, "FLOAT"),
                 ("top_p", 0.9, "FLOAT"), ("top_k", 0, "INT")] if llm else []
    lm, lm_links = widgets_and_links(lm_values)
    if pack:
        # the pack's order: seed last; cfg_scale is lm_cfg_scale; planner_caption off as the native node; defaults
        # (the native node's) for what an older template lacks
        lm = dict(lm) or {"generate_audio_codes": True, "cfg_scale": 2.0, "temperature": 0.85, "top_p": 0.9, "top_k": 0}
        encode_widgets = text + [("bpm", 190), ("duration", 120)] + meta + [
            ("generate_audio_codes", lm["generate_audio_codes"]), ("planner_caption", False),
            ("lm_cfg_scale", lm["cfg_scale"]), ("temperature", lm["temperature"]), ("top_p", lm["top_p"]),
            ("top_k", lm["top_k"]), ("min_p", 0.0), ("seed", seed)]
        lm_links = [("lm_cfg_scale" if name == "cfg_scale" else name, typ, src) for name, typ, src in lm_links]
    else:
        encode_widgets = text + [("seed", seed), ("bpm", 190), ("duration", 120)] + meta + lm
    clip = (97, 1) if kind == "checkpoint" else (105, 0)
    encode_inputs = [("clip", "CLIP", clip)] + (
        text_links + seed_link + duration_link + meta_links + lm_links if llm else seed_link + duration_link)
    nodes = [
        Node(94, t("TextEncodeAceStepAudio1.5", "AceStudio15TextEncode"), widgets=encode_widgets, seed_widget="seed",
             inputs=encode_inputs, outputs=[("CONDITIONING", "CONDITIONING")] + t([], [("metadata", "STRING")])),
        Node(78, "ModelSamplingAuraFlow", widgets=[("shift", 3)],
             inputs=[("model", "MODEL", (97, 0) if kind == "checkpoint" else (104, 0))], outputs=[("MODEL", "MODEL")]),
        Node(18, t("VAEDecodeAudio", "AceStudio15LatentToAudio"), widgets=t([], [("normalize", True)]),
             inputs=[("samples", "LATENT", (3, 0)), ("vae", "VAE", (97, 2) if kind == "checkpoint" else (106, 0))],
             outputs=[("AUDIO", "AUDIO")]),
        Node(98, t("EmptyAceStep1.5LatentAudio", "AceStudio15EmptyLatentAudio"),
             widgets=[("seconds", 120), ("batch_size", 1)], inputs=seconds_link, outputs=[("LATENT", "LATENT")]),
        Node(3, "KSampler", seed_widget="seed",
             widgets=[("seed", seed), ("steps", 8), ("cfg", 1), ("sampler_name", "euler"), ("scheduler", "simple"),
                      ("denoise", 1)],
             inputs=[("model", "MODEL", (78, 0)), ("positive", "CONDITIONING", (94, 0)),
                     ("negative", "CONDITIONING", (47, 0)), ("latent_image", "LATENT", (98, 0))] + seed_link,
             outputs=[("LATENT", "LATENT")]),
        Node(47, "ConditioningZeroOut", inputs=[("conditioning", "CONDITIONING", (94, 0))],
             outputs=[("CONDITIONING", "CONDITIONING")]),
    ]
    if kind == "checkpoint":
        nodes.append(Node(97, t("CheckpointLoaderSimple", "AceStudio15CheckpointLoader"),
                          widgets=[("ckpt_name", "ace_step_1.5_turbo_aio.safetensors")]
                          + t([], [("weight_dtype", "default")]),
                          outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]))
    else:
        unet, unet_links = widgets_and_links([("unet_name", "acestep_v1.5_turbo.safetensors", "COMBO")])
        clips, clip_links = widgets_and_links([("clip_name1", "qwen_0.6b_ace15.safetensors", "COMBO"),
                                               ("clip_name2", LM[kind], "COMBO")])
        vae, vae_links = widgets_and_links([("vae_name", "ace_1.5_vae.safetensors", "COMBO")])
        if pack:
            clips = [("text_encoder_name", clips[0][1]), ("lm_name", clips[1][1])]
            clip_links = [({"clip_name1": "text_encoder_name", "clip_name2": "lm_name"}[name], typ, src)
                          for name, typ, src in clip_links]
        nodes += [
            Node(104, t("UNETLoader", "AceStudio15DiffusionModelLoader"), widgets=unet + [("weight_dtype", "default")],
                 inputs=unet_links + t([], [("vae", "VAE", (106, 0))]), outputs=[("MODEL", "MODEL")]),
            Node(105, t("DualCLIPLoader", "AceStudio15TextEncoderLoader"),
                 widgets=clips + t([("type", "ace"), ("device", "default")], []), inputs=clip_links,
                 outputs=[("CLIP", "CLIP")]),
            Node(106, t("VAELoader", "AceStudio15VaeLoader"), widgets=vae, inputs=vae_links, outputs=[("VAE", "VAE")]),
        ]
    if not api:
        nodes.append(Node(102, "PrimitiveNode", widgets=[("value", seed)], outputs=[("INT", "INT")], title="seed"))
    if llm:
        value_link = [] if api else [("value", "FLOAT", FROM_SUBGRAPH["value"])]
        nodes.append(Node(110, "PrimitiveFloat", widgets=[("value", 120)], inputs=value_link,
                          outputs=[("FLOAT", "FLOAT")], title="Song Duration"))
    elif not api:
        nodes.append(Node(99, "PrimitiveNode", widgets=[("value", 120)], outputs=[("FLOAT", "FLOAT")],
                          title="Song Duration"))
    if api or not llm:
        saver = {"checkpoint": 104, "split": 107, "split_4b": 107, "split_llm": 1}[kind]
        prefix = "audio/ace-step-1.5" if llm else "audio/ComfyUI"
        nodes.append(Node(saver, "SaveAudioMP3", widgets=[("filename_prefix", prefix), ("quality", "V0")],
                          inputs=[("audio", "AUDIO", (18, 0))]))
    return nodes


def _widget_links(graph: dict):
    """The frontend's marks on links into widgets: the input's widget name, and a PrimitiveNode's output widget."""
    nodes = {n["id"]: n for n in graph["nodes"]}
    ends = link_ends(graph)
    for node in graph["nodes"]:
        for entry in node["inputs"]:
            if entry["type"] not in SOCKETS:
                entry["widget"] = {"name": entry["name"]}
                origin = nodes.get(ends[entry["link"]][0]) if entry.get("link") is not None else None
                if origin is not None and origin["type"] == "PrimitiveNode":
                    origin["outputs"][0]["widget"] = {"name": entry["name"]}
        if node["type"] == "PrimitiveNode":
            node["properties"] = {"Run widget replace on values": False}


def template(kind: str, pack: bool = False) -> dict:
    """The template in the UI format (pack=True: the expected conversion)."""
    if kind != "split_llm":
        workflow = to_ui(Workflow(f"ace15_{kind}", core(kind, pack, api=False)))
        _widget_links(workflow)
        return workflow
    # The subgraph: its nodes' links, those from its inputs (-10) and the AUDIO to its output (-20), dict form.
    inner = core(kind, pack, api=False)
    links, link_id = [], 248
    for node in inner:
        for slot, (_, typ, (src, src_slot)) in enumerate(node.inputs):
            link_id += 1
            links.append((link_id, src, src_slot, node.id, slot, typ))
    links.append((link_id + 1, 18, 0, -20, 0, "AUDIO"))
    sub_ui = to_ui(Workflow("inner", [Node(n.id, n.type, n.widgets, [i for i in n.inputs if i[2][0] > 0], n.outputs,
                                           n.title, n.seed_widget) for n in inner]))
    by_id = {n.id: n for n in inner}
    for node in sub_ui["nodes"]:  # every input back in its slot, on the links above
        node["inputs"] = [{"name": name, "type": typ, "link": next(
            link[0] for link in links if link[3] == node["id"] and link[4] == slot)}
            for slot, (name, typ, _) in enumerate(by_id[node["id"]].inputs)]
        for slot, output in enumerate(node["outputs"]):
            output["links"] = [link[0] for link in links if link[1] == node["id"] and link[2] == slot]
    sub = _subgraph(SUBGRAPH_ID, "Text to Audio (ACE-Step 1.5)", [(n, t) for n, t, _ in SUBGRAPH_INPUTS],
                    [("AUDIO", "AUDIO")], sub_ui["nodes"], links)
    sub["state"] = {"lastGroupId": 0, "lastNodeId": 110, "lastLinkId": link_id + 1, "lastRerouteId": 0}
    _widget_links(sub)
    root = to_ui(Workflow("ace15_split_llm", [
        Node(11, "GeminiNode", widgets=[("prompt", "A blues song."), ("model", "gemini-3-pro-preview"),
                                        ("seed", 1046438542938789),
                                        ("system_prompt", "Part 1: tags --- Part 2: lyrics")],
             seed_widget="seed", outputs=[("STRING", "STRING")]),
        Node(7, "PreviewAny", inputs=[("source", "*", (11, 0))], ui_only_widgets=[None, None, None]),
        *[Node(n, "RegexExtract", widgets=[("string", ""), ("regex_pattern", pattern), ("mode", "First Group"),
                                           ("case_insensitive", True), ("multiline", False), ("dotall", False),
                                           ("group_index", 1)],
               inputs=[("string", "STRING", (11, 0))], outputs=[("STRING", "STRING")])
          for n, pattern in ((18, r"(?sm)^(.*?)^---$(.*)"), (19, r"(?s)(?<=\n---\n)([\s\S]*)$"))],
        Node(2, SUBGRAPH_ID, widgets=[(n, v) for n, _, v in SUBGRAPH_INPUTS],
             inputs=[("tags", "STRING", (18, 0)), ("lyrics", "STRING", (19, 0))], outputs=[("AUDIO", "AUDIO")]),
        Node(1, "SaveAudioMP3", widgets=[("filename_prefix", "audio/ace-step-1.5"), ("quality", "V0")],
             inputs=[("audio", "AUDIO", (2, 0))]),
    ]))
    _widget_links(root)
    [instance] = [n for n in root["nodes"] if n["id"] == 2]
    instance["inputs"].append({"label": "duration", "name": "value", "type": "FLOAT", "widget": {"name": "value"},
                               "link": None})
    instance["properties"]["proxyWidgets"] = [["-1", n] for n, _, _ in SUBGRAPH_INPUTS] + [
        ["102", "control_after_generate"], ["102", "value"]]
    root["definitions"] = {"subgraphs": [sub]}
    return root


def api_form(kind: str, pack: bool = False) -> dict:
    """The template as the frontend queues it (split_llm: with tags and lyrics typed in, as the Gemini prompt writer,
    an API node, needs an account and the network)."""
    return to_api(Workflow(f"ace15_{kind}", core(kind, pack, api=True)))


def graphs_of(workflow: dict) -> list[dict]:
    return [workflow] + workflow.get("definitions", {}).get("subgraphs", [])


def node_view(graph: dict) -> dict:
    return {n["id"]: (n["type"], n["widgets_values"], [(i["name"], i["type"], "widget" in i) for i in n["inputs"]],
                      [(o["name"], o["type"]) for o in n["outputs"]]) for n in graph["nodes"]}


EXPECTED_CHANGES = {
    "checkpoint": ["#97 CheckpointLoaderSimple -> AceStudio15CheckpointLoader"],
    "split": ["#104 UNETLoader -> AceStudio15DiffusionModelLoader",
              "#105 DualCLIPLoader -> AceStudio15TextEncoderLoader",
              "#106 VAELoader -> AceStudio15VaeLoader",
              "#106 VAE linked into #104 AceStudio15DiffusionModelLoader's vae input"],
}
EXPECTED_CHANGES["split_4b"] = EXPECTED_CHANGES["split_llm"] = EXPECTED_CHANGES["split"]
COMMON_CHANGES = ["#94 TextEncodeAceStepAudio1.5 -> AceStudio15TextEncode",
                  "#18 VAEDecodeAudio -> AceStudio15LatentToAudio",
                  "#98 EmptyAceStep1.5LatentAudio -> AceStudio15EmptyLatentAudio"]


def expected_changes(kind: str, ui: bool) -> list[str]:
    prefix = "subgraph 'Text to Audio (ACE-Step 1.5)' " if ui and kind == "split_llm" else ""
    return sorted(prefix + line.replace(" #104 ", f" {prefix}#104 ")
                  for line in EXPECTED_CHANGES[kind] + COMMON_CHANGES)


@pytest.mark.parametrize("kind", TEMPLATES)
def test_ui_template_converts_to_the_expected_graph(kind):
    native = template(kind)
    before = copy.deepcopy(native)
    result = wc.convert_workflow(native)
    assert native == before, "the input workflow was modified"
    assert result.format == "ui" and result.warnings == []
    assert sorted(result.changes) == expected_changes(kind, ui=True)
    expected = template(kind, pack=True)
    for got, want, old in zip(graphs_of(result.workflow), graphs_of(expected), graphs_of(native)):
        assert node_view(got) == node_view(want)
        # The same wiring: the native links on their ids, plus the VAE link into the diffusion model loader.
        assert sorted(link_ends(got).values()) == sorted(link_ends(want).values())
        old_links = link_ends(old)
        assert all(old_links[i] == ends for i, ends in link_ends(got).items() if i in old_links)
        assert len(link_ends(got)) == len(old_links) + (kind != "checkpoint" and "nodes" in got
                                                       and any(n["id"] == 104 for n in got["nodes"]))
        assert_links_consistent(got)
        assert {n["id"]: n["pos"] for n in got["nodes"]} == {n["id"]: n["pos"] for n in old["nodes"]}
    packed = {n["id"]: n for g in graphs_of(result.workflow) for n in g["nodes"]}
    assert all(packed[i]["properties"]["cnr_id"] == wc.PACK_ID for i in (94, 98, 18))
    new_ids = set(link_ends(graphs_of(result.workflow)[-1])) - set(link_ends(graphs_of(native)[-1]))
    if kind != "checkpoint":  # a fresh link id, above every id in use (in any graph) so far
        [new_id] = new_ids
        assert new_id > max(i for g in graphs_of(native) for i in link_ends(g))
    if kind == "split_llm":  # the subgraph's interface and the instance's promoted widgets stay as they were
        assert result.workflow["nodes"] == native["nodes"]
        sub, old_sub = result.workflow["definitions"]["subgraphs"][0], native["definitions"]["subgraphs"][0]
        assert sub["inputs"] == old_sub["inputs"] and sub["state"]["lastLinkId"] == max(new_ids)


@pytest.mark.parametrize("kind", TEMPLATES)
def test_api_template_converts_to_the_expected_prompt(kind):
    result = wc.convert_workflow(api_form(kind))
    assert result.format == "api" and result.warnings == []
    assert sorted(result.changes) == expected_changes(kind, ui=False)
    assert result.workflow == api_form(kind, pack=True)


@pytest.mark.parametrize("kind", TEMPLATES)
def test_converted_template_matches_the_server(comfy_server, kind):
    """Every converted node is one the server defines, with one saved value per widget; every link into a pack node
    ends on an input the server's node has, of the type it takes."""
    info = comfy_server.get_json("/object_info")
    converted = wc.convert_workflow(template(kind)).workflow
    assert_loads(converted, info, skip=ROOT_ONLY)
    for graph in graphs_of(converted):
        for node in graph["nodes"]:
            if not node["type"].startswith("AceStudio"):
                continue
            spec = {**info[node["type"]]["input"]["required"], **info[node["type"]]["input"].get("optional", {})}
            for entry in node["inputs"]:
                assert entry["name"] in spec, (node["type"], entry["name"])
                declared = spec[entry["name"]][0]
                assert entry["type"] == ("COMBO" if isinstance(declared, list) else declared), (node["type"], entry)
            outputs = info[node["type"]]["output"]
            assert [o["type"] for o in node["outputs"]] == outputs[:len(node["outputs"])], node["type"]
    api = wc.convert_workflow(api_form(kind)).workflow
    for node in api.values():
        spec = info[node["class_type"]]["input"]
        assert set(node["inputs"]) <= set(spec["required"]) | set(spec.get("optional", {})), node["class_type"]
        assert set(spec["required"]) <= set(node["inputs"]), node["class_type"]


def _decoded_samples(comfy_server, prompt: dict, prefix: str) -> int:
    [saver] = [node for node in prompt.values() if node["class_type"] == "SaveAudioMP3"]
    saver["inputs"]["filename_prefix"] = f"tests/{prefix}"
    result = run_prompt(comfy_server, prompt, timeout=600)
    assert result.status == "success", f"{result.error}\n{comfy_server.log_tail()}"
    [saved] = result.output_files("audio")
    with av.open(str(OUTPUT_DIR / "comfy-base" / "output" / saved["subfolder"] / saved["filename"])) as container:
        assert container.streams.audio[0].rate == V15_SAMPLE_RATE
        return sum(frame.samples for frame in container.decode(audio=0))


@pytest.mark.parametrize("kind", TEMPLATES)
def test_converted_api_template_runs(comfy_server, tiny15_files, kind):
    """The converted prompt on the tiny 1.5 files (all-in-one or split, LM included), CI-sized: 2 s, 1 step; the MP3
    decodes to the latent's length."""
    seconds = 2.0
    # (prepare writes the shortest duration the prompt takes, 10 s, and the latent's length in place of the links
    # from split_llm's PrimitiveFloat, which then feeds nothing and is not run)
    prompt = prepare(wc.convert_workflow(api_form(kind)).workflow, tiny15_files, seconds, steps=1)
    assert _decoded_samples(comfy_server, prompt, f"converted15_{kind}") == expected_samples(prompt, seconds)


@pytest.mark.parametrize("kind", ["checkpoint", "split"])
def test_converted_ui_template_runs(comfy_server, tiny15_files, kind):
    """The converted UI workflow queued as the frontend queues it (the PrimitiveNodes' seed and duration written into
    the widgets they feed), on the tiny files."""
    converted = wc.convert_workflow(template(kind)).workflow
    for node in converted["nodes"]:
        if node.get("title") == "Song Duration":
            node["widgets_values"][0] = 10.0  # the prompt's shortest duration; the latent is cut below
    prompt = ui_to_api(converted, comfy_server.get_json("/object_info"))
    assert prompt["94"]["inputs"]["duration"] == prompt["98"]["inputs"]["seconds"] == 10.0
    assert prompt["94"]["inputs"]["seed"] == prompt["3"]["inputs"]["seed"] == 31
    prompt = prepare(prompt, tiny15_files, 2.0, steps=1)
    assert _decoded_samples(comfy_server, prompt, f"converted15_ui_{kind}") == expected_samples(prompt, 2.0)


# ------------------------------------------------------------------------------------------------ refused
def _prompt(**nodes) -> dict:
    return {key.lstrip("n"): {"class_type": t, "inputs": inputs} for key, (t, inputs) in nodes.items()}


def refused(workflow: dict) -> list[str]:
    before = copy.deepcopy(workflow)
    with pytest.raises(wc.ConversionError) as caught:
        wc.convert_workflow(workflow)
    assert workflow == before
    return caught.value.reasons


def test_a_v1_and_15_mix_is_refused():
    prompt = api_form("checkpoint")
    prompt["200"] = {"class_type": "TextEncodeAceStepAudio", "inputs": {"clip": ["97", 1], "tags": "x", "lyrics": "",
                                                                        "lyrics_strength": 1.0}}
    [reason] = refused(prompt)
    assert reason.startswith("the workflow mixes ACE-Step v1 (TextEncodeAceStepAudio) and ACE-Step 1.5 "
                             "(EmptyAceStep1.5LatentAudio, TextEncodeAceStepAudio1.5, #97 CheckpointLoaderSimple)")
    v1_loader = api_form("checkpoint")
    v1_loader["97"]["inputs"]["ckpt_name"] = "ace_step_v1_3.5b.safetensors"
    assert "ACE-Step v1 (#97 CheckpointLoaderSimple 'ace_step_v1_3.5b.safetensors')" in refused(v1_loader)[0]


def test_native_ace_nodes_without_an_equivalent_are_refused():
    prompt = api_form("split")
    prompt["300"] = {"class_type": "AceStep2LyricsTiming", "inputs": {"conditioning": ["94", 0]}}
    prompt["301"] = {"class_type": "ReferenceTimbreAudio", "inputs": {"conditioning": ["94", 0]}}
    assert refused(prompt) == [
        "#300 AceStep2LyricsTiming: the pack has no equivalent of this native ACE-Step node",
        "#301 ReferenceTimbreAudio has no latent: the pack's Reference Timbre needs the reference audio's latent "
        "(link one, or remove the node, which then does nothing)"]
    v1 = _prompt(n1=("CheckpointLoaderSimple", {"ckpt_name": "ace_step_v1_3.5b.safetensors"}),
                 n2=("EmptyAceStepLatentAudio", {"seconds": 10.0, "batch_size": 1}),
                 n3=("AceStepFutureNode", {"latent": ["2", 0]}))
    assert refused(v1) == ["#3 AceStepFutureNode: the pack has no equivalent of this native ACE-Step node"]


def test_15_loaders_whose_files_cannot_be_told_are_refused():
    gguf = api_form("split")
    gguf["104"]["inputs"]["unet_name"] = "acestep_v1.5_turbo-Q4_K_M.gguf"
    assert refused(gguf) == ["#104 UNETLoader loads 'acestep_v1.5_turbo-Q4_K_M.gguf', a file type the pack's "
                             "ACE-Step 1.5 loaders do not load: they take .safetensors or .sft files"]
    two_lms = api_form("split")
    two_lms["105"]["inputs"]["clip_name1"] = "qwen_4b_ace15.safetensors"
    assert refused(two_lms) == ["#105 DualCLIPLoader loads two files named as the lm ('qwen_4b_ace15.safetensors', "
                                "'qwen_1.7b_ace15.safetensors'): ACE-Step 1.5 takes one text encoder and one 5 Hz LM"]
    lone_lm = api_form("split")
    lone_lm["105"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "qwen_1.7b_ace15.safetensors",
                                                             "type": "ace", "device": "default"}}
    assert refused(lone_lm)[0].startswith("#105 CLIPLoader loads only 'qwen_1.7b_ace15.safetensors', which is named "
                                          "as the 5 Hz LM")
    ckpt = api_form("checkpoint")
    ckpt["97"]["inputs"]["ckpt_name"] = "my_song_model.ckpt"  # recognised by its CLIP feeding the 1.5 encoder
    assert refused(ckpt) == ["#97 CheckpointLoaderSimple loads 'my_song_model.ckpt', a file type the pack's "
                             "ACE-Step 1.5 loaders do not load: they take .safetensors or .sft files"]
    swapped_linked = template("split_llm")
    [sub] = swapped_linked["definitions"]["subgraphs"]
    [clip_loader] = [n for n in sub["nodes"] if n["id"] == 105]
    clip_loader["widgets_values"][:2] = clip_loader["widgets_values"][1::-1]
    assert refused(swapped_linked)[0].startswith(
        "subgraph 'Text to Audio (ACE-Step 1.5)' #105 DualCLIPLoader's clip_name1 is the 5 Hz LM and clip_name2 the "
        "text encoder, and one of them is linked: swap them")


def test_15_values_and_loaders_the_pack_reads_differently():
    """A swapped plain pair is put back in order, a one-file CLIPLoader has no LM, numbers past the pack's limits move
    to them (a duration of 0 is auto in both), a Stable Audio loader beside stays with a warning."""
    prompt = api_form("split")
    prompt["105"]["inputs"].update(clip_name1=LM["split"], clip_name2="qwen_0.6b_ace15.safetensors")
    prompt["94"]["inputs"].update(bpm=12, duration=1500.0, top_p=5.0)
    prompt["98"]["inputs"]["batch_size"] = 200
    prompt["400"] = {"class_type": "CheckpointLoaderSimple",
                     "inputs": {"ckpt_name": "stable_audio_open_1.0.safetensors"}}
    result = wc.convert_workflow(prompt)
    out = result.workflow
    assert out["105"]["inputs"] == {"text_encoder_name": "qwen_0.6b_ace15.safetensors", "lm_name": LM["split"]}
    assert (out["94"]["inputs"]["bpm"], out["94"]["inputs"]["duration"], out["94"]["inputs"]["top_p"],
            out["98"]["inputs"]["batch_size"]) == (30, 600.0, 1.0, 64)
    assert out["400"] == prompt["400"]
    assert sorted(result.warnings) == sorted([
        "#94 bpm 12 raised to the pack's minimum 30", "#94 duration 1500.0 lowered to the pack's maximum 600.0",
        "#94 top_p 5.0 lowered to the pack's maximum 1.0", "#98 batch_size 200 lowered to the pack's maximum 64",
        "#400 CheckpointLoaderSimple left as is: its file name does not say ACE-Step 1.5 and its CLIP feeds no "
        "TextEncodeAceStepAudio1.5"])
    one = api_form("split")
    one["105"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "my_encoder.safetensors", "type": "ace",
                                                         "device": "default"}, "_meta": {"title": "Load CLIP"}}
    one["94"]["inputs"]["duration"] = 0
    out = wc.convert_workflow(one).workflow
    assert out["105"] == {"class_type": "AceStudio15TextEncoderLoader",
                          "_meta": {"title": "AceStudio15TextEncoderLoader"},
                          "inputs": {"text_encoder_name": "my_encoder.safetensors", "lm_name": "none"}}
    assert out["94"]["inputs"]["duration"] == 0


def test_every_15_text_encode_value_maps_by_name():
    """Values other than the defaults, so that a value dropped for the pack's default shows (both formats)."""
    values = {"tags": "blues", "lyrics": "[verse]\nla", "seed": 5, "bpm": 95, "duration": 42.5, "timesignature": "6",
              "language": "ja", "keyscale": "Db major", "generate_audio_codes": False, "cfg_scale": 3.5,
              "temperature": 0.7, "top_p": 0.95, "top_k": 40, "min_p": 0.05}
    prompt = api_form("split")
    prompt["94"]["inputs"].update(values)
    converted = wc.convert_workflow(prompt).workflow["94"]["inputs"]
    renamed = {{"cfg_scale": "lm_cfg_scale"}.get(k, k): v for k, v in values.items()}
    assert converted == {"clip": ["105", 0], **renamed, "planner_caption": False}
    ui = template("split")
    [node] = [n for n in ui["nodes"] if n["id"] == 94]
    node["widgets_values"] = [values[n] if n in values else "randomize"
                              for n in wc.NATIVE["TextEncodeAceStepAudio1.5"].widgets]
    [node] = [n for n in wc.convert_workflow(ui).workflow["nodes"] if n["id"] == 94]
    order = [name for name, _ in wc.PACK_WIDGETS["AceStudio15TextEncode"]]
    assert dict(zip(order, node["widgets_values"])) == {**renamed, "planner_caption": False, "control_after_generate":
                                                        "randomize"}
    assert order[-2:] == ["seed", "control_after_generate"]


def test_reference_timbre_and_vae_encode_follow_the_15_vae():
    prompt = api_form("split")
    prompt.update(_prompt(n500=("LoadAudio", {"audio": "example_song.flac"}),
                          n501=("VAEEncodeAudio", {"audio": ["500", 0], "vae": ["106", 0]}),
                          n502=("ReferenceTimbreAudio", {"conditioning": ["94", 0], "latent": ["501", 0]})))
    prompt["3"]["inputs"]["positive"] = ["502", 0]
    out = wc.convert_workflow(prompt).workflow
    assert (out["501"]["class_type"], out["502"]["class_type"]) == ("AceStudio15AudioToLatent",
                                                                    "AceStudio15ReferenceTimbre")
    assert out["502"]["inputs"] == {"conditioning": ["94", 0], "latent": ["501", 0]}


def test_command_refuses_an_unconvertible_15_workflow(tmp_path):
    source = tmp_path / "mixed.json"
    prompt = api_form("split")
    prompt["105"]["inputs"]["clip_name2"] = "qwen_0.6b_ace15.safetensors"
    source.write_text(json.dumps(prompt))
    run = subprocess.run([sys.executable, "-I", str(ROOT / "scripts" / "convert_workflow.py"), str(source)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert run.returncode == 3 and run.stdout == ""
    assert run.stderr.splitlines() == [
        f"{source}: cannot convert, nothing written:",
        "  #105 DualCLIPLoader loads two files named as the text encoder ('qwen_0.6b_ace15.safetensors', "
        "'qwen_0.6b_ace15.safetensors'): ACE-Step 1.5 takes one text encoder and one 5 Hz LM"]
    assert list(tmp_path.iterdir()) == [source]
    source.write_text(json.dumps(template("split_llm")))
    ok = subprocess.run([sys.executable, "-I", str(ROOT / "scripts" / "convert_workflow.py"), str(source)],
                        capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "mixed_acestudio.json").read_text()) == wc.convert_workflow(
        template("split_llm")).workflow
