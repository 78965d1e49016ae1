"""ACE-Step v1 and ACE-Step 1.5 nodes refuse each other's MODEL, CLIP, VAE, LATENT and CONDITIONING at the node's
start, naming what arrived, what to connect instead and which node of the other family does the job
(comfy_bridge/v1_family.py, comfy_bridge/v15_family.py).

In process, on the tiny random-weight checkpoints of both families (written to a temporary folder and loaded through
the pack's loaders), every v1 node's every MODEL / CLIP / VAE / LATENT / CONDITIONING input gets the 1.5 object and
every 1.5 node's gets the v1 one, all other inputs right; a coverage test keeps the tables complete as nodes are
added. Through the real server: test_family_checks_server.py."""
import types

import pytest
import torch

from fixtures.tiny_checkpoint import write_tiny_checkpoint
from fixtures.v15_tiny_checkpoint import write_tiny15
from pack_inprocess import PACKAGE, import_pack

KINDS = ("MODEL", "CLIP", "VAE", "LATENT", "CONDITIONING")
# (node class, input) -> the node named as the other family's way to do the job.
V1_NODES = {
    "TextEncode": ("ACE-Step 1.5 Text Encode", ["clip"]),
    "TonemapReinhard": ("core LatentApplyOperationCFG with LatentOperationTonemapReinhard", ["model"]),
    "AudioToLatent": ("Audio to ACE-Step 1.5 Latent", ["vae"]),
    "LatentToAudio": ("ACE-Step 1.5 Latent to Audio", ["samples", "vae"]),
    "LoraLoader": ("the ACE-Step 1.5 LoRA / LoKr node", ["model"]),
    "OriginalSampler": ("core KSampler (text to music) or the ACE-Step 1.5 Cover / Repaint / Extend nodes",
                        ["model", "positive", "latent"]),
    "OriginalSchedule": ("core BasicScheduler", ["model"]),
    "OriginalGuider": ("core CFGGuider with ConditioningZeroOut as the negative",
                       ["model", "positive", "negative", "text_only"]),
    "ErgNegative": ("core ConditioningZeroOut for the negative", ["positive"]),
    "TextOnlyConditioning": ("core CFGGuider", ["positive"]),
    "Retake": ("ACE-Step 1.5 Retake Noise with SamplerCustomAdvanced", ["model", "positive", "latent"]),
    "Repaint": ("ACE-Step 1.5 Repaint", ["model", "positive", "source"]),
    "Extend": ("ACE-Step 1.5 Extend", ["model", "positive", "source"]),
    "LyricEdit": ("ACE-Step 1.5 Cover or Repaint with the new lyrics",
                  ["model", "source", "source_positive", "target_positive"]),
    "Audio2Audio": ("ACE-Step 1.5 Cover", ["model", "positive", "reference"]),
}
V15_NODES = {
    "TextEncode15": ["clip"],
    "ReferenceTimbre15": ["conditioning", "latent"],
    "AudioToLatent15": ["vae"],
    "LatentToAudio15": ["samples", "vae"],
    "LoraLoader15": ["model"],
    "Cover15": ["model", "clip", "positive", "source"],
    "Repaint15": ["model", "clip", "positive", "source"],
    "Extend15": ["model", "clip", "positive", "source"],
    "Extract15": ["model", "clip", "positive", "source"],
    "Lego15": ["model", "clip", "positive", "source"],
    "Complete15": ["model", "clip", "positive", "source"],
    "DiffusionModelLoader15": ["vae"],
}
STEMS = ("Extract15", "Lego15", "Complete15")  # base-model tasks: their MODEL is the tiny base DiT
# Each wrong input's expected words: (what arrived, where the right one comes from).
V1_EXPECTED = {
    "MODEL": (TypeError, "this MODEL is an ACE-Step 1.5 MODEL", "connect the MODEL output of Load ACE-Step Checkpoint"),
    "CLIP": (TypeError, "this CLIP is an ACE-Step 1.5 CLIP", "connect the CLIP output of Load ACE-Step Checkpoint"),
    "VAE": (TypeError, "this VAE is an ACE-Step 1.5 VAE", "connect the VAE output of Load ACE-Step Checkpoint"),
    "LATENT": (ValueError, "an ACE-Step 1.5 song latent [batch, 64, frames]) is not an ACE-Step song latent",
               "connect an ACE-Step latent (Empty ACE-Step Latent Audio, Audio to ACE-Step Latent"),
    "CONDITIONING": (ValueError, "CONDITIONING is an ACE-Step 1.5 CONDITIONING",
                     "connect ACE-Step Tags + Lyrics fed by the CLIP of Load ACE-Step Checkpoint"),
}
V15_EXPECTED = {
    "MODEL": (TypeError, "ACE-Step v1", "Load ACE-Step 1.5 Checkpoint or Load ACE-Step 1.5 Diffusion Model"),
    "CLIP": (TypeError, "this CLIP is an ACE-Step v1 CLIP", "Load ACE-Step 1.5 Text Encoders"),
    "VAE": (TypeError, "this VAE is an ACE-Step v1 VAE", "Load ACE-Step 1.5 VAE"),
    "LATENT": (ValueError, "an ACE-Step v1 song latent [batch, 8, 16, frames]) is not an ACE-Step 1.5 song latent",
               "Audio to ACE-Step 1.5 Latent"),
    "CONDITIONING": (ValueError, "CONDITIONING is an ACE-Step v1 CONDITIONING",
                     "connect ACE-Step 1.5 Text Encode, fed by the ACE-Step 1.5 CLIP"),
}


