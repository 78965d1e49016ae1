"""ACE-Step 1.5's base-only tasks (extract, lego, complete) on the pack's 1.5 MODEL: which model may run them, and
the base model's schedule. The sampling itself is the task loop of `v15_tasks.run_task`.

The weights of turbo, sft and base have the same keys and shapes, so the MODEL's variant is what its file or folder
name says (or a tiny demo file's metadata), recorded by the loader (`v15_loading.with_variant`). A MODEL whose
name says turbo or sft is refused with the base files to load; one whose name says nothing runs, with a warning.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch

from ..ace_step.sampling.v15_sampling import sampling_sigmas
from ..ace_step.sampling.v15_tasks import check_variant

log = logging.getLogger(__name__)

BASE_FILES = ("acestep_v1.5_base.safetensors (or acestep_v1.5_xl_base.safetensors) in models/diffusion_models/ with "
              "Load ACE-Step 1.5 Diffusion Model, or the original acestep-v15-base folder with Load ACE-Step 1.5 "
              "Checkpoint")


def model_variant(model) -> Optional[str]:
    """"turbo", "sft", "base" or None (the name does not say) for a MODEL from the pack's 1.5 loaders."""
    guess = getattr(getattr(model, "model", None), "variant_guess", None)
    return getattr(guess, "kind", None)


def model_name(model) -> str:
    guess = getattr(getattr(model, "model", None), "variant_guess", None)
    return getattr(guess, "name", None) or "this MODEL"


def require_base(model, task: str) -> None:
    """Refuses a base-only `task` on a MODEL whose name says turbo or sft, naming the base model files."""
    variant = model_variant(model)
    if variant is None:
        log.warning("ACE-Step 1.5 %s runs on the base model only; the variant of %s is not in its name: assuming it "
                    "is a base model", task, model_name(model))
        return
    try:
        check_variant(task, variant)
    except ValueError as e:
        raise ValueError(f"{e}. {model_name(model)} is the {variant} model: load {BASE_FILES}") from None


def base_sigmas(steps: int, shift: float) -> torch.Tensor:
    """The base model's schedule (linspace, shifted) as SIGMAS."""
    return sampling_sigmas("base", steps, shift)
