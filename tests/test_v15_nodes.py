"""ACE-Step 1.5 inside ComfyUI's execution model, in process (comfy_bridge/v15_*.py, nodes/v15_*.py): the MODEL
(ComfyUI's ACE-Step 1.5 conditions, core sampling against a hand-written Euler loop over the plain core network,
ModelSamplingSD3 = AuraFlow, the per-run condition cache, partial loads with patches, attention patches, memory
estimates), the silence latent's sources, the VAE behind ComfyUI's interface (windows, progress, interrupts, memory
refusals), the CLIP (the original's prompts, the conditioning keys, metadata on auto) and the nodes' refusals of
wrong-family inputs.

Networks are tiny (random weights, the real structure); tolerances are stated per test.
"""
import importlib
import math
import types

import pytest
import torch

from ace_step.models.v15.audio_codes import AudioDetokenizerConfig, AudioTokenizerConfig
from ace_step.models.v15.condition_encoder import ConditionEncoderConfig
from ace_step.models.v15.dit import DiTConfig
from ace_step.models.v15.layers import StackConfig
from ace_step.models.v15.model import AceStep15, AceStep15Config
from ace_step.models.v15.qwen3 import Qwen3Config, Qwen3Model
from ace_step.models.v15.vae import OobleckConfig, OobleckVAE, encoder_context
from fixtures.v15_vae_configs import randomize_ as randomize_vae
from measure import max_rel_error, report
from pack_inprocess import PACKAGE, import_pack
from test_memory_estimates import measured_peak, needs_proc

PARITY_TOL = 1e-5  # ComfyUI's attention and comfy.ops layers vs plain torch: the same arithmetic, reordered
TEXT_WIDTH = 64


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Vocabulary-wide planner steps on 2 cores shared with other test runs: a second thread mostly waits.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bridge(name: str):
    import_pack()
    return importlib.import_module(f"{PACKAGE}.comfy_bridge.{name}")


def pack_nodes(name: str):
    import_pack()
    return importlib.import_module(f"{PACKAGE}.nodes.{name}")


# ------------------------------------------------------------------------------------------------ tiny networks
def _stack(layers, heads=4, kv=2):
    return StackConfig(hidden_size=128, num_layers=layers, num_heads=heads, num_kv_heads=kv, head_dim=32,
                       intermediate_size=384)


