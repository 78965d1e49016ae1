"""Guidance arithmetic on model predictions (plain torch)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F


def reinhard_tonemap(latent: torch.Tensor, multiplier: float) -> torch.Tensor:
    """Reinhard tonemap of a latent's per-position vector norm over channels (the vocal-volume knob of ComfyUI's
    ACE-Step guide): norms are compressed as m -> top·m/(m + top) with top = (μ + 5σ)·multiplier of the batch
    item's norms, so the loudest parts of a guidance difference are tamed while the direction is kept."""
    norm = latent.norm(dim=1, keepdim=True) + 1e-10
    direction = latent / norm
    dims = tuple(range(1, latent.ndim))
    mean = norm.mean(dim=dims, keepdim=True)
    std = norm.std(dim=dims, keepdim=True)
    top = (5 * std + mean) * multiplier
    scaled = norm / top
    return direction * (top * scaled / (scaled + 1))


# ---------------------------------------------------------------- the original ACE-Step v1 pipeline's guidance
# The original's guidance (ace-step/ACE-Step `acestep/apg_guidance.py`, called from `acestep/pipeline_ace_step.py`). Every function works in the dtype of its inputs, as the
# original does in bf16; only APG's projection is done in float64.

CFG_TYPES = ("apg", "cfg", "cfg_star")


def cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: u + s·(c − u)."""
    return uncond + scale * (cond - uncond)


class MomentumBuffer:
    """APG's running average of the guidance difference, r ← d + momentum·r (r starts at 0). One per sampling run;
    it only moves when it is used, i.e. on the steps that run CFG."""

    def __init__(self, momentum: float = -0.75):
        self.momentum = momentum
        self.running_average: torch.Tensor | None = None

    def update(self, diff: torch.Tensor) -> torch.Tensor:
        if self.running_average is None:
            self.running_average = diff
        else:
            self.running_average = diff + self.momentum * self.running_average
        return self.running_average


def _project(v: torch.Tensor, onto: torch.Tensor, dims) -> tuple[torch.Tensor, torch.Tensor]:
    """(parallel, orthogonal) parts of v relative to onto's direction over `dims`, computed in float64 (on the CPU
    for MPS, which has no float64) and returned in v's dtype and device."""
    dtype, device = v.dtype, v.device
    if device.type == "mps":
        v, onto = v.cpu(), onto.cpu()
    v, onto = v.double(), onto.double()
    unit = F.normalize(onto, dim=dims)
    parallel = (v * unit).sum(dim=dims, keepdim=True) * unit
    return parallel.to(device=device, dtype=dtype), (v - parallel).to(device=device, dtype=dtype)


def apg(cond: torch.Tensor, uncond: torch.Tensor, scale: float, momentum_buffer: MomentumBuffer | None = None,
        eta: float = 0.0, norm_threshold: float = 2.5, dims=(-1, -2)) -> torch.Tensor:
    """Adaptive Projected Guidance (Sadat et al. 2024) as ACE-Step runs it on [B, C, H, W] velocities:
    d = c − u, replaced by the momentum average if a buffer is given; d is scaled down to an L2 norm of at most
    `norm_threshold` per (b, c) over (H, W); only the part of d orthogonal to c (per (b, c)) is added:
    c + (s − 1)·(d⊥ + eta·d∥). ACE-Step uses eta = 0."""
    diff = cond - uncond
    if momentum_buffer is not None:
        diff = momentum_buffer.update(diff)
    if norm_threshold > 0:
        diff = diff * (norm_threshold / diff.norm(p=2, dim=dims, keepdim=True)).clamp(max=1.0)
    parallel, orthogonal = _project(diff, cond, dims)
    return cond + (scale - 1) * (orthogonal + eta * parallel)


def cfg_star(cond: torch.Tensor, uncond: torch.Tensor, scale: float, step_index: int, zero_steps: int = 1,
             use_zero_init: bool = True) -> torch.Tensor:
    """CFG-Zero* (Fan et al. 2025): per batch item α = ⟨c, u⟩ / (‖u‖² + 1e-8) over all elements, then
    α·u + s·(c − α·u). With use_zero_init the velocity is 0 for loop indices <= zero_steps (the original checks
    the loop index, so inside a guidance interval that starts later this never fires)."""
    if use_zero_init and step_index <= zero_steps:
        return torch.zeros_like(cond)
    b = cond.shape[0]
    c, u = cond.reshape(b, -1), uncond.reshape(b, -1)
    alpha = (c * u).sum(dim=1, keepdim=True) / ((u * u).sum(dim=1, keepdim=True) + 1e-8)
    alpha = alpha.reshape(b, *([1] * (cond.ndim - 1)))
    return uncond * alpha + scale * (cond - uncond * alpha)


