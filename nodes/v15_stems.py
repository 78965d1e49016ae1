"""ACE-Step 1.5 stem nodes, the base model's tasks: extract (isolate one track of a mix), lego (add a track to a song,
over the whole song or a time range) and complete (add instruments to a partial arrangement). Rules in
`ace_step/sampling/v15_tasks.py` (plans, instructions, track names) and `v15_sampling.py` (schedule, noise, the
repaint merge of a partial lego range); glue in `comfy_bridge/v15_tasks.py` (the task loop) and
`comfy_bridge/v15_stems.py` (which model may run them).

These tasks feed the DiT the song as its source latents with the silence latent as the timbre input (the
original's rule without a reference); ComfyUI's ACE-Step 1.5 conditioning has one latent for both, so core KSampler
cannot express them: each node samples itself (the original's Euler ODE with CFG)."""
from comfy_api.latest import io

from ..ace_step.sampling.v15_sampling import (BASE_SHIFT, REPAINT_CROSSFADE_FRAMES, REPAINT_INJECTION_RATIO,
                                              RepaintMerge)
from ..ace_step.sampling.v15_tasks import MAX_SECONDS, TRACK_NAMES, plan_complete, plan_extract, plan_lego
from ..comfy_bridge import v15_stems, v15_tasks as bridge
from .common import choice, display_name, finite, node_id
from .v15_common import CATEGORY, require_clip

STEMS_CATEGORY = f"{CATEGORY}/stems"
SONG_END = -1.0
BASE_ONLY = ("Base model only (acestep_v1.5_base / acestep-v15-base, or the XL base): turbo and sft were not trained "
             "for it and are refused.")


def _inputs(source_tooltip: str) -> list:
    return [
        io.Model.Input("model", tooltip="The ACE-Step 1.5 BASE model (Load ACE-Step 1.5 Diffusion Model with "
                                        "acestep_v1.5_base.safetensors, or the acestep-v15-base folder; LoRAs "
                                        "apply, ModelSampling nodes do not: the schedule is set here)."),
        io.Clip.Input("clip", tooltip="The ACE-Step 1.5 CLIP that made the conditioning: the caption is re-encoded "
                                      "with the task's instruction, as the original does."),
        io.Conditioning.Input("positive", tooltip="Tags + lyrics from ACE-Step 1.5 Text Encode describing the result "
                                                  "(its LM audio codes are not used: the source stands for the song)."),
        io.Latent.Input("source", tooltip=source_tooltip),
    ]


def _sampling_inputs() -> list:
    return [
        io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="The noise seed (the original's noise: torch.randn per row, channels last); batch row i "
                             "uses seed + i."),
        io.Int.Input("steps", default=50, min=1, max=200,
                     tooltip="Steps of the base schedule (linspace from 1 to 0, shifted); the original: 32-100."),
        io.Float.Input("shift", default=BASE_SHIFT, min=0.1, max=10.0, step=0.1,
                       tooltip="Timestep shift: shift·t / (1 + (shift − 1)·t); 1 = the original's default for base."),
        io.Float.Input("cfg", default=7.0, min=1.0, max=30.0, step=0.1,
                       tooltip="Classifier-free guidance, ComfyUI's formula with the DiT's null condition as the "
                               "unconditional pass (the original's base default: 7); 1 = none."),
    ]


def _run(model, clip, positive, source, task: str, make_plan, seed, steps, shift, cfg, merge_args=None):
    """Checks every input before any work, plans, samples, puts cut frames back."""
    import comfy.model_management as mm

    bridge.require_model(model)
    require_clip(clip)
    bridge.task_metadata(positive)
    finite("shift", shift)
    finite("cfg", cfg)
    v15_stems.require_base(model, task)
    song = bridge.source_latent(source)
    plan = make_plan(song, model.model.silence(song.shape[-1], "cpu"))
    sigmas = v15_stems.base_sigmas(steps, shift)
    noise = bridge.task_noise(None, seed, song.shape[0], plan.frames)
    merge = None
    if plan.region is not None:
        crossfade_frames, injection_ratio = merge_args
        finite("injection_ratio", injection_ratio)
        merge = RepaintMerge(plan.region, plan.clean, noise, injection_ratio, crossfade_frames)
    out = plan.finish(bridge.run_task(model, clip, positive, plan, noise, sigmas, cfg, merge=merge))
    return io.NodeOutput({"samples": out.to(mm.intermediate_device()), "type": "audio"})


