"""ACE-Step 1.5 editing nodes through the real ComfyUI server (CPU, tiny 1.5 files): bad input refused with the fix,
by the editing node, before it samples. The workflows themselves run in test_workflows.py and test_browser.py."""
import json

from comfy_harness import run_prompt
from workflow_prompts import ROOT, prepare, tiny15_files  # noqa: F401


def task_prompt(tiny_checkpoint, workflow: str) -> dict:
    return prepare(json.loads((ROOT / "workflows" / "api" / f"{workflow}.json").read_text()), tiny_checkpoint, 4.0)


def test_repaint_range_outside_the_song_is_refused(comfy_server, tiny_checkpoint, tiny15_files):
    prompt = task_prompt(tiny_checkpoint, "ace_step15_repaint")
    prompt["6"]["inputs"]["start_seconds"], prompt["6"]["inputs"]["end_seconds"] = 20.0, 25.0  # the song is 12 s
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "error" and result.error["node_type"] == "AceStudio15Repaint"
    assert "outside the song (0 to 12.00 s)" in result.error["exception_message"]
    assert not any(e["type"] == "progress" and e["data"].get("node") == "6" for e in result.events)
    prompt["6"]["inputs"]["start_seconds"], prompt["6"]["inputs"]["end_seconds"] = 6.0, 5.0
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "error" and "end must be after start" in result.error["exception_message"]


def test_v1_inputs_into_the_cover_node_name_the_fix(comfy_server, tiny_checkpoint, tiny15_files):
    prompt = task_prompt(tiny_checkpoint, "ace_step15_cover")
    prompt["20"] = {"class_type": "AceStudioEmptyLatentAudio", "inputs": {"seconds": 4.0, "batch_size": 1}}
    prompt["6"]["inputs"]["source"] = ["20", 0]
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "error" and result.error["node_type"] == "AceStudio15Cover"
    assert "ACE-Step v1 song latent" in result.error["exception_message"]
    assert "Audio to ACE-Step 1.5 Latent" in result.error["exception_message"]

    prompt = task_prompt(tiny_checkpoint, "ace_step15_cover")
    prompt["20"] = {"class_type": "AceStudioCheckpointLoader", "inputs": {"ckpt_name": tiny_checkpoint}}
    prompt["6"]["inputs"]["model"] = ["20", 0]
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "error" and "ACE-Step v1 MODEL" in result.error["exception_message"]
    assert "Load ACE-Step 1.5 Checkpoint" in result.error["exception_message"]
