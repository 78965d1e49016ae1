"""The project's API-format workflows, made CI-sized for the tiny demo checkpoint."""
import math
import random
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent
API_WORKFLOWS = sorted((ROOT / "workflows" / "api").glob("*.json"))
EXAMPLE_SECONDS = sf.info(ROOT / "example_audio" / "example_song.flac").duration


def prepare(prompt: dict, checkpoint: str, seconds: float = 4.0, steps: int = 3) -> dict:
    """Points a workflow at the tiny checkpoint and makes it CI-sized; returns the expected sample count."""
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "AceStudioCheckpointLoader":
            inputs["ckpt_name"] = checkpoint
        if node["class_type"] == "AceStudioEmptyLatentAudio":
            inputs["seconds"] = seconds
        if node["class_type"] == "KSampler":
            inputs["steps"], inputs["seed"] = steps, random.randrange(2**32)
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


def prepare_ui(workflow: dict, checkpoint: str, seconds: float = 4.0, steps: int = 3) -> dict:
    """The UI-format counterpart of `prepare`: same changes, made to the nodes' widget values."""
    for node in workflow["nodes"]:
        values = node.get("widgets_values")
        if node["type"] == "AceStudioCheckpointLoader":
            values[0] = checkpoint
        elif node["type"] == "AceStudioEmptyLatentAudio":
            values[0] = seconds
        elif node["type"] == "KSampler":
            values[0], values[2] = random.randrange(2**32), steps  # seed, control_after_generate, steps, ...
    return workflow
