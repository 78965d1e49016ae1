"""The hostile-input corpus, through the real server: wrong files, odd audio, pasted lyrics, absurd numbers.

Every case ends in one of three ways, and the table says which: "ok" (the prompt runs and its output is checked),
"error" (a node stops the prompt with a message that says what is wrong and how to fix it: the fragments listed) or
"refused" (ComfyUI's validation rejects the prompt before anything runs: a number out of range). ComfyUI 0.3.75 does
not check V3 nodes' combo values against their lists, so every name a prompt carries reaches the node: the pack
refuses the dangerous ones itself. A crash, a hang, a raw library error or a silently wrong output fails the case,
and the server must run every following case. The corpus is data: a new node adds rows to CASES (a graph builder,
the outcome, the words the error must contain; inputs left out get the node's defaults), nothing else. Crafted
AUDIO/LATENT tensors come from tests/hostile_nodes.
"""
from __future__ import annotations

import json
import random
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from comfy_harness import ComfyError, run_prompt
from measure import OUTPUT_DIR, report
from workflow_prompts import ROOT, TINY_LORA, prepare

from ace_step.loading.safetensors_io import SafetensorsFile, save_safetensors

BASE = OUTPUT_DIR / "comfy-base"
CHECKPOINTS, LORAS, INPUT = BASE / "models" / "checkpoints", BASE / "models" / "loras", BASE / "input"
OUTSIDE = OUTPUT_DIR / "outside-comfyui"  # a folder ComfyUI does not own: links into it must not be followed
PICKLE_MARKER = OUTSIDE / "pickle-payload-ran"
PREFIX = "hostile_"
FIX_DOWNLOAD = "download"
NOT_ALLOCATED = "Nothing was allocated"


class _Payload:
    """Unpickling this creates PICKLE_MARKER: the proof that a loader ran the pickle."""

    def __reduce__(self):
        return (Path.touch, (PICKLE_MARKER,))


# ------------------------------------------------------------------------------------------------ graphs
def _tag() -> str:
    return f"tests/hostile_{random.randrange(10**9)}"


def crafted_audio(samples=44100, channels=2, rate=44100, dtype="float32", fill="tone", batch=1) -> dict:
    return {"class_type": "TestCraftedAudio", "inputs": {"samples": samples, "channels": channels,
                                                         "sample_rate": rate, "dtype": dtype, "fill": fill,
                                                         "batch": batch}}


def loaded_audio(name: str) -> dict:
    return {"class_type": "LoadAudio", "inputs": {"audio": name}}


def pack_audio(name: str) -> dict:
    return {"class_type": "AceStudioLoadAudio", "inputs": {"audio": name}}


def encode(audio: dict, ckpt: str) -> dict:
    """checkpoint + AUDIO -> Audio to Latent -> SaveLatent."""
    return {
        "1": {"class_type": "AceStudioCheckpointLoader", "inputs": {"ckpt_name": ckpt}},
        "2": audio,
        "3": {"class_type": "AceStudioAudioToLatent", "inputs": {"audio": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": _tag()}},
    }


def save(audio: dict, fmt: str = "flac", prefix: str | None = None) -> dict:
    prefix = _tag() if prefix is None else prefix
    return {"2": audio, "5": {"class_type": "AceStudioSaveAudio",
                              "inputs": {"audio": ["2", 0], "filename_prefix": prefix, "format": fmt, "quality": "V0"}}}


def decode(latent: dict, ckpt: str) -> dict:
    return {
        "1": {"class_type": "AceStudioCheckpointLoader", "inputs": {"ckpt_name": ckpt}},
        "2": latent,
        "3": {"class_type": "AceStudioLatentToAudio", "inputs": {"samples": ["2", 0], "vae": ["1", 2],
                                                                 "normalize": True}},
        "5": {"class_type": "AceStudioSaveAudio", "inputs": {"audio": ["3", 0], "filename_prefix": _tag(),
                                                             "format": "flac", "quality": "V0"}},
    }


def crafted_latent(shape: str, fill: str = "randn", dtype: str = "float32") -> dict:
    return {"class_type": "TestCraftedLatent", "inputs": {"shape": shape, "dtype": dtype, "fill": fill,
                                                          "type": "audio"}}


def song(ckpt: str, tags: str | None = None, lyrics: str | None = None, seconds: float = 1.0, steps: int = 1,
         latent_only: bool = True, **changes) -> dict:
    """The text-to-music workflow, CI-sized; latent_only: SaveLatent instead of decode + save (text cases need no
    audio). changes: {"class_type.input": value}."""
    prompt = prepare(json.loads((ROOT / "workflows/api/ace_step_song.json").read_text()), ckpt, seconds, steps)
    for node in prompt.values():
        if node["class_type"] == "AceStudioTextEncode":
            if tags is not None:
                node["inputs"]["tags"] = tags
            if lyrics is not None:
                node["inputs"]["lyrics"] = lyrics
    for key, value in changes.items():
        class_type, name = key.split(".")
        next(n for n in prompt.values() if n["class_type"] == class_type)["inputs"][name] = value
    if latent_only:
        sampler = next(k for k, n in prompt.items() if n["class_type"] == "KSampler")
        decode_and_save = ("AceStudioLatentToAudio", "AceStudioSaveAudio")
        for key in [k for k, n in prompt.items() if n["class_type"] in decode_and_save]:
            del prompt[key]
        prompt["99"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0], "filename_prefix": _tag()}}
    return prompt


def with_lora(ckpt: str, lora: str, **inputs) -> dict:
    prompt = song(ckpt)
    loader = next(k for k, n in prompt.items() if n["class_type"] == "AceStudioCheckpointLoader")
    prompt["50"] = {"class_type": "AceStudioLoraLoader", "inputs": {
        "model": [loader, 0], "lora_name": lora, "strength": 1.0, "alpha": 0.0, "rank_scaling": "from file",
        **inputs}}
    next(n for n in prompt.values() if n["class_type"] == "ModelSamplingSD3")["inputs"]["model"] = ["50", 0]
    return prompt


