"""Low-VRAM runs through the real server: in ComfyUI's low-VRAM and no-VRAM states and with --reserve-vram, the song
workflow loads the pack's diffusion model partially and gives the normal run's latent.

This machine has no GPU, and ComfyUI loads everything whole on a CPU, so each server runs with tests/lowvram_hook: a
stand-in GPU on the CPU whose size is ComfyUI's default inference reserve plus SPARE_MIB. ComfyUI's own load
arithmetic then picks the budget (the tiny model's transformer is about 4.4 MB): the layers past it stay on the
offload device and are cast at call time by comfy.ops, as on a small GPU. --reserve-vram is passed for real;
--lowvram and --novram cannot be combined with --cpu, so the hook sets the VRAM state they set.
"""
import json

import pytest
import torch
from safetensors.torch import load_file

from comfy_harness import ComfyServer, run_prompt
from conftest import LOWVRAM_HOOK  # noqa: F401  (the hook is linked into the session's custom_nodes)
from measure import OUTPUT_DIR, max_rel_error, report
from workflow_prompts import ROOT, prepare

SPARE_MIB = 4.0
SEED = 1234
CASES = {  # (flags, ComfyUI's VRAM state) -> what the load must look like
    "normal": ((), "NORMAL_VRAM", "partial"),
    "lowvram": ((), "LOW_VRAM", "partial"),
    "novram": ((), "NO_VRAM", "nothing"),
    # 401 MiB instead of the default 400: 1 MiB less for the weights than the normal case.
    "reserve": (("--reserve-vram", str(401 / 1024)), "NORMAL_VRAM", "partial"),
}


def song_prompt(checkpoint: str, prefix: str) -> dict:
    prompt = prepare(json.loads((ROOT / "workflows/api/ace_step_song.json").read_text()), checkpoint, seconds=3.0,
                     steps=2)
    sampler = next(k for k, n in prompt.items() if n["class_type"] == "KSampler")
    prompt[sampler]["inputs"]["seed"] = SEED
    prompt["save_latent"] = {"class_type": "SaveLatent",
                             "inputs": {"samples": [sampler, 0], "filename_prefix": f"lowvram/{prefix}"}}
    return prompt


def saved_latent(result, base) -> torch.Tensor:
    [image] = result.history["outputs"]["save_latent"]["latents"]
    path = base / "output" / image["subfolder"] / image["filename"]
    return load_file(path)["latent_tensor"]


@pytest.fixture(scope="module")
def reference(comfy_server, tiny_checkpoint):
    base = OUTPUT_DIR / "comfy-base"
    result = run_prompt(comfy_server, song_prompt(tiny_checkpoint, "reference"))
    assert result.status == "success", result.error
    return saved_latent(result, base)


@pytest.mark.parametrize("case", list(CASES))
def test_low_vram_runs_match_the_normal_run(case, reference, tiny_checkpoint, tmp_path):
    flags, state, expected_load = CASES[case]
    base = OUTPUT_DIR / "comfy-base"
    report_path = tmp_path / "loads.jsonl"
    server = ComfyServer(base_dir=base, log_path=OUTPUT_DIR / f"comfyui-lowvram-{case}.log", extra_args=flags,
                         env={"ACESTUDIO_FAKE_VRAM_SPARE_MIB": str(SPARE_MIB), "ACESTUDIO_FAKE_VRAM_STATE": state,
                              "ACESTUDIO_FAKE_VRAM_REPORT": str(report_path)})
    with server:
        result = run_prompt(server, song_prompt(tiny_checkpoint, case))
        assert result.status == "success", (result.error, server.log_tail())
        latent = saved_latent(result, base)
    loads = [json.loads(line) for line in report_path.read_text().splitlines()]
    assert loads, "the stand-in GPU saw no load of the pack's model"
    load = loads[-1]
    if expected_load == "partial":
        assert 0 < load["loaded"] < load["size"] and load["lowvram"], load
    else:
        assert load["loaded"] == 0 and load["lowvram"], load
    err = max_rel_error(latent, reference)
    report(f"low VRAM ({case}) vs normal run: latent max rel", err, loaded_bytes=load["loaded"],
           model_bytes=load["size"])
    assert err <= 1e-6, err
