"""ACE-Step 1.5 editing nodes (nodes/v15_editing.py, comfy_bridge/v15_tasks.py) on the tiny random-weight DiT and text
encoder, in process: each node's latent against the core rules computed by hand on the same network (plan, DiT
condition, `sample_task`, `RepaintMerge`), the kept parts bit for bit, the cover switch at `cover_switch_step`,
retake noise at variance 0 and 1, and the refusals. The workflows run through the server in test_workflows.py and
the browser."""
import importlib

import pytest
import torch

from ace_step.sampling.editing import retake_noise
from ace_step.sampling.v15_condition import encode_task_condition, no_timbre_reference
from ace_step.sampling.v15_sampling import RepaintMerge, cover_switch_step, sample_task, sampling_sigmas, seed_noise
from ace_step.sampling.v15_tasks import plan_cover, plan_extend, plan_repaint
from ace_step.text.v15_prompts import SongMetadata, dit_caption_prompt, text_encoder_ids
from pack_inprocess import PACKAGE
from test_v15_nodes import (LYRICS, TAGS, clip_of, make_model, one_thread, pack_nodes, plain_dit,  # noqa: F401
                            silence, text_encoder, tokenizers)

FRAMES = 260  # 10.4 s: the metas say "duration: 10 seconds"
SEED = 11


@pytest.fixture(scope="module")
def model(plain_dit, silence):
    return make_model(plain_dit, silence)


@pytest.fixture(scope="module")
def clip(text_encoder, tokenizers):
    return clip_of(text_encoder, tokenizers)


@pytest.fixture(scope="module")
def positive(clip):
    return clip.encode_from_tokens_scheduled(clip.tokenize(TAGS, lyrics=LYRICS, bpm=120, duration=30.0,
                                                           timesignature="4", language="en", keyscale="F# minor",
                                                           generate_audio_codes=False))


@pytest.fixture(scope="module")
def song():
    return {"samples": torch.randn(1, 64, FRAMES, generator=torch.Generator().manual_seed(3)), "type": "audio"}


def editing():
    return pack_nodes("v15_editing")


def reference(model, text_encoder, tokenizers, positive, plan, noise, sigmas, switch=None, merge=None, cfg=1.0):
    """The core rules by hand: the caption prompt with the plan's instruction and duration, the DiT condition
    (silence timbre), Euler over `sigmas` with CFG against the null condition."""
    dm = model.model.diffusion_model
    meta = positive[0][1]["ace_step15_metadata"]
    lyrics = positive[0][1]["conditioning_lyrics"]

    def condition(p, null):
        metas = SongMetadata(bpm=meta.bpm, duration=p.metas_duration, keyscale=meta.keyscale,
                             timesignature=meta.timesignature, language=meta.language)
        ids = text_encoder_ids(tokenizers[0], dit_caption_prompt(TAGS, metas, p.instruction), 256)
        with torch.no_grad():
            text = text_encoder(torch.tensor([ids]))
            timbre, order = no_timbre_reference(model.model.silence(750, "cpu"), 1)
            return encode_task_condition(dm, p, text, lyrics, timbre, order, replace_with_null=null)

    conds = {True: (condition(plan, False), condition(plan, True))}
    if switch is not None:
        conds[False] = (condition(plan.text2music_phase(), False), condition(plan.text2music_phase(), True))

    def velocity(x, t, i, cover):
        c, u = conds[cover]
        with torch.no_grad():
            v = dm.decode(x, t, c)
            return v if cfg == 1.0 else dm.decode(x, t, u) + cfg * (v - dm.decode(x, t, u))

    return sample_task(velocity, noise, sigmas, cover_switch=switch, merge=merge)


def test_repaint_equals_the_core_and_keeps_the_outside_bit_for_bit(model, clip, positive, song, text_encoder,
                                                                  tokenizers):
    out = editing().Repaint15.execute(model, clip, positive, song, 4.0, 6.0, 10, 0.5, SEED, "turbo", 8, 3.0,
                                      1.0).result[0]["samples"]
    src = song["samples"]
    assert out.shape == src.shape and out.dtype == torch.float32
    a, e = 100, 150  # int(4 * 25), int(6 * 25)
    assert torch.equal(out[..., :a - 10], src[..., :a - 10]) and torch.equal(out[..., e + 10:], src[..., e + 10:])
    assert not torch.equal(out[..., a:e], src[..., a:e])
    plan = plan_repaint(src, model.model.silence(FRAMES, "cpu"), 4.0, 6.0)
    noise = seed_noise([SEED], 64, FRAMES)
    expected = reference(model, text_encoder, tokenizers, positive, plan, noise, sampling_sigmas("turbo"),
                         merge=RepaintMerge(plan.region, plan.clean, noise))
    assert torch.equal(out, expected)
    # crossfade 0: every frame outside the range is the source; -1 = to the end
    sharp = editing().Repaint15.execute(model, clip, positive, song, 8.0, -1.0, 0, 0.5, SEED, "turbo", 8, 3.0,
                                        1.0).result[0]["samples"]
    assert torch.equal(sharp[..., :200], src[..., :200]) and not torch.equal(sharp[..., 200:], src[..., 200:])


