"""The project's API-format workflows, made CI-sized for the tiny demo checkpoint."""
import math
import random
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
API_WORKFLOWS = sorted((ROOT / "workflows" / "api").glob("*.json"))
EXAMPLE_SECONDS = sf.info(ROOT / "example_audio" / "example_song.flac").duration
# A LoRA for the tiny checkpoint (ace_step.lora.write_test_lora), put in models/loras/ by the tiny_checkpoint fixture.
TINY_LORA = "ace_step_v1_tiny_demo_lora.safetensors"


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
        if node["class_type"] == "AceStudioOriginalSampler":
            inputs["seeds"], inputs["duration"], inputs["steps"] = str(random.randrange(2**32)), seconds, steps
        if node["class_type"] == "AceStudioOriginalSchedule":
            inputs["steps"] = steps
        if node["class_type"] == "AceStudioSeedsNoise":
            inputs["seeds"] = str(random.randrange(2**32))
        if node["class_type"] == "AceStudioSaveAudio":
            inputs["filename_prefix"] = f"tests/{inputs['filename_prefix'].split('/')[-1]}"
    return prompt


def expected_samples(prompt: dict, seconds: float) -> int:
    types = {n["class_type"] for n in prompt.values()}
    if "AceStudioAudioToLatent" in types:
        frames = math.ceil(EXAMPLE_SECONDS * 44100 / 4096)  # padded to whole frames, never cropped
    else:
        frames = int(seconds * 44100 / 4096)
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
        elif node["type"] == "AceStudioOriginalSampler":
            values[0], values[1], values[2] = str(random.randrange(2**32)), seconds, steps  # seeds, duration, steps
        elif node["type"] == "AceStudioOriginalSchedule":
            values[0] = steps
        elif node["type"] == "AceStudioSeedsNoise":
            values[0] = str(random.randrange(2**32))
    return workflow