def tiny_dit_config() -> AceStep15Config:
    """The golden fixtures' reduced DiT (4 layers, window 4) reading TEXT_WIDTH-wide text states."""
    return AceStep15Config(
        decoder=DiTConfig(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32,
                          intermediate_size=384, condition_size=128, sliding_window=4),
        encoder=ConditionEncoderConfig(lyric=_stack(2), timbre=_stack(1), text_hidden_dim=TEXT_WIDTH),
        tokenizer=AudioTokenizerConfig(pooler=_stack(1, 16, 8)),
        detokenizer=AudioDetokenizerConfig(stack=_stack(2, 16, 8)))


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """RMSNorm weights 1, every other parameter N(0, 0.02) (the golden fixtures' initialisation)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for p in module.parameters(recurse=False):
                p.copy_(torch.ones_like(p) if isinstance(module, torch.nn.RMSNorm)
                        else torch.randn(p.shape, generator=g) * 0.02)
    return model.eval().requires_grad_(False)


def comfy_built(cls, plain: torch.nn.Module, attention, operations=None):
    """`cls` (a pack class) built like the loader builds it (comfy.ops layers, ComfyUI's attention) with `plain`'s
    weights."""
    import comfy.ops

    with torch.device("meta"):
        model = cls(plain.config, device="meta", operations=operations or comfy.ops.disable_weight_init,
                    attention=attention)
    model.load_state_dict(plain.state_dict(), assign=True)
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def plain_dit():
    return randomized(AceStep15(tiny_dit_config()), seed=1)


@pytest.fixture(scope="module")
def silence():
    return bridge("v15_silence").SilenceLatent("test", head=torch.randn(1, 64, 6, generator=torch.Generator()
                                                                       .manual_seed(5)))


def make_model(plain_dit, silence):
    models, ops = bridge("v15_models"), bridge("operations")
    return models.model_patcher(comfy_built(models.ComfyCallableAceStep15, plain_dit, ops.diffusion_attention), None,
                                silence)


@pytest.fixture
def model(plain_dit, silence):
    return make_model(plain_dit, silence)


def positive(seed: int = 2, text: int = 7, lyrics: int = 11, width: int = TEXT_WIDTH):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, text, width, generator=g),
             {"conditioning_lyrics": torch.randn(1, lyrics, width, generator=g), "pooled_output": None}]]


def zero_out(conditioning):
    """ComfyUI's ConditioningZeroOut (nodes.py): the caption states and the lyric embeddings zeroed."""
    import nodes

    return nodes.ConditioningZeroOut().zero_out(conditioning)[0]


# ------------------------------------------------------------------------------------------------ MODEL
def test_model_is_comfyuis_ace_step_15_with_flow_shift_3_and_sigma_timesteps(model):
    import comfy.model_base
    import comfy.model_sampling

    base = model.model
    assert isinstance(base.model_sampling, comfy.model_sampling.ModelSamplingDiscreteFlow)
    assert isinstance(base.model_sampling, comfy.model_sampling.CONST)
    assert (base.model_sampling.shift, base.model_sampling.multiplier) == (3.0, 1.0)
    assert base.latent_format.latent_channels == 64 and base.latent_format.latent_dimensions == 1
    assert base.memory_usage_factor == 4.7
    host = getattr(comfy.model_base, "ACEStep15", None)
    assert host is None or isinstance(base, host)  # newer ComfyUI: core code sees a native 1.5 model


def test_every_weighted_layer_is_a_comfy_layer_and_attention_is_comfyuis(model):
    import comfy.ops

    dit = model.model.diffusion_model
    own = {"ace_step", "comfy_bridge"}  # the project's modules: their loose tables are cast at use
    plain = [n for n, m in dit.named_modules() if any(True for _ in m.parameters(recurse=False))
             and not isinstance(m, comfy.ops.CastWeightBiasOp) and not own & set(type(m).__module__.split("."))]
    assert plain == []
    assert dit.decoder.layers[0].self_attn.attention is bridge("operations").diffusion_attention


def conds_of(model, conditioning, noise):
    """ComfyUI's model conditions for one conditioning entry (samplers.encode_model_conds), processed for the batch."""
    cond, extra = conditioning[0]
    out = model.model.extra_conds(cross_attn=cond, device=torch.device("cpu"), noise=noise, **extra)
    return {k: v.process_cond(batch_size=noise.shape[0], device="cpu").cond for k, v in out.items()}


def test_extra_conds_as_comfyuis_ace_step_15(model, silence):
    noise = torch.zeros(2, 64, 30)
    plain = conds_of(model, positive(), noise)
    assert set(plain) == {"c_crossattn", "lyric_embed", "refer_audio", "is_covers"}
    assert plain["is_covers"] is False
    assert torch.equal(plain["refer_audio"], silence(30, "cpu").expand(2, -1, -1))
    assert torch.equal(plain["lyric_embed"][0], positive()[0][1]["conditioning_lyrics"][0])

    codes = [[int(c) for c in torch.arange(6) * 997]]
    with_codes = conds_of(model, [[positive()[0][0], {**positive()[0][1], "audio_codes": codes}]], noise)
    assert "is_covers" not in with_codes and with_codes["audio_codes"].dtype == torch.long
    assert with_codes["audio_codes"].tolist() == codes * 2
    assert torch.equal(with_codes["refer_audio"], silence(30, "cpu").expand(2, -1, -1))

    null = conds_of(model, zero_out(positive()), noise)
    assert null["replace_with_null_embeds"] is True and not null["lyric_embed"].any()

    short = torch.randn(1, 64, 12)
    timbre = conds_of(model, [[positive()[0][0], {**positive()[0][1], "audio_codes": codes,
                                                  "reference_audio_timbre_latents": [torch.randn(1, 64, 40), short]}]],
                      noise)
    assert timbre["is_covers"] is True and "audio_codes" not in timbre  # a reference replaces the codes
    assert torch.equal(timbre["refer_audio"][0, :, :12], short[0])  # the last reference, padded with silence
    assert torch.equal(timbre["refer_audio"][0, :, 12:], silence(30, "cpu")[0, :, 12:])


def euler_reference(plain_dit, silence, conditioning, negative, latent, sigmas, cfg, seed):
    """ComfyUI's euler sampler with CFG written out over the plain core network (t = sigma, x0 = x - sigma·v)."""
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    x = sigmas[0] * noise + (1 - sigmas[0]) * latent
    length = latent.shape[-1]
    refer = silence(length, "cpu").expand(latent.shape[0], -1, -1)

    def denoised(x, sigma, cond, null):
        batch = x.shape[0]
        context, lyrics = cond[0][0].expand(batch, -1, -1), cond[0][1]["conditioning_lyrics"].expand(batch, -1, -1)
        v = plain_dit(x, sigma.expand(batch), context, lyrics, refer, is_covers=False, replace_with_null_embeds=null)
        return x - v * sigma

    for sigma, following in zip(sigmas[:-1], sigmas[1:]):
        cond, uncond = denoised(x, sigma, conditioning, False), denoised(x, sigma, negative, True)
        guided = uncond + (cond - uncond) * cfg
        x = x + (x - guided) / sigma * (following - sigma)
    return x


def ksampler(model, conditioning, negative, latent, steps, cfg, seed, sampler="euler"):
    import comfy.sample

    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.no_grad():
        return comfy.sample.sample(model, noise, steps, cfg, sampler, "simple", conditioning, negative, latent,
                                   seed=seed)


def test_ksampler_equals_euler_over_the_plain_network(model, plain_dit, silence):
    """Core KSampler (euler, simple, cfg 2.5, 3 steps) on the MODEL = the same sampler written out over the plain
    core network: ComfyUI feeds the DiT sigma itself, the silence reference, the null caption for the unconditional
    pass. Measured max rel 1.3e-7."""
    import comfy.samplers

    latent = torch.zeros(2, 64, 24)
    neg = zero_out(positive())
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", 3)
    ours = ksampler(model, positive(), neg, latent, 3, 2.5, seed=4)
    with torch.no_grad():
        ref = euler_reference(plain_dit, silence, positive(), neg, latent, sigmas, 2.5, seed=4)
    err = max_rel_error(ours, ref)
    report("1.5 KSampler vs hand-written euler over the core DiT, max rel", err)
    assert err <= PARITY_TOL


def test_model_sampling_sd3_and_auraflow_give_the_same_song(model):
    """ModelSamplingSD3 hands the DiT sigma·1000, AuraFlow sigma: the MODEL reads sigma from both (same shift, same
    sigmas), so the songs agree to float rounding of the division (measured max rel 1e-7)."""
    from comfy_extras.nodes_model_advanced import ModelSamplingAuraFlow, ModelSamplingSD3

    latent = torch.zeros(1, 64, 20)
    aura = ksampler(ModelSamplingAuraFlow().patch_aura(model, 3.0)[0], positive(), zero_out(positive()), latent, 2,
                    2.0, seed=3)
    sd3 = ksampler(ModelSamplingSD3().patch(model, 3.0)[0], positive(), zero_out(positive()), latent, 2, 2.0, seed=3)
    err = max_rel_error(sd3, aura)
    report("1.5 ModelSamplingSD3 vs ModelSamplingAuraFlow, max rel", err)
    assert err <= 1e-5
    other_shift = ksampler(ModelSamplingAuraFlow().patch_aura(model, 1.0)[0], positive(), zero_out(positive()),
                           latent, 2, 2.0, seed=3)
    assert max_rel_error(other_shift, aura) > 1e-3  # the patch is in effect


def test_condition_is_encoded_once_per_row_per_run(model, monkeypatch):
    """4 steps with CFG over a batch of 2 call the DiT 8 times (cond and uncond separately, as their conditions
    differ) but encode one row per condition (the batch repeats it); the cached run equals the uncached one
    (measured max rel 0)."""
    dit = model.model.diffusion_model
    calls = []
    original = type(dit).encode_condition

    def counting(self, text_hidden, *args, **kwargs):
        calls.append(text_hidden.shape[0])
        return original(self, text_hidden, *args, **kwargs)

    monkeypatch.setattr(type(dit), "encode_condition", counting)
    latent = torch.zeros(2, 64, 16)
    cached = ksampler(model, positive(), zero_out(positive()), latent, 4, 3.0, seed=5)
    assert calls == [1, 1], calls
    assert dit.condition_cache is None  # freed at the end of the run

    calls.clear()
    monkeypatch.setattr(bridge("v15_models"), "ConditionCache", lambda: None)
    uncached = ksampler(model, positive(), zero_out(positive()), latent, 4, 3.0, seed=5)
    assert len(calls) == 8
    err = max_rel_error(cached, uncached)
    report("1.5 condition cache vs uncached run, max rel", err)
    assert err <= PARITY_TOL


def test_a_different_row_is_encoded_separately():
    """Rows are matched by value and by the call's flags: a batch with two different captions encodes both, a later
    call with either reuses it, the same rows in cover mode are encoded again."""
    cache_module = bridge("v15_condition_cache")
    plain = randomized(AceStep15(tiny_dit_config()), seed=2)
    cache = cache_module.ConditionCache()
    g = torch.Generator().manual_seed(0)
    context, lyrics = torch.randn(2, 5, TEXT_WIDTH, generator=g), torch.randn(2, 6, TEXT_WIDTH, generator=g)
    refer = torch.randn(2, 64, 10, generator=g)
    with torch.no_grad():
        first = cache.lookup(plain, context, lyrics, refer, 10, None, False, False, None)
        assert cache.encoded_rows == 2
        again = cache.lookup(plain, context.flip(0).clone(), lyrics.flip(0).clone(), refer.flip(0).clone(), 10, None,
                             False, False, None)
        assert cache.encoded_rows == 2
        cover = cache.lookup(plain, context, lyrics, refer, 10, None, True, False, None)  # same rows, cover mode
        assert cache.encoded_rows == 4 and not torch.equal(cover.context_latents, first.context_latents)
        direct = plain.encode_condition(context, lyrics, refer, 10, is_covers=False)
    assert torch.equal(again.memory, first.memory.flip(0))
    assert max_rel_error(first.memory, direct.memory) <= PARITY_TOL
    for (k, v), (k_ref, v_ref) in zip(first.cross_kv, direct.cross_kv):
        assert max_rel_error(k, k_ref) <= PARITY_TOL and max_rel_error(v, v_ref) <= PARITY_TOL


def test_transformer_options_reach_every_attention_call(model):
    """ComfyUI's `optimized_attention_override` runs for the lyric and timbre encoders' layers and every DiT layer's
    self- and cross-attention."""
    calls = []

    def override(func, *args, **kwargs):
        calls.append(func)
        return func(*args, **kwargs)

    noise = torch.randn(1, 64, 12)
    kw = conds_of(model, positive(), noise)
    with torch.no_grad():
        model.model.apply_model(noise, torch.tensor([0.5]), transformer_options={
            "optimized_attention_override": override}, **kw)
    config = tiny_dit_config()
    expected = config.encoder.lyric.num_layers + config.encoder.timbre.num_layers + 2 * config.decoder.num_layers
    assert len(calls) == expected


def test_a_v1_latent_is_refused_with_the_fix(model):
    """An ACE-Step v1 empty latent [B, 8, 16, W]: ComfyUI widens its channels to the model's 64 before sampling, and
    the DiT names the mix-up."""
    with pytest.raises(ValueError, match=r"ACE-Step v1 song latent.*Empty ACE-Step 1.5 Latent Audio"):
        ksampler(model, positive(), zero_out(positive()), torch.zeros(1, 8, 16, 20), 1, 1.0, seed=0)


def test_conditioning_without_lyrics_is_refused(model):
    with pytest.raises(ValueError, match="ACE-Step 1.5 Text Encode"):
        conds_of(model, [[torch.randn(1, 4, TEXT_WIDTH), {"pooled_output": None}]], torch.zeros(1, 64, 8))


# ------------------------------------------------------------------------------------------------ partial loads
def run_loaded(patcher, device, budget_fraction, noise):
    budget = budget_fraction * patcher.model_size()
    patcher.partially_load(device, extra_memory=budget if budget_fraction < 1 else 1e32)
    try:
        loaded = patcher.loaded_size()
        kw = {k: v.to(device) if isinstance(v, torch.Tensor) else v
              for k, v in conds_of(patcher, positive(), noise).items()}
        with torch.no_grad():
            out = patcher.model.apply_model(noise.to(device), torch.tensor([0.6, 0.2]).to(device), **kw)
    finally:
        if device.type != "meta":
            patcher.detach(unpatch_all=True)
    return out, loaded


def weight_patches(model, seed=3):
    """A "diff" patch (ComfyUI's simplest weight patch) on a linear of each kind: self-, cross-attention, MLP, the
    condition encoder's lyric layers."""
    g = torch.Generator().manual_seed(seed)
    keys = ["decoder.layers.0.self_attn.q_proj.weight", "decoder.layers.1.cross_attn.v_proj.weight",
            "decoder.layers.2.mlp.down_proj.weight", "encoder.lyric_encoder.layers.0.self_attn.o_proj.weight"]
    weights = model.model.diffusion_model.state_dict()
    return {k: torch.randn(weights[k].shape, generator=g) * 0.05 for k in keys}


def test_partial_loads_and_patches_equal_merged_weights(model, plain_dit, silence):
    """At every budget the patched MODEL equals a model whose weights were patched by hand (the loaded layers are
    patched in place, the ones left behind at call time). Measured max rel 0 to 2e-7."""
    diffs = weight_patches(model)
    merged = randomized(AceStep15(tiny_dit_config()), seed=1)
    with torch.no_grad():
        for key, diff in diffs.items():
            merged.get_parameter(key).add_(diff * 1.5)
    noise = torch.randn(2, 64, 14, generator=torch.Generator().manual_seed(8))
    reference, _ = run_loaded(make_model(merged, silence), torch.device("cpu"), 1.0, noise)
    plain_out, _ = run_loaded(model, torch.device("cpu"), 1.0, noise)
    assert max_rel_error(plain_out, reference) > 1e-3, "the patches must change the output for this test to mean much"
    patched = model.clone()
    assert len(patched.add_patches({f"diffusion_model.{k}": (v,) for k, v in diffs.items()}, 1.5)) == len(diffs)
    for fraction in (0.1, 0.4, 0.8, 1.0):
        out, loaded = run_loaded(patched, torch.device("cpu"), fraction, noise)
        assert (loaded < patched.model_size()) == (fraction < 1)
        err = max_rel_error(out, reference)
        report(f"1.5 MODEL patched, {fraction:.0%} loaded, vs merged weights: max rel", err)
        assert err <= 1e-6, (fraction, err)


# ------------------------------------------------------------------------------------------------ memory
def test_memory_required_follows_the_dit_estimate(model):
    base = model.model
    shapes = {"c_crossattn": [[1, 40, TEXT_WIDTH]], "lyric_embed": [[1, 300, TEXT_WIDTH]]}
    assert base.memory_required([2, 64, 1000], cond_shapes=shapes) == \
        base.diffusion_model.working_bytes(2, 1000, 40, 300)
    assert base.memory_required([2, 64, 2000], shapes) > base.memory_required([2, 64, 1000], shapes)
    assert base.memory_required([2, 64, 1000], {**shapes, "lyric_embed": [[1, 3000, 64]]}) > \
        base.memory_required([2, 64, 1000], shapes)
    extra = base.extra_conds_shapes(cross_attn=torch.zeros(1, 40, 64), conditioning_lyrics=torch.zeros(1, 300, 64))
    assert extra == {"c_crossattn": [1, 40, 64], "lyric_embed": [1, 300, 64]}


@needs_proc
@pytest.mark.parametrize("batch,frames,text,lyrics", [(1, 4000, 40, 300), (2, 2000, 40, 2000), (1, 1000, 30, 4000)])
def test_dit_estimate_bounds_the_measured_peak(model, batch, frames, text, lyrics):
    """One uncached DiT call (condition encoding and a pass, ComfyUI's CPU attention) against the estimate behind
    memory_required and the refusal: between the measured peak and three times it (measured 1.4 to 1.5x: the
    timbre encoder's attention over every frame dominates the first, the lyric encoder's the last)."""
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(batch, 64, frames, generator=g)
    kw = conds_of(model, positive(text=text, lyrics=lyrics), noise)
    # The smaller of two runs: in one full-suite run a single measurement read 1.7x what the same call reads alone
    # (cause not found: the resident set grew by more than the call allocates alone).
    peak = min(measured_peak(lambda: model.model.apply_model(noise, torch.full((batch,), 0.5), **kw))
               for _ in range(2))
    estimate = model.model.diffusion_model.working_bytes(batch, frames, text, lyrics)
    report(f"1.5 DiT memory estimate / measured peak, {batch} x {frames} frames, {lyrics} lyric tokens",
           round(estimate / peak, 2), estimate_mib=estimate >> 20, peak_mib=peak >> 20)
    assert peak <= estimate <= 3 * peak


# ------------------------------------------------------------------------------------------------ silence latent
@pytest.fixture(scope="module")
def tiny_vae():
    """The 1.5 VAE's real strides and latent width, 8 channels wide."""
    return randomize_vae(OobleckVAE(OobleckConfig(encoder_channels=8, decoder_channels=8, latent_channels=64)), 3)


def comfy_vae(tiny_vae):
    vae_module, ops = bridge("v15_vae"), bridge("operations")
    with torch.device("meta"):
        net = importlib.import_module(f"{PACKAGE}.ace_step.models.v15.vae").OobleckVAE(
            tiny_vae.config, device="meta", operations=ops.vae_operations())
    net.load_state_dict(tiny_vae.state_dict(), assign=True)
    return vae_module.AceStep15Vae(net.eval().requires_grad_(False))


def test_silence_from_the_vae_equals_encoding_a_long_silence(tiny_vae):
    """The VAE-made silence latent (head frames + the steady frame, repeated) equals the posterior mean of 40 frames
    of digital silence frame for frame (up to float rounding between tile sizes: measured max rel 0)."""
    silence_module = bridge("v15_silence")
    vae = comfy_vae(tiny_vae)
    silence = silence_module.from_posterior_mean(vae.silence_mean, vae.vae.encoder_context, vae.samples_per_frame)
    head = silence_module.head_frames(encoder_context(tiny_vae.config), 1920)
    assert silence.head.shape == (1, 64, head + 1)
    with torch.no_grad():
        long = tiny_vae.posterior(torch.zeros(1, 2, 40 * 1920))[0]
    err = max_rel_error(silence(30, "cpu"), long[:, :, :30])
    report("1.5 silence latent from the VAE vs a long encoded silence, max rel", err)
    assert err <= 1e-6
    assert not torch.allclose(long[:, :, 0], long[:, :, head])  # the start differs: the head is needed


def test_silence_file_is_read_with_the_restricted_loader(tmp_path):
    silence_module = bridge("v15_silence")
    stored = torch.randn(1, 64, 9)
    torch.save(stored, tmp_path / "silence_latent.pt")
    silence = silence_module.choose(tmp_path / "model.safetensors", None)
    assert silence.source.startswith("file") and torch.equal(silence(9, "cpu"), stored)
    assert torch.equal(silence(12, "cpu")[:, :, 9:], stored[:, :, -1:].expand(-1, -1, 3))  # silence continues

    torch.save(types.SimpleNamespace(payload=1), tmp_path / "silence_latent.pt")  # an arbitrary pickled object
    with pytest.raises(ValueError, match="safe loader"):
        silence_module.choose(tmp_path / "model.safetensors", None)
    torch.save(torch.zeros(1, 8, 16, 4), tmp_path / "silence_latent.pt")
    with pytest.raises(ValueError, match=r"not the silence latent \[1, 64, frames\]"):
        silence_module.choose(tmp_path / "model.safetensors", None)


def test_silence_sources_in_order(tmp_path, monkeypatch, tiny_vae):
    """The model folder's file first, then the host ComfyUI's get_silence_latent, then the VAE."""
    import sys

    silence_module = bridge("v15_silence")
    made = []

    def from_vae():
        made.append(1)
        return silence_module.SilenceLatent("vae", head=torch.zeros(1, 64, 1))

    host_module = types.ModuleType("comfy.ldm.ace.ace_step15")
    host_module.get_silence_latent = lambda length, device: torch.full((1, 64, length), 2.0, device=device)
    assert silence_module.from_host() is None  # ComfyUI 0.3.75 has no ACE-Step 1.5
    assert silence_module.choose(tmp_path / "model.safetensors", from_vae).source == "vae" and made
    monkeypatch.setitem(sys.modules, "comfy.ldm.ace.ace_step15", host_module)
    host = silence_module.choose(tmp_path / "model.safetensors", from_vae)
    assert host.source == "ComfyUI's get_silence_latent" and torch.equal(host(3, "cpu"), torch.full((1, 64, 3), 2.0))
    torch.save(torch.ones(1, 64, 2), tmp_path / "silence_latent.pt")
    assert silence_module.choose(tmp_path / "model.safetensors", from_vae).source.startswith("file")
    assert len(made) == 1


# ------------------------------------------------------------------------------------------------ VAE
def test_vae_interface_shapes_and_conventions(tiny_vae):
    """ComfyUI's interface: channels last at 48 kHz, cropped centred to whole frames (as ComfyUI's VAE Encode); the
    pack's: any rate and channel count, padded at the end, never cropped."""
    vae = comfy_vae(tiny_vae)
    assert (vae.audio_sample_rate, vae.latent_channels, vae.latent_dim) == (48000, 64, 1)
    g = torch.Generator().manual_seed(0)
    audio = torch.randn(2, 3 * 1920 + 500, 2, generator=g) * 0.1
    torch.manual_seed(0)
    latent = vae.encode(audio)
    assert latent.shape == (2, 64, 3)
    crop = audio.movedim(-1, 1)[:, :, 250:250 + 3 * 1920]  # (T mod 1920) // 2 samples dropped at the start
    with torch.no_grad():
        mean = tiny_vae.posterior(crop)[0]
    torch.manual_seed(0)
    with torch.no_grad():
        sample = tiny_vae.encode(crop)
    assert max_rel_error(latent, sample) <= 1e-6 and max_rel_error(latent, mean) > 1e-3  # a posterior sample
    decoded = vae.decode(latent)
    assert decoded.shape == (2, 3 * 1920, 2) and decoded.dtype == torch.float32

    mono_44k = torch.randn(1, 1, 44100, generator=g) * 0.1  # 1 s at 44.1 kHz -> 48000 samples -> 25 frames
    assert vae.encode_waveform(mono_44k, 44100).shape == (1, 64, 25)
    assert vae.encode_waveform(torch.randn(1, 2, 48001, generator=g), 48000).shape == (1, 64, 26)
    assert vae.decode_waveform(torch.zeros(1, 64, 4)).shape == (1, 2, 4 * 1920)


def test_vae_windows_equal_the_whole_song(tiny_vae):
    """Decoding and encoding (posterior mean) in windows equal one untiled pass over 160 frames (6.4 s, two windows):
    measured max rel 7e-7 and 8e-7."""
    vae = comfy_vae(tiny_vae)
    latent = torch.randn(1, 64, 160, generator=torch.Generator().manual_seed(1)) * 0.5
    whole_net = OobleckVAE(tiny_vae.config)
    whole_net.load_state_dict(tiny_vae.state_dict())
    whole_net.tile_frames = None
    with torch.no_grad():
        whole = whole_net.decode(latent)
        err = max_rel_error(vae.decode_waveform(latent), whole)
        report("1.5 VAE decode in windows vs whole song, max rel", err)
        assert err <= 1e-5
        mean = vae._encode_frames(whole.clamp(-1, 1), sample=False)
        err = max_rel_error(mean, whole_net.posterior(whole.clamp(-1, 1))[0])
        report("1.5 VAE encode (mean) in windows vs whole song, max rel", err)
        assert err <= 1e-5


@pytest.fixture
def progress_events():
    import comfy.utils

    events = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: events.append((value, total)))
    yield events
    comfy.utils.set_progress_bar_global_hook(None)


