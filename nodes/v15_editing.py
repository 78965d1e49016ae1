"""ACE-Step 1.5 editing nodes: cover, repaint, extend (the original pipeline's tasks, rules in
`ace_step/sampling/v15_tasks.py` / `v15_sampling.py`, glue in `comfy_bridge/v15_tasks.py`) and retake noise (the
pack's variance mix, `ace_step/sampling/editing.retake_noise`, over the original's seeded noise)."""
import torch
from comfy_api.latest import io

from ..ace_step.sampling.editing import retake_noise
from ..ace_step.sampling.v15_sampling import (REPAINT_CROSSFADE_FRAMES, REPAINT_INJECTION_RATIO, RepaintMerge,
                                              cover_switch_step, sampling_sigmas, seed_noise)
from ..ace_step.sampling.v15_tasks import (MAX_SECONDS, VARIANTS, check_variant, plan_cover, plan_extend,
                                           plan_repaint, seconds_to_frame)
from ..comfy_bridge import v15_tasks as bridge
from ..comfy_bridge.v15_family import CHANNELS, check_latent
from .common import choice, display_name, finite, node_id
from .v15_common import CATEGORY, require_clip

EDIT_CATEGORY = f"{CATEGORY}/editing"
SONG_END = -1.0
SOURCE_TOOLTIP = ("The song to edit: an ACE-Step 1.5 latent from Audio to ACE-Step 1.5 Latent, which takes any sample "
                  "rate (resampled to 48 kHz) and mono or multichannel audio (folded to stereo). A batch of songs "
                  "is edited row by row.")


def _common_inputs() -> list:
    return [
        io.Model.Input("model", tooltip="The ACE-Step 1.5 MODEL (Load ACE-Step 1.5 Checkpoint / Diffusion Model; "
                                        "LoRAs apply, ModelSampling nodes do not: the schedule is set here)."),
        io.Clip.Input("clip", tooltip="The ACE-Step 1.5 CLIP that made the conditioning: the caption is re-encoded "
                                      "with the task's instruction, as the original does."),
        io.Conditioning.Input("positive", tooltip="New tags + lyrics from ACE-Step 1.5 Text Encode (optionally with "
                                                  "ACE-Step 1.5 Reference Timbre). Its LM audio codes are not used: "
                                                  "the source song stands for the song."),
        io.Latent.Input("source", tooltip=SOURCE_TOOLTIP),
    ]


def _sampling_inputs() -> list:
    return [
        io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="The noise seed (the original's noise: torch.randn per row, channels last); batch row i "
                             "uses seed + i. Ignored when a noise input is connected."),
        io.Combo.Input("model_variant", options=list(VARIANTS), default="turbo",
                       tooltip="The schedule of the loaded DiT: turbo = the original's eight fixed levels for the "
                               "shift (steps ignored); sft / base = steps levels from 1 to 0, shifted."),
        io.Int.Input("steps", default=8, min=1, max=200, tooltip="Steps for sft / base (the original: 32-100); turbo "
                                                                 "always runs 8."),
        io.Float.Input("shift", default=3.0, min=0.1, max=10.0, step=0.1,
                       tooltip="Timestep shift: turbo uses the nearest of 1, 2, 3 (3 = the original's turbo "
                               "default); sft / base: shift·t / (1 + (shift − 1)·t), the original's default 1."),
        io.Float.Input("cfg", default=1.0, min=1.0, max=30.0, step=0.1,
                       tooltip="Classifier-free guidance, ComfyUI's formula with the DiT's null condition as the "
                               "unconditional pass; 1 = none (turbo). sft / base: about 4-7."),
        io.Noise.Input("noise", optional=True,
                       tooltip="Optional NOISE (e.g. ACE-Step 1.5 Retake Noise for variations) instead of the seed."),
    ]


def _schedule(model_variant: str, steps: int, shift: float, task: str) -> torch.Tensor:
    variant = choice("model_variant", model_variant, VARIANTS)
    check_variant(task, variant)
    finite("shift", shift)
    return sampling_sigmas(variant, steps, shift)


def _prepare(model, clip, positive, source):
    """Checks every input before any work: wrong family, missing metadata, bad latents."""
    bridge.require_model(model)
    require_clip(clip)
    bridge.task_metadata(positive)
    return bridge.source_latent(source)


def _output(samples: torch.Tensor) -> io.NodeOutput:
    import comfy.model_management as mm

    return io.NodeOutput({"samples": samples.to(mm.intermediate_device()), "type": "audio"})


