"""Builds the drag-and-drop workflows in workflows/ (UI format) and workflows/api/ (API format) from one spec each,
so the two formats can never drift apart.

    .venv/bin/python scripts/build_workflows.py          # writes the files
    .venv/bin/python scripts/build_workflows.py --check  # exits 1 if a file differs from its spec
"""
from __future__ import annotations

import argparse
import json
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UI_DIR = ROOT / "workflows"
API_DIR = ROOT / "workflows" / "api"
PACK_VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


@dataclass
class Node:
    id: int
    type: str
    widgets: list[tuple[str, object]] = field(default_factory=list)  # in the node's widget order
    inputs: list[tuple[str, str, tuple[int, int]]] = field(default_factory=list)  # (name, type, (node id, slot))
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (name, type)
    title: str | None = None
    seed_widget: str | None = None  # a widget followed by the frontend's "control after generate" value
    ui_only_widgets: list[object] = field(default_factory=list)  # extra values the frontend keeps (upload button...)
    size: tuple[int, int] = (320, 120)


@dataclass
class Note:
    text: str
    size: tuple[int, int] = (420, 320)


@dataclass
class Workflow:
    name: str
    nodes: list[Node]
    note: Note | None = None


def to_api(wf: Workflow) -> dict:
    prompt = {}
    for n in wf.nodes:
        inputs = {name: value for name, value in n.widgets}
        for name, _type, (src, slot) in n.inputs:
            inputs[name] = [str(src), slot]
        prompt[str(n.id)] = {"class_type": n.type, "inputs": inputs, "_meta": {"title": n.title or n.type}}
    return prompt


def _pack_of(node_type: str) -> dict:
    """What the frontend saves to tell which node pack a node comes from (it looks unknown ones up online)."""
    if node_type.startswith("AceStudio"):
        return {"cnr_id": "comfyui-acestep-studio", "ver": PACK_VERSION}
    return {"cnr_id": "comfy-core", "ver": "0.3.75"}


def _layout(nodes: list[Node]) -> dict[int, list[int]]:
    """Left to right by dependency depth, stacked top to bottom within a column."""
    by_id = {n.id: n for n in nodes}
    depth: dict[int, int] = {}

    def depth_of(n: Node) -> int:
        if n.id not in depth:
            depth[n.id] = 1 + max((depth_of(by_id[src]) for _, _, (src, _) in n.inputs), default=-1)
        return depth[n.id]

    positions, column_bottom = {}, {}
    for n in sorted(nodes, key=lambda n: (depth_of(n), n.id)):
        col = depth_of(n)
        y = column_bottom.get(col, 60)
        positions[n.id] = [40 + 460 * col, y]
        column_bottom[col] = y + n.size[1] + 80
    return positions


def to_ui(wf: Workflow) -> dict:
    links, ui_nodes = [], []
    link_id = 0
    out_links: dict[tuple[int, int], list[int]] = {}
    in_links: dict[tuple[int, str], int] = {}
    for n in wf.nodes:
        for name, typ, (src, slot) in n.inputs:
            link_id += 1
            links.append([link_id, src, slot, n.id, [i[0] for i in n.inputs].index(name), typ])
            out_links.setdefault((src, slot), []).append(link_id)
            in_links[(n.id, name)] = link_id
    order = {n.id: i for i, n in enumerate(wf.nodes)}
    positions = _layout(wf.nodes)
    for n in wf.nodes:
        values = []
        for name, value in n.widgets:
            values.append(value)
            if name == n.seed_widget:
                values.append("fixed")
        values += n.ui_only_widgets
        ui_nodes.append({
            "id": n.id, "type": n.type, "pos": positions[n.id],
            "size": list(n.size), "flags": {}, "order": order[n.id], "mode": 0,
            "inputs": [{"name": name, "type": typ, "link": in_links[(n.id, name)]} for name, typ, _ in n.inputs],
            "outputs": [{"name": name, "type": typ, "links": out_links.get((n.id, slot), []), "slot_index": slot}
                        for slot, (name, typ) in enumerate(n.outputs)],
            "properties": {"Node name for S&R": n.type, **_pack_of(n.type)},
            "widgets_values": values,
            **({"title": n.title} if n.title else {}),
        })
    last_id = max(n.id for n in wf.nodes)
    if wf.note is not None:
        last_id += 1
        ui_nodes.append({
            "id": last_id, "type": "MarkdownNote", "pos": [40, -40 - wf.note.size[1]], "size": list(wf.note.size), "flags": {},
            "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
            "widgets_values": [wf.note.text], "title": "How to use this workflow",
        })
    return {"last_node_id": last_id, "last_link_id": link_id, "nodes": ui_nodes, "links": links, "groups": [],
            "config": {}, "extra": {"ds": {"scale": 0.55, "offset": [60, 460]}}, "version": 0.4}


REAL_CHECKPOINT = "ace_step_v1_3.5b.safetensors"
LOADER_WIDGETS = [("ckpt_name", REAL_CHECKPOINT), ("weight_dtype", "default")]
SONG_TAGS = ("funk, pop, soul, rock, melodic, guitar, drums, bass, keyboard, percussion, 105 BPM, energetic, upbeat, "
             "groovy, vibrant, dynamic")
SONG_LYRICS = """[verse]
Neon lights they flicker bright
City hums in dead of night
Rhythms pulse through concrete veins
Lost in echoes of refrains

[chorus]
Turn it up and let it flow
Feel the fire let it grow
In this rhythm we belong
Hear the night sing out our song"""

KNOBS = """
**Knobs**
- *Empty ACE-Step Latent Audio*: song length (ACE-Step was trained on up to 240 s).
- *ACE-Step Tags + Lyrics*: style tags; lyrics with [verse]/[chorus]/[bridge] lines, any of 17 languages per line
  (Chinese, Japanese, Korean are romanised for you); lyrics_strength below 1 lets the tags lead.
- *ModelSamplingSD3 shift*: higher = more time on coarse structure (3-6).
- *Vocal Volume (Reinhard Tonemap)*: tames the guidance; lower = softer vocals.
- *KSampler*: 50 steps, cfg 5, euler/simple as in ComfyUI's official ACE-Step template.

Put `ace_step_v1_3.5b.safetensors` in `models/checkpoints/` (or the original ACE-Step folder).
"""