def test_vae_reports_progress_and_stops_on_interrupt(tiny_vae, progress_events, monkeypatch):
    import comfy.model_management as mm

    vae = comfy_vae(tiny_vae)
    latent = torch.zeros(1, 64, 300)
    vae.decode_waveform(latent)
    windows = math.ceil(300 / (tiny_vae.tile_frames - 2 * tiny_vae.decoder_context))
    assert progress_events[-1] == (windows, windows) and len(progress_events) == windows

    progress_events.clear()
    seen = []
    original = tiny_vae.decode

    def interrupt_after_first(self, x):
        seen.append(x.shape[-1])
        if len(seen) == 1:
            mm.interrupt_current_processing(True)
        return original(x)

    monkeypatch.setattr(type(vae.vae), "decode", interrupt_after_first)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            vae.decode_waveform(latent)
    finally:
        mm.interrupt_current_processing(False)
    assert len(seen) == 1  # stopped after the first window


def test_vae_refuses_what_memory_cannot_hold_before_allocating(tiny_vae, monkeypatch):
    memory = importlib.import_module(f"{PACKAGE}.comfy_bridge.memory")
    vae = comfy_vae(tiny_vae)
    monkeypatch.setattr(memory, "memory_limit", lambda device: (1 << 20, "free RAM"))
    with pytest.raises(memory.NotEnoughMemoryError, match="decoding 1 × 600 s"):
        vae.decode_waveform(torch.zeros(1, 64, 15000))
    with pytest.raises(memory.NotEnoughMemoryError, match="encoding"):
        vae.encode_waveform(torch.zeros(1, 2, 48000 * 600), 48000)


