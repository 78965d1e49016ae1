"""Saying what a file is when it is not the model asked for, instead of listing a thousand unexpected keys.

`identify(keys)` tells the families apart from key names (and, where a mapping of shapes is given, a vocabulary
size): ACE-Step v1, ACE-Step 1.5, or another kind of model (a LoRA, an image model, a plain Qwen3...).
`wrong_family_error(path, keys, expected)` is what both loaders call first: the error to raise when a file belongs
elsewhere, naming the ACE-Step Studio node that loads it.

Key markers, by family (prefixes such as `model.diffusion_model.`, `vae.`, `text_encoders.` may precede them):
- ACE-Step v1 (ace_step/loading/v1_layout.py): the transformer's `lyric_embs`, `genre_embedder`, `speaker_embedder`,
  `lyric_encoder.encoders.`; the music VAE's `dcae.` / `vocoder.` (or the vocoder's bare `backbone.stages.`,
  `head.conv_pre.`, `mel_transform.`); the text encoder's `umt5base.`, `spiece_model`, or a T5 stack with a
  position-bias table in every layer (UMT5).
- ACE-Step 1.5 (ace_step/loading/v15_keys.py): the DiT's `decoder.proj_in.1.`, `decoder.condition_embedder.`,
  `encoder.lyric_encoder.layers.`, `detokenizer.`, `null_condition_emb`; the all-in-one file's
  `text_encoders.qwen3_06b.` / `qwen3_2b.` / `qwen3_4b.`; a Qwen3 (`embed_tokens` + per-head `q_norm`) whose
  vocabulary is Qwen3-Embedding-0.6B's 151,669 tokens or reaches the LM's audio codes (217,204); an Oobleck VAE
  (Snake `alpha`/`beta` under `encoder.layers.` / `decoder.layers.`, or diffusers' `encoder.block.` /
  `decoder.block.`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence, Union

from .errors import WrongModelError

V1, V15 = "v1", "1.5"
FAMILY_NAMES = {V1: "ACE-Step v1", V15: "ACE-Step 1.5"}
V1_NODE = "Load ACE-Step Checkpoint (ACE-Step Studio)"
V15_CHECKPOINT_NODE = "Load ACE-Step 1.5 Checkpoint (ACE-Step Studio)"
V15_DIT_NODE = "Load ACE-Step 1.5 Diffusion Model (ACE-Step Studio)"
V15_TEXT_NODE = "Load ACE-Step 1.5 Text Encoders (ACE-Step Studio)"
V15_VAE_NODE = "Load ACE-Step 1.5 VAE (ACE-Step Studio)"
# What to choose instead of a file that is not ACE-Step at all (ComfyUI's repackaged names, the original folders).
FAMILY_FILES = {
    V1: "ComfyUI's ace_step_v1_3.5b.safetensors or the original ACE-Step-v1-3.5B folder",
    V15: "ComfyUI's ace_step_1.5_turbo_aio.safetensors, its split files (acestep_v1.5_*.safetensors, "
         "qwen_0.6b_ace15.safetensors, ace_1.5_vae.safetensors) or the original ACE-Step-1.5 folder",
}

# Qwen3 vocabularies (ace_step/text/qwen_tokenizer.py): Qwen3-Embedding-0.6B's rows, and the first id past the
# audio codes the 5 Hz LMs can write (151,669 + 64,000).
QWEN3_EMBEDDING_VOCAB = 151_669
LM_MIN_VOCAB = 151_669 + 64_000

KeysOrShapes = Union[Iterable[str], Mapping[str, object]]


@dataclass(frozen=True)
class Identity:
    """What a file holds: `family` "v1", "1.5" or None (another kind of model); `what` in words ("an ACE-Step 1.5
    diffusion model (DiT)"); `node`: the ACE-Step Studio node that loads it (None for other models)."""

    family: Optional[str]
    what: str
    node: Optional[str] = None


def describe_foreign(keys: KeysOrShapes, family: str = V1) -> Optional[str]:
    """A short description if the keys belong to a known model family other than ACE-Step, else None; `family`:
    the ACE-Step version that was expected, named in the description."""
    name = FAMILY_NAMES[family]
    joined = "\n".join(keys)
    if any(m in joined for m in ("lora_A.", "lora_B.", "lora_up.", "lora_down.", ".lora.", "lora_unet_",
                                 "lora_te", "hada_w1", "lokr_w1", ".oft_", "lora_magnitude")):
        return (f"this looks like a LoRA (low-rank adapter weights), not an {name} base checkpoint: load the "
                "base model first and apply the LoRA with the LoRA node")
    if "conditioner.embedders.1." in joined or ("model.diffusion_model.label_emb." in joined
                                                 and "model.diffusion_model.input_blocks." in joined):
        return f"this looks like an SDXL image checkpoint, not {name}"
    if "model.diffusion_model.input_blocks." in joined or "cond_stage_model." in joined:
        return f"this looks like a Stable Diffusion 1.x/2.x image checkpoint, not {name}"
    if "double_blocks." in joined and "single_blocks." in joined:
        return f"this looks like a Flux image model, not {name}"
    if "joint_blocks." in joined:
        return f"this looks like a Stable Diffusion 3 image model, not {name}"
    if "first_stage_model." in joined or "encoder.down.0.block." in joined or "decoder.up.0.block." in joined:
        return "this looks like an image VAE, not " + ("the ACE-Step music VAE" if family == V1
                                                        else "ACE-Step 1.5's audio VAE")
    if "text_model.encoder.layers." in joined:
        return "this looks like a CLIP text encoder, not " + ("ACE-Step's UMT5" if family == V1
                                                               else "ACE-Step 1.5's Qwen3 text encoder")
    if ("block.0.layer.0.SelfAttention.relative_attention_bias.weight" in joined
            and "block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in joined
            and "block.1.layer.0.SelfAttention.q.weight" in joined):
        if family == V1:
            return ("this looks like a T5 text encoder (one position-bias table shared by all layers), not UMT5, "
                    "which has one per layer: ACE-Step v1 needs umt5-base")
        return "this looks like a T5 text encoder, not ACE-Step 1.5's Qwen3 text encoder"
    return None


def _shape(keys: KeysOrShapes, key: str) -> Optional[tuple]:
    if not isinstance(keys, Mapping) or key not in keys:
        return None
    value = keys[key]
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def _identify_v15(keys: KeysOrShapes, names: Sequence[str]) -> Optional[Identity]:
    joined = "\n".join(names)
    dit = any(m in joined for m in ("decoder.proj_in.1.", "decoder.condition_embedder.",
                                    "encoder.lyric_encoder.layers.", "detokenizer.special_tokens",
                                    "null_condition_emb"))
    text_models = any(f"text_encoders.{m}." in joined for m in ("qwen3_06b", "qwen3_2b", "qwen3_4b"))
    if dit and text_models:
        return Identity(V15, "an ACE-Step 1.5 all-in-one checkpoint", V15_CHECKPOINT_NODE)
    if dit:
        return Identity(V15, "an ACE-Step 1.5 diffusion model (DiT)", V15_DIT_NODE)
    if text_models:
        return Identity(V15, "ACE-Step 1.5's text encoders", V15_TEXT_NODE)
    for prefix in ("model.", ""):
        if f"{prefix}embed_tokens.weight" in names and f"{prefix}layers.0.self_attn.q_norm.weight" in names:
            shape = _shape(keys, f"{prefix}embed_tokens.weight")
            if shape is None:
                return Identity(V15, "a Qwen3 model (ACE-Step 1.5's text encoder or 5 Hz LM, or another Qwen3)",
                                V15_TEXT_NODE)
            if shape[0] == QWEN3_EMBEDDING_VOCAB:
                return Identity(V15, "ACE-Step 1.5's text encoder (Qwen3-Embedding-0.6B)", V15_TEXT_NODE)
            if shape[0] >= LM_MIN_VOCAB:
                return Identity(V15, "an ACE-Step 1.5 5 Hz LM (planner)", V15_TEXT_NODE)
            return Identity(None, f"a Qwen3 language model with {shape[0]:,} tokens, not ACE-Step 1.5's text encoder "
                            f"(Qwen3-Embedding-0.6B, {QWEN3_EMBEDDING_VOCAB:,} tokens) or 5 Hz LM (whose "
                            "vocabulary holds the audio codes: 217,204 tokens)")
    stacks = ("encoder.layers.", "decoder.layers.", "encoder.block.", "decoder.block.")
    if any(k.endswith((".alpha", ".beta")) and any(s in k for s in stacks) for k in names):
        return Identity(V15, "an Oobleck audio VAE (ACE-Step 1.5's kind)", V15_VAE_NODE)
    return None


def _identify_v1(names: Sequence[str]) -> Optional[Identity]:
    joined = "\n".join(names)
    tops = {k.removeprefix("model.diffusion_model.").split(".", 1)[0] for k in names}
    transformer = (bool(tops & {"lyric_embs", "genre_embedder", "speaker_embedder"})
                   or "lyric_encoder.encoders." in joined)
    music_vae = any(m in joined for m in ("dcae.", "vocoder.", "backbone.stages.", "head.conv_pre.", "mel_transform."))
    umt5 = any(m in joined for m in ("umt5base.", "spiece_model",
                                     "block.1.layer.0.SelfAttention.relative_attention_bias.weight"))
    if transformer and (music_vae or umt5):
        return Identity(V1, "an ACE-Step v1 checkpoint", V1_NODE)
    if transformer:
        return Identity(V1, "ACE-Step v1's diffusion transformer", V1_NODE)
    if music_vae:
        return Identity(V1, "ACE-Step v1's music VAE (DCAE + vocoder)", V1_NODE)
    if umt5:
        return Identity(V1, "ACE-Step v1's UMT5 text encoder", V1_NODE)
    return None


def identify(keys: KeysOrShapes, expected: str = V1) -> Optional[Identity]:
    """What the keys (or a key -> shape/tensor mapping) belong to: an ACE-Step family, another kind of model (family
    None, described for someone who expected `expected`), or None when nothing is recognised."""
    names = list(keys)
    foreign = describe_foreign(names, expected)
    if foreign is not None:
        return Identity(None, foreign.removeprefix("this looks like "))
    return _identify_v15(keys, names) or _identify_v1(names)


def wrong_family_error(path, keys: KeysOrShapes, expected: str) -> Optional[WrongModelError]:
    """The error for a file that belongs to another ACE-Step version or to another kind of model, naming what it is
    and the node that loads it; None when it may be the `expected` family ("v1" or "1.5")."""
    found = identify(keys, expected)
    if found is None or found.family == expected:
        return None
    name = FAMILY_NAMES[expected]
    if found.family is None:
        return WrongModelError(path, f"this looks like {found.what}.",
                               f"This loader reads {name} files only: choose {FAMILY_FILES[expected]}.")
    return WrongModelError(path, f"this is {found.what}, not {name}.",
                           f"Load it with the '{found.node}' node; this loader reads {name} files only.")
