"""The editing nodes (nodes/editing_nodes.py) in-process on the tiny checkpoint: repaint and extend keep the source
exactly where they do not regenerate, retake at variance 0 and audio2audio at strength 0 are the plain original
sampler, strength 1 and an empty lyric edit return the source, bad ranges fail clearly. The workflows run through
the real server in test_workflows.py and test_browser.py."""
import pytest
import torch
from test_original_sampling import (  # noqa: F401 (fixtures)
    LYRICS,
    NODE_DEFAULTS,
    decode_calls,
    pack_module,
    run_node,
    tiny,
)

GUIDANCE = dict(cfg_type="apg", guidance_scale=15.0, guidance_interval=0.5, guidance_interval_decay=0.0,
                min_guidance_scale=3.0, use_erg_diffusion=True, guidance_scale_text=0.0, guidance_scale_lyric=0.0)
MASKED = dict(seeds="5", retake_seeds="9", steps=4, use_erg_tag=True, use_erg_lyric=True, **GUIDANCE)
FRAMES = 40  # 3.7 s


@pytest.fixture(scope="module")
def edit(tiny):  # noqa: F811
    return pack_module("nodes.editing_nodes")


def source_latent(batch=1, frames=FRAMES):
    return {"samples": torch.randn(batch, 8, 16, frames, generator=torch.Generator().manual_seed(123)),
            "type": "audio"}


def repaint(t, e, source, **kw):
    return e.Repaint.execute(model=t.model, positive=t.positive, source=source,
                             **{**MASKED, "start_seconds": 1.0, "end_seconds": 2.0, "variance": 0.5, **kw}).result


def test_retake_at_variance_zero_is_the_original_sampler(tiny, edit):  # noqa: F811
    settings = {k: v for k, v in NODE_DEFAULTS.items() if k != "seeds"}
    out = edit.Retake.execute(model=tiny.model, positive=tiny.positive, seeds="7", retake_seeds="99",
                              retake_variance=0.0, **settings).result
    plain, _ = run_node(tiny, seeds="7")
    assert torch.equal(out[0]["samples"], plain) and out[1:] == ("7", "99")
    varied = edit.Retake.execute(model=tiny.model, positive=tiny.positive, seeds="7", retake_seeds="99",
                                 retake_variance=0.2, **settings).result[0]["samples"]
    assert varied.shape == plain.shape and not torch.allclose(varied, plain)


def test_repaint_keeps_everything_outside_the_range_exactly(tiny, edit):  # noqa: F811
    source = source_latent()
    out, seeds, retake = repaint(tiny, edit, source)
    start, end = int(1.0 * 44100 / 4096), int(2.0 * 44100 / 4096)
    x, src = out["samples"], source["samples"]
    assert (seeds, retake) == ("5", "9") and x.shape == src.shape
    assert torch.equal(x[..., :start], src[..., :start]) and torch.equal(x[..., end:], src[..., end:])
    assert (x[..., start:end] - src[..., start:end]).abs().min() > 0  # every repainted value changed
    # variance 0 skips every step: nothing changes at all
    assert torch.equal(repaint(tiny, edit, source, variance=0.0)[0]["samples"], src)


@pytest.mark.parametrize("start, end, message", [
    (2.0, 1.0, "reversed or empty"),
    (1.0, 1.0, "reversed or empty"),
    (-1.0, 1.0, "outside the song, which is 3.72 s long"),
    (1.0, 9.0, "outside the song, which is 3.72 s long"),
    (1.0, 1.02, "shorter than one latent frame"),
])
def test_repaint_refuses_bad_ranges(tiny, edit, start, end, message):  # noqa: F811
    with pytest.raises(ValueError, match=message):
        repaint(tiny, edit, source_latent(), start_seconds=start, end_seconds=end)


def extend(t, e, source, left, right, **kw):
    return e.Extend.execute(model=t.model, positive=t.positive, source=source, left_seconds=left,
                            right_seconds=right, **{"window_seconds": 240.0, **MASKED, **kw}).result[0]["samples"]