def test_vae_refuses_v1_latents_and_nan(tiny_vae):
    vae = comfy_vae(tiny_vae)
    with pytest.raises(ValueError, match=r"ACE-Step v1 song latent.*Empty ACE-Step 1.5 Latent Audio"):
        vae.decode(torch.zeros(1, 8, 16, 20))
    with pytest.raises(ValueError, match="NaN"):
        vae.decode(torch.full((1, 64, 4), float("nan")))


def test_core_audio_nodes_take_the_vae(tiny_vae):
    """Core VAE Encode / Decode Audio call the interface; ComfyUI 0.3.75's nodes resample to and label 44.1 kHz
    (newer ones read `audio_sample_rate`), so only the shapes are ComfyUI's business here."""
    from comfy_extras.nodes_audio import VAEDecodeAudio, VAEEncodeAudio

    vae = comfy_vae(tiny_vae)
    latent = VAEEncodeAudio().encode(vae, {"waveform": torch.randn(1, 2, 48000) * 0.1, "sample_rate": 48000})[0]
    assert latent["samples"].shape[:2] == (1, 64)
    audio = VAEDecodeAudio().decode(vae, {"samples": torch.zeros(1, 64, 5)})[0]
    assert audio["waveform"].shape == (1, 2, 5 * 1920)