class Cover15(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("15Cover"),
            display_name=display_name("ACE-Step 1.5 Cover"),
            category=EDIT_CATEGORY,
            description="Re-sings / re-arranges a song from new tags and lyrics (the original's cover task): the DiT "
                        "follows the song's 5 Hz semantic hints, then, from step int(steps · audio_cover_strength) "
                        "on, plain text-to-music conditioning.",
            inputs=[
                *_common_inputs(),
                io.Float.Input("audio_cover_strength", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="Share of the steps that follow the source (the original's default 1: all; "
                                       "about 0.2 for a style transfer that keeps little of the song)."),
                *_sampling_inputs(),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model, clip, positive, source, audio_cover_strength, seed, model_variant, steps, shift, cfg,
                noise=None) -> io.NodeOutput:
        finite("audio_cover_strength", audio_cover_strength)
        finite("cfg", cfg)
        song = _prepare(model, clip, positive, source)
        sigmas = _schedule(model_variant, steps, shift, "cover")
        switch = cover_switch_step(len(sigmas) - 1, audio_cover_strength)
        t = song.shape[-1]
        plan = plan_cover(song, model.model.silence(t, "cpu"))
        start = bridge.task_noise(noise, seed, song.shape[0], t)
        out = bridge.run_task(model, clip, positive, plan, start, sigmas, cfg, cover_switch=switch)
        return _output(out)


def _merge_inputs(crossfade_default: int, crossfade_tooltip: str) -> list:
    return [
        io.Int.Input("crossfade_frames", default=crossfade_default, min=0, max=250, tooltip=crossfade_tooltip),
        io.Float.Input("injection_ratio", default=REPAINT_INJECTION_RATIO, min=0.0, max=1.0, step=0.05,
                       tooltip="Share of the steps after which the kept part is reset to the source re-noised to the "
                               "step's level (the original's 0.5)."),
    ]


def _run_ranged(model, clip, positive, plan, noise, seed, sigmas, cfg, crossfade_frames, injection_ratio):
    finite("injection_ratio", injection_ratio)
    start = bridge.task_noise(noise, seed, plan.source.shape[0], plan.frames)
    merge = RepaintMerge(plan.region, plan.clean, start, injection_ratio, crossfade_frames)
    return _output(plan.finish(bridge.run_task(model, clip, positive, plan, start, sigmas, cfg, merge=merge)))


class Repaint15(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("15Repaint"),
            display_name=display_name("ACE-Step 1.5 Repaint"),
            category=EDIT_CATEGORY,
            description="Regenerates [start, end) seconds of a song (the original's repaint): the DiT sees the song "
                        "with the range silenced; outside it the song is put back, re-noised, for the first steps, "
                        "and crossfaded at the range's edges at the end. Frames farther than crossfade_frames from "
                        "the range are the source bit for bit. An end past the song's end lengthens it (the "
                        "original's outpainting).",
            inputs=[
                *_common_inputs(),
                io.Float.Input("start_seconds", default=0.0, min=0.0, max=float(MAX_SECONDS), step=0.1,
                               tooltip="Start of the range to regenerate (frame int(s · 25))."),
                io.Float.Input("end_seconds", default=SONG_END, min=SONG_END, max=float(MAX_SECONDS), step=0.1,
                               tooltip="End of the range; -1 (or any negative) = the song's end."),
                *_merge_inputs(REPAINT_CROSSFADE_FRAMES, "Frames on the kept side of each edge blended from the new "
                                                         "audio into the song (the original's 10 = 0.4 s); 0 = keep "
                                                         "every frame outside the range bit for bit."),
                *_sampling_inputs(),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model, clip, positive, source, start_seconds, end_seconds, crossfade_frames, injection_ratio,
                seed, model_variant, steps, shift, cfg, noise=None) -> io.NodeOutput:
        finite("start_seconds", start_seconds)
        finite("end_seconds", end_seconds)
        finite("cfg", cfg)
        song = _prepare(model, clip, positive, source)
        if start_seconds < 0:
            raise ValueError(f"start_seconds is {start_seconds:g}: a repaint starts inside the song (to add audio "
                             "before it, use ACE-Step 1.5 Extend)")
        sigmas = _schedule(model_variant, steps, shift, "repaint")
        t = song.shape[-1]
        frames = max(t, seconds_to_frame(max(end_seconds, 0.0)) + 1)
        plan = plan_repaint(song, model.model.silence(frames, "cpu"), start_seconds, end_seconds)
        return _run_ranged(model, clip, positive, plan, noise, seed, sigmas, cfg, crossfade_frames, injection_ratio)


class Extend15(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("15Extend"),
            display_name=display_name("ACE-Step 1.5 Extend"),
            category=EDIT_CATEGORY,
            description="Adds seconds before and/or after a song (the original's repaint of new silence around it). "
                        "The source is kept bit for bit (with crossfade_frames 0). Extensions may be longer than "
                        "the song; a result longer than window_seconds samples only the window next to the new "
                        "part and puts the rest of the song back.",
            inputs=[
                *_common_inputs(),
                io.Float.Input("left_seconds", default=0.0, min=0.0, max=float(MAX_SECONDS), step=0.1,
                               tooltip="Seconds to add before the song."),
                io.Float.Input("right_seconds", default=30.0, min=0.0, max=float(MAX_SECONDS), step=0.1,
                               tooltip="Seconds to add after the song."),
                io.Float.Input("window_seconds", default=float(MAX_SECONDS), min=1.0, max=float(MAX_SECONDS), step=1.0,
                               tooltip="The most the DiT samples at once (the original's limit: 600 s)."),
                *_merge_inputs(0, "Source frames next to the new part blended with it at the end. 0 (the default) "
                                  "keeps the source bit for bit; the original's repaint blends 10."),
                *_sampling_inputs(),
            ],
            outputs=[io.Latent.Output()],
        )

    @classmethod
    def execute(cls, model, clip, positive, source, left_seconds, right_seconds, window_seconds, crossfade_frames,
                injection_ratio, seed, model_variant, steps, shift, cfg, noise=None) -> io.NodeOutput:
        for name, value in (("left_seconds", left_seconds), ("right_seconds", right_seconds),
                            ("window_seconds", window_seconds), ("cfg", cfg)):
            finite(name, value)
        song = _prepare(model, clip, positive, source)
        sigmas = _schedule(model_variant, steps, shift, "extend")
        frames = song.shape[-1] + seconds_to_frame(left_seconds) + seconds_to_frame(right_seconds)
        plan = plan_extend(song, model.model.silence(frames, "cpu"), left_seconds, right_seconds,
                           window_frames=seconds_to_frame(window_seconds))
        return _run_ranged(model, clip, positive, plan, noise, seed, sigmas, cfg, crossfade_frames, injection_ratio)


class RetakeNoiseObject:
    """ComfyUI NOISE: the original's seeded noise for `seed` (row i: seed + i) mixed with that of `retake_seed` as
    cos θ·noise + sin θ·new, θ = variance·π/2 (`editing.retake_noise`, the pack's v1 Retake)."""

    def __init__(self, seed: int, retake_seed: int, variance: float):
        self.seed, self.retake_seed, self.variance = seed, retake_seed, variance

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        latent = check_latent(input_latent["samples"], "the latent to sample (Retake Noise)")
        b, _, t = latent.shape
        noise = seed_noise([(self.seed + i) % 2**64 for i in range(b)], CHANNELS, t)
        new = seed_noise([(self.retake_seed + i) % 2**64 for i in range(b)], CHANNELS, t)
        return retake_noise(noise, new, self.variance)


class RetakeNoise15(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("15RetakeNoise"),
            display_name=display_name("ACE-Step 1.5 Retake Noise"),
            category=EDIT_CATEGORY,
            description="Variations of a song: the seed's noise mixed with new noise from retake_seed, cos θ·noise + "
                        "sin θ·new with θ = variance·π/2. This is ACE-Step Studio's retake (as its v1 Retake), not "
                        "the original 1.5's, which makes variations by seed only. NOISE for SamplerCustomAdvanced or "
                        "the 1.5 Cover / Repaint / Extend nodes.",
            inputs=[
                io.Int.Input("seed", default=42, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=False,
                             tooltip="The song's seed (the original's noise; batch row i uses seed + i)."),
                io.Int.Input("retake_seed", default=7, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="The new noise's seed: change it for another variation."),
                io.Float.Input("variance", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="0 = the seed's song exactly, 1 = the new noise alone (an unrelated song); "
                                       "ACE-Step Studio's retake, not the original 1.5's (it has none)."),
            ],
            outputs=[io.Noise.Output()],
        )

    @classmethod
    def execute(cls, seed, retake_seed, variance) -> io.NodeOutput:
        finite("variance", variance)
        return io.NodeOutput(RetakeNoiseObject(seed, retake_seed, variance))


NODES = [Cover15, Repaint15, Extend15, RetakeNoise15]
