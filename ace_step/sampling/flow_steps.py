"""The original ACE-Step v1 scheduler steps (ace-step/ACE-Step `acestep/schedulers/scheduling_flow_match_{euler,heun,pingpong}_discrete.py`), as pure functions over tensors.

Flow convention: x_σ = (1 − σ)·x0 + σ·ε and the model predicts v = ε − x0, so x0 = x − σ·v.

Dtypes follow the original: the sample is upcast to float32, the step is added, and the result is cast back to the
velocity's (model) dtype. Sigmas are 0-dim float32 tensors on the velocity's device, as the scheduler's table is, so
products such as (σ_next − σ)·v are computed in the model dtype (bf16 in the original) exactly as there.

A `Velocity` is `velocity(x, t, i) -> v`: the (guided) model velocity at latent x and model timestep t = 1000·σ
(a 0-dim float32 tensor), where i is the loop index (one per model call) that the guidance interval looks at.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from .schedules import NUM_TRAIN_TIMESTEPS

Velocity = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


def as_sigma(value, like: torch.Tensor) -> torch.Tensor:
    """A sigma as the original's scheduler holds it: a 0-dim float32 tensor on `like`'s device."""
    return torch.as_tensor(value, dtype=torch.float32, device=like.device)


def omega_factor(omega_scale: float) -> float:
    """ω = 0.9 + 0.2·sigmoid(0.1·omega_scale): 1.0 at 0, 1.046212 at the default 10, 0.9 / 1.1 at ±100."""
    return 0.9 + 0.2 / (1.0 + math.exp(min(-0.1 * omega_scale, 700.0)))  # min(): no overflow far below −100


def omega_scaled(dx: torch.Tensor, omega_scale: float) -> torch.Tensor:
    """(dx − m)·ω + m with m the mean over the WHOLE tensor (all batch items together): ω amplifies (> 1) or
    attenuates the zero-mean part of a step ("granularity scale")."""
    m = dx.mean()
    return (dx - m) * omega_factor(omega_scale) + m


def euler_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next) -> torch.Tensor:
    """Plain Euler update x + (σ_next − σ)·v (repaint, extend and edit use this one: no omega)."""
    dx = (as_sigma(sigma_next, v) - as_sigma(sigma, v)) * v  # model dtype, as the original
    return (x.float() + dx).to(v.dtype)


def omega_euler_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next, omega_scale: float) -> torch.Tensor:
    """The original Euler scheduler's step: dx = (σ_next − σ)·v in the model dtype, then the omega mean trick."""
    dx = (as_sigma(sigma_next, v) - as_sigma(sigma, v)) * v
    return (x.float() + omega_scaled(dx, omega_scale)).to(v.dtype)


@dataclass
class HeunState:
    """What the predictor leaves for the corrector: the float32 start sample, its derivative and the step size."""

    x: torch.Tensor
    derivative: torch.Tensor
    dt: torch.Tensor


def _derivative(x: torch.Tensor, v: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    # Through x̂0 = x − v·σ as the original does: v·σ is rounded in the model dtype, the rest is float32.
    return (x - (x - v * sigma)) / sigma


def heun_predict(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next,
                 omega_scale: float) -> tuple[torch.Tensor, HeunState]:
    """Heun's first half: an Euler step σ → σ_next (with omega) whose result the model evaluates next."""
    x32, sigma, sigma_next = x.float(), as_sigma(sigma, v), as_sigma(sigma_next, v)
    derivative = _derivative(x32, v, sigma)
    dt = sigma_next - sigma
    state = HeunState(x32, derivative, dt)
    return (x32 + omega_scaled(derivative * dt, omega_scale)).to(v.dtype), state


def heun_correct(x_pred: torch.Tensor, v: torch.Tensor, sigma_next, state: HeunState,
                 omega_scale: float) -> torch.Tensor:
    """Heun's second half: v evaluated at the predicted x (level σ_next); steps from the stored sample with the
    average of both derivatives (with omega)."""
    derivative = 0.5 * (state.derivative + _derivative(x_pred.float(), v, as_sigma(sigma_next, v)))
    return (state.x + omega_scaled(derivative * state.dt, omega_scale)).to(v.dtype)


def pingpong_step(x: torch.Tensor, v: torch.Tensor, sigma, sigma_next,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Ping-pong (Stable Audio Open Small) step: x̂0 = x − σ·v, then re-noise to σ_next with fresh float32 noise
    from `generator` for the whole batch: (1 − σ_next)·x̂0 + σ_next·ε. No omega. At σ_next = 0 this is x̂0.
    The noise is drawn on the generator's device (a CPU generator gives the same noise on every device)."""
    sample = x.float()
    sigma, sigma_next = as_sigma(sigma, v), as_sigma(sigma_next, v)
    denoised = sample - sigma * v
    noise_device = sample.device if generator is None else generator.device
    noise = torch.randn(sample.shape, generator=generator, device=noise_device).to(sample.device)
    return ((1 - sigma_next) * denoised + sigma_next * noise).to(v.dtype)


def model_timestep(sigma: torch.Tensor) -> torch.Tensor:
    """t = 1000·σ in float32 (equal to the original scheduler's `timesteps` entry)."""
    return sigma * NUM_TRAIN_TIMESTEPS


def sample_euler(velocity: Velocity, x: torch.Tensor, sigmas: torch.Tensor, omega_scale: float = 10.0) -> torch.Tensor:
    """The original Euler loop over `sigmas` (float32, final 0): one model call per step."""
    for i in range(len(sigmas) - 1):
        v = velocity(x, model_timestep(sigmas[i]), i)
        x = omega_euler_step(x, v, sigmas[i], sigmas[i + 1], omega_scale)
    return x


def sample_heun(velocity: Velocity, x: torch.Tensor, sigmas: torch.Tensor, omega_scale: float = 10.0) -> torch.Tensor:
    """The original Heun loop over its duplicated table [σ0, σ1, σ1, …, σ_{N−1}, σ_{N−1}, 0] (`flow_schedule(N,
    "heun")`): even calls predict σ_k → σ_{k+1}, odd calls evaluate at σ_{k+1} and correct; the last call is a
    plain (omega) Euler step to 0 with no corrector. The loop index i counts all 2N − 1 calls."""
    state = None
    for i in range(len(sigmas) - 1):
        v = velocity(x, model_timestep(sigmas[i]), i)
        if i % 2 == 0:
            x, state = heun_predict(x, v, sigmas[i], sigmas[i + 1], omega_scale)
        else:
            x = heun_correct(x, v, sigmas[i], state, omega_scale)
    return x


def sample_pingpong(velocity: Velocity, x: torch.Tensor, sigmas: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """The original ping-pong loop; its noise continues the stream of `generator` (the original passes the first
    batch item's seed generator, after the initial noise was drawn from it)."""
    for i in range(len(sigmas) - 1):
        v = velocity(x, model_timestep(sigmas[i]), i)
        x = pingpong_step(x, v, sigmas[i], sigmas[i + 1], generator)
    return x


def sample(scheduler: str, velocity: Velocity, x: torch.Tensor, sigmas: torch.Tensor, omega_scale: float = 10.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Runs the loop of `scheduler` ("euler", "heun" or "pingpong"); pingpong ignores omega, the others the
    generator (no step of theirs draws noise)."""
    if scheduler == "euler":
        return sample_euler(velocity, x, sigmas, omega_scale)
    if scheduler == "heun":
        return sample_heun(velocity, x, sigmas, omega_scale)
    if scheduler == "pingpong":
        return sample_pingpong(velocity, x, sigmas, generator)
    raise ValueError(f"unknown scheduler {scheduler!r}")