def original_sampler(ckpt: str, lyrics: str | None = None, **inputs) -> dict:
    prompt = song(ckpt, lyrics=lyrics)
    sampler = next(k for k, n in prompt.items() if n["class_type"] == "KSampler")
    ks = prompt.pop(sampler)["inputs"]
    prompt[sampler] = {"class_type": "AceStudioOriginalSampler", "inputs": {
        "model": ks["model"], "positive": ks["positive"], "seeds": "1", "duration": 1.0, "steps": 1,
        "scheduler": "euler", "cfg_type": "apg", "guidance_scale": 15.0, "omega_scale": 10.0,
        "guidance_interval": 0.5, "guidance_interval_decay": 0.0, "min_guidance_scale": 3.0, "use_erg_tag": True,
        "use_erg_lyric": True, "use_erg_diffusion": True, "guidance_scale_text": 0.0, "guidance_scale_lyric": 0.0,
        "oss_steps": "", **inputs}}
    return prompt


def edit(ckpt: str, class_type: str, seconds: float = 2.0, **inputs) -> dict:
    """An editing node (repaint, extend, ...) on a `seconds`-long source latent; inputs not given get the node's
    defaults (see with_defaults)."""
    prompt = song(ckpt, seconds=seconds)
    nodes = {n["class_type"]: k for k, n in prompt.items()}
    prompt[nodes["KSampler"]] = {"class_type": class_type, "inputs": {
        "model": [nodes["AceStudioTonemapReinhard"], 0], "positive": [nodes["AceStudioTextEncode"], 0],
        "source": [nodes["AceStudioEmptyLatentAudio"], 0], "seeds": "1", "steps": 2, **inputs}}
    return prompt


def with_defaults(prompt: dict, object_info: dict) -> dict:
    """Every input a prompt leaves out gets its default from /object_info, so a row names only what it is about."""
    for node in prompt.values():
        spec = object_info.get(node["class_type"], {}).get("input", {})
        for name, (kind, *options) in spec.get("required", {}).items():
            default = (options[0] if options else {}).get("default")
            if name not in node["inputs"] and default is None and isinstance(kind, list):
                default = kind[0]
            if name not in node["inputs"] and default is not None:
                node["inputs"][name] = default
    return prompt


# ------------------------------------------------------------------------------------------------ output checks
def saved(result, kind: str) -> list[Path]:
    return [BASE / "output" / f["subfolder"] / f["filename"] for f in result.output_files(kind)]


def latent_of(result) -> torch.Tensor:
    [path] = saved(result, "latents")
    return load_file(path)["latent_tensor"]


def latent_frames(frames: int, batch: int = 1):
    def check(result, server, ckpt):
        latent = latent_of(result)
        assert tuple(latent.shape) == (batch, 8, 16, frames) and latent.isfinite().all()
    return check


def song_latent(seconds: float = 1.0):
    return latent_frames(int(seconds * 44100 / 4096))


def same_latent_as(reference: dict, tolerance: float):
    """The latent equals (within `tolerance`, relative to its largest value) the one of the `reference` AUDIO node:
    e.g. int16 samples must encode like the same samples as float."""
    def check(result, server, ckpt):
        ours = latent_of(result)
        ref = run_prompt(server, encode(reference, ckpt), timeout=300)
        assert ref.status == "success", ref.error
        ref = latent_of(ref)
        assert ours.shape == ref.shape
        error = ((ours - ref).abs().max() / ref.abs().max()).item()
        assert error < tolerance, f"latent differs from the float reference by {error:.3g}"
    return check


def saved_audio(frames: int, channels: int, rate: int, like: Callable[[int], np.ndarray] | None = None,
                tolerance: float = 2e-3):
    """The saved file decodes to `frames` samples of `channels` channels at `rate`; `like(n)`: expected samples."""
    def check(result, server, ckpt):
        [path] = saved(result, "audio")
        data, sr = sf.read(path, always_2d=True)
        assert (sr, data.shape) == (rate, (frames, channels)), (sr, data.shape)
        assert np.isfinite(data).all()
        if like is not None:
            assert np.abs(data - like(frames)).max() < tolerance
    return check


def tone(channels: int = 2, rate: int = 44100):
    """The crafted node's tone, [samples, channels]."""
    return lambda n: np.stack([0.3 * np.sin(2 * np.pi * (220 + 55 * c) * np.arange(n) / rate)
                               for c in range(channels)], axis=1)


def same_as_input(name: str, folder: Path = INPUT):
    """The saved file holds the samples of `name` as soundfile reads them (up to the saved 16 bits)."""
    def check(result, server, ckpt):
        [path] = saved(result, "audio")
        ours, rate = sf.read(path, always_2d=True)
        ref, ref_rate = sf.read(folder / name, always_2d=True)
        assert rate == ref_rate and ours.shape == ref.shape and np.abs(ours - ref).max() < 1e-4
    return check


# ------------------------------------------------------------------------------------------------ the corpus
@dataclass(frozen=True)
class Case:
    id: str
    graph: Callable[[str], dict]  # tiny checkpoint name -> API prompt
    expect: str  # "ok", "error" or "refused"
    says: tuple[str, ...] = ()  # error/refusal: fragments of the message (what is wrong, how to fix it)
    node: str | None = None  # error: the class_type that raises it
    check: Callable | None = None  # ok: check(result, server, ckpt)
    group: str = ""


def ckpt_case(id, name, says, expect="error"):
    """A checkpoint case: the loader gets `name` and the VAE encodes a moment of audio."""
    return Case(id, lambda ckpt: encode(crafted_audio(4096), name), expect, says,
                "AceStudioCheckpointLoader" if expect == "error" else None, group="checkpoint")


