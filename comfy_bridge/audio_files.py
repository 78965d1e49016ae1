"""Encodes AUDIO to files (FLAC, MP3, Opus, WAV) with PyAV, as ComfyUI's own savers do, and saves them atomically
under a name that never replaces an existing file, with the permissions the process's umask gives new files (as
ComfyUI's own savers); decodes audio files to float samples."""
from __future__ import annotations

import errno
import io
import logging
import os
import secrets
from typing import Callable

import av
import numpy as np

FORMATS = ("flac", "mp3", "opus", "wav")
# mp3 and opus take every bit rate (constant for mp3); V0 is mp3's best VBR and, for opus, 128k (its default).
QUALITIES = ("V0", "64k", "96k", "128k", "192k", "320k")
_OPUS_V0 = "128k"
_OPUS_RATE = 48000  # libopus takes 8/12/16/24/48 kHz; 44.1 kHz songs go up to 48 kHz like ComfyUI's saver
_MP3_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)  # all MPEG-1/2/2.5 layer III knows
# The highest layer III bit rate (kbps) from each lowest sample rate: MPEG-2.5 (8-12 kHz), MPEG-2 (16-24 kHz),
# MPEG-1 (32-48 kHz); LAME caps higher requests there.
_MP3_MAX_KBPS = ((32000, 320), (16000, 160), (0, 64))
_FLAC_MAX_RATE = 655350  # the FLAC encoder's limit
_FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
# Decoded frames (a few thousand samples each) are joined into blocks of this size: above glibc's largest mmap
# threshold (32 MiB), so a block's memory goes back to the system when freed instead of staying in the heap.
_BLOCK_BYTES = 64 << 20
log = logging.getLogger(__name__)


def encode_audio(waveform: np.ndarray, sample_rate: int, fmt: str, quality: str | None = None,
                 metadata: dict[str, str] | None = None) -> bytes:
    """waveform: float32 [channels, samples] in [-1, 1]; returns the encoded file. `quality` (one of QUALITIES, V0 when
    None) applies to mp3 and opus only."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown audio format {fmt!r}: choose one of {', '.join(FORMATS)}")
    quality = quality or "V0"
    if quality not in QUALITIES:
        raise ValueError(f"unknown audio quality {quality!r}: choose one of {', '.join(QUALITIES)}")
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
    if fmt in ("mp3", "opus"):
        _set_quality(stream, fmt, quality, rate)
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


def _set_quality(stream, fmt: str, quality: str, rate: int):
    """mp3: V0 (LAME's best VBR) or a constant bit rate; opus: a bit rate, V0 meaning 128k."""
    if fmt == "mp3" and quality == "V0":
        stream.codec_context.qscale = 1
        return
    kbps = int((_OPUS_V0 if quality == "V0" else quality)[:-1])
    if fmt == "mp3":
        most = next(limit for lowest, limit in _MP3_MAX_KBPS if rate >= lowest)
        if kbps > most:
            log.warning("MP3 at %d Hz holds at most %d kbps, so this file gets %dk instead of the %s asked for: save "
                        "as opus or flac to keep more", rate, most, most, quality)
    stream.bit_rate = kbps * 1000


def _header_samples(container, stream) -> int | None:
    """Samples of `stream` as the file's header states them, None when it does not."""
    if stream.duration is not None:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        seconds = container.duration / av.time_base
    else:
        return None
    return int(seconds * stream.rate) + 1


def decode_audio_file(path: str, check: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, int]:
    """The first audio stream of any file FFmpeg reads (WAV, FLAC, MP3, Opus, a video...) as float32
    [channels, samples] in [-1, 1], and its sample rate. Damaged or non-audio files raise a ValueError saying so.
    `check(channels, samples)` sees the size the header states (when it states one) before anything is decoded."""
    name = os.path.basename(path)
    try:
        with av.open(path) as container:
            if not container.streams.audio:
                raise ValueError(f"{name} has no audio stream: choose an audio file (or a video with sound)")
            stream = container.streams.audio[0]
            samples = _header_samples(container, stream)
            if check is not None and samples is not None:
                check(stream.channels, samples)
            resampler, blocks, frames, pending = None, [], [], 0
            for frame in container.decode(stream):
                # Whatever the stored sample format (16/24/32-bit, float, planar or not): planar float32.
                resampler = resampler or av.AudioResampler(format="fltp", layout=frame.layout, rate=frame.rate)
                new = [f.to_ndarray() for f in resampler.resample(frame)]
                frames += new
                pending += sum(a.nbytes for a in new)
                if pending >= _BLOCK_BYTES:
                    blocks.append(np.concatenate(frames, axis=1))
                    frames, pending = [], 0
            if resampler is not None:
                frames += [f.to_ndarray() for f in resampler.resample(None)]
    except av.error.FFmpegError as e:
        raise ValueError(f"{name} could not be read as audio ({e.strerror or e}): the file is damaged or not an "
                         "audio file; re-export it from your audio editor") from None
    blocks += frames
    if not sum(b.shape[1] for b in blocks):
        raise ValueError(f"{name} holds no audio samples (it is empty or not an audio file): choose a file "
                         "with sound in it")
    return np.concatenate(blocks, axis=1), stream.rate


def _create_partial(folder: str, ext: str) -> tuple[int, str]:
    """A new, empty hidden file in `folder`, opened for writing: (descriptor, path). Created with mode 0o666 so that
    the process's umask decides its permissions, as for any file ComfyUI writes (tempfile.mkstemp would make it
    0o600, which web servers and shares reading the output folder cannot open)."""
    while True:
        path = os.path.join(folder, f".partial-{secrets.token_hex(8)}.{ext}")
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), path
        except FileExistsError:
            continue


def save_unique(data: bytes, folder: str, stem: str, counter: int, ext: str) -> str:
    """Writes `<stem>_<counter:05>_.<ext>` in `folder` via a temporary file and an atomic no-replace link, raising the
    counter past any name that exists; returns the file name. A failed write leaves no partial file behind."""
    fd, tmp = _create_partial(folder, ext)
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