# ------------------------------------------------------------------------------------------------ CLIP
TEXT_VOCAB, LM_VOCAB = 151_669, 217_204


@pytest.fixture(scope="module")
def text_encoder():
    return randomized(Qwen3Model(Qwen3Config(vocab_size=TEXT_VOCAB, hidden_size=TEXT_WIDTH, intermediate_size=96,
                                             num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16)), seed=6)


@pytest.fixture(scope="module")
def tokenizers():
    from ace_step.text.qwen_tokenizer import load_qwen3_tokenizer
    from fixtures.v15_text_models import bundled_tokenizer_dir

    return (load_qwen3_tokenizer([bundled_tokenizer_dir()], audio_codes=False),
            load_qwen3_tokenizer([bundled_tokenizer_dir()], audio_codes=True))


@pytest.fixture(scope="module")
def planner_lm():
    """2 layers, 32 wide, the LM's real vocabulary; the tied embedding scaled to std 0.3 (test_v15_planner_lm's
    stand-in: at std 1 it repeats one token whatever the seed)."""
    from ace_step.models.v15.qwen3 import Qwen3CausalLM

    torch.manual_seed(0)
    lm = Qwen3CausalLM(Qwen3Config(vocab_size=LM_VOCAB, hidden_size=32, intermediate_size=64, num_layers=2,
                                   num_heads=2, num_kv_heads=1, head_dim=16)).eval().requires_grad_(False)
    with torch.no_grad():
        lm.model.embed_tokens.weight.mul_(0.3)
    return lm


