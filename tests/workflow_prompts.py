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
# The editing nodes' widgets that CI shrinks, by position in the UI widget list: (seeds, steps) and Extend's sides.
EDIT_WIDGETS = {"AceStudioRepaint": (3, 5), "AceStudioExtend": (3, 5), "AceStudioLyricEdit": (4, 5),
                "AceStudioAudio2Audio": (1, 2)}
EXTEND_SECONDS = (1.0, 2.0)  # both sides, under the 240 s window


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
    return prompt


def expected_samples(prompt: dict, seconds: float) -> int:
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
    return workflow