def nodes(name: str):
    import_pack()
    import importlib

    return importlib.import_module(f"{PACKAGE}.nodes.{name}")


def bridge(name: str):
    import_pack()
    import importlib

    return importlib.import_module(f"{PACKAGE}.comfy_bridge.{name}")


def node_classes() -> dict:
    return {cls.__name__: cls for cls in nodes("__init__").NODES}


def is_v15_node(cls) -> bool:
    return cls.__module__.rsplit(".", 1)[-1].startswith("v15_")


def family_inputs(cls) -> dict:
    """{input name: kind} of a node's MODEL / CLIP / VAE / LATENT / CONDITIONING inputs."""
    return {i.id: i.get_io_type() for i in cls.define_schema().inputs if i.get_io_type() in KINDS}


@pytest.fixture(scope="module")
def objects(tmp_path_factory):
    """{"v1": {kind: object}, "1.5": {kind: object}, "1.5 base": MODEL, "audio": AUDIO}: one of each family, as the
    loaders and text / latent nodes make them."""
    root = tmp_path_factory.mktemp("families")
    import_pack()
    from ace_step.loading.v15_keys import DIT

    v1_path = write_tiny_checkpoint(root / "v1.safetensors")
    model1, clip1, vae1 = bridge("models").load_checkpoint(v1_path)
    loading = bridge("v15_loading")
    model15, clip15, vae15 = loading.load_checkpoint(write_tiny15(root / "aio.safetensors"))
    split = write_tiny15(root / "split", layout="comfyui-split", variant="base", lm=False)
    base15 = loading.load_diffusion_model(split[DIT], vae=vae15)
    cond1 = nodes("text").TextEncode.execute(clip1, "pop", "[verse]\nla la", 1.0).args[0]
    text15 = nodes("v15_text").TextEncode15
    cond15 = text15.execute(**{**defaults(text15), "clip": clip15, "tags": "pop", "lyrics": "la", "duration": 10.0,
                               "bpm": 120, "generate_audio_codes": False, "planner_caption": False}).args[0]
    latent1 = nodes("latent").EmptyLatentAudio.execute(4.0, 1).args[0]
    latent15 = nodes("v15_latent").EmptyLatentAudio15.execute(4.0, 1).args[0]
    return {"v1": {"MODEL": model1, "CLIP": clip1, "VAE": vae1, "LATENT": latent1, "CONDITIONING": cond1},
            "1.5": {"MODEL": model15, "CLIP": clip15, "VAE": vae15, "LATENT": latent15, "CONDITIONING": cond15},
            "1.5 base": base15, "audio": {"waveform": torch.zeros(1, 2, 48000), "sample_rate": 48000}}


def defaults(cls) -> dict:
    """The node's widget defaults (a combo without one: its first option); optional inputs left out."""
    out = {}
    for i in cls.define_schema().inputs:
        if i.optional:
            continue
        value = getattr(i, "default", None)
        if value is None and getattr(i, "options", None):
            value = i.options[0]
        out[i.id] = value
    return out


def arguments(cls, family: dict, objects) -> dict:
    """Every input of `cls` right for `family`, 1 step, 4 s; optional object inputs connected too."""
    args = defaults(cls)
    for name, kind in family_inputs(cls).items():
        args[name] = family[kind]
    if "audio" in args:
        args["audio"] = objects["audio"]
    for name, value in (("steps", 1), ("seeds", "1"), ("duration", 4.0)):
        if name in args:
            args[name] = value
    return args


def v1_cases():
    return [pytest.param(node, name, id=f"{node}.{name}") for node, (_, names) in V1_NODES.items() for name in names]


def v15_cases():
    return [pytest.param(node, name, id=f"{node}.{name}") for node, names in V15_NODES.items() for name in names]


