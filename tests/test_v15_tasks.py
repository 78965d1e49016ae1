"""ACE-Step 1.5 tasks: the original's instructions and variant rules, each task's source / chunk mask / cover flags
(hand-built expectations), the condition the DiT gets (against `AceStep15.encode_condition` where both apply), the
schedules, seeded noise, cover switch, cover-noise start, and the repaint merge (outside kept bit for bit) on a
reduced model."""
import random

import pytest
import torch

from ace_step.models.v15.model import AceStep15
from ace_step.sampling.editing import retake_noise
from ace_step.sampling.v15_condition import (TIMBRE_FRAMES, context_latents, encode_task_condition,
                                             no_timbre_reference, timbre_reference_audio)
from ace_step.sampling.v15_sampling import (RepaintMerge, base_sigmas, cover_noise_start, cover_switch_sigma,
                                            cover_switch_step, sample_task, sampling_sigmas, seed_noise,
                                            turbo_sigmas)
from ace_step.sampling.v15_tasks import (check_variant, plan_complete, plan_cover, plan_cover_codes, plan_extend,
                                         plan_extract, plan_lego, plan_repaint, plan_text2music, seconds_to_frame,
                                         task_instruction)
from ace_step.text.v15_prompts import dit_caption_prompt, SongMetadata
from fixtures.v15_configs import golden_dit_config

C = 64


def _silence(frames: int = 2000) -> torch.Tensor:
    """A stand-in silence latent whose every frame is distinct (value = frame index + channel / 100)."""
    return (torch.arange(frames, dtype=torch.float32)[None, None] + torch.arange(C)[None, :, None] / 100).clone()


def _song(frames: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, C, frames, generator=torch.Generator().manual_seed(seed)) - 50  # far from silence


# --------------------------------------------------------------------------------------- instructions, variants


def test_instructions_are_the_originals():
    assert task_instruction("text2music") == "Fill the audio semantic mask based on the given conditions:"
    assert task_instruction("cover") == "Generate audio semantic tokens based on the given conditions:"
    assert task_instruction("repaint") == "Repaint the mask area based on the given conditions:"
    assert task_instruction("extend") == "Repaint the mask area based on the given conditions:"
    assert task_instruction("extract", "backing_vocals") == "Extract the BACKING_VOCALS track from the audio:"
    assert task_instruction("lego", "guitar") == "Generate the GUITAR track based on the audio context:"
    assert task_instruction("complete", tracks=["drums", "bass"]) == "Complete the input track with DRUMS | BASS:"
    assert task_instruction("complete") == "Complete the input track:"
    prompt = dit_caption_prompt("rock", SongMetadata(bpm=120, duration=30), task_instruction("lego", "drums"))
    assert prompt.startswith("# Instruction\nGenerate the DRUMS track based on the audio context:\n\n# Caption\nrock")


def test_bad_task_inputs_name_the_fix():
    with pytest.raises(ValueError, match="unknown track 'kazoo'.*vocals, backing_vocals"):
        task_instruction("extract", "kazoo")
    with pytest.raises(ValueError, match="lego runs on the base model only .*load a base model"):
        check_variant("lego", "turbo")
    with pytest.raises(ValueError, match="extract runs on the base model only"):
        plan_extract(_song(50), _silence(), "vocals", "sft")
    with pytest.raises(ValueError, match="unknown ACE-Step 1.5 model variant 'xl'"):
        check_variant("cover", "xl")
    for task in ("text2music", "cover", "repaint", "extend"):
        check_variant(task, "turbo")
    with pytest.raises(ValueError, match=r"ACE-Step v1 latent .*ACE-Step 1.5 VAE"):
        plan_cover(torch.zeros(1, 8, 16, 40), _silence())
    with pytest.raises(ValueError, match=r"\[batch, 64, frames\]"):
        plan_cover(torch.zeros(1, 32, 40), _silence())
    with pytest.raises(ValueError, match="pass silence\\(300\\)"):
        plan_repaint(_song(300), _silence(100), 1, 2)


def test_seconds_to_frames_as_the_original():
    assert [seconds_to_frame(s) for s in (0, 0.039, 0.04, 10.0, 12.345, 61.27)] == [0, 0, 1, 250, 308, 1531]


# ------------------------------------------------------------------------------------------------- task plans


def test_text2music_and_cover_plans():
    silence = _silence()
    plan = plan_text2music(silence, 120, batch=2)
    assert torch.equal(plan.source, silence[..., :120].expand(2, -1, -1))
    assert plan.chunk_mask.shape == (2, 1, 120) and bool((plan.chunk_mask == 1).all())
    assert plan.is_covers.tolist() == [False, False] and plan.region is None
    song = _song(90, batch=2)
    cover = plan_cover(song, silence)
    assert cover.is_covers.tolist() == [True, True] and torch.equal(cover.source, song)
    assert cover.metas_duration == 90 / 25
    phase = cover.text2music_phase()
    assert phase.instruction == task_instruction("text2music") and phase.is_covers.tolist() == [False, False]
    assert torch.equal(phase.source, silence[..., :90].expand(2, -1, -1))
    assert torch.equal(phase.chunk_mask, cover.chunk_mask)


