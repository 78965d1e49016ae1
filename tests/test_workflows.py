"""Every API-format workflow in workflows/api runs through the real ComfyUI server on the tiny demo checkpoint and
saves files that decode with the expected length, rate, channels and metadata."""
import json

import av
import pytest
import soundfile as sf

from comfy_harness import run_prompt
from measure import OUTPUT_DIR
from workflow_prompts import API_WORKFLOWS, expected_rate, expected_samples, is_v15, prepare, tiny15_files  # noqa: F401



@pytest.mark.parametrize("workflow", API_WORKFLOWS, ids=[p.stem for p in API_WORKFLOWS])
def test_api_workflow_runs(comfy_server, tiny_checkpoint, tiny15_files, workflow):
    seconds = 4.0
    prompt = prepare(json.loads(workflow.read_text()), tiny_checkpoint, seconds)
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "success", f"{result.error}\n{comfy_server.log_tail()}"
    assert any(e["type"] == "progress" for e in result.events), "KSampler reported no progress"
    [saved] = result.output_files("audio")
    path = OUTPUT_DIR / "comfy-base" / "output" / saved["subfolder"] / saved["filename"]
    data, rate = sf.read(path)
    assert rate == expected_rate(prompt) and data.ndim == 2 and data.shape[1] == 2
    assert data.shape[0] == expected_samples(prompt, seconds)
    assert (abs(data) > 0).any(), "the song is silent"
    with av.open(str(path)) as container:
        meta = {k.lower(): v for k, v in container.metadata.items()}
    loader = "AceStudio15" if is_v15(prompt) else "AceStudioCheckpointLoader"
    assert json.loads(meta["prompt"])["1"]["class_type"].startswith(loader)
