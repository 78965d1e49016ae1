"""ace_step/loading/v15_checkpoint.py: ACE-Step 1.5 from every file kind users have.

- The tiny checkpoints (tests/fixtures/v15_tiny_checkpoint.py) in the three layouts load into the same networks, with
  the same outputs on the same inputs; their original-layout folders are what transformers and diffusers read.
- The full-size key/shape lists of every real file kind pass the strict checks from shapes alone: the DiT from the
  real file's list (shared/reference/data/ace15) and its XL rewrite, the Qwen3s from transformers' models built on
  meta, the VAE from diffusers' AutoencoderOobleck (the original folder) and our ComfyUI-spelling map.
- Bad files get the right error class and a message that names the problem and the fix; ACE-Step v1 files and
  1.5 files each refused by the other family's loader, naming the node to use.
"""
import functools
import json
import os
import re
import shutil
import struct

import pytest
import torch
from safetensors.torch import load_file

from ace_step.loading.errors import (CheckpointMismatchError, CheckpointNotFoundError, CorruptCheckpointError,
                                     UnsafeCheckpointError, WrongModelError)
from ace_step.loading.foreign import (V1_NODE, V15_CHECKPOINT_NODE, V15_DIT_NODE, V15_TEXT_NODE, V15_VAE_NODE,
                                      identify)
from ace_step.loading.safetensors_io import save_safetensors
from ace_step.loading.v15_checkpoint import check_shapes15, inspect_ace_step15, load_ace_step15
from ace_step.loading.v15_layout import guess_variant
from ace_step.loading.v1_checkpoint import load_ace_step
from ace_step.models.operations import TorchOps, sdpa_attention
from ace_step.models.v15.model import AceStep15, AceStep15Config
from ace_step.models.v15.qwen3 import FULL_SIZES
from ace_step.models.v15.vae import OobleckConfig, OobleckVAE, file_shapes
from comfy_inprocess import comfyui_path
from fixtures.v15_configs import real_dit_layouts
from fixtures.v15_tiny_checkpoint import (AIO_FILE, NETWORKS, tiny15_configs, tiny15_state_dicts, write_tiny15)
from fixtures.v15_vae_configs import PARITY, diffusers_kwargs

