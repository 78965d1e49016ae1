"""The original ACE-Step pipeline's sampling inside ComfyUI (nodes/original_sampling.py, nodes/sampler_nodes.py) on
the tiny checkpoint: the high-level node against the ace_step building blocks composed by hand (exact), the model
calls it makes, the ERG conditions, SamplerCustomAdvanced with the pack's SIGMAS/SAMPLER/GUIDER against the
high-level node, per-item seeds, random durations, the MODEL's shift and weight patches, and the workflows with a
batch of seeds through the real server."""
import copy
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

from ace_step.sampling import erg, flow_steps, schedules
from ace_step.sampling.guidance import GuidanceSchedule, Guider
from ace_step.models.v1.umt5 import encode_token_weights, erg_tag_q_scale
from fixtures.erg_hooks import umt5_q_modules
from comfy_harness import run_prompt
from measure import OUTPUT_DIR, report
from pack_inprocess import PACKAGE, import_pack
from workflow_prompts import ROOT, prepare

TAGS = "synth pop, female vocals, driving bass, 120 bpm"
LYRICS = "[verse]\nNeon lights across the water\nWe keep dancing through the night\n\n[chorus]\nHold on"
SECONDS = 3.0
FRAMES = int(SECONDS * 44100 / 4096)
NODE_DEFAULTS = dict(seeds="7", duration=SECONDS, steps=6, scheduler="euler", cfg_type="apg", guidance_scale=15.0,
                     omega_scale=10.0, guidance_interval=0.5, guidance_interval_decay=0.0, min_guidance_scale=3.0,
                     use_erg_tag=True, use_erg_lyric=True, use_erg_diffusion=True, guidance_scale_text=0.0,
                     guidance_scale_lyric=0.0, oss_steps="")


