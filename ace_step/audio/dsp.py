"""Audio front end of the ACE-Step music VAE, in plain torch (no torchaudio).

- `mel_filterbank`: the slaney-scale, slaney-normalised triangular filterbank; in float32 it is bit-identical to
  torchaudio's `melscale_fbanks(..., norm="slaney", mel_scale="slaney")`.
- `LogMelSpectrogram`: the vocoder's analysis transform, which is also the DCAE's input: reflect pad
  (n_fft - hop)/2 each side, STFT without centering in fp32, magnitude sqrt(re² + im² + 1e-6), mel, log(clamp(1e-5)).
  With the pad it gives exactly T / hop frames for T a multiple of hop.
- `resample`: band-limited sinc resampling (Hann-windowed sinc, zero-padded edges), the same filter values as
  `torchaudio.functional.resample` with its defaults, for any pair of integer rates (reduced by their gcd). It is
  evaluated in bounded-size chunks along time, and for rate pairs with many phases (e.g. 44101 → 44100, where
  torchaudio's dense filter would need gigabytes) only on each output's non-zero taps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------------------------------------------------
# Mel filterbank (Slaney's Auditory Toolbox scale: linear below 1 kHz, logarithmic above)

_SLANEY_F_SP = 200.0 / 3  # Hz per mel in the linear part
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
_SLANEY_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel_slaney(freq: float) -> float:
    if freq < _SLANEY_MIN_LOG_HZ:
        return freq / _SLANEY_F_SP
    return _SLANEY_MIN_LOG_MEL + math.log(freq / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP


def mel_to_hz_slaney(mels: torch.Tensor) -> torch.Tensor:
    linear = mels * _SLANEY_F_SP
    log = _SLANEY_MIN_LOG_HZ * torch.exp(_SLANEY_LOGSTEP * (mels - _SLANEY_MIN_LOG_MEL))
    return torch.where(mels >= _SLANEY_MIN_LOG_MEL, log, linear)


def mel_filterbank(
    n_freqs: int = 1025,
    f_min: float = 40.0,
    f_max: float = 16000.0,
    n_mels: int = 128,
    sample_rate: int = 44100,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Triangular slaney-scale filterbank with slaney (constant-area) normalisation, shape [n_freqs, n_mels].

    The arithmetic runs in `dtype`. In float32 it follows the reference implementation's operations in order, so it
    reproduces the exact filterbank the vocoder and DCAE were trained with; float64 gives the ideal values (they
    differ by a few 1e-6 relative).
    """
    # STFT bin centres run from 0 to the (integer) Nyquist, as in torchaudio.
    bin_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=dtype)
    mel_pts = torch.linspace(hz_to_mel_slaney(f_min), hz_to_mel_slaney(f_max), n_mels + 2, dtype=dtype)
    edges = mel_to_hz_slaney(mel_pts)  # [n_mels + 2]: band edges, each band's centre is the next edge
    widths = edges[1:] - edges[:-1]
    offset = edges[None, :] - bin_freqs[:, None]  # [n_freqs, n_mels + 2]
    rising = (-1.0 * offset[:, :-2]) / widths[:-1]
    falling = offset[:, 2:] / widths[1:]
    fb = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return fb * (2.0 / (edges[2:] - edges[:-2]))[None, :]  # equal area per band


# --------------------------------------------------------------------------------------------------------------------
# Log-mel spectrogram


@dataclass(frozen=True)
class MelConfig:
    sample_rate: int = 44100
    n_fft: int = 2048
    win_length: int = 2048
    hop_length: int = 512
    n_mels: int = 128
    f_min: float = 40.0
    f_max: float = 16000.0

    @property
    def pad_left(self) -> int:
        return (self.win_length - self.hop_length) // 2

    @property
    def pad_right(self) -> int:
        return (self.win_length - self.hop_length + 1) // 2


