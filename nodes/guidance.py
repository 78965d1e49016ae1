"""Guidance nodes that act on a MODEL."""
from comfy_api.latest import io

from ..ace_step.sampling.guidance import reinhard_tonemap
from ..comfy_bridge.v1_family import require_model
from .common import CATEGORY, display_name, finite, node_id


class TonemapReinhard(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("TonemapReinhard"),
            display_name=display_name("Vocal Volume (Reinhard Tonemap)"),
            category=CATEGORY,
            description="Tames the guidance difference (cond - uncond) with a Reinhard tonemap before CFG, as "
                        "LatentApplyOperationCFG + LatentOperationTonemapReinhard do in ComfyUI's ACE-Step guide. "
                        "Lower multiplier: softer guidance, quieter vocals; higher: louder vocals.",
            inputs=[
                io.Model.Input("model", tooltip="The ACE-Step model to sample with."),
                io.Float.Input("multiplier", default=1.0, min=0.0, max=100.0, step=0.01,
                               tooltip="Scales the tonemap's ceiling (mean + 5·std of the difference's norms)."),
            ],
            outputs=[io.Model.Output()],
        )

    @classmethod
    def execute(cls, model, multiplier) -> io.NodeOutput:
        # Its tonemap would run on a 1.5 MODEL too, but this node is tuned and documented for v1's guidance.
        require_model(model, "core LatentApplyOperationCFG with LatentOperationTonemapReinhard")
        finite("multiplier", multiplier)

        def pre_cfg(args):
            conds_out = args["conds_out"]
            if len(conds_out) <= 1 or conds_out[1] is None:
                return [reinhard_tonemap(conds_out[0], multiplier)] + list(conds_out[1:])
            uncond = conds_out[1]
            return [reinhard_tonemap(conds_out[0] - uncond, multiplier) + uncond] + list(conds_out[1:])

        patched = model.clone()
        patched.set_model_sampler_pre_cfg_function(pre_cfg)
        return io.NodeOutput(patched)
