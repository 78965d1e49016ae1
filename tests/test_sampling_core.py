"""The original ACE-Step v1 sampling algorithms (ace_step/schedules, guidance, flow_steps, editing, erg) against the
golden schedules of the original classes and against the original's formulas (ace-step/ACE-Step `acestep/`), written out here
independently in numpy / float64."""
import json
import math

import numpy as np
import pytest
import torch

from ace_step.sampling import editing, erg, flow_steps, schedules
from ace_step.sampling.guidance import (GuidanceSchedule, Guider, MomentumBuffer, apg, cfg, cfg_star, double_condition,
                               double_guidance_active)
from ace_step.models.v1.transformer import ACEStepTransformer, TransformerConfig
from ace_step.models.v1.umt5 import UMT5Config, UMT5Encoder, erg_tag_q_scale
from ace_step.models.v1.latent import frames_for_seconds
from fixtures.v1_configs import tiny_lyric_encoder, tiny_transformer, tiny_umt5
from fixtures.erg_hooks import umt5_q_modules
from measure import report
from reference import REFERENCE_DIR

REFERENCE = REFERENCE_DIR
GOLDEN = REFERENCE / "data" / "golden_schedules.json"
OSS_PLACEHOLDER = "16, 29, 52, 96, 129, 158, 172, 183, 189, 200"  # the Gradio UI's oss_steps placeholder


def golden() -> dict:
    if not GOLDEN.exists():
        pytest.skip(f"no golden schedules at {GOLDEN}")
    return json.loads(GOLDEN.read_text())


def bf16(a) -> np.ndarray:
    """float64 values rounded as a bf16 kernel does: the float32 op result, then rounded to bf16."""
    return torch.from_numpy(np.asarray(a, dtype=np.float32)).bfloat16().double().numpy()


# ------------------------------------------------------------------------------------------------ schedules
def schedule_for(name: str) -> schedules.Schedule:
    if name.startswith("euler_a2a_strength"):
        strength, steps = name[len("euler_a2a_strength"):].split("_N")
        return schedules.audio2audio_schedule(int(steps), float(strength), "euler")
    if name.startswith("euler_oss_"):
        dtype = getattr(torch, name[len("euler_oss_"):])
        return schedules.oss_schedule(schedules.parse_oss_steps(OSS_PLACEHOLDER), "euler", dtype)
    scheduler, steps = name.split("_N")
    return schedules.flow_schedule(int(steps), scheduler)


def test_schedules_match_golden_tables():
    tables = {k: v for k, v in golden().items() if k != "omega_effective"}
    assert len(tables) == 11
    worst = 0.0
    for name, ref in tables.items():
        s = schedule_for(name)
        assert s.num_steps == ref["num_inference_steps"], name
        assert s.timesteps.dtype == s.sigmas.dtype == torch.float32
        assert s.timesteps.shape[0] == len(ref["timesteps"]) and s.sigmas.shape[0] == len(ref["sigmas"]), name
        err = max(np.abs(s.timesteps.double().numpy() - ref["timesteps"]).max(),
                  np.abs(s.sigmas.double().numpy() - ref["sigmas"]).max())
        worst = max(worst, err)
        assert err <= 1e-6, name
        assert abs(s.sigma_max - ref["init_sigma_max"]) <= 1e-6 and abs(s.sigma_min - ref["init_sigma_min"]) <= 1e-6
        if "noise_mix_sigma(scheduler.sigma_max)" in ref:
            assert abs(s.sigma_max - ref["noise_mix_sigma(scheduler.sigma_max)"]) <= 1e-6
    report("schedules.golden_max_abs_error", worst)


def test_omega_factor_matches_golden():
    for omega, value in golden()["omega_effective"].items():
        assert abs(flow_steps.omega_factor(float(omega)) - value) <= 1e-12
    assert flow_steps.omega_factor(-1e6) == pytest.approx(0.9)


