"""Load Checkpoint: ComfyUI's all-in-one file or the original ACE-Step folder, from `models/checkpoints/`."""
import os
from pathlib import Path

import comfy.model_management as mm
import folder_paths
import torch
from comfy_api.latest import io

from ..ace_step.loading.v1_checkpoint import load_ace_step
from ..ace_step.text.lyrics import LyricTokenizer
from ..comfy_bridge.models import AceStepClip, AceStepVae, model_patcher
from .common import CATEGORY, display_name, node_id
from ..comfy_bridge.paths import model_file, model_folder, plain_relative_name

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


def comfyui_root() -> Path:
    return Path(folder_paths.__file__).resolve().parent


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
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, ckpt_name) -> io.NodeOutput:
        path = resolve_checkpoint(ckpt_name)
        dtype = mm.unet_dtype(supported_dtypes=[torch.bfloat16, torch.float32])
        models = load_ace_step(path, dtype=dtype, device=mm.unet_offload_device())
        # The text encoder computes in fp32 like ComfyUI's; its weights stay in the checkpoint's precision choice.
        lyrics = LyricTokenizer(comfyui_root=comfyui_root())
        clip = AceStepClip(models.text_encoder, models.tokenizer, lyrics)
        vae = AceStepVae(models.vae)
        return io.NodeOutput(model_patcher(models.transformer), clip, vae)
