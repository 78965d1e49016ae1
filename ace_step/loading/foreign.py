"""Saying what a file is when it is not the model asked for, instead of listing a thousand unexpected keys."""
from __future__ import annotations

from typing import Iterable, Optional


def describe_foreign(keys: Iterable[str]) -> Optional[str]:
    """A short description if the keys belong to a known non-ACE-Step-v1 model family, else None."""
    joined = "\n".join(keys)
    if any(m in joined for m in ("lora_A.", "lora_B.", "lora_up.", "lora_down.", ".lora.", "lora_unet_",
                                 "lora_te", "hada_w1", "lokr_w1", ".oft_", "lora_magnitude")):
        return ("this looks like a LoRA (low-rank adapter weights), not an ACE-Step v1 base checkpoint: load the "
                "base model first and apply the LoRA with the LoRA node")
    if "conditioner.embedders.1." in joined or ("model.diffusion_model.label_emb." in joined
                                                 and "model.diffusion_model.input_blocks." in joined):
        return "this looks like an SDXL image checkpoint, not ACE-Step v1"
    if "model.diffusion_model.input_blocks." in joined or "cond_stage_model." in joined:
        return "this looks like a Stable Diffusion 1.x/2.x image checkpoint, not ACE-Step v1"
    if "double_blocks." in joined and "single_blocks." in joined:
        return "this looks like a Flux image model, not ACE-Step v1"
    if "joint_blocks." in joined:
        return "this looks like a Stable Diffusion 3 image model, not ACE-Step v1"
    if "first_stage_model." in joined or "encoder.down.0.block." in joined or "decoder.up.0.block." in joined:
        return "this looks like an image VAE, not the ACE-Step music VAE"
    if "text_model.encoder.layers." in joined:
        return "this looks like a CLIP text encoder, not ACE-Step's UMT5"
    if ("block.0.layer.0.SelfAttention.relative_attention_bias.weight" in joined
            and "block.1.layer.0.SelfAttention.relative_attention_bias.weight" not in joined
            and "block.1.layer.0.SelfAttention.q.weight" in joined):
        return ("this looks like a T5 text encoder (one position-bias table shared by all layers), not UMT5, "
                "which has one per layer: ACE-Step v1 needs umt5-base")
    return None
