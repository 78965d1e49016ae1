"""The original ACE-Step v1 editing algorithms (ace-step/ACE-Step `acestep/pipeline_ace_step.py`: retake, repaint, extend and edit): retake noise mixing, repaint and extend
(masked Euler sampling that re-noises the kept region from the source every step) and FlowEdit.

Pure functions over latents [B, 8, 16, W] and velocity callables (see `flow_steps.Velocity`); the callers draw
the noise. Repaint and edit use σ_i = t_i/1000 recomputed from the float32 timesteps, as the original loops do
(it can differ from the scheduler's σ_i by one float32 ulp).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .flow_steps import Velocity, as_sigma, euler_step, model_timestep, pingpong_step
from ..models.v1.latent import TRAINED_SECONDS, frames_for_seconds, seconds_for_frames
from .schedules import NUM_TRAIN_TIMESTEPS

MAX_FRAMES = frames_for_seconds(TRAINED_SECONDS)  # 2583: the original's 240 s limit for extend


def retake_noise(noise: torch.Tensor, retake: torch.Tensor, variance: float,
                 angle_dtype: torch.dtype | None = None) -> torch.Tensor:
    """cos θ·ε_seed + sin θ·ε_retake with θ = variance·π/2: unit variance for any θ ("trigflow" mixing).

    θ is a 0-dim tensor of `angle_dtype` (default: the noise dtype) as in the original, which takes the pipeline
    dtype: in bf16, θ(0.5) = 0.78515625 and cos θ = sin θ = 0.70703125. Variance 0 returns the seed noise."""
    theta = torch.tensor(variance * math.pi / 2, device=noise.device).to(angle_dtype or noise.dtype)
    return torch.cos(theta) * noise + torch.sin(theta) * retake


def repaint_mask(frames: int, start_frame: int, end_frame: int, device=None) -> torch.Tensor:
    """Bool [W] mask (broadcasts over [B, 8, 16, W]): True on the frames to regenerate, [start_frame, end_frame)."""
    mask = torch.zeros(frames, dtype=torch.bool, device=device)
    mask[start_frame:end_frame] = True
    return mask


def repaint_noise(noise: torch.Tensor, retake: torch.Tensor, mask: torch.Tensor, variance: float,
                  angle_dtype: torch.dtype | None = None) -> torch.Tensor:
    """z0: the retake mix inside the mask, the seed noise outside."""
    return torch.where(mask, retake_noise(noise, retake, variance, angle_dtype), noise)


def repaint_start_step(num_steps: int, variance: float) -> int:
    """n_min = int(N·(1 − variance)): repaint skips the first n_min steps, so variance also sets how noisy the
    start is. N is the schedule's num_steps (the original uses max(oss_steps) with oss, which can skip every
    step; pass the schedule's own N)."""
    return int(num_steps * (1 - variance))