def test_double_shift_and_heun_duplication():
    s = schedules.flow_schedule(5, "euler")
    base = np.linspace(1.0, 3 * 0.001 / (1 + 2 * 0.001), 5)  # linspace(S(1), S(0.001), N), then S again
    assert np.allclose(s.sigmas[:-1].double().numpy(), 3 * base / (1 + 2 * base), atol=1e-7)
    assert s.sigmas[-1] == 0
    heun = schedules.flow_schedule(5, "heun")
    assert heun.num_steps == 5 and len(heun.timesteps) == 9
    assert torch.equal(heun.sigmas, torch.cat([s.sigmas[:1], s.sigmas[1:-1].repeat_interleave(2), s.sigmas[-1:]]))


def test_oss_steps_rules():
    assert schedules.parse_oss_steps(" ") == []
    assert schedules.parse_oss_steps("3, 7,9") == [3, 7, 9]
    for bad in ("0, 5", "5, 3", "4, 4"):
        with pytest.raises(ValueError):
            schedules.parse_oss_steps(bad)
    with pytest.raises(ValueError):
        schedules.oss_schedule([3, 7], "heun")
    # The picks really go through bf16: the float32 variant differs, and both equal S(t_pick/1000) to rounding.
    bf, f32 = (schedules.oss_schedule([16, 200], dtype=d).sigmas for d in (torch.bfloat16, torch.float32))
    assert not torch.equal(bf, f32)
    pick = schedules.flow_schedule(200).timesteps[[15, 199]].double() / 1000
    assert torch.allclose(f32[:-1].double(), 3 * pick / (1 + 2 * pick), atol=1e-6)


def test_audio2audio_schedule_mismatch_is_kept():
    s = schedules.audio2audio_schedule(60, 0.5)
    assert s.num_steps == 30 and s.sigma_max == 0.75
    assert s.sigmas[0].item() == pytest.approx(0.9)  # S(S(0.5)): the model is told σ 0.9, the data is at 0.75
    assert schedules.audio2audio_schedule(60, 1.0).num_steps == 0  # strength 1: no step, the reference itself


# ------------------------------------------------------------------------------------------------ guidance
def np_apg(cond, uncond, scale, running=None, momentum=-0.75, threshold=2.5):
    """APG as `acestep/apg_guidance.py` writes it, float64, on [B, C, H, W] arrays. Returns (guided, new running average)."""
    d = cond - uncond
    if running is not None:
        d = d + momentum * running
    norm = np.sqrt((d ** 2).sum(axis=(2, 3), keepdims=True))
    d = d * np.minimum(1.0, threshold / norm)
    unit = cond / np.sqrt((cond ** 2).sum(axis=(2, 3), keepdims=True))
    orth = d - (d * unit).sum(axis=(2, 3), keepdims=True) * unit
    return cond + (scale - 1) * orth, (cond - uncond) + (0 if running is None else momentum * running)


def test_cfg_and_double_condition():
    c, u, t = torch.tensor([2.0, -1.0]), torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])
    assert torch.allclose(cfg(c, u, 3.0), torch.tensor([0.5 + 3 * 1.5, 0.5 + 3 * -1.5]))
    assert torch.allclose(double_condition(c, u, t, 5.0, 2.0),
                          (1 - 5.0) * u + (5.0 - 2.0) * t + 2.0 * c)
    assert double_guidance_active(1.5, 2.0) and not double_guidance_active(0.7, 1.5)
    assert not double_guidance_active(2.0, 1.0)


def test_apg_against_formula_with_momentum_and_norm_clip():
    g = torch.Generator().manual_seed(0)
    buffer, running = MomentumBuffer(), None
    for step in range(3):
        cond = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64)
        uncond = cond - torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64) * torch.tensor(
            [0.05, 1.0, 3.0], dtype=torch.float64)[None, :, None, None]  # norms below and above 2.5
        expected, running = np_apg(cond.numpy(), uncond.numpy(), 15.0, running)
        out = apg(cond, uncond, 15.0, buffer)
        assert np.allclose(out.numpy(), expected, rtol=0, atol=1e-12), step
        assert np.allclose(buffer.running_average.numpy(), running, atol=1e-12)
    no_momentum, _ = np_apg(cond.numpy(), uncond.numpy(), 4.0)
    assert np.allclose(apg(cond, uncond, 4.0).numpy(), no_momentum, atol=1e-12)


