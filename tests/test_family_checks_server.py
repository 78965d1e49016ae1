"""ACE-Step v1 and 1.5 objects crossed in real workflows, through the real ComfyUI server (CPU, tiny files): the
node refuses the other family's input before it works, the client gets the message with the fix, and the server
runs the next prompt. Every node × input in process: test_family_checks.py."""
import json

from comfy_harness import run_prompt
from workflow_prompts import ROOT, TINY15_CHECKPOINT, prepare, tiny15_files  # noqa: F401

LOADER15 = {"class_type": "AceStudio15CheckpointLoader",
            "inputs": {"ckpt_name": TINY15_CHECKPOINT, "weight_dtype": "default"}}


def workflow(name: str, checkpoint: str) -> dict:
    return prepare(json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text()), checkpoint, 4.0)


def refused(result, node_type: str, node_id: str, *words: str) -> str:
    assert result.status == "error" and result.error["node_type"] == node_type, result.error
    message = result.error["exception_message"]
    assert all(w in message for w in words), message
    assert not any(e["type"] == "progress" and e["data"].get("node") == node_id for e in result.events)
    return message


def test_15_clip_into_the_v1_song_is_refused_and_the_server_goes_on(comfy_server, tiny_checkpoint, tiny15_files):
    prompt = workflow("ace_step_song", tiny_checkpoint)
    crossed = json.loads(json.dumps(prompt))
    crossed["20"] = LOADER15
    crossed["4"]["inputs"]["clip"] = ["20", 1]
    refused(run_prompt(comfy_server, crossed, timeout=300), "AceStudioTextEncode", "4",
            "this CLIP is an ACE-Step 1.5 CLIP", "connect the CLIP output of Load ACE-Step Checkpoint",
            "for ACE-Step 1.5 use ACE-Step 1.5 Text Encode")
    assert run_prompt(comfy_server, prompt, timeout=300).status == "success"


def test_15_latent_into_v1_repaint_and_v1_conditioning_into_15_cover_name_the_fix(comfy_server, tiny_checkpoint,
                                                                                  tiny15_files):
    prompt = workflow("ace_step_repaint", tiny_checkpoint)
    prompt["20"] = {"class_type": "AceStudio15EmptyLatentAudio", "inputs": {"seconds": 4.0, "batch_size": 1}}
    prompt["10"]["inputs"]["source"] = ["20", 0]
    refused(run_prompt(comfy_server, prompt, timeout=300), "AceStudioRepaint", "10",
            "an ACE-Step 1.5 song latent [batch, 64, frames]", "Audio to ACE-Step Latent",
            "for ACE-Step 1.5 use ACE-Step 1.5 Repaint")

    prompt = workflow("ace_step15_cover", tiny_checkpoint)
    prompt["20"] = {"class_type": "AceStudioCheckpointLoader", "inputs": {"ckpt_name": tiny_checkpoint}}
    prompt["21"] = {"class_type": "AceStudioTextEncode",
                    "inputs": {"clip": ["20", 1], "tags": "pop", "lyrics": "[inst]", "lyrics_strength": 1.0}}
    prompt["6"]["inputs"]["positive"] = ["21", 0]
    refused(run_prompt(comfy_server, prompt, timeout=300), "AceStudio15Cover", "6",
            "is an ACE-Step v1 CONDITIONING", "connect ACE-Step 1.5 Text Encode")
