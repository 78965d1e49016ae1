"""ERG ("entropy rectifying guidance") of the original ACE-Step v1 pipeline (ace-step/ACE-Step
`acestep/pipeline_ace_step.py`: its `use_erg_tag`, `use_erg_lyric` and `use_erg_diffusion` forward hooks).

The original weakens a condition or the unconditional pass by multiplying the outputs of chosen query projections
by τ = 0.01 through forward hooks (flatter attention):
- tags: UMT5 `encoder.block[8]` and `[9]` `.layer[0].SelfAttention.q` (12 blocks). Our UMT5 does this with its
  `q_scale` argument (`umt5.erg_tag_q_scale`);
- lyrics: lyric encoder `encoders[4]` and `[5]` `.self_attn.linear_q` (6 blocks), inside the transformer's
  condition encoding;
- diffusion: transformer blocks 15..19 (of 24), both `attn.to_q` and `cross_attn.to_q`, on the unconditional
  pass. A positive scale on q cancels in the ReLU linear self-attention's ratio (only its 1e-15 eps changes),
  so in effect only the cross-attention softmax is flattened.

Reduced configs (tiny test models) use the blocks at the same relative depth (`same_relative_depth`): the
original's first and last block index scale with depth, rounding down, at least one block.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

from torch import nn

TAU = 0.01

# (first block, last block, depth of the real model) hooked by the original.
UMT5_BLOCKS = (8, 9, 12)
LYRIC_ENCODER_BLOCKS = (4, 5, 6)
TRANSFORMER_BLOCKS = (15, 19, 24)


def same_relative_depth(first: int, last: int, reference_depth: int, num_layers: int) -> range:
    """Blocks first..last (inclusive) of a `reference_depth`-deep model, moved to a `num_layers`-deep one: the
    same range at full depth, else [first·n//ref, max(last·n//ref, that)], clipped to the last block."""
    lo = min(first * num_layers // reference_depth, num_layers - 1)
    hi = min(max(last * num_layers // reference_depth, lo), num_layers - 1)
    return range(lo, hi + 1)


def lyric_modules(num_blocks: int) -> list[str]:
    """Names (in `transformer.ACEStepTransformer`) of the lyric-encoder query projections the lyric ERG scales."""
    return [f"lyric_encoder.encoders.{i}.self_attn.linear_q"
            for i in same_relative_depth(*LYRIC_ENCODER_BLOCKS, num_blocks)]


def diffusion_modules(num_layers: int) -> list[str]:
    """Names (in `transformer.ACEStepTransformer`) of the query projections the diffusion ERG scales."""
    return [f"transformer_blocks.{i}.{attn}.to_q"
            for i in same_relative_depth(*TRANSFORMER_BLOCKS, num_layers) for attn in ("attn", "cross_attn")]


@contextmanager
def scaled_outputs(model: nn.Module, names: Iterable[str], scale: float = TAU) -> Iterator[None]:
    """Inside the `with` block, the outputs of `model`'s sub-modules `names` are multiplied by `scale` (forward
    hooks, removed on exit even after an error)."""
    modules = [model.get_submodule(name) for name in names]  # all names resolve before any hook is added
    handles = [m.register_forward_hook(lambda module, args, output: output * scale) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