def _text_to_music(name: str, tags: str, lyrics: str, seconds: float, title: str, intro: str) -> Workflow:
    return Workflow(
        name,
        nodes=[
            Node(1, "AceStudioCheckpointLoader", widgets=LOADER_WIDGETS,
                 outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
            Node(2, "ModelSamplingSD3", widgets=[("shift", 5.0)], inputs=[("model", "MODEL", (1, 0))],
                 outputs=[("MODEL", "MODEL")]),
            Node(3, "AceStudioTonemapReinhard", widgets=[("multiplier", 1.0)], inputs=[("model", "MODEL", (2, 0))],
                 outputs=[("MODEL", "MODEL")]),
            Node(4, "AceStudioTextEncode", widgets=[("tags", tags), ("lyrics", lyrics), ("lyrics_strength", 0.99)],
                 inputs=[("clip", "CLIP", (1, 1))], outputs=[("CONDITIONING", "CONDITIONING")], size=(420, 360)),
            Node(5, "ConditioningZeroOut", inputs=[("conditioning", "CONDITIONING", (4, 0))],
                 outputs=[("CONDITIONING", "CONDITIONING")]),
            Node(6, "AceStudioEmptyLatentAudio", widgets=[("seconds", seconds), ("batch_size", 1)],
                 outputs=[("LATENT", "LATENT")]),
            Node(7, "KSampler",
                 widgets=[("seed", 42), ("steps", 50), ("cfg", 5.0), ("sampler_name", "euler"),
                          ("scheduler", "simple"), ("denoise", 1.0)],
                 inputs=[("model", "MODEL", (3, 0)), ("positive", "CONDITIONING", (4, 0)),
                         ("negative", "CONDITIONING", (5, 0)), ("latent_image", "LATENT", (6, 0))],
                 outputs=[("LATENT", "LATENT")], seed_widget="seed", size=(320, 260)),
            Node(8, "AceStudioLatentToAudio", widgets=[("normalize", True)],
                 inputs=[("samples", "LATENT", (7, 0)), ("vae", "VAE", (1, 2))], outputs=[("AUDIO", "AUDIO")]),
            Node(9, "AceStudioSaveAudio",
                 widgets=[("filename_prefix", f"audio/{name}"), ("format", "flac"), ("quality", "V0")],
                 inputs=[("audio", "AUDIO", (8, 0))], ui_only_widgets=[None], size=(320, 200)),
        ],
        note=Note(f"## {title}\n{intro}\n{KNOBS}"),
    )


ORIGINAL_KNOBS = """
**Knobs** (defaults are the original ACE-Step app's)
- *seeds*: "1,2,3" makes three songs, one per seed; empty = random (the seeds output tells which).
- *duration*: seconds; -1 = random 30-240 s as in the original app (drawn from the first seed).
- *steps* 60, *scheduler* euler/heun/pingpong, *omega_scale* 10 ("granularity": higher = crisper detail).
- *cfg_type* apg, *guidance_scale* 15, applied in the middle *guidance_interval* 0.5 of the steps.
- *use_erg_tag / use_erg_lyric / use_erg_diffusion*: the unconditional pass sees attention-flattened tags, lyrics
  and transformer instead of nothing.
- *guidance_scale_text / _lyric* both above 1: double guidance (text, then lyrics).

Put `ace_step_v1_3.5b.safetensors` in `models/checkpoints/` (or the original ACE-Step folder).
"""


def _original_quality() -> Workflow:
    return Workflow(
        "ace_step_original_quality",
        nodes=[
            Node(1, "AceStudioCheckpointLoader", widgets=LOADER_WIDGETS,
                 outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
            Node(2, "AceStudioTextEncode", widgets=[("tags", SONG_TAGS), ("lyrics", SONG_LYRICS),
                                                     ("lyrics_strength", 1.0)],
                 inputs=[("clip", "CLIP", (1, 1))], outputs=[("CONDITIONING", "CONDITIONING")], size=(420, 360)),
            Node(3, "AceStudioOriginalSampler",
                 widgets=[("seeds", "42"), ("duration", 120.0), ("steps", 60), ("scheduler", "euler"),
                          ("cfg_type", "apg"), ("guidance_scale", 15.0), ("omega_scale", 10.0),
                          ("guidance_interval", 0.5), ("guidance_interval_decay", 0.0), ("min_guidance_scale", 3.0),
                          ("use_erg_tag", True), ("use_erg_lyric", True), ("use_erg_diffusion", True),
                          ("guidance_scale_text", 0.0), ("guidance_scale_lyric", 0.0), ("oss_steps", "")],
                 inputs=[("model", "MODEL", (1, 0)), ("positive", "CONDITIONING", (2, 0))],
                 outputs=[("LATENT", "LATENT"), ("seeds", "STRING")], size=(340, 520)),
            Node(4, "AceStudioLatentToAudio", widgets=[("normalize", True)],
                 inputs=[("samples", "LATENT", (3, 0)), ("vae", "VAE", (1, 2))], outputs=[("AUDIO", "AUDIO")]),
            Node(5, "AceStudioSaveAudio",
                 widgets=[("filename_prefix", "audio/ace_step_original_quality"), ("format", "flac"),
                          ("quality", "V0")],
                 inputs=[("audio", "AUDIO", (4, 0))], ui_only_widgets=[None], size=(320, 200)),
        ],
        note=Note("## ACE-Step: original quality\nOne node samples exactly as the original ACE-Step app (APG, ERG, "
                  "guidance interval, omega, its schedule).\n" + ORIGINAL_KNOBS),
    )


def _original_custom_sampling() -> Workflow:
    return Workflow(
        "ace_step_original_custom_sampling",
        nodes=[
            Node(1, "AceStudioCheckpointLoader", widgets=LOADER_WIDGETS,
                 outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
            Node(2, "AceStudioTextEncode", widgets=[("tags", SONG_TAGS), ("lyrics", SONG_LYRICS),
                                                     ("lyrics_strength", 1.0)],
                 inputs=[("clip", "CLIP", (1, 1))], outputs=[("CONDITIONING", "CONDITIONING")], size=(420, 360)),
            Node(3, "AceStudioErgNegative", widgets=[("use_erg_tag", True), ("use_erg_lyric", True)],
                 inputs=[("positive", "CONDITIONING", (2, 0))], outputs=[("CONDITIONING", "CONDITIONING")]),
            Node(4, "AceStudioTextOnlyConditioning", widgets=[("use_erg_lyric", True)],
                 inputs=[("positive", "CONDITIONING", (2, 0))], outputs=[("CONDITIONING", "CONDITIONING")]),
            Node(5, "AceStudioOriginalGuider",
                 widgets=[("cfg_type", "apg"), ("guidance_scale", 15.0), ("guidance_interval", 0.5),
                          ("guidance_interval_decay", 0.0), ("min_guidance_scale", 3.0), ("use_erg_diffusion", True),
                          ("guidance_scale_text", 0.0), ("guidance_scale_lyric", 0.0)],
                 inputs=[("model", "MODEL", (1, 0)), ("positive", "CONDITIONING", (2, 0)),
                         ("negative", "CONDITIONING", (3, 0)), ("text_only", "CONDITIONING", (4, 0))],
                 outputs=[("GUIDER", "GUIDER")], size=(340, 330)),
            Node(6, "AceStudioOriginalSamplerSelect", widgets=[("scheduler", "euler"), ("omega_scale", 10.0)],
                 outputs=[("SAMPLER", "SAMPLER")]),
            Node(7, "AceStudioOriginalSchedule", widgets=[("steps", 60), ("oss_steps", "")],
                 inputs=[("model", "MODEL", (1, 0))], outputs=[("SIGMAS", "SIGMAS")]),
            Node(8, "AceStudioSeedsNoise", widgets=[("seeds", "42")],
                 outputs=[("NOISE", "NOISE"), ("seeds", "STRING")]),
            Node(9, "AceStudioEmptyLatentAudio", widgets=[("seconds", 120.0), ("batch_size", 1)],
                 outputs=[("LATENT", "LATENT")]),
            Node(10, "SamplerCustomAdvanced",
                 inputs=[("noise", "NOISE", (8, 0)), ("guider", "GUIDER", (5, 0)), ("sampler", "SAMPLER", (6, 0)),
                         ("sigmas", "SIGMAS", (7, 0)), ("latent_image", "LATENT", (9, 0))],
                 outputs=[("output", "LATENT"), ("denoised_output", "LATENT")], size=(320, 160)),
            Node(11, "AceStudioLatentToAudio", widgets=[("normalize", True)],
                 inputs=[("samples", "LATENT", (10, 0)), ("vae", "VAE", (1, 2))], outputs=[("AUDIO", "AUDIO")]),
            Node(12, "AceStudioSaveAudio",
                 widgets=[("filename_prefix", "audio/ace_step_original_custom_sampling"), ("format", "flac"),
                          ("quality", "V0")],
                 inputs=[("audio", "AUDIO", (11, 0))], ui_only_widgets=[None], size=(320, 200)),
        ],
        note=Note("## ACE-Step: original sampling, piece by piece\nThe original ACE-Step app's sampling as "
                  "SamplerCustomAdvanced parts: *Original Schedule* (SIGMAS), *Original Sampler Select* (euler with "
                  "omega / heun / pingpong), *Original Guider* (APG, guidance interval, diffusion ERG, double "
                  "guidance), *ERG Negative* (the unconditional condition), *Text-only Condition* (used only when "
                  "both double-guidance scales are above 1) and *Seeds Noise* (one seed per song). Swap any part "
                  "for a core one (e.g. KSamplerSelect, BasicScheduler, CFGGuider).\n" + ORIGINAL_KNOBS,
                  size=(460, 420)),
    )


EDIT_GUIDANCE = [("cfg_type", "apg"), ("guidance_scale", 15.0), ("guidance_interval", 0.5),
                 ("guidance_interval_decay", 0.0), ("min_guidance_scale", 3.0), ("use_erg_tag", True),
                 ("use_erg_lyric", True), ("use_erg_diffusion", True), ("guidance_scale_text", 0.0),
                 ("guidance_scale_lyric", 0.0)]
EXAMPLE_TAGS = "synth pop, female vocals, dreamy, 100 BPM"
NEW_LYRICS = """[verse]
Silver rain upon the window
We keep singing through the storm

[chorus]
Hold on, hold on"""


def _editing(name: str, title: str, text: str, editor: Node, source: bool = True, target: bool = False) -> Workflow:
    """Checkpoint -> tags + lyrics (and, for an edit, new ones) -> `editor` (node 10), with the example song as its
    source when `source` -> decode -> save."""
    nodes = [
        Node(1, "AceStudioCheckpointLoader", widgets=LOADER_WIDGETS,
             outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")]),
        Node(2, "AceStudioTextEncode", widgets=[("tags", EXAMPLE_TAGS if source else SONG_TAGS),
                                                 ("lyrics", SONG_LYRICS), ("lyrics_strength", 1.0)],
             inputs=[("clip", "CLIP", (1, 1))], outputs=[("CONDITIONING", "CONDITIONING")], size=(420, 360),
             title="Tags + Lyrics of the song" if target else None),
        editor,
        Node(11, "AceStudioLatentToAudio", widgets=[("normalize", True)],
             inputs=[("samples", "LATENT", (10, 0)), ("vae", "VAE", (1, 2))], outputs=[("AUDIO", "AUDIO")]),
        Node(12, "AceStudioSaveAudio", widgets=[("filename_prefix", f"audio/{name}"), ("format", "flac"),
                                                ("quality", "V0")],
             inputs=[("audio", "AUDIO", (11, 0))], ui_only_widgets=[None], size=(320, 200)),
    ]
    if source:
        nodes += [
            Node(3, "LoadAudio", widgets=[("audio", "example_song.flac")], outputs=[("AUDIO", "AUDIO")],
                 ui_only_widgets=[None, ""], size=(320, 160)),
            Node(4, "AceStudioAudioToLatent", inputs=[("audio", "AUDIO", (3, 0)), ("vae", "VAE", (1, 2))],
                 outputs=[("LATENT", "LATENT")]),
        ]
    if target:
        nodes.append(Node(5, "AceStudioTextEncode", widgets=[("tags", EXAMPLE_TAGS), ("lyrics", NEW_LYRICS),
                                                              ("lyrics_strength", 1.0)],
                          inputs=[("clip", "CLIP", (1, 1))], outputs=[("CONDITIONING", "CONDITIONING")],
                          size=(420, 360), title="New Tags + Lyrics"))
    return Workflow(name, nodes=sorted(nodes, key=lambda n: n.id),
                    note=Note(f"## {title}\n{text}\n\nPut `ace_step_v1_3.5b.safetensors` in `models/checkpoints/` "
                              "(or the original ACE-Step folder). Defaults are the original ACE-Step app's."))


EDIT_OUTPUTS = [("LATENT", "LATENT"), ("seeds", "STRING"), ("retake_seeds", "STRING")]
MODEL_AND_TEXT = [("model", "MODEL", (1, 0)), ("positive", "CONDITIONING", (2, 0))]


def _edit_workflows() -> list[Workflow]:
    retake = _editing(
        "ace_step_retake", "ACE-Step: retake (variations)",
        "The original sampler's song for *seeds*, varied: its noise is mixed with new noise from *retake_seeds* "
        "(cos/sin mix, *retake_variance* 0 = the same song, 1 = an unrelated one). Keep seeds, change retake_seeds "
        "for more variations.",
        Node(10, "AceStudioRetake",
             widgets=[("seeds", "42"), ("duration", 60.0), ("steps", 60), ("retake_seeds", "7"),
                      ("retake_variance", 0.2), ("scheduler", "euler"), ("cfg_type", "apg"), ("guidance_scale", 15.0),
                      ("omega_scale", 10.0), ("guidance_interval", 0.5), ("guidance_interval_decay", 0.0),
                      ("min_guidance_scale", 3.0), ("use_erg_tag", True), ("use_erg_lyric", True),
                      ("use_erg_diffusion", True), ("guidance_scale_text", 0.0), ("guidance_scale_lyric", 0.0),
                      ("oss_steps", "")],
             inputs=MODEL_AND_TEXT, outputs=EDIT_OUTPUTS, size=(340, 560)), source=False)
    source = [("source", "LATENT", (4, 0))]
    repaint = _editing(
        "ace_step_repaint", "ACE-Step: repaint",
        "Regenerates *start_seconds*-*end_seconds* of the input song (Load Audio) and keeps the rest exactly. "
        "*variance* sets how much the range changes (0.2 gentle, 1 completely new).",
        Node(10, "AceStudioRepaint",
             widgets=[("start_seconds", 4.0), ("end_seconds", 8.0), ("variance", 0.2), ("seeds", "42"),
                      ("retake_seeds", "7"), ("steps", 60), *EDIT_GUIDANCE],
             inputs=MODEL_AND_TEXT + source, outputs=EDIT_OUTPUTS, size=(340, 520)))
    extend = _editing(
        "ace_step_extend", "ACE-Step: extend",
        "Adds *left_seconds* before and *right_seconds* after the input song, which is kept exactly. Extensions may "
        "be longer than the song; results past *window_seconds* (240) sample only the window next to the new part "
        "and put the rest of the song back.",
        Node(10, "AceStudioExtend",
             widgets=[("left_seconds", 0.0), ("right_seconds", 30.0), ("window_seconds", 240.0), ("seeds", "42"),
                      ("retake_seeds", "7"), ("steps", 60), *EDIT_GUIDANCE],
             inputs=MODEL_AND_TEXT + source, outputs=EDIT_OUTPUTS, size=(340, 520)))
    lyric_edit = _editing(
        "ace_step_lyric_edit", "ACE-Step: lyric edit",
        "New tags and/or lyrics for the input song (FlowEdit). Describe the song in the first Tags + Lyrics node "
        "and write the new text in the second. *preset* only_lyrics (0.6-1.0) keeps the music, remix (0.2-0.4) "
        "lets it change; custom uses *n_min* / *n_max*.",
        Node(10, "AceStudioLyricEdit",
             widgets=[("preset", "only_lyrics"), ("n_min", 0.6), ("n_max", 1.0), ("n_avg", 1), ("seeds", "42"),
                      ("steps", 60), ("guidance_scale", 15.0)],
             inputs=[("model", "MODEL", (1, 0)), ("source", "LATENT", (4, 0)),
                     ("source_positive", "CONDITIONING", (2, 0)), ("target_positive", "CONDITIONING", (5, 0))],
             outputs=EDIT_OUTPUTS[:2], size=(340, 320)), target=True)
    a2a = _editing(
        "ace_step_audio2audio_reference", "ACE-Step: audio2audio with a reference strength",
        "A new song in the image of the input song, as the original app's audio2audio: *ref_audio_strength* 0.5 "
        "keeps half (0 = ignore the reference, 1 = the reference itself).",
        Node(10, "AceStudioAudio2Audio",
             widgets=[("ref_audio_strength", 0.5), ("seeds", "42"), ("steps", 60), ("scheduler", "euler"),
                      ("cfg_type", "apg"), ("guidance_scale", 15.0), ("omega_scale", 10.0),
                      ("guidance_interval", 0.5), ("guidance_interval_decay", 0.0), ("min_guidance_scale", 3.0),
                      ("use_erg_tag", True), ("use_erg_lyric", True), ("use_erg_diffusion", True),
                      ("guidance_scale_text", 0.0), ("guidance_scale_lyric", 0.0)],
             inputs=MODEL_AND_TEXT + [("reference", "LATENT", (4, 0))], outputs=EDIT_OUTPUTS[:2], size=(340, 520)))
    return [retake, repaint, extend, lyric_edit, a2a]


def workflows() -> list[Workflow]:
    song = _text_to_music("ace_step_song", SONG_TAGS, SONG_LYRICS, 120.0, "ACE-Step: text to song",
                          "Tags and lyrics in, a 44.1 kHz stereo song out.")
    instrumental = _text_to_music(
        "ace_step_instrumental", "lo-fi hip hop, instrumental, mellow piano, vinyl crackle, soft drums, 80 BPM",
        "[inst]", 60.0, "ACE-Step: instrumental", "No vocals: the lyrics are just [inst].")
    a2a = _text_to_music("ace_step_audio_to_audio", "synth pop, female vocals, dreamy, 100 BPM", SONG_LYRICS, 12.0,
                         "ACE-Step: audio to audio",
                         "Re-imagines an input song: Load Audio -> Audio to ACE-Step Latent -> KSampler with denoise "
                         "below 1 (0.3 keeps the song, 0.7 keeps its outline).")
    a2a.nodes = [n for n in a2a.nodes if n.id != 6] + [
        Node(10, "LoadAudio", widgets=[("audio", "example_song.flac")], outputs=[("AUDIO", "AUDIO")],
             ui_only_widgets=[None, ""], size=(320, 160)),
        Node(6, "AceStudioAudioToLatent", inputs=[("audio", "AUDIO", (10, 0)), ("vae", "VAE", (1, 2))],
             outputs=[("LATENT", "LATENT")]),
    ]
    sampler = next(n for n in a2a.nodes if n.id == 7)
    sampler.widgets = [(k, 0.5 if k == "denoise" else v) for k, v in sampler.widgets]
    return [song, instrumental, a2a, _lora(), _original_quality(), _original_custom_sampling(),
            *_edit_workflows(), *v15_workflows(), *v15_edit_workflows(), *v15_stem_workflows()]


RAP_LORA = "ace_step_v1_chinese_rap_lora.safetensors"
RAP_TAGS = "chinese rap, hip-hop, male vocals, boom bap, punchy drums, deep bass, 92 BPM, energetic, confident"
RAP_LYRICS = """[verse]
夜里的城市还没有睡
我把心事写进每一句
节拍一响我就往前冲
不回头也不怕风

[chorus]
Turn it up, turn it up
让声音穿过整条街
Turn it up, turn it up
今晚我们不停歇"""


def _lora() -> Workflow:
    wf = _text_to_music(
        "ace_step_lora", RAP_TAGS, RAP_LYRICS, 60.0, "ACE-Step: song with a LoRA",
        "The checkpoint's MODEL goes through *ACE-Step LoRA* before sampling; chain more LoRA nodes to stack them, "
        "bypass the node to hear the base model.\n\n"
        f"**LoRA file**: RapMachine (Chinese rap) is `pytorch_lora_weights.safetensors` from Hugging Face "
        f"`ACE-Step/ACE-Step-v1-chinese-rap-LoRA`; save it as `models/loras/{RAP_LORA}`. Any ACE-Step v1 LoRA in "
        "PEFT/diffusers, ComfyUI or kohya format works.\n\n"
        "**Strength and scale**: strength multiplies the LoRA's change (0 = off, negative inverts it). A file that "
        "stores no alpha, like RapMachine, runs at scale 1, as in ACE-Step's own app; its training scale was "
        "alpha 32 with rsLoRA (32/sqrt(256) = 2): set alpha 32 and rank_scaling rsLoRA, or strength 2, to hear that.")
    wf.nodes.append(Node(11, "AceStudioLoraLoader",
                         widgets=[("lora_name", RAP_LORA), ("strength", 1.0), ("alpha", 0.0),
                                  ("rank_scaling", "from file")],
                         inputs=[("model", "MODEL", (1, 0))], outputs=[("MODEL", "MODEL")], size=(320, 180)))
    shift = next(n for n in wf.nodes if n.id == 2)
    shift.inputs = [("model", "MODEL", (11, 0))]
    return wf


# ---------------------------------------------------------------------------------------------------- ACE-Step 1.5
V15_CHECKPOINT = "ace_step_1.5_turbo_aio.safetensors"
V15_DIT = {"turbo": "acestep_v1.5_turbo.safetensors", "sft": "acestep_v1.5_sft.safetensors"}
V15_TEXT_ENCODER = "qwen_0.6b_ace15.safetensors"
V15_LM = "qwen_1.7b_ace15.safetensors"
V15_VAE = "ace_1.5_vae.safetensors"
V15_TAGS = "funk, pop, soul, melodic, guitar, drums, bass, keyboard, energetic, upbeat, groovy, female vocals"
V15_INSTRUMENTAL_TAGS = "lo-fi hip hop, mellow piano, vinyl crackle, soft drums, warm bass, relaxed"
V15_FILES = f"""
**Files** (Hugging Face `Comfy-Org/ace_step_1.5_ComfyUI_files`): `{V15_CHECKPOINT}` in `models/checkpoints/`, or the
split files `split_files/diffusion_models/{V15_DIT["turbo"]}` (and `{V15_DIT["sft"]}`, `acestep_v1.5_base`) in
`models/diffusion_models/`, `split_files/text_encoders/{V15_TEXT_ENCODER}` and `{V15_LM}` (the 5 Hz LM planner; the 4B
one plans better, the 1.7B is faster) in `models/text_encoders/`, `split_files/vae/{V15_VAE}` in `models/vae/`. The
original Hugging Face folder `ACE-Step/Ace-Step1.5` in `models/checkpoints/` works too.
"""
V15_TEXT_KNOBS = """
**Knobs** (ACE-Step 1.5 Text Encode)
- *duration*: the song's length as the prompt states it and the planner writes codes for (5 per second): keep it
  equal to the Empty Latent's seconds. 0 = the planner chooses (then match the latent to the metadata output).
- *bpm / timesignature / language / keyscale*: 0 or auto = the planner fills them in (the original app's "thinking").
- *generate_audio_codes*: the 5 Hz LM writes the song's structure as audio codes: better songs, slower on a CPU.
- *planner_caption*: the planner rewrites the tags into its own caption (the original's default).
- *lm_cfg_scale, temperature, top_p, top_k, min_p, seed*: the LM's sampling (the original's defaults).
"""


def _v15_text(node_id: int, clip: tuple[int, int], tags: str, lyrics: str, *, codes: bool = True,
              metadata: tuple = (0, "auto", "auto", "auto"), seconds: float = 120.0) -> Node:
    bpm, timesignature, language, keyscale = metadata
    return Node(node_id, "AceStudio15TextEncode",
                widgets=[("tags", tags), ("lyrics", lyrics), ("bpm", bpm), ("duration", seconds),
                         ("timesignature", timesignature), ("language", language), ("keyscale", keyscale),
                         ("generate_audio_codes", codes), ("planner_caption", True), ("lm_cfg_scale", 2.0),
                         ("temperature", 0.85), ("top_p", 0.9), ("top_k", 0), ("min_p", 0.0), ("seed", 42)],
                inputs=[("clip", "CLIP", clip)], outputs=[("CONDITIONING", "CONDITIONING"), ("metadata", "STRING")],
                seed_widget="seed", size=(420, 620))


def _v15_song(name: str, title: str, intro: str, loaders: list[Node], model: tuple[int, int], clip: tuple[int, int],
              vae: tuple[int, int], text: Node, *, steps: int = 8, cfg: float = 1.0, seconds: float = 120.0,
              extra: list[Node] = (), positive: tuple[int, int] = (3, 0), knobs: str = "") -> Workflow:
    """Loaders -> ModelSamplingAuraFlow (shift 3) -> KSampler (euler/simple) with the text encoding as positive and
    its ConditioningZeroOut as negative -> ACE-Step 1.5 Latent to Audio -> Save Audio. Nodes 2-8 are fixed; loaders
    and `extra` nodes use ids from 10."""
    nodes = [
        *loaders,
        Node(2, "ModelSamplingAuraFlow", widgets=[("shift", 3.0)], inputs=[("model", "MODEL", model)],
             outputs=[("MODEL", "MODEL")]),
        text,
        Node(4, "ConditioningZeroOut", inputs=[("conditioning", "CONDITIONING", (3, 0))],
             outputs=[("CONDITIONING", "CONDITIONING")]),
        Node(5, "AceStudio15EmptyLatentAudio", widgets=[("seconds", seconds), ("batch_size", 1)],
             outputs=[("LATENT", "LATENT")]),
        Node(6, "KSampler",
             widgets=[("seed", 42), ("steps", steps), ("cfg", cfg), ("sampler_name", "euler"),
                      ("scheduler", "simple"), ("denoise", 1.0)],
             inputs=[("model", "MODEL", (2, 0)), ("positive", "CONDITIONING", positive),
                     ("negative", "CONDITIONING", (4, 0)), ("latent_image", "LATENT", (5, 0))],
             outputs=[("LATENT", "LATENT")], seed_widget="seed", size=(320, 260)),
        Node(7, "AceStudio15LatentToAudio", widgets=[("normalize", True)],
             inputs=[("samples", "LATENT", (6, 0)), ("vae", "VAE", vae)], outputs=[("AUDIO", "AUDIO")]),
        Node(8, "AceStudioSaveAudio",
             widgets=[("filename_prefix", f"audio/{name}"), ("format", "flac"), ("quality", "V0")],
             inputs=[("audio", "AUDIO", (7, 0))], ui_only_widgets=[None], size=(320, 200)),
        *extra,
    ]
    sampling = (f"- *KSampler*: {steps} steps, cfg {cfg:g}, euler/simple, after ModelSamplingAuraFlow shift 3"
                + (" (ComfyUI's official ACE-Step 1.5 turbo settings: turbo needs no CFG)." if cfg == 1.0 else "."))
    return Workflow(name, nodes=sorted(nodes, key=lambda n: n.id),
                    note=Note(f"## {title}\n{intro}\n{knobs or V15_TEXT_KNOBS}{sampling}\n{V15_FILES}",
                              size=(480, 460)))


def _v15_checkpoint() -> Node:
    return Node(1, "AceStudio15CheckpointLoader", widgets=[("ckpt_name", V15_CHECKPOINT), ("weight_dtype", "default")],
                outputs=[("MODEL", "MODEL"), ("CLIP", "CLIP"), ("VAE", "VAE")])


def _v15_split(dit: str, lm: str) -> list[Node]:
    """Load Diffusion Model (1), Text Encoders (10), VAE (11); the VAE also goes to the diffusion model's loader,
    which computes the silence latent from it where ComfyUI has no ACE-Step 1.5 of its own."""
    return [
        Node(1, "AceStudio15DiffusionModelLoader", widgets=[("unet_name", dit), ("weight_dtype", "default")],
             inputs=[("vae", "VAE", (11, 0))], outputs=[("MODEL", "MODEL")]),
        Node(10, "AceStudio15TextEncoderLoader", widgets=[("text_encoder_name", V15_TEXT_ENCODER), ("lm_name", lm)],
             outputs=[("CLIP", "CLIP")]),
        Node(11, "AceStudio15VaeLoader", widgets=[("vae_name", V15_VAE)], outputs=[("VAE", "VAE")]),
    ]


def v15_workflows() -> list[Workflow]:
    turbo = _v15_song(
        "ace_step15_turbo_song", "ACE-Step 1.5 turbo: text to song",
        "Tags and lyrics in, a 48 kHz stereo song out in 8 steps. The 5 Hz LM planner (in the all-in-one checkpoint) "
        "fills in the metadata left on auto and writes the song's audio codes first.",
        [_v15_checkpoint()], (1, 0), (1, 1), (1, 2), _v15_text(3, (1, 1), V15_TAGS, SONG_LYRICS))
    split = _v15_song(
        "ace_step15_turbo_no_planner", "ACE-Step 1.5 turbo from split files, without the planner",
        "The split files with no LM: faster (the planner is the slowest part on a CPU), metadata given by hand, no "
        "audio codes. The VAE also feeds the diffusion model's loader (the silence latent the DiT needs is computed "
        "from it).",
        _v15_split(V15_DIT["turbo"], "none"), (1, 0), (10, 0), (11, 0),
        _v15_text(3, (10, 0), V15_TAGS, SONG_LYRICS, codes=False, metadata=(105, "4", "en", "E minor")))
    sft = _v15_song(
        "ace_step15_sft_cfg", "ACE-Step 1.5 sft (or base) with CFG",
        f"The sft model (swap in `acestep_v1.5_base.safetensors` for base) samples with classifier-free guidance over "
        f"50 steps, as the original runs them; the planner ({V15_LM}) writes the audio codes. The original guides "
        "with APG at 7; ComfyUI's plain CFG at 4-5 is gentler.",
        _v15_split(V15_DIT["sft"], V15_LM), (1, 0), (10, 0), (11, 0),
        _v15_text(3, (10, 0), V15_TAGS, SONG_LYRICS), steps=50, cfg=7.0)
    instrumental = _v15_song(
        "ace_step15_instrumental", "ACE-Step 1.5 turbo: instrumental",
        "No vocals: the lyrics are just [Instrumental].",
        [_v15_checkpoint()], (1, 0), (1, 1), (1, 2),
        _v15_text(3, (1, 1), V15_INSTRUMENTAL_TAGS, "[Instrumental]", seconds=60.0), seconds=60.0)
    reference = _v15_song(
        "ace_step15_reference_timbre", "ACE-Step 1.5 turbo: a reference audio's timbre",
        "The input song (Load Audio) is encoded and set as the reference timbre of the positive conditioning; the "
        "DiT's timbre encoder reads it and, without LM codes, follows its structure (cover mode). Audio codes are off, "
        "as the reference guides the song.",
        [_v15_checkpoint()], (1, 0), (1, 1), (1, 2),
        _v15_text(3, (1, 1), EXAMPLE_TAGS, NEW_LYRICS, codes=False, seconds=30.0), seconds=30.0, positive=(14, 0),
        extra=[
            Node(12, "LoadAudio", widgets=[("audio", "example_song.flac")], outputs=[("AUDIO", "AUDIO")],
                 ui_only_widgets=[None, ""], size=(320, 160)),
            Node(13, "AceStudio15AudioToLatent", inputs=[("audio", "AUDIO", (12, 0)), ("vae", "VAE", (1, 2))],
                 outputs=[("LATENT", "LATENT")]),
            Node(14, "AceStudio15ReferenceTimbre",
                 inputs=[("conditioning", "CONDITIONING", (3, 0)), ("latent", "LATENT", (13, 0))],
                 outputs=[("CONDITIONING", "CONDITIONING")]),
        ])
    return [turbo, split, sft, instrumental, reference]


V15_TASK_SAMPLING = [("seed", 42), ("model_variant", "turbo"), ("steps", 8), ("shift", 3.0), ("cfg", 1.0)]
V15_TASK_KNOBS = """
**Knobs** (the task node)
- *model_variant / steps / shift / cfg*: the original's schedule: turbo = its eight fixed levels at shift 3, cfg 1;
  sft / base: 32-100 steps, shift 1, cfg about 4-7 (ComfyUI's CFG with the DiT's null condition).
- *seed*: the original's noise for the seed; connect ACE-Step 1.5 Retake Noise to *noise* for variations.
- ACE-Step 1.5 Text Encode: the new tags and lyrics; audio codes are off (the song stands for them); the planner
  still fills in metadata left on auto when an LM is loaded.
"""


def _v15_task(name: str, title: str, intro: str, task: Node) -> Workflow:
    """Checkpoint -> new tags + lyrics; the example song (Load Audio -> Audio to ACE-Step 1.5 Latent) -> `task`
    (node 6) -> ACE-Step 1.5 Latent to Audio -> Save Audio."""
    task.inputs = [("model", "MODEL", (1, 0)), ("clip", "CLIP", (1, 1)), ("positive", "CONDITIONING", (3, 0)),
                   ("source", "LATENT", (13, 0))]
    task.outputs, task.seed_widget = [("LATENT", "LATENT")], "seed"
    nodes = [
        _v15_checkpoint(),
        _v15_text(3, (1, 1), V15_TAGS, NEW_LYRICS, codes=False, seconds=30.0),
        task,
        Node(7, "AceStudio15LatentToAudio", widgets=[("normalize", True)],
             inputs=[("samples", "LATENT", (6, 0)), ("vae", "VAE", (1, 2))], outputs=[("AUDIO", "AUDIO")]),
        Node(8, "AceStudioSaveAudio",
             widgets=[("filename_prefix", f"audio/{name}"), ("format", "flac"), ("quality", "V0")],
             inputs=[("audio", "AUDIO", (7, 0))], ui_only_widgets=[None], size=(320, 200)),
        Node(12, "LoadAudio", widgets=[("audio", "example_song.flac")], outputs=[("AUDIO", "AUDIO")],
             ui_only_widgets=[None, ""], size=(320, 160)),
        Node(13, "AceStudio15AudioToLatent", inputs=[("audio", "AUDIO", (12, 0)), ("vae", "VAE", (1, 2))],
             outputs=[("LATENT", "LATENT")]),
    ]
    return Workflow(name, nodes=sorted(nodes, key=lambda n: n.id),
                    note=Note(f"## {title}\n{intro}\n{V15_TASK_KNOBS}\n{V15_FILES}", size=(480, 460)))


def v15_edit_workflows() -> list[Workflow]:
    cover = _v15_task(
        "ace_step15_cover", "ACE-Step 1.5: cover",
        "The input song (Load Audio) re-sung and re-arranged from new tags and lyrics: the DiT follows the song's "
        "semantic hints for the first *audio_cover_strength* of the steps (1 = all, the original's default; about "
        "0.2 keeps only a little of the song), then the text alone.",
        Node(6, "AceStudio15Cover", widgets=[("audio_cover_strength", 1.0), *V15_TASK_SAMPLING], size=(340, 300)))
    repaint = _v15_task(
        "ace_step15_repaint", "ACE-Step 1.5: repaint",
        "Regenerates *start_seconds*-*end_seconds* (-1 = the song's end) of the input song from the new tags and "
        "lyrics; frames more than *crossfade_frames* (10 = 0.4 s) from the range are kept bit for bit.",
        Node(6, "AceStudio15Repaint", widgets=[("start_seconds", 4.0), ("end_seconds", 8.0), ("crossfade_frames", 10),
                                              ("injection_ratio", 0.5), *V15_TASK_SAMPLING], size=(340, 380)))
    extend = _v15_task(
        "ace_step15_extend", "ACE-Step 1.5: extend",
        "Adds *left_seconds* before and *right_seconds* after the input song, which is kept bit for bit. "
        "Extensions may be longer than the song; results past *window_seconds* sample only the window next to the "
        "new part.",
        Node(6, "AceStudio15Extend", widgets=[("left_seconds", 0.0), ("right_seconds", 10.0),
                                             ("window_seconds", 600.0), ("crossfade_frames", 0),
                                             ("injection_ratio", 0.5), *V15_TASK_SAMPLING], size=(340, 400)))
    retake = _v15_song(
        "ace_step15_retake", "ACE-Step 1.5 turbo: retake (variations)",
        "A song and its variations: *ACE-Step 1.5 Retake Noise* mixes the seed's noise with new noise from "
        "*retake_seed* (cos/sin, *variance* 0 = the seed's song, 1 = an unrelated one) for core "
        "SamplerCustomAdvanced. Keep *seed*, change *retake_seed* for more variations. This is ACE-Step Studio's "
        "retake (as its v1 Retake); the original 1.5 makes variations by seed only.",
        [_v15_checkpoint()], (1, 0), (1, 1), (1, 2), _v15_text(3, (1, 1), V15_TAGS, SONG_LYRICS, seconds=60.0),
        seconds=60.0)
    retake.nodes = [n for n in retake.nodes if n.id not in (4, 6)] + [
        Node(6, "SamplerCustomAdvanced",
             inputs=[("noise", "NOISE", (10, 0)), ("guider", "GUIDER", (11, 0)), ("sampler", "SAMPLER", (12, 0)),
                     ("sigmas", "SIGMAS", (14, 0)), ("latent_image", "LATENT", (5, 0))],
             outputs=[("output", "LATENT"), ("denoised_output", "LATENT")], size=(320, 160)),
        Node(10, "AceStudio15RetakeNoise", widgets=[("seed", 42), ("retake_seed", 7), ("variance", 0.2)],
             outputs=[("NOISE", "NOISE")], seed_widget="retake_seed", size=(320, 160)),
        Node(11, "BasicGuider", inputs=[("model", "MODEL", (2, 0)), ("conditioning", "CONDITIONING", (3, 0))],
             outputs=[("GUIDER", "GUIDER")]),
        Node(12, "KSamplerSelect", widgets=[("sampler_name", "euler")], outputs=[("SAMPLER", "SAMPLER")]),
        Node(14, "BasicScheduler", widgets=[("scheduler", "simple"), ("steps", 8), ("denoise", 1.0)],
             inputs=[("model", "MODEL", (2, 0))], outputs=[("SIGMAS", "SIGMAS")]),
    ]
    retake.nodes.sort(key=lambda n: n.id)
    retake.note.text = retake.note.text.replace(
        "- *KSampler*: 8 steps, cfg 1, euler/simple", "- *SamplerCustomAdvanced*: 8 steps, BasicGuider (cfg 1), "
        "euler/simple")
    return [cover, repaint, extend, retake]


V15_BASE_DIT = "acestep_v1.5_base.safetensors"
V15_LORA = "my_ace_step15_lora/adapter_model.safetensors"
V15_STEM_KNOBS = """
**Knobs** (the task node; base model only: turbo and sft were not trained for it and are refused)
- *steps / shift / cfg*: the original's base schedule, 50 steps (32-100), shift 1, cfg 7 (ComfyUI's CFG with the
  DiT's null condition; the original guides with APG).
- *seed*: the original's noise for the seed.
- ACE-Step 1.5 Text Encode: tags and lyrics of the result; audio codes are off (the song stands for them).
- Track names: vocals, backing_vocals, drums, bass, guitar, keyboard, percussion, strings, synth, fx, brass,
  woodwinds (the original's).
"""
V15_STEM_SAMPLING = [("seed", 42), ("steps", 50), ("shift", 1.0), ("cfg", 7.0)]


def _v15_stem(name: str, title: str, intro: str, task: Node, tags: str, lyrics: str) -> Workflow:
    """The base model from split files (1, 10, 11) -> tags + lyrics (3); the example song (Load Audio -> Audio to
    ACE-Step 1.5 Latent) -> `task` (node 6) -> ACE-Step 1.5 Latent to Audio -> Save Audio."""
    task.inputs = [("model", "MODEL", (1, 0)), ("clip", "CLIP", (10, 0)), ("positive", "CONDITIONING", (3, 0)),
                   ("source", "LATENT", (13, 0))]
    task.outputs, task.seed_widget = [("LATENT", "LATENT")], "seed"
    nodes = [
        *_v15_split(V15_BASE_DIT, "none"),
        _v15_text(3, (10, 0), tags, lyrics, codes=False, metadata=(100, "4", "en", "auto"), seconds=30.0),
        task,
        Node(7, "AceStudio15LatentToAudio", widgets=[("normalize", True)],
             inputs=[("samples", "LATENT", (6, 0)), ("vae", "VAE", (11, 0))], outputs=[("AUDIO", "AUDIO")]),
        Node(8, "AceStudioSaveAudio",
             widgets=[("filename_prefix", f"audio/{name}"), ("format", "flac"), ("quality", "V0")],
             inputs=[("audio", "AUDIO", (7, 0))], ui_only_widgets=[None], size=(320, 200)),
        Node(12, "LoadAudio", widgets=[("audio", "example_song.flac")], outputs=[("AUDIO", "AUDIO")],
             ui_only_widgets=[None, ""], size=(320, 160)),
        Node(13, "AceStudio15AudioToLatent", inputs=[("audio", "AUDIO", (12, 0)), ("vae", "VAE", (11, 0))],
             outputs=[("LATENT", "LATENT")]),
    ]
    files = V15_FILES.replace("`acestep_v1.5_base`", f"`{V15_BASE_DIT}`: the one these tasks need")
    return Workflow(name, nodes=sorted(nodes, key=lambda n: n.id),
                    note=Note(f"## {title}\n{intro}\n{V15_STEM_KNOBS}\n{files}", size=(480, 460)))


def v15_stem_workflows() -> list[Workflow]:
    extract = _v15_stem(
        "ace_step15_extract", "ACE-Step 1.5 base: extract a stem",
        "Isolates one track of the input song (Load Audio): *track* vocals, drums, bass... The tags describe the stem "
        "you want.",
        Node(6, "AceStudio15Extract", widgets=[("track", "vocals"), *V15_STEM_SAMPLING], size=(340, 260)),
        "female vocals, dreamy, clean vocal stem", NEW_LYRICS)
    lego = _v15_stem(
        "ace_step15_lego", "ACE-Step 1.5 base: add a track (lego)",
        "Adds *track* to the input song from *start_seconds* to *end_seconds* (0 to -1 = the whole song, every frame "
        "regenerated with the song as context); outside a range the song is kept bit for bit, blended over "
        "*crossfade_frames* (10 = 0.4 s) at each edge.",
        Node(6, "AceStudio15Lego", widgets=[("track", "guitar"), ("start_seconds", 4.0), ("end_seconds", -1.0),
                                           ("crossfade_frames", 10), ("injection_ratio", 0.5), *V15_STEM_SAMPLING],
             size=(340, 360)),
        f"{EXAMPLE_TAGS}, electric guitar", NEW_LYRICS)
    complete = _v15_stem(
        "ace_step15_complete", "ACE-Step 1.5 base: complete (add instruments)",
        "Adds the instruments in *tracks* (commas between names) to the input song, e.g. drums and bass under a "
        "vocal or a guitar take. Empty *tracks*: the original's generic 'Complete the input track:'.",
        Node(6, "AceStudio15Complete", widgets=[("tracks", "drums, bass"), *V15_STEM_SAMPLING], size=(340, 260)),
        f"{EXAMPLE_TAGS}, drums, bass", NEW_LYRICS)
    lora = _v15_song(
        "ace_step15_lora", "ACE-Step 1.5 turbo: song with a LoRA / LoKr",
        "The checkpoint's MODEL goes through *ACE-Step 1.5 LoRA / LoKr* before sampling; chain more of them to stack "
        "adapters, bypass the node to hear the base model.\n\n"
        f"**Adapter file**: what ACE-Step 1.5's trainer saves: a LoRA folder (`adapter_model.safetensors` with its "
        f"`adapter_config.json`) copied into `models/loras/` (here `models/loras/{V15_LORA}`), or a LoKr "
        "`lokr_weights.safetensors`; ComfyUI and kohya spellings load too. ACE-Step v1 LoRAs go to the v1 *ACE-Step "
        "LoRA* node.\n\n"
        "**Strength**: multiplies the adapter's change as trained (alpha / rank from the file): 0 = off, above 1 "
        "stronger, negative inverts it.",
        [_v15_checkpoint()], (12, 0), (1, 1), (1, 2), _v15_text(3, (1, 1), V15_TAGS, SONG_LYRICS, codes=False,
                                                                   metadata=(105, "4", "en", "E minor")),
        extra=[Node(12, "AceStudio15LoraLoader",
                    widgets=[("lora_name", V15_LORA), ("strength", 1.0), ("alpha", 0.0),
                             ("rank_scaling", "from file")],
                    inputs=[("model", "MODEL", (1, 0))], outputs=[("MODEL", "MODEL")], size=(340, 180))])
    return [extract, lego, complete, lora]


def rendered() -> dict[Path, str]:
    files = {}
    for wf in workflows():
        files[UI_DIR / f"{wf.name}.json"] = json.dumps(to_ui(wf), indent=2) + "\n"
        files[API_DIR / f"{wf.name}.json"] = json.dumps(to_api(wf), indent=2) + "\n"
    return files


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    check = parser.parse_args().check
    stale = []
    for path, text in rendered().items():
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(path.relative_to(ROOT))
    if stale:
        sys.exit("out of date, run scripts/build_workflows.py: " + ", ".join(str(p) for p in stale))


if __name__ == "__main__":
    main()