LONG_LYRICS = ("[verse]\n" + "la la la love you baby, every night and every day\n" * 2000)[:100_000]
LONG_TAGS = ("rock, pop, electric guitar, 120 bpm, female vocals, " * 2000)[:100_000]
CONTROL = "[verse]\n\x00\x01\x07 bell\x1b[31mred\x1b[0m\x7f\x0b\x0c tail\r\nline\x85two \ud800 lone surrogate"
ZERO_WIDTH = "[verse]\nhe\u200bllo\u200c\u200d\ufeff wo\u2060rld\u00ad\n\u200b\u200b\u200b"
EMOJI = "[chorus]\nI ❤️ you 😀😀 🎵🎶 👩‍👩‍👧 🏳️‍🌈\n🎸🎸🎸"
RTL = "[verse]\nمرحبا بالعالم \u202eevil\u202c\nשלום עולם\n\u200fنحن نغني\u200e"
MIXED = "[verse]\n我爱你 I love you 사랑해 愛してる Я тебя люблю ฉันรักเธอ मैं तुमसे प्यार करता हूँ"
UNKNOWN_TAGS = "[xx]hello\n[zz]\n[EN]Hello\n[ZH]你好\n[Verse 2]\n[pre-chorus]\n[]\n[[nested]]\n[ko]"
BRACKETS = "[]\n[[[]]]\n[\n]\n[)(]\n(((\n)))\n【】「」《》"

