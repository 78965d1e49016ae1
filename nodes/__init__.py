"""The pack's ComfyUI nodes: thin translations between ComfyUI types and the `ace_step` core."""
from . import editing_nodes, sampler_nodes
from .guidance import TonemapReinhard
from .latent import AudioToLatent, EmptyLatentAudio, LatentToAudio
from .load_audio import LoadAudio
from .loader import CheckpointLoader
from .lora import LoraLoader
from .save_audio import SaveAudio
from .text import TextEncode
from . import v15_lora, v15_stems
from . import v15_editing, v15_latent, v15_loaders, v15_text

NODES = [CheckpointLoader, EmptyLatentAudio, TextEncode, TonemapReinhard, LoadAudio, AudioToLatent, LatentToAudio,
         SaveAudio, LoraLoader, *sampler_nodes.NODES, *editing_nodes.NODES, *v15_loaders.NODES, *v15_text.NODES,
         *v15_latent.NODES, *v15_editing.NODES, *v15_stems.NODES, *v15_lora.NODES]
