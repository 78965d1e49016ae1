"""How the ACE-Step 1.5 networks' tensors are spelled in the files users have, as data and small pure functions:
which key prefix holds which network, and how a file key becomes a key of our module.

Networks (ace_step/models/v15): "dit" = `model.AceStep15` (decoder, encoder, tokenizer, detokenizer,
null_condition_emb), "text_encoder" = `qwen3.Qwen3Model` (Qwen3-Embedding-0.6B; keys `embed_tokens.weight`,
`layers.N.*`, `norm.weight`), "lm" = `qwen3.Qwen3CausalLM` (the 5 Hz LM; keys `model.*`, plus `lm_head.weight` only
when the file has an untied head), "vae" = `vae.OobleckVAE` (routed by prefix only: its file keys, ComfyUI's or
diffusers' spelling with weight-norm halves, are mapped by ace_step/models/v15/vae.py).

File kinds (`LAYOUTS`), with the sources read:
- ComfyUI all-in-one checkpoint (checkpoints/ace_step_1.5_turbo_aio.safetensors): `model.diffusion_model.` (DiT),
  `text_encoders.qwen3_06b.transformer.model.` (text encoder), `text_encoders.qwen3_2b.transformer.` (the 1.7B LM,
  which ComfyUI names "qwen3_2b") or `text_encoders.qwen3_4b.transformer.` (4B LM), `vae.`, and one unused scalar per
  text model, `text_encoders.<name>.logit_scale` (comfy/sd1_clip.py `SDClipModel.logit_scale`, which every ComfyUI
  text-model wrapper holds and a saved checkpoint keeps). The published file holds the turbo DiT, the 0.6B text
  encoder, the 1.7B LM (`qwen3_2b`, as third-party readers of the file report it) and the VAE, so 1,664 tensors:
  677 + 310 + 310 + 365 + 2 logit scales. ComfyUI cannot load an all-in-one file without an LM
  (`ACEStep15.clip_target` sets its `detect` only when it finds one). Sources: comfy/sd.py
  checkpoint layout (`model.diffusion_model.`, `vae.`, `text_encoders.<name>.transformer.`);
  comfy/text_encoders/ace15.py `ACE15TEModel` attributes `qwen3_06b` / `qwen3_2b` / `qwen3_4b`, each an
  `SDClipModel` whose `transformer.model` is comfy/text_encoders/llama.py `Llama2_` (comfyanonymous/ComfyUI @
  4dffde991f70238b017d98008a4b4b7251e5afe7); `supported_models.ACEStep15.clip_target` detects
  `text_encoders.qwen3_2b.transformer.` / `..qwen3_4b..` (Comfy-Org/ComfyUI @ 01f03bbdc7df9462d3fc4c0918f80049333450f3).
- ComfyUI split files: diffusion_models/acestep_v1.5_{turbo,sft,base,xl_turbo,xl_sft,xl_base}.safetensors (the XL
  ones also published with a `_bf16` suffix): the DiT's keys with no prefix, exactly comfy/ldm/ace/ace_step15.py
  `AceStepConditionGenerationModel`'s state dict; text_encoders/qwen_0.6b_ace15.safetensors (text encoder) and
  qwen_{1.7b,4b}_ace15.safetensors (LMs): `model.*`, the `Llama2_` under `model` (ACE15TEModel.load_sd tests
  `model.layers.0.post_attention_layernorm.weight`).
- ComfyUI vae/ace_1.5_vae.safetensors: the VAE's keys with no prefix (stable-audio-tools spelling).
- Original Hugging Face folders (ACE-Step/Ace-Step1.5 and the per-model repos; acestep/model_downloader.py in
  ace-step/ACE-Step-1.5 @ f30aee4c186c33b7b8a6ea59a4b7fc36f795b49f): `acestep-v15-*/model.safetensors` (DiT, no
  prefix: the original `AceStepConditionGenerationModel`, whose attribute names ComfyUI kept, `proj_in.1` included);
  `Qwen3-Embedding-0.6B/model.safetensors` (text encoder, no prefix: `embed_tokens.weight`, `layers.N.*`,
  `norm.weight`, as ServeurpersoCom/acestep.cpp src/qwen3-enc.h @ d214226cb4a36c0baa0beced3dc9c4859af82a19 reads
  it); `acestep-5Hz-lm-*/model.safetensors` (or `model-0000N-of-0000M.safetensors` shards): transformers'
  `Qwen3ForCausalLM` spelling `model.*` (+ `lm_head.weight` if untied); acestep.cpp convert.py @
  42918c6d7bb6224195dd2f32e7a18e3c35b93397 notes some LM files lack the `model.` prefix, handled by its own layout;
  `vae/diffusion_pytorch_model.safetensors` (diffusers' `AutoencoderOobleck` spelling; the same convert.py reads
  that file name for the VAE folder).

Which Qwen3 a file holds is told by its vocabulary, not its width (ComfyUI's width rule, 1024 = text encoder, would
take the 1024-wide 0.6B LM for the text encoder): the LMs' vocabulary includes the audio codes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Sequence, Tuple

from ..models.v15.qwen3 import AUDIO_CODE_FIRST_ID

DIT, TEXT_ENCODER, LM, VAE = "dit", "text_encoder", "lm", "vae"
CHECKPOINT_DIT_PREFIX = "model.diffusion_model."


@dataclass(frozen=True)
class Route:
    """File keys starting with `file_prefix` belong to `network`; their module key is `module_prefix` + the rest."""

    network: str
    file_prefix: str
    module_prefix: str = ""


@dataclass(frozen=True)
class Layout:
    name: str
    files: str  # which files are spelled this way
    routes: Tuple[Route, ...]
    unused: Tuple[str, ...] = ()  # file keys these files hold that no network reads


LAYOUTS: Dict[str, Layout] = {layout.name: layout for layout in (
    Layout("comfy_checkpoint", "ComfyUI checkpoints/ace_step_1.5_turbo_aio.safetensors (all-in-one)", (
        Route(DIT, CHECKPOINT_DIT_PREFIX),
        Route(TEXT_ENCODER, "text_encoders.qwen3_06b.transformer.model."),
        Route(LM, "text_encoders.qwen3_2b.transformer."),
        Route(LM, "text_encoders.qwen3_4b.transformer."),
        Route(VAE, "vae."),
    ), tuple(f"text_encoders.{name}.logit_scale" for name in ("qwen3_06b", "qwen3_2b", "qwen3_4b"))),
    Layout("dit", "ComfyUI diffusion_models/acestep_v1.5_*.safetensors; original acestep-v15-*/model.safetensors",
           (Route(DIT, ""),)),
    Layout("dit_prefixed", "a DiT file saved with the checkpoint prefix (ComfyUI's UNET loader accepts it)",
           (Route(DIT, CHECKPOINT_DIT_PREFIX),)),
    Layout("text_encoder", "original Qwen3-Embedding-0.6B/model.safetensors", (Route(TEXT_ENCODER, ""),)),
    Layout("text_encoder_comfy", "ComfyUI text_encoders/qwen_0.6b_ace15.safetensors",
           (Route(TEXT_ENCODER, "model."),)),
    Layout("lm", "ComfyUI text_encoders/qwen_{1.7b,4b}_ace15.safetensors; original acestep-5Hz-lm-*/model*.safetensors",
           (Route(LM, ""),)),
    Layout("lm_unprefixed", "an LM file without the `model.` prefix", (
        Route(LM, "lm_head.", "lm_head."),
        Route(LM, "", "model."),
    )),
    Layout("vae", "ComfyUI vae/ace_1.5_vae.safetensors; original vae/diffusion_pytorch_model.safetensors",
           (Route(VAE, ""),)),
)}

# Where each network lives in the original Hugging Face folders (repo ACE-Step/Ace-Step1.5 holds acestep-v15-turbo,
# Qwen3-Embedding-0.6B, acestep-5Hz-lm-1.7B and vae; the others are repos ACE-Step/<folder>).
HF_FOLDERS: Dict[str, str] = {
    **{f"acestep-v15-{v}": DIT for v in ("turbo", "sft", "base", "turbo-shift1", "turbo-shift3", "turbo-continuous",
                                         "xl-turbo", "xl-sft", "xl-base")},
    "Qwen3-Embedding-0.6B": TEXT_ENCODER,
    **{f"acestep-5Hz-lm-{size}": LM for size in ("0.6B", "1.7B", "4B")},
    "vae": VAE,
}
# The weights file(s) of one original folder: a single file or a shard index (transformers' names; the vae/ folder
# holds diffusers' name).
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "diffusion_pytorch_model.safetensors",
                   "diffusion_pytorch_model.safetensors.index.json")

# ComfyUI's file names (Comfy-Org/ace_step_1.5_ComfyUI_files) and the layout each one has.
COMFY_FILES: Dict[str, str] = {
    "checkpoints/ace_step_1.5_turbo_aio.safetensors": "comfy_checkpoint",
    **{f"diffusion_models/acestep_v1.5_{v}.safetensors": "dit"
       for v in ("turbo", "sft", "base", "xl_turbo", "xl_sft", "xl_base")},
    "text_encoders/qwen_0.6b_ace15.safetensors": "text_encoder_comfy",
    "text_encoders/qwen_1.7b_ace15.safetensors": "lm",
    "text_encoders/qwen_4b_ace15.safetensors": "lm",
    "vae/ace_1.5_vae.safetensors": "vae",
}


def is_language_model(vocab_size: int) -> bool:
    """A Qwen3 whose vocabulary reaches past Qwen3's own tokens holds the audio codes: an ACE-Step LM."""
    return vocab_size > AUDIO_CODE_FIRST_ID


