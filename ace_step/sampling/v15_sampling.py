"""ACE-Step 1.5 sampling as the original's `generate_audio` runs it: schedules, seeded noise, the cover switch, the
repaint merge (source re-noised into the kept part for the first steps, a boundary blend at the end) and the
cover-noise start.

Sources (ace-step/ACE-Step-1.5): `acestep/models/turbo/modeling_acestep_v15_turbo.py` @ ef26abd1 and
`acestep/models/base/modeling_acestep_v15_base.py` @ 14bd1db1 (`generate_audio`, `prepare_noise`, `renoise`,
`_repaint_step_injection`, `_repaint_boundary_blend`), `acestep/core/generation/handler/service_generate_execute.py`
@ 14bd1db1 (the merge's defaults: injection over the first half of the steps, 10 frames of crossfade).

Flow convention: x_t = t·noise + (1 − t)·x0, the DiT predicts v = noise − x0; an Euler step is x − v·(t − t_next).
Schedules: base / sft: t = linspace(1, 0, N + 1), then shift·t / (1 + (shift − 1)·t); turbo: eight fixed levels per
shift 1, 2 or 3 (other shifts round to the nearest), or custom levels mapped to the nearest of its 20 trained ones.

What ComfyUI's samplers can drive and what needs `sample_task`:
- text2music, cover, extract, lego on the whole song, complete: any flow sampler over `sampling_sigmas` (Euler is the
  original's ODE). The cover switch is a condition change at a noise level: give the cover condition to the steps
  with sigma > `cover_switch_sigma` and the text2music one to the rest (ComfyUI's timestep ranges do this).
- repaint, extend, lego on a range: `sample_task`. The original overwrites the sampler's state between steps (the
  kept part re-noised from the song with the run's first noise, only for a fraction of the steps) and blends the
  result with the song at the end; a ComfyUI sampler exposes neither its state between steps nor its result to a
  model wrapper. (ComfyUI's own inpainting noise mask re-noises at every step and keeps no crossfade: close, not
  the original.)

Deliberate differences: the loop takes the guided velocity from the caller (CFG/APG and its interval belong to the
guidance code), so it is one loop for turbo and base; the step is x − v·(t − t_next) with t in the schedule's
tensor dtype (turbo's original takes the difference of Python floats, which can differ by one ulp in bf16); no
injection after the final step (turbo's rule; base differs only at injection ratio 1, where the blend gives the song
outside anyway). The original has no retake/variance for 1.5: variations are seeds, or `editing.retake_noise`
(ACE-Step v1's cos/sin noise mix) over `seed_noise`, or `cover_noise_start` (the later original's source-noise
start).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

BASE_SHIFT = 1.0  # generate_audio's default for base / sft (the handler passes the UI's shift)
TURBO_SHIFTS = (1.0, 2.0, 3.0)
TURBO_SCHEDULES = {
    1.0: (1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125),
    2.0: (1.0, 0.9333333333333333, 0.8571428571428571, 0.7692307692307693, 0.6666666666666666, 0.5454545454545454,
          0.4, 0.2222222222222222),
    3.0: (1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75, 0.6428571428571429, 0.5, 0.3),
}
TURBO_LEVELS = tuple(sorted({t for s in TURBO_SCHEDULES.values() for t in s}, reverse=True))  # the 20 trained
TURBO_MAX_STEPS = 20
REPAINT_INJECTION_RATIO = 0.5
REPAINT_CROSSFADE_FRAMES = 10

# velocity(x [B, C, T], t [B], step, cover) -> guided velocity [B, C, T]; `cover` False once the cover switch
# has happened (use the text2music phase's condition then).
TaskVelocity = Callable[[torch.Tensor, torch.Tensor, int, bool], torch.Tensor]


def base_sigmas(steps: int, shift: float = BASE_SHIFT, dtype: torch.dtype = torch.float32,
                device=None) -> torch.Tensor:
    """The base / sft schedule [steps + 1] in `dtype` (the model's), ending at 0."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    t = torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=dtype)
    return shift * t / (1 + (shift - 1) * t) if shift != 1.0 else t


def turbo_sigmas(shift: float = 3.0, timesteps: Optional[Sequence[float]] = None, dtype: torch.dtype = torch.float32,
                 device=None) -> torch.Tensor:
    """The turbo schedule with a final 0: custom `timesteps` (trailing zeros dropped, at most 20, each mapped to the
    nearest trained level), else the eight levels of the nearest of shifts 1, 2, 3."""
    levels = None
    if timesteps is not None:
        levels = [float(t) for t in timesteps]
        while levels and levels[-1] == 0:
            levels.pop()
        levels = [min(TURBO_LEVELS, key=lambda v: abs(v - t)) for t in levels[:TURBO_MAX_STEPS]] or None
    if levels is None:
        levels = list(TURBO_SCHEDULES[min(TURBO_SHIFTS, key=lambda s: abs(s - shift))])
    return torch.tensor(levels + [0.0], dtype=dtype, device=device)


def sampling_sigmas(variant: str, steps: int = 8, shift: Optional[float] = None,
                    timesteps: Optional[Sequence[float]] = None, dtype: torch.dtype = torch.float32,
                    device=None) -> torch.Tensor:
    """The schedule of a model variant ("turbo" fixed levels; "sft" / "base" linspace + shift): also what a ComfyUI
    sampler takes as SIGMAS (the 1.5 model's timestep is sigma). Turbo ignores `steps` (eight levels, as the
    original clamps turbo to 8); custom `timesteps` exist for turbo only (the original's base / sft
    `generate_audio` has no such input)."""
    if variant == "turbo":
        return turbo_sigmas(3.0 if shift is None else shift, timesteps, dtype, device)
    if variant not in ("sft", "base"):
        raise ValueError(f"unknown ACE-Step 1.5 model variant {variant!r}; choose turbo, sft or base")
    if timesteps is not None:
        raise ValueError(f"custom timesteps are a turbo option; the {variant} model takes steps and shift")
    return base_sigmas(steps, BASE_SHIFT if shift is None else shift, dtype, device)


def seed_noise(seeds: Sequence[int], channels: int, frames: int, device=None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The original's `prepare_noise` for a list of seeds: per row torch.randn(1, frames, channels) from a generator
    on `device` seeded with the row's seed (channels LAST, as the original draws it), returned channels first
    [B, C, T]. Same seed and device -> the original's noise."""
    rows = []
    for seed in seeds:
        generator = torch.Generator(device=device or "cpu").manual_seed(int(seed))
        rows.append(torch.randn(1, frames, channels, generator=generator, device=device, dtype=dtype))
    return torch.cat(rows).movedim(-1, 1)


def cover_switch_step(num_steps: int, audio_cover_strength: float) -> int:
    """The first step that uses the text2music condition: int(N · strength) (N = none when strength >= 1)."""
    if not 0.0 <= audio_cover_strength <= 1.0:
        raise ValueError(f"audio_cover_strength must be in [0, 1], got {audio_cover_strength}")
    return int(num_steps * audio_cover_strength)


def cover_switch_sigma(sigmas: torch.Tensor, audio_cover_strength: float) -> Optional[float]:
    """For ComfyUI's samplers: steps at sigma > this value use the cover condition, the others the text2music one;
    None when the switch never happens."""
    switch = cover_switch_step(len(sigmas) - 1, audio_cover_strength)
    return None if switch >= len(sigmas) - 1 else float(sigmas[switch])


def cover_noise_start(source: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor,
                      cover_noise_strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(start latent, remaining schedule): the source re-noised to the schedule level nearest 1 − strength (the first
    such level on ties), t·noise + (1 − t)·source, and the schedule from that level on. `source` is the song's
    latents, not its LM hints. Strength 0: (noise, sigmas)."""
    if not 0.0 <= cover_noise_strength <= 1.0:
        raise ValueError(f"cover_noise_strength must be in [0, 1], got {cover_noise_strength}")
    if cover_noise_strength == 0.0:
        return noise, sigmas
    levels = sigmas[:-1].tolist()
    nearest = min(levels, key=lambda t: abs(t - (1.0 - cover_noise_strength)))
    start = levels.index(nearest)
    return nearest * noise + (1 - nearest) * source, sigmas[start:]


@dataclass(frozen=True)
class RepaintMerge:
    """What a repaint keeps. region [B, T] bool (True = generated), clean [B, C, T] the (padded) song, noise the run's
    initial noise [B, C, T]. After each of the first round(injection_ratio · N) steps the kept frames are set to
    t_next·noise + (1 − t_next)·clean; at the end the result is blended with `clean` through a ramp of
    `crossfade_frames` frames on the kept side of each boundary. Frames farther than that from the range are the
    song bit for bit; crossfade_frames = 0 keeps every frame outside the range bit for bit."""

    region: torch.Tensor
    clean: torch.Tensor
    noise: torch.Tensor
    injection_ratio: float = REPAINT_INJECTION_RATIO
    crossfade_frames: int = REPAINT_CROSSFADE_FRAMES

    def __post_init__(self):
        b, c, t = self.clean.shape
        if self.region.shape != (b, t) or self.region.dtype != torch.bool:
            raise ValueError(f"region must be bool [{b}, {t}], got {self.region.dtype} {tuple(self.region.shape)}")
        if self.noise.shape != self.clean.shape:
            raise ValueError(f"noise {tuple(self.noise.shape)} and clean {tuple(self.clean.shape)} differ in shape")
        if not 0.0 <= self.injection_ratio <= 1.0 or self.crossfade_frames < 0:
            raise ValueError("injection_ratio must be in [0, 1] and crossfade_frames >= 0")

    def injection_steps(self, num_steps: int) -> int:
        return round(self.injection_ratio * num_steps)  # Python's round, as the original

    def inject(self, x: torch.Tensor, t_next) -> torch.Tensor:
        noised = t_next * self.noise + (1.0 - t_next) * self.clean
        return torch.where(self.region[:, None], x, noised.to(x.dtype))

    def weights(self) -> torch.Tensor:
        """The blend weight of the generated latents per frame [B, T] (float32): 1 in the range, a linear ramp over
        `crossfade_frames` outside each boundary, 0 elsewhere."""
        soft = self.region.float()
        cf, frames = self.crossfade_frames, self.region.shape[1]
        if cf == 0:
            return soft
        for row, mask in enumerate(self.region):
            if bool(mask.all()) or not bool(mask.any()):
                continue
            edges = torch.diff(mask.int(), prepend=mask.new_zeros(1, dtype=torch.int),
                               append=mask.new_zeros(1, dtype=torch.int))
            starts, ends = (edges == 1).nonzero().flatten().tolist(), (edges == -1).nonzero().flatten().tolist()
            for left, right in zip(starts, ends):
                fs, fe = max(left - cf, 0), min(right + cf, frames)
                if left > fs:
                    ramp = torch.linspace(0, 1, left - fs + 2, device=soft.device)[1:-1]
                    soft[row, fs:left] = torch.maximum(soft[row, fs:left], ramp)
                if fe > right:
                    ramp = torch.linspace(1, 0, fe - right + 2, device=soft.device)[1:-1]
                    soft[row, right:fe] = torch.maximum(soft[row, right:fe], ramp)
        return soft

    def blend(self, x: torch.Tensor) -> torch.Tensor:
        m = self.weights()[:, None]
        clean = self.clean.to(x.dtype)
        mixed = (m * x + (1.0 - m) * clean).to(x.dtype)
        return torch.where(m == 0, clean, torch.where(m == 1, x, mixed))


def sample_task(velocity: TaskVelocity, x: torch.Tensor, sigmas: torch.Tensor, *, cover_switch: Optional[int] = None,
                merge: Optional[RepaintMerge] = None,
                callback: Optional[Callable[[int, int, torch.Tensor], None]] = None) -> torch.Tensor:
    """The original's ODE loop from latent `x` (the noise, or `cover_noise_start`'s start) over `sigmas` (ending at
    0): v = velocity(x, t, i, i < cover_switch); x ← x − v·(t_i − t_{i+1}); then the repaint injection while
    i < merge.injection_steps(N) and before the last step; the blend after the loop. `callback(i, N, x)` after each
    step (progress / interrupt)."""
    if sigmas.ndim != 1 or len(sigmas) < 2:
        raise ValueError(f"sigmas must be a 1-D schedule of at least 2 levels, got {tuple(sigmas.shape)}")
    steps = len(sigmas) - 1
    switch = steps if cover_switch is None else cover_switch
    inject = merge.injection_steps(steps) if merge is not None else 0
    sigmas = sigmas.to(x.device)
    for i in range(steps):
        t = sigmas[i].expand(x.shape[0])
        v = velocity(x, t, i, i < switch)
        dt = (sigmas[i] - sigmas[i + 1]).to(v.dtype)
        x = x - v * dt
        if i < inject and i < steps - 1:
            x = merge.inject(x, sigmas[i + 1])
        if callback is not None:
            callback(i + 1, steps, x)
    return merge.blend(x) if merge is not None else x
