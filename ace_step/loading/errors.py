"""Every problem with a model file is one of these errors, whose message names the file, the problem and the fix."""
from __future__ import annotations

from ..errors import PlainName

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")

CONVERT_HINT = (
    "Convert it once, in an environment you trust, with: python -c \"import torch, safetensors.torch as st; "
    "sd = torch.load('IN', map_location='cpu', weights_only=True); sd = sd.get('state_dict', sd); "
    "st.save_file({k: v.contiguous() for k, v in sd.items()}, 'OUT.safetensors')\" "
    "or download the .safetensors release (e.g. Comfy-Org/ACE-Step_ComfyUI_repackaged, ace_step_v1_3.5b.safetensors)."
)
REDOWNLOAD = "The download or copy was probably interrupted: download the file again."


class CheckpointError(PlainName, Exception):
    """Base class: a checkpoint could not be loaded. The message says which file, what is wrong and what to do."""

    def __init__(self, path, problem: str, fix: str = ""):
        self.path = str(path) if path is not None else None
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem}" + (f" {fix}" if fix else ""))


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The file or folder does not exist, or holds none of the expected files."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle-based file (.ckpt/.pt/.pth/.bin, or a zip/pickle under another name): refused, never unpickled."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated or its header is malformed, oversized or inconsistent with the data."""


class UnsupportedCheckpointError(CheckpointError):
    """A well-formed file that uses something we cannot load (an unknown dtype, another file format)."""


class CheckpointMismatchError(CheckpointError):
    """The tensors do not fit the model: missing tensors, wrong shapes, unexpected keys."""


class WrongModelError(CheckpointMismatchError):
    """The file is a different kind of model (a LoRA, an image model, another ACE-Step version...)."""