def test_apg_projects_in_float64():
    # d almost parallel to c: its orthogonal part is a tiny difference that float32 arithmetic cannot resolve.
    g = torch.Generator().manual_seed(1)
    cond = torch.randn(1, 1, 16, 20, generator=g)
    ortho = torch.randn(1, 1, 16, 20, generator=g)
    ortho -= (ortho * cond).sum() / (cond * cond).sum() * cond
    diff = (0.1 * cond + 1e-6 * ortho / ortho.norm()).float()
    uncond = cond - diff
    d = (cond - uncond).double().numpy()  # the difference exactly as the function sees it
    c = cond.double().numpy()
    exact = d - (d * c).sum() / (c * c).sum() * c
    got = (apg(cond, uncond, 1e5 + 1) - cond).double().numpy() / 1e5  # (s − 1)·d⊥, large enough to read back
    err = np.abs(got - exact).max() / np.abs(exact).max()
    unit = torch.nn.functional.normalize(cond, dim=(-1, -2))
    fp32 = (cond - uncond) - ((cond - uncond) * unit).sum() * unit
    fp32_err = np.abs(fp32.double().numpy() - exact).max() / np.abs(exact).max()
    report("guidance.apg_orthogonal_rel_error_fp32_inputs", err, float32_projection=fp32_err)
    assert err < 1e-4 < fp32_err


def test_cfg_star_against_formula_and_zero_init():
    g = torch.Generator().manual_seed(2)
    c, u = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64), torch.randn(2, 3, 4, 5, generator=g,
                                                                                  dtype=torch.float64)
    cn, un = c.numpy().reshape(2, -1), u.numpy().reshape(2, -1)
    alpha = (cn * un).sum(1) / ((un ** 2).sum(1) + 1e-8)
    expected = (alpha[:, None] * un + 7.0 * (cn - alpha[:, None] * un)).reshape(c.shape)
    assert np.allclose(cfg_star(c, u, 7.0, step_index=2).numpy(), expected, atol=1e-12)
    assert torch.equal(cfg_star(c, u, 7.0, step_index=1), torch.zeros_like(c))
    assert np.allclose(cfg_star(c, u, 7.0, step_index=0, use_zero_init=False).numpy(), expected, atol=1e-12)


def test_guidance_interval_and_decay():
    s = GuidanceSchedule(60, scale=15.0, interval=0.5)
    assert (s.start, s.end) == (15, 45)
    assert sum(2 if s.at(i)[0] else 1 for i in range(60)) == 90  # transformer evaluations of a default run
    assert s.at(14) == (False, 1.0) and s.at(15) == (True, 15.0) and s.at(45) == (False, 1.0)
    assert not any(GuidanceSchedule(60, scale=1.0).at(i)[0] for i in range(60))
    assert not any(GuidanceSchedule(60, scale=0.0).at(i)[0] for i in range(60))

    d = GuidanceSchedule(10, scale=15.0, interval=1.0, decay=0.5, min_scale=3.0)
    assert (d.start, d.end) == (0, 10)
    for i in range(10):
        assert d.at(i) == (True, pytest.approx(15.0 - 12.0 * (i / 9) * 0.5))
    one = GuidanceSchedule(2, scale=15.0, interval=0.5, decay=1.0)  # start 0, end 1: the original divides by 0
    assert (one.start, one.end) == (0, 1) and one.at(0) == (True, 15.0)


