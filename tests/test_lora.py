"""LoRA: reading every supported spelling, the scale rules, merging, and ComfyUI's patcher applying the same change
(in process, and through the real server with the LoRA node between the loader and KSampler)."""
import copy
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from ace_step.loading.lora import DEFAULT_TARGETS, LoraFile, LoraScaling, load_lora, parse_lora, read_lora_file
from ace_step.loading.errors import (
    CheckpointError,
    CheckpointMismatchError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    UnsupportedCheckpointError,
    WrongModelError,
)
from ace_step.loading.safetensors_io import save_safetensors
from ace_step.models.v1.transformer import ACEStepTransformer
from comfy_harness import run_prompt
from fixtures.lora import make_test_lora, merge_lora, target_modules, unmerge_lora, unmerged_lora, write_test_lora
from fixtures.v1_configs import tiny_transformer
from measure import OUTPUT_DIR, max_rel_error, report
from pack_inprocess import comfy_transformer, import_pack
from workflow_prompts import ROOT, TINY_LORA, prepare

CONFIG = tiny_transformer()
CONV_TARGETS = DEFAULT_TARGETS + ("inverted_conv.conv", "point_conv.conv")  # 1x1 convs: LoRA on Conv1d weights


def _transformer() -> ACEStepTransformer:
    torch.manual_seed(0)
    return ACEStepTransformer(CONFIG).eval()


@pytest.fixture(scope="module")
def base_state():
    return {k: v.clone() for k, v in _transformer().state_dict().items()}


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(3)
    return (torch.randn(2, 8, 16, 12, generator=g), torch.tensor([0.7, 0.3]),
            torch.randn(2, 6, CONFIG.text_embedding_dim, generator=g), torch.randint(0, 6693, (2, 9), generator=g))


def _run(model, inputs):
    x, t, text, lyrics = inputs
    with torch.no_grad():
        return ACEStepTransformer.forward(model, x, t, text, lyrics)


@pytest.fixture(scope="module")
def loras(tmp_path_factory):
    """Two LoRAs with all kinds of targets: PEFT keys with rsLoRA metadata, and ComfyUI keys with .alpha tensors."""
    d = tmp_path_factory.mktemp("loras")
    return {
        "peft_rslora": write_test_lora(d / "a.safetensors", CONFIG, rank=4, alpha=8, targets=CONV_TARGETS, seed=1,
                                       rslora=True),
        "comfyui": write_test_lora(d / "b.safetensors", CONFIG, rank=3, alpha=2, targets=CONV_TARGETS, seed=2,
                                   key_style="comfyui"),
    }


def _expected_delta(tensors: dict, spelled: str, shape, scale: float) -> torch.Tensor:
    """scale · up @ down in float64, from the raw file tensors."""
    down = next(tensors[spelled + s] for s in (".lora_A.weight", ".lora_down.weight") if spelled + s in tensors)
    up = next(tensors[spelled + s] for s in (".lora_B.weight", ".lora_up.weight") if spelled + s in tensors)
    return (scale * up.double().flatten(1) @ down.double().flatten(1)).reshape(shape)


# ---------------------------------------------------------------------------------------------------------------
# Reading and scale

