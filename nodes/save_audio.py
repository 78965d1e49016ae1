"""Save Audio: FLAC, MP3, Opus or WAV into ComfyUI's output folder, workflow embedded, previewed in the UI."""
import json

import torch
from comfy.cli_args import args
from comfy_api.latest import io, ui

from ..comfy_bridge.audio_files import FORMATS, QUALITIES, encode_audio, save_unique
from ..comfy_bridge.audio_input import audio_parts, float_waveform, to_stereo
from .common import CATEGORY, choice, display_name, node_id
from ..comfy_bridge.memory import require_memory
from ..comfy_bridge.paths import save_folder

AUDIO_PLAYER = io.Custom("AUDIO_UI")


def _metadata(hidden) -> dict[str, str]:
    if args.disable_metadata:
        return {}
    meta = {}
    if hidden.prompt is not None:
        meta["prompt"] = json.dumps(hidden.prompt)
    for key, value in (hidden.extra_pnginfo or {}).items():
        meta[key] = json.dumps(value)
    return meta


class SaveAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("SaveAudio"),
            display_name=display_name("Save Audio"),
            category=CATEGORY,
            description="Saves each song of the batch to the output folder; never replaces an existing file. Audio "
                        "with more than two channels is folded to stereo (even channels left, odd right).",
            inputs=[
                io.Audio.Input("audio", tooltip="The audio to save (ComfyUI AUDIO, any sample rate, mono or stereo)."),
                io.String.Input("filename_prefix", default="audio/ACE-Step",
                                tooltip="Path under the output folder and file name start; a counter is appended."),
                io.Combo.Input("format", options=list(FORMATS), default="flac",
                               tooltip="flac: lossless; mp3/opus: small files (quality below); wav: 16-bit PCM."),
                io.Combo.Input("quality", options=list(QUALITIES), default="V0",
                               tooltip="mp3: V0 (LAME's best variable bit rate) or a constant bit rate; opus: the "
                                       "bit rate (V0 means 128k). Ignored by flac and wav."),
                # The frontend draws its audio player for an AUDIO_UI widget (core savers get one by name); it is
                # never sent with the prompt, hence optional.
                AUDIO_PLAYER.Input("audioUI", optional=True, tooltip="Plays the saved song."),
            ],
            hidden=[io.Hidden.prompt, io.Hidden.extra_pnginfo],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, audio, filename_prefix, format, quality, audioUI=None) -> io.NodeOutput:
        choice("format", format, FORMATS)
        choice("quality", quality, QUALITIES)
        waveform, rate = audio_parts(audio)
        batch, channels, samples = waveform.shape
        # The batch as float32, plus one song's encoding buffers.
        require_memory(4 * channels * samples * (batch + 4), torch.device("cpu"),
                       f"saving {batch} × {samples / rate:,.0f} s of audio", "save fewer or shorter songs at once")
        folder, stem, counter, subfolder = save_folder(filename_prefix)
        waveform = float_waveform(waveform.detach())
        if channels > 2:
            waveform = to_stereo(waveform)
        meta = _metadata(cls.hidden)
        results = []
        for i, item in enumerate(waveform.cpu().numpy()):
            data = encode_audio(item, rate, format, quality, meta)
            name = save_unique(data, folder, stem.replace("%batch_num%", str(i)), counter, format)
            results.append(ui.SavedResult(name, subfolder, io.FolderType.output))
        return io.NodeOutput(ui=ui.SavedAudios(results))