def test_repaint_plan_inside_the_song():
    silence, song = _silence(), _song(500)
    plan = plan_repaint(song, silence, 4.0, 10.0)  # frames 100..250
    region = torch.zeros(500, dtype=torch.bool)
    region[100:250] = True
    assert torch.equal(plan.region[0], region)
    assert torch.equal(plan.chunk_mask[0, 0], region.float())
    expected = song.clone()
    expected[..., 100:250] = silence[..., 100:250]  # the silence latent position by position
    assert torch.equal(plan.source, expected)
    assert torch.equal(plan.clean, song) and plan.is_covers.tolist() == [False]
    assert plan.instruction == "Repaint the mask area based on the given conditions:"
    assert plan.metas_duration == 20.0 and plan.head is None and plan.tail is None
    to_end = plan_repaint(song, silence, 18.0, -1)  # -1: to the end
    assert to_end.region[0].nonzero().flatten().tolist() == list(range(450, 500))


def test_repaint_outpainting_pads_with_silence():
    silence, song = _silence(), _song(250)  # 10 s
    plan = plan_repaint(song, silence, -2.0, 4.0)  # 2 s before the song
    assert plan.frames == 300
    assert torch.equal(plan.clean[..., :50], silence[..., :50]) and torch.equal(plan.clean[..., 50:], song)
    assert plan.region[0].nonzero().flatten().tolist() == list(range(0, 150))
    right = plan_repaint(song, silence, 8.0, 13.0)
    assert right.frames == 325 and torch.equal(right.clean[..., 250:], silence[..., 250:325])
    assert right.region[0].nonzero().flatten().tolist() == list(range(200, 325))
    with pytest.raises(ValueError, match="outside the song .*use extend"):
        plan_repaint(song, silence, 12.0, 14.0)
    with pytest.raises(ValueError, match="is empty"):
        plan_repaint(song, silence, 5.0, 5.0)


def test_extend_plan_one_side_both_sides_and_window():
    silence, song = _silence(3000), _song(250)
    right = plan_extend(song, silence, right_seconds=4.0)
    assert right.frames == 350 and torch.equal(right.clean[..., :250], song)
    assert right.region[0].nonzero().flatten().tolist() == list(range(250, 350))
    both = plan_extend(song, silence, 2.0, 1.0)
    assert both.region[0].nonzero().flatten().tolist() == list(range(0, 50)) + list(range(300, 325))
    assert torch.equal(both.source[..., 50:300], song)
    windowed = plan_extend(song, silence, right_seconds=4.0, window_frames=200)
    assert windowed.frames == 200 and torch.equal(windowed.head, song[..., :150])
    assert windowed.region[0].nonzero().flatten().tolist() == list(range(100, 200))
    assert torch.equal(windowed.source[..., 100:], silence[..., 250:350])  # position in the whole song
    x = torch.randn(1, C, 200)
    assert torch.equal(windowed.finish(x), torch.cat([song[..., :150], x], dim=-1))
    with pytest.raises(ValueError, match="on both sides: extend one side at a time"):
        plan_extend(song, silence, 2.0, 2.0, window_frames=300)
    with pytest.raises(ValueError, match="nothing to extend"):
        plan_extend(song, silence, 0.01, 0.0)


def test_lego_extract_complete_plans():
    silence, song = _silence(), _song(200)
    whole = plan_lego(song, silence, "drums", "base")
    assert whole.region is None and bool((whole.chunk_mask == 1).all()) and torch.equal(whole.source, song)
    part = plan_lego(song, silence, "drums", "base", 2.0, 4.0)
    assert part.region[0].nonzero().flatten().tolist() == list(range(50, 100))
    assert torch.equal(part.source, song)  # the song stays the source inside the range
    with pytest.raises(ValueError, match="must lie inside the song"):
        plan_lego(song, silence, "drums", "base", -1.0, 4.0)
    extract = plan_extract(song, silence, "vocals", "base")
    assert extract.instruction == "Extract the VOCALS track from the audio:" and extract.is_covers.tolist() == [False]
    assert torch.equal(extract.source, song) and extract.region is None
    complete = plan_complete(song, silence, ["strings"], "base")
    assert complete.instruction == "Complete the input track with STRINGS:"


# ------------------------------------------------------------------------------------------------- conditions


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = AceStep15(golden_dit_config()).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.05)
    return m