@pytest.mark.parametrize("key_style, alpha, rslora, scale", [
    ("peft", None, False, 1.0),  # a diffusers 0.33 save (RapMachine): no alpha anywhere
    ("peft", 8, False, 2.0),
    ("peft", 8, True, 4.0),  # rsLoRA: alpha / sqrt(rank)
    ("peft_prefixed", 2, False, 0.5),
    ("comfyui", 2, False, 0.5),
    ("comfyui", 2, True, 1.0),  # .alpha tensors + use_rslora metadata
    ("kohya", 8, False, 2.0),
])
def test_every_key_style_and_scale(tmp_path, base_state, key_style, alpha, rslora, scale):
    path = write_test_lora(tmp_path / "l.safetensors", CONFIG, rank=4, alpha=alpha, rslora=rslora, key_style=key_style)
    tensors, _ = make_test_lora(CONFIG, rank=4, alpha=alpha, rslora=rslora, key_style=key_style)
    lora = load_lora(path, base_state)
    modules = target_modules(CONFIG)
    assert sorted(lora.weights) == sorted(m + ".weight" for m in modules)
    assert "speaker_embedder.weight" in lora.weights and "lyric_encoder.encoders.1.self_attn.linear_v.weight" in \
        lora.weights and "transformer_blocks.1.cross_attn.to_out.0.weight" in lora.weights
    assert {w.scale for w in lora.weights.values()} == {scale}, lora.scaling
    # The file's tensors arrive unchanged under our names, whatever the spelling.
    spelled = {"peft": "{}", "peft_prefixed": "base_model.model.{}", "comfyui": "diffusion_model.{}",
               "kohya": "lora_unet_{}"}[key_style]
    for m in modules:
        key = spelled.format(m.replace(".", "_") if key_style == "kohya" else m)
        w = lora.weights[m + ".weight"]
        down = tensors.get(key + ".lora_A.weight", tensors.get(key + ".lora_down.weight"))
        assert torch.equal(w.down, down) and w.rank == 4


def test_rapmachine_scale_decision(tmp_path, base_state):
    """RapMachine's shape: r=256 trained with alpha 32 + rsLoRA. Saved without alpha it runs at 1 (ACE-Step's app,
    ComfyUI core); with its training config in the metadata, or with the override, at 32/sqrt(256) = 2."""
    bare = load_lora(write_test_lora(tmp_path / "bare.safetensors", CONFIG, rank=256), base_state)
    assert {w.scale for w in bare.weights.values()} == {1.0}
    assert "no alpha stored" in bare.scaling
    trained = write_test_lora(tmp_path / "cfg.safetensors", CONFIG, rank=256, alpha=32, rslora=True)
    assert {w.scale for w in load_lora(trained, base_state).weights.values()} == {2.0}
    override = load_lora(tmp_path / "bare.safetensors", base_state, LoraScaling(alpha=32, rslora=True))
    assert {w.scale for w in override.weights.values()} == {2.0} and "override" in override.scaling
    # Each half of the override alone: alpha with the file's (absent) rsLoRA flag, or rsLoRA with alpha = rank.
    assert {w.scale for w in load_lora(trained, base_state, LoraScaling(rslora=False)).weights.values()} == {0.125}
    assert {w.scale for w in load_lora(tmp_path / "bare.safetensors", base_state,
                                       LoraScaling(rslora=True)).weights.values()} == {16.0}


def test_flat_and_pipeline_metadata(tmp_path, base_state):
    tensors, _ = make_test_lora(CONFIG, rank=4)
    save_safetensors(tmp_path / "flat.safetensors", tensors, {"lora_alpha": "16", "r": "4", "use_rslora": "True"})
    assert {w.scale for w in load_lora(tmp_path / "flat.safetensors", base_state).weights.values()} == {8.0}
    # diffusers' pipeline save: the PEFT config with every field prefixed by the component.
    save_safetensors(tmp_path / "pipe.safetensors", tensors, {"lora_adapter_metadata": json.dumps(
        {"transformer.r": 4, "transformer.lora_alpha": 8, "transformer.alpha_pattern": {"speaker_embedder": 12},
         "transformer.rank_pattern": {}})})
    lora = load_lora(tmp_path / "pipe.safetensors", base_state)
    assert lora.weights["speaker_embedder.weight"].scale == 3.0
    assert {w.scale for k, w in lora.weights.items() if k != "speaker_embedder.weight"} == {2.0}


