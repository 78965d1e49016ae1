"""The project's API-format workflows, made CI-sized for the tiny demo checkpoint."""
import math
import random
from pathlib import Path

import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
API_WORKFLOWS = sorted((ROOT / "workflows" / "api").glob("*.json"))
EXAMPLE_SECONDS = sf.info(ROOT / "example_audio" / "example_song.flac").duration
# A LoRA for the tiny checkpoint (ace_step.lora.write_test_lora), put in models/loras/ by the tiny_checkpoint fixture.
TINY_LORA = "ace_step_v1_tiny_demo_lora.safetensors"
# The editing nodes' widgets that CI shrinks, by position in the UI widget list: (seeds, steps) and Extend's sides.
EDIT_WIDGETS = {"AceStudioRepaint": (3, 5), "AceStudioExtend": (3, 5), "AceStudioLyricEdit": (4, 5),
                "AceStudioAudio2Audio": (1, 2)}
EXTEND_SECONDS = (1.0, 2.0)  # both sides, under the 240 s window
# The tiny ACE-Step 1.5 demo files (tests/fixtures/v15_tiny_checkpoint.py) the 1.5 workflows are pointed at: the
# all-in-one checkpoint and the split files (DiT, text encoder, LM, VAE).
TINY15_CHECKPOINT = "ace_step_1.5_tiny_demo_aio.safetensors"
TINY15_FILES = {"dit": "acestep_v1.5_tiny_demo_turbo.safetensors", "text_encoder": "qwen_tiny_demo_ace15.safetensors",
                "lm": "qwen_tiny_demo_lm_ace15.safetensors", "vae": "ace_1.5_tiny_demo_vae.safetensors"}
# The tiny DiT again, named (and stated) a base model, for the base-only tasks; a PEFT LoRA for the tiny DiT in its
# own folder with its adapter_config.json, as ACE-Step 1.5's trainer saves it.
TINY15_BASE_DIT = "acestep_v1.5_tiny_demo_base.safetensors"
TINY15_LORA = "ace_step15_tiny_demo_lora/adapter_model.safetensors"
V15_STEM_NODES = ("AceStudio15Extract", "AceStudio15Lego", "AceStudio15Complete")
# The 1.5 prompt states the song's length, 10 s at least; the planner writes 5 codes per second of it.
TINY15_DURATION = 10.0
V15_SAMPLE_RATE, V15_SAMPLES_PER_FRAME = 48000, 1920


@pytest.fixture(scope="session")
def tiny15_files(comfy_server) -> str:
    """The tiny ACE-Step 1.5 files (bf16, as the real ones) in the test server's model folders, where the prepared
    1.5 workflows look for them."""
    import torch

    from fixtures.v15_tiny_checkpoint import write_tiny15
    from measure import OUTPUT_DIR

    models = OUTPUT_DIR / "comfy-base" / "models"
    if not (models / "checkpoints" / TINY15_CHECKPOINT).exists():
        write_tiny15(models / "checkpoints" / TINY15_CHECKPOINT, dtype=torch.bfloat16)
    if not all((models / folder / name).exists() for folder, name in
               zip(("diffusion_models", "text_encoders", "text_encoders", "vae"), TINY15_FILES.values())):
        write_tiny15(models, layout="comfyui-split", dtype=torch.bfloat16)
    write_tiny15_base_and_lora(models)
    return TINY15_CHECKPOINT


def write_tiny15_base_and_lora(models: Path):
    """TINY15_BASE_DIT and TINY15_LORA in a ComfyUI models folder (once)."""
    import tempfile

    import torch

    from ace_step.loading.state_loading import build_on_meta, state_shapes
    from ace_step.loading.v15_keys import DIT
    from ace_step.models.v15.model import AceStep15
    from fixtures.v15_adapters import make_v15_lora, write_adapter
    from fixtures.v15_tiny_checkpoint import tiny15_configs, write_tiny15

    base = models / "diffusion_models" / TINY15_BASE_DIT
    if not base.exists():
        with tempfile.TemporaryDirectory() as tmp:
            written = write_tiny15(tmp, layout="comfyui-split", dtype=torch.bfloat16, variant="base", lm=False)
            written[DIT].replace(base)
    lora = models / "loras" / TINY15_LORA
    if not lora.exists():
        shapes = state_shapes(build_on_meta(AceStep15, tiny15_configs()[DIT]))
        tensors, config = make_v15_lora(shapes, rank=4, alpha=8, seed=6)
        write_adapter(lora, tensors, config)


