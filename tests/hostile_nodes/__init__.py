"""Test-only ComfyUI custom nodes for the reliability tests (tests/test_hostile_inputs.py and
tests/test_interrupts_and_load.py): AUDIO no file can carry (int16/float64/float16 tensors, a single sample, NaN/Inf
samples, any channel count and rate, a view larger than memory), LATENT of any shape, dtype or type, the pack's VAE
with short windows, and a node that always fails. The comfy_server fixture links this folder into the test server's
custom_nodes/."""
import copy
import math

import torch

CATEGORY = "_for_testing/ACE-Step Studio"
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "int16": torch.int16, "int32": torch.int32, "uint8": torch.uint8}
# "huge-view": zeros as an expanded view, any size for no memory (a request larger than the machine).
FILLS = ("tone", "silence", "nan", "inf", "loud", "huge-view")


def crafted_waveform(samples: int, channels: int, rate: int, dtype: torch.dtype, fill: str, batch: int = 1):
    if fill == "huge-view":
        return torch.zeros(1, 1, 1, dtype=dtype).expand(batch, channels, samples)
    t = torch.arange(samples, dtype=torch.float64) / max(rate, 1)
    tone = torch.stack([0.3 * torch.sin(2 * math.pi * (220 + 55 * c) * t) for c in range(channels)]) if channels \
        else torch.zeros(0, samples, dtype=torch.float64)
    wave = torch.zeros_like(tone) if fill == "silence" else tone
    if fill == "loud":
        wave = wave * 100.0
    if fill in ("nan", "inf") and samples:
        wave[:, samples // 2] = float(fill)
    wave = wave.expand(batch, -1, -1).contiguous()
    if not dtype.is_floating_point:  # integer PCM: full scale is the type's range, as in a WAV file
        wave = (wave * (torch.iinfo(dtype).max if dtype != torch.uint8 else 127) + (128 if dtype == torch.uint8 else 0))
        return wave.round().to(dtype)
    return wave.to(dtype)


class CraftedAudio:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "samples": ("INT", {"default": 44100, "min": 0, "max": 2**31}),
            "channels": ("INT", {"default": 2, "min": 0, "max": 64}),
            "sample_rate": ("INT", {"default": 44100, "min": -1, "max": 10**7}),
            "dtype": (list(DTYPES),),
            "fill": (list(FILLS),),
            "batch": ("INT", {"default": 1, "min": 1, "max": 16}),
        }}

    RETURN_TYPES = ("AUDIO",)
    FUNCTION = "make"
    CATEGORY = CATEGORY

    def make(self, samples, channels, sample_rate, dtype, fill, batch):
        return ({"waveform": crafted_waveform(samples, channels, sample_rate, DTYPES[dtype], fill, batch),
                 "sample_rate": sample_rate},)


class CraftedLatent:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "shape": ("STRING", {"default": "1,8,16,10"}),
            "dtype": (list(DTYPES),),
            "fill": (["randn", "zeros", "nan", "huge-view"],),
            "type": ("STRING", {"default": "audio"}),
        }}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = CATEGORY

    def make(self, shape, dtype, fill, type):
        dims = [int(d) for d in shape.split(",") if d.strip()]
        if fill == "huge-view":
            return ({"samples": torch.zeros([1] * len(dims), dtype=DTYPES[dtype]).expand(dims), "type": type},)
        latent = torch.randn(dims, generator=torch.Generator().manual_seed(0)) if fill == "randn" else torch.zeros(dims)
        if fill == "nan":
            latent.fill_(float("nan"))
        out = {"samples": latent.to(DTYPES[dtype])}
        if type:
            out["type"] = type
        return (out,)


class SmallWindowVae:
    """The pack's VAE decoding and encoding in windows of `window_frames` latent frames instead of 384: the same
    code path with many short windows, so a test can interrupt between windows within seconds."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"vae": ("VAE",), "window_frames": ("INT", {"default": 16, "min": 1, "max": 384}),
                             "overlap_frames": ("INT", {"default": 4, "min": 1, "max": 64})}}

    RETURN_TYPES = ("VAE",)
    FUNCTION = "make"
    CATEGORY = CATEGORY

    def make(self, vae, window_frames, overlap_frames):
        small = copy.copy(vae)
        small.CHUNK_FRAMES, small.OVERLAP_FRAMES = window_frames, overlap_frames
        return (small,)


class DeliberateFailure:
    """Fails after its input exists: stands for any later node of a workflow that breaks."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"audio": ("AUDIO",)}}

    RETURN_TYPES = ()
    FUNCTION = "fail"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY

    def fail(self, audio):
        raise RuntimeError("deliberate failure of a later node (test)")


NODE_CLASS_MAPPINGS = {"TestCraftedAudio": CraftedAudio, "TestCraftedLatent": CraftedLatent,
                       "TestSmallWindowVae": SmallWindowVae, "TestDeliberateFailure": DeliberateFailure}
