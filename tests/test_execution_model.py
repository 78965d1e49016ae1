"""The networks inside ComfyUI's execution model: built from the operations and attention they are given, loaded
partially (the low-VRAM path: layers left on the offload device are cast at call time) with the same numbers as a
full load, LoRA patches applied in both load modes, fp8 weights, transformer_options reaching every attention call,
and memory estimates ComfyUI can plan with.

"Partial load" runs ComfyUI's own ModelPatcher with a budget below the model's size. Two stand-ins for a GPU: the CPU
itself (so the numbers can be compared: the layers past the budget run through comfy.ops' cast-at-call path, their
LoRA applied at call time, the others patched in place), and PyTorch's `meta` device (nothing computes, but every
tensor must move: a weight left behind raises "Tensor on device cpu is not on the expected device").
"""
import pytest
import torch

from ace_step.models.v1.dcae import DCAE
from ace_step.models.v1.lyric_encoder import LyricEncoder
from ace_step.models.v1.music_vae import MusicVAE
from ace_step.models.v1.transformer import ACEStepTransformer
from ace_step.models.v1.umt5 import UMT5Encoder
from ace_step.models.v1.vocoder import Vocoder
from fixtures.lora import make_test_lora, merge_lora
from fixtures.recording_operations import counting_attention, plain_weighted_modules, recording_operations
from fixtures.tiny_checkpoint import write_tiny_checkpoint
from fixtures.v1_configs import tiny_dcae, tiny_lyric_encoder, tiny_music_vae, tiny_transformer, tiny_umt5, tiny_vocoder
from measure import max_rel_error, report
from pack_inprocess import comfy_transformer, import_pack

FULL_LOAD_TOL = 1e-6  # partial vs full load: the same arithmetic, only where weights are cast differs
BUDGETS = (0.1, 0.3, 0.6, 0.9, 1.0)  # fractions of the model's size


# ------------------------------------------------------------------------------------------------ operations
@pytest.mark.parametrize("name", ["transformer", "lyric_encoder", "umt5", "dcae", "vocoder", "music_vae"])
def test_every_weighted_layer_comes_from_the_operations(name):
    """Built with a recording `operations`, no network holds a plain torch layer with weights (the only own
    parameters allowed are the project's loose tables and norms, cast at use)."""
    operations, counts = recording_operations()
    attention, _ = counting_attention()
    build = {
        "transformer": lambda: ACEStepTransformer(tiny_transformer(), operations=operations, attention=attention),
        "lyric_encoder": lambda: LyricEncoder(tiny_lyric_encoder(), operations=operations, attention=attention),
        "umt5": lambda: UMT5Encoder(tiny_umt5(), operations=operations, attention=attention),
        "dcae": lambda: DCAE(tiny_dcae(), operations=operations),
        "vocoder": lambda: Vocoder(tiny_vocoder(), operations=operations),
        "music_vae": lambda: MusicVAE(tiny_music_vae(), operations=operations),
    }[name]
    model = build()
    assert plain_weighted_modules(model, operations) == []
    assert sum(counts.values()) > 0


@torch.no_grad()
def test_attention_goes_through_the_injected_function_with_transformer_options():
    attention, calls = counting_attention()
    config = tiny_transformer()
    model = ACEStepTransformer(config, attention=attention).eval()
    options = {"marker": object()}
    g = torch.Generator().manual_seed(0)
    model(torch.randn(1, 8, 16, 10, generator=g), torch.tensor([500.0]),
          torch.randn(1, 4, config.text_embedding_dim, generator=g), torch.randint(0, 6000, (1, 7), generator=g),
          transformer_options=options)
    # One call per lyric-encoder layer and per block's cross-attention, each with the caller's options.
    assert len(calls) == config.lyric_encoder_blocks + config.num_layers
    assert all(c["marker"] is options["marker"] for c in calls)

    umt5_attention, umt5_calls = counting_attention()
    umt5 = UMT5Encoder(tiny_umt5(), attention=umt5_attention).eval()
    umt5(torch.tensor([[5, 6, 7, 1]]), transformer_options=options)
    assert len(umt5_calls) == tiny_umt5().num_layers and all(c is options for c in umt5_calls)


# ------------------------------------------------------------------------------------------------ partial loading
@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "tiny.safetensors")