def is_v15(prompt: dict) -> bool:
    """An ACE-Step 1.5 workflow (API format)."""
    return any(node["class_type"].startswith("AceStudio15") for node in prompt.values())


def prepare(prompt: dict, checkpoint: str, seconds: float = 4.0, steps: int = 3, lora: str = TINY_LORA) -> dict:
    """Points a workflow at the tiny checkpoint (and its LoRA) and makes it CI-sized."""
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "AceStudioCheckpointLoader":
            inputs["ckpt_name"] = checkpoint
        if node["class_type"] == "AceStudioLoraLoader":
            inputs["lora_name"] = lora
        if node["class_type"] == "AceStudioEmptyLatentAudio":
            inputs["seconds"] = seconds
        if node["class_type"] == "KSampler":
            inputs["steps"], inputs["seed"] = steps, random.randrange(2**32)
        if node["class_type"] in ("AceStudioOriginalSampler", "AceStudioRetake"):
            inputs["seeds"], inputs["duration"], inputs["steps"] = str(random.randrange(2**32)), seconds, steps
        if node["class_type"] in EDIT_WIDGETS:
            inputs["seeds"], inputs["steps"] = str(random.randrange(2**32)), steps
        if node["class_type"] == "AceStudioExtend":
            inputs["left_seconds"], inputs["right_seconds"] = EXTEND_SECONDS
        if node["class_type"] == "AceStudioOriginalSchedule":
            inputs["steps"] = steps
        if node["class_type"] == "AceStudioSeedsNoise":
            inputs["seeds"] = str(random.randrange(2**32))
        if node["class_type"] == "AceStudioSaveAudio":
            inputs["filename_prefix"] = f"tests/{inputs['filename_prefix'].split('/')[-1]}"
        prepare_v15_node(node["class_type"], inputs, seconds)
    return prompt


def prepare_v15_node(node_type: str, inputs: dict, seconds: float):
    """Points an ACE-Step 1.5 node at the tiny files and makes it CI-sized (API inputs by name)."""
    if node_type == "AceStudio15CheckpointLoader":
        inputs["ckpt_name"] = TINY15_CHECKPOINT
    elif node_type == "AceStudio15DiffusionModelLoader":
        inputs["unet_name"] = TINY15_BASE_DIT if "base" in inputs["unet_name"] else TINY15_FILES["dit"]
    elif node_type == "AceStudio15LoraLoader":
        inputs["lora_name"] = TINY15_LORA
    elif node_type in V15_STEM_NODES:
        inputs["steps"], inputs["seed"] = 2, random.randrange(2**32)
    elif node_type == "AceStudio15TextEncoderLoader":
        inputs["text_encoder_name"] = TINY15_FILES["text_encoder"]
        if inputs["lm_name"] != "none":
            inputs["lm_name"] = TINY15_FILES["lm"]
    elif node_type == "AceStudio15VaeLoader":
        inputs["vae_name"] = TINY15_FILES["vae"]
    elif node_type == "AceStudio15EmptyLatentAudio":
        inputs["seconds"] = seconds
    elif node_type == "AceStudio15TextEncode":
        inputs["duration"], inputs["seed"] = TINY15_DURATION, random.randrange(2**32)
    elif node_type == "AceStudio15Extend":
        inputs["left_seconds"], inputs["right_seconds"] = EXTEND_SECONDS


def expected_rate(prompt: dict) -> int:
    return V15_SAMPLE_RATE if is_v15(prompt) else 44100