def test_guider_runs_only_needed_passes_and_momentum_only_on_cfg_steps():
    g = torch.Generator().manual_seed(3)
    conds = [torch.randn(1, 2, 4, 3, generator=g, dtype=torch.float64) for _ in range(6)]
    unconds = [c - torch.randn(1, 2, 4, 3, generator=g, dtype=torch.float64) for c in conds]
    guider = Guider(GuidanceSchedule(6, scale=5.0, interval=0.5), "apg")  # CFG on i = 1, 2, 3
    calls, running = [], None
    for i in range(6):
        out = guider(i, lambda: calls.append(("c", i)) or conds[i], lambda: calls.append(("u", i)) or unconds[i])
        if 1 <= i < 4:
            expected, running = np_apg(conds[i].numpy(), unconds[i].numpy(), 5.0, running)
            assert np.allclose(out.numpy(), expected, atol=1e-12)
        else:
            assert out is conds[i]
    assert [i for kind, i in calls if kind == "u"] == [1, 2, 3]
    assert np.allclose(guider.momentum.running_average.numpy(), running, atol=1e-12)

    # Double guidance replaces cfg_type (no momentum) and ignores scale and decay; cond, text-only, uncond.
    dg = Guider(GuidanceSchedule(4, scale=9.0, interval=1.0, decay=1.0), "apg", scale_text=3.0, scale_lyric=1.5)
    order = []
    t = torch.full_like(conds[0], 0.25)
    out = dg(2, lambda: order.append("c") or conds[0], lambda: order.append("u") or unconds[0],
             lambda: order.append("t") or t)
    assert order == ["c", "t", "u"] and dg.momentum.running_average is None
    assert torch.allclose(out, -2.0 * unconds[0] + 1.5 * t + 1.5 * conds[0])
    with pytest.raises(ValueError):
        dg(2, lambda: conds[0], lambda: unconds[0])
    star = Guider(GuidanceSchedule(4, scale=3.0, interval=1.0), "cfg_star")
    assert torch.equal(star(1, lambda: conds[0], lambda: unconds[0]), torch.zeros_like(conds[0]))
    with pytest.raises(ValueError):
        Guider(GuidanceSchedule(4), "cfg++")


# ------------------------------------------------------------------------------------------------ steps
def test_omega_euler_step_float32_against_formula():
    g = torch.Generator().manual_seed(4)
    x, v = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g) + 0.3
    sigma, sigma_next = 0.75, 0.5
    out = flow_steps.omega_euler_step(x, v, sigma, sigma_next, omega_scale=10.0)
    dx = (np.float32(sigma_next) - np.float32(sigma)) * v.double().numpy()
    m = dx.mean()  # over the whole tensor, both batch items
    omega = 0.9 + 0.2 / (1 + math.exp(-0.1 * 10.0))
    expected = x.double().numpy() + (dx - m) * omega + m
    assert out.dtype == torch.float32
    assert np.abs(out.double().numpy() - expected).max() < 1e-6
    # The mean is taken over the whole batch, not per item: per-item means give a different step.
    per_item = x.double().numpy() + (dx - dx.mean(axis=(1, 2, 3), keepdims=True)) * omega + dx.mean(
        axis=(1, 2, 3), keepdims=True)
    assert np.abs(out.double().numpy() - per_item).max() > 1e-4
    plain = flow_steps.euler_step(x, v, sigma, sigma_next)
    assert np.abs(plain.double().numpy() - (x.double().numpy() + dx)).max() < 1e-6


def test_omega_euler_step_computes_dx_in_bf16():
    g = torch.Generator().manual_seed(5)
    v = (torch.randn(2, 3, 4, 5, generator=g) + 0.2).bfloat16()
    x = torch.zeros_like(v)  # x = 0: the result is the step itself, so its bf16 roundings show
    sigma, sigma_next = np.float32(0.8123), np.float32(0.7901)
    out = flow_steps.omega_euler_step(x, v, torch.tensor(sigma), torch.tensor(sigma_next), omega_scale=10.0)
    assert out.dtype == torch.bfloat16
    omega32 = np.float32(0.9 + 0.2 / (1 + math.exp(-1.0)))
    vv = v.double().numpy()
    dx = bf16(bf16(sigma_next - sigma) * vv)  # a 0-dim fp32 tensor times a bf16 tensor: bf16 operands and result
    m = bf16(dx.mean())
    expected = bf16(bf16(bf16(dx - m) * np.float64(omega32)) + m)
    assert np.array_equal(out.double().numpy(), expected)
    in_fp32 = (sigma_next - sigma) * vv
    in_fp32 = bf16((in_fp32 - in_fp32.mean()) * np.float64(omega32) + in_fp32.mean())
    assert not np.array_equal(expected, in_fp32)  # so the comparison above does tell the two apart


def gaussian_velocity(mu: float, s: float, calls: list | None = None):
    """Exact flow-matching velocity for data ~ N(mu, s²) per element: linear in x.
    v = E[ε − x0 | x_σ] = (σ − (1−σ)s²)/V · (x − (1−σ)μ) − μ with V = (1−σ)²s² + σ²."""

    def velocity(x, t, i):
        if calls is not None:
            calls.append((t.item(), i, x.clone()))
        sigma = t.double() / 1000
        var = (1 - sigma) ** 2 * s ** 2 + sigma ** 2
        return ((sigma - (1 - sigma) * s ** 2) / var * (x.double() - (1 - sigma) * mu) - mu).to(x.dtype)

    return velocity


