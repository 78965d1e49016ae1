"""Timestep/sigma schedules of the original ACE-Step v1 pipeline (ace-step/ACE-Step `acestep/schedulers/*` and `acestep/pipeline_ace_step.py`).

The original builds every scheduler with 1000 training timesteps and shift 3, and the shift S(s) = 3s/(1+2s) ends
up applied more than once:
1. the scheduler's constructor makes 1000 training sigmas S(linspace(1, 1000·sigma_max, 1000)/1000) (float32),
   whose ends are sigma_max' = S(sigma_max) (1.0 by default) and sigma_min' = S(0.001) = 0.0029940;
2. `set_timesteps(N)` takes linspace(1000·sigma_max', 1000·sigma_min', N)/1000 (float64) and applies S again;
3. `oss_steps` feeds picked timesteps back through `set_timesteps(sigmas=...)`, which applies S a third time.
The model gets t = 1000·σ (float32); a final σ = 0 is appended. Everything here reproduces the original's
float32/float64/bf16 steps bit for bit (tests/test_sampling_core.py checks golden_schedules.json).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

SHIFT = 3.0
NUM_TRAIN_TIMESTEPS = 1000
SCHEDULERS = ("euler", "heun", "pingpong")


def shift_sigmas(sigmas, shift: float = SHIFT):
    """S(s) = shift·s / (1 + (shift − 1)·s), in the dtype of `sigmas` (numpy array or tensor)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def training_sigma_range(sigma_max: float = 1.0, shift: float = SHIFT) -> tuple[float, float]:
    """(sigma_max', sigma_min') of a scheduler built with `sigma_max`: the ends of its 1000 shifted training
    sigmas (first shift), computed in float32 as the scheduler's constructor does."""
    t = np.linspace(1, sigma_max * NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS, dtype=np.float32)[::-1].copy()
    sigmas = shift_sigmas(torch.from_numpy(t) / NUM_TRAIN_TIMESTEPS, shift)
    return sigmas[0].item(), sigmas[-1].item()


@dataclass(frozen=True)
class Schedule:
    """One sampling run's noise levels, as the original scheduler holds them.

    sigmas: float32 [M + 1], the last one 0; the model is called M times, at timesteps 1000·sigmas[:M].
    num_steps: N as the original's loop knows it (guidance interval, repaint start); Heun has M = 2N − 1.
    sigma_max / sigma_min: the scheduler's training-sigma ends (`training_sigma_range`). audio2audio noises the
        reference to sigma_max, which is NOT sigmas[0] (the original's mismatch, see `audio2audio_schedule`).
    """

    scheduler: str
    sigmas: torch.Tensor
    num_steps: int
    sigma_max: float
    sigma_min: float

    @property
    def timesteps(self) -> torch.Tensor:
        """The model timesteps t = 1000·σ (float32), one per model call."""
        return self.sigmas[:-1] * NUM_TRAIN_TIMESTEPS


def _check_scheduler(scheduler: str) -> None:
    if scheduler not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {SCHEDULERS}")


def _with_final_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, torch.zeros(1, dtype=sigmas.dtype)])


def _shifted_sigmas(num_steps: int, sigma_max: float, shift: float) -> tuple[torch.Tensor, float, float]:
    """The N float32 sigmas of `set_timesteps(N)` (second shift) and the training range they span."""
    top, bottom = training_sigma_range(sigma_max, shift)
    t = np.linspace(top * NUM_TRAIN_TIMESTEPS, bottom * NUM_TRAIN_TIMESTEPS, num_steps)
    return torch.from_numpy(shift_sigmas(t / NUM_TRAIN_TIMESTEPS, shift)).float(), top, bottom


def heun_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """A plain table [σ0, σ1, …, σ_N] as the original Heun scheduler holds it: every sigma after the first and
    before the last repeated (predictor and corrector evaluate at the same level), [σ0, σ1, σ1, …, σ_{N−1},
    σ_{N−1}, σ_N]: 2N − 1 model calls."""
    return torch.cat([sigmas[:1], sigmas[1:-1].repeat_interleave(2), sigmas[-1:]])