@pytest.fixture(scope="module")
def tiny(tiny_path):
    """The tiny checkpoint loaded through the pack's ComfyUI loader (comfy.ops layers, ComfyUI's attention)."""
    return import_pack().comfy_bridge.models.load_checkpoint(tiny_path)[0]


@pytest.fixture(scope="module")
def lora():
    """A LoRA on every kind of layer the transformer has (linear projections and the FFN's 1x1 convs)."""
    tensors, _ = make_test_lora(tiny_transformer(), rank=4, alpha=8, targets=(
        "to_q", "to_k", "to_v", "to_out.0", "linear_q", "linear_k", "linear_v", "speaker_embedder",
        "inverted_conv.conv", "point_conv.conv"), seed=3)
    from ace_step.loading.lora import LoraFile, parse_lora

    return parse_lora(LoraFile("test_lora", tensors, {}, None, None), tiny_transformer_shapes())


def tiny_transformer_shapes() -> dict:
    from ace_step.loading.state_loading import build_on_meta, state_shapes

    return state_shapes(build_on_meta(ACEStepTransformer, tiny_transformer()))


def model_inputs(device="cpu"):
    g = torch.Generator().manual_seed(7)
    config = tiny_transformer()
    return dict(x=torch.randn(2, 8, 16, 12, generator=g).to(device), t=torch.tensor([0.7, 0.2]).to(device),
                c_crossattn=torch.randn(2, 5, config.text_embedding_dim, generator=g).to(device),
                lyric_token_idx=torch.randint(0, 6000, (2, 9), generator=g).to(device))


def run_loaded(patcher, device, budget_fraction):
    """ComfyUI's partial load of `patcher` onto `device` with a budget of `budget_fraction` of the model's size,
    one forward through ComfyUI's BaseModel, then the model unloaded again. Returns (output, bytes loaded)."""
    budget = budget_fraction * patcher.model_size()
    patcher.partially_load(device, extra_memory=budget if budget_fraction < 1 else 1e32)
    try:
        loaded = patcher.loaded_size()
        inputs = model_inputs(device)
        with torch.no_grad():
            out = patcher.model.apply_model(inputs["x"], inputs["t"], c_crossattn=inputs["c_crossattn"],
                                            lyric_token_idx=inputs["lyric_token_idx"], lyrics_strength=1.0)
    finally:
        if device.type != "meta":  # what went to meta has no data to come back with: that model is dropped
            patcher.detach(unpatch_all=True)
    return out, loaded


def with_lora(patcher, lora, strength=1.3):
    clone = patcher.clone()
    clone.add_patches(import_pack().nodes.lora.lora_patches(lora), strength)
    return clone


def test_partial_loads_equal_the_full_load(tiny):
    full, full_bytes = run_loaded(tiny, torch.device("cpu"), 1.0)
    assert full_bytes == tiny.model_size()
    for fraction in BUDGETS[:-1]:
        out, loaded = run_loaded(tiny, torch.device("cpu"), fraction)
        assert loaded < tiny.model_size(), fraction
        err = max_rel_error(out, full)
        report(f"partial load at {fraction:.0%} of the model vs full load, max rel", err, loaded_bytes=loaded)
        assert err <= FULL_LOAD_TOL, (fraction, err)


def test_lora_applies_in_full_and_partial_loads(tiny, lora):
    """At every budget the LoRA'd MODEL equals a model whose weights were merged by hand: the loaded layers get the
    patch in place, the ones left behind at call time."""
    merged = ACEStepTransformer(tiny_transformer()).eval()
    merged.load_state_dict(tiny.model.diffusion_model.state_dict())
    merge_lora(merged, lora, 1.3)
    reference, _ = run_loaded(import_pack().comfy_bridge.models.model_patcher(comfy_transformer(merged), None),
                              torch.device("cpu"), 1.0)
    plain, _ = run_loaded(tiny, torch.device("cpu"), 1.0)
    assert max_rel_error(plain, reference) > 1e-2, "the LoRA must change the output for this test to mean anything"
    patched = with_lora(tiny, lora)
    for fraction in BUDGETS:
        out, loaded = run_loaded(patched, torch.device("cpu"), fraction)
        err = max_rel_error(out, reference)
        report(f"LoRA at {fraction:.0%} load vs merged weights, max rel", err, loaded_bytes=loaded)
        assert err <= FULL_LOAD_TOL, (fraction, err)