def exact_flow(x1: torch.Tensor, mu: float, s: float) -> torch.Tensor:
    """The ODE solution from σ = 1 to σ = 0: x(σ) = (1−σ)μ + sqrt((1−σ)²s² + σ²)·x(1), at σ = 0."""
    return mu + s * x1.double()


def test_heun_sequence_and_order_on_linear_field():
    x1 = torch.randn(1, 2, 4, 6, generator=torch.Generator().manual_seed(6))
    mu, s = 0.7, 0.4
    errors = {}
    for scheduler in ("euler", "heun"):
        for n in (8, 16):
            sched = schedules.flow_schedule(n, scheduler)
            calls = []
            out = flow_steps.sample(scheduler, gaussian_velocity(mu, s, calls), x1, sched.sigmas, omega_scale=0.0)
            errors[scheduler, n] = (out.double() - exact_flow(x1, mu, s)).abs().max().item()
            assert [i for _, i, _ in calls] == list(range(len(sched.timesteps)))
            assert [t for t, _, _ in calls] == sched.timesteps.tolist()
    report("flow_steps.linear_field_max_error", errors[("heun", 16)], **{f"{k}_{n}": v for (k, n), v in errors.items()})
    assert errors["heun", 8] < errors["euler", 8] / 5
    assert 1.6 < errors["euler", 8] / errors["euler", 16] < 2.6  # first order
    assert errors["heun", 8] / errors["heun", 16] > 3.0  # second order

    # One predictor/corrector pair by hand: the corrector averages both slopes and steps from the stored x.
    sched = schedules.flow_schedule(3, "heun").sigmas.double()
    vel = gaussian_velocity(mu, s)
    v0 = vel(x1.double(), 1000 * sched[0], 0)
    pred = x1.double() + (sched[1] - sched[0]) * v0
    v1 = vel(pred, 1000 * sched[1], 1)
    expected = x1.double() + (sched[1] - sched[0]) * 0.5 * (v0 + v1)
    calls = []
    flow_steps.sample_heun(gaussian_velocity(mu, s, calls), x1, schedules.flow_schedule(3, "heun").sigmas, 0.0)
    assert torch.allclose(calls[1][2].double(), pred, atol=1e-5) and torch.allclose(calls[2][2].double(), expected,
                                                                                    atol=1e-5)


def test_pingpong_renoises_x0_with_the_generator():
    mu = torch.linspace(-1, 1, 24).reshape(1, 2, 3, 4)

    def velocity(x, t, i):  # data is the point mu: x̂0 = x − σ·v = mu exactly
        calls.append(x.clone())
        return (x - mu) / (t / 1000)

    sched = schedules.flow_schedule(6, "pingpong")
    x1 = torch.randn(1, 2, 3, 4, generator=torch.Generator().manual_seed(7))
    calls = []
    out = flow_steps.sample_pingpong(velocity, x1, sched.sigmas, torch.Generator().manual_seed(42))
    replay = torch.Generator().manual_seed(42)
    for k in range(1, 6):
        eps = torch.empty(1, 2, 3, 4).normal_(generator=replay)
        sigma = sched.sigmas[k].item()
        assert torch.allclose(calls[k], (1 - sigma) * mu + sigma * eps, atol=1e-5), k
    assert torch.allclose(out, mu, atol=1e-5)


