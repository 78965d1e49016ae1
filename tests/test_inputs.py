"""Awkward but legitimate inputs through the real server: odd audio for Audio to Latent, long durations, empty and
multilingual lyrics. Each must run and give the expected shape; invalid ones must fail with a clear message."""
import json
import math
import random

import numpy as np
import pytest
import soundfile as sf
from safetensors.torch import load_file

from comfy_harness import run_prompt
from measure import OUTPUT_DIR
from workflow_prompts import ROOT, prepare

BASE = OUTPUT_DIR / "comfy-base"


def write_input(name: str, seconds: float, rate: int, channels: int, kind: str = "tone") -> str:
    n = max(1, int(seconds * rate))
    t = np.arange(n) / rate
    if kind == "silence":
        data = np.zeros((n, channels))
    else:
        data = np.stack([0.3 * np.sin(2 * np.pi * (220 + 110 * c) * t) for c in range(channels)], axis=1)
    sf.write(BASE / "input" / name, data.astype(np.float32), rate, subtype="PCM_16")
    return name


def encode_graph(audio_name: str, checkpoint: str, decode: bool) -> dict:
    tag = random.randrange(10**9)
    graph = {
        "1": {"class_type": "AceStudioCheckpointLoader", "inputs": {"ckpt_name": checkpoint}},
        "2": {"class_type": "LoadAudio", "inputs": {"audio": audio_name}},
        "3": {"class_type": "AceStudioAudioToLatent", "inputs": {"audio": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": f"tests/inputs_{tag}"}},
    }
    if decode:
        graph["5"] = {"class_type": "AceStudioLatentToAudio",
                      "inputs": {"samples": ["3", 0], "vae": ["1", 2], "normalize": True}}
        graph["6"] = {"class_type": "AceStudioSaveAudio",
                      "inputs": {"audio": ["5", 0], "filename_prefix": f"tests/inputs_{tag}", "format": "flac",
                                 "quality": "V0"}}
    return graph


def saved(result, kind):
    return [BASE / "output" / f["subfolder"] / f["filename"] for f in result.output_files(kind)]


@pytest.mark.parametrize("seconds,rate,channels,kind", [
    (3.0, 44100, 2, "silence"),
    (3.0, 44100, 1, "tone"),
    (2.0, 8000, 1, "tone"),
    (2.0, 96000, 2, "tone"),
    (0.5, 44100, 2, "tone"),
    (2.0, 48000, 6, "tone"),
], ids=["silence", "mono", "8kHz-mono", "96kHz", "half-second", "6-channels"])
def test_audio_to_latent_and_back(comfy_server, tiny_checkpoint, seconds, rate, channels, kind):
    name = write_input(f"in_{kind}_{rate}_{channels}ch_{seconds}s.wav", seconds, rate, channels, kind)
    result = run_prompt(comfy_server, encode_graph(name, tiny_checkpoint, decode=True), timeout=300)
    assert result.status == "success", result.error
    frames = math.ceil(math.ceil(seconds * rate * 44100 / rate) / 4096)  # resampled, padded to whole frames
    latent = load_file(saved(result, "latents")[0])["latent_tensor"]
    assert tuple(latent.shape) == (1, 8, 16, frames)
    data, sr = sf.read(saved(result, "audio")[0])
    assert sr == 44100 and data.shape == (frames * 4096, 2)
    assert np.isfinite(data).all()


def test_ten_minute_input_encodes_in_windows(comfy_server, tiny_checkpoint):
    name = write_input("in_ten_minutes.flac", 600.0, 44100, 2)
    result = run_prompt(comfy_server, encode_graph(name, tiny_checkpoint, decode=False), timeout=600)
    assert result.status == "success", result.error
    progress = [e["data"] for e in result.events if e["type"] == "progress"]
    assert progress and progress[-1]["max"] > 1, "a 10-minute song should be encoded in several windows"
    latent = load_file(saved(result, "latents")[0])["latent_tensor"]
    assert tuple(latent.shape) == (1, 8, 16, math.ceil(600 * 44100 / 4096))
    assert latent.isfinite().all()


def _song(checkpoint: str, seconds: float, lyrics: str, steps: int = 2) -> dict:
    prompt = prepare(json.loads((ROOT / "workflows/api/ace_step_song.json").read_text()), checkpoint, seconds, steps)
    next(n for n in prompt.values() if n["class_type"] == "AceStudioTextEncode")["inputs"]["lyrics"] = lyrics
    return prompt


def test_song_longer_than_training_length(comfy_server, tiny_checkpoint):
    """300 s (ACE-Step was trained on up to 240 s) samples to the right latent length; the latent is saved instead of
    decoded because a 300 s decode takes minutes on CPU even for the tiny vocoder (chunked decode has its own tests)."""
    prompt = _song(tiny_checkpoint, 300.0, "[verse]\nA song longer than the 240 s ACE-Step was trained on")
    sampler = next(k for k, n in prompt.items() if n["class_type"] == "KSampler")
    for key in [k for k, n in prompt.items() if n["class_type"] in ("AceStudioLatentToAudio", "AceStudioSaveAudio")]:
        del prompt[key]
    prompt["99"] = {"class_type": "SaveLatent",
                    "inputs": {"samples": [sampler, 0], "filename_prefix": f"tests/long_{random.randrange(10**9)}"}}
    result = run_prompt(comfy_server, prompt, timeout=600)
    assert result.status == "success", result.error
    latent = load_file(saved(result, "latents")[0])["latent_tensor"]
    assert tuple(latent.shape) == (1, 8, 16, int(300 * 44100 / 4096)) and latent.isfinite().all()


@pytest.mark.parametrize("seconds,lyrics", [
    (3.0, ""),
    (3.0, "[verse]\n我走过深夜的街道\n夜空に星が光る\n밤하늘의 별처럼\nLa noche es joven (sí)\n[ru]Привет мир"),
], ids=["empty-lyrics", "many-languages"])
def test_text_to_music_inputs(comfy_server, tiny_checkpoint, seconds, lyrics):
    result = run_prompt(comfy_server, _song(tiny_checkpoint, seconds, lyrics), timeout=600)
    assert result.status == "success", result.error
    data, sr = sf.read(saved(result, "audio")[0])
    assert sr == 44100 and data.shape == (int(seconds * 44100 / 4096) * 4096, 2)


def test_bad_inputs_fail_clearly_and_server_continues(comfy_server, tiny_checkpoint):
    name = write_input("in_nan.wav", 1.0, 44100, 2)
    data, rate = sf.read(BASE / "input" / name, dtype="float32")
    data[100] = np.nan
    sf.write(BASE / "input" / "in_nan_float.wav", data, rate, subtype="FLOAT")
    result = run_prompt(comfy_server, encode_graph("in_nan_float.wav", tiny_checkpoint, decode=False), timeout=120)
    assert result.status == "error"
    assert "NaN" in result.error["exception_message"] and "re-export" in result.error["exception_message"]
    ok = run_prompt(comfy_server, _song(tiny_checkpoint, 2.0, "[verse]\nstill alive"), timeout=300)
    assert ok.status == "success", ok.error