@pytest.fixture(scope="module", autouse=True)
def short_captions():
    """A random LM writes captions up to the original's 512 tokens; 24 keep the planner tests short."""
    import_pack()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(importlib.import_module(f"{PACKAGE}.ace_step.sampling.planner_grammar"), "CAPTION_MAX_TOKENS",
                      24)
        yield


def clip_of(text_encoder, tokenizers, lm=None):
    return bridge("v15_clip").AceStep15Clip(text_encoder, tokenizers[0], lm, tokenizers[1] if lm is not None else None)


TAGS, LYRICS = "synth pop, dreamy, female vocals", "[verse]\nSilver rain upon the window"


def test_clip_conditioning_uses_the_original_prompts(text_encoder, tokenizers):
    """Caption states = the encoder's last hidden state over the original's caption prompt ("Fill the audio semantic
    mask" without codes, the metas block), lyrics = the token embeddings of the lyric prompt; ComfyUI's keys."""
    from ace_step.text.v15_prompts import SongMetadata, caption_encoder_ids, lyric_encoder_ids

    clip = clip_of(text_encoder, tokenizers)
    tokens = clip.tokenize(TAGS, lyrics=LYRICS, bpm=120, duration=30.0, timesignature="4", language="en",
                           keyscale="F# minor", generate_audio_codes=False)
    [[cond, extra]] = clip.encode_from_tokens_scheduled(tokens)
    metadata = SongMetadata(bpm=120, duration=30.0, keyscale="F# minor", timesignature=4, language="en")
    caption_ids = caption_encoder_ids(tokenizers[0], TAGS, metadata, has_audio_codes=False)
    assert "Fill the audio semantic mask" in tokenizers[0].decode(caption_ids)
    assert "- bpm: 120\n- timesignature: 4\n- keyscale: F# minor\n- duration: 30 seconds" in \
        tokenizers[0].decode(caption_ids)
    with torch.no_grad():
        assert torch.equal(cond, text_encoder(torch.tensor([caption_ids])))
        lyric_ids = lyric_encoder_ids(tokenizers[0], LYRICS, "en")
        assert torch.equal(extra["conditioning_lyrics"], text_encoder.embed(torch.tensor([lyric_ids])))
    assert set(extra) == {"pooled_output", "conditioning_lyrics", "ace_step15_metadata"}
    assert extra["pooled_output"] is None and extra["ace_step15_metadata"].caption == TAGS


def test_clip_metadata_on_auto_without_a_planner(text_encoder, tokenizers):
    from ace_step.text.v15_prompts import lyric_encoder_ids

    clip = clip_of(text_encoder, tokenizers)
    [[cond, extra]] = clip.encode_from_tokens_scheduled(clip.tokenize(
        TAGS, lyrics=LYRICS, bpm=0, duration=0, timesignature="auto", language="auto", keyscale="auto",
        generate_audio_codes=False))
    metadata = extra["ace_step15_metadata"]
    assert (metadata.bpm, metadata.duration, metadata.keyscale, metadata.language) == (None, None, None, "unknown")
    with torch.no_grad():
        lyric_ids = lyric_encoder_ids(tokenizers[0], LYRICS, "unknown")
        assert torch.equal(extra["conditioning_lyrics"], text_encoder.embed(torch.tensor([lyric_ids])))
    with pytest.raises(ValueError, match=r"no 5 Hz LM is loaded.*Load ACE-Step 1.5 Text Encoders"):
        clip.encode_from_tokens_scheduled(clip.tokenize(TAGS, lyrics=LYRICS, duration=30.0))
    with pytest.raises(ValueError, match="bpm must be a whole number in 30..300"):
        clip.tokenize(TAGS, lyrics=LYRICS, bpm=12)


