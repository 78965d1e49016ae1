"""The pack's text-to-music graph gives what ComfyUI's native ACE-Step graph gives, on identical weights.

Both graphs run through the real server with the same seed on one checkpoint in the real all-in-one layout (fp32):
a reduced DiT (2 blocks, 256 wide, ComfyUI's 128-wide heads) with the full-size lyric encoder, and the full-size VAE
and UMT5, because ComfyUI builds those at fixed sizes; random weights; the tiny SentencePiece model as tokenizer.
Native ComfyUI builds the reduced DiT only through the test-only hook in tests/native_hook (linked by conftest).

dtypes (ComfyUI 0.3.75 on CPU): the DiT (`unet_dtype`, bf16 never chosen on CPU) and the VAE (`vae_dtype`) are
fp32, but `text_encoder_dtype` keeps the UMT5 weights in fp16 (computing in fp32). So the checkpoint's UMT5 weights
are rounded through fp16: both sides then compute with the same values.

Audio: SaveAudio writes 16-bit FLAC, which hides differences below 1/32768. The float-precision difference is
therefore taken inside the server with core nodes (AudioMerge subtract, then AudioAdjustVolume +80 dB, then
SaveAudio), so the saved file holds 10^4 x (native - pack): 3e-9 resolution on the difference itself, and a
difference above the 1e-4 tolerance clips at full scale.
"""
import ast
import math
import re
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from ace_step.models.v1.music_vae import MusicVAEConfig
from ace_step.loading.safetensors_io import SafetensorsFile
from fixtures.tiny_checkpoint import write_tiny_checkpoint
from ace_step.models.v1.transformer import TransformerConfig
from ace_step.models.v1.umt5 import UMT5Config
from comfy_harness import run_prompt
from comfy_inprocess import NATIVE_HOOK_SOURCE, native_hook_constant
from conftest import NATIVE_HOOK
from measure import OUTPUT_DIR, report

MARKER, HOOK_LOG = native_hook_constant("MARKER"), native_hook_constant("LOG_PREFIX")
CHECKPOINT = "ace_step_native_parity.safetensors"
WIDTH, LAYERS = 256, 2
TOLERANCE = 1e-4
DIFF_GAIN_DB = 80  # x 10^4: full scale = TOLERANCE
VOCODER_GAIN = 50.0
SEED, STEPS, CFG, SHIFT, SECONDS = 424242, 3, 5.0, 5.0, 2.0
TAGS = "synthwave, female vocals, driving bass, 120 bpm, dreamy"
# No digits: ComfyUI reads ordinals ("5th") as cardinals, the pack (like the original) as ordinals.
LYRICS = "[verse]\nNeon lights across the water\nWe keep dancing through the night\n\n[chorus]\nSing it loud tonight"

OUT = OUTPUT_DIR / "comfy-base" / "output"
CHECKPOINTS = OUTPUT_DIR / "comfy-base" / "models" / "checkpoints"


@pytest.fixture(scope="module")
def parity_checkpoint(comfy_server):
    path = CHECKPOINTS / CHECKPOINT
    start = time.perf_counter()
    write_tiny_checkpoint(path, configs={
        "transformer": TransformerConfig(hidden_size=WIDTH, num_heads=WIDTH // 128, head_dim=128, num_layers=LAYERS),
        "vae": MusicVAEConfig.full_size(),
        "umt5": UMT5Config.full_size(),
    }, edit=parity_values, metadata={MARKER: "reduced DiT; full-size VAE, UMT5, lyric encoder"})
    report("native equivalence checkpoint", round(path.stat().st_size / 1e9, 2), unit="GB",
           seconds=round(time.perf_counter() - start, 1))
    yield CHECKPOINT
    path.unlink(missing_ok=True)  # 2.5 GB, rebuilt in seconds


def parity_values(states: dict):
    # Native ComfyUI holds UMT5 weights in fp16 on CPU: give both sides values that fp16 holds exactly.
    states["umt5"] = {k: v.half().float() if v.is_floating_point() else v for k, v in states["umt5"].items()}
    # The randomly initialised vocoder is nearly silent (std ~0.008); at song loudness the decoders' loudness rule
    # (5 std > 1: scale to std 0.2) is exercised too.
    states["vae"]["vocoder.head.conv_post.weight_g"] *= VOCODER_GAIN


def native_graph(ckpt: str) -> dict:
    """ComfyUI's ACE-Step text-to-music graph, core nodes only."""
    return {
        "n_load": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "n_shift": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["n_load", 0], "shift": SHIFT}},
        "n_tonemap": {"class_type": "LatentOperationTonemapReinhard", "inputs": {"multiplier": 1.0}},
        "n_cfg": {"class_type": "LatentApplyOperationCFG",
                  "inputs": {"model": ["n_shift", 0], "operation": ["n_tonemap", 0]}},
        "n_text": {"class_type": "TextEncodeAceStepAudio",
                   "inputs": {"clip": ["n_load", 1], "tags": TAGS, "lyrics": LYRICS, "lyrics_strength": 0.99}},
        "n_zero": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["n_text", 0]}},
        "n_empty": {"class_type": "EmptyAceStepLatentAudio", "inputs": {"seconds": SECONDS, "batch_size": 1}},
        "n_sample": ksampler("n_cfg", "n_text", "n_zero", "n_empty"),
        "n_decode": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["n_sample", 0], "vae": ["n_load", 2]}},
        "n_save_latent": {"class_type": "SaveLatent",
                          "inputs": {"samples": ["n_sample", 0], "filename_prefix": "parity/native"}},
        "n_save_audio": {"class_type": "SaveAudio",
                         "inputs": {"audio": ["n_decode", 0], "filename_prefix": "parity/native"}},
    }


