"""ACE-Step Studio: ACE-Step v1 music generation and editing for ComfyUI.

ComfyUI imports this file; it registers the pack's nodes through the V3 schema.
"""
from comfy_api.latest import ComfyExtension, io

from .nodes import NODES

WEB_DIRECTORY = "./web"  # the frontend extension that shows the lyric report on the Tags + Lyrics node


class AceStepStudioExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> AceStepStudioExtension:
    return AceStepStudioExtension()