# ------------------------------------------------------------------------------------------------ editing
def test_retake_noise_mixing():
    g = torch.Generator().manual_seed(8)
    eps, eps2 = torch.randn(1, 8, 16, 10, generator=g), torch.randn(1, 8, 16, 10, generator=g)
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(editing.retake_noise(eps.to(dtype), eps2.to(dtype), 0.0), eps.to(dtype))
    ones, zeros = torch.ones(3, dtype=torch.bfloat16), torch.zeros(3, dtype=torch.bfloat16)
    assert editing.retake_noise(ones, zeros, 0.5)[0].item() == 0.70703125  # θ in bf16: 0.78515625
    assert editing.retake_noise(zeros, ones, 0.5)[0].item() == 0.70703125
    assert editing.retake_noise(ones.float(), zeros.float(), 0.5)[0].item() == pytest.approx(math.sqrt(0.5), abs=1e-7)
    assert editing.retake_noise(ones.float(), zeros.float(), 0.5, torch.bfloat16)[0].item() == 0.70703125
    assert abs(editing.retake_noise(ones, zeros, 1.0)[0].item() - 4.8e-4) < 1e-5  # variance 1: cos θ ≈ 4.8e-4
    mixed = editing.retake_noise(eps, eps2, 0.3)
    theta = 0.3 * math.pi / 2
    assert torch.allclose(mixed, math.cos(theta) * eps + math.sin(theta) * eps2, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_repaint_keeps_unmasked_region_exactly(dtype):
    g = torch.Generator().manual_seed(9)
    x0 = torch.randn(2, 8, 16, 12, generator=g).to(dtype)
    eps, eps2 = torch.randn(2, 8, 16, 12, generator=g).to(dtype), torch.randn(2, 8, 16, 12, generator=g).to(dtype)
    mask = editing.repaint_mask(12, 3, 7)
    assert mask.tolist() == [False] * 3 + [True] * 4 + [False] * 5
    z0 = editing.repaint_noise(eps, eps2, mask, 0.5)
    assert torch.equal(z0[..., ~mask], eps[..., ~mask]) and not torch.equal(z0[..., mask], eps[..., mask])
    sched = schedules.flow_schedule(10)
    start = editing.repaint_start_step(10, 0.5)
    calls = []

    def velocity(x, t, i):
        calls.append((i, x.clone()))
        return (torch.sin(x.float() * 3) + t / 1000).to(x.dtype)

    out = editing.sample_repaint(velocity, x0, z0, mask, sched.sigmas, start)
    assert start == 5 and [i for i, _ in calls] == list(range(5, 10))
    tol = 1e-6 if dtype == torch.float32 else 0.05
    sigma = sched.timesteps[5].double() / 1000
    assert torch.allclose(calls[0][1].double(), (1 - sigma) * x0.double() + sigma * z0.double(), atol=tol)
    assert torch.equal(out[..., ~mask], x0[..., ~mask])
    assert (out[..., mask].float() - x0[..., mask].float()).abs().max() > 0.1
    # One masked step by hand (float64): Euler inside, the source re-noised to σ_next outside.
    x, v = calls[1][1], velocity(calls[1][1], sched.timesteps[6], 6)
    s, sn = (sched.timesteps[k].double().item() / 1000 for k in (6, 7))
    step = editing.repaint_step(x, v, x0, z0, mask, s, sn).double()
    inside = x.double() + (sn - s) * v.double()
    outside = (1 - sn) * x0.double() + sn * z0.double()
    assert torch.allclose(step[..., mask], inside[..., mask], atol=tol)
    assert torch.allclose(step[..., ~mask], outside[..., ~mask], atol=tol)
    assert torch.equal(editing.sample_repaint(velocity, x0, z0, mask, sched.sigmas, 10), x0)  # variance 0


def test_extend_plan():
    g = torch.Generator().manual_seed(10)
    src, eps, eps2 = (torch.randn(1, 2, 3, 10, generator=g) for _ in range(3))
    assert frames_for_seconds(240) == editing.MAX_FRAMES == 2583
    assert frames_for_seconds(-1.0) == -10  # int() truncates toward zero, as the original

    p = editing.extend_plan(src, eps, eps2, 3, 2)  # both sides, fits
    assert torch.equal(p.x0, torch.cat([torch.zeros(1, 2, 3, 3), src, torch.zeros(1, 2, 3, 2)], dim=-1))
    assert torch.equal(p.z0, torch.cat([eps2[..., :3], eps, eps2[..., -2:]], dim=-1))
    assert p.mask.tolist() == [True] * 3 + [False] * 10 + [True] * 2
    assert p.head is None and p.tail is None and torch.equal(p.finish(p.x0), p.x0)

    left = editing.extend_plan(src, eps, eps2, 4, 0, max_frames=12)  # 14 frames: the source's last 2 wait outside
    assert torch.equal(left.x0[..., 4:], src[..., :8]) and torch.equal(left.tail, src[..., 8:])
    assert torch.equal(left.z0, torch.cat([eps2[..., :4], eps[..., :8]], dim=-1))
    new = torch.randn(1, 2, 3, 12, generator=g)
    assert torch.equal(left.finish(new), torch.cat([new, src[..., 8:]], dim=-1))

    right = editing.extend_plan(src, eps, eps2, 0, 5, max_frames=12)  # 15 frames: the first 3 wait outside
    assert torch.equal(right.x0[..., :7], src[..., 3:]) and torch.equal(right.head, src[..., :3])
    assert torch.equal(right.z0, torch.cat([eps[..., 3:], eps2[..., -5:]], dim=-1))
    assert right.mask.tolist() == [False] * 7 + [True] * 5
    assert torch.equal(right.finish(new), torch.cat([src[..., :3], new], dim=-1))

    longer = torch.randn(1, 2, 3, 30, generator=g)  # a longer retake draw lifts the original's pad <= L0 limit
    assert editing.extend_plan(src, eps, longer, 25, 0, max_frames=40).z0.shape[-1] == 35
    for args in ((src, eps, eps2, 11, 0), (src, eps, eps2, 3, 3, 12), (src, eps[..., :9], eps2, 2, 0)):
        with pytest.raises(ValueError):
            editing.extend_plan(*args)


def test_flowedit_phases_against_hand_loop():
    g = torch.Generator().manual_seed(11)
    x_src = torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64)
    offset = torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64)
    noises = [torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64) for _ in range(40)]
    sched = schedules.flow_schedule(8)
    t32 = sched.timesteps.numpy()
    levels = list((t32 / np.float32(1000)).astype(np.float64)) + [0.0]

    def run(n_min, n_max, n_avg):
        draws, pairs, targets = iter(noises), [], []

        def pair(z_src, z_tar, t, i):
            pairs.append(i)
            return 0.5 * z_src, 0.5 * z_tar + offset  # V_tar − V_src = 0.5·(z − x_src) + offset

        def target(x, t, i):
            targets.append(i)
            return -x

        out = editing.sample_flowedit(pair, target, x_src, sched.sigmas, n_min, n_max, lambda: next(draws), n_avg)
        return out, pairs, targets

    out, pairs, targets = run(2, 8, 3)
    assert pairs == [i for i in range(2, 8) for _ in range(3)] and targets == []
    z = x_src.numpy().copy()
    for i in range(2, 8):
        z = z + (levels[i + 1] - levels[i]) * (0.5 * (z - x_src.numpy()) + offset.numpy())
    assert np.allclose(out.numpy(), z, atol=1e-12)

    out, pairs, targets = run(1, 5, 1)  # phase 2 from step 5: fresh noise, then plain Euler on the target
    assert pairs == [1, 2, 3, 4] and targets == [5, 6, 7]
    z = x_src.numpy().copy()
    for i in range(1, 5):
        z = z + (levels[i + 1] - levels[i]) * (0.5 * (z - x_src.numpy()) + offset.numpy())
    sigma = sched.sigmas[5].item()
    x = z + (sigma * noises[4].numpy() + (1 - sigma) * x_src.numpy()) - x_src.numpy()
    for i in range(5, 8):
        x = x + (levels[i + 1] - levels[i]) * -x
    assert np.allclose(out.numpy(), x, atol=1e-12)