def pack_graph(ckpt: str) -> dict:
    """The same graph with the pack's nodes, plus core VAEDecodeAudio on the pack's VAE (interop)."""
    return {
        "p_load": {"class_type": "AceStudioCheckpointLoader", "inputs": {"ckpt_name": ckpt}},
        "p_shift": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["p_load", 0], "shift": SHIFT}},
        "p_tonemap": {"class_type": "AceStudioTonemapReinhard", "inputs": {"model": ["p_shift", 0], "multiplier": 1.0}},
        "p_text": {"class_type": "AceStudioTextEncode",
                   "inputs": {"clip": ["p_load", 1], "tags": TAGS, "lyrics": LYRICS, "lyrics_strength": 0.99}},
        "p_zero": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["p_text", 0]}},
        "p_empty": {"class_type": "AceStudioEmptyLatentAudio", "inputs": {"seconds": SECONDS, "batch_size": 1}},
        "p_sample": ksampler("p_tonemap", "p_text", "p_zero", "p_empty"),
        "p_decode": {"class_type": "AceStudioLatentToAudio",
                     "inputs": {"samples": ["p_sample", 0], "vae": ["p_load", 2], "normalize": True}},
        "p_core_decode": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["p_sample", 0], "vae": ["p_load", 2]}},
        "p_save_latent": {"class_type": "SaveLatent",
                          "inputs": {"samples": ["p_sample", 0], "filename_prefix": "parity/pack"}},
        "p_save_audio": {"class_type": "SaveAudio",
                         "inputs": {"audio": ["p_decode", 0], "filename_prefix": "parity/pack"}},
    }


