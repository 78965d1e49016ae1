"""ACE-Step 1.5 through the real ComfyUI server (CPU) with the tiny 1.5 files: the original Hugging Face folder in
models/checkpoints/ listed per DiT and loaded with its own silence latent, the planner's metadata and codes seen by
the DiT, and clear refusals of wrong-family inputs and of a DiT loaded without any silence-latent source.

The 1.5 workflows themselves run in test_workflows.py (API) and test_browser.py (dropped into the frontend)."""
import json

import pytest
import soundfile as sf
import torch

from comfy_harness import run_prompt
from measure import OUTPUT_DIR
from workflow_prompts import (ROOT, TINY15_FILES, V15_SAMPLE_RATE, prepare, tiny15_files)  # noqa: F401

HF_FOLDER = "AceStep15TinyOriginal"
SECONDS = 3.0


def turbo_prompt(tiny_checkpoint, workflow="ace_step15_turbo_song") -> dict:
    return prepare(json.loads((ROOT / "workflows" / "api" / f"{workflow}.json").read_text()), tiny_checkpoint,
                   SECONDS, steps=2)


def saved_audio(result):
    [saved] = result.output_files("audio")
    return sf.read(OUTPUT_DIR / "comfy-base" / "output" / saved["subfolder"] / saved["filename"])


@pytest.fixture(scope="module")
def hf_folder(comfy_server):
    """The tiny files in the original Hugging Face layout (with its silence_latent.pt) in models/checkpoints/."""
    from fixtures.v15_tiny_checkpoint import write_tiny15

    root = OUTPUT_DIR / "comfy-base" / "models" / "checkpoints" / HF_FOLDER
    if not (root / "acestep-v15-turbo" / "model.safetensors").exists():
        write_tiny15(root, layout="hf-folder", dtype=torch.bfloat16)
    return f"{HF_FOLDER}/acestep-v15-turbo/"


def test_original_folder_is_listed_per_dit_and_runs(comfy_server, tiny_checkpoint, tiny15_files, hf_folder):
    info = comfy_server.get_json("/object_info/AceStudio15CheckpointLoader")["AceStudio15CheckpointLoader"]
    kind, options = info["input"]["required"]["ckpt_name"][:2]
    assert hf_folder in (options["options"] if kind == "COMBO" else kind)
    prompt = turbo_prompt(tiny_checkpoint)
    prompt["1"]["inputs"]["ckpt_name"] = hf_folder
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "success", f"{result.error}\n{comfy_server.log_tail()}"
    data, rate = saved_audio(result)
    assert rate == V15_SAMPLE_RATE and data.shape == (round(SECONDS * 25) * 1920, 2)
    assert f"ACE-Step 1.5 silence latent: file {comfy_server.base_dir.resolve()}/models/checkpoints/{HF_FOLDER}" \
        f"/acestep-v15-turbo/silence_latent.pt" in comfy_server.log_tail(10**6)


def test_a_v1_latent_into_the_15_model_names_the_fix(comfy_server, tiny_checkpoint, tiny15_files):
    prompt = turbo_prompt(tiny_checkpoint)
    prompt["5"] = {"class_type": "AceStudioEmptyLatentAudio", "inputs": {"seconds": SECONDS, "batch_size": 1}}
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "error" and result.error["node_type"] == "KSampler"
    assert "ACE-Step v1 song latent" in result.error["exception_message"]
    assert "Empty ACE-Step 1.5 Latent Audio" in result.error["exception_message"]


def test_a_v1_vae_or_clip_into_15_nodes_names_the_fix(comfy_server, tiny_checkpoint, tiny15_files):
    prompt = turbo_prompt(tiny_checkpoint)
    prompt["20"] = {"class_type": "AceStudioCheckpointLoader", "inputs": {"ckpt_name": tiny_checkpoint}}
    prompt["7"]["inputs"]["vae"] = ["20", 2]
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "error" and result.error["node_type"] == "AceStudio15LatentToAudio"
    assert "ACE-Step v1 VAE" in result.error["exception_message"]
    assert "Load ACE-Step 1.5" in result.error["exception_message"]

    prompt = turbo_prompt(tiny_checkpoint)
    prompt["20"] = {"class_type": "AceStudioCheckpointLoader", "inputs": {"ckpt_name": tiny_checkpoint}}
    prompt["3"]["inputs"]["clip"] = ["20", 1]
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "error" and "ACE-Step v1 CLIP" in result.error["exception_message"]


def test_a_v1_checkpoint_into_the_15_loader_names_the_node(comfy_server, tiny_checkpoint, tiny15_files):
    prompt = turbo_prompt(tiny_checkpoint)
    prompt["1"]["inputs"]["ckpt_name"] = tiny_checkpoint
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "error" and result.error["node_type"] == "AceStudio15CheckpointLoader"
    assert "Load ACE-Step Checkpoint" in result.error["exception_message"]


def test_the_dit_loader_without_a_silence_source_names_the_fix(comfy_server, tiny_checkpoint, tiny15_files):
    """ComfyUI 0.3.75 has no ACE-Step 1.5 of its own and a split DiT file no silence_latent.pt: the VAE input is
    what makes it loadable."""
    prompt = turbo_prompt(tiny_checkpoint, "ace_step15_turbo_no_planner")
    del prompt["1"]["inputs"]["vae"]
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "error" and result.error["node_type"] == "AceStudio15DiffusionModelLoader"
    assert "connect the ACE-Step 1.5 VAE to this loader's vae input" in result.error["exception_message"]


def test_planner_without_an_lm_names_the_fix(comfy_server, tiny_checkpoint, tiny15_files):
    prompt = turbo_prompt(tiny_checkpoint, "ace_step15_turbo_no_planner")
    prompt["3"]["inputs"]["generate_audio_codes"] = True
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "error" and result.error["node_type"] == "AceStudio15TextEncode"
    assert "no 5 Hz LM is loaded" in result.error["exception_message"]
    assert prompt["10"]["inputs"]["text_encoder_name"] == TINY15_FILES["text_encoder"]
