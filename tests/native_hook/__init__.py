"""Test-only ComfyUI custom node: lets native ComfyUI build a reduced ACE-Step transformer.

ComfyUI recognises ACE-Step by `genre_embedder.weight` and returns the hard-coded 3.5B config without reading any
shape, so a small checkpoint is detected but cannot load. For checkpoints whose safetensors metadata carries MARKER
(the native-equivalence test's checkpoint), this wraps `comfy.model_detection.detect_unet_config` and replaces the
sizes by those read from the tensor shapes. Every other checkpoint gets ComfyUI's own answer. Nothing else of ComfyUI
is touched, and the module adds no nodes.
"""
import logging

import comfy.model_detection

MARKER = "ace_step_studio.native_parity"
LOG_PREFIX = "ACE-Step native parity hook: reduced transformer config"

_native_detect = comfy.model_detection.detect_unet_config


def _reduced_config(config: dict, state_dict, prefix: str) -> dict:
    def shape(key):
        return tuple(state_dict[prefix + key].shape)

    width, text_dim = shape("genre_embedder.weight")
    blocks = prefix + "transformer_blocks."
    ssl = []
    while prefix + f"projectors.{len(ssl)}.4.weight" in state_dict:
        ssl.append(shape(f"projectors.{len(ssl)}.4.weight")[0])
    return {
        **config,
        "inner_dim": width,
        # ComfyUI keeps 128-wide heads (its attention_head_dim); the width decides how many.
        "num_attention_heads": width // config["attention_head_dim"],
        "num_layers": 1 + max(int(k[len(blocks):].split(".")[0]) for k in state_dict if k.startswith(blocks)),
        "mlp_ratio": shape("transformer_blocks.0.ff.point_conv.conv.weight")[1] / width,
        "speaker_embedding_dim": shape("speaker_embedder.weight")[1],
        "text_embedding_dim": text_dim,
        "lyric_encoder_vocab_size": shape("lyric_embs.weight")[0],
        "ssl_latent_dims": ssl,
    }


def detect_unet_config(state_dict, key_prefix, metadata=None):
    config = _native_detect(state_dict, key_prefix, metadata=metadata)
    if not metadata or MARKER not in metadata or not config or config.get("audio_model") != "ace":
        return config
    config = _reduced_config(config, state_dict, key_prefix)
    logging.info("%s: %s", LOG_PREFIX, {k: config[k] for k in sorted(config)})
    return config


comfy.model_detection.detect_unet_config = detect_unet_config

NODE_CLASS_MAPPINGS = {}
