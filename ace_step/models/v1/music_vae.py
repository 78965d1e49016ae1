"""The ACE-Step v1 "music VAE": stereo waveform at 44.1 kHz ↔ latent [B, 8, 16, W].

Sample-count conventions (full-size model):
- mel hop 512 samples, DCAE time compression 8 → one latent frame = 4096 samples = 8 mel frames (≈ 92.9 ms,
  10.77 latent frames per second). `latent.SAMPLES_PER_FRAME`/`MusicVAE.samples_per_frame` hold this number.
- encode: audio of T samples (any rate, resampled to 44.1 kHz first) is right-padded with zeros to
  W = ceil(T / 4096) latent frames. decode gives exactly 4096·W samples; trimming to a wanted length is the caller's.

Encode: log-mel of each channel → (mel + 11) / 14 · 2 − 1 (the mel range [−11, 3] mapped to [−1, 1]) → DCAE
encoder → latent = (z + 1.9091) · 0.1786. Decode inverts the affine maps around the DCAE decoder and runs the
vocoder on the two channels as a batch of 2. These constants are hard-coded in the original wrapper (not in any
config); the DCAE's own scaling_factor is unused.

`encode_chunked`/`decode_chunked` bound memory for long audio by working on windows of latent frames with context on
both sides and keeping only each window's core (decode also cross-fades the cores' seams in the waveform). Everything
but the DCAE's attention level is local (a finite receptive field, well inside the default context of 64 frames), so
the chunked result equals the full one except for the attention's global context, which makes it differ slightly.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
from torch import nn

from ...audio.dsp import resample
from ..operations import TorchOps
from . import dcae as dcae_module
from . import vocoder as vocoder_module
from .dcae import DCAE, DCAEConfig
from .latent import SAMPLE_RATE
from .vocoder import Vocoder, VocoderConfig

MEL_MIN, MEL_MAX = -11.0, 3.0
LATENT_SHIFT = -1.9091
LATENT_SCALE = 0.1786


@dataclass
class MusicVAEConfig:
    dcae: DCAEConfig = field(default_factory=DCAEConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)

    def __post_init__(self):
        if self.dcae.in_channels != 2:
            raise ValueError("the music VAE encodes stereo: the DCAE needs 2 input channels")
        if self.vocoder.mel.sample_rate != SAMPLE_RATE:
            raise ValueError(f"the vocoder must run at {SAMPLE_RATE} Hz")

    @classmethod
    def full_size(cls) -> "MusicVAEConfig":
        return cls(DCAEConfig.full_size(), VocoderConfig.full_size())

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> "MusicVAEConfig":
        """From the `dcae.*`/`vocoder.*` key → shape mapping (the file's `vae.` prefix stripped; any vocoder layout)."""
        return cls(
            DCAEConfig.from_shapes({k[5:]: v for k, v in shapes.items() if k.startswith("dcae.")}),
            VocoderConfig.from_shapes({k[8:]: v for k, v in shapes.items() if k.startswith("vocoder.")}),
        )


def unused_checkpoint_shapes(config: MusicVAEConfig) -> dict[str, tuple[int, ...]]:
    out = {f"dcae.{k}": v for k, v in dcae_module.unused_checkpoint_shapes(config.dcae).items()}
    out.update({f"vocoder.{k}": v for k, v in vocoder_module.unused_checkpoint_shapes(config.vocoder).items()})
    return out


def checkpoint_shapes(config: MusicVAEConfig, variant: str = "weight_norm") -> dict[str, tuple[int, ...]]:
    """Every `vae.*` tensor (prefix stripped) of a file in the real layout; see `vocoder.checkpoint_shapes`."""
    out = {f"dcae.{k}": tuple(v.shape) for k, v in DCAE(config.dcae, device="meta").state_dict().items()}
    out.update({f"dcae.{k}": v for k, v in dcae_module.unused_checkpoint_shapes(config.dcae).items()})
    out.update({f"vocoder.{k}": v for k, v in vocoder_module.checkpoint_shapes(config.vocoder, variant).items()})
    return out


@dataclass(frozen=True)
class _Window:
    core: tuple[int, int]  # latent frames this window's output is kept for
    span: tuple[int, int]  # latent frames it is computed on (core plus context)


def _plan_windows(total: int, chunk: int, overlap: int) -> list[_Window]:
    if chunk < 1 or overlap < 0:
        raise ValueError("chunk_frames must be >= 1 and overlap_frames >= 0")
    return [
        _Window((s, min(total, s + chunk)), (max(0, s - overlap), min(total, s + chunk + overlap)))
        for s in range(0, total, chunk)
    ]


class MusicVAE(nn.Module):
    """Weights in `dtype`; the networks compute in `compute_dtype` (None: the weights' dtype)."""

    compute_dtype: torch.dtype | None = None

    def __init__(self, config: MusicVAEConfig, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        self.config = config
        self.dcae = DCAE(config.dcae, dtype, device, operations)
        self.vocoder = Vocoder(config.vocoder, dtype, device, operations)
        self.hop_length = config.vocoder.hop_length
        self.mel_per_frame = config.dcae.downsample_factor
        self.samples_per_frame = self.hop_length * self.mel_per_frame

    # ---- helpers ---------------------------------------------------------------------------------------------------

    @property
    def weights_device(self) -> torch.device:
        # Not `device`: ComfyUI's ModelPatcher sets a `device` attribute on the models it loads.
        return self.dcae.decoder.conv_in.weight.device

    @property
    def activation_dtype(self) -> torch.dtype:
        return self.compute_dtype or self.dcae.decoder.conv_in.weight.dtype

    def latent_frames(self, num_samples_44k: int) -> int:
        return -(-num_samples_44k // self.samples_per_frame)

    @staticmethod
    def count_windows(total_frames: int, chunk_frames: int = 384, overlap_frames: int = 64) -> int:
        """How many windows `encode_chunked`/`decode_chunked` use for `total_frames` latent frames."""
        return len(_plan_windows(total_frames, chunk_frames, overlap_frames))

    def prepare_audio(self, audio: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """[B, 2, T] at sample_rate → float32 [B, 2, 4096·W] at 44.1 kHz (resampled, zero-padded on the right)."""
        if audio.ndim != 3 or audio.shape[1] != self.config.dcae.in_channels:
            raise ValueError(f"expected audio [B, 2, T], got {tuple(audio.shape)} (convert mono to stereo first)")
        audio = audio.to(self.weights_device, torch.float32)
        if sample_rate != SAMPLE_RATE:
            audio = resample(audio, sample_rate, SAMPLE_RATE)
        pad = -audio.shape[-1] % self.samples_per_frame
        return torch.nn.functional.pad(audio, (0, pad)) if pad else audio

    def _normalised_mel(self, audio44: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        mel = self.vocoder.mel_transform(audio44, start, stop)  # [B, 2, 128, frames] float32
        return ((mel - MEL_MIN) / (MEL_MAX - MEL_MIN) - 0.5) / 0.5

    def _encode_mel(self, mel: torch.Tensor) -> torch.Tensor:
        dtype = self.activation_dtype
        z = torch.cat([self.dcae.encoder(m[None].to(dtype)) for m in mel])  # one item at a time, as the original
        return (z.float() - LATENT_SHIFT) * LATENT_SCALE

    def _decode_latent(self, latent: torch.Tensor) -> torch.Tensor:
        dtype = self.activation_dtype
        z = latent.to(self.weights_device, torch.float32) / LATENT_SCALE + LATENT_SHIFT
        waves = []
        for item in z:
            mel = self.dcae.decoder(item[None].to(dtype))[0].float()  # [2, n_mels, 8W]
            mel = (mel * 0.5 + 0.5) * (MEL_MAX - MEL_MIN) + MEL_MIN
            waves.append(self.vocoder(mel.to(dtype))[:, 0].float())  # the 2 channels as a batch → [2, 4096W]
        return torch.stack(waves)

    # ---- public API ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, audio: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
        """audio [B, 2, T] float at sample_rate → latent float32 [B, 8, 16, ceil(T' / 4096)], T' = T at 44.1 kHz."""
        return self._encode_mel(self._normalised_mel(self.prepare_audio(audio, sample_rate)))

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, 8, 16, W] → audio float32 [B, 2, 4096·W] at 44.1 kHz."""
        return self._decode_latent(latent)

    @torch.no_grad()
    def encode_chunked(
        self,
        audio: torch.Tensor,
        sample_rate: int = SAMPLE_RATE,
        chunk_frames: int = 384,
        overlap_frames: int = 64,
        *,
        on_window: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """`encode` on windows of `chunk_frames` latent frames with `overlap_frames` of context on each side.

        The log-mel of each window is computed from the whole signal's samples (exact), and only the window's core
        latent frames are kept, so peak memory follows the window, not the song. `on_window(done, total)` is called
        after each window (progress, interruption).
        """
        audio44 = self.prepare_audio(audio, sample_rate)
        total = audio44.shape[-1] // self.samples_per_frame
        pieces = []
        windows = _plan_windows(total, chunk_frames, overlap_frames)
        for i, w in enumerate(windows):
            mel = self._normalised_mel(audio44, w.span[0] * self.mel_per_frame, w.span[1] * self.mel_per_frame)
            latent = self._encode_mel(mel)
            pieces.append(latent[..., w.core[0] - w.span[0] : w.core[1] - w.span[0]])
            if on_window is not None:
                on_window(i + 1, len(windows))
        return torch.cat(pieces, dim=-1)

    @torch.no_grad()
    def decode_chunked(
        self,
        latent: torch.Tensor,
        chunk_frames: int = 384,
        overlap_frames: int = 64,
        crossfade_samples: int = 2048,
        *,
        on_window: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """`decode` on windows of `chunk_frames` latent frames with `overlap_frames` of context on each side.

        Each window is decoded to a waveform; its core (widened by crossfade_samples/2 on each inner side) is kept and
        neighbouring cores are joined with a linear cross-fade of `crossfade_samples` centred on their seam. The two
        fades sum to 1, so where neighbouring windows agree the join is exact. `on_window(done, total)` is called
        after each window.
        """
        spf = self.samples_per_frame
        half = crossfade_samples // 2
        if crossfade_samples % 2 or crossfade_samples < 0:
            raise ValueError("crossfade_samples must be even and >= 0")
        # The fade must lie inside both windows' context, inside every core, and be at most one latent frame wide on
        # each side of the seam (the last core can be a single frame).
        if half > min(overlap_frames, 1) * spf or crossfade_samples > chunk_frames * spf:
            raise ValueError(f"crossfade_samples must be at most 2·{spf}, chunk_frames·{spf} and 2·overlap·{spf}")
        b, _, _, total = latent.shape
        out = torch.zeros(b, 2, total * spf, dtype=torch.float32, device=self.weights_device)
        if half:
            rise = (torch.arange(2 * half, dtype=torch.float32, device=out.device) + 0.5) / (2 * half)
        windows = _plan_windows(total, chunk_frames, overlap_frames)
        for i, w in enumerate(windows):
            wave = self._decode_latent(latent[..., w.span[0] : w.span[1]])  # [B, 2, span·4096]
            first, last = i == 0, i == len(windows) - 1
            a = w.core[0] * spf - (0 if first else half)
            e = w.core[1] * spf + (0 if last else half)
            piece = wave[..., a - w.span[0] * spf : e - w.span[0] * spf]
            if half:
                piece = piece.clone()
                if not first:
                    piece[..., : 2 * half] *= rise
                if not last:
                    piece[..., -2 * half :] *= rise.flip(0)
            out[..., a:e] += piece
            if on_window is not None:
                on_window(i + 1, len(windows))
        return out
