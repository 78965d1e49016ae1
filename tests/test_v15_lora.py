"""ACE-Step 1.5 LoRA / LoKr: files saved by the real PEFT and LyCORIS reproduce the weight changes those libraries
apply; every accepted spelling; delta = strength · scale · up@down and strength · scale · kron(w1, w2); ComfyUI's own
LoRAAdapter / LoKrAdapter given our tuples make the same change (stacked too); the refusals."""
import math

import pytest
import torch
from safetensors.torch import load_file

from ace_step.loading.adapters import LokrWeight, load_v15_adapter, parse_v15_adapter, weight_delta
from ace_step.loading.errors import CheckpointMismatchError, UnsupportedCheckpointError, WrongModelError
from ace_step.loading.lora import LoraFile, LoraScaling, parse_lora, read_lora_file
from ace_step.models.v1.transformer import ACEStepTransformer
from ace_step.models.v15.model import AceStep15
from fixtures.lora import make_test_lora
from fixtures.v15_adapters import (GOLDEN, LORA_STYLES, _spelled, decoder_modules, make_v15_lora, make_v15_lokr,
                                   reference_lokr_delta, reference_lora_delta, write_adapter)
from fixtures.v15_configs import golden_dit_config
from fixtures.v1_configs import tiny_transformer
from measure import report


