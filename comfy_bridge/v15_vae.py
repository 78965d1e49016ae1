"""ACE-Step 1.5's audio VAE (`ace_step.models.v15.vae.OobleckVAE`, 48 kHz stereo <-> [batch, 64, frames] at 25
frames per second) behind the interface ComfyUI's VAE gives audio nodes, inside ComfyUI's model management.

- `encode(waveform [B, T, C] at 48 kHz)` / `decode(latent) -> [B, T, 2]`: ComfyUI's VAE interface, channels last,
  with ComfyUI's conventions: the input is cropped, centred, to whole latent frames (comfy/sd.py
  `vae_encode_crop_pixels`) and the latent is a posterior sample drawn from torch's global generator, as ComfyUI's
  and the original pipeline's encoders do. `audio_sample_rate` tells newer ComfyUI's VAE Encode/Decode Audio to
  resample to and label 48 kHz (ComfyUI 0.3.75's nodes assume 44.1 kHz: use the pack's nodes there).
- `encode_waveform(waveform [B, C, T], rate)` / `decode_waveform(latent) -> [B, 2, T]`: the pack's nodes: any rate
  (resampled to 48 kHz), any channel count (folded to stereo), float or integer samples, any length (padded with
  silence to whole frames, never cropped).
Work runs in windows of one VAE tile each (a window's core plus the networks' exact receptive field on both sides, so
the result equals a whole-song pass up to float rounding and the noise draws), with an interrupt check and a progress update
after each; memory is checked before anything is allocated, and ComfyUI loads the VAE with that working memory
reserved.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import comfy.model_management as mm
import comfy.model_patcher
import comfy.utils
import torch
import torch.nn.functional as F

from ..ace_step.audio.dsp import resample
from ..ace_step.models.time_tiles import map_time_tiles
from ..ace_step.models.v15.vae import OobleckVAE, crop_to_frames
from .audio_input import float_waveform, to_stereo
from .memory import require_memory
from .v15_family import CHANNELS, check_latent, seconds_for_frames


class AceStep15Vae:
    """VAE for ACE-Step 1.5 (module docstring)."""

    latent_channels = CHANNELS
    latent_dim = 1

    def __init__(self, vae: OobleckVAE, patcher: Optional[comfy.model_patcher.ModelPatcher] = None):
        self.vae = vae
        self.patcher = patcher or comfy.model_patcher.ModelPatcher(
            vae, load_device=mm.vae_device(), offload_device=mm.vae_offload_device())
        self.audio_sample_rate = vae.config.sample_rate
        self.samples_per_frame = vae.config.hop_length

    def throw_exception_if_invalid(self):
        return None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    # ---------------------------------------------------------------------------------------------- plumbing
    def _require_memory(self, work_bytes: int, result_bytes: int, what: str, fix: str):
        """The working memory plus the result on the VAE's device, and the result again where it is handed on when
        that is another device."""
        require_memory(work_bytes + result_bytes, self.patcher.load_device, what, fix)
        if torch.device(mm.intermediate_device()) != torch.device(self.patcher.load_device):
            require_memory(result_bytes, mm.intermediate_device(), what, fix)

    def _load(self, work_bytes: int):
        mm.load_models_gpu([self.patcher], memory_required=work_bytes, force_full_load=True)
        mm.throw_exception_if_processing_interrupted()

    def _in_windows(self, fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, core: int, context: int,
                    scale: int = 1, stride: int = 1) -> torch.Tensor:
        """`map_time_tiles(fn, x, ...)` with an interrupt check and a progress update after each window."""
        progress = comfy.utils.ProgressBar(max(1, math.ceil(x.shape[-1] / core)))

        def window(part: torch.Tensor) -> torch.Tensor:
            out = fn(part)
            mm.throw_exception_if_processing_interrupted()
            progress.update(1)
            return out

        return map_time_tiles(window, x, core=core, context=context, scale=scale, stride=stride)

    def _window_frames(self, frames: int, context_frames: int) -> int:
        """Latent frames per window: the VAE's tile less its context on both sides, so that each window (context
        included) is one tile of the network; the whole song when the VAE runs untiled."""
        if self.vae.tile_frames is None:
            return frames
        return max(1, self.vae.tile_frames - 2 * context_frames)

    # ---------------------------------------------------------------------------------------------- encode
    def _encode_frames(self, waveform: torch.Tensor, sample: bool) -> torch.Tensor:
        """[B, 2, T] float at 48 kHz, T a multiple of the frame -> [B, 64, T / 1920] on the intermediate device."""
        batch, frames = waveform.shape[0], waveform.shape[-1] // self.samples_per_frame
        work = self.vae.working_bytes(batch, frames, encode=True, dtype=self.dtype)
        self._load(work)
        device = self.patcher.load_device
        x = waveform.to(device=device, dtype=self.dtype)
        context_frames = math.ceil(self.vae.encoder_context / self.samples_per_frame)
        core = self._window_frames(frames, context_frames) * self.samples_per_frame
        latent = self._in_windows(lambda part: self.vae.encode(part, sample=sample), x, core=core,
                                  context=self.vae.encoder_context, stride=self.samples_per_frame)
        return latent.float().to(mm.intermediate_device())

    def _check_encode_memory(self, batch: int, channels: int, samples: int, frames: int):
        work = self.vae.working_bytes(batch, frames, encode=True, dtype=self.dtype)
        # float32 copies of the input, then of the stereo signal at 48 kHz (two alive at once).
        copies = 4 * batch * (channels * samples + 2 * 2 * frames * self.samples_per_frame)
        self._require_memory(work, copies, f"encoding {batch} × {seconds_for_frames(frames):,.0f} s of audio",
                             "encode fewer or shorter songs at once (Trim Audio Duration cuts a song)")

    def encode_waveform(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """[B, C, T] at any rate, float or integer PCM, any channel count -> latent [B, 64, ceil(T·48000/rate / 1920)]
        (the end padded with silence)."""
        batch, channels, samples = waveform.shape
        rate = self.audio_sample_rate
        frames = max(1, math.ceil(math.ceil(samples * rate / sample_rate) / self.samples_per_frame))
        self._check_encode_memory(batch, channels, samples, frames)
        audio = resample(to_stereo(float_waveform(waveform)), sample_rate, rate)
        audio = F.pad(audio, (0, frames * self.samples_per_frame - audio.shape[-1]))
        return self._encode_frames(audio, sample=True)

    def encode(self, samples_btc: torch.Tensor) -> torch.Tensor:
        """ComfyUI's VAE interface: [B, T, C] at 48 kHz -> [B, 64, T // 1920], cropped like ComfyUI's VAE."""
        waveform = samples_btc.movedim(-1, 1)
        batch, channels, samples = waveform.shape
        frames = samples // self.samples_per_frame
        if frames < 1:
            raise ValueError(f"{samples} samples are shorter than one ACE-Step 1.5 latent frame "
                             f"({self.samples_per_frame} samples at {self.audio_sample_rate} Hz): use longer audio")
        self._check_encode_memory(batch, channels, samples, frames)
        audio = crop_to_frames(to_stereo(float_waveform(waveform)), self.samples_per_frame)
        return self._encode_frames(audio, sample=True)

    def silence_mean(self, frames: int) -> torch.Tensor:
        """The posterior mean [1, 64, frames] of `frames` frames of digital silence (for the silence latent)."""
        self._check_encode_memory(1, 2, frames * self.samples_per_frame, frames)
        return self._encode_frames(torch.zeros(1, 2, frames * self.samples_per_frame), sample=False)

    # ---------------------------------------------------------------------------------------------- decode
    def decode_waveform(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, 64, W] -> waveform [B, 2, 1920·W] at 48 kHz on the intermediate device."""
        check_latent(latent, "the latent to decode")
        batch, frames = latent.shape[0], latent.shape[-1]
        work = self.vae.working_bytes(batch, frames, dtype=self.dtype)
        result = 4 * batch * self.vae.config.audio_channels * frames * self.samples_per_frame
        self._require_memory(work, result, f"decoding {batch} × {seconds_for_frames(frames):,.0f} s of audio",
                             "decode fewer songs at once (a smaller batch) or shorter ones")
        if not torch.isfinite(latent).all():
            raise ValueError("the latent contains NaN or infinite values, so its audio would be noise or silence: "
                             "sampling diverged (a NaN or very large cfg or shift?) or the checkpoint is damaged")
        self._load(work)
        x = latent.to(device=self.patcher.load_device, dtype=self.dtype)
        audio = self._in_windows(self.vae.decode, x, core=self._window_frames(frames, self.vae.decoder_context),
                                 context=self.vae.decoder_context, scale=self.samples_per_frame)
        return audio.float().to(mm.intermediate_device())

    def decode(self, latent: torch.Tensor, vae_options=None) -> torch.Tensor:
        """ComfyUI's VAE interface: [B, 64, W] -> [B, 1920·W, 2]."""
        return self.decode_waveform(latent).movedim(1, -1)