CASES = [
    # --- checkpoints (files written by the hostile_files fixture) ------------------------------------------------
    ckpt_case("ckpt-pickle-extension", PREFIX + "pickle.ckpt",
              ("refusing to open", "extension '.ckpt'", "only loads .safetensors", "safetensors.torch")),
    ckpt_case("ckpt-pickle-renamed", PREFIX + "pickle_zip.safetensors",
              ("refusing to open", "zip archive", "only loads .safetensors", "safetensors.torch")),
    ckpt_case("ckpt-legacy-pickle-renamed", PREFIX + "pickle_legacy.safetensors",
              ("refusing to open", "Python pickle", "safetensors.torch")),
    ckpt_case("ckpt-truncated", PREFIX + "truncated.safetensors", ("file is truncated", FIX_DOWNLOAD)),
    ckpt_case("ckpt-header-lies-about-size", PREFIX + "lying_size.safetensors",
              ("header is inconsistent", "invalid shape, data type, or offset", FIX_DOWNLOAD)),
    ckpt_case("ckpt-header-lies-about-offsets", PREFIX + "lying_offsets.safetensors",
              ("file is truncated", "its header needs", FIX_DOWNLOAD)),
    ckpt_case("ckpt-header-overlapping-tensors", PREFIX + "overlap.safetensors", ("overlap", FIX_DOWNLOAD)),
    ckpt_case("ckpt-huge-header", PREFIX + "huge_header.safetensors", ("above the 104,857,600-byte limit",)),
    ckpt_case("ckpt-header-not-json", PREFIX + "not_json.safetensors", ("not valid JSON", FIX_DOWNLOAD)),
    ckpt_case("ckpt-empty-file", PREFIX + "empty.safetensors", ("too small to be a safetensors file",)),
    ckpt_case("ckpt-image-model", PREFIX + "sdxl.safetensors",
              ("SDXL image checkpoint, not ACE-Step v1", "ace_step_v1_3.5b.safetensors")),
    ckpt_case("ckpt-missing-tensors", PREFIX + "missing.safetensors",
              ("3 tensors are missing", "transformer_blocks.1.attn.to_q.weight", "use the original")),
    ckpt_case("ckpt-wrong-shapes", PREFIX + "wrong_shape.safetensors",
              ("wrong shape", "[32, 63] (expected [32, 64])", "use the original")),
    ckpt_case("ckpt-unknown-dtype", PREFIX + "dtype.safetensors", ("unknown variant `F4X`", "Re-save")),
    ckpt_case("ckpt-lora-as-checkpoint", PREFIX + "lora_as_ckpt.safetensors",
              ("looks like a LoRA", "apply the LoRA with the LoRA node")),
    ckpt_case("ckpt-folder-of-pickles", PREFIX + "pickle_folder/", ("only pickle weights", "safetensors.torch")),
    ckpt_case("ckpt-link-outside-comfyui", PREFIX + "link_outside.safetensors",
              ("outside ComfyUI's folders", "extra_model_paths.yaml")),
    ckpt_case("ckpt-name-traversal", "../../../../etc/passwd", ("points outside ComfyUI's folders",
                                                               "relative to the folder")),
    ckpt_case("ckpt-name-absolute", "/etc/passwd", ("points outside ComfyUI's folders",)),
    ckpt_case("ckpt-name-missing", "no_such_model.safetensors", ("no checkpoints file", "put it there")),
    # --- LoRAs -----------------------------------------------------------------------------------------------------
    Case("lora-for-image-model", lambda c: with_lora(c, PREFIX + "sdxl_lora.safetensors"), "error",
         ("this LoRA is for a Stable Diffusion / SDXL image model", "trained for ACE-Step v1"),
         "AceStudioLoraLoader", group="lora"),
    Case("lora-for-bigger-model", lambda c: with_lora(c, PREFIX + "big_lora.safetensors"), "error",
         ("transformer_blocks.0.attn.to_q",), "AceStudioLoraLoader", group="lora"),
    Case("lora-checkpoint-as-lora", lambda c: with_lora(c, PREFIX + "ckpt_as_lora.safetensors"), "error",
         ("is not a LoRA", "models/checkpoints"), "AceStudioLoraLoader", group="lora"),
    Case("lora-truncated", lambda c: with_lora(c, PREFIX + "truncated_lora.safetensors"), "error",
         ("file is truncated", FIX_DOWNLOAD), "AceStudioLoraLoader", group="lora"),
    Case("lora-pickle", lambda c: with_lora(c, PREFIX + "lora.pt"), "error",
         ("refusing to open", "extension '.pt'", "safetensors.torch"), "AceStudioLoraLoader", group="lora"),
    Case("lora-name-traversal", lambda c: with_lora(c, "../checkpoints/" + c), "error",
         ("points outside ComfyUI's folders",), "AceStudioLoraLoader", group="lora"),
    Case("lora-link-outside-comfyui", lambda c: with_lora(c, PREFIX + "link_outside_lora.safetensors"), "error",
         ("outside ComfyUI's folders", "extra_model_paths.yaml"), "AceStudioLoraLoader", group="lora"),
    # --- lyrics and tags ---------------------------------------------------------------------------------------
    Case("lyrics-100000-characters", lambda c: song(c, lyrics=LONG_LYRICS), "error",
         ("lyric tokens", "shorten the lyrics", "4,096", NOT_ALLOCATED), "KSampler", group="text"),
    Case("original-sampler-100000-character-lyrics", lambda c: original_sampler(c, lyrics=LONG_LYRICS), "error",
         ("lyric tokens", "shorten the lyrics", NOT_ALLOCATED), "AceStudioOriginalSampler", group="text"),
    Case("tags-100000-characters", lambda c: song(c, tags=LONG_TAGS), "error",
         ("tag tokens", "shorten the tags", NOT_ALLOCATED), "AceStudioTextEncode", group="text"),
    Case("lyrics-control-characters", lambda c: song(c, lyrics=CONTROL), "ok", check=song_latent(), group="text"),
    Case("lyrics-zero-width", lambda c: song(c, lyrics=ZERO_WIDTH), "ok", check=song_latent(), group="text"),
    Case("lyrics-emoji", lambda c: song(c, lyrics=EMOJI), "ok", check=song_latent(), group="text"),
    Case("lyrics-right-to-left", lambda c: song(c, lyrics=RTL), "ok", check=song_latent(), group="text"),
    Case("lyrics-mixed-scripts-one-line", lambda c: song(c, lyrics=MIXED), "ok", check=song_latent(), group="text"),
    Case("lyrics-unknown-tags", lambda c: song(c, lyrics=UNKNOWN_TAGS), "ok", check=song_latent(), group="text"),
    Case("lyrics-brackets-only", lambda c: song(c, lyrics=BRACKETS), "ok", check=song_latent(), group="text"),
    Case("lyrics-and-tags-empty", lambda c: song(c, tags="", lyrics=""), "ok", check=song_latent(), group="text"),
    Case("tags-odd-characters", lambda c: song(c, tags=EMOJI + RTL + CONTROL + ",,,  ,(,),:"), "ok",
         check=song_latent(), group="text"),
    Case("tags-nan-weight", lambda c: song(c, tags="rock, (guitar:nan)"), "error",
         ("(guitar:nan)", "not a finite number", "such as 1.2"), "AceStudioTextEncode", group="text"),
    Case("tags-deep-parentheses", lambda c: song(c, tags="(" * 5000 + "rock" + ")" * 5000), "error",
         ("nest parentheses more than 100 deep", "close them sooner"), "AceStudioTextEncode", group="text"),
    # --- audio into Audio to Latent ------------------------------------------------------------------------------
    Case("audio-nan-samples", lambda c: encode(crafted_audio(fill="nan"), c), "error",
         ("2 NaN or infinite samples", "re-export"), "AceStudioAudioToLatent", group="audio"),
    Case("audio-inf-samples", lambda c: encode(crafted_audio(fill="inf"), c), "error",
         ("NaN or infinite samples", "re-export"), "AceStudioAudioToLatent", group="audio"),
    Case("audio-silence-file", lambda c: encode(loaded_audio("hostile_silence.flac"), c), "ok",
         check=latent_frames(22), group="audio"),
    Case("audio-one-sample", lambda c: encode(crafted_audio(samples=1), c), "ok", check=latent_frames(1),
         group="audio"),
    Case("audio-one-sample-8khz", lambda c: encode(crafted_audio(samples=1, rate=8000), c), "ok",
         check=latent_frames(1), group="audio"),
    Case("audio-no-samples", lambda c: encode({"class_type": "EmptyAudio", "inputs": {
        "duration": 0.0, "sample_rate": 44100, "channels": 2}}, c), "error", ("empty (0 samples)", "longer file"),
         "AceStudioAudioToLatent", group="audio"),
    Case("audio-no-channels", lambda c: encode(crafted_audio(channels=0), c), "error",
         ("no channels", "mono or stereo"), "AceStudioAudioToLatent", group="audio"),
    Case("audio-mono-file", lambda c: encode(loaded_audio("hostile_mono.flac"), c), "ok",
         check=latent_frames(22), group="audio"),
    Case("audio-6-channels-file", lambda c: encode(loaded_audio("hostile_6ch.flac"), c), "ok",
         check=latent_frames(22), group="audio"),
    Case("audio-8khz-file", lambda c: encode(loaded_audio("hostile_8k.flac"), c), "ok",
         check=latent_frames(22), group="audio"),
    Case("audio-192khz-file", lambda c: encode(loaded_audio("hostile_192k.flac"), c), "ok",
         check=latent_frames(22), group="audio"),
    Case("audio-int16-tensor", lambda c: encode(crafted_audio(dtype="int16"), c), "ok",
         check=same_latent_as(crafted_audio(), 1e-2), group="audio"),
    Case("audio-int32-tensor", lambda c: encode(crafted_audio(dtype="int32"), c), "ok",
         check=same_latent_as(crafted_audio(), 1e-3), group="audio"),
    Case("audio-float64-tensor", lambda c: encode(crafted_audio(dtype="float64"), c), "ok",
         check=same_latent_as(crafted_audio(), 1e-4), group="audio"),
    Case("audio-float16-tensor", lambda c: encode(crafted_audio(dtype="float16"), c), "ok",
         check=latent_frames(11), group="audio"),
    Case("audio-sample-rate-0", lambda c: encode(crafted_audio(rate=0), c), "error",
         ("invalid sample rate 0", "from 1 to"), "AceStudioAudioToLatent", group="audio"),
    Case("audio-batch-of-3", lambda c: encode(crafted_audio(batch=3, samples=8192), c), "ok",
         check=latent_frames(2, batch=3), group="audio"),
    Case("audio-larger-than-memory", lambda c: encode(crafted_audio(samples=2**31, batch=16, fill="huge-view"), c),
         "error", ("encoding 16 × 48,696 s of audio needs about", "fewer or shorter", NOT_ALLOCATED),
         "AceStudioAudioToLatent", group="audio"),
    # --- audio files through the pack's Load Audio ----------------------------------------------------------------
    Case("load-24bit-wav", lambda c: save(pack_audio("hostile_24bit.wav"), fmt="wav"), "ok",
         check=same_as_input("hostile_24bit.wav"), group="load"),
    Case("load-8bit-wav", lambda c: save(pack_audio("hostile_u8.wav"), fmt="wav"), "ok",
         check=same_as_input("hostile_u8.wav"), group="load"),
    Case("load-mp3", lambda c: encode(pack_audio("hostile_song.mp3"), c), "ok", check=latent_frames(22),
         group="load"),
    Case("load-from-output-folder", lambda c: save(pack_audio("hostile_out.flac [output]"), fmt="wav"), "ok",
         check=same_as_input("hostile_out.flac", BASE / "output"), group="load"),
    Case("load-name-traversal", lambda c: save(pack_audio("../../../../etc/passwd")), "error",
         ("points outside ComfyUI's folders",), "AceStudioLoadAudio", group="load"),
    Case("load-name-absolute", lambda c: save(pack_audio("/etc/passwd")), "error",
         ("points outside ComfyUI's folders",), "AceStudioLoadAudio", group="load"),
    Case("load-link-outside-comfyui", lambda c: save(pack_audio("hostile_link.flac")), "error",
         ("is a link to", "outside ComfyUI's folders", "copy the file into ComfyUI's input folder"),
         "AceStudioLoadAudio", group="load"),
    Case("load-missing-file", lambda c: save(pack_audio("no_such_song.flac")), "error",
         ("no file 'no_such_song.flac'", "upload it"), "AceStudioLoadAudio", group="load"),
    Case("load-text-as-audio", lambda c: save(pack_audio("hostile_text.flac")), "error",
         ("holds no audio samples", "not an audio file"), "AceStudioLoadAudio", group="load"),
    Case("load-truncated-flac", lambda c: save(pack_audio("hostile_cut.flac")), "error",
         ("could not be read as audio", "re-export"), "AceStudioLoadAudio", group="load"),
    Case("load-empty-file", lambda c: save(pack_audio("hostile_empty.wav")), "error",
         ("could not be read as audio", "damaged or not an audio file"), "AceStudioLoadAudio", group="load"),
    Case("load-image", lambda c: save(pack_audio("hostile_image.png")), "error",
         ("has no audio stream",), "AceStudioLoadAudio", group="load"),
    # --- audio into Save Audio ---------------------------------------------------------------------------------
    Case("save-int16-tensor", lambda c: save(crafted_audio(dtype="int16")), "ok",
         check=saved_audio(44100, 2, 44100, like=tone()), group="save"),
    Case("save-float64-tensor", lambda c: save(crafted_audio(dtype="float64"), fmt="wav"), "ok",
         check=saved_audio(44100, 2, 44100, like=tone()), group="save"),
    Case("save-one-sample", lambda c: save(crafted_audio(samples=1)), "ok", check=saved_audio(1, 2, 44100),
         group="save"),
    Case("save-6-channels", lambda c: save(crafted_audio(channels=6)), "ok", check=saved_audio(44100, 2, 44100),
         group="save"),
    Case("save-192khz-as-mp3", lambda c: save(crafted_audio(rate=192000, samples=19200), fmt="mp3"), "ok",
         check=lambda r, s, c: assert_decodes_at(r, 48000, 0.1), group="save"),
    Case("save-nan-samples", lambda c: save(crafted_audio(fill="nan")), "error",
         ("NaN or infinite samples",), "AceStudioSaveAudio", group="save"),
    Case("save-larger-than-memory", lambda c: save(crafted_audio(samples=2**31, batch=16, fill="huge-view")),
         "error", ("saving 16 × 48,696 s of audio needs about", "fewer or shorter", NOT_ALLOCATED),
         "AceStudioSaveAudio", group="save"),
    Case("save-prefix-traversal", lambda c: save(crafted_audio(), prefix="../../escaped"), "error",
         ("points outside ComfyUI's folders", "a path inside the output folder"), "AceStudioSaveAudio", group="save"),
    Case("save-prefix-absolute", lambda c: save(crafted_audio(), prefix=str(OUTSIDE / "escaped")), "error",
         ("points outside ComfyUI's folders",), "AceStudioSaveAudio", group="save"),
    Case("save-prefix-link-outside", lambda c: save(crafted_audio(), prefix="hostile_link_out/song"), "error",
         ("is a link to", "outside ComfyUI's folders", "real folder inside the output folder"),
         "AceStudioSaveAudio", group="save"),
    Case("save-prefix-empty", lambda c: save(crafted_audio(), prefix=""), "error",
         ("filename_prefix is empty",), "AceStudioSaveAudio", group="save"),
    Case("save-prefix-too-long", lambda c: save(crafted_audio(), prefix="a" * 300), "error",
         ("file name of 300 bytes", "shorten it"), "AceStudioSaveAudio", group="save"),
    # --- latents ------------------------------------------------------------------------------------------------
    Case("decode-image-latent", lambda c: decode(crafted_latent("1,4,64,64"), c), "error",
         ("[1, 4, 64, 64]) is not an ACE-Step song latent", "connect an ACE-Step latent"), "AceStudioLatentToAudio",
         group="latent"),
    Case("decode-empty-latent", lambda c: decode(crafted_latent("1,8,16,0"), c), "error",
         ("not an ACE-Step song latent", "empty"), "AceStudioLatentToAudio", group="latent"),
    Case("decode-nan-latent", lambda c: decode(crafted_latent("1,8,16,4", fill="nan"), c), "error",
         ("NaN or infinite values", "sampling diverged"), "AceStudioLatentToAudio", group="latent"),
    Case("decode-larger-than-memory", lambda c: decode(crafted_latent("64,8,16,1048576", fill="huge-view"), c),
         "error", ("decoding 64 × 97,392 s of audio needs about", "smaller batch", NOT_ALLOCATED),
         "AceStudioLatentToAudio", group="latent"),
    Case("sample-image-latent", lambda c: song(c, **{"KSampler.latent_image": ["77", 0]}) | {
        "77": crafted_latent("1,4,64,64")}, "error",
         ("is not an ACE-Step song latent", "connect an ACE-Step latent"), "KSampler", group="latent"),
    # --- numbers ------------------------------------------------------------------------------------------------
    Case("seconds-0", lambda c: song(c, **{"AceStudioEmptyLatentAudio.seconds": 0.0}), "refused",
         ("seconds", "smaller than min"), group="numbers"),
    Case("seconds-negative", lambda c: song(c, **{"AceStudioEmptyLatentAudio.seconds": -30.0}), "refused",
         ("seconds", "smaller than min"), group="numbers"),
    Case("seconds-10000", lambda c: song(c, **{"AceStudioEmptyLatentAudio.seconds": 10000.0}), "refused",
         ("seconds", "bigger than max"), group="numbers"),
    Case("seconds-nan", lambda c: song(c, **{"AceStudioEmptyLatentAudio.seconds": float("nan")}), "error",
         ("seconds must be between 1 and 1000, got nan",), "AceStudioEmptyLatentAudio", group="numbers"),
    Case("batch-10000", lambda c: song(c, **{"AceStudioEmptyLatentAudio.batch_size": 10000}), "refused",
         ("batch_size", "bigger than max"), group="numbers"),
    Case("steps-0", lambda c: song(c, **{"KSampler.steps": 0}), "refused", ("steps", "smaller than min"),
         group="numbers"),
    Case("cfg-nan", lambda c: song(c, latent_only=False, **{"KSampler.cfg": float("nan")}), "error",
         ("NaN or infinite values", "sampling diverged"), "AceStudioLatentToAudio", group="numbers"),
    Case("original-sampler-10000-seeds", lambda c: original_sampler(c, seeds=",".join(map(str, range(10000)))),
         "error", ("at most 64 seeds",), "AceStudioOriginalSampler", group="numbers"),
    Case("original-sampler-duration-too-short", lambda c: original_sampler(c, duration=0.05), "error",
         ("shorter than one latent frame",), "AceStudioOriginalSampler", group="numbers"),
    Case("original-sampler-duration-10000", lambda c: original_sampler(c, duration=10000.0), "refused",
         ("duration", "bigger than max"), group="numbers"),
    Case("original-sampler-oss-steps-text", lambda c: original_sampler(c, oss_steps="16, 29, abc"), "error",
         ("oss_steps must be whole numbers separated by commas",), "AceStudioOriginalSampler", group="numbers"),
    Case("lyrics-strength-nan", lambda c: song(c, **{"AceStudioTextEncode.lyrics_strength": float("nan")}), "error",
         ("lyrics_strength is nan", "finite value"), "AceStudioTextEncode", group="numbers"),
    Case("tonemap-multiplier-nan", lambda c: song(c, **{"AceStudioTonemapReinhard.multiplier": float("nan")}),
         "error", ("multiplier is nan",), "AceStudioTonemapReinhard", group="numbers"),
    Case("core-shift-nan", lambda c: song(c, latent_only=False, **{"ModelSamplingSD3.shift": float("nan")}), "error",
         ("NaN or infinite values", "shift"), "AceStudioLatentToAudio", group="numbers"),
    Case("tags-weight-1e30", lambda c: song(c, tags="rock, (guitar:1e30)", latent_only=False), "error",
         ("NaN or infinite values", "prompt weight"), "AceStudioLatentToAudio", group="numbers"),
    # --- time ranges of the editing nodes (on a 2 s song) ---------------------------------------------------------
    Case("repaint-outside-the-song", lambda c: edit(c, "AceStudioRepaint", start_seconds=5.0, end_seconds=10.0),
         "error", ("outside the song", "1.95 s long", "Extend"), "AceStudioRepaint", group="ranges"),
    Case("repaint-reversed", lambda c: edit(c, "AceStudioRepaint", start_seconds=1.5, end_seconds=0.5), "error",
         ("reversed or empty", "end must be after start"), "AceStudioRepaint", group="ranges"),
    Case("repaint-negative-start", lambda c: edit(c, "AceStudioRepaint", start_seconds=-1.0, end_seconds=1.0),
         "refused", ("start_seconds", "smaller than min"), group="ranges"),
    Case("repaint-nan-end", lambda c: edit(c, "AceStudioRepaint", start_seconds=0.0, end_seconds=float("nan")),
         "error", ("end_seconds is nan",), "AceStudioRepaint", group="ranges"),
    Case("repaint-shorter-than-a-frame", lambda c: edit(c, "AceStudioRepaint", start_seconds=1.0,
                                                        end_seconds=1.01), "error",
         ("shorter than one latent frame",), "AceStudioRepaint", group="ranges"),
    Case("repaint-inside", lambda c: edit(c, "AceStudioRepaint", start_seconds=0.5, end_seconds=1.5), "ok",
         check=latent_frames(21), group="ranges"),
    Case("extend-10000-seconds", lambda c: edit(c, "AceStudioExtend", right_seconds=10000.0), "refused",
         ("right_seconds", "bigger than max"), group="ranges"),
    # --- values outside a combo's list (ComfyUI 0.3.75 lets them through to V3 nodes) ---------------------------
    Case("combo-save-format", lambda c: save(crafted_audio(), fmt="exe"), "error",
         ("format 'exe' is not one of: flac, mp3, opus, wav",), "AceStudioSaveAudio", group="combos"),
    Case("combo-lora-rank-scaling", lambda c: with_lora(c, TINY_LORA, rank_scaling="bogus"), "error",
         ("rank_scaling 'bogus' is not one of", "from file"), "AceStudioLoraLoader", group="combos"),
    Case("combo-original-scheduler", lambda c: original_sampler(c, scheduler="bogus"), "error",
         ("unknown scheduler 'bogus'", "euler"), "AceStudioOriginalSampler", group="combos"),
    Case("combo-checkpoint-not-text", lambda c: encode(crafted_audio(4096), 5), "error",
         ("must be a name (text), got 5",), "AceStudioCheckpointLoader", group="combos"),
]


