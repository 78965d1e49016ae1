"""The per-run condition cache (ace_step.condition_cache) and its use by the ComfyUI adapter: the condition encoders
and the cross-attention keys/values run once per distinct condition of a sampling run, with the same result as
encoding at every step."""
import pytest
import torch

from ace_step.sampling.condition_cache import ConditionCache
from ace_step.models.v1.transformer import ACEStepTransformer
from fixtures.v1_configs import tiny_transformer
from measure import max_rel_error, report
from pack_inprocess import comfy_transformer

CACHE_TOL = 1e-6  # observed: bit-identical on CPU; a row computed in a different batch may differ in the last bits


def tiny_model(seed: int = 0) -> ACEStepTransformer:
    torch.manual_seed(seed)
    model = ACEStepTransformer(tiny_transformer()).eval()
    with torch.no_grad():
        for block in model.transformer_blocks:  # default init leaves the modulation tiny: make every path count
            block.scale_shift_table.normal_(0, 0.5)
    return model


def count_encodes(model) -> list:
    """Records the batch size of every encode_condition call on `model`."""
    calls, encode = [], model.encode_condition

    def counted(text_hidden, *args, **kwargs):
        calls.append(text_hidden.shape[0])
        return encode(text_hidden, *args, **kwargs)

    model.encode_condition = counted
    return calls


def conditions(cfg, seed: int, n_text: int = 6, n_lyric: int = 9):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, n_text, cfg.text_embedding_dim, generator=g),
            torch.randint(1, cfg.lyric_vocab_size, (1, n_lyric), generator=g))


@torch.no_grad()
def test_cached_decode_equals_forward_and_encodes_each_row_once():
    model = tiny_model()
    cfg = model.config
    text, lyrics = conditions(cfg, 1)
    # ComfyUI's batch for 2 songs with CFG: cond, cond, uncond (zeroed), uncond.
    context = torch.cat([text, text, torch.zeros_like(text), torch.zeros_like(text)])
    lyric_ids = torch.cat([lyrics, lyrics, torch.zeros_like(lyrics), torch.zeros_like(lyrics)])
    g = torch.Generator().manual_seed(2)
    x, t = torch.randn(4, 8, 16, 25, generator=g), torch.rand(4, generator=g) * 1000
    expected = model(x, t, context, lyric_ids, lyrics_strength=0.8)

    calls, cache = count_encodes(model), ConditionCache()
    for step in range(3):
        cond, kv = cache.lookup(model, context, lyric_ids, 0.8)
        err = max_rel_error(model.decode(x, t, cond, cross_kv=kv), expected)
        assert err <= CACHE_TOL, (step, err)
    assert calls == [2]  # the 2 distinct rows, once, in the first step
    report("condition cache: cached vs per-step encoding max rel", err, tolerance=CACHE_TOL)

    # A step with the conditional rows only (outside a guidance interval) reuses them...
    cond, kv = cache.lookup(model, context[:1], lyric_ids[:1], 0.8)
    assert max_rel_error(model.decode(x[:1], t[:1], cond, cross_kv=kv), expected[:1]) <= CACHE_TOL
    assert calls == [2]
    # ... and another lyrics_strength or other lyrics are new conditions.
    cache.lookup(model, context[:1], lyric_ids[:1], 0.5)
    other = lyric_ids[:1].flip(-1)
    cond, kv = cache.lookup(model, context[:1], other, 0.8)
    assert calls == [2, 1, 1]
    assert max_rel_error(model.decode(x[:1], t[:1], cond, cross_kv=kv),
                         model(x[:1], t[:1], context[:1], other, lyrics_strength=0.8)) <= CACHE_TOL


# ------------------------------------------------------------------------------------------------ through ComfyUI
@pytest.fixture(scope="module")
def comfy_models():
    from pack_inprocess import import_pack

    return import_pack().comfy_bridge.models


def uncached(patcher):
    """A clone of the MODEL without the pre-run callback that starts the cache: every step encodes."""
    import comfy.patcher_extension

    clone = patcher.clone()
    clone.callbacks[comfy.patcher_extension.CallbacksMP.ON_PRE_RUN] = {}
    return clone


def sample(patcher, positive, negative, frames: int = 20, steps: int = 4, cfg: float = 3.0):
    import comfy.sample

    noise = torch.randn(1, 8, 16, frames, generator=torch.Generator().manual_seed(3))
    latent = torch.zeros(1, 8, 16, frames)
    return comfy.sample.sample(patcher, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                               disable_pbar=True, seed=3)


def conditioning(text, lyrics, **extra):
    return [[text, {"conditioning_lyrics": lyrics, "lyrics_strength": 1.0, **extra}]]


@torch.inference_mode()
def test_comfy_sampling_encodes_conditions_once_per_run(comfy_models):
    transformer = comfy_transformer(tiny_model())
    patcher = comfy_models.model_patcher(transformer, None)
    text, lyrics = conditions(transformer.config, 4)
    positive = conditioning(text, lyrics)
    negative = conditioning(torch.zeros_like(text), torch.zeros_like(lyrics))
    calls = count_encodes(transformer)

    cached = sample(patcher, positive, negative)
    assert calls == [2], "cond and uncond: encoded once, in the first step"
    assert transformer.condition_cache is None, "the run's cache is freed when sampling ends"
    again = sample(patcher, positive, negative)
    assert calls == [2, 2] and torch.equal(again, cached), "a new run starts a new cache"

    calls.clear()
    reference = sample(uncached(patcher), positive, negative)
    assert calls == [2] * 4, "without the cache every step encodes"
    err = max_rel_error(cached, reference)
    report("condition cache: ComfyUI sampling, cached vs uncached max rel", err, tolerance=CACHE_TOL)
    assert err <= CACHE_TOL and reference.std() > 0.1


@torch.inference_mode()
def test_weight_hooks_turn_the_cache_off(comfy_models):
    """ComfyUI's hook LoRAs patch the weights in place for the conditions that carry them: the same condition
    encodes differently with and without, so a run with hooks must not reuse encodings."""
    import comfy.hooks

    transformer = comfy_transformer(tiny_model())
    patcher = comfy_models.model_patcher(transformer, None)
    text, lyrics = conditions(transformer.config, 5)
    delta = torch.randn(transformer.genre_embedder.weight.shape, generator=torch.Generator().manual_seed(6))
    hooks = comfy.hooks.create_hook_lora({"diffusion_model.genre_embedder.diff": delta}, 1.0, 1.0)
    # Positive and negative are the same condition; only the positive carries the hook.
    hooked = comfy.hooks.set_hooks_for_conditioning(conditioning(text, lyrics), hooks)
    plain = conditioning(text, lyrics)

    result = sample(patcher, hooked, plain)
    reference = sample(uncached(patcher), hooked, plain)
    assert max_rel_error(result, reference) <= CACHE_TOL
    assert max_rel_error(result, sample(patcher, plain, plain)) > 1e-3, "the hook changes the result"