def test_adapter_config_next_to_the_file(tmp_path, base_state):
    folder = tmp_path / "rap"
    path = write_test_lora(folder / "pytorch_lora_weights.safetensors", CONFIG, rank=4, key_style="peft_prefixed")
    (folder / "adapter_config.json").write_text(json.dumps(
        {"r": 4, "lora_alpha": 8, "use_rslora": True, "rank_pattern": {"to_out.0": 4},
         "alpha_pattern": {r"transformer_blocks\.1\.attn\.to_q": 2}}))
    lora = load_lora(path, base_state)
    assert lora.weights["transformer_blocks.1.attn.to_q.weight"].scale == 1.0
    assert lora.weights["transformer_blocks.0.attn.to_q.weight"].scale == 4.0 and "adapter_config.json" in lora.scaling
    # Another LoRA in the folder makes the shared config ambiguous: ignored; `<stem>.adapter_config.json` is not.
    write_test_lora(folder / "other.safetensors", CONFIG)
    assert {w.scale for w in load_lora(path, base_state).weights.values()} == {1.0}
    (folder / "pytorch_lora_weights.adapter_config.json").write_text(json.dumps({"r": 4, "lora_alpha": 12}))
    assert {w.scale for w in load_lora(path, base_state).weights.values()} == {3.0}
    # The file's own metadata comes before any config beside it.
    write_test_lora(folder / "pytorch_lora_weights.safetensors", CONFIG, rank=4, alpha=2)
    assert {w.scale for w in load_lora(path, base_state).weights.values()} == {0.5}


def test_layers_ace_step_never_runs_are_skipped(base_state):
    tensors, _ = make_test_lora(CONFIG, rank=2, targets=("to_q",))
    for n in range(CONFIG.num_layers):  # diffusers' unused joint-attention projections
        tensors[f"transformer_blocks.{n}.cross_attn.add_q_proj.lora_A.weight"] = torch.zeros(2, 64)
        tensors[f"transformer_blocks.{n}.cross_attn.add_q_proj.lora_B.weight"] = torch.zeros(64, 2)
    lora = parse_lora(LoraFile(None, tensors, {}), base_state)
    assert lora.ignored == ("transformer_blocks.0.cross_attn.add_q_proj", "transformer_blocks.1.cross_attn.add_q_proj")
    assert sorted(lora.weights) == sorted(f"transformer_blocks.{n}.{a}.to_q.weight" for n in range(2)
                                          for a in ("attn", "cross_attn"))


# ---------------------------------------------------------------------------------------------------------------
# Errors name the keys and the fix

def _pair(module: str, rank=4, out=64, inp=64, down="lora_A", up="lora_B") -> dict:
    return {f"{module}.{down}.weight": torch.zeros(rank, inp), f"{module}.{up}.weight": torch.zeros(out, rank)}


@pytest.mark.parametrize("tensors, metadata, error, message", [
    (_pair("lora_unet_down_blocks_0_attentions_0_proj_in", down="lora_down", up="lora_up"), {}, WrongModelError,
     "for a Stable Diffusion / SDXL image model"),
    ({**_pair("transformer.single_transformer_blocks.0.attn.to_q", out=3072, inp=3072),
      **_pair("transformer.transformer_blocks.0.attn.to_q", out=3072, inp=3072)}, {}, WrongModelError,
     "for a Flux image model"),
    (_pair("transformer.transformer_blocks.0.attn.to_q", out=3072, inp=3072), {}, CheckpointMismatchError,
     (r"'transformer_blocks.0.attn.to_q' is \[64, 64\] in this model, but the LoRA's up @ down gives "
      r"\[3072, 3072\].*made for a model of another size")),
    ({"model.diffusion_model.proj_in.weight": torch.zeros(4, 4)}, {}, WrongModelError, "is not a LoRA"),
    (_pair("encoder.layers.0.q_proj"), {}, WrongModelError, "none of this LoRA's 1 target modules.*encoder.layers.0"),
    ({**_pair("transformer_blocks.0.attn.to_q"), **_pair("transformer_blocks.0.attn.to_qq")}, {},
     CheckpointMismatchError, "1 target modules are not layers.*transformer_blocks.0.attn.to_qq"),
    ({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 64),
      "transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(64, 3)}, {}, CheckpointMismatchError,
     r"rank mismatch in 'transformer_blocks.0.attn.to_q'.*\[4, 64\].*\[64, 3\]"),
    (_pair("transformer_blocks.0.attn.to_q"), {"lora_adapter_metadata": json.dumps({"r": 8, "lora_alpha": 8})},
     CheckpointMismatchError, "says rank 8 for 'transformer_blocks.0.attn.to_q', but its tensors have rank 4"),
    ({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 64)}, {}, CheckpointMismatchError,
     "has a LoRA down tensor .* but no up tensor"),
    ({**_pair("transformer_blocks.0.attn.to_q"), "transformer_blocks.0.attn.to_q.lora_magnitude_vector":
      torch.ones(64)}, {}, UnsupportedCheckpointError, "DoRA adapter"),
    ({**_pair("transformer_blocks.0.attn.to_q"), "transformer_blocks.0.attn.to_q.extra": torch.ones(1)}, {},
     CheckpointMismatchError, "belong to no LoRA pair: transformer_blocks.0.attn.to_q.extra"),
    (_pair("transformer_blocks.0.attn.to_q"), {"lora_alpha": "lots"}, CorruptCheckpointError,
     "lora_alpha = 'lots' is not a positive number"),
], ids=["sdxl", "flux", "other-size", "not-a-lora", "unknown-model", "unknown-module", "rank-pair", "rank-config",
        "missing-up", "dora", "stray", "bad-metadata"])
