"""Tiny demo checkpoints: the exact ACE-Step v1 key layout, small widths, seeded random weights.

They let the whole pack (loader, nodes, workflows, tests) run end to end in seconds without the 7.7 GB model. Every
key of the real file is there, training-only ones included (REPA `projectors.*`, the dead `add_*_proj`/`to_add_out`
of the cross-attention, the vocoder's mel buffers, `logit_scale`), the vocoder is stored weight-normed
(`weight_g`/`weight_v`, as the real file most likely is), and a small SentencePiece model trained on the spot is
stored as `text_encoders.spiece_model`. The audio such a model makes is noise, of course; the safetensors header
says so (`ace_step_studio.tiny_demo`), and `CheckpointInfo.is_tiny_demo` reads it.

Deterministic: the same seed and dtype give byte-identical files (weights come from a private seeded RNG; the
SentencePiece trainer runs single-threaded on a fixed corpus; JSON is written with sorted keys).
"""
from __future__ import annotations

import json
import zlib
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Optional

import torch

from .checkpoint import (
    ALL_IN_ONE_PREFIX,
    ORIGINAL_FILES,
    ORIGINAL_FOLDERS,
    SPIECE_KEY,
    TINY_DEMO_METADATA_KEY,
    _FOLDER_ROUTE,
)
from .safetensors_file import save_safetensors

TINY_FILE_NAME = "ace_step_v1_tiny_demo.safetensors"
TINY_NOTE = "random weights for tests and demos, NOT a music model: its audio is noise"
DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
          "fp16": torch.float16, "float16": torch.float16}


def tiny_configs(vocab_size: Optional[int] = None) -> dict:
    """{"transformer", "vae", "umt5"} -> the modules' tiny() configs (UMT5 vocab = the tiny spm's piece count)."""
    from .music_vae import MusicVAEConfig
    from .spm_training import TINY_SPM_VOCAB_SIZE
    from .transformer import TransformerConfig
    from .umt5 import UMT5Config

    return {
        "transformer": TransformerConfig.tiny(),
        "vae": MusicVAEConfig.tiny(),
        "umt5": UMT5Config.tiny(vocab_size or TINY_SPM_VOCAB_SIZE),
    }


def _key_generator(seed: int, key: str) -> torch.Generator:
    # One stream per key: a tensor's values do not depend on which other tensors exist.
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63)


def _unused_value(kind: str, key: str, shape: tuple, seed: int, derived: dict) -> torch.Tensor:
    """A plausible value for a tensor the model never uses: the real derived data where we have it."""
    if key in derived:
        return derived[key].reshape(shape).float()
    if key.endswith("logit_scale"):
        return torch.full(shape, 4.6055)  # what ComfyUI's SDClipModel initialises it to (ln 100)
    return torch.randn(shape, generator=_key_generator(seed, f"{kind}.{key}")) * 0.02


def tiny_state_dicts(seed: int = 0, dtype: torch.dtype = torch.float32, vocoder_variant: str = "weight_norm",
                     configs: Optional[dict] = None, edit: Optional[Callable[[dict], None]] = None,
                     ) -> tuple[dict[str, dict[str, torch.Tensor]], bytes]:
    """({"transformer"|"vae"|"umt5": {module key: tensor}} in the real file layout (unused keys included, the
    vocoder in `vocoder_variant` form), the SentencePiece model bytes).

    `configs`: {network: config} replacing the tiny config of those networks (e.g. a full-size VAE).
    `edit(states)`: called last; may change tensor values in place, for test checkpoints that need particular ones.
    """
    import sentencepiece

    from . import checkpoint, music_vae, vocoder
    from .spm_training import train_tiny_spm

    spm = train_tiny_spm()
    configs = {**tiny_configs(sentencepiece.SentencePieceProcessor(model_proto=spm).get_piece_size()),
               **(configs or {})}
    out = {}
    with torch.random.fork_rng(devices=[]):
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            for i, kind in enumerate(("transformer", "vae", "umt5")):
                torch.manual_seed(seed * 7919 + i)  # PyTorch's default initialisation: sane scales
                model = checkpoint._network(kind).model_cls(configs[kind])
                sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
                derived = {}
                if kind == "vae":
                    cfg = configs[kind]
                    voc = {k[len("vocoder."):]: v for k, v in sd.items() if k.startswith("vocoder.")}
                    if vocoder_variant != "fused":
                        voc = vocoder.split_weight_norm(voc, cfg.vocoder, vocoder_variant)
                    sd = {k: v for k, v in sd.items() if not k.startswith("vocoder.")}
                    sd.update({"vocoder." + k: v for k, v in voc.items()})
                    window, fb = model.vocoder.mel_transform.window_and_filterbank("cpu")
                    derived = {"vocoder.mel_transform.spectrogram.window": window,
                               "vocoder.mel_transform.mel_scale.fb": fb}
                    unused = music_vae.unused_checkpoint_shapes(cfg)
                else:
                    unused = checkpoint._network(kind).unused_shapes(configs[kind])
                for key, shape in sorted(unused.items()):
                    sd[key] = _unused_value(kind, key, tuple(shape), seed, derived)
                out[kind] = {k: (v.to(dtype) if v.is_floating_point() else v).contiguous() for k, v in sd.items()}
        finally:
            torch.set_default_dtype(previous)
    if edit is not None:
        edit(out)
    return out, spm


