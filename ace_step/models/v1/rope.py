"""Rotary position embedding exactly as ACE-Step v1 applies it (ace-step/ACE-Step `acestep/models/attention.py`: Qwen2-style tables, interleaved pairs in the rotation).

The tables follow the Qwen2 layout: for head width D, frequencies f_j = theta^(-2j/D), j < D/2, and the
table column d uses f_(d mod D/2) (the "half-split" layout cat(freqs, freqs)). The rotation however pairs
neighbouring elements (2k, 2k+1) ("interleaved" layout). Mixing the two conventions is not a proper
rotation (not norm-preserving), but the released weights were trained with it, so we reproduce it:

    out[2k]   = x[2k]   * cos(p*f_(2k   mod D/2)) - x[2k+1] * sin(p*f_(2k   mod D/2))
    out[2k+1] = x[2k+1] * cos(p*f_(2k+1 mod D/2)) + x[2k]   * sin(p*f_(2k+1 mod D/2))

Numerics (kept because they change bf16 results): the tables are computed in float32, then rounded to the
activation dtype (the original caches them and returns them cast to the hidden-state dtype); the rotation
itself is done in float32 and the result cast back to the input dtype.

Tables are computed on demand (cheap: L x D) instead of being cached buffers, so the model has no
derived state and builds cleanly on the meta device.
"""
import torch

DEFAULT_THETA = 1_000_000.0


def rope_tables(length: int, head_dim: int, theta: float = DEFAULT_THETA, device=None):
    """float32 (cos, sin), each [length, head_dim], in the half-split layout (positions 0..length-1)."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head width, got {head_dim}")
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=device).float() / head_dim
    inv_freq = 1.0 / (theta**exponents)
    positions = torch.arange(length, dtype=torch.int64, device=device).float()
    angles = torch.outer(positions, inv_freq)
    angles = torch.cat((angles, angles), dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [..., L, D] (e.g. [B, H, L, D]); cos/sin: [L, D] float32 tables from `rope_tables`."""
    cos = cos.to(device=x.device, dtype=x.dtype).float()
    sin = sin.to(device=x.device, dtype=x.dtype).float()
    pairs = x.float().unflatten(-1, (-1, 2))
    even, odd = pairs.unbind(-1)
    # Partner of each element within its (2k, 2k+1) pair, with the rotation sign: (-x[2k+1], x[2k]).
    partner = torch.stack((-odd, even), dim=-1).flatten(-2)
    return (x.float() * cos + partner * sin).to(x.dtype)