def _texts(batch: int):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 7, 1024, generator=g), torch.randn(batch, 9, 1024, generator=g)


@torch.no_grad()
def test_condition_equals_encode_condition_where_both_apply(model):
    """With the source as timbre too (ComfyUI's single input), our condition is encode_condition's exactly."""
    text, lyrics = _texts(2)
    song = _song(40, batch=2) / 50
    plan = plan_repaint(song, _silence(), 0.4, 1.0)
    ours = encode_task_condition(model, plan, text, lyrics, timbre=plan.source)
    theirs = model.encode_condition(text, lyrics, plan.source, 40, is_covers=False, chunk_mask=plan.chunk_mask)
    assert torch.equal(ours.memory, theirs.memory) and torch.equal(ours.context_latents, theirs.context_latents)
    for (k1, v1), (k2, v2) in zip(ours.cross_kv, theirs.cross_kv):
        assert torch.equal(k1, k2) and torch.equal(v1, v2)
    null = encode_task_condition(model, plan, text, lyrics, timbre=plan.source, replace_with_null=True)
    assert torch.equal(null.memory, model.null_condition_emb.expand_as(null.memory))


@torch.no_grad()
def test_cover_hints_pad_with_the_silence_head(model):
    silence, song = _silence(), _song(42) / 50  # 42 frames: the last 5 Hz window is padded by 3 frames
    plan = plan_cover(song, silence)
    context = context_latents(model, plan)
    padded = torch.cat([song, silence[..., :3]], dim=-1).movedim(1, -1)
    expected = model.lm_hints(42, refer_latents=padded)
    assert torch.equal(context[..., :C], expected)
    assert torch.equal(context[..., C:], torch.ones(1, 42, C))
    codes = torch.tensor([[5, 60000, 123]])
    from_codes = plan_cover_codes(codes, silence, frames=20)
    hints = context_latents(model, from_codes)[..., :C]
    assert torch.equal(hints[:, :15], model.lm_hints(15, audio_codes=codes))
    assert torch.equal(hints[:, 15:], silence[..., :5].movedim(1, -1))  # silence from its first frame


def test_timbre_reference():
    timbre, order = no_timbre_reference(_silence(), 3)
    assert timbre.shape == (3, C, TIMBRE_FRAMES) and torch.equal(timbre[2], _silence()[0, :, :TIMBRE_FRAMES])
    assert order.tolist() == [0, 1, 2]
    wave = torch.linspace(-0.5, 0.5, 2 * 48000 * 50).reshape(2, -1)  # 50 s
    rng, check = random.Random(7), random.Random(7)
    cut = timbre_reference_audio(wave, rng)
    third, piece = wave.shape[1] // 3, 480000
    starts = [check.randint(0, third - piece), third + check.randint(0, third - piece),
              2 * third + check.randint(0, wave.shape[1] - 2 * third - piece)]
    assert torch.equal(cut, torch.cat([wave[:, s:s + piece] for s in starts], dim=-1))
    short = timbre_reference_audio(torch.full((2, 48000 * 7), 0.25), random.Random(1))
    assert short.shape == (2, 30 * 48000)
    assert timbre_reference_audio(torch.zeros(2, 48000), random.Random(1)) is None
    with pytest.raises(ValueError, match="stereo .*resample it and make it stereo"):
        timbre_reference_audio(torch.zeros(1, 48000), random.Random(1))


# ------------------------------------------------------------------------------------------------- schedules


def test_schedules():
    assert base_sigmas(4, 3.0).tolist() == [1.0, 0.8999999761581421, 0.75, 0.5, 0.0]
    assert torch.equal(base_sigmas(5), torch.linspace(1, 0, 6))
    assert turbo_sigmas(3.0).tolist() == pytest.approx([1.0, 0.9545454545454546, 0.9, 0.8333333333333334, 0.75,
                                                        0.6428571428571429, 0.5, 0.3, 0.0])
    assert torch.equal(turbo_sigmas(2.6), turbo_sigmas(3.0)) and torch.equal(turbo_sigmas(1.4), turbo_sigmas(1.0))
    mapped = turbo_sigmas(timesteps=[0.97, 0.76, 0.615, 0.5, 0.395, 0.28, 0.18, 0.085, 0])
    assert mapped.tolist() == pytest.approx([0.9545454545454546, 0.7692307692307693, 0.625, 0.5, 0.4, 0.3,
                                             0.2222222222222222, 0.125, 0.0])
    assert len(sampling_sigmas("turbo", steps=50)) == 9
    with pytest.raises(ValueError, match="turbo option"):
        sampling_sigmas("base", timesteps=[1.0, 0.5])