class LogMelSpectrogram(nn.Module):
    """audio [..., T] → log-mel [..., n_mels, frames]; frames = T // hop when T is a multiple of hop.

    Holds no tensors: the Hann window and the filterbank are derived data, computed once per device and cached, so
    the module builds on the meta device and never needs loading.
    """

    def __init__(self, config: MelConfig = MelConfig()):
        super().__init__()
        self.config = config
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def window_and_filterbank(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        device = torch.device(device)
        if device not in self._cache:
            c = self.config
            window = torch.hann_window(c.win_length, dtype=torch.float32)  # periodic, like torch's default
            fb = mel_filterbank(c.n_fft // 2 + 1, c.f_min, c.f_max, c.n_mels, c.sample_rate)
            self._cache[device] = (window.to(device), fb.to(device))
        return self._cache[device]

    def num_frames(self, num_samples: int) -> int:
        c = self.config
        return (num_samples + c.pad_left + c.pad_right - c.n_fft) // c.hop_length + 1

    def forward(self, audio: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Log-mel frames [start, stop) of `audio` [..., T] (float32 output).

        Frames depend only on their own samples (after the edge reflection), so computing a range of frames here gives
        exactly the same values as slicing the full spectrogram: this is what chunked encoding uses.
        """
        c = self.config
        lead = audio.shape[:-1]
        y = audio.reshape(-1, audio.shape[-1]).float()
        total = self.num_frames(y.shape[-1])
        stop = total if stop is None else min(stop, total)
        if not 0 <= start < stop:
            raise ValueError(f"empty frame range [{start}, {stop}) for {total} frames")
        # Padded-signal sample range that frames [start, stop) read; only the parts that fall in the padding are built.
        lo = start * c.hop_length - c.pad_left
        hi = (stop - 1) * c.hop_length + c.n_fft - c.pad_left
        seg = y[:, max(lo, 0) : min(hi, y.shape[-1])]
        left, right = max(-lo, 0), max(hi - y.shape[-1], 0)
        if left or right:
            # Reflection about the true signal edges (never about a chunk edge): take the mirrored samples from y.
            if left >= y.shape[-1] or right >= y.shape[-1]:
                raise ValueError(f"audio of {y.shape[-1]} samples is too short to reflect-pad by {max(left, right)}")
            parts = []
            if left:
                parts.append(y[:, 1 : left + 1].flip(-1))
            parts.append(seg)
            if right:
                parts.append(y[:, -right - 1 : -1].flip(-1))
            seg = torch.cat(parts, dim=-1)
        window, fb = self.window_and_filterbank(y.device)
        spec = torch.stft(
            seg, c.n_fft, hop_length=c.hop_length, win_length=c.win_length, window=window,
            center=False, normalized=False, onesided=True, return_complex=True,
        )
        spec = torch.view_as_real(spec)
        magnitude = torch.sqrt(spec.pow(2).sum(-1) + 1e-6)  # [N, n_freqs, frames]; the 1e-6 is part of the recipe
        mel = torch.matmul(magnitude.transpose(-1, -2), fb).transpose(-1, -2)
        mel = torch.log(torch.clamp(mel, min=1e-5))
        return mel.reshape(*lead, c.n_mels, mel.shape[-1])


# --------------------------------------------------------------------------------------------------------------------
# Resampling


def _sinc_phase_kernels(orig: int, new: int, lowpass_filter_width: int, rolloff: float, dtype: torch.dtype):
    """Polyphase taps for rates already reduced by their gcd.

    Output sample j = q·new + p sits at input position c = q·orig + p·orig/new. Its value is
    Σ_i x[i]·h(i − c), h(d) = sinc(π·base·d/orig)·hann-window·base/orig, cut to |base·d/orig| < width_zeros, where
    base = min(orig, new)·rolloff. The non-zero taps of phase p are i = q·orig + (p·orig)//new − width + m,
    m in [0, 2·width], width = ceil(width_zeros·orig/base): the filter torchaudio uses, without its zero taps.
    The tap values are computed with torchaudio's expressions, in the same order and dtype, so they are the same
    numbers. Returns (taps [new, 2·width+1], offsets [new, 2·width+1] into the input window that starts at
    q·orig − width, width).
    """
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base)
    phase = torch.arange(new, dtype=torch.int64)[:, None]
    offset = (phase * orig) // new + torch.arange(2 * width + 1, dtype=torch.int64)[None, :]
    # t = (i − c)·base/orig in "zero crossings", written as torchaudio writes it: (k − width)/orig − p/new.
    t = (offset - width).to(dtype) / orig + (-phase).to(dtype) / new
    t = t * base
    t = t.clamp(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t = t * math.pi
    safe_t = torch.where(t == 0, torch.ones_like(t), t)
    taps = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / safe_t)
    taps = taps * (window * (base / orig))
    return taps, offset, width


# Above this many dense filter values (new phases × input span) the gather path is used instead of conv1d.
_DENSE_KERNEL_LIMIT = 1 << 20


def resample(
    waveform: torch.Tensor,
    orig_freq: int,
    new_freq: int,
    lowpass_filter_width: int = 6,
    rolloff: float = 0.99,
    max_chunk_elements: int = 1 << 22,
) -> torch.Tensor:
    """Band-limited resampling of `waveform` [..., T] from orig_freq to new_freq Hz (integers).

    Output length is ceil(T·new/orig). Computed in float32 (float64 for float64 input) and returned in the input
    dtype. Work is split along time so that no intermediate exceeds about `max_chunk_elements` values per channel
    group; the result does not depend on the chunking.
    """
    if int(orig_freq) != orig_freq or int(new_freq) != new_freq or orig_freq <= 0 or new_freq <= 0:
        raise ValueError(f"sample rates must be positive integers, got {orig_freq} and {new_freq}")
    orig_freq, new_freq = int(orig_freq), int(new_freq)
    if orig_freq == new_freq:
        return waveform
    g = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // g, new_freq // g

    out_dtype = waveform.dtype
    work_dtype = torch.float64 if out_dtype == torch.float64 else torch.float32
    lead = waveform.shape[:-1]
    x = waveform.reshape(-1, waveform.shape[-1]).to(work_dtype)
    length = x.shape[-1]
    out_len = -(-new * length // orig)  # ceil

    taps, local, width = _sinc_phase_kernels(orig, new, lowpass_filter_width, rolloff, work_dtype)
    taps = taps.to(x.device)
    local = local.to(x.device)
    periods = -(-out_len // new)
    span = orig + 2 * width  # input samples one period's taps can touch, starting at q·orig − width
    right = max(0, (periods - 1) * orig + span - width - length)
    xp = F.pad(x, (width, right))  # zeros outside the signal, as torchaudio

    n_rows = x.shape[0]
    pieces = []
    if new * span <= _DENSE_KERNEL_LIMIT:
        # Few phases: place the taps in a dense [new, 1, span] filter and let conv1d (stride orig) do the work.
        dense = torch.zeros(new, span, dtype=work_dtype, device=x.device)
        dense.scatter_(1, local, taps)
        dense = dense[:, None, :]
        step = max(1, max_chunk_elements // (new * n_rows))
        for q0 in range(0, periods, step):
            q1 = min(periods, q0 + step)
            seg = xp[:, q0 * orig : (q1 - 1) * orig + span]
            y = F.conv1d(seg[:, None, :], dense, stride=orig)  # [N, new, Q]
            pieces.append(y.transpose(1, 2).reshape(n_rows, -1))
    else:
        # Many phases (e.g. 44101 → 44100): a dense filter would be huge; gather each output's own taps instead.
        windows = xp.unfold(-1, span, orig)  # [N, >= periods, span], a view
        step = max(1, max_chunk_elements // (new * (2 * width + 1) * n_rows))
        for q0 in range(0, periods, step):
            q1 = min(periods, q0 + step)
            gathered = windows[:, q0:q1][:, :, local]  # [N, Q, new, taps]
            pieces.append((gathered * taps).sum(-1).reshape(n_rows, -1))
    out = torch.cat(pieces, dim=-1)[:, :out_len]
    return out.to(out_dtype).reshape(*lead, out_len)
