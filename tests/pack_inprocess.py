"""Imports the pack in the test process the way ComfyUI does (a package loaded from the repo root's __init__.py)."""
import asyncio
import importlib.util
import sys

from comfy_inprocess import ROOT, import_comfy

PACKAGE = "acestep_studio_under_test"


def import_pack(root=ROOT):
    """The pack in this checkout, or in `root` (another revision's tree; the first call of a process decides)."""
    import_comfy()
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, root / "__init__.py",
                                                      submodule_search_locations=[str(root)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        spec.loader.exec_module(module)
    return sys.modules[PACKAGE]


def pack_node_schemas():
    pack = import_pack()
    extension = asyncio.run(pack.comfy_entrypoint())
    return [node.define_schema() for node in asyncio.run(extension.get_node_list())]


def comfy_transformer(plain):
    """The pack's ComfyUI diffusion model (comfy.ops layers, ComfyUI's attention) holding `plain`'s weights, as the
    loader builds it for a checkpoint."""
    import comfy.ops
    import torch

    bridge = import_pack().comfy_bridge
    with torch.device("meta"):
        model = bridge.models.ComfyCallableTransformer(plain.config, device="meta",
                                                       operations=comfy.ops.disable_weight_init,
                                                       attention=bridge.operations.diffusion_attention)
    model.load_state_dict(plain.state_dict(), assign=True)
    return model.eval().requires_grad_(False)