def _metadata(seed: int, dtype: torch.dtype, extra: Optional[dict] = None) -> dict[str, str]:
    return {
        TINY_DEMO_METADATA_KEY: TINY_NOTE,
        "ace_step_studio.seed": str(seed),
        "ace_step_studio.dtype": str(dtype).replace("torch.", ""),
        "format": "pt",
        **(extra or {}),
    }


def write_tiny_checkpoint(out, layout: str = "all-in-one", seed: int = 0, dtype: torch.dtype = torch.float32,
                          vocoder_variant: str = "weight_norm", configs: Optional[dict] = None,
                          edit: Optional[Callable[[dict], None]] = None, metadata: Optional[dict] = None) -> Path:
    """Writes a tiny demo checkpoint and returns its path.

    layout "all-in-one": one ComfyUI-style file (`out` is the file, or a folder to put TINY_FILE_NAME in).
    layout "folder": the original ACE-Step folder layout under `out` (config.json files; umt5-base also with
    tokenizer.json, tokenizer_config.json, special_tokens_map.json built from the SentencePiece model).
    `configs` and `edit`: as for `tiny_state_dicts`; `metadata`: extra safetensors metadata entries.
    """
    if isinstance(dtype, str):
        dtype = DTYPES[dtype]
    states, spm = tiny_state_dicts(seed, dtype, vocoder_variant, configs, edit)
    out = Path(out)
    if layout == "all-in-one":
        path = out if out.suffix == ".safetensors" else out / TINY_FILE_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {ALL_IN_ONE_PREFIX[kind] + k: v for kind, sd in states.items() for k, v in sd.items()}
        tensors[SPIECE_KEY] = torch.frombuffer(bytearray(spm), dtype=torch.uint8)
        save_safetensors(path, tensors, _metadata(seed, dtype, metadata))
        return path
    if layout != "folder":
        raise ValueError(f"unknown layout {layout!r} (all-in-one or folder)")

    from . import checkpoint
    from .spm_training import spm_to_tokenizer_json

    configs = {kind: checkpoint.infer_configs(
        {ALL_IN_ONE_PREFIX[kind] + k: tuple(v.shape) for k, v in sd.items()})[kind] for kind, sd in states.items()}
    for part, (net, prefix) in _FOLDER_ROUTE.items():
        folder = out / ORIGINAL_FOLDERS[part]
        folder.mkdir(parents=True, exist_ok=True)
        sd = states[net]
        if prefix is None:  # HF UMT5EncoderModel naming: no `transformer.` level, no CLIP-style logit_scale
            tensors = {k[len("transformer."):]: v for k, v in sd.items() if k.startswith("transformer.")}
        else:
            tensors = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        save_safetensors(folder / ORIGINAL_FILES[part], tensors, _metadata(seed, dtype, metadata))
        _write_json(folder / "config.json", _config_json(part, configs[net], dtype))
    umt5 = out / ORIGINAL_FOLDERS["umt5"]
    (umt5 / "tokenizer.json").write_text(spm_to_tokenizer_json(spm), encoding="utf-8")
    _write_json(umt5 / "tokenizer_config.json", {
        "tokenizer_class": "T5Tokenizer", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "extra_ids": 0, "model_max_length": 512, "_ace_step_studio": TINY_NOTE})
    _write_json(umt5 / "special_tokens_map.json", {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"})
    return out


def _write_json(path: Path, data: dict):
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _plain(config) -> dict:
    return json.loads(json.dumps(asdict(config), default=list))


def _config_json(part: str, config, dtype: torch.dtype) -> dict:
    """config.json for one original folder. The loader takes sizes from the tensor shapes; it reads only the
    transformer's num_attention_heads (not derivable from shapes). Names follow the original files where we
    know them; the rest is our config, for reference."""
    note = {"_ace_step_studio": TINY_NOTE, "torch_dtype": str(dtype).replace("torch.", "")}
    if part == "transformer":
        c = config
        return {**note, "_class_name": "ACEStepTransformer2DModel", "in_channels": c.in_channels,
                "out_channels": c.out_channels, "num_layers": c.num_layers, "inner_dim": c.hidden_size,
                "num_attention_heads": c.num_heads, "attention_head_dim": c.head_dim, "mlp_ratio": c.mlp_ratio,
                "patch_size": list(c.patch_size), "rope_theta": c.rope_theta,
                "speaker_embedding_dim": c.speaker_embedding_dim, "text_embedding_dim": c.text_embedding_dim,
                "lyric_encoder_vocab_size": c.lyric_vocab_size, "lyric_hidden_size": c.lyric_hidden_size,
                "ssl_latent_dims": list(c.ssl_latent_dims), "max_position": 32768, "max_height": 16,
                "max_width": 32768}
    if part == "dcae":
        return {**note, "_class_name": "AutoencoderDC", "ace_step_studio_config": _plain(config.dcae)}
    if part == "vocoder":
        return {**note, "_class_name": "ADaMoSHiFiGANV1", "ace_step_studio_config": _plain(config.vocoder)}
    c = config
    return {**note, "architectures": ["UMT5EncoderModel"], "model_type": "umt5", "vocab_size": c.vocab_size,
            "d_model": c.d_model, "d_kv": c.d_kv, "d_ff": c.d_ff, "num_layers": c.num_layers,
            "num_heads": c.num_heads, "relative_attention_num_buckets": c.relative_attention_num_buckets,
            "relative_attention_max_distance": c.relative_attention_max_distance,
            "layer_norm_epsilon": c.layer_norm_epsilon, "feed_forward_proj": "gated-gelu",
            "is_encoder_decoder": False, "pad_token_id": 0, "eos_token_id": 1, "tie_word_embeddings": False}