def parse_tracks(tracks: str) -> list[str]:
    """"drums, bass" -> ["drums", "bass"] (commas, "|" or spaces between names; case and repeats ignored); the
    names are checked by the core (`task_instruction`), which lists the known ones."""
    names = [t.strip().lower() for t in tracks.replace("|", ",").replace(" ", ",").split(",") if t.strip()]
    return list(dict.fromkeys(names))


class Extract15(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("15Extract"),
            display_name=display_name("ACE-Step 1.5 Extract Stem"),
            category=STEMS_CATEGORY,
            description="Isolates one track of a mix (the original's extract task: 'Extract the VOCALS track from "
                        f"the audio:'). {BASE_ONLY}",
            inputs=[
                *_inputs("The mix: an ACE-Step 1.5 latent from Audio to ACE-Step 1.5 Latent."),
                io.Combo.Input("track", options=list(TRACK_NAMES), default="vocals",
                               tooltip="The stem to isolate (the original's track names)."),
                *_sampling_inputs(),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model, clip, positive, source, track, seed, steps, shift, cfg) -> io.NodeOutput:
        track = choice("track", track, TRACK_NAMES)
        return _run(model, clip, positive, source, "extract",
                    lambda song, silence: plan_extract(song, silence, track, "base"), seed, steps, shift, cfg)


class Lego15(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("15Lego"),
            display_name=display_name("ACE-Step 1.5 Lego (Add Track)"),
            category=STEMS_CATEGORY,
            description="Adds a track to a song (the original's lego task: 'Generate the GUITAR track based on the "
                        "audio context:'), over the whole song or a time range; outside a range the song is kept "
                        f"(merged at the edges like a repaint). {BASE_ONLY}",
            inputs=[
                *_inputs("The song to add a track to: an ACE-Step 1.5 latent from Audio to ACE-Step 1.5 Latent."),
                io.Combo.Input("track", options=list(TRACK_NAMES), default="guitar",
                               tooltip="The track to add (the original's track names)."),
                io.Float.Input("start_seconds", default=0.0, min=0.0, max=float(MAX_SECONDS), step=0.1,
                               tooltip="Where the track starts (seconds into the song)."),
                io.Float.Input("end_seconds", default=SONG_END, min=SONG_END, max=float(MAX_SECONDS), step=0.1,
                               tooltip="Where it ends; -1 = the song's end. The whole song (0 to -1) regenerates "
                                       "every frame, as the original."),
                io.Int.Input("crossfade_frames", default=REPAINT_CROSSFADE_FRAMES, min=0, max=250,
                             tooltip="A partial range: frames (25 per second) outside each edge blended from the "
                                     "song into the result (the original's 10); 0 keeps everything outside bit for "
                                     "bit."),
                io.Float.Input("injection_ratio", default=REPAINT_INJECTION_RATIO, min=0.0, max=1.0, step=0.05,
                               tooltip="A partial range: share of the steps after which the kept part is reset to "
                                       "the song re-noised to the step's level (the original's 0.5)."),
                *_sampling_inputs(),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model, clip, positive, source, track, start_seconds, end_seconds, crossfade_frames,
                injection_ratio, seed, steps, shift, cfg) -> io.NodeOutput:
        track = choice("track", track, TRACK_NAMES)
        finite("start_seconds", start_seconds)
        finite("end_seconds", end_seconds)
        return _run(model, clip, positive, source, "lego",
                    lambda song, silence: plan_lego(song, silence, track, "base", start_seconds, end_seconds),
                    seed, steps, shift, cfg, (crossfade_frames, injection_ratio))


class Complete15(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("15Complete"),
            display_name=display_name("ACE-Step 1.5 Complete (Add Instruments)"),
            category=STEMS_CATEGORY,
            description="Adds instruments to a partial arrangement, e.g. a vocal or a guitar take (the original's "
                        f"complete task: 'Complete the input track with DRUMS | BASS:'). {BASE_ONLY}",
            inputs=[
                *_inputs("The partial arrangement: an ACE-Step 1.5 latent from Audio to ACE-Step 1.5 Latent."),
                io.String.Input("tracks", default="drums, bass",
                                tooltip=f"The instruments to add, separated by commas: {', '.join(TRACK_NAMES)}. "
                                        "Empty: the original's generic 'Complete the input track:'."),
                *_sampling_inputs(),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model, clip, positive, source, tracks, seed, steps, shift, cfg) -> io.NodeOutput:
        names = parse_tracks(tracks)
        return _run(model, clip, positive, source, "complete",
                    lambda song, silence: plan_complete(song, silence, names, "base"), seed, steps, shift, cfg)


NODES = [Extract15, Lego15, Complete15]