def ksampler(model: str, positive: str, negative: str, latent: str) -> dict:
    return {"class_type": "KSampler", "inputs": {
        "model": [model, 0], "positive": [positive, 0], "negative": [negative, 0], "latent_image": [latent, 0],
        "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "euler", "scheduler": "simple", "denoise": 1.0}}


def difference_graph(a: str, b: str, name: str) -> dict:
    """10^4 x (audio a - audio b), computed in float inside the server and saved as FLAC."""
    return {
        f"d_{name}_sub": {"class_type": "AudioMerge",
                          "inputs": {"audio1": [a, 0], "audio2": [b, 0], "merge_method": "subtract"}},
        f"d_{name}_gain": {"class_type": "AudioAdjustVolume",
                           "inputs": {"audio": [f"d_{name}_sub", 0], "volume": DIFF_GAIN_DB}},
        f"d_{name}_save": {"class_type": "SaveAudio",
                           "inputs": {"audio": [f"d_{name}_gain", 0], "filename_prefix": f"parity/diff_{name}"}},
    }


def saved(result, node: str, kind: str) -> Path:
    [item] = result.outputs[node][kind]
    return OUT / item["subfolder"] / item["filename"]


def read_audio(path: Path) -> torch.Tensor:
    data, rate = sf.read(path, dtype="float64")
    assert rate == 44100 and data.ndim == 2 and data.shape[1] == 2
    return torch.from_numpy(data)


def read_difference(path: Path) -> float:
    """max |a - b| from a difference file; inf where the amplified difference clipped (it exceeds TOLERANCE)."""
    diff = read_audio(path).abs().max().item()
    return diff / 10 ** (DIFF_GAIN_DB / 20) if diff < 0.999 else math.inf


def log_since(server, offset: int) -> str:
    return server.log_path.read_text(errors="replace")[offset:]


def test_hook_changes_only_unet_detection():
    """The hook rebinds exactly one ComfyUI attribute, and changes nothing else by other means."""
    tree = ast.parse(NATIVE_HOOK_SOURCE.read_text())
    stores = [n for n in ast.walk(tree)
              if isinstance(n, (ast.Attribute, ast.Subscript)) and isinstance(n.ctx, ast.Store)]
    assert [ast.unparse(n) for n in stores] == ["comfy.model_detection.detect_unet_config"]
    calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    assert not calls & {"setattr", "delattr", "exec", "eval", "__import__"}


def test_pack_graph_equals_native_graph(comfy_server, parity_checkpoint):
    start = time.perf_counter()
    info = comfy_server.get_json("/object_info")
    assert not [n for n, v in info.items() if NATIVE_HOOK in v.get("python_module", "")], "the hook must add no nodes"
    assert f"{NATIVE_HOOK} (IMPORT FAILED)" not in comfy_server.log_tail(10**7)

    # Run 1: the native graph alone.
    offset = len(comfy_server.log_path.read_text(errors="replace"))
    native = native_graph(parity_checkpoint)
    first = run_prompt(comfy_server, native, timeout=300)
    assert first.status == "success", f"{first.error}\n{comfy_server.log_tail()}"
    native_seconds = time.perf_counter() - start
    log = log_since(comfy_server, offset)
    # Native ComfyUI built the reduced transformer from the hook's config (the size it loads is the file's
    # transformer: its count skips the few parameters of non-leaf modules) and loaded every weight of the file.
    [line] = [l for l in log.splitlines() if HOOK_LOG in l]
    config = ast.literal_eval(line.split(HOOK_LOG + ": ", 1)[1])
    assert (config["inner_dim"], config["num_layers"], config["num_attention_heads"]) == (WIDTH, LAYERS, WIDTH // 128)
    [loaded_mb] = re.findall(r"Requested to load ACEStep\nloaded completely; [\d.]+ MB usable, ([\d.]+) MB loaded", log)
    shapes = SafetensorsFile(CHECKPOINTS / parity_checkpoint).shapes()
    file_mb = sum(4 * math.prod(v) for k, v in shapes.items() if k.startswith("model.diffusion_model.")) / 2**20
    assert 0.99 * file_mb < float(loaded_mb) <= file_mb, (loaded_mb, file_mb)
    for warning in ("unet missing", "unet unexpected", "clip missing", "Missing VAE keys", "NOT LOADED"):
        assert warning not in log, f"native ComfyUI did not load the weights cleanly:\n{log}"
    assert "model weight dtype torch.float32, manual cast: None" in log
    assert "CLIP/text encoder model load device: cpu, offload device: cpu, current: cpu, dtype: torch.float16" in log

    # Run 2: the pack's graph, with the native graph again (served from ComfyUI's cache: the very outputs of run 1)
    # so that the differences are taken in float inside the server.
    pack = pack_graph(parity_checkpoint)
    second = run_prompt(comfy_server, {**native, **pack, **difference_graph("n_decode", "p_decode", "pack"),
                                       **difference_graph("n_decode", "p_core_decode", "interop"),
                                       **difference_graph("p_decode", "p_core_decode", "loudness")}, timeout=300)
    assert second.status == "success", f"{second.error}\n{comfy_server.log_tail()}"
    cached = {n for e in second.events if e["type"] == "execution_cached" for n in e["data"]["nodes"]}
    assert {"n_load", "n_sample", "n_decode"} <= cached, "the native graph ran again instead of coming from run 1"
    elapsed = time.perf_counter() - start

    native_latent = load_file(saved(first, "n_save_latent", "latents"))["latent_tensor"]
    pack_latent = load_file(saved(second, "p_save_latent", "latents"))["latent_tensor"]
    assert native_latent.shape == pack_latent.shape == (1, 8, 16, int(SECONDS * 44100 / 4096))
    assert native_latent.std() > 0.1, "the sampled latent should not be (near) zero"
    latent_diff = (native_latent - pack_latent).abs().max().item()

    native_audio = read_audio(saved(first, "n_save_audio", "audio"))
    pack_audio = read_audio(saved(second, "p_save_audio", "audio"))
    assert native_audio.shape == pack_audio.shape == (native_latent.shape[-1] * 4096, 2)
    flac_diff = (native_audio - pack_audio).abs().max().item()
    audio_diff = read_difference(saved(second, "d_pack_save", "audio"))
    interop_diff = read_difference(saved(second, "d_interop_save", "audio"))
    loudness_diff = read_difference(saved(second, "d_loudness_save", "audio"))

    report("native vs pack latent max abs diff", latent_diff, tolerance=TOLERANCE)
    report("native vs pack audio max abs diff (float, in server)", audio_diff, tolerance=TOLERANCE,
           flac_16bit=flac_diff)
    report("native vs core VAEDecodeAudio on the pack's VAE max abs diff", interop_diff, tolerance=TOLERANCE)
    report("pack LatentToAudio vs core VAEDecodeAudio (same VAE, loudness rule) max abs diff", loudness_diff)
    report("native equivalence runs", round(elapsed, 1), unit="s", native_run=round(native_seconds, 1))
    assert latent_diff <= TOLERANCE
    assert audio_diff <= TOLERANCE
    assert interop_diff <= TOLERANCE
    assert flac_diff <= TOLERANCE  # what a listener gets: at most a few 16-bit steps apart
    # The song was loud enough for the loudness rule to act (scaled to std 0.2), and both decoders applied it alike.
    assert abs(native_audio.std().item() - 0.2) < 1e-3
    assert loudness_diff <= 1e-6