def detect_layout(shapes: Mapping[str, Sequence[int]]) -> Layout:
    """The layout of a file from its key -> shape map, or ValueError naming what was found."""
    keys = shapes.keys()
    if any(k.startswith(CHECKPOINT_DIT_PREFIX) for k in keys):
        return LAYOUTS["comfy_checkpoint" if any(k.startswith("text_encoders.") for k in keys) else "dit_prefixed"]
    if "decoder.proj_in.1.weight" in shapes:
        return LAYOUTS["dit"]
    for prefix in ("model.", ""):
        embed = shapes.get(prefix + "embed_tokens.weight")
        if embed is not None:
            if is_language_model(embed[0]):
                return LAYOUTS["lm" if prefix else "lm_unprefixed"]
            return LAYOUTS["text_encoder_comfy" if prefix else "text_encoder"]
    if is_oobleck_vae(keys):
        return LAYOUTS["vae"]
    sample = sorted(keys)[:5]
    raise ValueError(f"not an ACE-Step 1.5 DiT, text encoder, LM or VAE file (first keys: {sample}); expected "
                     "'decoder.proj_in.1.weight', 'embed_tokens.weight', Oobleck VAE keys ('decoder.layers.1.layers.0"
                     f".alpha') or the checkpoint prefix '{CHECKPOINT_DIT_PREFIX}'")