def test_errors(base_state, tensors, metadata, error, message):
    with pytest.raises(error, match=message) as info:
        parse_lora(LoraFile("my_lora.safetensors", tensors, metadata), base_state)
    assert isinstance(info.value, CheckpointError) and str(info.value).startswith("my_lora.safetensors: ")
    assert info.value.fix


def test_pickle_lora_is_refused(tmp_path):
    path = tmp_path / "lora.pt"
    torch.save({"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(2, 64)}, path)
    with pytest.raises(UnsafeCheckpointError, match="refusing to open"):
        read_lora_file(path)


# ---------------------------------------------------------------------------------------------------------------
# Applying: our merge, the unmerged side branches and ComfyUI's patcher agree

@pytest.fixture(scope="module")
def comfy():
    pack = import_pack()
    return pack.comfy_bridge.models, pack.nodes.lora


def _patched(comfy, base_state, stack):
    """ComfyUI's path: our MODEL, LoRA nodes' patches stacked [(lora, strength)], weights patched in."""
    comfy_models, lora_nodes = comfy
    model = _transformer()
    model.load_state_dict(base_state)
    patcher = comfy_models.model_patcher(comfy_transformer(model), None)
    for lora, strength in stack:
        patcher = lora_nodes.add_lora(patcher, lora, strength)
    patcher.patch_model()
    return patcher


def _comfy_run(patcher, inputs):
    x, t, text, lyrics = inputs
    with torch.no_grad():  # called the way ComfyUI's ACE-Step BaseModel calls its diffusion model
        return patcher.model.diffusion_model(x, t, context=text, lyric_token_idx=lyrics)


def test_strength_zero_is_the_base_exactly(comfy, base_state, inputs, loras):
    lora = load_lora(loras["peft_rslora"], base_state)
    base = _transformer()
    merge_lora(base, lora, 0.0)
    assert all(torch.equal(v, base_state[k]) for k, v in base.state_dict().items())
    plain = _patched(comfy, base_state, [])
    try:
        reference = _comfy_run(plain, inputs)
    finally:
        plain.unpatch_model()
    patcher = _patched(comfy, base_state, [(lora, 0.0)])
    try:
        weights = patcher.model.diffusion_model.state_dict()
        assert all(torch.equal(weights[k], v) for k, v in base_state.items())
        assert torch.equal(_comfy_run(patcher, inputs), reference)
    finally:
        patcher.unpatch_model()


def test_merged_unmerged_and_comfyui_agree(comfy, base_state, inputs, loras):
    lora = load_lora(loras["peft_rslora"], base_state)
    assert any(k.endswith("inverted_conv.conv.weight") for k in lora.weights)  # a Conv1d target too
    model = _transformer()
    base = _run(model, inputs)
    with unmerged_lora(model, lora, 1.3):
        unmerged = _run(model, inputs)
    assert torch.equal(_run(model, inputs), base), "the side branches outlived the with block"
    merge_lora(model, lora, 1.3)
    merged = _run(model, inputs)
    patcher = _patched(comfy, base_state, [(lora, 1.3)])
    try:
        theirs = _comfy_run(patcher, inputs)
    finally:
        patcher.unpatch_model()
    effect = max_rel_error(merged, base)
    vs_comfy, vs_unmerged = max_rel_error(merged, theirs), max_rel_error(merged, unmerged)
    report("lora: merged vs ComfyUI patcher, max rel error", vs_comfy)
    report("lora: merged vs unmerged, max rel error", vs_unmerged)
    report("lora: effect at strength 1.3 (rel change of the output)", effect)
    assert effect > 0.01, "the LoRA barely changes the output: the test would not see a wrong merge"
    assert vs_comfy <= 1e-6 and vs_unmerged <= 1e-5


def test_stacked_loras_add_and_strengths_scale_linearly(comfy, base_state, inputs, loras):
    a, b = (load_lora(loras[k], base_state) for k in ("peft_rslora", "comfyui"))
    raw_a, raw_b = (read_lora_file(loras[k]).tensors for k in ("peft_rslora", "comfyui"))
    scale_a, scale_b = 8 / math.sqrt(4), 2 / 3
    patcher = _patched(comfy, base_state, [(a, 0.7), (b, -1.3)])
    try:
        weights = {k: v.clone() for k, v in patcher.model.diffusion_model.state_dict().items()}
        stacked = _comfy_run(patcher, inputs)
    finally:
        patcher.unpatch_model()
    for name, base in base_state.items():
        expected = base.double()
        if name in a.weights:
            expected = expected + 0.7 * _expected_delta(raw_a, name[: -len(".weight")], base.shape, scale_a)
        if name in b.weights:
            spelled = "diffusion_model." + name[: -len(".weight")]
            expected = expected - 1.3 * _expected_delta(raw_b, spelled, base.shape, scale_b)
        assert (weights[name].double() - expected).abs().max() <= 1e-6 * base.abs().max(), name
    ours = _transformer()
    merge_lora(ours, a, 0.7)
    merge_lora(ours, b, -1.3)
    assert max_rel_error(_run(ours, inputs), stacked) <= 1e-6

    name = "transformer_blocks.1.attn.to_v.weight"
    unit = _patched(comfy, base_state, [(b, 1.0)])
    try:
        unit_delta = unit.model.diffusion_model.get_parameter(name).double() - base_state[name].double()
    finally:
        unit.unpatch_model()
    for strength in (-10.0, -1.0, 0.25, 2.5):
        patcher = _patched(comfy, base_state, [(b, strength)])
        try:
            delta = patcher.model.diffusion_model.get_parameter(name).double() - base_state[name].double()
            theirs = _comfy_run(patcher, inputs)
        finally:
            patcher.unpatch_model()
        assert (delta - strength * unit_delta).abs().max() <= 1e-6 * abs(strength) * unit_delta.abs().max()
        ours = _transformer()
        merge_lora(ours, b, strength)
        # Both sides add the same float32 delta to the weights in a different order; at |strength| 10 the delta is
        # ten times the weights, so rounding grows with it (1.6-1.8e-6 seen on 1-2 threads at -10).
        assert max_rel_error(_run(ours, inputs), theirs) <= 1e-6 * max(1.0, abs(strength) / 4), strength


def test_removing_restores_the_base(comfy, base_state, inputs, loras):
    a, b = (load_lora(loras[k], base_state) for k in ("peft_rslora", "comfyui"))
    patcher = _patched(comfy, base_state, [(a, 2.0), (b, -0.5)])
    weights = patcher.model.diffusion_model
    assert not torch.equal(weights.get_parameter("speaker_embedder.weight"), base_state["speaker_embedder.weight"])
    patcher.unpatch_model()
    assert all(torch.equal(v, base_state[k]) for k, v in weights.state_dict().items()), "unpatch is not bit-exact"
    # Our unmerge subtracts the same float32 delta: back to the base up to rounding.
    model = _transformer()
    merge_lora(model, a, 2.0)
    unmerge_lora(model, a, 2.0)
    assert max(max_rel_error(v, base_state[k]) for k, v in model.state_dict().items()) <= 1e-6


# ---------------------------------------------------------------------------------------------------------------
# The node in the real server

def _run_saving_latent(comfy_server, prompt, tag):
    prompt = copy.deepcopy(prompt)
    sampler = next(k for k, n in prompt.items() if n["class_type"] == "KSampler")
    prompt["98"] = {"class_type": "SaveLatent",
                    "inputs": {"samples": [sampler, 0], "filename_prefix": f"tests/lora_{tag}"}}
    return run_prompt(comfy_server, prompt, timeout=300)


def _latent(comfy_server, prompt, tag) -> torch.Tensor:
    result = _run_saving_latent(comfy_server, prompt, tag)
    assert result.status == "success", f"{result.error}\n{comfy_server.log_tail()}"
    [saved] = result.output_files("latents")
    return load_file(OUTPUT_DIR / "comfy-base" / "output" / saved["subfolder"] / saved["filename"])["latent_tensor"]


def test_lora_node_between_loader_and_sampler(comfy_server, tiny_checkpoint):
    """The LoRA workflow's graph, sampled latents saved (exact floats, no 16-bit audio rounding): the base model; the
    LoRA at 1.5; two stacked LoRA nodes at +1.5 and -1.5; the LoRA node at strength 0, which must give the base
    latent bit for bit although the runs before patched the very same weights; a Flux LoRA: a clear error."""
    prompt = prepare(json.loads((ROOT / "workflows/api/ace_step_lora.json").read_text()), tiny_checkpoint)
    lora_id = next(k for k, n in prompt.items() if n["class_type"] == "AceStudioLoraLoader")
    shift = next(n for n in prompt.values() if n["class_type"] == "ModelSamplingSD3")
    assert prompt[lora_id]["inputs"]["lora_name"] == TINY_LORA and shift["inputs"]["model"] == [lora_id, 0]
    for key in [k for k, n in prompt.items() if n["class_type"] in ("AceStudioLatentToAudio", "AceStudioSaveAudio")]:
        del prompt[key]
    next(n for n in prompt.values() if n["class_type"] == "KSampler")["inputs"]["seed"] = 7

    without = copy.deepcopy(prompt)
    del without[lora_id]
    next(n for n in without.values() if n["class_type"] == "ModelSamplingSD3")["inputs"]["model"] = ["1", 0]
    base = _latent(comfy_server, without, "base")

    prompt[lora_id]["inputs"]["strength"] = 1.5
    boosted = _latent(comfy_server, prompt, "boosted")

    stacked = copy.deepcopy(prompt)
    stacked["99"] = {"class_type": "AceStudioLoraLoader",
                     "inputs": {**prompt[lora_id]["inputs"], "strength": -1.5, "model": [lora_id, 0]}}
    next(n for n in stacked.values() if n["class_type"] == "ModelSamplingSD3")["inputs"]["model"] = ["99", 0]
    cancelled = _latent(comfy_server, stacked, "cancelled")

    prompt[lora_id]["inputs"]["strength"] = 0.0
    off = _latent(comfy_server, prompt, "off")

    change, residue = max_rel_error(boosted, base), max_rel_error(cancelled, base)
    report("lora server: latent change at strength 1.5 (max rel)", change)
    report("lora server: latent change with +1.5 and -1.5 stacked (max rel)", residue)
    assert change > 1e-2
    assert residue < 1e-5
    assert torch.equal(off, base), "the base model changed after a LoRA run: the patches were not removed"

    flux = OUTPUT_DIR / "comfy-base" / "models" / "loras" / "flux_style_lora.safetensors"
    save_safetensors(flux, _pair("transformer.single_transformer_blocks.0.attn.to_q"))
    prompt[lora_id]["inputs"].update(lora_name=flux.name, strength=1.0)
    result = _run_saving_latent(comfy_server, prompt, "flux")
    assert result.status == "error"
    assert "this LoRA is for a Flux image model, not ACE-Step v1" in result.error["exception_message"]
