"""The ACE-Step 1.5 LoRA / LoKr node (nodes/v15_lora.py) in ComfyUI's execution model: the adapter rides as ComfyUI
weight patches, so the MODEL equals one whose weights were merged by hand at a full load and at every partial-load
budget (the loaded layers patched in place, the ones left behind at call time), stacked adapters add, and the
v1 / 1.5 nodes refuse each other's models and files with the node to use.

Networks are the tiny random-weight 1.5 DiT of test_v15_nodes; tolerances are stated per test."""
import pytest
import torch

from ace_step.loading.adapters import parse_v15_adapter, weight_delta
from ace_step.models.v15.model import AceStep15
from fixtures.v15_adapters import make_v15_lokr, make_v15_lora, write_adapter
from measure import max_rel_error, report
from test_v15_nodes import bridge, make_model, pack_nodes, randomized, run_loaded, tiny_dit_config

BUDGETS = (0.1, 0.4, 0.8, 1.0)
MERGED_TOL = 1e-6  # measured 0 to 3e-7: the same arithmetic, only where the patch is applied differs
TARGETS = ("q_proj", "v_proj", "o_proj", "down_proj")  # self- and cross-attention, the MLP


@pytest.fixture(scope="module")
def silence():
    return bridge("v15_silence").SilenceLatent("test", head=torch.randn(1, 64, 6, generator=torch.Generator()
                                                                       .manual_seed(5)))


def plain():
    return randomized(AceStep15(tiny_dit_config()), seed=1)


@pytest.fixture
def model(silence):
    return make_model(plain(), silence)


def shapes():
    return {k: tuple(v.shape) for k, v in plain().state_dict().items()}


@pytest.fixture(scope="module")
def adapter_files(tmp_path_factory):
    """A PEFT LoRA (alpha in adapter_config.json beside it, rsLoRA) and a LyCORIS LoKr, as files."""
    root = tmp_path_factory.mktemp("loras")
    lora, config = make_v15_lora(shapes(), rank=4, alpha=6, rslora=True, targets=TARGETS, seed=3)
    lokr = make_v15_lokr(shapes(), dim=2, alpha=3.0, targets=TARGETS, seed=4)
    return {"lora": write_adapter(root / "peft" / "adapter_model.safetensors", lora, config),
            "lokr": write_adapter(root / "lokr.safetensors", lokr)}


def node_apply(model, path, strength, monkeypatch):
    """The node on a file (model_file pointed at it, as ComfyUI's models/loras/ lists it)."""
    v15_lora = pack_nodes("v15_lora")
    monkeypatch.setattr(v15_lora, "model_file", lambda folder, name: path)
    return v15_lora.LoraLoader15.execute(model=model, lora_name=path.name, strength=strength, alpha=0.0,
                                         rank_scaling="from file").args[0]


def merged_model(silence, adapters):
    """The tiny DiT with each (file, strength) merged into its weights by hand: base + strength · delta."""
    from ace_step.loading.lora import read_lora_file

    net = plain()
    with torch.no_grad():
        for path, strength in adapters:
            adapter = parse_v15_adapter(read_lora_file(path), net)
            for key, w in adapter.weights.items():
                p = net.get_parameter(key)
                p.add_(weight_delta(w, p.shape, strength).to(p.dtype))
    return make_model(net, silence)


