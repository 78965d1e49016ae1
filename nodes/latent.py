"""Latent nodes: empty song latents, and AUDIO <-> LATENT through the ACE-Step VAE."""
import math

import comfy.model_management as mm
import torch
from comfy_api.latest import io

from ..ace_step.models.v1.latent import CHANNELS, HEIGHT, SAMPLE_RATE, frames_for_seconds
from ..comfy_bridge.audio_input import audio_parts
from ..comfy_bridge.memory import require_memory
from ..comfy_bridge.v1_family import check_latent, require_vae
from .common import CATEGORY, display_name, node_id

MAX_SECONDS = 1000.0  # the longest song a node accepts


def empty_latent(seconds: float, batch_size: int, item_shape) -> dict:
    """A LATENT of zeros for `batch_size` songs of `seconds`; `item_shape(seconds)`: one song's latent shape."""
    if not 1.0 <= seconds <= MAX_SECONDS:
        raise ValueError(f"seconds must be between 1 and {MAX_SECONDS:.0f}, got {seconds}")
    shape = [batch_size, *item_shape(seconds)]
    device = mm.intermediate_device()
    require_memory(4 * math.prod(shape), device, f"an empty latent for {batch_size} × {seconds:g} s",
                   "lower batch_size or seconds")
    return {"samples": torch.zeros(shape, device=device), "type": "audio"}


class EmptyLatentAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("EmptyLatentAudio"),
            display_name=display_name("Empty ACE-Step Latent Audio"),
            category=CATEGORY,
            description="An empty song latent of the given length: 10.77 latent frames per second.",
            inputs=[
                io.Float.Input("seconds", default=120.0, min=1.0, max=MAX_SECONDS, step=0.1,
                               tooltip="Song length in seconds. ACE-Step was trained on up to 240 s; longer songs "
                                       "work but may drift."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="How many songs to generate at once."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, seconds, batch_size) -> io.NodeOutput:
        return io.NodeOutput(empty_latent(seconds, batch_size, lambda s: [CHANNELS, HEIGHT, frames_for_seconds(s)]))


class AudioToLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("AudioToLatent"),
            display_name=display_name("Audio to ACE-Step Latent"),
            category=CATEGORY,
            description="Encodes a song for audio-to-audio, repaint, extend and edit: any sample rate (resampled to "
                        "44.1 kHz), mono, stereo or more channels (folded to stereo), float or integer samples, any "
                        "length (padded to whole latent frames, never cropped; long songs are encoded in windows to "
                        "bound memory).",
            inputs=[
                io.Audio.Input("audio", tooltip="The song to encode (e.g. from Load Audio)."),
                io.Vae.Input("vae", tooltip="The ACE-Step VAE from the checkpoint loader."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, audio, vae) -> io.NodeOutput:
        require_vae(vae, "Audio to ACE-Step 1.5 Latent")
        waveform, rate = audio_parts(audio)
        return io.NodeOutput({"samples": vae.encode_audio(waveform, rate), "type": "audio"})


def normalise_loudness(audio: torch.Tensor) -> torch.Tensor:
    """As ComfyUI's VAEDecodeAudio: a song whose 5·std exceeds 1 is scaled down to std 0.2; quieter ones stay."""
    scale = (audio.std(dim=(1, 2), keepdim=True) * 5.0).clamp_min(1.0)
    return audio / scale


class LatentToAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("LatentToAudio"),
            display_name=display_name("ACE-Step Latent to Audio"),
            category=CATEGORY,
            description="Decodes song latents to 44.1 kHz stereo AUDIO. Long songs are decoded in overlapping windows "
                        "joined with a cross-fade, so memory stays bounded and there is no audible seam.",
            inputs=[
                io.Latent.Input("samples", tooltip="The sampled song latent."),
                io.Vae.Input("vae", tooltip="The ACE-Step VAE from the checkpoint loader."),
                io.Boolean.Input("normalize", default=True,
                                 tooltip="Scale loud results down like ComfyUI's VAE Decode Audio (std capped at 0.2)."),
            ],
            outputs=[io.Audio.Output()],
        )

    @classmethod
    def execute(cls, samples, vae, normalize=True) -> io.NodeOutput:
        check_latent(samples["samples"], "the latent to decode", "ACE-Step 1.5 Latent to Audio")
        require_vae(vae, "ACE-Step 1.5 Latent to Audio")
        audio = vae.decode_audio(samples["samples"])
        if normalize:
            audio = normalise_loudness(audio)
        return io.NodeOutput({"waveform": audio, "sample_rate": SAMPLE_RATE})
