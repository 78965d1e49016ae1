"""ACE-Step 1.5 LoRA / LoKr: an adapter from models/loras/ added to the 1.5 MODEL as ComfyUI weight patches.

The file is matched to the DiT's parameters by `ace_step.loading.adapters.parse_v15_adapter` (PEFT LoRA as ACE-Step
1.5's trainer saves it, LyCORIS LoKr, ComfyUI and kohya spellings; scales as trained). Each target weight becomes a
ComfyUI `LoRAAdapter` / `LoKrAdapter` on a clone of the ModelPatcher (`add_patches`), so ComfyUI applies them when
it loads the model, in place on what it loads and at call time on what a partial load leaves offloaded, and restores
the base weights afterwards: offloading, low-VRAM loading and stacking keep them. The base weights are never
rewritten here.
"""
import logging

import comfy.model_patcher
from comfy.weight_adapter import LoKrAdapter, LoRAAdapter
from comfy_api.latest import io

from ..ace_step.loading.adapters import Adapter, parse_v15_adapter
from ..ace_step.loading.lora import LoraScaling
from ..comfy_bridge.paths import model_file
from ..comfy_bridge.v15_family import is_v1
from ..comfy_bridge.v15_models import AceStep15Model, ComfyCallableAceStep15
from .common import choice, display_name, finite, node_id
from .lora import RANK_SCALING, lora_choices, patched_clone, read_cached
from .v15_common import CATEGORY

log = logging.getLogger(__name__)

ADAPTERS = {"lora": LoRAAdapter, "lokr": LoKrAdapter}
V1_NODE = "ACE-Step LoRA"


def is_v15_model(model) -> bool:
    base = getattr(model, "model", None)
    return isinstance(base, AceStep15Model) and isinstance(getattr(base, "diffusion_model", None),
                                                           ComfyCallableAceStep15)


def require_v15_model(model):
    if is_v15_model(model):
        return model
    if is_v1(model):
        raise TypeError(f"this MODEL is ACE-Step v1: apply v1 LoRAs with the {V1_NODE} node; the ACE-Step 1.5 LoRA "
                        "node takes the MODEL of Load ACE-Step 1.5 Checkpoint or Load ACE-Step 1.5 Diffusion Model")
    raise TypeError(f"this MODEL is a {type(getattr(model, 'model', model)).__name__}, not an ACE-Step 1.5 MODEL of "
                    "ACE-Step Studio: connect the MODEL output of Load ACE-Step 1.5 Checkpoint or Load ACE-Step 1.5 "
                    "Diffusion Model")


def adapter_patches(adapter: Adapter) -> dict:
    """{`diffusion_model.<parameter>`: ComfyUI LoRAAdapter / LoKrAdapter}."""
    return {key: ADAPTERS[kind](set(), weights) for key, (kind, weights) in adapter.comfy_patches().items()}


def add_adapter(model: comfy.model_patcher.ModelPatcher, adapter: Adapter, strength: float):
    """A clone of `model` with the adapter's patches at `strength` on top of any it already has."""
    return patched_clone(model, adapter_patches(adapter), strength)


class LoraLoader15(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("15LoraLoader"),
            display_name=display_name("ACE-Step 1.5 LoRA / LoKr"),
            category=CATEGORY,
            description="Applies an ACE-Step 1.5 LoRA or LoKr from models/loras/ to the 1.5 MODEL as ComfyUI weight "
                        "patches (kept through offloading and partial loading): PEFT files as ACE-Step 1.5's trainer "
                        "saves them (with the adapter_config.json beside them), LyCORIS LoKr, ComfyUI and kohya "
                        "spellings. Chain several to stack them. ACE-Step v1 LoRAs go to the ACE-Step LoRA node.",
            inputs=[
                io.Model.Input("model", tooltip="The ACE-Step 1.5 MODEL (Load ACE-Step 1.5 Checkpoint / Diffusion "
                                                "Model, or another LoRA node)."),
                io.Combo.Input("lora_name", options=lora_choices(),
                               tooltip="A LoRA or LoKr .safetensors file in models/loras/ (a PEFT folder's "
                                       "adapter_model.safetensors keeps its adapter_config.json beside it)."),
                io.Float.Input("strength", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="Multiplies the adapter's change: 0 = off, 1 = as trained (the original's "
                                       "LoRA scale), above 1 stronger, negative inverts it."),
                io.Float.Input("alpha", default=0.0, min=0.0, max=100000.0, step=0.01,
                               tooltip="0: the alpha stored with the adapter (adapter_config.json, metadata or "
                                       ".alpha tensors; none stored = scale 1). Otherwise this alpha for every "
                                       "layer (over the rank, or its square root with rsLoRA)."),
                io.Combo.Input("rank_scaling", options=list(RANK_SCALING), default="from file",
                               tooltip="scale = alpha/rank, or alpha/sqrt(rank) for rsLoRA. 'from file' uses the "
                                       "adapter's use_rslora setting (off when it has none)."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, lora_name, strength, alpha, rank_scaling) -> io.NodeOutput:
        require_v15_model(model)
        finite("strength", strength)
        finite("alpha", alpha)
        path = str(model_file("loras", lora_name))
        rslora = RANK_SCALING[choice("rank_scaling", rank_scaling, RANK_SCALING)]
        # Parsed even at strength 0, so a wrong file is reported whatever the strength.
        adapter = parse_v15_adapter(read_cached(path), model.model.diffusion_model,
                                    LoraScaling(alpha=alpha or None, rslora=rslora))
        log.info("ACE-Step 1.5 %s %s: %d weights, %s, strength %g", adapter.kind, lora_name, len(adapter.weights),
                 adapter.scaling, strength)
        if strength == 0:
            return io.NodeOutput(model)
        return io.NodeOutput(add_adapter(model, adapter, strength))


NODES = [LoraLoader15]
