"""The memory estimates behind the pack's early refusals (nodes/memory.py), against measured peaks, and the refusals.

An estimate below the real need lets through a request the machine cannot hold (on the CPU the system then kills
ComfyUI, queue and all); one far above it refuses work that fits. So each estimate must lie between the measured
peak and three times it. Peaks are the growth of this process's resident set (Linux's VmHWM, reset before each
run), on the tiny networks with inputs large enough for their quadratic or per-frame terms to dominate.
"""
import ctypes
import math
from pathlib import Path

import pytest
import torch

from measure import report
from pack_inprocess import PACKAGE, import_pack

from ace_step.models.v1.transformer import ACEStepTransformer
from ace_step.models.v1.umt5 import UMT5Encoder
from fixtures.v1_configs import tiny_transformer, tiny_umt5

CLEAR_REFS = Path("/proc/self/clear_refs")


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _return_free_heap_memory() -> None:
    """glibc keeps freed heap blocks resident; earlier tests' leftovers would then serve fn() without the resident set
    growing, and the peak would read as nothing."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing kept to return
        pass


def measured_peak(fn) -> int:
    """Bytes the resident set grows by at its highest while fn() runs."""
    _return_free_heap_memory()
    CLEAR_REFS.write_text("5")  # VmHWM := VmRSS
    base = _status("VmRSS")
    with torch.no_grad():
        fn()
    return _status("VmHWM") - base


needs_proc = pytest.mark.skipif(not CLEAR_REFS.exists(), reason="needs Linux /proc/self/clear_refs")


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return ACEStepTransformer(tiny_transformer()).eval(), UMT5Encoder(tiny_umt5()).eval()


def _within(name: str, estimate: int, peak: int):
    report(f"memory estimate / measured peak: {name}", round(estimate / peak, 2), estimate_mib=estimate >> 20,
           peak_mib=peak >> 20)
    assert peak <= estimate <= 3 * peak, f"{name}: estimate {estimate >> 20} MiB, measured {peak >> 20} MiB"


@needs_proc
@pytest.mark.parametrize("tokens,batch", [(2000, 1), (2400, 2)])
def test_lyric_encoder_estimate(tiny, tokens, batch):
    transformer, _ = tiny
    ids = torch.randint(0, 6000, (batch, tokens))
    _within(f"lyric encoder, {batch} x {tokens} tokens", transformer.lyric_encoder.working_bytes(tokens, batch),
            measured_peak(lambda: transformer.encode_lyrics(ids)))


@needs_proc
@pytest.mark.parametrize("tokens,weighted", [(3000, False), (3000, True)])
def test_text_encoder_estimate(tiny, tokens, weighted):
    _, umt5 = tiny
    rows = 2 if weighted else 1
    ids = torch.randint(2, 500, (rows, tokens))
    _within(f"UMT5, {rows} x {tokens} tokens", umt5.working_bytes(tokens, rows),
            measured_peak(lambda: umt5(ids, torch.ones(rows, tokens, dtype=torch.long))))


@needs_proc
@pytest.mark.parametrize("batch,frames", [(2, 20000), (4, 8000)])
def test_transformer_estimate(tiny, batch, frames):
    transformer, _ = tiny
    c = transformer.config
    x = torch.randn(batch, c.in_channels, 16, frames)
    text = torch.randn(batch, 20, c.text_embedding_dim)
    lyrics = torch.randint(0, 6000, (batch, 300))
    _within(f"transformer forward, {batch} x {frames} frames", transformer.working_bytes(batch, frames, 20, 300),
            measured_peak(lambda: transformer(x, torch.full((batch,), 500.0), text, lyrics)))


# ------------------------------------------------------------------------------------------------ the refusals
@pytest.fixture
def little_memory(monkeypatch):
    """The pack sees 256 MiB of free RAM."""
    import_pack()
    import comfy.model_management as mm

    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: 256 * 2**20)
    import importlib

    return lambda module: importlib.import_module(f"{PACKAGE}.{module}")


def test_empty_latent_refused_before_allocating(little_memory):
    latent, memory = little_memory("nodes.latent"), little_memory("comfy_bridge.memory")
    with pytest.raises(memory.NotEnoughMemoryError) as e:
        latent.EmptyLatentAudio.execute(seconds=1000.0, batch_size=64)
    message = str(e.value)
    assert "an empty latent for 64 × 1000 s needs about 0.3 GiB" in message and "0.2 GiB of free RAM" in message
    assert "lower batch_size or seconds" in message and "Nothing was allocated" in message
    assert latent.EmptyLatentAudio.execute(seconds=60.0, batch_size=1).args[0]["samples"].shape[-1] == 645


def test_sampling_refused_before_allocating(little_memory, tiny):
    comfy_models, memory = little_memory("comfy_bridge.models"), little_memory("comfy_bridge.memory")
    model = ACEStepTransformer(tiny_transformer())
    model.__class__ = comfy_models.ComfyCallableTransformer
    x = torch.zeros(1, 1, 1, 1).expand(64, 8, 16, 10766)  # a whole batch of 1000 s songs, as a free view
    text, t = torch.zeros(64, 20, model.config.text_embedding_dim), torch.full((64,), 500.0)
    with pytest.raises(memory.NotEnoughMemoryError, match=r"sampling 64 × 10,766 latent frames \(1,000 s\) needs "
                                                          r"about .* lower the batch size or the song length"):
        model(x, t, context=text, lyric_token_idx=torch.zeros(64, 50, dtype=torch.long))
    with pytest.raises(memory.NotEnoughMemoryError, match="encoding 20,000 lyric tokens .* shorten the lyrics"):
        model(x[:1, ..., :10], t[:1], context=text[:1], lyric_token_idx=torch.zeros(1, 20000, dtype=torch.long))
    out = model(x[:1, ..., :10].contiguous(), t[:1], context=text[:1], lyric_token_idx=torch.zeros(1, 50).long())
    assert out.shape == (1, 8, 16, 10) and math.isfinite(out.abs().max().item())
