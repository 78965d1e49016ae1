"""Refuses work that cannot fit in memory before allocating any of it, with the estimate and what to change.

Running out of memory on the CPU does not raise: the system kills the whole ComfyUI process, queue and all. So the
nodes estimate the big allocations first (latents, decoded audio, attention over long lyrics or tags) and stop with a
clear error instead.
"""
import comfy.model_management as mm
import torch

from ..ace_step.errors import PlainName


class NotEnoughMemoryError(PlainName, MemoryError):
    """A request that needs more memory than the machine has; raised before anything is allocated."""


def gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB"


def memory_limit(device: torch.device) -> tuple[int, str]:
    """The most one request on `device` can get, and what that figure is. On the CPU (and Apple's shared memory)
    that is the RAM free now, since models offloaded there cannot be unloaded further; on an accelerator it is the
    total, since ComfyUI unloads other models to make room."""
    device = torch.device(device)
    if device.type in ("cpu", "mps"):
        return int(mm.get_free_memory(device)), "free RAM"
    return int(mm.get_total_memory(device)), f"memory of {device}"


def require_memory(needed: int, device: torch.device, what: str, fix: str):
    """Raises NotEnoughMemoryError when `what` (an estimate of `needed` bytes on `device`) cannot fit."""
    limit, kind = memory_limit(device)
    if needed > limit:
        raise NotEnoughMemoryError(f"{what} needs about {gib(needed)}, more than the {gib(limit)} of {kind}: {fix}. "
                                   "Nothing was allocated.")
