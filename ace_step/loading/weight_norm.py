"""Weight normalisation (Salimans & Kingma 2016, arXiv 1602.07868): w = g · v / ‖v‖, as checkpoints store it.

PyTorch writes a weight-normed layer's weight as two tensors, in one of two spellings: `X.weight_g` / `X.weight_v`
(`torch.nn.utils.weight_norm`) or `X.parametrizations.weight.original0` / `original1`
(`torch.nn.utils.parametrizations.weight_norm`). Our networks hold the fused `X.weight`; the loaders fuse once at
load time, so nothing is recomputed per call and weight patches (LoRA) see a plain weight.
"""
from __future__ import annotations

from typing import Mapping, Optional

import torch

# spelling -> (suffix of g, suffix of v)
SPELLINGS = {
    "weight_norm": (".weight_g", ".weight_v"),
    "parametrizations": (".parametrizations.weight.original0", ".parametrizations.weight.original1"),
}


def parse_key(key: str) -> Optional[tuple[str, str, str]]:
    """(fused key `X.weight`, "g" or "v", spelling) for a weight-norm half, else None."""
    for spelling, suffixes in SPELLINGS.items():
        for part, suffix in zip("gv", suffixes):
            if key.endswith(suffix):
                return key[: -len(suffix)] + ".weight", part, spelling
    return None


def fuse(g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """g · v / ‖v‖ in float32, the norm over every axis where g has size 1 (all but dim 0 for the default `dim=0`,
    also for transposed convolutions), returned in v's dtype."""
    if g.ndim != v.ndim or any(gs not in (1, vs) for gs, vs in zip(g.shape, v.shape)):
        raise ValueError(f"weight-norm magnitude {list(g.shape)} does not fit direction {list(v.shape)}")
    dims = tuple(d for d in range(v.ndim) if g.shape[d] == 1)
    v32 = v.float()
    return (v32 * (g.float() / v32.pow(2).sum(dim=dims, keepdim=True).sqrt())).to(v.dtype)


def split(weight: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, v) with fuse(g, v) == weight: g = ‖weight‖ over every axis but `dim`, v = weight (to write files in the
    real layout)."""
    dims = tuple(d for d in range(weight.ndim) if d != dim)
    return weight.float().pow(2).sum(dim=dims, keepdim=True).sqrt().to(weight.dtype), weight


def fuse_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict with every weight-norm pair fused into `X.weight`; other keys pass through."""
    out: dict[str, torch.Tensor] = {}
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        parsed = parse_key(key)
        if parsed is None:
            out[key] = value
        else:
            halves.setdefault(parsed[0], {})[parsed[1]] = value
    for fused, parts in halves.items():
        if set(parts) != {"g", "v"}:
            raise ValueError(f"weight-norm pair incomplete for {fused}: only {sorted(parts)}")
        out[fused] = fuse(parts["g"], parts["v"])
    return out


def split_state_dict(state_dict: Mapping[str, torch.Tensor], keys, spelling: str = "weight_norm",
                     dim: int = 0) -> dict[str, torch.Tensor]:
    """Inverse of `fuse_state_dict` for the fused `keys` (`X.weight`), in the given spelling."""
    g_suffix, v_suffix = SPELLINGS[spelling]
    keys = set(keys)
    out = {}
    for key, value in state_dict.items():
        if key in keys:
            base = key[: -len(".weight")]
            out[base + g_suffix], out[base + v_suffix] = split(value, dim)
        else:
            out[key] = value
    return out
