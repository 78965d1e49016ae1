"""Load Audio: a song from ComfyUI's input folder (or uploaded) as AUDIO, never from outside ComfyUI's folders.

ComfyUI 0.3.75's own LoadAudio opens whatever path a prompt names (its check only asks whether the file exists, and
the list of input files is not enforced), so a prompt can make it read any audio file on the machine; this node
resolves names through paths.input_file."""
import os

import folder_paths
import torch
from comfy_api.latest import io

from ..comfy_bridge.audio_files import decode_audio_file
from .common import CATEGORY, display_name, node_id
from ..comfy_bridge.memory import require_memory
from ..comfy_bridge.paths import input_file


def input_audio_files() -> list[str]:
    folder = folder_paths.get_input_directory()
    files = [f for f in os.listdir(folder) if os.path.isfile(os.path.join(folder, f))]
    return sorted(folder_paths.filter_files_content_types(files, ["audio", "video"]))


class LoadAudio(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("LoadAudio"),
            display_name=display_name("Load Audio"),
            category=CATEGORY,
            description="Loads a song from ComfyUI's input folder: any format FFmpeg reads (WAV, FLAC, MP3, Opus, "
                        "the sound of a video), any sample rate and channel count, as float samples in [-1, 1]. "
                        "Names that point outside ComfyUI's folders are refused.",
            inputs=[io.Combo.Input("audio", options=input_audio_files(), upload=io.UploadType.audio,
                                   tooltip="A song in ComfyUI's input folder; the upload button adds one.")],
            outputs=[io.Audio.Output()],
        )

    @classmethod
    def fingerprint_inputs(cls, audio):
        try:
            st = os.stat(input_file(audio))
            return audio, st.st_mtime_ns, st.st_size
        except (OSError, ValueError):
            return audio  # execute reports the problem

    @classmethod
    def execute(cls, audio) -> io.NodeOutput:
        def fits(channels: int, samples: int):  # decoded chunks and their concatenation
            require_memory(2 * 4 * channels * samples, torch.device("cpu"), f"loading {audio}",
                           "use a shorter file (cut it in your audio editor)")

        samples, rate = decode_audio_file(str(input_file(audio)), check=fits)
        return io.NodeOutput({"waveform": torch.from_numpy(samples)[None], "sample_rate": rate})
