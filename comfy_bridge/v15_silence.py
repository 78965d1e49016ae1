"""The silence latent: what ACE-Step 1.5's DiT gets as its reference (timbre) audio and as its source latents when a
song has neither a reference nor LM audio codes.

The original pipeline reads it from `silence_latent.pt` in the DiT's folder (ace-step/ACE-Step-1.5
`acestep/handler.py` @ f30aee4c186c33b7b8a6ea59a4b7fc36f795b49f: `torch.load(...).transpose(1, 2)`, then the first
`length` frames); the file is [1, 64, 15000] float32, 10 minutes of frames, channels first. Newer ComfyUI hard-codes
a copy (`comfy/ldm/ace/ace_step15.py` `get_silence_latent(length, device)` in Comfy-Org/ComfyUI @
0f1fa67ad8a68b62c65ebc97a7bf485df2459c3a): four distinct leading frames, then one frame repeated, values rounded to
bfloat16. Both are the VAE's encoding of digital silence: a convolutional encoder on zeros gives the same frame
everywhere except near the start, where its zero padding meets non-zero activations.

Where the pack takes it from, first found wins:
1. `silence_latent.pt` next to the DiT's weights (the original folder's own file: exact), read with PyTorch's
   restricted loader (`weights_only=True`, which refuses arbitrary pickled objects) and checked to be one
   [1, 64, frames] float tensor;
2. the host ComfyUI's `get_silence_latent` when it has one (ComfyUI's rounded copy: generation equals native
   ComfyUI's);
3. computed from the loaded 1.5 VAE: the posterior mean of digital silence, as many leading frames as the encoder's
   receptive field reaches (they differ from the rest) and the steady frame after them, repeated. Exactness: the
   same construction as the other two up to how the original made its file (mean or sample of the posterior,
   unknown); with real weights the difference to source 1 is not measured yet.
Past its stored frames a silence latent continues with its last frame (silence stays silence).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Callable, Optional

import torch

from .v15_family import CHANNELS

FILE_NAME = "silence_latent.pt"
MAX_FILE_BYTES = 64 << 20  # the original file is 3.8 MB


class SilenceLatent:
    """silence(length, device) -> [1, 64, length] float32. `source` says where it came from (shown to users)."""

    def __init__(self, source: str, head: Optional[torch.Tensor] = None,
                 host: Optional[Callable[[int, torch.device], torch.Tensor]] = None):
        if (head is None) == (host is None):
            raise ValueError("SilenceLatent needs exactly one of head and host")
        self.source, self.head, self.host = source, head, host

    def __call__(self, length: int, device) -> torch.Tensor:
        if self.host is not None:
            return self.host(length, device).float()
        head = self.head[:, :, :length]
        if head.shape[-1] < length:
            head = torch.cat([head, self.head[:, :, -1:].expand(-1, -1, length - head.shape[-1])], dim=-1)
        return head.to(device)

    def __repr__(self) -> str:
        return f"SilenceLatent({self.source})"


def from_file(path: Path) -> SilenceLatent:
    """The original's silence_latent.pt, through PyTorch's restricted unpickler."""
    if os.path.getsize(path) > MAX_FILE_BYTES:
        raise ValueError(f"{path} is {os.path.getsize(path) >> 20} MiB; the original silence latent is about 4 MB: "
                         "replace it with the file from the ACE-Step 1.5 model folder")
    try:
        tensor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # the restricted unpickler raises UnpicklingError, RuntimeError or others on bad files
        raise ValueError(f"{path} is not a plain tensor file PyTorch's safe loader accepts ({e}): replace it with "
                         "silence_latent.pt from the ACE-Step 1.5 model folder, or delete it to use another "
                         "source") from None
    if not (isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and tensor.ndim == 3
            and tensor.shape[:2] == (1, CHANNELS) and tensor.shape[-1] > 0 and torch.isfinite(tensor).all()):
        what = f"a {tensor.dtype} tensor of shape {list(tensor.shape)}" if isinstance(tensor, torch.Tensor) \
            else type(tensor).__name__
        raise ValueError(f"{path} holds {what}, not the silence latent [1, {CHANNELS}, frames] of finite floats: "
                         "replace it with silence_latent.pt from the ACE-Step 1.5 model folder")
    return SilenceLatent(f"file {path}", head=tensor.float())


def find_file(weights: Path) -> Optional[Path]:
    """silence_latent.pt in the folder of the DiT's weights (`weights` a file or the DiT's own folder)."""
    folder = weights if weights.is_dir() else weights.parent
    candidate = folder / FILE_NAME
    return candidate if candidate.is_file() else None


def from_host() -> Optional[SilenceLatent]:
    """The host ComfyUI's hard-coded silence latent, when it has ACE-Step 1.5 support."""
    try:
        from comfy.ldm.ace.ace_step15 import get_silence_latent
    except ImportError:
        return None
    return SilenceLatent("ComfyUI's get_silence_latent", host=get_silence_latent)


def head_frames(encoder_context_samples: int, samples_per_frame: int) -> int:
    """Leading frames of a silent encoding that the start can reach; every later frame is the steady one."""
    return math.ceil(encoder_context_samples / samples_per_frame) + 1


def from_posterior_mean(mean_of_zeros: Callable[[int], torch.Tensor], encoder_context_samples: int,
                        samples_per_frame: int) -> SilenceLatent:
    """From `mean_of_zeros(frames)`: the VAE's posterior mean [1, 64, frames] of `frames` frames of zeros. Encodes
    twice the reach plus two frames, so that frame `head` onward sees neither end of the encoded stretch: frames
    0..head-1 are the start, frame `head` the steady state."""
    head = head_frames(encoder_context_samples, samples_per_frame)
    mean = mean_of_zeros(2 * head + 1)
    return SilenceLatent("the VAE's encoding of digital silence", head=mean[:, :, :head + 1].float().cpu())


def choose(weights: Optional[Path], vae_mean: Optional[Callable[[], SilenceLatent]]) -> Optional[SilenceLatent]:
    """The silence latent from the first source that has one (module docstring); None when none has."""
    found = find_file(weights) if weights is not None else None
    if found is not None:
        return from_file(found)
    host = from_host()
    if host is not None:
        return host
    return vae_mean() if vae_mean is not None else None