NETS = ("dit", "text_encoder", "lm", "vae")
INFO_LAYOUT = {"comfyui-aio": "all-in-one", "comfyui-split": "split", "hf-folder": "hf-folder"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny15")
    return {"comfyui-aio": write_tiny15(root / "aio"),
            "comfyui-split": list(write_tiny15(root / "models", "comfyui-split").values()),
            "hf-folder": write_tiny15(root / "hf", "hf-folder")}


@pytest.fixture(scope="module")
def loaded(tiny):
    return {layout: load_ace_step15(path, NETS) for layout, path in tiny.items()}


def outputs(models) -> dict:
    """Every network on fixed inputs: DiT velocity as ComfyUI calls it, caption states, LM logits, VAE decode."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        return {
            "dit": models.dit(torch.randn(2, 64, 12, generator=g), torch.tensor([0.9, 0.3]),
                              torch.randn(2, 7, 32, generator=g), lyric_embed=torch.randn(2, 5, 32, generator=g),
                              refer_audio=torch.randn(2, 64, 12, generator=g)),
            "text_encoder": models.text_encoder(torch.tensor([[151643, 8, 900, 151000]])),
            "lm": models.lm(torch.tensor([[151644, 77, 215000, 5]])),
            "vae": models.vae.decode(torch.randn(1, 64, 3, generator=g)),
        }


# ------------------------------------------------------------------------------------------------ the three layouts

def test_every_layout_loads_the_same_networks(loaded):
    expected = tiny15_state_dicts()
    reference = outputs(loaded["comfyui-aio"])
    for layout, models in loaded.items():
        assert models.info.layout == INFO_LAYOUT[layout]
        assert models.info.components == NETS and models.info.is_tiny_demo
        for network in NETWORKS:
            state = getattr(models, network).state_dict()
            assert state.keys() == expected[network].keys(), (layout, network)
            for key, value in state.items():
                want = expected[network][key]
                if network == "vae" and key.endswith(".weight"):  # stored as g and v: fused back in fp32
                    torch.testing.assert_close(value, want, rtol=2e-6, atol=0, msg=f"{layout}: {key}")
                else:
                    assert torch.equal(value, want), (layout, network, key)
        for network, value in outputs(models).items():
            assert torch.equal(value, reference[network]), (layout, network)
    assert reference["vae"].shape == (1, 2, 3 * 1920) and 0.01 < reference["vae"].std() < 10


def test_hf_folder_is_what_transformers_and_diffusers_read(tmp_path, tiny, loaded):
    """The original layout's folders (config.json + weights) load in transformers / diffusers and compute what our
    networks loaded from the all-in-one file compute: fp32, max abs difference 1.2e-6 / 2.1e-6 / 6.6e-7 measured."""
    import diffusers
    import transformers

    root, ours = tiny["hf-folder"], loaded["comfyui-aio"]
    ids = torch.randint(0, 151669, (1, 12), generator=torch.Generator().manual_seed(0))
    te = transformers.Qwen3Model.from_pretrained(root / "Qwen3-Embedding-0.6B", attn_implementation="eager").eval()
    lm = transformers.Qwen3ForCausalLM.from_pretrained(root / "acestep-5Hz-lm-1.7B", attn_implementation="eager")
    with torch.no_grad():
        torch.testing.assert_close(ours.text_encoder(ids), te(ids).last_hidden_state, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.lm(ids), lm.eval()(ids).logits, rtol=0, atol=2e-5)
    # diffusers ties its encoder width to twice the latent channels: a small VAE of that shape
    vae_root = write_tiny15(tmp_path / "hf", "hf-folder", configs={"vae": PARITY}, lm=False)
    theirs = diffusers.AutoencoderOobleck.from_pretrained(vae_root / "vae").eval()
    vae = load_ace_step15(vae_root, ("vae",)).vae
    z = torch.randn(1, PARITY.latent_channels, 5, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(vae.decode(z), theirs.decode(z).sample, rtol=0, atol=5e-6)


def test_tiny_files_are_deterministic_and_marked(tmp_path, tiny):
    again = write_tiny15(tmp_path / "again" / AIO_FILE)
    assert again.read_bytes() == tiny["comfyui-aio"].read_bytes()
    assert write_tiny15(tmp_path / "seed1" / AIO_FILE, seed=1).read_bytes() != again.read_bytes()
    root = write_tiny15(tmp_path / "hf", "hf-folder")
    files = sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    assert [str(p) for p in files] == [
        "Qwen3-Embedding-0.6B/config.json", "Qwen3-Embedding-0.6B/model.safetensors",
        "Qwen3-Embedding-0.6B/tokenizer.json", "acestep-5Hz-lm-1.7B/config.json",
        "acestep-5Hz-lm-1.7B/model.safetensors", "acestep-5Hz-lm-1.7B/tokenizer.json",
        "acestep-v15-turbo/config.json", "acestep-v15-turbo/model.safetensors", "acestep-v15-turbo/silence_latent.pt",
        "vae/config.json", "vae/diffusion_pytorch_model.safetensors"]
    assert all((root / p).read_bytes() == (tiny["hf-folder"] / p).read_bytes() for p in files)
    silence = torch.load(root / "acestep-v15-turbo" / "silence_latent.pt", weights_only=True)
    assert silence.shape == (1, 64, 100) and silence.dtype == torch.float32
    assert json.loads((root / "acestep-v15-turbo" / "config.json").read_text())["is_turbo"] is True
    info = inspect_ace_step15(tiny["comfyui-aio"])
    assert info.is_tiny_demo and "NOT a music model" in info.metadata["ace_step_studio.tiny_demo"]


def test_sharded_folder_and_hugging_face_cache(tmp_path, tiny, loaded):
    """An LM in shards with its index, and the original layout inside a Hugging Face cache: the main repo's
    snapshot plus a per-model repo (ACE-Step/acestep-v15-sft), the newest revision of each."""
    hub = tmp_path / "hub"
    main = hub / "models--ACE-Step--Ace-Step1.5" / "snapshots"
    old = main / "0ld"
    old.mkdir(parents=True)
    (old / "vae").mkdir()  # an older revision: never read
    rev = main / "1234"
    rev.mkdir()
    for folder in ("acestep-v15-turbo", "Qwen3-Embedding-0.6B", "vae"):
        os.symlink(tiny["hf-folder"] / folder, rev / folder)
    lm = rev / "acestep-5Hz-lm-1.7B"
    lm.mkdir()
    shutil.copy(tiny["hf-folder"] / "acestep-5Hz-lm-1.7B" / "tokenizer.json", lm)
    tensors = load_file(tiny["hf-folder"] / "acestep-5Hz-lm-1.7B" / "model.safetensors")
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in shards.items():
        save_safetensors(lm / name, {k: tensors[k] for k in part})
    (lm / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: name for name, part in shards.items() for k in part}}))
    sft = hub / "models--ACE-Step--acestep-v15-sft" / "snapshots" / "abcd"
    sft.mkdir(parents=True)
    os.symlink(tiny["hf-folder"] / "acestep-v15-turbo" / "model.safetensors", sft / "model.safetensors")
    os.symlink(tiny["hf-folder"] / "acestep-5Hz-lm-1.7B", rev / "acestep-5Hz-lm-0.6B")
    os.utime(old, (os.path.getmtime(rev) - 3600,) * 2)

    info = inspect_ace_step15(tmp_path)  # found below the given folder
    assert info.layout == "hf-folder" and info.dit_folders == ("acestep-v15-sft", "acestep-v15-turbo")
    assert "dit" not in info.components  # two DiTs and no variant: none chosen for inspection
    with pytest.raises(CheckpointNotFoundError, match="several DiTs .*acestep-v15-sft, acestep-v15-turbo.*variant"):
        load_ace_step15(hub, ("dit",))
    with pytest.raises(CheckpointNotFoundError, match="no acestep-v15-xl-base/ folder .*acestep-v15-sft"):
        load_ace_step15(hub, ("dit",), variant="xl_base")
    models = load_ace_step15(hub, NETS, variant="sft", comfyui_root=None)
    assert models.info.variant.kind == "sft" and models.info.files["lm"] == [str(lm / n) for n in shards]
    assert models.info.lm_folders == ("acestep-5Hz-lm-0.6B", "acestep-5Hz-lm-1.7B")
    assert models.info.warnings == ["several LMs (acestep-5Hz-lm-0.6B, acestep-5Hz-lm-1.7B): using "
                                    "acestep-5Hz-lm-1.7B (pass lm_variant to choose)"]
    small = load_ace_step15(hub, ("lm",), variant="turbo", lm_variant="0.6B")
    assert small.info.files["lm"] == [str(rev / "acestep-5Hz-lm-0.6B" / "model.safetensors")]
    for network in NETS:
        reference = getattr(loaded["hf-folder"], network).state_dict()
        assert all(torch.equal(v, reference[k]) for k, v in getattr(models, network).state_dict().items())


# ------------------------------------------------------------------------------------------------ full-size files

def _prefixed(prefix, shapes):
    return {prefix + k: v for k, v in shapes.items()}


@functools.lru_cache(maxsize=None)
def full_size_files():
    """name -> (key -> shape as the file holds it, components, DiT size, LM size)."""
    import diffusers
    from test_v15_keys import hf_shapes

    dit, _ = real_dit_layouts()
    embedding = hf_shapes("embedding-0.6B", False)
    lms = {size: hf_shapes(f"lm-{size}", True) for size in ("0.6B", "1.7B", "4B")}
    with torch.device("meta"):
        diffusers_vae = diffusers.AutoencoderOobleck(**diffusers_kwargs(OobleckConfig.full_size()))
    vae_diffusers = {k: tuple(v.shape) for k, v in diffusers_vae.state_dict().items()}
    vae_comfy = file_shapes(OobleckConfig.full_size(), "comfyui")
    scales = {"text_encoders.qwen3_06b.logit_scale": (), "text_encoders.qwen3_2b.logit_scale": ()}
    aio = {**_prefixed("model.diffusion_model.", dit["2B"]),
           **_prefixed("text_encoders.qwen3_06b.transformer.model.", embedding),
           **_prefixed("text_encoders.qwen3_2b.transformer.", lms["1.7B"]), **_prefixed("vae.", vae_comfy), **scales}
    aio_4b = {**{k: v for k, v in aio.items() if ".qwen3_2b." not in k},
              **_prefixed("text_encoders.qwen3_4b.transformer.", lms["4B"])}
    untied = {**{k.removeprefix("model."): v for k, v in lms["0.6B"].items()},
              "lm_head.weight": lms["0.6B"]["model.embed_tokens.weight"]}
    return {
        "checkpoints/ace_step_1.5_turbo_aio": (aio, NETS, "2B", "1.7B"),
        "an all-in-one with the 4B LM": (aio_4b, NETS, "2B", "4B"),
        "diffusion_models/acestep_v1.5_turbo (sft, base)": (dit["2B"], ("dit",), "2B", None),
        "diffusion_models/acestep_v1.5_xl_turbo (xl_sft, xl_base)": (dit["XL"], ("dit",), "XL", None),
        "text_encoders/qwen_0.6b_ace15": (_prefixed("model.", embedding), ("text_encoder",), None, None),
        "text_encoders/qwen_1.7b_ace15": (lms["1.7B"], ("lm",), None, "1.7B"),
        "text_encoders/qwen_4b_ace15": (lms["4B"], ("lm",), None, "4B"),
        "vae/ace_1.5_vae": (vae_comfy, ("vae",), None, None),
        "Qwen3-Embedding-0.6B/model": (embedding, ("text_encoder",), None, None),
        "acestep-5Hz-lm-0.6B/model": (lms["0.6B"], ("lm",), None, "0.6B"),
        "an LM without the model. prefix, untied head": (untied, ("lm",), None, None),
        "vae/diffusion_pytorch_model": (vae_diffusers, ("vae",), None, None),
        "vae, parametrizations spelling": (file_shapes(OobleckConfig.full_size(), "comfyui", "parametrizations"),
                                           ("vae",), None, None),
    }


@pytest.mark.parametrize("name", list(full_size_files()))
def test_full_size_files_pass_the_strict_checks_from_shapes(name):
    shapes, components, dit_size, lm_size = full_size_files()[name]
    info = check_shapes15(shapes, name)
    assert info.components == components
    assert (info.dit_size, info.lm_size) == (dit_size, lm_size)
    if dit_size:
        assert info.configs["dit"] == AceStep15Config.full_size(dit_size) and info.xl == (dit_size == "XL")
    if "text_encoder" in components:
        assert info.configs["text_encoder"] == FULL_SIZES["embedding-0.6B"]
    if "vae" in components:
        assert info.configs["vae"] == OobleckConfig.full_size()
    if name.startswith("checkpoints/"):  # the published file's tensor count (v15_keys docstring)
        assert len(shapes) == 1664 and len(info.unused_keys) == 2


def test_full_size_strict_checks_refuse_missing_and_wrong_shapes():
    shapes = dict(full_size_files()["checkpoints/ace_step_1.5_turbo_aio"][0])
    shapes.pop("model.diffusion_model.decoder.layers.23.mlp.up_proj.weight")
    shapes["vae.decoder.layers.0.bias"] = (64,)
    with pytest.raises(CheckpointMismatchError, match="1 tensors are missing: model.diffusion_model.decoder.layers.23"
                                                      r"\.mlp\.up_proj\.weight"):
        check_shapes15(shapes)
    shapes = dict(full_size_files()["vae/ace_1.5_vae"][0], **{"decoder.layers.0.bias": (64,)})
    with pytest.raises(CheckpointMismatchError, match=r"decoder.layers.0.bias \[64\] \(expected \[2048\]\)"):
        check_shapes15(shapes)


# ------------------------------------------------------------------------------------------------ what names say

@pytest.mark.parametrize("name, kind, xl, shift, steps, cfg", [
    ("ace_step_1.5_turbo_aio.safetensors", "turbo", None, None, 8, 1.0),
    ("acestep_v1.5_sft.safetensors", "sft", None, None, 50, 7.0),
    ("acestep_v1.5_base.safetensors", "base", None, None, 50, 7.0),
    ("acestep_v1.5_xl_turbo_bf16.safetensors", "turbo", True, None, 8, 1.0),
    ("acestep_v1.5_xl_sft.safetensors", "sft", True, None, 50, 7.0),
    ("acestep-v15-turbo-shift1", "turbo", None, 1.0, 8, 1.0),
    ("acestep-v15-xl-base", "base", True, None, 50, 7.0),
    ("acestep-v15-turbo.bf16.safetensors", "turbo", None, None, 8, 1.0),
    ("my_finetune.safetensors", None, None, None, None, None),
    ("turbo_vs_base_merge.safetensors", None, None, None, None, None),
])
def test_variant_guess_from_names(name, kind, xl, shift, steps, cfg):
    guess = guess_variant(name)
    assert (guess.kind, guess.xl, guess.shift) == (kind, xl, shift)
    hint = guess.sampling
    assert (hint.steps, hint.cfg) == (steps, cfg) if kind else hint is None
    if kind:
        assert hint.shift == (shift or 3.0)


def test_inspect_reports_variant_and_sizes(tmp_path, tiny):
    split = write_tiny15(tmp_path / "models", "comfyui-split", variant="xl-sft", configs=tiny15_configs(xl=True),
                         lm=False)
    info = inspect_ace_step15(split["dit"])
    assert info.layout == "split" and info.components == ("dit",)
    assert (info.variant.kind, info.variant.xl, info.xl, info.dit_size) == ("sft", True, True, None)
    assert info.sampling.steps == 50 and info.configs["dit"] == tiny15_configs(xl=True)["dit"]
    assert info.configs["dit"].encoder.timbre_special_token  # the XL design, told by the shapes
    info = inspect_ace_step15(tiny["comfyui-aio"])  # the tiny file's name has no variant; its metadata has
    assert info.layout == "all-in-one" and info.components == NETS and info.variant.kind == "turbo"
    assert info.unused_keys == ["text_encoders.qwen3_06b.logit_scale", "text_encoders.qwen3_2b.logit_scale"]
    assert info.configs["lm"] == tiny15_configs()["lm"] and info.lm_size is None and info.xl is False
    info = inspect_ace_step15(tiny["hf-folder"])
    assert info.variant.name == "acestep-v15-turbo" and info.lm_folders == ("acestep-5Hz-lm-1.7B",)
    assert info.config_json["vae"]["_class_name"] == "AutoencoderOobleck" and info.vae_layout == "diffusers"
    info = inspect_ace_step15(tiny["hf-folder"] / "acestep-v15-turbo")  # one original folder
    assert (info.layout, info.components, info.variant.kind) == ("hf-folder", ("dit",), "turbo")
    assert info.config_json["acestep-v15-turbo"]["model_version"] == "turbo"


# ------------------------------------------------------------------------------------------------ tokenizers

def test_tokenizers_from_the_users_folders_or_comfyui(tmp_path, tiny, monkeypatch):
    hf = load_ace_step15(tiny["hf-folder"], ("tokenizers",))
    assert hf.info.tokenizer_sources == {"text_encoder": str(tiny["hf-folder"] / "Qwen3-Embedding-0.6B" /
                                                             "tokenizer.json"),
                                         "lm": str(tiny["hf-folder"] / "acestep-5Hz-lm-1.7B" / "tokenizer.json")}
    bundled = comfyui_path() / "comfy" / "text_encoders" / "qwen25_tokenizer"
    split = load_ace_step15(tiny["comfyui-split"], ("tokenizers",), comfyui_root=comfyui_path())
    assert split.info.tokenizer_sources == {"text_encoder": str(bundled), "lm": str(bundled)}
    text = "Dreamy synth pop <think> 夜のネオン<|audio_code_63999|>"
    assert hf.text_tokenizer.encode(text) == split.text_tokenizer.encode(text)
    assert hf.lm_tokenizer.encode(text) == split.lm_tokenizer.encode(text)
    assert split.lm_tokenizer.encode("<|audio_code_63999|>") == [151669 + 63999]
    assert (split.text_tokenizer.vocab_size, split.lm_tokenizer.vocab_size) == (151669, 217204)
    # The text encoder alone: no LM tokenizer. ComfyUI found as the host of the running code.
    monkeypatch.syspath_prepend(str(comfyui_path()))
    te = load_ace_step15(tiny["comfyui-split"][1], ("text_encoder", "tokenizers"))
    assert te.lm_tokenizer is None and te.info.tokenizer_sources == {"text_encoder": str(bundled)}
    # The LM folder's tokenizer.json serves the text encoder when its own folder has none.
    root = tmp_path / "hf"
    shutil.copytree(tiny["hf-folder"], root)
    (root / "Qwen3-Embedding-0.6B" / "tokenizer.json").unlink()
    models = load_ace_step15(root, ("text_encoder", "tokenizers"))
    assert models.info.tokenizer_sources["text_encoder"].endswith("acestep-5Hz-lm-1.7B/tokenizer.json")
    assert models.text_tokenizer.vocab_size == 151669
    # A weights file of an original folder: the tokenizer.json beside it.
    models = load_ace_step15(tiny["hf-folder"] / "Qwen3-Embedding-0.6B" / "model.safetensors", ("tokenizers",))
    assert models.info.tokenizer_sources["text_encoder"] == str(tiny["hf-folder"] / "Qwen3-Embedding-0.6B" /
                                                                "tokenizer.json")
    # Nowhere to find one.
    monkeypatch.setattr("ace_step.text.qwen_tokenizer.host_comfy_tokenizer_dir", lambda: None)
    with pytest.raises(CheckpointNotFoundError, match="No Qwen3 tokenizer for ACE-Step 1.5"):
        load_ace_step15(tiny["comfyui-split"][1], ("tokenizers",))


# ------------------------------------------------------------------------------------------------ loader options

def test_dtypes_operations_attention_and_dit_class(tiny):
    calls = []

    def attention(q, k, v, heads, **kwargs):
        calls.append(heads)
        return sdpa_attention(q, k, v, heads, **kwargs)

    class MyDiT(AceStep15):
        pass

    models = load_ace_step15(tiny["comfyui-aio"], NETS, dtype={"dit": torch.bfloat16, "vae": torch.float16},
                             operations={"text_encoder": TorchOps}, attention={"lm": attention}, dit_cls=MyDiT)
    assert type(models.dit) is MyDiT and models.dit.null_condition_emb.dtype == torch.bfloat16
    assert models.vae.decoder.layers[0].weight.dtype == torch.float16
    assert models.lm.model.embed_tokens.weight.dtype == torch.float32  # not in the mapping: as stored
    assert type(models.text_encoder.layers[0].self_attn.q_proj) is torch.nn.Linear
    assert type(models.lm.model.layers[0].self_attn.q_proj).__qualname__ == "ManualCastOps.Linear"
    assert models.info.file_dtypes == {"dit": ["F32"], "text_encoder": ["F32"], "lm": ["F32"], "vae": ["F32"]}
    with torch.no_grad():
        models.lm(torch.tensor([[1, 2, 3]]))
    assert calls == [2, 2]  # the LM's two layers, through the injected function
    assert models.text_tokenizer is None and not any(p.requires_grad for p in models.dit.parameters())
    with pytest.raises(ValueError, match="unknown components \\['transformer'\\]"):
        load_ace_step15(tiny["comfyui-aio"], ("transformer",))


# ------------------------------------------------------------------------------------------------ bad files

def _edited(tmp_path, source, name, edit):
    tensors = load_file(source)
    edit(tensors)
    path = tmp_path / name
    save_safetensors(path, tensors)
    return path


def test_corrupt_truncated_and_pickle_files(tmp_path, tiny):
    dit = tiny["comfyui-split"][0]
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(dit.read_bytes()[: dit.stat().st_size // 2])
    with pytest.raises(CorruptCheckpointError, match="truncated.*download the file again"):
        load_ace_step15(cut, ("dit",))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(struct.pack("<Q", 10) + b"{not json!")
    with pytest.raises(CorruptCheckpointError, match="header is not valid JSON"):
        inspect_ace_step15(garbage)
    torch.save({"decoder.proj_in.1.weight": torch.zeros(2)}, tmp_path / "model.ckpt")
    with pytest.raises(UnsafeCheckpointError, match="'.ckpt' marks a PyTorch pickle"):
        load_ace_step15(tmp_path / "model.ckpt")
    torch.save({"x": torch.zeros(2)}, tmp_path / "renamed.safetensors")
    with pytest.raises(UnsafeCheckpointError, match="zip archive"):
        load_ace_step15(tmp_path / "renamed.safetensors")
    folder = tmp_path / "Qwen3-Embedding-0.6B"
    folder.mkdir()
    torch.save({}, folder / "pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="only pickle weights"):
        load_ace_step15(tmp_path, ("text_encoder",))
    with pytest.raises(CheckpointNotFoundError, match="no such file or folder"):
        load_ace_step15(tmp_path / "nope.safetensors")


def test_missing_wrong_and_extra_tensors(tmp_path, tiny):
    dit, te, _, vae = tiny["comfyui-split"]
    prefixed = _edited(tmp_path, dit, "prefixed.safetensors", lambda t: [
        t.__setitem__("model.diffusion_model." + k, t.pop(k)) for k in list(t)])
    assert load_ace_step15(prefixed, ("dit",)).info.file_layouts == {str(prefixed): "dit_prefixed"}
    missing = _edited(tmp_path, prefixed, "missing.safetensors",
                      lambda t: t.pop("model.diffusion_model.decoder.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointMismatchError, match="1 tensors are missing: model.diffusion_model.decoder.layers.1"
                                                      r"\.mlp\.up_proj\.weight"):
        load_ace_step15(missing, ("dit",))
    assert "1 tensors are missing" in inspect_ace_step15(missing).warnings[0]  # inspection reports, not raises
    folder = tmp_path / "vae"
    folder.mkdir()
    shutil.copy(dit, folder / "diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"the vae/ folder should hold the VAE, but this file holds the "
                                                      r"diffusion model \(DiT\)"):
        load_ace_step15(folder, ("vae",))
    wrong = _edited(tmp_path, dit, "wrong.safetensors", lambda t: t.__setitem__(
        "decoder.layers.1.mlp.up_proj.weight", torch.zeros(3, 3)))
    with pytest.raises(CheckpointMismatchError, match=r"decoder.layers.1.mlp.up_proj.weight \[3, 3\] \(expected "
                                                      r"\[64, 32\]\)"):
        load_ace_step15(wrong, ("dit",))
    extra = _edited(tmp_path, dit, "extra.safetensors", lambda t: t.__setitem__("decoder.extra.weight", torch.zeros(2)))
    with pytest.raises(CheckpointMismatchError, match=r"1 tensors are not part of the diffusion model \(DiT\): "
                                                      "decoder.extra.weight"):
        load_ace_step15(extra, ("dit",))
    stray = _edited(tmp_path, tiny["comfyui-aio"], "stray.safetensors", lambda t: t.__setitem__("foo.bar",
                                                                                                torch.zeros(2)))
    with pytest.raises(CheckpointMismatchError, match="1 tensors belong to no part of ACE-Step 1.5: foo.bar"):
        load_ace_step15(stray, ("vae",))
    half = _edited(tmp_path, vae, "half.safetensors", lambda t: t.pop("decoder.layers.0.weight_g"))
    with pytest.raises(CheckpointMismatchError, match="'decoder.layers.0.weight_v' has no partner"):
        load_ace_step15(half, ("vae",))
    embed = _edited(tmp_path, te, "embed.safetensors", lambda t: t.__setitem__(
        "model.embed_tokens.weight", t["model.embed_tokens.weight"][:1000]))
    with pytest.raises(WrongModelError, match="a Qwen3 language model with 1,000 tokens, not ACE-Step 1.5's text "
                                              "encoder"):
        load_ace_step15(embed, ("text_encoder",))
    two_lms = _edited(tmp_path, tiny["comfyui-aio"], "two_lms.safetensors", lambda t: t.update(
        {k.replace(".qwen3_2b.", ".qwen3_4b."): v for k, v in t.items() if ".qwen3_2b.transformer." in k}))
    with pytest.raises(CheckpointMismatchError, match="stores a tensor twice: 'text_encoders.qwen3_2b.transformer"
                                                      r"\.model\.embed_tokens\.weight' and 'text_encoders.qwen3_4b"):
        load_ace_step15(two_lms, ("lm",))


def test_missing_components_name_the_node_to_use(tiny):
    dit, te, lm, vae = tiny["comfyui-split"]
    with pytest.raises(CheckpointNotFoundError, match=f"has no VAE \\(it holds the diffusion model \\(DiT\\)\\).*"
                                                      f"vae/ace_1.5_vae.safetensors.*'{re.escape(V15_DIT_NODE)}'"):
        load_ace_step15(dit, ("vae",))
    with pytest.raises(CheckpointNotFoundError, match=f"has no text encoder .*it holds the 5 Hz LM.*"
                                                      f"qwen_0.6b_ace15.*'{re.escape(V15_TEXT_NODE)}'"):
        load_ace_step15(lm, ("text_encoder",))
    with pytest.raises(CheckpointNotFoundError, match=f"has no 5 Hz LM.*'{re.escape(V15_TEXT_NODE)}'"):
        load_ace_step15(te, ("text_encoder", "lm"))
    with pytest.raises(CheckpointMismatchError, match="both this file and .* hold the text encoder.*Pass one of them"):
        load_ace_step15([te, te], ("text_encoder",))
    with pytest.raises(CheckpointNotFoundError, match=f"has no diffusion model .*'{re.escape(V15_VAE_NODE)}'"):
        load_ace_step15(vae, ("dit",))
    both = load_ace_step15([te, lm], ("text_encoder", "lm"))  # the text-encoders node: two files
    assert both.info.layout == "split" and both.text_encoder is not None and both.lm is not None


def test_wrong_family_both_ways(tmp_path, tiny):
    from fixtures.tiny_checkpoint import write_tiny_checkpoint

    v1 = write_tiny_checkpoint(tmp_path / "v1.safetensors")
    with pytest.raises(WrongModelError, match=f"this is an ACE-Step v1 checkpoint, not ACE-Step 1.5.*"
                                              f"'{re.escape(V1_NODE)}'"):
        load_ace_step15(v1)
    with pytest.raises(WrongModelError, match=f"an ACE-Step 1.5 all-in-one checkpoint, not ACE-Step v1.*"
                                              f"'{re.escape(V15_CHECKPOINT_NODE)}'"):
        load_ace_step(tiny["comfyui-aio"])
    for path, node, what in zip(tiny["comfyui-split"], (V15_DIT_NODE, V15_TEXT_NODE, V15_TEXT_NODE, V15_VAE_NODE),
                                ("diffusion model \\(DiT\\)", "text encoder \\(Qwen3-Embedding", "5 Hz LM",
                                 "Oobleck audio VAE")):
        with pytest.raises(WrongModelError, match=f"{what}.*not ACE-Step v1.*'{re.escape(node)}'"):
            load_ace_step(path)
    umt5 = _edited(tmp_path, v1, "umt5.safetensors", lambda t: [t.pop(k) for k in list(t)
                                                                 if not k.startswith("text_encoders.umt5base.")])
    with pytest.raises(WrongModelError, match=f"ACE-Step v1's UMT5 text encoder, not ACE-Step 1.5.*"
                                              f"'{re.escape(V1_NODE)}'"):
        load_ace_step15(umt5, ("text_encoder",))


def test_foreign_files(tmp_path):
    lora = tmp_path / "lora.safetensors"
    save_safetensors(lora, {"base_model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(4, 32),
                            "base_model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(32, 4)})
    with pytest.raises(WrongModelError, match="looks like a LoRA .*not an ACE-Step 1.5 base checkpoint.*LoRA node"):
        load_ace_step15(lora)
    sdxl = tmp_path / "sdxl.safetensors"
    save_safetensors(sdxl, {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4),
                            "model.diffusion_model.label_emb.0.0.weight": torch.zeros(4),
                            "conditioner.embedders.1.model.ln_final.weight": torch.zeros(4)})
    with pytest.raises(WrongModelError, match="looks like an SDXL image checkpoint, not ACE-Step 1.5"):
        load_ace_step15(sdxl)
    qwen3 = tmp_path / "qwen_3_4b.safetensors"  # a plain Qwen3 (e.g. an image model's text encoder): 151,936 tokens
    save_safetensors(qwen3, {"model.embed_tokens.weight": torch.zeros(151936, 2),
                             "model.layers.0.self_attn.q_norm.weight": torch.zeros(2)})
    with pytest.raises(WrongModelError, match="a Qwen3 language model with 151,936 tokens, not ACE-Step 1.5's"):
        load_ace_step15(qwen3)
    stable_audio = OobleckConfig(encoder_channels=2, decoder_channels=2, latent_channels=4, strides=(2, 4, 4, 8, 8))
    vae = tmp_path / "stable_audio_vae.safetensors"
    from ace_step.models.v15.vae import to_file_state_dict

    save_safetensors(vae, to_file_state_dict(OobleckVAE(stable_audio).state_dict(), stable_audio, "comfyui"))
    with pytest.raises(WrongModelError, match="downsamples by 2·4·4·8·8 .*Stable Audio Open"):
        load_ace_step15(vae, ("vae",))
    other = tmp_path / "other.safetensors"
    save_safetensors(other, {"some.weight": torch.zeros(2)})
    with pytest.raises(WrongModelError, match="no ACE-Step 1.5 weights were recognised in it.*first keys: "
                                              r"\['some.weight'\]"):
        load_ace_step15(other)


def test_identify_from_key_names():
    assert identify(["model.diffusion_model.lyric_embs.weight", "vae.dcae.encoder.conv_in.weight"]).node == V1_NODE
    assert identify(["vocoder.head.conv_pre.weight_g"]).what == "ACE-Step v1's music VAE (DCAE + vocoder)"
    assert identify(["encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight"]).family == "v1"
    assert identify(["decoder.proj_in.1.weight"]).node == V15_DIT_NODE
    assert identify(["text_encoders.qwen3_06b.transformer.model.norm.weight"]).node == V15_TEXT_NODE
    assert identify(["model.embed_tokens.weight", "model.layers.0.self_attn.q_norm.weight"]).family == "1.5"
    assert identify(["decoder.block.0.snake1.alpha"]).node == V15_VAE_NODE
    assert identify(["unrelated.weight"]) is None