# ------------------------------------------------------------------------------------------------ ERG
def linear_io_observer(model, seen: dict):
    """Records (input, output) of every Linear; registered after the ERG hooks, so it sees their result."""
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_hook(
                lambda m, args, out, name=name: seen.setdefault(name, []).append((m, args[0], out))))
    return handles


def assert_only_named_scaled(seen: dict, names: list, scale: float):
    assert set(names) <= set(seen)
    for name, records in seen.items():
        for module, inp, out in records:
            raw = type(module).forward(module, inp)  # the plain Linear, bypassing every hook
            assert torch.allclose(out, raw * (scale if name in names else 1.0), rtol=1e-6, atol=1e-7), name


def test_erg_module_lists_and_relative_depth():
    assert umt5_q_modules(12) == [f"transformer.encoder.block.{i}.layer.0.SelfAttention.q" for i in (8, 9)]
    assert erg.lyric_modules(6) == [f"lyric_encoder.encoders.{i}.self_attn.linear_q" for i in (4, 5)]
    assert erg.diffusion_modules(24) == [f"transformer_blocks.{i}.{a}.to_q" for i in range(15, 20)
                                         for a in ("attn", "cross_attn")]
    assert list(erg.same_relative_depth(15, 19, 24, 2)) == [1] and list(erg.same_relative_depth(4, 5, 6, 2)) == [1]
    assert list(erg.same_relative_depth(15, 19, 24, 12)) == [7, 8, 9]
    assert erg_tag_q_scale(12) == {8: 0.01, 9: 0.01}
    with torch.device("meta"):  # the full-size names resolve on the real architectures
        big = ACEStepTransformer(TransformerConfig.full_size())
        text = UMT5Encoder(UMT5Config.full_size())
    for name in erg.lyric_modules(6) + erg.diffusion_modules(24):
        assert isinstance(big.get_submodule(name), torch.nn.Linear)
    for name in umt5_q_modules(12):
        assert isinstance(text.get_submodule(name), torch.nn.Linear)


