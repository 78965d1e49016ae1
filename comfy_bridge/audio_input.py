"""Checks and conversions for ComfyUI AUDIO inputs ({"waveform": [batch, channels, samples], "sample_rate": int}),
shared by every node that takes one. AUDIO reaches the pack from anywhere: files, other packs, hand-made tensors.

The structure is checked first, without touching the samples, so the memory a request needs can be estimated before
anything is copied (a hostile waveform can be a view far larger than memory)."""
import torch

# Integer PCM as some packs and recorders hand it over: full scale is the type's range, as in a WAV file.
_PCM_SCALE = {torch.int16: 2.0**15, torch.int32: 2.0**31, torch.int8: 2.0**7}
MAX_SAMPLE_RATE = 768_000


def audio_parts(audio) -> tuple[torch.Tensor, int]:
    """(waveform, sample_rate) of an AUDIO whose structure is valid; the samples are not read."""
    if not isinstance(audio, dict) or not isinstance(audio.get("waveform"), torch.Tensor):
        raise ValueError("this input is not ComfyUI AUDIO (a dict with a 'waveform' tensor and a 'sample_rate'): "
                         "connect the output of an audio node such as Load Audio")
    waveform, rate = audio["waveform"], audio.get("sample_rate")
    if waveform.ndim != 3:
        raise ValueError(f"AUDIO waveform must be [batch, channels, samples], got shape {tuple(waveform.shape)}: the "
                         "node that made it does not follow ComfyUI's AUDIO format")
    whole = (isinstance(rate, int) and not isinstance(rate, bool)) or (isinstance(rate, float) and rate.is_integer())
    if not whole or not 0 < rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"invalid sample rate {rate!r}: AUDIO needs a whole number of samples per second, from 1 to "
                         f"{MAX_SAMPLE_RATE:,} (the highest rate audio hardware uses)")
    if waveform.shape[1] == 0:
        raise ValueError("the audio has no channels: load a mono or stereo file")
    if waveform.shape[-1] == 0:
        raise ValueError("the audio is empty (0 samples): load a longer file or check the trim")
    if not (waveform.is_floating_point() or waveform.dtype in _PCM_SCALE or waveform.dtype == torch.uint8):
        raise ValueError(f"AUDIO samples of type {waveform.dtype} are not audio: expected float in [-1, 1] or "
                         "integer PCM")
    return waveform, int(rate)


def float_waveform(waveform: torch.Tensor) -> torch.Tensor:
    """float32 samples, integer PCM scaled to [-1, 1]; refuses NaN and infinite samples, which would silently turn
    a whole song into noise or silence."""
    if waveform.dtype == torch.uint8:  # 8-bit WAV: unsigned, silence at 128
        waveform = (waveform.float() - 128.0) / 128.0
    elif waveform.dtype in _PCM_SCALE:
        waveform = waveform.float() / _PCM_SCALE[waveform.dtype]
    else:
        waveform = waveform.float()
    finite = torch.isfinite(waveform)
    if not finite.all():
        bad = finite.numel() - int(finite.sum())
        raise ValueError(f"the audio contains {bad:,} NaN or infinite samples (of {finite.numel():,}): the node "
                         "that made it failed, or the file is damaged; re-export it from your audio editor")
    return waveform


def to_stereo(waveform: torch.Tensor) -> torch.Tensor:
    """[B, C, T] -> [B, 2, T]: mono is duplicated; more channels are folded (even channels left, odd right)."""
    channels = waveform.shape[1]
    if channels == 2:
        return waveform
    if channels == 1:
        return waveform.expand(-1, 2, -1)
    return torch.stack([waveform[:, 0::2].mean(1), waveform[:, 1::2].mean(1)], dim=1)
