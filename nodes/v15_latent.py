"""ACE-Step 1.5 latent nodes: empty song latents, and AUDIO <-> LATENT through the 1.5 VAE (48 kHz)."""
from comfy_api.latest import io

from ..comfy_bridge.audio_input import audio_parts
from ..comfy_bridge.v15_family import CHANNELS, SAMPLE_RATE, frames_for_seconds
from .common import display_name, node_id
from .latent import MAX_SECONDS, empty_latent, normalise_loudness
from .v15_common import CATEGORY, require_vae

VAE_TOOLTIP = "The ACE-Step 1.5 VAE (Load ACE-Step 1.5 Checkpoint or Load ACE-Step 1.5 VAE)."


class EmptyLatentAudio15(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("15EmptyLatentAudio"),
            display_name=display_name("Empty ACE-Step 1.5 Latent Audio"),
            category=CATEGORY,
            description="An empty ACE-Step 1.5 song latent of the given length: 25 latent frames per second of 48 kHz "
                        "audio, 64 channels.",
            inputs=[
                io.Float.Input("seconds", default=120.0, min=1.0, max=MAX_SECONDS, step=0.1,
                               tooltip="Song length in seconds. ACE-Step 1.5 was trained on 10 s to 10 minutes."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="How many songs to generate at once."),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, seconds, batch_size) -> io.NodeOutput:
        return io.NodeOutput(empty_latent(seconds, batch_size, lambda s: [CHANNELS, frames_for_seconds(s)]))


class AudioToLatent15(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("15AudioToLatent"),
            display_name=display_name("Audio to ACE-Step 1.5 Latent"),
            category=CATEGORY,
            description="Encodes audio for ACE-Step 1.5 (a reference timbre, or a source to re-sample): any sample rate "
                        "(resampled to 48 kHz), mono, stereo or more channels (folded to stereo), float or integer "
                        "samples, any length (the end padded with silence to whole latent frames, never cropped; "
                        "long songs are encoded in windows to bound memory).",
            inputs=[
                io.Audio.Input("audio", tooltip="The audio to encode (e.g. from Load Audio)."),
                io.Vae.Input("vae", tooltip=VAE_TOOLTIP),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, audio, vae) -> io.NodeOutput:
        vae = require_vae(vae)
        waveform, rate = audio_parts(audio)
        return io.NodeOutput({"samples": vae.encode_waveform(waveform, rate), "type": "audio"})


class LatentToAudio15(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("15LatentToAudio"),
            display_name=display_name("ACE-Step 1.5 Latent to Audio"),
            category=CATEGORY,
            description="Decodes ACE-Step 1.5 song latents to 48 kHz stereo AUDIO, in windows (each widened by the "
                        "decoder's exact reach, so there is no seam) to bound memory for any length.",
            inputs=[
                io.Latent.Input("samples", tooltip="The sampled ACE-Step 1.5 song latent."),
                io.Vae.Input("vae", tooltip=VAE_TOOLTIP),
                io.Boolean.Input("normalize", default=True,
                                 tooltip="Scale loud results down like ComfyUI's VAE Decode Audio (std capped at 0.2)."),
            ],
            outputs=[io.Audio.Output()],
        )

    @classmethod
    def execute(cls, samples, vae, normalize=True) -> io.NodeOutput:
        vae = require_vae(vae)
        audio = vae.decode_waveform(samples["samples"])
        if normalize:
            audio = normalise_loudness(audio)
        return io.NodeOutput({"waveform": audio, "sample_rate": SAMPLE_RATE})


NODES = [EmptyLatentAudio15, AudioToLatent15, LatentToAudio15]