def test_every_v1_and_15_object_input_is_covered():
    """Each node of the pack with a MODEL / CLIP / VAE / LATENT / CONDITIONING input is in its family's table with
    all of them (loaders without such inputs, LoadAudio, SaveAudio and the empty latents have none)."""
    for name, cls in node_classes().items():
        table = V15_NODES if is_v15_node(cls) else {k: v[1] for k, v in V1_NODES.items()}
        inputs = family_inputs(cls)
        assert sorted(table.get(name, [])) == sorted(inputs), (name, inputs)


@pytest.mark.parametrize("node,name", v1_cases())
def test_v1_node_refuses_the_15_input_with_the_fix(objects, node, name):
    cls = node_classes()[node]
    kind = family_inputs(cls)[name]
    args = arguments(cls, objects["v1"], objects)
    if node == "LoraLoader":
        args["lora_name"] = "none.safetensors"  # refused before the file is looked for
    args[name] = objects["1.5"][kind]
    error, arrived, fix = V1_EXPECTED[kind]
    with pytest.raises(error) as raised:
        cls.execute(**args)
    message = str(raised.value)
    assert arrived in message and fix in message, message
    assert f"for ACE-Step 1.5 use {V1_NODES[node][0]}" in message, message


@pytest.mark.parametrize("node,name", v15_cases())
def test_15_node_refuses_the_v1_input_with_the_fix(objects, node, name):
    cls = node_classes()[node]
    kind = family_inputs(cls)[name]
    args = arguments(cls, objects["1.5"], objects)
    if node in STEMS:
        args["model"] = objects["1.5 base"]
    if node == "TextEncode15":
        args.update(duration=10.0, bpm=120, generate_audio_codes=False, planner_caption=False)
    if node == "LoraLoader15":
        args["lora_name"] = "none.safetensors"
    if node == "DiffusionModelLoader15":
        args["unet_name"] = "none.safetensors"  # the VAE is checked before the file is looked for
    args[name] = objects["v1"][kind]
    error, arrived, fix = V15_EXPECTED[kind]
    with pytest.raises(error) as raised:
        cls.execute(**args)
    message = str(raised.value)
    assert arrived in message and fix in message, message


def test_core_ksampler_with_a_15_model_refuses_a_v1_conditioning(objects):
    """Core KSampler checks nothing itself: the 1.5 MODEL's extra_conds refuses v1 lyric token ids."""
    import nodes as comfy_nodes

    with pytest.raises(ValueError, match="ACE-Step v1 CONDITIONING .*connect ACE-Step 1.5 Text Encode"):
        comfy_nodes.KSampler().sample(objects["1.5"]["MODEL"], 1, 1, 1.0, "euler", "simple",
                                      objects["v1"]["CONDITIONING"], objects["v1"]["CONDITIONING"],
                                      objects["1.5"]["LATENT"])


def test_conditioning_family_from_the_encoders_markers():
    """v1: lyric token ids (integers, as ComfyUI's TextEncodeAceStepAudio makes them too); 1.5: float lyric
    embeddings (ComfyUI's TextEncodeAceStepAudio1.5 too) or the pack's metadata; ConditioningZeroOut keeps the
    lyrics, so a zeroed conditioning keeps its family."""
    family = bridge("v15_family")
    text = torch.zeros(1, 3, 32)
    assert family.conditioning_family([[text, {"conditioning_lyrics": torch.zeros(1, 9, dtype=torch.long)}]]) == "v1"
    assert family.conditioning_family([[text, {"conditioning_lyrics": torch.zeros(1, 9, 32)}]]) == "1.5"
    assert family.conditioning_family([[text, {family.METADATA_KEY: object()}]]) == "1.5"
    assert family.conditioning_family([[text, {}]]) is None
    assert family.conditioning_family("not a conditioning") is None


def test_v1_text_node_still_takes_another_ace_step_clip(objects):
    """A CLIP that is not the pack's (ComfyUI's own ACE-Step one) passes the check, as before: no report, no ERG."""
    calls = []
    other = types.SimpleNamespace(
        tokenize=lambda tags, lyrics="": calls.append((tags, lyrics)) or {"tokens": 1},
        encode_from_tokens_scheduled=lambda tokens: [[torch.zeros(1, 3, 32),
                                                      {"conditioning_lyrics": torch.zeros(1, 4, dtype=torch.long)}]])
    out = nodes("text").TextEncode.execute(other, "pop", "la", 1.0)
    assert calls == [("pop", "la")] and out.args[0][0][1]["lyrics_strength"] == 1.0


def test_v1_latent_nodes_refuse_a_vae_of_no_acestep_kind(objects):
    """The v1 audio nodes call the pack's v1 VAE's own methods: another VAE is refused with the core nodes to use."""
    with pytest.raises(TypeError, match="a SimpleNamespace, not an ACE-Step v1 VAE.*core VAE Encode/Decode Audio"):
        nodes("latent").AudioToLatent.execute(objects["audio"], types.SimpleNamespace())