def pack_module(name: str):
    import_pack()
    return sys.modules[f"{PACKAGE}.{name}"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from fixtures.tiny_checkpoint import write_tiny_checkpoint

    model, clip, _ = pack_module("comfy_bridge.models").load_checkpoint(
        write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors"))
    positive = pack_module("nodes.text").TextEncode.execute(clip, TAGS, LYRICS, 1.0).result[0]
    return SimpleNamespace(model=model, clip=clip, positive=positive, tokens=clip.tokenize(TAGS, lyrics=LYRICS),
                           dm=model.model.diffusion_model, nodes=pack_module("nodes.sampler_nodes"),
                           orig=pack_module("comfy_bridge.original_sampling"))


def run_node(t, model=None, latent=None, **settings):
    out = t.nodes.OriginalSampler.execute(model=model or t.model, positive=t.positive, latent=latent,
                                          **{**NODE_DEFAULTS, **settings})
    return out.result[0]["samples"], out.result[1]


@pytest.fixture
def decode_calls(tiny, monkeypatch):
    """Every transformer pass: (timestep, latent, whether the diffusion-ERG hooks are on)."""
    calls = []
    decode = tiny.dm.decode
    hooked = [tiny.dm.get_submodule(n) for n in erg.diffusion_modules(tiny.dm.config.num_layers)]

    def spy(x, timestep, *args, **kwargs):
        calls.append((float(torch.as_tensor(timestep).reshape(-1)[0]), x.clone(),
                      all(m._forward_hooks for m in hooked)))
        return decode(x, timestep, *args, **kwargs)

    monkeypatch.setattr(tiny.dm, "decode", spy)
    return calls


# ------------------------------------------------------------------------------------------------ the loop
def by_hand(t, seeds, steps, scheduler, cfg_type, scale, omega, interval=0.5, decay=0.0, min_scale=3.0,
            scale_text=0.0, scale_lyric=0.0):
    """The original text2music loop (ace-step/ACE-Step `acestep/pipeline_ace_step.py`) composed directly from the ace_step building blocks,
    with ERG on tags, lyrics and diffusion."""
    dm, te = t.dm, t.clip.text_encoder
    text = encode_token_weights(te, t.tokens["umt5base"])
    erg_text = encode_token_weights(te, t.tokens["umt5base"], q_scale=erg_tag_q_scale(te.config.num_layers))
    ids = torch.tensor([t.tokens["lyrics"]])
    with torch.no_grad():
        cond, _ = dm.encode_condition(text, ids)
        with erg.scaled_outputs(dm, erg.lyric_modules(dm.config.lyric_encoder_blocks)):
            uncond, _ = dm.encode_condition(erg_text, ids)
            text_only, _ = dm.encode_condition(text, ids)
    cond, uncond, text_only = (c.expand(len(seeds), -1, -1) for c in (cond, uncond, text_only))
    guider = Guider(GuidanceSchedule(steps, scale, interval, decay, min_scale), cfg_type, scale_text, scale_lyric)

    def velocity(x, timestep, i):
        def unconditional():
            with erg.scaled_outputs(dm, erg.diffusion_modules(dm.config.num_layers)):
                return dm.decode(x, timestep, uncond)
        return guider(i, lambda: dm.decode(x, timestep, cond), unconditional,
                      lambda: dm.decode(x, timestep, text_only))

    noise = torch.cat([torch.randn(1, 8, 16, FRAMES, generator=torch.Generator().manual_seed(s)) for s in seeds])
    generator = torch.Generator().manual_seed(seeds[0])
    torch.randn(1, 8, 16, FRAMES, generator=generator)  # ping-pong continues the first item's stream
    with torch.no_grad():
        return flow_steps.sample(scheduler, velocity, noise, schedules.flow_schedule(steps, scheduler).sigmas, omega,
                                 generator)


@pytest.mark.parametrize("case", [
    dict(scheduler="euler", cfg_type="apg"),
    dict(scheduler="heun", cfg_type="cfg", omega_scale=-20.0),
    dict(scheduler="pingpong", cfg_type="cfg_star", guidance_interval=1.0),  # zero-init fires at loop index 0, 1
    dict(scheduler="euler", cfg_type="apg", guidance_interval=1.0, guidance_interval_decay=0.7, steps=7),
    dict(scheduler="euler", cfg_type="apg", guidance_scale_text=4.0, guidance_scale_lyric=2.0, seeds="3,4"),
], ids=["euler-apg", "heun-cfg", "pingpong-cfg_star", "decay", "double-guidance-batch"])
def test_node_equals_building_blocks_exactly(tiny, case):
    s = {**NODE_DEFAULTS, **case}
    out, used = run_node(tiny, **case)
    seeds = [int(x) for x in s["seeds"].split(",")]
    expected = by_hand(tiny, seeds, s["steps"], s["scheduler"], s["cfg_type"], s["guidance_scale"], s["omega_scale"],
                       s["guidance_interval"], s["guidance_interval_decay"], s["min_guidance_scale"],
                       s["guidance_scale_text"], s["guidance_scale_lyric"])
    assert used == s["seeds"] and out.shape == (len(seeds), 8, 16, FRAMES)
    assert torch.equal(out, expected)


def test_passes_follow_the_guidance_interval_with_erg_only_on_uncond(tiny, decode_calls):
    sigmas = schedules.flow_schedule(8).sigmas
    run_node(tiny, steps=8)  # interval 0.5 of 8 steps: CFG on loop indices 2..5
    expected = []
    for i in range(8):
        t = (sigmas[i] * 1000).item()
        expected += [(t, False), (t, True)] if 2 <= i < 6 else [(t, False)]
    assert [(t, hooked) for t, _, hooked in decode_calls] == expected

    decode_calls.clear()
    run_node(tiny, steps=8, use_erg_diffusion=False, guidance_scale=1.0)  # scale 1: conditional passes only
    assert [hooked for _, _, hooked in decode_calls] == [False] * 8

    decode_calls.clear()
    run_node(tiny, steps=4, scheduler="heun")  # 7 calls; the interval is counted on N = 4 (start 1, end 3)
    assert [hooked for _, _, hooked in decode_calls] == [False, False, True, False, True, False, False, False, False]


# ------------------------------------------------------------------------------------------------ conditions
def test_erg_conditions_differ_exactly_where_they_should(tiny):
    orig, dm, te = tiny.orig, tiny.dm, tiny.clip.text_encoder
    text, extras = tiny.positive[0]
    erg_text = extras[orig.ERG_TEXT_KEY]
    # Tag ERG = UMT5 with the original's forward hooks on the chosen query projections (here: a q_scale argument).
    with erg.scaled_outputs(te, umt5_q_modules(te.config.num_layers)):
        hooked = encode_token_weights(te, tiny.tokens["umt5base"])
    assert torch.allclose(erg_text, hooked, rtol=0, atol=1e-6)
    assert (erg_text - text).abs().max() > 1e-2

    n, lyric_len = text.shape[1], len(tiny.tokens["lyrics"])

    def encoded(conditioning):
        cond, mask = orig.encode_conditioning(dm, conditioning, 1, torch.device("cpu"))
        assert mask is None and cond.shape[1] == 1 + n + lyric_len
        return cond[0].detach()

    def parts(cond):
        return cond[:1], cond[1:1 + n], cond[1 + n:]  # speaker | tags | lyrics

    with torch.no_grad():
        zero_text = dm.genre_embedder(torch.zeros(n, text.shape[-1]))
        stop_lyrics = dm.encode_lyrics(torch.zeros(1, lyric_len, dtype=torch.long))[0]
        erg_text_tokens = dm.genre_embedder(erg_text[0])
        speaker, tags, lyrics = parts(encoded(tiny.positive))
        full = parts(encoded(orig.null_conditioning(tiny.positive, True, True)))
        lyric_only = parts(encoded(orig.null_conditioning(tiny.positive, False, True)))
        no_lyric_erg = parts(encoded(orig.null_conditioning(tiny.positive, True, False)))
        text_only = parts(encoded(orig.text_only_conditioning(tiny.positive, True)))
        text_only_stop = parts(encoded(orig.text_only_conditioning(tiny.positive, False)))

    assert torch.equal(full[0], speaker) and torch.equal(full[1], erg_text_tokens)
    assert (full[2] - lyrics).abs().max() > 1e-2  # the lyric encoder's ERG changes every lyric token...
    assert torch.equal(lyric_only[2], full[2])  # ...the same way whatever the text
    assert torch.allclose(lyric_only[1], zero_text, atol=1e-6)  # without tag ERG: zero text
    # Without lyric ERG the original drops the tag ERG: zero text and [STOP] lyrics.
    assert torch.allclose(no_lyric_erg[1], zero_text, atol=1e-6) and torch.allclose(no_lyric_erg[2], stop_lyrics,
                                                                                    atol=1e-6)
    assert torch.equal(text_only[1], tags) and torch.equal(text_only[2], full[2])
    assert torch.equal(text_only_stop[1], tags) and torch.allclose(text_only_stop[2], stop_lyrics, atol=1e-6)
    # The conditioning stays a plain ComfyUI one: the positive is untouched, the extras ride along.
    assert extras["conditioning_lyrics"].tolist() == [tiny.tokens["lyrics"]] and orig.LYRIC_ERG_KEY not in extras
    with pytest.raises(ValueError, match="tag ERG"):
        orig.null_conditioning([[text, {k: v for k, v in extras.items() if k != orig.ERG_TEXT_KEY}]], True, True)
    with pytest.raises(ValueError, match="one condition"):
        orig.null_conditioning(tiny.positive * 2, True, True)


# ------------------------------------------------------------------------------------------------ SamplerCustomAdvanced
@pytest.mark.parametrize("case", [
    dict(scheduler="euler", cfg_type="apg"),
    dict(scheduler="heun", cfg_type="cfg_star", guidance_interval=0.8),
    dict(scheduler="pingpong", cfg_type="cfg", seeds="5,6"),
    dict(scheduler="euler", cfg_type="apg", guidance_scale_text=3.0, guidance_scale_lyric=1.5,
         guidance_interval_decay=0.5),
], ids=["euler-apg", "heun-cfg_star", "pingpong-cfg-batch", "double-guidance"])
def test_custom_sampler_advanced_matches_the_node(tiny, case):
    expected, _ = run_node(tiny, **case)
    out = custom_sampler_advanced(tiny, **case)
    # The same algorithm; ComfyUI hands samplers x0 = x − σ·v, which they turn back into v: float rounding only.
    err = ((out - expected).abs().max() / expected.abs().max()).item()
    report(f"original sampling: SamplerCustomAdvanced vs node, {'-'.join(map(str, case.values()))}", err)
    assert err < 1e-5


def test_oss_schedules_start_from_scaled_noise_in_custom_sampling(tiny, decode_calls):
    # oss_steps start below σ = 1. The original still starts from unit noise there (the node does too), while
    # ComfyUI's samplers scale the noise to the first sigma: the one place the two paths differ on purpose.
    sigmas = tiny.nodes.OriginalSchedule.execute(tiny.model, 60, "2, 5, 9, 11").result[0]
    assert sigmas[0] < 0.999
    run_node(tiny, oss_steps="2, 5, 9, 11")
    unit = decode_calls[0][1]
    decode_calls.clear()
    custom_sampler_advanced(tiny, oss_steps="2, 5, 9, 11")
    assert unit.std() > 0.9 and torch.allclose(decode_calls[0][1], sigmas[0] * unit, rtol=0, atol=1e-6)
    assert list(dict.fromkeys(t for t, _, _ in decode_calls)) == (sigmas[:-1] * 1000).tolist()


def custom_sampler_advanced(tiny, **case) -> torch.Tensor:
    """The node's settings through core SamplerCustomAdvanced with the pack's NOISE/GUIDER/SAMPLER/SIGMAS."""
    from comfy_extras.nodes_custom_sampler import SamplerCustomAdvanced

    s = {**NODE_DEFAULTS, **case}
    nodes, model, positive = tiny.nodes, tiny.model, tiny.positive
    negative = nodes.ErgNegative.execute(positive, s["use_erg_tag"], s["use_erg_lyric"]).result[0]
    text_only = nodes.TextOnlyConditioning.execute(positive, s["use_erg_lyric"]).result[0]
    guider = nodes.OriginalGuider.execute(model, positive, negative, s["cfg_type"], s["guidance_scale"],
                                          s["guidance_interval"], s["guidance_interval_decay"],
                                          s["min_guidance_scale"], s["use_erg_diffusion"], s["guidance_scale_text"],
                                          s["guidance_scale_lyric"], text_only).result[0]
    sampler = nodes.OriginalSamplerSelect.execute(s["scheduler"], s["omega_scale"]).result[0]
    sigmas = nodes.OriginalSchedule.execute(model, s["steps"], s["oss_steps"]).result[0]
    noise, seeds = nodes.SeedsNoise.execute(s["seeds"]).result
    latent = {"samples": torch.zeros(len(seeds.split(",")), 8, 16, FRAMES), "type": "audio"}
    return SamplerCustomAdvanced.execute(noise, guider, sampler, sigmas, latent).result[0]["samples"]


# ------------------------------------------------------------------------------------------------ seeds, duration
def test_seed_list_is_a_batch_with_the_single_seed_noise(tiny, decode_calls):
    from comfy_extras.nodes_custom_sampler import Noise_RandomNoise

    batch, used = run_node(tiny, seeds=" 5, 6\n", steps=2, guidance_scale=1.0)
    assert used == "5,6" and batch.shape[0] == 2
    first_x = decode_calls[0][1]
    singles = []
    for seed in (5, 6):
        decode_calls.clear()
        singles.append(run_node(tiny, seeds=str(seed), steps=2, guidance_scale=1.0)[0])
        assert torch.equal(first_x[seed - 5], decode_calls[0][1][0])
        # ComfyUI's own seed noise for a batch of one is the same draw.
        core = Noise_RandomNoise(seed).generate_noise({"samples": torch.zeros(1, 8, 16, FRAMES)})
        assert torch.equal(decode_calls[0][1], core)
    # Items interact only through omega's mean over the whole batch (as in the original): with omega 0 they are the
    # single-seed songs.
    coupled = (batch - torch.cat(singles)).abs().max().item()
    free, _ = run_node(tiny, seeds="5,6", steps=2, guidance_scale=1.0, omega_scale=0.0)
    alone = torch.cat([run_node(tiny, seeds=str(s), steps=2, guidance_scale=1.0, omega_scale=0.0)[0] for s in (5, 6)])
    report("original sampling: batch item vs its single-seed run, omega 10", coupled,
           omega_0=(free - alone).abs().max().item())
    assert torch.allclose(free, alone, rtol=0, atol=1e-5) and coupled > 1e-4

    # A shorter list repeats its last seed (the original's rule); no seeds: random ones, and the node runs again.
    noise = tiny.nodes.SeedsNoise.execute("8").result[0].generate_noise({"samples": torch.zeros(2, 8, 16, 4)})
    assert torch.equal(noise[0], noise[1])
    _, random_seeds = run_node(tiny, seeds="", steps=1, latent={"samples": torch.zeros(3, 8, 16, 5)})
    assert len(set(random_seeds.split(","))) == 3
    assert np.isnan(tiny.nodes.OriginalSampler.fingerprint_inputs(seeds=" "))
    assert tiny.nodes.OriginalSampler.fingerprint_inputs(seeds="1,2") == "1,2"
    for bad in ("1,x", "-1", str(2**64)):
        with pytest.raises(ValueError):
            run_node(tiny, seeds=bad)


def test_duration_minus_one_is_random_30_to_240_s_from_the_seed(tiny):
    orig = tiny.orig
    durations = [orig.random_duration(seed) for seed in range(3000)]
    assert 30.0 <= min(durations) < 31.0 and 239.0 < max(durations) <= 240.0
    assert abs(np.mean(durations) - 135.0) < 3.0  # uniform
    assert orig.random_duration(11) == orig.random_duration(11) != orig.random_duration(12)
    out, _ = run_node(tiny, seeds="11", duration=-1.0, steps=1, guidance_scale=1.0)
    assert out.shape[-1] == int(orig.random_duration(11) * 44100 / 4096)
    # A connected latent gives the length instead.
    out, _ = run_node(tiny, seeds="11", duration=-1.0, steps=1, latent={"samples": torch.zeros(1, 8, 16, 9)})
    assert out.shape == (1, 8, 16, 9)


# ------------------------------------------------------------------------------------------------ the MODEL's patches
def test_schedule_follows_the_model_shift_and_oss_steps(tiny, decode_calls):
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    schedule = tiny.nodes.OriginalSchedule
    assert torch.equal(schedule.execute(tiny.model, 60, "").result[0], schedules.flow_schedule(60).sigmas)
    oss = schedule.execute(tiny.model, 60, "16, 29, 52").result[0]
    assert torch.equal(oss, schedules.oss_schedule([16, 29, 52], dtype=torch.float32).sigmas)

    shifted = ModelSamplingSD3().patch(tiny.model, 5.0)[0]
    sigmas = schedule.execute(shifted, 8, "").result[0]

    def s5(s):  # the shift, applied twice as by the original's scheduler
        return 5 * s / (1 + 4 * s)

    bottom = s5(np.float32(0.001))
    expected = np.append(s5(np.linspace(1.0, bottom, 8)), 0.0)
    assert np.abs(sigmas.double().numpy() - expected).max() < 1e-6
    run_node(tiny, model=shifted, steps=8, guidance_scale=1.0)
    assert [t for t, _, _ in decode_calls] == (sigmas[:-1] * 1000).tolist()


def test_weight_patches_on_the_model_apply(tiny):
    key = "diffusion_model.transformer_blocks.1.cross_attn.to_q.weight"
    delta = torch.randn(tiny.dm.get_parameter(key.split(".", 1)[1]).shape, generator=torch.Generator().manual_seed(1))
    patched = tiny.model.clone()
    assert patched.add_patches({key: (delta,)}, 1.0) == [key]

    plain, _ = run_node(tiny, steps=3)
    lora, _ = run_node(tiny, model=patched, steps=3)
    again, _ = run_node(tiny, steps=3)  # the patch comes off when the plain MODEL is loaded again
    baked = copy.deepcopy(tiny.dm)
    with torch.no_grad():
        baked.get_parameter(key.split(".", 1)[1]).add_(delta)
    expected, _ = run_node(tiny, model=pack_module("comfy_bridge.models").model_patcher(baked, None), steps=3)
    assert torch.equal(lora, expected) and torch.equal(plain, again)
    assert (lora - plain).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------------ server
@pytest.mark.parametrize("name,seed_node", [("ace_step_original_quality", "AceStudioOriginalSampler"),
                                            ("ace_step_original_custom_sampling", "AceStudioSeedsNoise")])
def test_workflow_with_a_seed_list_through_the_server(comfy_server, tiny_checkpoint, name, seed_node):
    prompt = prepare(json.loads((ROOT / "workflows" / "api" / f"{name}.json").read_text()), tiny_checkpoint,
                     seconds=2.0)
    for node in prompt.values():
        if node["class_type"] == seed_node:
            node["inputs"]["seeds"] = "101,102"
        if node["class_type"] == "AceStudioEmptyLatentAudio":
            node["inputs"]["batch_size"] = 2
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "success", f"{result.error}\n{comfy_server.log_tail()}"
    assert any(e["type"] == "progress" for e in result.events)
    songs = [sf.read(OUTPUT_DIR / "comfy-base" / "output" / f["subfolder"] / f["filename"])
             for f in result.output_files("audio")]
    assert len(songs) == 2 and all(rate == 44100 and data.shape == (int(2.0 * 44100 / 4096) * 4096, 2)
                                   for data, rate in songs)
    assert np.abs(songs[0][0] - songs[1][0]).max() > 1e-3  # two seeds, two songs