def assert_decodes_at(result, rate: int, seconds: float):
    [path] = saved(result, "audio")
    import av

    with av.open(str(path)) as f:
        stream = f.streams.audio[0]
        assert stream.codec_context.sample_rate == rate
        samples = sum(frame.samples for frame in f.decode(stream))
    assert abs(samples / rate - seconds) < 0.06  # MP3 adds encoder delay and padding


# ------------------------------------------------------------------------------------------------ hostile files
def _write_raw(path: Path, header, data: bytes = b"", header_len: int | None = None):
    raw = json.dumps(header).encode() if isinstance(header, dict) else header
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw) if header_len is None else header_len) + raw + data)


def _edited_tiny(path: Path, tiny: Path, edit):
    with SafetensorsFile(tiny) as f:
        tensors = f.read_many(f.keys())
    edit(tensors)
    save_safetensors(path, tensors)


def _write_audio(name: str, seconds: float, rate: int, channels: int, silent: bool = False):
    n = int(seconds * rate)
    data = np.zeros((n, channels)) if silent else tone(channels, rate)(n)
    sf.write(INPUT / name, data.astype(np.float32), rate)


@pytest.fixture(scope="module")
def hostile_files(tiny_checkpoint):
    """Writes the corpus's files into the test server's folders (and one folder outside them); removes them after."""
    OUTSIDE.mkdir(parents=True, exist_ok=True)
    PICKLE_MARKER.unlink(missing_ok=True)
    tiny = CHECKPOINTS / tiny_checkpoint
    written = []

    def ckpt(name, folder=CHECKPOINTS) -> Path:
        written.append(folder / name)
        return folder / name

    state = {"state_dict": {"x": torch.zeros(2)}, "evil": _Payload()}
    torch.save(state, ckpt(PREFIX + "pickle.ckpt"))
    torch.save(state, ckpt(PREFIX + "pickle_zip.safetensors"))
    torch.save(state, ckpt(PREFIX + "pickle_legacy.safetensors"), _use_new_zipfile_serialization=False)
    torch.save(state, ckpt(PREFIX + "lora.pt", LORAS))
    data = tiny.read_bytes()
    ckpt(PREFIX + "truncated.safetensors").write_bytes(data[: len(data) - 1000])
    ckpt(PREFIX + "truncated_lora.safetensors", LORAS).write_bytes(data[: len(data) // 2])
    f32 = lambda n, at=0: {"dtype": "F32", "shape": [n], "data_offsets": [at, at + 4 * n]}  # noqa: E731
    _write_raw(ckpt(PREFIX + "lying_size.safetensors"),
               {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8)
    _write_raw(ckpt(PREFIX + "lying_offsets.safetensors"), {"a": f32(2), "b": f32(1 << 30, 8)}, b"\0" * 16)
    _write_raw(ckpt(PREFIX + "overlap.safetensors"), {"a": f32(2), "b": f32(2)}, b"\0" * 16)
    _write_raw(ckpt(PREFIX + "huge_header.safetensors"), b"{}", header_len=2**40)
    _write_raw(ckpt(PREFIX + "not_json.safetensors"), b"{nope, this is not json")
    _write_raw(ckpt(PREFIX + "dtype.safetensors"), {"a": {"dtype": "F4X", "shape": [2], "data_offsets": [0, 1]}}, b"\0")
    ckpt(PREFIX + "empty.safetensors").write_bytes(b"")
    save_safetensors(ckpt(PREFIX + "sdxl.safetensors"), {
        "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4),
        "model.diffusion_model.label_emb.0.0.weight": torch.zeros(4),
        "conditioner.embedders.1.model.ln_final.weight": torch.zeros(4),
        "first_stage_model.encoder.conv_in.weight": torch.zeros(4)})
    missing = [f"model.diffusion_model.transformer_blocks.1.attn.to_{p}.weight" for p in "qkv"]
    _edited_tiny(ckpt(PREFIX + "missing.safetensors"), tiny, lambda t: [t.pop(k) for k in missing])
    wrong = "text_encoders.umt5base.transformer.encoder.block.1.layer.1.DenseReluDense.wo.weight"
    _edited_tiny(ckpt(PREFIX + "wrong_shape.safetensors"), tiny, lambda t: t.__setitem__(wrong, torch.zeros(32, 63)))
    lora = LORAS / TINY_LORA
    shutil.copy(lora, ckpt(PREFIX + "lora_as_ckpt.safetensors"))
    shutil.copy(tiny, ckpt(PREFIX + "ckpt_as_lora.safetensors", LORAS))
    save_safetensors(ckpt(PREFIX + "sdxl_lora.safetensors", LORAS), {
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 320),
        "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.zeros(320, 4)})
    save_safetensors(ckpt(PREFIX + "big_lora.safetensors", LORAS), {  # rank 4 on the 3.5B model's 2560 width
        "transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 2560),
        "transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(2560, 4)})
    folder = ckpt(PREFIX + "pickle_folder")
    (folder / "ace_step_transformer").mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "ace_step_transformer" / "diffusion_pytorch_model.bin")
    for name, target, where in ((PREFIX + "link_outside.safetensors", tiny, CHECKPOINTS),
                                (PREFIX + "link_outside_lora.safetensors", lora, LORAS)):
        shutil.copy(target, OUTSIDE / name)
        ckpt(name, where).symlink_to(OUTSIDE / name)
    link_out = BASE / "output" / "hostile_link_out"
    link_out.unlink(missing_ok=True)
    link_out.symlink_to(OUTSIDE, target_is_directory=True)
    written.append(link_out)
    for name, subtype in (("hostile_24bit.wav", "PCM_24"), ("hostile_u8.wav", "PCM_U8")):
        sf.write(INPUT / name, tone(2, 22050)(22050) * 1.5, 22050, subtype=subtype)
        written.append(INPUT / name)
    sf.write(BASE / "output" / "hostile_out.flac", tone(1)(44100), 44100)
    written.append(BASE / "output" / "hostile_out.flac")
    import av

    with av.open(str(INPUT / "hostile_song.mp3"), "w") as f:  # 2 s of stereo tone
        stream = f.add_stream("libmp3lame", rate=44100, layout="stereo")
        frame = av.AudioFrame.from_ndarray(tone(2)(88200).T.astype(np.float32).copy(), format="fltp",
                                           layout="stereo")
        frame.sample_rate = 44100
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            f.mux(packet)
    (INPUT / "hostile_text.flac").write_text("these are lyrics, not audio\n" * 100)
    (INPUT / "hostile_empty.wav").write_bytes(b"")
    sf.write(OUTSIDE / "outside.flac", tone(2)(4410), 44100)
    (INPUT / "hostile_link.flac").unlink(missing_ok=True)
    (INPUT / "hostile_link.flac").symlink_to(OUTSIDE / "outside.flac")
    sf.write(INPUT / "hostile_whole.flac", tone(2)(44100), 44100)
    whole = (INPUT / "hostile_whole.flac").read_bytes()
    (INPUT / "hostile_cut.flac").write_bytes(whole[: len(whole) // 2])
    from PIL import Image

    Image.new("RGB", (8, 8)).save(INPUT / "hostile_image.png")
    written += [INPUT / n for n in ("hostile_song.mp3", "hostile_text.flac", "hostile_empty.wav", "hostile_link.flac",
                                    "hostile_whole.flac", "hostile_cut.flac", "hostile_image.png")]
    for name, seconds, rate, channels, silent in (("hostile_silence.flac", 2.0, 44100, 2, True),
                                                  ("hostile_mono.flac", 2.0, 44100, 1, False),
                                                  ("hostile_6ch.flac", 2.0, 48000, 6, False),
                                                  ("hostile_8k.flac", 2.0, 8000, 1, False),
                                                  ("hostile_192k.flac", 2.0, 192000, 2, False)):
        _write_audio(name, seconds, rate, channels, silent)
        written.append(INPUT / name)
    yield
    for path in written:
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)


# ------------------------------------------------------------------------------------------------ running it
OUTCOMES: dict[str, tuple[str, str]] = {}  # case id -> (group, outcome; "... as expected" once every check passed)


def _outcome(server, prompt) -> tuple[str, str, object]:
    """("ok" | "error" | "refused", message, RunResult or None)."""
    try:
        result = run_prompt(server, prompt, timeout=300)
    except ComfyError as e:
        if "POST /prompt -> 400" in str(e):
            return "refused", str(e), None
        raise
    if result.status == "success":
        return "ok", "", result
    if result.status == "error":
        return "error", result.error["exception_message"], result
    return result.status, "", result


@pytest.fixture(scope="module")
def object_info(comfy_server) -> dict:
    return comfy_server.get_json("/object_info")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_corpus(comfy_server, tiny_checkpoint, hostile_files, object_info, case):
    outcome, message, result = _outcome(comfy_server, with_defaults(case.graph(tiny_checkpoint), object_info))
    OUTCOMES[case.id] = (case.group, outcome)
    assert comfy_server.proc.poll() is None, f"the server died on {case.id}:\n{comfy_server.log_tail()}"
    assert outcome == case.expect, f"{case.id}: expected {case.expect}, got {outcome}: {message[:2000]}"
    for fragment in case.says:
        assert fragment in message, f"{case.id}: {fragment!r} not in the message:\n{message[:2000]}"
    if outcome == "error":
        assert result.error["node_type"] == case.node, result.error["node_type"]
        assert "Traceback" not in message
    if case.check is not None:
        case.check(result, comfy_server, tiny_checkpoint)
    assert not PICKLE_MARKER.exists(), "a pickle was unpickled"
    OUTCOMES[case.id] = (case.group, f"{outcome} as expected")


def test_corpus_figures(comfy_server, tiny_checkpoint):
    """After the corpus: the server still makes a whole song, and the figures for the issue's note."""
    if len(OUTCOMES) < len(CASES):
        pytest.skip("run with the whole corpus")
    result = run_prompt(comfy_server, song(tiny_checkpoint, seconds=2.0, latent_only=False), timeout=300)
    assert result.status == "success", result.error
    [path] = saved(result, "audio")
    data, rate = sf.read(path)
    assert rate == 44100 and data.shape == (int(2.0 * 44100 / 4096) * 4096, 2) and np.isfinite(data).all()
    crashes = [case for case, (_, outcome) in OUTCOMES.items() if not outcome.endswith("as expected")]
    groups = {}
    for group, outcome in OUTCOMES.values():
        counts = groups.setdefault(group, {})
        counts[outcome.split()[0]] = counts.get(outcome.split()[0], 0) + 1
    report("hostile corpus: cases tried", len(OUTCOMES), by_group=groups)
    report("hostile corpus: crashes or unclear outcomes", len(crashes), cases=crashes)
    assert not crashes
