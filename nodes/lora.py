"""ACE-Step LoRA: a LoRA from models/loras/ added to the MODEL as ComfyUI weight patches.

The patches ride on a clone of the ModelPatcher (ComfyUI's LoRA format: a LoRAAdapter per target weight, keyed
`diffusion_model.<parameter>`), so the base weights are never rewritten here: ComfyUI merges the patches when it
loads the model for sampling and restores the base from its backups when another MODEL runs. Several nodes stack;
changing the strength re-patches without reloading the checkpoint; removing the node gives the base model back.
"""
import functools
import logging
import os

import comfy.model_patcher
import folder_paths
from comfy.weight_adapter import LoRAAdapter
from comfy_api.latest import io

from ..ace_step.loading.lora import Lora, LoraScaling, parse_lora, read_lora_file
from .common import CATEGORY, choice, display_name, node_id
from ..comfy_bridge.paths import model_file
from ..comfy_bridge.v1_family import require_model

log = logging.getLogger(__name__)

RANK_SCALING = {"from file": None, "alpha/rank": False, "alpha/sqrt(rank) (rsLoRA)": True}


def lora_choices() -> list[str]:
    return [f for f in folder_paths.get_filename_list("loras") if f.endswith((".safetensors", ".sft"))]


@functools.lru_cache(maxsize=4)
def _read(path: str, mtime_ns: int, size: int, folder_mtime_ns: int):
    return read_lora_file(path)


def read_cached(path: str):
    """The file as read, kept while it is unchanged: a strength change re-runs the node without reading it again.
    The folder's mtime is in the key because an adapter_config.json added beside the file changes its scale."""
    st = os.stat(path)
    return _read(path, st.st_mtime_ns, st.st_size, os.stat(os.path.dirname(path)).st_mtime_ns)


def lora_patches(lora: Lora) -> dict:
    """{`diffusion_model.<parameter>`: LoRAAdapter}. ComfyUI scales a LoRAAdapter by alpha / rank (its alpha over
    down's first dim), so alpha = scale · rank gives our resolved scale, rsLoRA included."""
    return {f"diffusion_model.{name}": LoRAAdapter(set(), (w.up, w.down, w.scale * w.rank, None, None, None))
            for name, w in lora.weights.items()}


def patched_clone(model: comfy.model_patcher.ModelPatcher, patches: dict, strength: float):
    """A clone of `model` with `patches` (ComfyUI weight adapters by parameter key) at `strength` on top of any it
    already has; a key the MODEL lacks is refused (ComfyUI's add_patches skips it silently)."""
    patched = model.clone()
    added = set(patched.add_patches(patches, strength))
    if added != set(patches):
        raise KeyError(f"the MODEL has no weights {sorted(set(patches) - added)[:5]}")
    return patched


def add_lora(model: comfy.model_patcher.ModelPatcher, lora: Lora, strength: float):
    """A clone of `model` with the LoRA's patches at `strength` on top of any it already has."""
    return patched_clone(model, lora_patches(lora), strength)


class LoraLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("LoraLoader"),
            display_name=display_name("ACE-Step LoRA"),
            category=CATEGORY,
            description="Applies an ACE-Step v1 LoRA from models/loras/ to the MODEL (PEFT/diffusers files such as "
                        "RapMachine, ComfyUI and kohya files). Chain several to stack them. Files that store no alpha "
                        "run at scale 1, as ACE-Step's own pipeline runs them; RapMachine's training scale is "
                        "alpha 32 with rsLoRA (= 2).",
            inputs=[
                io.Model.Input("model", tooltip="The ACE-Step MODEL (from the ACE-Step Studio checkpoint loader)."),
                io.Combo.Input("lora_name", options=lora_choices(),
                               tooltip="A LoRA .safetensors file in models/loras/."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Multiplies the LoRA's change: 0 = off, 1 = as scaled, negative inverts it."),
                io.Float.Input("alpha", default=0.0, min=0.0, max=100000.0, step=0.01,
                               tooltip="0: the alpha stored with the LoRA (metadata, .alpha tensors or an "
                                       "adapter_config.json beside it; none stored = the rank, scale 1). Otherwise "
                                       "this alpha for every layer."),
                io.Combo.Input("rank_scaling", options=list(RANK_SCALING), default="from file",
                               tooltip="scale = alpha/rank, or alpha/sqrt(rank) for rsLoRA. 'from file' uses the "
                                       "LoRA's use_rslora setting (off when it has none)."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, lora_name, strength, alpha, rank_scaling) -> io.NodeOutput:
        require_model(model, "the ACE-Step 1.5 LoRA / LoKr node")
        path = str(model_file("loras", lora_name))
        rslora = RANK_SCALING[choice("rank_scaling", rank_scaling, RANK_SCALING)]
        scaling = LoraScaling(alpha=alpha or None, rslora=rslora)
        # Parsed even at strength 0, so a wrong file is reported whatever the strength.
        lora = parse_lora(read_cached(path), model.model.diffusion_model, scaling)
        log.info("ACE-Step LoRA %s: %d weights, %s, strength %g", lora_name, len(lora.weights), lora.scaling,
                 strength)
        if strength == 0:
            return io.NodeOutput(model)
        return io.NodeOutput(add_lora(model, lora, strength))