def test_repaint_refuses_bad_ranges_before_sampling(model, clip, positive, song):
    node = editing().Repaint15
    with pytest.raises(ValueError, match="outside the song .*use extend"):
        node.execute(model, clip, positive, song, 11.0, 12.0, 10, 0.5, SEED, "turbo", 8, 3.0, 1.0)
    with pytest.raises(ValueError, match="end must be after start"):
        node.execute(model, clip, positive, song, 5.0, 4.0, 10, 0.5, SEED, "turbo", 8, 3.0, 1.0)
    with pytest.raises(ValueError, match="ACE-Step v1 song latent"):
        node.execute(model, clip, positive, {"samples": torch.zeros(1, 8, 16, 40)}, 1.0, 2.0, 10, 0.5, SEED,
                     "turbo", 8, 3.0, 1.0)
    with pytest.raises(TypeError, match="not an ACE-Step 1.5 MODEL .*Load ACE-Step 1.5 Checkpoint"):
        node.execute(object(), clip, positive, song, 1.0, 2.0, 10, 0.5, SEED, "turbo", 8, 3.0, 1.0)
    v1_clip = object.__new__(importlib.import_module(f"{PACKAGE}.comfy_bridge.models").AceStepClip)
    with pytest.raises(TypeError, match="ACE-Step v1 CLIP"):
        node.execute(model, v1_clip, positive, song, 1.0, 2.0, 10, 0.5, SEED, "turbo", 8, 3.0, 1.0)
    bare = [[positive[0][0], {"conditioning_lyrics": positive[0][1]["conditioning_lyrics"]}]]
    with pytest.raises(ValueError, match="connect its output"):
        node.execute(model, clip, bare, song, 1.0, 2.0, 10, 0.5, SEED, "turbo", 8, 3.0, 1.0)


def test_cover_switches_to_text2music_at_cover_switch_step(model, clip, positive, song, text_encoder, tokenizers,
                                                           monkeypatch):
    """sft schedule, 6 steps, strength 0.5: steps 0-2 see the song's LM hints, steps 3-5 the silence source; CFG 3."""
    dm = model.model.diffusion_model
    seen, decode = [], type(dm).decode

    def recording(self, x, t, condition, **kw):
        seen.append(condition.context_latents[..., :64].clone())
        return decode(self, x, t, condition, **kw)

    monkeypatch.setattr(type(dm), "decode", recording)
    out = editing().Cover15.execute(model, clip, positive, song, 0.5, SEED, "sft", 6, 1.0, 3.0).result[0]["samples"]
    monkeypatch.undo()
    plan = plan_cover(song["samples"], model.model.silence(FRAMES, "cpu"))
    quiet = plan.text2music_phase().source.movedim(1, -1)
    per_step = seen[::2]  # conditional, then unconditional pass
    switched = [torch.equal(s, quiet) for s in per_step]
    assert switched == [False] * 3 + [True] * 3 and switched.index(True) == cover_switch_step(6, 0.5)
    sigmas = sampling_sigmas("sft", 6, 1.0)
    expected = reference(model, text_encoder, tokenizers, positive, plan, seed_noise([SEED], 64, FRAMES), sigmas,
                         switch=cover_switch_step(6, 0.5), cfg=3.0)
    assert torch.equal(out, expected)


def test_extend_keeps_the_source_bit_for_bit_also_in_windows(model, clip, positive, song, text_encoder, tokenizers):
    src = song["samples"]
    out = editing().Extend15.execute(model, clip, positive, song, 1.0, 2.0, 600.0, 0, 0.5, SEED, "turbo", 8, 3.0,
                                     1.0).result[0]["samples"]
    assert out.shape[-1] == 25 + FRAMES + 50 and torch.equal(out[..., 25:25 + FRAMES], src)
    plan = plan_extend(src, model.model.silence(FRAMES + 75, "cpu"), 1.0, 2.0)
    noise = seed_noise([SEED], 64, plan.frames)
    expected = reference(model, text_encoder, tokenizers, positive, plan, noise, sampling_sigmas("turbo"),
                         merge=RepaintMerge(plan.region, plan.clean, noise, crossfade_frames=0))
    assert torch.equal(out, expected)
    # a 4 s window: the DiT samples 100 frames next to the new 2 s, the rest of the song is put back
    windowed = editing().Extend15.execute(model, clip, positive, song, 0.0, 2.0, 4.0, 0, 0.5, SEED, "turbo", 8, 3.0,
                                          1.0).result[0]["samples"]
    assert windowed.shape[-1] == FRAMES + 50 and torch.equal(windowed[..., :FRAMES], src)
    with pytest.raises(ValueError, match="one side at a time"):
        editing().Extend15.execute(model, clip, positive, song, 2.0, 2.0, 4.0, 0, 0.5, SEED, "turbo", 8, 3.0, 1.0)


def test_retake_noise_mixes_the_seed_noise_with_new_noise(model, clip, positive, song):
    node = editing().RetakeNoise15
    latent = {"samples": torch.zeros(2, 64, 30)}
    same = node.execute(5, 9, 0.0).result[0].generate_noise(latent)
    assert torch.equal(same, seed_noise([5, 6], 64, 30))
    new = node.execute(5, 9, 1.0).result[0].generate_noise(latent)
    assert (new - seed_noise([9, 10], 64, 30)).abs().max() < 1e-6  # cos(π/2) in float32 is -4.4e-8, not 0
    mixed = node.execute(5, 9, 0.3).result[0].generate_noise(latent)
    assert torch.equal(mixed, retake_noise(seed_noise([5, 6], 64, 30), seed_noise([9, 10], 64, 30), 0.3))
    with pytest.raises(ValueError, match="ACE-Step v1 song latent"):
        node.execute(5, 9, 0.3).result[0].generate_noise({"samples": torch.zeros(1, 8, 16, 30)})
    # as the tasks' noise input: variance 0 is the seed's run
    cover = editing().Cover15
    by_seed = cover.execute(model, clip, positive, song, 1.0, 5, "turbo", 8, 3.0, 1.0).result[0]["samples"]
    by_noise = cover.execute(model, clip, positive, song, 1.0, 0, "turbo", 8, 3.0, 1.0,
                             noise=node.execute(5, 9, 0.0).result[0]).result[0]["samples"]
    assert torch.equal(by_seed, by_noise)
