"""ace_step/loading/v15_keys.py: every file kind's key list routes to our ACE-Step 1.5 modules (built on the meta
device from the routed shapes) with nothing missing, nothing unexpected and every shape equal.

Key lists come from sources independent of our modules: the real DiT list (full_size_state_dict_shapes.json, and
its XL rewrite), transformers' Qwen3Model / Qwen3ForCausalLM at the real sizes (the Hugging Face spelling), and
the ComfyUI prefixes stated in v15_keys."""
import functools

import pytest
import torch
import transformers

from ace_step.loading.v15_keys import COMFY_FILES, DIT, HF_FOLDERS, LAYOUTS, LM, TEXT_ENCODER, VAE, detect_layout, \
    route_keys
from ace_step.models.v15.model import AceStep15, AceStep15Config
from ace_step.models.v15.qwen3 import FULL_SIZES, Qwen3CausalLM, Qwen3Config, Qwen3Model
from fixtures.v15_configs import real_dit_layouts
from test_v15_qwen3 import hf_config

VAE_SAMPLE = {"vae.encoder.layers.0.weight_v": [128, 2, 7], "vae.decoder.layers.0.bias": [128]}


def hf_shapes(name: str, causal: bool) -> dict:
    """transformers' state dict at a real size: the Hugging Face file spelling (tied head not stored)."""
    config = hf_config(FULL_SIZES[name])
    with torch.device("meta"):
        model = transformers.Qwen3ForCausalLM(config) if causal else transformers.Qwen3Model(config)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    if causal and config.tie_word_embeddings:
        shapes.pop("lm_head.weight")
    return shapes


def build(network: str, shapes: dict):
    with torch.device("meta"):
        if network == DIT:
            return AceStep15(AceStep15Config.from_shapes(shapes))
        if network == TEXT_ENCODER:
            return Qwen3Model(Qwen3Config.from_shapes(shapes))
        return Qwen3CausalLM(Qwen3Config.from_shapes(shapes))


def prefixed(prefix: str, shapes: dict) -> dict:
    return {prefix + k: v for k, v in shapes.items()}


@functools.lru_cache(maxsize=None)
def file_kinds():
    dit, _ = real_dit_layouts()
    embedding, lm_1_7b, lm_4b = hf_shapes("embedding-0.6B", False), hf_shapes("lm-1.7B", True), \
        hf_shapes("lm-4B", True)
    lm_0_6b = hf_shapes("lm-0.6B", True)
    checkpoint = {**prefixed("model.diffusion_model.", dit["2B"]),
                  **prefixed("text_encoders.qwen3_06b.transformer.model.", embedding),
                  **prefixed("text_encoders.qwen3_2b.transformer.", lm_1_7b), **VAE_SAMPLE}
    # name -> (file key -> shape, expected layout, expected networks)
    return {
        "comfy aio checkpoint": (checkpoint, "comfy_checkpoint", {DIT, TEXT_ENCODER, LM, VAE}),
        "comfy aio checkpoint, 4B LM": ({**{k: v for k, v in checkpoint.items() if ".qwen3_2b." not in k},
                                         **prefixed("text_encoders.qwen3_4b.transformer.", lm_4b)},
                                        "comfy_checkpoint", {DIT, TEXT_ENCODER, LM, VAE}),
        "comfy / hf DiT 2B": (dit["2B"], "dit", {DIT}),
        "comfy / hf DiT XL": (dit["XL"], "dit", {DIT}),
        "DiT with checkpoint prefix": (prefixed("model.diffusion_model.", dit["XL"]), "dit_prefixed", {DIT}),
        "hf Qwen3-Embedding-0.6B": (embedding, "text_encoder", {TEXT_ENCODER}),
        "comfy qwen_0.6b_ace15": (prefixed("model.", embedding), "text_encoder_comfy", {TEXT_ENCODER}),
        "comfy qwen_1.7b_ace15 / hf acestep-5Hz-lm-1.7B": (lm_1_7b, "lm", {LM}),
        "comfy qwen_4b_ace15 / hf acestep-5Hz-lm-4B": (lm_4b, "lm", {LM}),
        "hf acestep-5Hz-lm-0.6B": (lm_0_6b, "lm", {LM}),
        "LM without model. prefix, untied head": (
            {**{k[len("model."):]: v for k, v in lm_0_6b.items()},
             "lm_head.weight": lm_0_6b["model.embed_tokens.weight"]},
            "lm_unprefixed", {LM}),
    }


@pytest.mark.parametrize("kind", list(file_kinds()))
def test_every_file_kind_routes_to_our_modules(kind):
    shapes, layout_name, networks = file_kinds()[kind]
    layout = detect_layout(shapes)
    assert layout.name == layout_name
    routed, unrouted = route_keys(shapes, layout)
    assert unrouted == [] and set(routed) == networks
    for network in networks - {VAE}:
        module_shapes = {module: shapes[file] for module, file in routed[network].items()}
        ours = {k: list(v.shape) for k, v in build(network, module_shapes).state_dict().items()}
        assert sorted(set(module_shapes) - set(ours)) == [], f"{kind}/{network}: unexpected in the file"
        assert sorted(set(ours) - set(module_shapes)) == [], f"{kind}/{network}: missing from the file"
        assert {k: v for k, v in ours.items() if v != module_shapes[k]} == {}, f"{kind}/{network}: shapes"
    assert set(routed.get(VAE, {})) == {k[len("vae."):] for k in VAE_SAMPLE if VAE in networks}


def test_file_tables_name_known_layouts_and_networks():
    assert set(COMFY_FILES.values()) <= set(LAYOUTS)
    assert set(HF_FOLDERS.values()) == {DIT, TEXT_ENCODER, LM, VAE}
    with pytest.raises(ValueError, match="not an ACE-Step 1.5"):
        detect_layout({"first_stage_model.decoder.conv_in.weight": [4]})
    routed, unrouted = route_keys(["model.diffusion_model.decoder.norm_out.weight", "cond_stage_model.x"],
                                  LAYOUTS["comfy_checkpoint"])
    assert routed == {DIT: {"decoder.norm_out.weight": "model.diffusion_model.decoder.norm_out.weight"}}
    assert unrouted == ["cond_stage_model.x"]
