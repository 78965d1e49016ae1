"""Running a local network along the time axis in tiles.

The convolution stacks of the DCAE and the vocoder are local: an output sample depends on the input only within a
fixed number of samples on each side (their "context"). Such a function can run on consecutive tiles of the input,
each widened by that context on both sides, keeping only each tile's core: the result is the one the whole signal
gives, up to float rounding. On a CPU this is much faster for long songs. Every intermediate of a tile stays small:
it stays in cache, and under the C allocator's mmap threshold (about 32 MB), above which every allocation is fresh
pages from the kernel, faulted in one by one. For a 30 s song that page-faulting alone is a quarter of the DCAE
decoder's time.
"""
from __future__ import annotations

from typing import Callable

import torch


def map_time_tiles(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, core: int, context: int,
                   scale: int = 1, stride: int = 1) -> torch.Tensor:
    """`fn(x)` computed on tiles of about `core` samples along x's last axis, each with `context` samples (at least)
    on both sides.

    `fn` must map n samples to n·`scale`/`stride` samples (for n a multiple of `stride`: a downsampler's outputs then
    stay on the whole signal's grid), and each output sample must depend only on the input within `context` samples
    of its source samples; zero padding at the signal's ends is kept, because the first and last tiles reach them.
    When one tile covers x, this is `fn(x)`.
    """
    if core < 1 or context < 0 or scale < 1 or stride < 1:
        raise ValueError("core, scale and stride must be >= 1 and context >= 0")
    length = x.shape[-1]
    if length % stride:
        raise ValueError(f"{length} samples do not downsample by {stride}")
    core, context = -(-core // stride) * stride, -(-context // stride) * stride
    if core >= length:
        return fn(x)
    out = None
    for start in range(0, length, core):
        stop = min(length, start + core)
        lo, hi = max(0, start - context), min(length, stop + context)
        y = fn(x[..., lo:hi])
        if out is None:
            out = y.new_empty(*y.shape[:-1], length * scale // stride)
        out[..., start * scale // stride : stop * scale // stride] = \
            y[..., (start - lo) * scale // stride : (stop - lo) * scale // stride]
    return out