def is_oobleck_vae(keys: Iterable[str]) -> bool:
    """Oobleck VAE keys (either spelling) with no prefix: Snake parameters under the encoder/decoder stacks."""
    return any(k.startswith(("encoder.", "decoder.")) and k.endswith((".alpha", ".beta")) for k in keys)


def module_key(layout: Layout, file_key: str) -> Tuple[str, str] | None:
    """(network, module key) of one file key under `layout` (longest matching prefix), or None."""
    best = None
    for route in layout.routes:
        if file_key.startswith(route.file_prefix) and (best is None or len(route.file_prefix) > len(best.file_prefix)):
            best = route
    if best is None:
        return None
    return best.network, best.module_prefix + file_key[len(best.file_prefix):]


def route_keys(keys: Iterable[str], layout: Layout) -> Tuple[Dict[str, Dict[str, str]], List[str]]:
    """Splits a file's keys by network: ({network: {module key: file key}}, file keys no route takes). The layout's
    unused keys are in neither. Two file keys for one module key (e.g. an all-in-one file with two LMs) are a
    ValueError naming both."""
    routed: Dict[str, Dict[str, str]] = {}
    unrouted = []
    for key in keys:
        if key in layout.unused:
            continue
        target = module_key(layout, key)
        if target is None:
            unrouted.append(key)
            continue
        group = routed.setdefault(target[0], {})
        if target[1] in group:
            raise ValueError(f"{group[target[1]]!r} and {key!r} are both the {target[0]}'s {target[1]!r}")
        group[target[1]] = key
    return routed, unrouted