def test_partial_load_onto_another_device_moves_every_tensor(tiny_path, lora, monkeypatch):
    """`meta` stands in for a GPU: what is not loaded must be cast onto it at call time, LoRA included."""
    import comfy.model_management as mm

    # The stand-in has no memory statistics; ComfyUI's attention and memory checks ask for them.
    monkeypatch.setattr(mm, "get_total_memory", lambda dev=None, torch_total_too=False: 2**40)
    monkeypatch.setattr(mm, "get_free_memory",
                        lambda dev=None, torch_free_too=False: (2**40, 2**40) if torch_free_too else 2**40)
    for fraction in (0.1, 0.5, 1.0):
        patched = with_lora(import_pack().comfy_bridge.models.load_checkpoint(tiny_path)[0], lora)
        out, loaded = run_loaded(patched, torch.device("meta"), fraction)
        assert out.device.type == "meta" and out.shape == (2, 8, 16, 12)
        assert (loaded < patched.model_size()) == (fraction < 1)


# ------------------------------------------------------------------------------------------------ fp8 weights
def test_fp8_weights_compute_close_to_fp32(tmp_path):
    """fp8 weights with fp32 computation (ComfyUI's manual cast on a CPU): e4m3 keeps 3 mantissa bits (each weight off
    by up to 6 %), e5m2 2 bits; the tiny model's output moves by 2.6 % and 4.0 % (max relative to its peak), and the
    tolerance is about twice that."""
    models = import_pack().comfy_bridge.models
    path = write_tiny_checkpoint(tmp_path / "tiny.safetensors")
    ref, _ = run_loaded(models.load_checkpoint(path, "default")[0], torch.device("cpu"), 1.0)
    for choice in ("fp8_e4m3fn", "fp8_e5m2"):
        patcher = models.load_checkpoint(path, choice)[0]
        dm = patcher.model.diffusion_model
        assert dm.genre_embedder.weight.dtype in (torch.float8_e4m3fn, torch.float8_e5m2)
        assert patcher.model.manual_cast_dtype == torch.float32
        out, _ = run_loaded(patcher, torch.device("cpu"), 1.0)
        err = max_rel_error(out, ref)
        report(f"{choice} weights, fp32 compute, vs fp32 weights: max rel", err)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert err < (0.06 if choice == "fp8_e4m3fn" else 0.1), err  # measured 0.026 and 0.040


# ------------------------------------------------------------------------------------------------ ComfyUI's model
def test_the_bridge_builds_comfyui_layers_and_no_class_swap(tiny):
    import comfy.ops

    bridge = import_pack().comfy_bridge
    dm = tiny.model.diffusion_model
    assert type(dm) is bridge.models.ComfyCallableTransformer
    plain = [n for n, m in dm.named_modules() if any(True for _ in m.parameters(recurse=False))
             and not isinstance(m, comfy.ops.CastWeightBiasOp) and "ace_step" not in type(m).__module__.split(".")]
    assert plain == []
    assert dm.transformer_blocks[0].cross_attn.attention is bridge.operations.diffusion_attention


def test_transformer_options_patches_reach_every_attention_call(tiny):
    """ComfyUI's `optimized_attention_override` (what attention-patching nodes set) runs for each of the lyric
    encoder's and the blocks' attention calls."""
    calls = []

    def override(func, *args, **kwargs):
        calls.append(func)
        return func(*args, **kwargs)

    inputs = model_inputs()
    with torch.no_grad():
        tiny.model.apply_model(inputs["x"], inputs["t"], c_crossattn=inputs["c_crossattn"],
                               lyric_token_idx=inputs["lyric_token_idx"],
                               transformer_options={"optimized_attention_override": override})
    config = tiny_transformer()
    assert len(calls) == config.lyric_encoder_blocks + config.num_layers


def test_memory_required_follows_the_transformer_estimate(tiny):
    base = tiny.model
    shapes = {"c_crossattn": [[2, 40, 32]], "lyric_token_idx": [[2, 300]]}
    assert base.memory_required([2, 8, 16, 1000], cond_shapes=shapes) == \
        base.diffusion_model.working_bytes(2, 1000, 40, 300)
    assert base.memory_required([2, 8, 16, 2000], shapes) > base.memory_required([2, 8, 16, 1000], shapes)
    extra = base.extra_conds_shapes(cross_attn=torch.zeros(1, 40, 32), conditioning_lyrics=torch.zeros(1, 300))
    assert extra == {"c_crossattn": [1, 40, 32], "lyric_token_idx": [1, 300]}
