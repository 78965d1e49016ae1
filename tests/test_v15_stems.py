"""ACE-Step 1.5 stem nodes (nodes/v15_stems.py: extract, lego, complete; comfy_bridge/v15_stems.py) on the tiny
random-weight DiT and text encoder, in process: each node's latent equals the core rules computed by hand on the same
network (plan_extract / plan_lego / plan_complete, the DiT condition with the silence timbre, `sample_task` over the
base schedule with CFG, `RepaintMerge` for a partial lego range), the kept part of a partial lego bit for bit, and
the refusals (a turbo / sft MODEL naming the base files, unknown track names listing the known ones, v1 inputs).
The workflows run through the server in test_workflows.py and the browser."""
import pytest
import torch

from ace_step.loading.v15_layout import VariantGuess
from ace_step.sampling.v15_sampling import RepaintMerge, sampling_sigmas, seed_noise
from ace_step.sampling.v15_tasks import TRACK_NAMES, plan_complete, plan_extract, plan_lego
from test_v15_editing import FRAMES, SEED, clip, positive, reference, song  # noqa: F401
from test_v15_nodes import (make_model, one_thread, pack_nodes, plain_dit, silence, text_encoder,  # noqa: F401
                            tokenizers)

STEPS, SHIFT, CFG = 3, 1.0, 2.5


@pytest.fixture(scope="module")
def model(plain_dit, silence):
    """The tiny DiT as a MODEL that its name states to be a base model."""
    m = make_model(plain_dit, silence)
    m.model.variant_guess = VariantGuess("base", name="acestep_v1.5_tiny_demo_base.safetensors")
    return m


def stems():
    return pack_nodes("v15_stems")


def expected(model, text_encoder, tokenizers, positive, plan, merge=False):
    noise = seed_noise([SEED], 64, plan.frames)
    sigmas = sampling_sigmas("base", STEPS, SHIFT)
    m = RepaintMerge(plan.region, plan.clean, noise) if merge else None
    return reference(model, text_encoder, tokenizers, positive, plan, noise, sigmas, merge=m, cfg=CFG)


def test_extract_equals_the_core(model, clip, positive, song, text_encoder, tokenizers):
    out = stems().Extract15.execute(model=model, clip=clip, positive=positive, source=song, track="drums", seed=SEED,
                                    steps=STEPS, shift=SHIFT, cfg=CFG).result[0]["samples"]
    plan = plan_extract(song["samples"], model.model.silence(FRAMES, "cpu"), "drums", "base")
    assert plan.instruction == "Extract the DRUMS track from the audio:"
    assert out.shape == song["samples"].shape and out.dtype == torch.float32
    assert torch.equal(out, expected(model, text_encoder, tokenizers, positive, plan))


def test_complete_equals_the_core_with_several_tracks(model, clip, positive, song, text_encoder, tokenizers):
    out = stems().Complete15.execute(model=model, clip=clip, positive=positive, source=song, tracks="Drums, bass",
                                     seed=SEED, steps=STEPS, shift=SHIFT, cfg=CFG).result[0]["samples"]
    plan = plan_complete(song["samples"], model.model.silence(FRAMES, "cpu"), ["drums", "bass"], "base")
    assert plan.instruction == "Complete the input track with DRUMS | BASS:"
    assert torch.equal(out, expected(model, text_encoder, tokenizers, positive, plan))
    assert stems().parse_tracks("keyboard | strings,strings  synth") == ["keyboard", "strings", "synth"]
    assert stems().parse_tracks(" ") == []  # the original's generic "Complete the input track:"


def test_lego_whole_song_and_partial_range(model, clip, positive, song, text_encoder, tokenizers):
    node, src = stems().Lego15, song["samples"]
    args = dict(model=model, clip=clip, positive=positive, source=song, track="guitar", crossfade_frames=10,
                injection_ratio=0.5, seed=SEED, steps=STEPS, shift=SHIFT, cfg=CFG)
    quiet = model.model.silence(FRAMES, "cpu")
    whole = node.execute(start_seconds=0.0, end_seconds=-1.0, **args).result[0]["samples"]
    plan = plan_lego(src, quiet, "guitar", "base")
    assert plan.region is None and plan.instruction == "Generate the GUITAR track based on the audio context:"
    assert torch.equal(whole, expected(model, text_encoder, tokenizers, positive, plan))
    part = node.execute(start_seconds=4.0, end_seconds=6.0, **args).result[0]["samples"]
    plan = plan_lego(src, quiet, "guitar", "base", 4.0, 6.0)
    assert torch.equal(plan.source, src)  # the song stays the source inside the range too
    assert torch.equal(part, expected(model, text_encoder, tokenizers, positive, plan, merge=True))
    a, e = 100, 150  # int(4 * 25), int(6 * 25)
    assert torch.equal(part[..., :a - 10], src[..., :a - 10]) and torch.equal(part[..., e + 10:], src[..., e + 10:])
    assert not torch.equal(part[..., a:e], src[..., a:e])
    with pytest.raises(ValueError, match="must lie inside the song"):
        node.execute(start_seconds=8.0, end_seconds=12.0, **args)


def test_base_only_unknown_tracks_and_v1_inputs_refused(plain_dit, silence, clip, positive, song):
    node = stems().Extract15
    args = dict(clip=clip, positive=positive, source=song, track="vocals", seed=SEED, steps=STEPS, shift=SHIFT,
                cfg=CFG)
    for variant in ("turbo", "sft"):
        other = make_model(plain_dit, silence)
        other.model.variant_guess = VariantGuess(variant, name=f"acestep_v1.5_{variant}.safetensors")
        with pytest.raises(ValueError, match=rf"extract runs on the base model only .*acestep_v1.5_{variant}"
                                             r".safetensors is the .* model: load acestep_v1.5_base.safetensors"):
            node.execute(model=other, **args)
    base = make_model(plain_dit, silence)
    base.model.variant_guess = VariantGuess("base", name="acestep_v1.5_base.safetensors")
    with pytest.raises(ValueError, match="unknown track 'cowbell': ACE-Step 1.5 knows " + ", ".join(TRACK_NAMES)):
        stems().Complete15.execute(model=base, clip=clip, positive=positive, source=song, tracks="drums, cowbell",
                                   seed=SEED, steps=STEPS, shift=SHIFT, cfg=CFG)
    with pytest.raises(ValueError, match="track 'cowbell' is not one of"):
        node.execute(model=base, **{**args, "track": "cowbell"})
    with pytest.raises(ValueError, match="ACE-Step v1 song latent"):
        node.execute(model=base, **{**args, "source": {"samples": torch.zeros(1, 8, 16, 40)}})
    with pytest.raises(TypeError, match="not an ACE-Step 1.5 MODEL"):
        node.execute(model=object(), **args)
