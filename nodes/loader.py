"""Load Checkpoint: ComfyUI's all-in-one file or the original ACE-Step folder, from `models/checkpoints/`."""
import os
from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..comfy_bridge.models import load_checkpoint
from ..comfy_bridge.operations import WEIGHT_DTYPES
from ..comfy_bridge.paths import model_file, model_folder, plain_relative_name
from .common import CATEGORY, choice, display_name, node_id

ORIGINAL_LAYOUT_MARKER = "ace_step_transformer"
FOLDER_SUFFIX = "/"


def original_layout_folders() -> list[str]:
    """Folders under models/checkpoints/ holding the original ACE-Step layout, listed as 'name/'."""
    found = []
    for base in folder_paths.get_folder_paths("checkpoints"):
        if not os.path.isdir(base):
            continue
        for entry in sorted(os.listdir(base)):
            if os.path.isdir(os.path.join(base, entry, ORIGINAL_LAYOUT_MARKER)):
                found.append(entry + FOLDER_SUFFIX)
    return found


def checkpoint_choices() -> list[str]:
    files = [f for f in folder_paths.get_filename_list("checkpoints") if f.endswith((".safetensors", ".sft"))]
    return files + original_layout_folders()


def resolve_checkpoint(name: str) -> Path:
    """The file or folder behind a choice; never outside ComfyUI's folders (see paths.py)."""
    if plain_relative_name(name, "checkpoint").endswith(FOLDER_SUFFIX):
        return model_folder("checkpoints", name, ORIGINAL_LAYOUT_MARKER)
    return model_file("checkpoints", name)


class CheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("CheckpointLoader"),
            display_name=display_name("Load ACE-Step Checkpoint"),
            category=CATEGORY,
            description="Loads ACE-Step v1 3.5B: ComfyUI's all-in-one ace_step_v1_3.5b.safetensors or the original "
                        "ACE-Step folder (ace_step_transformer/, music_dcae_f8c8/, music_vocoder/, umt5-base/) placed "
                        "in models/checkpoints/.",
            inputs=[
                io.Combo.Input("ckpt_name", options=checkpoint_choices(),
                               tooltip="An ACE-Step v1 checkpoint from models/checkpoints/ (folders end with '/')."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default", optional=True,
                               tooltip="The diffusion model's weight precision, as ComfyUI's Load Diffusion Model "
                                       "offers it: fp8 halves its memory (computation stays in bf16/fp32); "
                                       "fp8_e4m3fn_fast also multiplies in fp8 on GPUs that can. Optional, so "
                                       "workflows saved before it existed load as they were."),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, ckpt_name, weight_dtype="default") -> io.NodeOutput:
        choice("weight_dtype", weight_dtype, WEIGHT_DTYPES)
        return io.NodeOutput(*load_checkpoint(resolve_checkpoint(ckpt_name), weight_dtype))