def _loop_levels(sigmas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model timesteps t_i and the levels σ_i = t_i/1000 (float32, final 0) the original repaint and edit
    loops step with."""
    timesteps = model_timestep(sigmas[:-1])
    return timesteps, torch.cat([timesteps / NUM_TRAIN_TIMESTEPS, sigmas[-1:]])


def noised(x0: torch.Tensor, z0: torch.Tensor, sigma) -> torch.Tensor:
    """(1 − σ)·x0 + σ·z0 in x0's dtype (σ as a 0-dim float32 tensor): the source at noise level σ."""
    sigma = as_sigma(sigma, x0)
    return (1 - sigma) * x0 + sigma * z0


def repaint_step(x: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, z0: torch.Tensor, mask: torch.Tensor,
                 sigma, sigma_next) -> torch.Tensor:
    """Plain Euler step, then everything outside the mask is replaced by the source noised to σ_next (at the last
    step σ_next = 0, i.e. the source itself)."""
    x = euler_step(x, v, sigma, sigma_next)
    return torch.where(mask, x, noised(x0, z0, sigma_next))


def sample_repaint(velocity: Velocity, x0: torch.Tensor, z0: torch.Tensor, mask: torch.Tensor,
                   sigmas: torch.Tensor, start_step: int) -> torch.Tensor:
    """The original repaint/extend loop: steps before `start_step` are skipped (the loop index still counts
    them, for the guidance interval); at start_step x = (1 − σ)·x0 + σ·z0; then `repaint_step` each step.
    It assumes an Euler schedule (Heun's repeated sigmas give zero-length updates, as in the original)."""
    timesteps, levels = _loop_levels(sigmas)
    if start_step >= len(timesteps):
        return x0  # nothing to regenerate (the original returns the seed noise here)
    x = x0 + noised(x0, z0, levels[start_step]) - x0  # written as the original: it rounds the same in bf16
    for i in range(start_step, len(timesteps)):
        v = velocity(x, timesteps[i], i)
        x = repaint_step(x, v, x0, z0, mask, levels[i], levels[i + 1])
    return x


@dataclass
class ExtendPlan:
    """Latents of an extend run: x0 (source, zero-padded), z0 (noise), mask (True on the new frames), and the
    source frames that did not fit into the MAX_FRAMES window, re-attached by `finish`."""

    x0: torch.Tensor
    z0: torch.Tensor
    mask: torch.Tensor
    head: torch.Tensor | None = None
    tail: torch.Tensor | None = None

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The sampled window with the source frames cut off before sampling put back on either side."""
        parts = [p for p in (self.head, x, self.tail) if p is not None]
        return torch.cat(parts, dim=-1)


def extend_plan(src: torch.Tensor, noise: torch.Tensor, retake: torch.Tensor, left_frames: int, right_frames: int,
                max_frames: int = MAX_FRAMES) -> ExtendPlan:
    """The original's extend set-up (ace-step/ACE-Step `acestep/pipeline_ace_step.py`, task "extend"), with its bugs fixed.

    The source [.., L0] is zero-padded by `left_frames` / `right_frames`; the new frames take retake noise
    (retake[..., :left] and retake[..., -right:]) and the source frames their seed noise (noise, length L0).
    Past `max_frames` (240 s) a one-sided extend drops the source frames farthest from the new part from the
    window and re-attaches them afterwards. Sample with `sample_repaint(start_step=repaint_start_step(N, 1.0))`.

    Fixed here: the original keeps the wrong frames when trimming (the tail is cut from the already-trimmed
    tensor; the head is concatenated on the batch dim), measures the right pad against the left-padded length
    (a two-sided extend loses right frames), and needs the retake noise to be no longer than the source (an
    extension cannot exceed L0 there); here `retake` may be drawn longer. A two-sided extend past max_frames is
    refused, since the window cannot drop frames from the middle.
    """
    length = src.shape[-1]
    if noise.shape[-1] != length:
        raise ValueError(f"seed noise has {noise.shape[-1]} frames, the source {length}")
    if left_frames < 0 or right_frames < 0:
        raise ValueError("extend frames must be >= 0")
    if left_frames + right_frames == 0:
        raise ValueError("nothing to extend: left_seconds and right_seconds are both under one latent frame "
                         "(0.093 s)")
    if max(left_frames, right_frames) > retake.shape[-1]:
        raise ValueError(f"retake noise has {retake.shape[-1]} frames, fewer than the extension")
    total = left_frames + length + right_frames
    overflow = max(0, total - max_frames)
    window = f"window_seconds ({seconds_for_frames(max_frames):.1f} s)"
    if overflow and left_frames and right_frames:
        raise ValueError(f"the result ({seconds_for_frames(total):.1f} s) is longer than {window} on both sides: "
                         "extend one side per Extend node (chain two), or raise window_seconds (0 = no window)")
    if overflow >= length:
        raise ValueError(f"the extension ({seconds_for_frames(max(left_frames, right_frames)):.1f} s) does not fit "
                         f"in {window} beside any of the song: raise window_seconds (0 = no window)")

    x0 = torch.nn.functional.pad(src, (left_frames, right_frames))
    head_trim = overflow if right_frames else 0  # extending right drops the source's start, left its end
    tail_trim = overflow - head_trim
    head = src[..., :head_trim] if head_trim else None
    tail = src[..., length - tail_trim:] if tail_trim else None
    x0 = x0[..., head_trim:total - tail_trim]

    parts = [retake[..., :left_frames]] if left_frames else []
    parts.append(noise[..., head_trim:length - tail_trim])
    if right_frames:
        parts.append(retake[..., -right_frames:])
    mask = torch.zeros(x0.shape[-1], dtype=torch.bool, device=src.device)
    mask[:left_frames] = True
    if right_frames:
        mask[-right_frames:] = True
    return ExtendPlan(x0, torch.cat(parts, dim=-1), mask, head, tail)


VelocityPair = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def flowedit_delta(velocity_pair: VelocityPair, z: torch.Tensor, x_src: torch.Tensor, sigma: torch.Tensor,
                   t: torch.Tensor, i: int, draw_noise: Callable[[], torch.Tensor], n_avg: int = 1) -> torch.Tensor:
    """V̄ = mean over n_avg noise draws of V_tar(z_tar) − V_src(z_src) at timestep t, with
    z_src = (1 − σ)·x_src + σ·ε and z_tar = z + z_src − x_src (the edit carries the same noise offset)."""
    delta = torch.zeros_like(x_src)
    for _ in range(n_avg):
        z_src = noised(x_src, draw_noise(), sigma)
        v_src, v_tar = velocity_pair(z_src, z + z_src - x_src, t, i)
        delta = delta + (1 / n_avg) * (v_tar - v_src)
    return delta


def sample_flowedit(velocity_pair: VelocityPair, velocity_target: Velocity, x_src: torch.Tensor,
                    sigmas: torch.Tensor, n_min: int, n_max: int, draw_noise: Callable[[], torch.Tensor],
                    n_avg: int = 1, scheduler: str = "euler",
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """The original FlowEdit loop (Kulikov et al. 2024) over an Euler schedule (the original always builds one).

    Steps i < n_min are skipped. For n_min <= i < n_max the edit z (starting at x_src) moves by the velocity
    difference: z ← z + (σ_{i+1} − σ_i)·V̄ (`flowedit_delta`; `velocity_pair(z_src, z_tar, t, i)` returns the
    guided source and target velocities: in the original the source uses APG with a momentum buffer, the target
    APG without one). From i = n_max on (if n_max < N), fresh noise starts a plain target sampling:
    x = z + (σ·ε + (1 − σ)·x_src) − x_src, then Euler (or ping-pong with `generator`) steps with
    `velocity_target` (the original: APG with a second momentum buffer). Returns z, or x if that phase ran.
    n_min/n_max are step indices (the original's int(N·edit_n_min), int(N·edit_n_max)).

    Fixed here: with the ping-pong scheduler the original computes a phase-1 update but never applies it (the edit
    does nothing until n_max); phase 1 is always the ODE update here, ping-pong only affects phase 2.
    """
    if scheduler not in ("euler", "pingpong"):
        raise ValueError(f"FlowEdit steps with euler or pingpong, not {scheduler!r}")
    timesteps, levels = _loop_levels(sigmas)
    z, x = x_src.clone(), None
    for i in range(n_min, len(timesteps)):
        sigma, sigma_next = levels[i], levels[i + 1]
        if i < n_max:
            delta = flowedit_delta(velocity_pair, z, x_src, sigma, timesteps[i], i, draw_noise, n_avg)
            z = euler_step(z, delta, sigma, sigma_next).to(x_src.dtype)
            continue
        if i == n_max:
            # The start level is the scheduler's own sigma here, not t/1000.
            x = z + noised(x_src, draw_noise(), sigmas[i]) - x_src
        v = velocity_target(x, timesteps[i], i)
        if scheduler == "pingpong":
            x = pingpong_step(x, v, sigma, sigma_next, generator)
        else:
            x = euler_step(x, v, sigma, sigma_next)
    return z if x is None else x