def flow_schedule(num_steps: int, scheduler: str = "euler", sigma_max: float = 1.0, shift: float = SHIFT) -> Schedule:
    """The schedule of `scheduler.set_timesteps(num_steps)` for euler, heun or pingpong (`heun_sigmas` for
    Heun), num_steps staying N as in the original. `shift` is the scheduler's (the original always builds them
    with 3; a ComfyUI ModelSamplingSD3 shift enters here)."""
    _check_scheduler(scheduler)
    sigmas, top, bottom = _shifted_sigmas(num_steps, sigma_max, shift)
    sigmas = _with_final_zero(sigmas)
    if scheduler == "heun":
        sigmas = heun_sigmas(sigmas)
    return Schedule(scheduler, sigmas, num_steps, top, bottom)


def parse_oss_steps(text: str) -> list[int]:
    """"16, 29, 52" -> [16, 29, 52]; "" -> []. Steps must be strictly increasing and >= 1.

    The original takes any integers: 0 or negative values index the schedule from its end and an unsorted
    list gives a non-monotone schedule; both are rejected here instead."""
    if not text.strip():
        return []
    try:
        steps = [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"oss_steps must be whole numbers separated by commas, e.g. \"16, 29, 52\"; got {text!r}") \
            from None
    if steps[0] < 1 or any(b <= a for a, b in zip(steps, steps[1:])):
        raise ValueError(f"oss_steps must be strictly increasing integers >= 1, got {steps}")
    return steps


def oss_schedule(oss_steps: Sequence[int], scheduler: str = "euler", dtype: torch.dtype = torch.bfloat16,
                 shift: float = SHIFT) -> Schedule:
    """The original's "optimal steps" schedule: N = len(oss_steps) model calls.

    It builds the Euler schedule with max(oss_steps) steps, picks t'[k] = timesteps[oss_steps[k] − 1] into a tensor
    of the pipeline dtype (bf16 by default: the picked timesteps are rounded), divides by 1000 in that dtype and
    hands the result to `set_timesteps(sigmas=...)`, which shifts a third time (in float32). Heun has no
    `sigmas` argument in the original (oss + heun raises there), so it is refused here too.
    """
    _check_scheduler(scheduler)
    if scheduler == "heun":
        raise ValueError("oss_steps work with the euler and pingpong schedulers only (as in the original)")
    steps = list(oss_steps)
    if not steps:
        raise ValueError("oss_steps is empty")
    base, top, bottom = _shifted_sigmas(max(steps), 1.0, shift)
    picked = (base * NUM_TRAIN_TIMESTEPS)[[s - 1 for s in steps]].to(dtype)
    sigmas = (picked / NUM_TRAIN_TIMESTEPS).float().numpy()
    sigmas = torch.from_numpy(shift_sigmas(sigmas, shift)).float()
    return Schedule(scheduler, _with_final_zero(sigmas), len(steps), top, bottom)


def audio2audio_schedule(num_steps: int, ref_audio_strength: float, scheduler: str = "euler") -> Schedule:
    """The original's audio2audio schedule (ace-step/ACE-Step `acestep/pipeline_ace_step.py` at its newest commit).

    σ_m = 1 − ref_audio_strength; the scheduler is rebuilt with sigma_max = σ_m and run for int(σ_m·num_steps)
    steps. The reference is noised to schedule.sigma_max = S(σ_m), but the first model timestep is
    1000·S(S(σ_m)) (strength 0.5: data at σ 0.75, model told σ 0.9). That mismatch is reproduced because it is
    what the original sounds like; a caller wanting a consistent start noises to schedule.sigmas[0] instead.
    """
    sigma_m = 1 - ref_audio_strength
    return flow_schedule(int(sigma_m * num_steps), scheduler, sigma_max=sigma_m)


def audio2audio_start_step(sigmas: torch.Tensor, ref_audio_strength: float) -> int:
    """The original's audio2audio start before commit 39043aa (ace-step/ACE-Step `acestep/pipeline_ace_step.py` history): the plain
    schedule `sigmas` (final 0) runs from the first step whose σ_i <= 1 − ref_audio_strength, the steps above are
    skipped, and the reference is noised to that same σ_i, so the model is told the noise level the data has.
    Strength 0 starts at step 0 (σ 1: pure noise, text2music); strength 1 returns N (no step: the reference)."""
    steps = sigmas[:-1]
    below = (steps <= 1 - ref_audio_strength).nonzero()
    return int(below[0]) if len(below) else len(steps)