def double_guidance_active(scale_text: float, scale_lyric: float) -> bool:
    """Text/lyric double guidance runs only if BOTH scales are > 1 (e.g. 0.7 / 1.5 does not trigger it)."""
    return scale_text > 1.0 and scale_lyric > 1.0


def double_condition(cond: torch.Tensor, uncond: torch.Tensor, text_only: torch.Tensor, scale_text: float,
                     scale_lyric: float) -> torch.Tensor:
    """(1 − s_t)·u + (s_t − s_l)·c_text + s_l·c: guidance towards the text (c_text: text without lyrics) and,
    on top of it, towards the lyrics."""
    return (1 - scale_text) * uncond + (scale_text - scale_lyric) * text_only + scale_lyric * cond


@dataclass(frozen=True)
class GuidanceSchedule:
    """Which loop indices run CFG, and at which scale.

    CFG runs for start <= i < end with start = int(N·(1 − interval)/2) and end = int(N·(interval/2 + 0.5)); a
    scale of 0 or 1 switches it off everywhere. Outside, only the conditional pass runs. With decay > 0 the scale
    falls linearly over the interval: scale − (scale − min_scale)·progress·decay, progress = (i − start)/(end −
    start − 1). N is the schedule's num_steps (for Heun N while the loop makes 2N − 1 calls, as in the original).
    """

    num_steps: int
    scale: float = 15.0
    interval: float = 0.5
    decay: float = 0.0
    min_scale: float = 3.0

    @property
    def start(self) -> int:
        return int(self.num_steps * ((1 - self.interval) / 2))

    @property
    def end(self) -> int:
        return int(self.num_steps * (self.interval / 2 + 0.5))

    def at(self, i: int) -> tuple[bool, float]:
        """(use_cfg, scale) for loop index i; scale is 1.0 (conditional only) where CFG is off."""
        if self.scale in (0.0, 1.0) or not self.start <= i < self.end:
            return False, 1.0
        if self.decay <= 0:
            return True, self.scale
        # The original divides by zero when the interval holds one step; that step simply gets the full scale.
        span = self.end - self.start - 1
        progress = (i - self.start) / span if span > 0 else 0.0
        return True, self.scale - (self.scale - self.min_scale) * progress * self.decay


class Guider:
    """The original's guided velocity for one sampling run (holds APG's momentum buffer).

    `guider(i, cond, uncond, text_only)` takes zero-argument callables for the conditional, unconditional and
    text-only (double guidance) model passes and calls only those loop index i needs: `cond` alone outside the
    guidance interval; inside, double guidance (if both text and lyric scales are > 1) replaces cfg_type and
    ignores the scale and decay, else cfg_type combines cond and uncond at the scheduled scale.
    """

    def __init__(self, schedule: GuidanceSchedule, cfg_type: str = "apg", scale_text: float = 0.0,
                 scale_lyric: float = 0.0, zero_steps: int = 1, use_zero_init: bool = True):
        if cfg_type not in CFG_TYPES:
            raise ValueError(f"unknown cfg_type {cfg_type!r}; expected one of {CFG_TYPES}")
        self.schedule = schedule
        self.cfg_type = cfg_type
        self.scale_text, self.scale_lyric = scale_text, scale_lyric
        self.double_condition = double_guidance_active(scale_text, scale_lyric)
        self.zero_steps, self.use_zero_init = zero_steps, use_zero_init
        self.momentum = MomentumBuffer()

    def __call__(self, i: int, cond: Callable[[], torch.Tensor], uncond: Callable[[], torch.Tensor],
                 text_only: Callable[[], torch.Tensor] | None = None) -> torch.Tensor:
        use_cfg, scale = self.schedule.at(i)
        c = cond()
        if not use_cfg:
            return c
        if self.double_condition:
            if text_only is None:
                raise ValueError("double guidance needs the text-only pass")
            t = text_only()
            return double_condition(c, uncond(), t, self.scale_text, self.scale_lyric)
        u = uncond()
        if self.cfg_type == "apg":
            return apg(c, u, scale, self.momentum)
        if self.cfg_type == "cfg":
            return cfg(c, u, scale)
        return cfg_star(c, u, scale, i, self.zero_steps, self.use_zero_init)