def expected_samples(prompt: dict, seconds: float) -> int:
    if is_v15(prompt):
        if any(n["class_type"] in V15_STEM_NODES for n in prompt.values()):  # the example song, same length
            return math.ceil(EXAMPLE_SECONDS * V15_SAMPLE_RATE / V15_SAMPLES_PER_FRAME) * V15_SAMPLES_PER_FRAME
        types = {n["class_type"] for n in prompt.values()}
        if "AceStudio15EmptyLatentAudio" in types:
            return round(seconds * V15_SAMPLE_RATE / V15_SAMPLES_PER_FRAME) * V15_SAMPLES_PER_FRAME
        frames = math.ceil(EXAMPLE_SECONDS * V15_SAMPLE_RATE / V15_SAMPLES_PER_FRAME)  # the example song, edited
        for node in prompt.values():
            if node["class_type"] == "AceStudio15Extend":
                frames += sum(int(node["inputs"][side] * 25) for side in ("left_seconds", "right_seconds"))
        return frames * V15_SAMPLES_PER_FRAME
    types = {n["class_type"] for n in prompt.values()}
    if "AceStudioAudioToLatent" in types:
        frames = math.ceil(EXAMPLE_SECONDS * 44100 / 4096)  # padded to whole frames, never cropped
    else:
        frames = int(seconds * 44100 / 4096)
    for node in prompt.values():
        if node["class_type"] == "AceStudioExtend":
            frames += sum(int(node["inputs"][side] * 44100 / 4096) for side in ("left_seconds", "right_seconds"))
    return frames * 4096


def prepare_ui(workflow: dict, checkpoint: str, seconds: float = 4.0, steps: int = 3, lora: str = TINY_LORA) -> dict:
    """The UI-format counterpart of `prepare`: same changes, made to the nodes' widget values."""
    for node in workflow["nodes"]:
        values = node.get("widgets_values")
        if node["type"] == "AceStudioCheckpointLoader":
            values[0] = checkpoint
        elif node["type"] == "AceStudioLoraLoader":
            values[0] = lora
        elif node["type"] == "AceStudioEmptyLatentAudio":
            values[0] = seconds
        elif node["type"] == "KSampler":
            values[0], values[2] = random.randrange(2**32), steps  # seed, control_after_generate, steps, ...
        elif node["type"] in ("AceStudioOriginalSampler", "AceStudioRetake"):
            values[0], values[1], values[2] = str(random.randrange(2**32)), seconds, steps  # seeds, duration, steps
        elif node["type"] in EDIT_WIDGETS:
            seeds, steps_at = EDIT_WIDGETS[node["type"]]
            values[seeds], values[steps_at] = str(random.randrange(2**32)), steps
            if node["type"] == "AceStudioExtend":
                values[0], values[1] = EXTEND_SECONDS
        elif node["type"] == "AceStudioOriginalSchedule":
            values[0] = steps
        elif node["type"] == "AceStudioSeedsNoise":
            values[0] = str(random.randrange(2**32))
        elif node["type"].startswith("AceStudio15"):
            names = V15_WIDGETS.get(node["type"])
            if names:
                inputs = dict(zip(names, values))
                prepare_v15_node(node["type"], inputs, seconds)
                values[:len(names)] = [inputs[n] for n in names]
    return workflow


# The 1.5 nodes' leading widgets as the UI format stores them (in schema order), for `prepare_ui`.
V15_WIDGETS = {
    "AceStudio15CheckpointLoader": ("ckpt_name",),
    "AceStudio15DiffusionModelLoader": ("unet_name",),
    "AceStudio15TextEncoderLoader": ("text_encoder_name", "lm_name"),
    "AceStudio15VaeLoader": ("vae_name",),
    "AceStudio15EmptyLatentAudio": ("seconds",),
    "AceStudio15LoraLoader": ("lora_name",),
    "AceStudio15Extract": ("track", "seed", "control_after_generate", "steps"),
    "AceStudio15Complete": ("tracks", "seed", "control_after_generate", "steps"),
    "AceStudio15Lego": ("track", "start_seconds", "end_seconds", "crossfade_frames", "injection_ratio", "seed",
                        "control_after_generate", "steps"),
    "AceStudio15Extend": ("left_seconds", "right_seconds"),
    "AceStudio15TextEncode": ("tags", "lyrics", "bpm", "duration", "timesignature", "language", "keyscale",
                              "generate_audio_codes", "planner_caption", "lm_cfg_scale", "temperature", "top_p",
                              "top_k", "min_p", "seed"),
}