@pytest.fixture(scope="module")
def planned(text_encoder, tokenizers, planner_lm):
    """(clip, tokens, conditioning, progress updates) of one planned song: bpm, key and time signature on auto,
    10 s, CFG 2."""
    import comfy.utils

    clip = clip_of(text_encoder, tokenizers, planner_lm)
    tokens = clip.tokenize(TAGS, lyrics=LYRICS, bpm=0, duration=10.0, timesignature="auto", language="en",
                           keyscale="auto", seed=7, cfg_scale=2.0)
    events = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: events.append((value, total)))
    try:
        return clip, tokens, clip.encode_from_tokens_scheduled(tokens), events
    finally:
        comfy.utils.set_progress_bar_global_hook(None)


def test_clip_with_the_planner_fills_metadata_and_writes_codes(planned, tokenizers, text_encoder):
    """Metadata on auto is planned (valid values), 5 codes per second of the given duration are written, the caption
    prompt switches to the "Generate audio semantic tokens" instruction, the same seed gives the same plan."""
    from ace_step.text.v15_prompts import (VALID_KEYSCALES, VALID_TIME_SIGNATURES, caption_encoder_ids)

    clip, tokens, [[cond, extra]], progress_events = planned
    metadata, codes = extra["ace_step15_metadata"], extra["audio_codes"]
    assert len(codes) == 1 and len(codes[0]) == 50 and all(0 <= c < 64000 for c in codes[0])
    assert 30 <= metadata.bpm <= 300 and metadata.keyscale in VALID_KEYSCALES
    assert metadata.timesignature in VALID_TIME_SIGNATURES and metadata.duration == 10.0
    assert metadata.language == "en"  # the user's
    caption_ids = caption_encoder_ids(tokenizers[0], metadata.caption, metadata, has_audio_codes=True)
    assert "Generate audio semantic tokens" in tokenizers[0].decode(caption_ids)
    with torch.no_grad():
        assert torch.equal(cond, text_encoder(torch.tensor([caption_ids])))
    assert progress_events and progress_events[-1][0] == progress_events[-1][1]
    [[_, again]] = clip.encode_from_tokens_scheduled(tokens)
    assert again["audio_codes"] == codes and again["ace_step15_metadata"] == metadata

    [[_, kept]] = clip.encode_from_tokens_scheduled(clip.tokenize(
        TAGS, lyrics=LYRICS, bpm=100, duration=10.0, timesignature="3", language="en", keyscale="C major", seed=7,
        generate_audio_codes=False, write_caption=False))
    assert "audio_codes" not in kept and kept["ace_step15_metadata"].caption == TAGS  # nothing left to plan


def test_clip_planner_stops_on_interrupt(text_encoder, tokenizers, planner_lm):
    import comfy.model_management as mm

    clip = clip_of(text_encoder, tokenizers, planner_lm)
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            clip.encode_from_tokens_scheduled(clip.tokenize(TAGS, lyrics=LYRICS, duration=10.0, bpm=90,
                                                            timesignature="4", keyscale="C major"))
    finally:
        mm.interrupt_current_processing(False)


def test_clip_conditioning_drives_the_model(planned, model):
    """The CLIP's conditioning (with LM codes) through ConditioningZeroOut and core KSampler on the MODEL."""
    conditioning = planned[2]
    conds = conds_of(model, conditioning, torch.zeros(1, 64, 250))
    assert conds["audio_codes"].shape == (1, 50) and "is_covers" not in conds
    out = ksampler(model, conditioning, zero_out(conditioning), torch.zeros(1, 64, 250), 2, 2.0, seed=1)
    assert out.shape == (1, 64, 250) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------ nodes
def test_nodes_refuse_wrong_family_inputs(tiny_vae):
    v1 = importlib.import_module(f"{PACKAGE}.comfy_bridge.models")
    latent_nodes, text_nodes = pack_nodes("v15_latent"), pack_nodes("v15_text")
    v1_vae, v1_clip = object.__new__(v1.AceStepVae), object.__new__(v1.AceStepClip)
    with pytest.raises(TypeError, match=r"ACE-Step v1 VAE.*Load ACE-Step 1.5"):
        latent_nodes.LatentToAudio15.execute({"samples": torch.zeros(1, 64, 4)}, v1_vae)
    with pytest.raises(TypeError, match=r"ACE-Step v1 CLIP.*Load ACE-Step 1.5"):
        text_nodes.TextEncode15.execute(v1_clip, TAGS, LYRICS, 0, 30.0, "auto", "auto", "auto", False, True, 2.0,
                                        0.85, 0.9, 0, 0.0, 0)
    with pytest.raises(ValueError, match="ACE-Step v1 song latent"):
        latent_nodes.LatentToAudio15.execute({"samples": torch.zeros(1, 8, 16, 4)}, comfy_vae(tiny_vae))
    with pytest.raises(ValueError, match="ACE-Step v1 song latent"):
        text_nodes.ReferenceTimbre15.execute(positive(), {"samples": torch.zeros(1, 8, 16, 4)})


def test_latent_and_reference_nodes():
    latent_nodes, text_nodes = pack_nodes("v15_latent"), pack_nodes("v15_text")
    latent = latent_nodes.EmptyLatentAudio15.execute(12.34, 2).result[0]
    assert latent["samples"].shape == (2, 64, round(12.34 * 25)) and not latent["samples"].any()
    reference = torch.randn(1, 64, 9)
    [[_, extra]] = text_nodes.ReferenceTimbre15.execute(positive(), {"samples": reference}).result[0]
    assert extra["reference_audio_timbre_latents"] == [reference]
    [[_, twice]] = text_nodes.ReferenceTimbre15.execute([[_, extra]], {"samples": reference}).result[0]
    assert len(twice["reference_audio_timbre_latents"]) == 2  # appended, as ComfyUI's node; the last one is used


def test_text_encode_node_reports_the_metadata(text_encoder, tokenizers):
    text_nodes = pack_nodes("v15_text")
    out = text_nodes.TextEncode15.execute(clip_of(text_encoder, tokenizers), TAGS, LYRICS, 120, 30.0, "4", "en",
                                          "C major", False, True, 2.0, 0.85, 0.9, 0, 0.0, 0).result
    assert out[0][0][1]["ace_step15_metadata"].bpm == 120
    assert out[1] == ("bpm: 120\ncaption: synth pop, dreamy, female vocals\nduration: 30\nkeyscale: C major\n"
                      "language: en\ntimesignature: 4\naudio_codes: 0")
    with pytest.raises(ValueError, match="keyscale 'H major' is not one of"):
        text_nodes.TextEncode15.execute(clip_of(text_encoder, tokenizers), TAGS, LYRICS, 120, 30.0, "4", "en",
                                        "H major", False, True, 2.0, 0.85, 0.9, 0, 0.0, 0)


