"""Encodes AUDIO to files (FLAC, MP3, Opus, WAV) with PyAV, as ComfyUI's own savers do, and saves them atomically
under a name that never replaces an existing file."""
from __future__ import annotations

import errno
import io
import os
import tempfile

import av
import numpy as np

FORMATS = ("flac", "mp3", "opus", "wav")
QUALITIES = {"mp3": ("V0", "128k", "320k"), "opus": ("64k", "96k", "128k", "192k", "320k")}
_OPUS_RATE = 48000  # libopus takes 8/12/16/24/48 kHz; 44.1 kHz songs go up to 48 kHz like ComfyUI's saver
_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)  # all MPEG-1/2/2.5 layer III knows
_FLAC_MAX_RATE = 655350  # the FLAC encoder's limit
_FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


def encode_audio(waveform: np.ndarray, sample_rate: int, fmt: str, quality: str | None = None,
                 metadata: dict[str, str] | None = None) -> bytes:
    """waveform: float32 [channels, samples] in [-1, 1]; returns the encoded file."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}: choose one of {', '.join(FORMATS)}")
    channels = waveform.shape[0]
    if channels not in (1, 2):
        raise ValueError(f"can only save mono or stereo audio, got {channels} channels: mix it down first")
    layout = "mono" if channels == 1 else "stereo"
    buffer = io.BytesIO()
    container = av.open(buffer, mode="w", format=fmt)
    for key, value in (metadata or {}).items():
        container.metadata[key] = value
    rate = _OPUS_RATE if fmt == "opus" else sample_rate
    if fmt == "mp3" and rate not in _MP3_RATES:  # the nearest rate above keeps everything (48 kHz at most)
        rate = min((r for r in _MP3_RATES if r >= sample_rate), default=_MP3_RATES[-1])
    if fmt == "flac" and rate > _FLAC_MAX_RATE:
        raise ValueError(f"FLAC stores at most {_FLAC_MAX_RATE:,} samples per second, this audio has {rate:,}: "
                         "save it as wav, or resample it")
    codec = {"flac": "flac", "mp3": "libmp3lame", "opus": "libopus", "wav": "pcm_s16le"}[fmt]
    stream = container.add_stream(codec, rate=rate, layout=layout)
    if fmt == "mp3" and (quality or "V0") == "V0":
        stream.codec_context.qscale = 1
    elif quality and quality.endswith("k"):
        stream.bit_rate = int(quality[:-1]) * 1000
    samples = np.ascontiguousarray(np.clip(waveform, -1.0, 1.0).T.reshape(1, -1), dtype=np.float32)
    frame = av.AudioFrame.from_ndarray(samples, format="flt", layout=layout)
    frame.sample_rate = sample_rate
    frame.pts = 0
    frames = [frame]
    if rate != sample_rate:
        resampler = av.AudioResampler(format="flt", layout=layout, rate=rate)
        frames = resampler.resample(frame) + resampler.resample(None)
    for f in frames:
        container.mux(stream.encode(f))
    container.mux(stream.encode(None))
    container.close()
    return buffer.getvalue()


def save_unique(data: bytes, folder: str, stem: str, counter: int, ext: str) -> str:
    """Writes `<stem>_<counter:05>_.<ext>` in `folder` via a temporary file and an atomic no-replace link, raising the
    counter past any name that exists; returns the file name. A failed write leaves no partial file behind."""
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".partial-", suffix="." + ext)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        while True:
            name = f"{stem}_{counter:05}_.{ext}"
            try:
                os.link(tmp, os.path.join(folder, name))  # fails instead of replacing an existing song
                return name
            except FileExistsError:
                counter += 1
    except OSError as e:
        if e.errno in _FULL_DISK:
            raise OSError(e.errno, f"the disk holding {folder} is full (or your quota is used up): free some space "
                          "and run again; nothing was written and no earlier file was touched") from e
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