def _shapes(module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


with torch.device("meta"):
    SHAPES = _shapes(AceStep15(golden_dit_config()))
    V1_SHAPES = _shapes(ACEStepTransformer(tiny_transformer()))
MODULES = decoder_modules(SHAPES)


def _file(tensors, config=None, metadata=None) -> LoraFile:
    return LoraFile(None, dict(tensors), dict(metadata or {}), config, "adapter_config.json" if config else None)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


# ------------------------------------------------------------------------------------- the trainers' own files


@pytest.mark.parametrize("name, path, kind, scale", [
    ("peft_lora", "peft_lora/adapter_model.safetensors", "LoRA", 8 / 4),
    ("peft_rslora", "peft_rslora/adapter_model.safetensors", "LoRA", 8 / math.sqrt(4)),
    ("lycoris_lokr", "lycoris_lokr.safetensors", "LoKr", 8 / 4),
    ("lycoris_lokr_rs_both", "lycoris_lokr_rs_both.safetensors", "LoKr", 3 / 2),
    ("lycoris_lokr_full", "lycoris_lokr_full.safetensors", "LoKr", 1.0),
])
def test_trainer_files_match_the_libraries(name, path, kind, scale):
    """PEFT 0.21.2's merge and LyCORIS 4.1.3's forward (tests/fixtures/v15_adapter_golden/README.json) against our
    delta, projected on 3 fixed vectors; PEFT's alpha comes from the adapter_config.json beside the file."""
    adapter = load_v15_adapter(GOLDEN / path, SHAPES)
    expected = load_file(GOLDEN / f"{name}.expected_deltas.safetensors")
    assert adapter.kind == kind
    assert all(w.scale == pytest.approx(scale, rel=1e-7) for w in adapter.weights.values())
    worst = 0.0
    for key, projected in expected.items():
        delta = weight_delta(adapter.weights[key], SHAPES[key]).double()
        probe = torch.randn(delta[0].numel(), 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        worst = max(worst, _rel(delta.flatten(1) @ probe, projected))
    report(f"v15 adapters: {name} vs its library (max rel)", worst)
    assert worst < 2e-5  # float32 sums in a different order
    if kind == "LoKr":
        assert "decoder.proj_in.1.weight" in adapter.weights  # a Conv1d, wrapped by LyCORIS 4.x


def test_peft_keys_as_the_trainer_saves_them():
    keys = load_file(GOLDEN / "peft_lora/adapter_model.safetensors").keys()
    assert "base_model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    adapter = load_v15_adapter(GOLDEN / "peft_lora/adapter_model.safetensors", SHAPES)
    assert "decoder.layers.0.self_attn.q_proj.weight" in adapter.weights
    assert "decoder.layers.1.self_attn.q_proj.weight" in adapter.weights


# ------------------------------------------------------------------------------------------------- spellings


@pytest.mark.parametrize("style", LORA_STYLES)
def test_every_lora_spelling(style, tmp_path):
    tensors, config = make_v15_lora(SHAPES, rank=4, alpha=6, style=style, seed=3)
    path = write_adapter(tmp_path / "lora" / "adapter_model.safetensors", tensors, config)
    adapter = load_v15_adapter(path, SHAPES)
    assert sorted(adapter.weights) == [m + ".weight" for m in MODULES]
    worst = 0.0
    for m in MODULES:
        w = adapter.weights[m + ".weight"]
        assert w.scale == 6 / 4
        strength = 2.5  # beyond 1
        got = weight_delta(w, SHAPES[m + ".weight"], strength)
        worst = max(worst, _rel(got, reference_lora_delta(tensors, _spelled(m, style), SHAPES[m + ".weight"],
                                                           strength * 6 / 4)))
    assert worst < 1e-6


@pytest.mark.parametrize("variant, kwargs, scale", [
    ("w2 factored", dict(dim=2, alpha=8.0), 8 / 2),
    ("both factored", dict(dim=2, alpha=3.0, decompose_w1=True, factor=8), 3 / 2),
    ("no side factored", dict(alpha=5.0, full_w2=True), 1.0),
    ("no alpha", dict(dim=2, alpha=None), 1.0),
])
def test_lokr_delta_is_scale_times_kron(variant, kwargs, scale):
    targets = ("q_proj", "mlp.down_proj", "proj_in.1")  # proj_in.1: a Conv1d [128, 192, 2]
    tensors = make_v15_lokr(SHAPES, targets=targets, seed=4, **kwargs)
    adapter = parse_v15_adapter(_file(tensors), SHAPES)
    assert adapter.kind == "LoKr"
    worst = 0.0
    for m in decoder_modules(SHAPES, targets):
        key = m + ".weight"
        assert adapter.weights[key].scale == scale
        got = weight_delta(adapter.weights[key], SHAPES[key], strength=-1.5)
        worst = max(worst, _rel(got, reference_lokr_delta(tensors, _spelled(m, "lycoris"), SHAPES[key],
                                                          -1.5 * scale)))
    assert worst < 1e-6


def test_lokr_override_alpha_and_rslora():
    tensors = make_v15_lokr(SHAPES, dim=4, alpha=8.0, seed=5)
    plain = parse_v15_adapter(_file(tensors), SHAPES, LoraScaling(alpha=6.0))
    rs = parse_v15_adapter(_file(tensors), SHAPES, LoraScaling(alpha=6.0, rslora=True))
    stored_rs = parse_v15_adapter(_file(tensors), SHAPES, LoraScaling(rslora=True))
    assert {w.scale for w in plain.weights.values()} == {6.0 / 4}
    assert {w.scale for w in rs.weights.values()} == {6.0 / 2}
    assert {w.scale for w in stored_rs.weights.values()} == {8.0 / 4}  # a stored alpha already holds rsLoRA


def test_lora_and_lokr_in_one_file_and_mixed_spellings():
    lora, _ = make_v15_lora(SHAPES, rank=2, alpha=4, style="comfyui", targets=("q_proj",), seed=6)
    lokr = make_v15_lokr(SHAPES, targets=("v_proj",), seed=7)
    adapter = parse_v15_adapter(_file({**lora, **lokr}), SHAPES)
    assert adapter.kind == "LoRA + LoKr"
    assert isinstance(adapter.weights["decoder.layers.0.self_attn.v_proj.weight"], LokrWeight)
    assert adapter.weights["decoder.layers.0.self_attn.q_proj.weight"].scale == 2.0


# -------------------------------------------------------------------------------------- ComfyUI weight patches


@pytest.fixture(scope="module")
def comfy_adapters():
    from comfy_inprocess import import_comfy

    import_comfy()
    from comfy.weight_adapter import LoKrAdapter, LoRAAdapter

    return {"lora": LoRAAdapter, "lokr": LoKrAdapter}


def _comfy_apply(adapters, weight, base, strength):
    patch = adapters[weight.comfy_kind](set(), weight.comfy_weights())
    return patch.calculate_weight(base.clone(), "key", strength, 1.0, None, lambda w: w)


@pytest.mark.parametrize("kind, kwargs", [
    ("lora", dict(rank=4, alpha=6, rslora=True)),
    ("lokr", dict(dim=2, alpha=8.0)),
    ("lokr", dict(dim=2, alpha=3.0, decompose_w1=True, factor=8)),
    ("lokr", dict(alpha=5.0, full_w2=True)),
])
def test_comfyui_adapters_apply_our_tuples(comfy_adapters, kind, kwargs):
    """ComfyUI 0.3.75's LoRAAdapter / LoKrAdapter.calculate_weight with our tuples gives base + strength · delta,
    the Conv1d proj_in.1 included (a full conv w2 goes flattened, which ComfyUI's kron needs)."""
    targets = ("q_proj", "proj_in.1")
    if kind == "lora":
        tensors, config = make_v15_lora(SHAPES, style="peft", targets=targets, seed=8, **kwargs)
    else:
        tensors, config = make_v15_lokr(SHAPES, targets=targets, seed=8, **kwargs), None
    adapter = parse_v15_adapter(_file(tensors, config), SHAPES)
    patches = adapter.comfy_patches()
    assert sorted(patches) == sorted("diffusion_model." + k for k in adapter.weights)
    assert {kind for kind, _ in patches.values()} == {kind}
    worst = 0.0
    for key, weight in adapter.weights.items():
        base = torch.randn(SHAPES[key], generator=torch.Generator().manual_seed(9))
        got = _comfy_apply(comfy_adapters, weight, base, 1.7)
        worst = max(worst, _rel(got - base, weight_delta(weight, SHAPES[key], 1.7)))
    report(f"v15 adapters: ComfyUI {kind} patch vs our delta (max rel)", worst)
    assert worst < 1e-5


def test_stacked_adapters_add(comfy_adapters):
    key = "decoder.layers.0.self_attn.q_proj.weight"
    lora, config = make_v15_lora(SHAPES, rank=4, alpha=8, targets=("q_proj",), seed=10)
    lokr = make_v15_lokr(SHAPES, targets=("q_proj",), seed=11)
    first = parse_v15_adapter(_file(lora, config), SHAPES).weights[key]
    second = parse_v15_adapter(_file(lokr), SHAPES).weights[key]
    base = torch.randn(SHAPES[key], generator=torch.Generator().manual_seed(12))
    stacked = _comfy_apply(comfy_adapters, second, _comfy_apply(comfy_adapters, first, base, 0.5), 3.0)
    expected = base + weight_delta(first, SHAPES[key], 0.5) + weight_delta(second, SHAPES[key], 3.0)
    assert _rel(stacked - base, expected - base) < 1e-6


# ------------------------------------------------------------------------------------------------- refusals


def test_v1_lora_refused_by_the_15_model():
    tensors, metadata = make_test_lora(tiny_transformer(), rank=2)
    with pytest.raises(WrongModelError, match=r"ACE-Step v1 LoRA .*Apply it to an ACE-Step v1 model"):
        parse_v15_adapter(_file(tensors, metadata=metadata), SHAPES)


@pytest.mark.parametrize("make", [
    lambda: make_v15_lora(SHAPES, style="peft")[0],
    lambda: make_v15_lora(SHAPES, style="comfyui", alpha=4)[0],
    lambda: make_v15_lokr(SHAPES),
])
def test_15_adapters_refused_by_the_v1_model(make):
    with pytest.raises(WrongModelError, match=r"for ACE-Step 1\.5 .*ACE-Step 1\.5 LoRA node"):
        parse_lora(_file(make()), V1_SHAPES)


@pytest.mark.parametrize("extra, kind", [
    ({"base_model.model.layers.0.self_attn.q_proj.lora_magnitude_vector": torch.ones(128)}, "DoRA"),
    ({"lycoris_layers_0_self_attn_q_proj.dora_scale": torch.ones(128, 1)}, "DoRA"),
    ({"lycoris_layers_0_self_attn_k_proj.hada_w1_a": torch.ones(64, 2)}, "LoHa"),
    ({"lycoris_layers_0_self_attn_q_proj.lokr_t2": torch.ones(2, 2, 1)}, "Tucker LoKr"),
])
def test_other_adapter_kinds_refused(extra, kind):
    tensors = {**make_v15_lokr(SHAPES), **extra}
    with pytest.raises(UnsupportedCheckpointError, match=kind):
        parse_v15_adapter(_file(tensors), SHAPES)


def test_mismatches_name_the_problem():
    tensors, config = make_v15_lora(SHAPES, style="peft")
    wrong = dict(tensors, **{"base_model.model.layers.9.self_attn.q_proj.lora_A.weight": torch.ones(4, 128),
                             "base_model.model.layers.9.self_attn.q_proj.lora_B.weight": torch.ones(128, 4)})
    with pytest.raises(CheckpointMismatchError, match=r"layers\.9"):
        parse_v15_adapter(_file(wrong), SHAPES)
    with pytest.raises(WrongModelError, match="none of its"):
        parse_v15_adapter(_file({"base_model.model.foo.lora_A.weight": torch.ones(2, 3),
                                 "base_model.model.foo.lora_B.weight": torch.ones(3, 2)}), SHAPES)
    lokr = make_v15_lokr(SHAPES, targets=("q_proj",))
    key = next(k for k in lokr if k.endswith("lokr_w2_b"))
    lokr[key] = torch.ones(lokr[key].shape[0], lokr[key].shape[1] * 2)
    with pytest.raises(CheckpointMismatchError, match="another size"):
        parse_v15_adapter(_file(lokr), SHAPES)
    lokr = make_v15_lokr(SHAPES, targets=("q_proj",), decompose_w1=True, factor=8, dim=2)
    key = next(k for k in lokr if k.endswith("lokr_w1_a"))
    lokr[key], lokr[key.replace("w1_a", "w1_b")] = torch.ones(8, 3), torch.ones(3, 8)
    with pytest.raises(CheckpointMismatchError, match="rank 3 on w1 and 2 on w2"):
        parse_v15_adapter(_file(lokr), SHAPES)
    with pytest.raises(WrongModelError, match="not a LoRA or LoKr"):
        parse_v15_adapter(_file({"decoder.layers.0.self_attn.q_proj.weight": torch.ones(2, 2)}), SHAPES)


def test_lycoris_metadata_file_reads(tmp_path):
    """The trainer's LoKr file name and metadata (algo/format) read through the same reader."""
    path = write_adapter(tmp_path / "lokr_weights.safetensors", make_v15_lokr(SHAPES),
                         metadata={"algo": "lokr", "format": "lycoris", "lokr_config": '{"linear_dim": 2}'})
    adapter = parse_v15_adapter(read_lora_file(path), SHAPES)
    assert len(adapter.weights) == len(MODULES)
