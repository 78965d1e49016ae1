"""ACE-Step 1.5 loaders: the all-in-one checkpoint (or the original Hugging Face folder) from models/checkpoints/,
and the split files from models/diffusion_models/, models/text_encoders/ and models/vae/."""
import os

import folder_paths
from comfy_api.latest import io

from ..ace_step.loading.v15_keys import DIT, HF_FOLDERS
from ..comfy_bridge.operations import WEIGHT_DTYPES
from ..comfy_bridge.paths import model_file, model_folder, plain_relative_name
from ..comfy_bridge.v15_loading import load_checkpoint, load_diffusion_model, load_text_encoders, load_vae
from .common import choice, display_name, node_id
from .v15_common import CATEGORY, require_vae

NO_LM = "none"
WEIGHT_DTYPE_TOOLTIP = ("The diffusion model's weight precision, as ComfyUI's Load Diffusion Model offers it: fp8 "
                        "halves its memory (computation stays in bf16/fp32); fp8_e4m3fn_fast also multiplies in fp8 "
                        "on GPUs that can.")
DIT_FOLDERS = sorted(name for name, network in HF_FOLDERS.items() if network == DIT)


def safetensors_files(folder_name: str) -> list[str]:
    return [f for f in folder_paths.get_filename_list(folder_name) if f.endswith((".safetensors", ".sft"))]


def original_folders() -> list[str]:
    """The original Hugging Face layout under models/checkpoints/, one choice per DiT it holds: 'folder/variant/'."""
    found = []
    for base in folder_paths.get_folder_paths("checkpoints"):
        if not os.path.isdir(base):
            continue
        for entry in sorted(os.listdir(base)):
            for variant in DIT_FOLDERS:
                if os.path.isdir(os.path.join(base, entry, variant)):
                    found.append(f"{entry}/{variant}/")
    return found


def resolve_checkpoint(name: str):
    """(path, variant or None) behind a checkpoint choice; never outside ComfyUI's folders."""
    if plain_relative_name(name, "checkpoint").endswith("/"):
        folder, _, variant = name.strip("/").partition("/")
        if variant not in DIT_FOLDERS:
            raise ValueError(f"{name!r} names no ACE-Step 1.5 model folder: choose one of the list's 'folder/"
                             f"acestep-v15-.../' entries ({', '.join(DIT_FOLDERS)})")
        return model_folder("checkpoints", folder, variant), variant
    return model_file("checkpoints", name), None


class CheckpointLoader15(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("15CheckpointLoader"),
            display_name=display_name("Load ACE-Step 1.5 Checkpoint"),
            category=CATEGORY,
            description="Loads ACE-Step 1.5 from models/checkpoints/: ComfyUI's all-in-one "
                        "ace_step_1.5_turbo_aio.safetensors, or the original Hugging Face folder (ACE-Step/"
                        "Ace-Step1.5 with acestep-v15-*/, Qwen3-Embedding-0.6B/, vae/ and an acestep-5Hz-lm-*/ "
                        "planner), one entry per DiT it holds.",
            inputs=[
                io.Combo.Input("ckpt_name", options=safetensors_files("checkpoints") + original_folders(),
                               tooltip="An ACE-Step 1.5 checkpoint from models/checkpoints/ (folders end with '/')."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip=WEIGHT_DTYPE_TOOLTIP),
            ],
            outputs=[io.Model.Output(), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def execute(cls, ckpt_name, weight_dtype) -> io.NodeOutput:
        path, variant = resolve_checkpoint(ckpt_name)
        return io.NodeOutput(*load_checkpoint(path, choice("weight_dtype", weight_dtype, WEIGHT_DTYPES), variant))


class DiffusionModelLoader15(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("15DiffusionModelLoader"),
            display_name=display_name("Load ACE-Step 1.5 Diffusion Model"),
            category=CATEGORY,
            description="Loads an ACE-Step 1.5 DiT (turbo, sft, base, XL) from models/diffusion_models/: ComfyUI's "
                        "acestep_v1.5_*.safetensors or the original model.safetensors.",
            inputs=[
                io.Combo.Input("unet_name", options=safetensors_files("diffusion_models"),
                               tooltip="An ACE-Step 1.5 DiT file from models/diffusion_models/."),
                io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default",
                               tooltip=WEIGHT_DTYPE_TOOLTIP),
                io.Vae.Input("vae", optional=True,
                             tooltip="The ACE-Step 1.5 VAE, to compute the silence latent the DiT needs. Not needed "
                                     "when silence_latent.pt lies next to the file or ComfyUI has ACE-Step 1.5 "
                                     "built in."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, unet_name, weight_dtype, vae=None) -> io.NodeOutput:
        vae = None if vae is None else require_vae(vae)  # checked first: a wrong VAE is reported before any reading
        return io.NodeOutput(load_diffusion_model(model_file("diffusion_models", unet_name),
                                                  choice("weight_dtype", weight_dtype, WEIGHT_DTYPES), vae))


class TextEncoderLoader15(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        files = safetensors_files("text_encoders")
        return io.Schema(
            node_id=node_id("15TextEncoderLoader"),
            display_name=display_name("Load ACE-Step 1.5 Text Encoders"),
            category=CATEGORY,
            description="Loads ACE-Step 1.5's text encoder (Qwen3-Embedding-0.6B: qwen_0.6b_ace15.safetensors) and, "
                        "optionally, a 5 Hz LM planner (qwen_1.7b_ace15 / qwen_4b_ace15, or an original "
                        "acestep-5Hz-lm model.safetensors) from models/text_encoders/.",
            inputs=[
                io.Combo.Input("text_encoder_name", options=files,
                               tooltip="The Qwen3-Embedding-0.6B text encoder file."),
                io.Combo.Input("lm_name", options=[NO_LM, *files], default=NO_LM,
                               tooltip="The 5 Hz LM that plans metadata and writes audio codes; none = no planner "
                                       "(faster, metadata on auto stays unknown)."),
            ],
            outputs=[io.Clip.Output()],
        )

    @classmethod
    def execute(cls, text_encoder_name, lm_name) -> io.NodeOutput:
        lm = None if lm_name == NO_LM else model_file("text_encoders", lm_name)
        return io.NodeOutput(load_text_encoders(model_file("text_encoders", text_encoder_name), lm))


class VaeLoader15(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("15VaeLoader"),
            display_name=display_name("Load ACE-Step 1.5 VAE"),
            category=CATEGORY,
            description="Loads ACE-Step 1.5's audio VAE (48 kHz) from models/vae/: ComfyUI's ace_1.5_vae.safetensors "
                        "or the original vae/diffusion_pytorch_model.safetensors.",
            inputs=[io.Combo.Input("vae_name", options=safetensors_files("vae"),
                                   tooltip="The ACE-Step 1.5 VAE file from models/vae/.")],
            outputs=[io.Vae.Output()],
        )

    @classmethod
    def execute(cls, vae_name) -> io.NodeOutput:
        return io.NodeOutput(load_vae(model_file("vae", vae_name)))


NODES = [CheckpointLoader15, DiffusionModelLoader15, TextEncoderLoader15, VaeLoader15]