@torch.no_grad()
def test_erg_hooks_on_tiny_transformer():
    torch.manual_seed(0)
    cfg = tiny_transformer()
    model = ACEStepTransformer(cfg).eval()
    assert cfg.lyric_encoder_config == tiny_lyric_encoder()
    g = torch.Generator().manual_seed(12)
    text = torch.randn(1, 5, cfg.text_embedding_dim, generator=g)
    lyrics = torch.randint(0, cfg.lyric_vocab_size, (1, 7), generator=g)
    x = torch.randn(1, 8, 16, 9, generator=g)

    lyric_names = erg.lyric_modules(cfg.lyric_encoder_blocks)
    plain_cond, _ = model.encode_condition(text, lyrics)
    seen = {}
    with erg.scaled_outputs(model, lyric_names):
        handles = linear_io_observer(model, seen)
        erg_cond, _ = model.encode_condition(text, lyrics)
    for h in handles:
        h.remove()
    assert_only_named_scaled(seen, lyric_names, erg.TAU)
    assert torch.equal(erg_cond[:, :6], plain_cond[:, :6])  # speaker and tag tokens untouched
    assert (erg_cond[:, 6:] - plain_cond[:, 6:]).abs().max() > 1e-3  # the lyric tokens change
    assert torch.equal(model.encode_condition(text, lyrics)[0], plain_cond)  # hooks gone after the block

    dit_names = erg.diffusion_modules(cfg.num_layers)
    plain_v = model.decode(x, 500.0, plain_cond)
    seen = {}
    with erg.scaled_outputs(model, dit_names):
        handles = linear_io_observer(model, seen)
        erg_v = model.decode(x, 500.0, plain_cond)
    for h in handles:
        h.remove()
    assert_only_named_scaled(seen, dit_names, erg.TAU)
    assert (erg_v - plain_v).abs().max() > 1e-4
    assert torch.equal(model.decode(x, 500.0, plain_cond), plain_v)

    with pytest.raises(RuntimeError):
        with erg.scaled_outputs(model, dit_names):
            raise RuntimeError("boom")
    assert torch.equal(model.decode(x, 500.0, plain_cond), plain_v)  # removed after an error too
    with pytest.raises(AttributeError):
        with erg.scaled_outputs(model, ["transformer_blocks.7.attn.to_q"]):
            pass


@torch.no_grad()
def test_erg_hooks_on_tiny_umt5_equal_q_scale():
    torch.manual_seed(0)
    model = UMT5Encoder(tiny_umt5()).eval()
    ids = torch.randint(3, 512, (1, 11), generator=torch.Generator().manual_seed(13))
    names = umt5_q_modules(model.config.num_layers)
    assert names == ["transformer.encoder.block.1.layer.0.SelfAttention.q"]
    seen = {}
    with erg.scaled_outputs(model, names):
        handles = linear_io_observer(model, seen)
        hooked = model(ids)
    for h in handles:
        h.remove()
    assert_only_named_scaled(seen, names, erg.TAU)
    assert torch.equal(hooked, model(ids, q_scale=erg_tag_q_scale(model.config.num_layers)))
    assert not torch.equal(hooked, model(ids))