@needs_proc
def test_planner_estimate_bounds_the_measured_peak(text_encoder, tokenizers, planner_lm, monkeypatch):
    """Planning 20 s of codes after 1,600 lyric lines' worth of prompt with the LM built as the loader builds it
    (ComfyUI's text-encoder attention on the CPU), against the estimate the refusal uses: between the measured peak
    and three times it (measured 1.9; the prefill's attention over the prompt dominates)."""
    clip_module = bridge("v15_clip")
    ops = bridge("operations")
    lm_class = importlib.import_module(f"{PACKAGE}.ace_step.models.v15.qwen3").Qwen3CausalLM
    lm = comfy_built(lm_class, planner_lm, ops.text_encoder_attention, ops.text_encoder_operations())
    clip = clip_of(text_encoder, tokenizers, lm)
    request = clip.tokenize(TAGS, lyrics="la la la love\n" * 400, duration=20.0, bpm=100, timesignature="4",
                            keyscale="C major")[clip_module.TOKENS_KEY]
    clip._plan(request)  # builds the planner's vocabulary masks (kept for later plans) outside the measurement
    estimates = []
    monkeypatch.setattr(clip_module, "require_memory", lambda needed, *args: estimates.append(needed))
    peak = measured_peak(lambda: clip._plan(request))
    report("1.5 planner memory estimate / measured peak", round(estimates[0] / peak, 2),
           estimate_mib=estimates[0] >> 20, peak_mib=peak >> 20)
    assert peak <= estimates[0] <= 3 * peak


# ------------------------------------------------------------------------------------------------ loading
@pytest.fixture(scope="module")
def tiny15(tmp_path_factory):
    """The tiny 1.5 files (tests/fixtures/v15_tiny_checkpoint.py, bf16) in all three layouts."""
    from fixtures.v15_tiny_checkpoint import write_tiny15

    root = tmp_path_factory.mktemp("tiny15")
    return {"aio": write_tiny15(root / "aio.safetensors", dtype=torch.bfloat16),
            "split": write_tiny15(root / "models", layout="comfyui-split", dtype=torch.bfloat16),
            "hf": write_tiny15(root / "hf", layout="hf-folder", dtype=torch.bfloat16)}


def test_loaders_build_comfy_networks_with_their_silence_source(tiny15):
    """All-in-one: every network, planner included, silence from its VAE; original folder: its silence_latent.pt;
    split DiT: refused without a source (ComfyUI 0.3.75), loadable with the VAE. The VAE-made silence equals the
    folder's file (made from the same weights before their bf16 weight-norm split) to 0.4 % (measured 0.37 %)."""
    import comfy.ops

    loading = bridge("v15_loading")
    model, clip, vae = loading.load_checkpoint(tiny15["aio"])
    assert clip.has_planner and clip.lm_tokenizer is not None
    assert model.model.silence.source == "the VAE's encoding of digital silence"
    assert isinstance(model.model.diffusion_model.decoder.layers[0].mlp.gate_proj, comfy.ops.CastWeightBiasOp)
    assert model.model.diffusion_model.decoder.layers[0].self_attn.attention is bridge("operations").diffusion_attention
    folder_model = loading.load_checkpoint(tiny15["hf"], variant="acestep-v15-turbo")[0]
    assert folder_model.model.silence.source.endswith("acestep-v15-turbo/silence_latent.pt")
    err = max_rel_error(model.model.silence(40, "cpu"), folder_model.model.silence(40, "cpu"))
    report("1.5 silence latent from the VAE vs the folder's silence_latent.pt (tiny, bf16), max rel", err)
    assert err <= 4e-3

    split = tiny15["split"]
    with pytest.raises(ValueError, match="connect the ACE-Step 1.5 VAE to this loader's vae input"):
        loading.load_diffusion_model(split["dit"])
    assert loading.load_diffusion_model(split["dit"], vae=loading.load_vae(split["vae"])).model.silence.source == \
        "the VAE's encoding of digital silence"
    assert not loading.load_text_encoders(split["text_encoder"]).has_planner
    assert loading.load_text_encoders(split["text_encoder"], split["lm"]).has_planner


def test_fp8_weights_compute_close_to_the_stored_weights(tiny15):
    """weight_dtype fp8 keeps the DiT's weights in fp8 and computes in fp32 on the CPU (ComfyUI's manual cast). The
    tiny random model's sampled latent (2 steps, CFG 2) moves by 14 % of its peak with e4m3 (3 mantissa bits: each
    weight off by up to 6 %) and 21 % with e5m2 (2 bits): the error follows the weights' precision."""
    loading = bridge("v15_loading")
    latent, cond = torch.zeros(1, 64, 30), positive(width=32)  # the tiny files read 32-wide text states
    ref = ksampler(loading.load_checkpoint(tiny15["aio"])[0], cond, zero_out(cond), latent, 2, 2.0, seed=2)
    errors = {}
    for choice, dtype in (("fp8_e4m3fn", torch.float8_e4m3fn), ("fp8_e5m2", torch.float8_e5m2)):
        fp8 = loading.load_checkpoint(tiny15["aio"], choice)[0]
        assert fp8.model.diffusion_model.decoder.layers[0].mlp.up_proj.weight.dtype == dtype
        assert fp8.model.manual_cast_dtype == torch.float32
        out = ksampler(fp8, cond, zero_out(cond), latent, 2, 2.0, seed=2)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        errors[choice] = max_rel_error(out, ref)
        report(f"1.5 {choice} DiT weights vs stored (bf16) weights, fp32 compute: max rel", errors[choice])
    assert errors["fp8_e4m3fn"] < 0.2 and errors["fp8_e4m3fn"] < errors["fp8_e5m2"] < 0.4
