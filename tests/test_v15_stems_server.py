"""The ACE-Step 1.5 stem and LoRA workflows' refusals through the real ComfyUI server (CPU) with the tiny 1.5 files:
a base-only task on the turbo DiT names the base model files, an unknown track lists the known ones, a v1 LoRA on
the 1.5 MODEL names the v1 LoRA node, a 1.5 MODEL into the v1 LoRA node names the 1.5 one. Each fails before any
sampling. The workflows themselves run in test_workflows.py (API) and test_browser.py (dropped into the frontend)."""
import json

from comfy_harness import run_prompt
from workflow_prompts import ROOT, TINY15_FILES, TINY_LORA, prepare, tiny15_files  # noqa: F401


def stem_prompt(tiny_checkpoint, name: str) -> dict:
    return prepare(json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text()), tiny_checkpoint, 3.0,
                   steps=2)


def test_base_only_tasks_on_the_turbo_dit_name_the_base_files(comfy_server, tiny_checkpoint, tiny15_files):
    prompt = stem_prompt(tiny_checkpoint, "ace_step15_extract")
    prompt["1"]["inputs"]["unet_name"] = TINY15_FILES["dit"]  # the tiny turbo DiT
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "error" and result.error["node_type"] == "AceStudio15Extract"
    message = result.error["exception_message"]
    assert "extract runs on the base model only" in message and "is the turbo model" in message
    assert "acestep_v1.5_base.safetensors" in message and "Load ACE-Step 1.5 Diffusion Model" in message

    prompt = stem_prompt(tiny_checkpoint, "ace_step15_complete")
    prompt["6"]["inputs"]["tracks"] = "drums, cowbell"
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "error" and result.error["node_type"] == "AceStudio15Complete"
    assert "unknown track 'cowbell': ACE-Step 1.5 knows vocals, backing_vocals, drums" in \
        result.error["exception_message"]


def test_lora_nodes_refuse_the_other_family(comfy_server, tiny_checkpoint, tiny15_files):
    prompt = stem_prompt(tiny_checkpoint, "ace_step15_lora")
    prompt["12"]["inputs"]["lora_name"] = TINY_LORA  # the tiny v1 LoRA
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "error" and result.error["node_type"] == "AceStudio15LoraLoader"
    assert "ACE-Step v1 LoRA" in result.error["exception_message"]
    assert "ACE-Step LoRA node" in result.error["exception_message"]

    prompt = stem_prompt(tiny_checkpoint, "ace_step15_lora")
    prompt["12"]["class_type"] = "AceStudioLoraLoader"  # the v1 node, same inputs
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "error" and result.error["node_type"] == "AceStudioLoraLoader"
    assert "ACE-Step 1.5 LoRA / LoKr node" in result.error["exception_message"]