@pytest.mark.parametrize("left, right, window", [
    (1.0, 2.0, 240.0),
    (0.0, 8.0, 240.0),  # the extension is longer than the source (impossible in the original)
    (0.0, 3.0, 5.0),  # past the window: the song's start is put back beside the sampled window
    (2.0, 0.0, 5.0),
])
def test_extend_keeps_the_source_exactly(tiny, edit, left, right, window):  # noqa: F811
    source = source_latent()
    x = extend(tiny, edit, source, left, right, window_seconds=window)
    lf, rf = int(left * 44100 / 4096), int(right * 44100 / 4096)
    assert x.shape == (1, 8, 16, lf + FRAMES + rf)
    assert torch.equal(x[..., lf:lf + FRAMES], source["samples"])
    new = torch.cat([x[..., :lf], x[..., lf + FRAMES:]], dim=-1)
    assert new.abs().mean() > 0.1 and torch.isfinite(new).all()


def test_extend_refusals(tiny, edit):  # noqa: F811
    with pytest.raises(ValueError, match="both sides: extend one side per Extend node"):
        extend(tiny, edit, source_latent(), 1.0, 2.0, window_seconds=5.0)
    with pytest.raises(ValueError, match="does not fit in window_seconds"):
        extend(tiny, edit, source_latent(), 0.0, 6.0, window_seconds=5.0)
    with pytest.raises(ValueError, match="nothing to extend"):
        extend(tiny, edit, source_latent(), 0.0, 0.05)


def lyric_edit(t, e, source, target, **kw):
    settings = dict(preset="custom", n_min=0.0, n_max=1.0, n_avg=1, seeds="3", steps=4, guidance_scale=15.0)
    return e.LyricEdit.execute(model=t.model, source=source, source_positive=t.positive, target_positive=target,
                               **{**settings, **kw}).result[0]["samples"]


def test_lyric_edit(tiny, edit):  # noqa: F811
    source = source_latent()
    target = pack_module("nodes.text").TextEncode.execute(tiny.clip, "dark techno, male vocals", LYRICS + "\nagain", 1.0) \
        .result[0]
    # n_min = n_max = 1: no step edits anything, the source comes back
    assert torch.equal(lyric_edit(tiny, edit, source, target, n_min=1.0, n_max=1.0), source["samples"])
    # the same text without guidance (APG's momentum differs between the branches): the velocity differences are
    # 0 up to the rounding of z + z_src - x_src, so the song barely moves
    same = lyric_edit(tiny, edit, source, tiny.positive, guidance_scale=1.0)
    assert (same - source["samples"]).abs().max() < 1e-4
    edited = lyric_edit(tiny, edit, source, target, preset="only_lyrics")
    assert edited.shape == source["samples"].shape and not torch.equal(edited, source["samples"])
    remixed = lyric_edit(tiny, edit, source, target, preset="remix", n_avg=2)
    assert torch.isfinite(remixed).all() and not torch.allclose(remixed, edited)
    with pytest.raises(ValueError, match="n_min <= n_max"):
        lyric_edit(tiny, edit, source, target, n_min=0.8, n_max=0.2)


def a2a(t, e, reference, strength, **kw):
    settings = {k: v for k, v in NODE_DEFAULTS.items() if k not in ("duration", "oss_steps")}
    return e.Audio2Audio.execute(model=t.model, positive=t.positive, reference=reference,
                                 ref_audio_strength=strength, **{**settings, **kw}).result[0]["samples"]


def test_audio2audio_strength_edges_and_start(tiny, edit, decode_calls):  # noqa: F811
    from ace_step.sampling import schedules

    reference = source_latent(frames=int(3.0 * 44100 / 4096))
    plain, _ = run_node(tiny, seeds="7")
    assert torch.equal(a2a(tiny, edit, reference, 0.0), plain)  # strength 0: text2music with the same seed
    decode_calls.clear()
    assert torch.equal(a2a(tiny, edit, reference, 1.0), reference["samples"])  # strength 1: the reference
    assert decode_calls == []
    sigmas = schedules.flow_schedule(6).sigmas
    first = schedules.audio2audio_start_step(sigmas, 0.5)
    assert sigmas[first] <= 0.5 < sigmas[first - 1]
    out = a2a(tiny, edit, reference, 0.5)
    # the first model call sees the reference noised to exactly the level it is told (pre-39043aa behaviour)
    t0, x0, _ = decode_calls[0]
    assert t0 == pytest.approx(sigmas[first].item() * 1000, rel=1e-6)
    noise = torch.randn(1, 8, 16, reference["samples"].shape[-1], generator=torch.Generator().manual_seed(7))
    assert torch.equal(x0, (1 - sigmas[first]) * reference["samples"] + sigmas[first] * noise)
    assert out.shape == reference["samples"].shape and not torch.equal(out, plain)
    assert len({round(t, 3) for t, _, _ in decode_calls}) == 6 - first
