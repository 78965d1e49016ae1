"""Loading one network's tensors strictly: built on `meta` (no memory until loaded), every key checked before any
byte is read, only the tensors the network uses read, each converted once to the wanted dtype.

A network's tensors arrive as a group {key in our module: `TensorRef`} (the family's key routing builds it from the
files). `load_group` refuses missing tensors, wrong shapes and unknown keys in one error that names them, skips the
known training-only tensors without reading them, fuses weight-normed pairs, and assigns the tensors to the module.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional, Sequence

import torch
from torch import nn

from . import weight_norm
from .errors import CheckpointError, CheckpointMismatchError, WrongModelError


@dataclass
class TensorRef:
    """Where one tensor comes from: a source with `.path`, `.read(key, dtype)` (and optionally `.offset(key)`,
    `.dtypes()`), the key in that source, and its shape."""

    source: object
    key: str
    shape: Optional[tuple]


def listing(names: Iterable[str], limit: int = 10) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" (and {len(names) - limit} more)" if len(names) > limit else "")


def build_on_meta(model_cls: Callable[..., nn.Module], config, **kwargs) -> nn.Module:
    """The network for `config` with every tensor on `meta` (shapes only, free at any size)."""
    with torch.device("meta"):
        return model_cls(config, device="meta", **kwargs)


def state_shapes(model: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def fold_weight_norm(group: dict[str, TensorRef], path) -> tuple[dict, dict, str]:
    """Renames weight-norm pairs (g, v) to the fused key `X.weight`, whose shape is v's.

    Returns (group with fused keys, {fused key: (g ref, v ref)}, the spelling found: "weight_norm",
    "parametrizations" or "fused")."""
    out, halves, spellings = {}, {}, set()
    for key, ref in group.items():
        parsed = weight_norm.parse_key(key)
        if parsed is None:
            out[key] = ref
        else:
            halves.setdefault(parsed[0], {})[parsed[1]] = ref
            spellings.add(parsed[2])
    pairs = {}
    for fused, parts in halves.items():
        if set(parts) != {"g", "v"}:
            have = next(iter(parts.values())).key
            lacking = "magnitude (g)" if "v" in parts else "direction (v)"
            raise CheckpointMismatchError(path, f"weight-norm tensor {have!r} has no partner: its {lacking} tensor "
                                          "is missing.", "The file is incomplete: download it again.")
        if fused in out:
            raise CheckpointMismatchError(path, f"{parts['v'].key!r} is stored both fused and weight-normed.",
                                          "Keep one form.")
        out[fused] = parts["v"]
        pairs[fused] = (parts["g"], parts["v"])
    if len(spellings) > 1:
        raise CheckpointMismatchError(path, "the file mixes two weight-norm spellings (weight_g/weight_v and "
                                      "parametrizations.weight.original0/1).", "Re-save it in one form.")
    return out, pairs, (spellings.pop() if spellings else "fused")


def _file_key(local: str, group: Mapping[str, TensorRef]) -> str:
    """How a (missing) module key would be spelled in the file, guessed from a sibling tensor's spelling."""
    top = local.split(".", 1)[0]
    for sib_local, ref in group.items():
        if sib_local.split(".", 1)[0] != top:
            continue
        if ref.key.endswith(sib_local):
            return ref.key[: len(ref.key) - len(sib_local)] + local
        rest = sib_local.split(".", 1)[-1]
        if ref.key.endswith(rest):
            return ref.key[: len(ref.key) - len(rest)] + local.split(".", 1)[-1]
    return local


def _offset(ref: TensorRef) -> int:
    offset = getattr(ref.source, "offset", None)
    return offset(ref.key) if offset else 0


def _stored_dtype(ref: TensorRef) -> Optional[str]:
    dtypes = getattr(ref.source, "dtypes", None)
    return dtypes().get(ref.key) if dtypes else None


def load_group(model: nn.Module, group: Mapping[str, TensorRef], *, title: str, path, fix: str,
               unused: Sequence[str] = (), pairs: Optional[Mapping[str, tuple]] = None,
               dtype: Optional[torch.dtype] = None, device=None,
               describe: Callable[[Iterable[str]], Optional[str]] = lambda keys: None) -> tuple[int, list[str]]:
    """Checks `group` against `model` (built on meta) and assigns its tensors; returns (training-only tensors
    skipped unread, the stored dtypes of what was read).

    title names the network in errors ("diffusion transformer"); fix is the error's advice; unused: module-relative
    keys the file may hold that the network never reads; pairs: weight-normed keys from `fold_weight_norm`;
    describe(keys) may say what foreign keys belong to (a LoRA, an image model...)."""
    expected = state_shapes(model)
    unused = set(unused)
    pairs = pairs or {}
    missing = [_file_key(k, group) for k in expected if k not in group]
    wrong = [f"{group[k].key} {list(group[k].shape)} (expected {list(s)})"
             for k, s in expected.items() if k in group and group[k].shape != s]
    unexpected = [group[k].key for k in group if k not in expected and k not in unused]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors are missing: {listing(missing)}")
    if wrong:
        problems.append(f"{len(wrong)} tensors have the wrong shape: {listing(wrong)}")
    foreign = describe(unexpected) if unexpected else None
    if unexpected:
        problems.append(f"{len(unexpected)} tensors are not part of the {title}: {listing(unexpected)}"
                        + (f" ({foreign})" if foreign else ""))
    if problems:
        raise (WrongModelError if foreign else CheckpointMismatchError)(
            path, f"these weights do not fit the {title} their shapes describe: " + "; ".join(problems) + ".", fix)

    # Read what the model uses, in file order; the training-only tensors are never read.
    state, stored = {}, set()
    for k in sorted(expected, key=lambda k: (str(group[k].source.path), _offset(group[k]))):
        ref = group[k]
        if k in pairs:
            g_ref, v_ref = pairs[k]
            g, v = g_ref.source.read(g_ref.key), v_ref.source.read(v_ref.key)
            t = weight_norm.fuse(g.float(), v.float()).to(dtype or v.dtype)  # fused in fp32, rounded once
            stored.add(_stored_dtype(g_ref))
        else:
            t = ref.source.read(ref.key, dtype)
        stored.add(_stored_dtype(ref))
        state[k] = t if device is None else t.to(device)
    model.load_state_dict(state, strict=True, assign=True)
    del state
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise CheckpointError(None, f"internal error: the {title} still has unloaded tensors: {listing(left)}.")
    model.eval().requires_grad_(False)
    return sum(1 for k in group if k in unused), sorted(x for x in stored if x)