def test_seed_noise_is_the_originals_draw():
    noise = seed_noise([3, 4], C, 30)
    for row, seed in enumerate((3, 4)):
        drawn = torch.randn(1, 30, C, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(noise[row], drawn[0].T)
    mixed = retake_noise(noise[:1], noise[1:], 0.0)  # variations: v1's retake rule over 1.5 noise
    assert torch.equal(mixed, noise[:1])


def test_cover_switch_and_cover_noise_start():
    sigmas = turbo_sigmas(3.0)
    assert [cover_switch_step(8, s) for s in (1.0, 0.5, 0.2, 0.0)] == [8, 4, 1, 0]
    assert cover_switch_sigma(sigmas, 1.0) is None
    assert cover_switch_sigma(sigmas, 0.5) == pytest.approx(0.75)
    source, noise = torch.full((1, C, 4), 2.0), torch.full((1, C, 4), -1.0)
    start, rest = cover_noise_start(source, noise, sigmas, 0.3)  # 1 - 0.3 = 0.7: nearest level 0.75 (of 0.6429)
    assert rest.tolist() == pytest.approx(sigmas[4:].tolist())
    assert torch.allclose(start, torch.full_like(source, 0.75 * -1.0 + 0.25 * 2.0))
    same, all_levels = cover_noise_start(source, noise, sigmas, 0.0)
    assert same is noise and all_levels is sigmas


# ------------------------------------------------------------------------------------------------- sampling


def _linear_velocity(target: torch.Tensor):
    calls = []

    def velocity(x, t, i, cover):
        calls.append((i, cover, x.clone()))
        return (x - target) / t[:, None, None].clamp_min(1e-3)  # the exact flow towards `target`

    return velocity, calls


def test_sample_task_loop_and_cover_switch():
    sigmas = base_sigmas(6, 3.0)
    noise, target = seed_noise([1], C, 10), torch.randn(1, C, 10, generator=torch.Generator().manual_seed(2))
    velocity, calls = _linear_velocity(target)
    out = sample_task(velocity, noise, sigmas, cover_switch=cover_switch_step(6, 0.5))
    x = noise
    for i in range(6):  # hand-written Euler
        x = x - (x - target) / sigmas[i].clamp_min(1e-3) * (sigmas[i] - sigmas[i + 1])
    assert torch.equal(out, x)
    assert [c[1] for c in calls] == [True, True, True, False, False, False]


def test_repaint_merge_keeps_the_outside():
    sigmas = turbo_sigmas(3.0)
    silence, song = _silence(), _song(60)
    plan = plan_repaint(song, silence, 1.0, 1.6)  # frames 25..40
    noise = seed_noise([5], C, 60)
    target = torch.randn(1, C, 60, generator=torch.Generator().manual_seed(6))
    for crossfade in (0, 3, 10):
        merge = RepaintMerge(plan.region, plan.clean, noise, crossfade_frames=crossfade)
        velocity, calls = _linear_velocity(target)
        out = sample_task(velocity, noise, sigmas, merge=merge)
        outside = torch.ones(60, dtype=torch.bool)
        outside[max(0, 25 - crossfade):40 + crossfade] = False
        assert torch.equal(out[..., outside], song[..., outside])  # bit for bit
        assert not torch.equal(out[..., 25:40], song[..., 25:40])
        # injection after steps 0..3 (round(0.5 * 8)): the kept frames the next call sees are the re-noised song
        for i, cover, x in calls[1:]:
            kept = x[..., ~plan.region[0]]
            renoised = (sigmas[i] * noise + (1 - sigmas[i]) * song)[..., ~plan.region[0]]
            assert torch.equal(kept, renoised) == (i <= 4)
    weights = RepaintMerge(plan.region, plan.clean, noise, crossfade_frames=3).weights()[0]
    assert weights[21:44].tolist() == [0, .25, .5, .75] + [1] * 15 + [.75, .5, .25, 0]


@torch.no_grad()
def test_repaint_on_the_reduced_model(model):
    """A whole repaint through the DiT: outside the range plus crossfade the result is the song bit for bit."""
    silence, song = _silence(), _song(30) / 50
    plan = plan_repaint(song, silence, 0.4, 0.8)  # frames 10..20
    text, lyrics = _texts(1)
    timbre, order = no_timbre_reference(silence, 1)
    condition = encode_task_condition(model, plan, text, lyrics, timbre, order)
    noise = seed_noise([9], C, 30)

    def velocity(x, t, i, cover):
        return model.decode(x, t, condition)

    out = plan.finish(sample_task(velocity, noise, turbo_sigmas(3.0),
                                  merge=RepaintMerge(plan.region, plan.clean, noise, crossfade_frames=2)))
    assert torch.equal(out[..., :8], song[..., :8]) and torch.equal(out[..., 22:], song[..., 22:])
    assert torch.isfinite(out).all() and not torch.equal(out[..., 10:20], song[..., 10:20])
