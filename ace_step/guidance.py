"""Guidance arithmetic on model predictions (plain torch)."""
import torch


def reinhard_tonemap(latent: torch.Tensor, multiplier: float) -> torch.Tensor:
    """Reinhard tonemap of a latent's per-position vector norm over channels (the vocal-volume knob of ComfyUI's
    ACE-Step guide): norms are compressed as m -> top·m/(m + top) with top = (μ + 5σ)·multiplier of the batch
    item's norms, so the loudest parts of a guidance difference are tamed while the direction is kept."""
    norm = latent.norm(dim=1, keepdim=True) + 1e-10
    direction = latent / norm
    dims = tuple(range(1, latent.ndim))
    mean = norm.mean(dim=dims, keepdim=True)
    std = norm.std(dim=dims, keepdim=True)
    top = (5 * std + mean) * multiplier
    scaled = norm / top
    return direction * (top * scaled / (scaled + 1))