@pytest.mark.parametrize("kinds", [("lora",), ("lokr",), ("lora", "lokr")])
def test_adapter_equals_merged_weights_at_every_load(model, silence, adapter_files, monkeypatch, kinds):
    """LoRA at 1.3, LoKr at 2.5 (beyond 1), and both stacked: the node's MODEL at a full load and partial loads of
    10 / 40 / 80 % equals the merged weights."""
    strengths = {"lora": 1.3, "lokr": 2.5}
    noise = torch.randn(2, 64, 14, generator=torch.Generator().manual_seed(8))
    reference, _ = run_loaded(merged_model(silence, [(adapter_files[k], strengths[k]) for k in kinds]),
                              torch.device("cpu"), 1.0, noise)
    base_out, _ = run_loaded(model, torch.device("cpu"), 1.0, noise)
    assert max_rel_error(base_out, reference) > 1e-3, "the adapter must change the output for this test to mean much"
    patched = model
    for k in kinds:
        patched = node_apply(patched, adapter_files[k], strengths[k], monkeypatch)
    assert not model.patches  # the input MODEL is left alone (a clone carries the patches)
    for fraction in BUDGETS:
        out, loaded = run_loaded(patched, torch.device("cpu"), fraction, noise)
        assert (loaded < patched.model_size()) == (fraction < 1)
        err = max_rel_error(out, reference)
        report(f"1.5 {' + '.join(kinds)} node, {fraction:.0%} loaded, vs merged weights: max rel", err)
        assert err <= MERGED_TOL, (fraction, err)


def test_strength_zero_is_the_model_itself(model, adapter_files, monkeypatch):
    assert node_apply(model, adapter_files["lokr"], 0.0, monkeypatch) is model


def test_v1_and_15_nodes_refuse_each_others_models_and_files(model, adapter_files, tmp_path, monkeypatch):
    from fixtures.lora import make_test_lora
    from fixtures.v1_configs import tiny_transformer

    lora_nodes = pack_nodes("lora")
    # a 1.5 MODEL into the v1 node
    monkeypatch.setattr(lora_nodes, "model_file", lambda folder, name: adapter_files["lora"])
    with pytest.raises(TypeError, match="ACE-Step 1.5 LoRA / LoKr node"):
        lora_nodes.LoraLoader.execute(model=model, lora_name="x", strength=1.0, alpha=0.0, rank_scaling="from file")
    # a v1 MODEL into the 1.5 node
    v1_model = types_v1_model()
    with pytest.raises(TypeError, match="ACE-Step v1: apply v1 LoRAs with the ACE-Step LoRA node"):
        node_apply(v1_model, adapter_files["lora"], 1.0, monkeypatch)
    # a v1 LoRA file on the 1.5 model
    tensors, metadata = make_test_lora(tiny_transformer(), rank=2)
    v1_file = write_adapter(tmp_path / "v1_lora.safetensors", tensors, metadata=metadata)
    with pytest.raises(Exception, match="ACE-Step v1 LoRA .*ACE-Step LoRA node"):
        node_apply(model, v1_file, 1.0, monkeypatch)
    # a 1.5 LoRA file on a v1 model, through the v1 node
    monkeypatch.setattr(lora_nodes, "model_file", lambda folder, name: adapter_files["lokr"])
    with pytest.raises(Exception, match="for ACE-Step 1.5.*ACE-Step 1.5 LoRA"):
        lora_nodes.LoraLoader.execute(model=v1_model, lora_name="x", strength=1.0, alpha=0.0,
                                      rank_scaling="from file")


def types_v1_model():
    """A tiny ACE-Step v1 MODEL as the pack's v1 loader builds it."""
    from ace_step.models.v1.transformer import ACEStepTransformer
    from fixtures.v1_configs import tiny_transformer
    from pack_inprocess import comfy_transformer

    return bridge("models").model_patcher(comfy_transformer(ACEStepTransformer(tiny_transformer()).eval()), None)


def test_file_spellings_reach_the_same_patches(adapter_files, model):
    """The node's patches are ComfyUI adapters keyed diffusion_model.<parameter>, one per target weight."""
    from ace_step.loading.lora import read_lora_file

    v15_lora = pack_nodes("v15_lora")
    adapter = parse_v15_adapter(read_lora_file(adapter_files["lokr"]), model.model.diffusion_model)
    patches = v15_lora.adapter_patches(adapter)
    assert set(patches) == {f"diffusion_model.{k}" for k in adapter.weights}
    assert {type(p).__name__ for p in patches.values()} == {"LoKrAdapter"}
