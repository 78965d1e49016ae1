"""The original ACE-Step v1 editing tasks (ace-step/ACE-Step `acestep/pipeline_ace_step.py`) as nodes: retake, repaint, extend, lyric edit
(FlowEdit) and audio2audio with a reference strength.

The algorithms are `ace_step.editing` / `ace_step.schedules`; the guided velocity, conditions, seeds and model
loading are the original sampler's (`original_sampling`). Sources are song LATENTs (Audio to ACE-Step Latent).
A source latent of one song is repeated for every seed; a batch of songs takes one seed each (or one seed for all).
"""
import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io

from ..ace_step.sampling import editing, schedules
from ..comfy_bridge import original_sampling as orig
from ..ace_step.models.v1.latent import CHANNELS, HEIGHT, TRAINED_SECONDS, frames_for_seconds, seconds_for_frames
from ..comfy_bridge.models import check_song_latent
from ..comfy_bridge.v1_family import check_latent, require_conditioning, require_model
from .common import CATEGORY, choice, display_name, finite, node_id
from .latent import MAX_SECONDS
from .sampling_inputs import (
    guidance_inputs,
    guidance_settings,
    original_sampler_inputs,
    random_unless_seeded,
    seeds_and_frames,
)

EDIT_CATEGORY = f"{CATEGORY}/editing"
GUIDANCE = list(guidance_inputs())
RETAKE_SEEDS_TOOLTIP = ("Seeds of the new noise, one per song; empty = random (see the retake_seeds output). Keep "
                        "seeds fixed and change these for variations of the same song.")
EDIT_PRESETS = {"only_lyrics": (0.6, 1.0), "remix": (0.2, 0.4)}  # the original app's (n_min, n_max)


def _common_inputs(source_tooltip: str) -> list:
    return [
        io.Model.Input("model", tooltip="The ACE-Step model (LoRAs and ModelSamplingSD3 apply)."),
        io.Conditioning.Input("positive", tooltip="Tags and lyrics from the ACE-Step Tags + Lyrics node."),
        io.Latent.Input("source", tooltip=source_tooltip),
    ]


def _check_family(use_15: str, model, positives=(), latent=None, what: str = "the source latent"):
    """Refuses ACE-Step 1.5 inputs (and latents of no ACE-Step shape) before any work, naming `use_15`, the 1.5 node
    that does this node's job."""
    require_model(model, use_15)
    for name, conditioning in positives:
        require_conditioning(conditioning, use_15, f"{name} CONDITIONING")
    if latent is not None:
        check_latent(latent["samples"], what, use_15)


def _sampling_inputs(*names: str) -> list:
    """The original sampler's widgets of these names, as they are there (same defaults and tooltips)."""
    inputs = original_sampler_inputs()
    return [inputs[n] for n in names]


def _batch(source: torch.Tensor, seeds: str, retake_seeds: str = "") -> tuple[torch.Tensor, list[int], list[int]]:
    """(source repeated to the batch, seeds, retake seeds): one result per seed, or per source song."""
    check_song_latent(source)
    seeds, retake = orig.parse_seeds(seeds), orig.parse_seeds(retake_seeds)
    items = source.shape[0]
    batch = max(items, len(seeds), 1)
    if items not in (1, batch):
        raise ValueError(f"the source latent holds {items} songs but {len(seeds)} seeds were given: give one seed, "
                         f"{items} seeds, or none")
    seeds = orig.seeds_for_batch(seeds or orig.random_seeds(batch), batch)
    retake = orig.seeds_for_batch(retake or orig.random_seeds(batch), batch)
    return source.float().cpu().expand(batch, -1, -1, -1), seeds, retake


def _noise(seeds: list[int], frames: int) -> torch.Tensor:
    return orig.seeded_noise(seeds, [CHANNELS, HEIGHT, frames])


def _output(samples: torch.Tensor, *seed_lists: list[int]) -> io.NodeOutput:
    return io.NodeOutput({"samples": samples.to(mm.intermediate_device()), "type": "audio"},
                         *(",".join(map(str, s)) for s in seed_lists))


def masked_sampling(model, positive, x0: torch.Tensor, z0: torch.Tensor, mask: torch.Tensor,
                    settings: orig.GuidanceSettings, steps: int, start_step: int, use_erg_tag: bool,
                    use_erg_lyric: bool) -> torch.Tensor:
    """The original repaint/extend loop (`editing.sample_repaint`) over the MODEL's Euler schedule, with the
    original sampler's guided velocity. Returns the sampled latent (model dtype, model device)."""
    schedule = schedules.flow_schedule(steps, "euler", shift=orig.model_shift(model))
    with orig.loaded_diffusion_model(model, z0.shape) as dm:
        device, dtype = model.load_device, dm.activation_dtype
        velocity = orig.with_progress(orig.original_velocity(dm, positive, settings, schedule.num_steps,
                                                             x0.shape[0], device, use_erg_tag, use_erg_lyric),
                                      max(0, steps - start_step))
        return editing.sample_repaint(velocity, x0.to(device, dtype), z0.to(device, dtype), mask.to(device),
                                      schedule.sigmas.to(device), start_step)


# ------------------------------------------------------------------------------------------------ retake
class Retake(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        s = original_sampler_inputs()
        return io.Schema(
            node_id=node_id("Retake"),
            display_name=display_name("ACE-Step Retake"),
            category=EDIT_CATEGORY,
            description="Variations of a song made with the original sampler: the same seeds, with their noise mixed "
                        "with new noise from retake_seeds as cos θ·noise + sin θ·new, θ = variance·π/2 (variance 0: "
                        "the same song, 1: an unrelated one). The other settings are the original sampler's.",
            inputs=[
                s["model"], s["positive"], s["seeds"], s["duration"], s["steps"],
                io.String.Input("retake_seeds", default="", tooltip=RETAKE_SEEDS_TOOLTIP),
                io.Float.Input("retake_variance", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="How far the variation moves from the song (the original app's 0.2)."),
                *(s[n] for n in ("scheduler", "cfg_type", "guidance_scale", "omega_scale", "guidance_interval",
                                 "guidance_interval_decay", "min_guidance_scale", "use_erg_tag", "use_erg_lyric",
                                 "use_erg_diffusion", "guidance_scale_text", "guidance_scale_lyric", "oss_steps",
                                 "latent")),
            ],
            outputs=[io.Latent.Output(), io.String.Output(display_name="seeds"),
                     io.String.Output(display_name="retake_seeds")],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        fingerprints = [random_unless_seeded(kwargs.get(key)) for key in ("seeds", "retake_seeds")]
        return float("nan") if any(isinstance(f, float) for f in fingerprints) else tuple(fingerprints)  # NaN: rerun

    @classmethod
    def execute(cls, model, positive, seeds, duration, steps, retake_seeds, retake_variance, scheduler, omega_scale,
                use_erg_tag, use_erg_lyric, oss_steps, latent=None, **guidance) -> io.NodeOutput:
        _check_family("ACE-Step 1.5 Retake Noise with SamplerCustomAdvanced", model, [("positive", positive)], latent,
                      "the latent")
        finite("retake_variance", retake_variance)
        seeds, frames = seeds_and_frames(seeds, duration, latent)
        retake = orig.seeds_for_batch(orig.parse_seeds(retake_seeds) or orig.random_seeds(len(seeds)), len(seeds))
        dtype = model.model_dtype()
        start = editing.retake_noise(_noise(seeds, frames).to(dtype), _noise(retake, frames).to(dtype),
                                     retake_variance)
        schedule = orig.original_schedule(model, steps, scheduler, oss_steps)
        samples = orig.sample_original(model, positive, seeds, frames, guidance_settings(**guidance), schedule, omega_scale,
                                       use_erg_tag, use_erg_lyric, start=start)
        return _output(samples, seeds, retake)


# ------------------------------------------------------------------------------------------------ repaint
SONG_END = -1.0  # Repaint's end_seconds for "to the end of the song", whatever its length


def repaint_frames(frames: int, start_seconds: float, end_seconds: float) -> tuple[int, int]:
    """[start, end) latent frames of a repaint range (a negative end: the song's end), with clear errors for ranges
    the song does not have."""
    finite("start_seconds", start_seconds)
    finite("end_seconds", end_seconds)
    length = seconds_for_frames(frames)
    if end_seconds < 0:
        end_seconds = length
    if end_seconds <= start_seconds:
        raise ValueError(f"the repaint range is reversed or empty: start {start_seconds:g} s, end {end_seconds:g} s "
                         "(end must be after start)")
    if start_seconds < 0 or end_seconds > length:
        raise ValueError(f"the repaint range {start_seconds:g}-{end_seconds:g} s is outside the song, which is "
                         f"{length:.2f} s long (use ACE-Step Extend to add time before or after it)")
    start = frames_for_seconds(start_seconds)
    end = frames if end_seconds == length else frames_for_seconds(end_seconds)  # exact at the song's end
    if end <= start:
        raise ValueError(f"the repaint range {start_seconds:g}-{end_seconds:g} s is shorter than one latent frame "
                         "(0.093 s)")
    return start, end


class Repaint(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("Repaint"),
            display_name=display_name("ACE-Step Repaint"),
            category=EDIT_CATEGORY,
            description="Regenerates a time range of a song and keeps the rest exactly (the original's masked Euler "
                        "loop: outside the range the song is put back, re-noised to each step's level). variance "
                        "sets how much changes: the noise mix inside the range and how many steps are skipped.",
            inputs=[
                *_common_inputs("The song to repaint (Audio to ACE-Step Latent)."),
                io.Float.Input("start_seconds", default=0.0, min=0.0, max=MAX_SECONDS, step=0.1,
                               tooltip="Start of the range to regenerate."),
                io.Float.Input("end_seconds", default=SONG_END, min=SONG_END, max=MAX_SECONDS, step=0.1,
                               tooltip="End of the range to regenerate (at most the song's length); -1: the "
                                       "song's end."),
                io.Float.Input("variance", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="0: nothing changes; 1: the range is generated from pure new noise (the "
                                       "original app's default 0.2)."),
                *_sampling_inputs("seeds"),
                io.String.Input("retake_seeds", default="", tooltip=RETAKE_SEEDS_TOOLTIP),
                *_sampling_inputs("steps", *GUIDANCE[:5], "use_erg_tag", "use_erg_lyric", *GUIDANCE[5:]),
            ],
            outputs=[io.Latent.Output(), io.String.Output(display_name="seeds"),
                     io.String.Output(display_name="retake_seeds")],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return Retake.fingerprint_inputs(**kwargs)

    @classmethod
    def execute(cls, model, positive, source, start_seconds, end_seconds, variance, seeds, retake_seeds, steps,
                use_erg_tag, use_erg_lyric, **guidance) -> io.NodeOutput:
        _check_family("ACE-Step 1.5 Repaint", model, [("positive", positive)], source)
        finite("variance", variance)
        src, seeds, retake = _batch(source["samples"], seeds, retake_seeds)
        frames = src.shape[-1]
        start, end = repaint_frames(frames, start_seconds, end_seconds)
        mask = editing.repaint_mask(frames, start, end)
        dtype = model.model_dtype()  # the original mixes the noise in its pipeline dtype
        z0 = editing.repaint_noise(_noise(seeds, frames).to(dtype), _noise(retake, frames).to(dtype), mask, variance)
        x = masked_sampling(model, positive, src, z0, mask, guidance_settings(**guidance), steps,
                            editing.repaint_start_step(steps, variance), use_erg_tag, use_erg_lyric)
        # The loop puts the source back in the model dtype; here it is the source's own float32 values.
        return _output(torch.where(mask, x.float().cpu(), src), seeds, retake)


# ------------------------------------------------------------------------------------------------ extend
class Extend(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("Extend"),
            display_name=display_name("ACE-Step Extend"),
            category=EDIT_CATEGORY,
            description="Adds seconds before and/or after a song, generated to continue it; the song itself is kept "
                        "exactly. Extensions may be longer than the song, and results longer than 240 s: then only "
                        "the last window_seconds (extending right) or the first (extending left) are sampled, the "
                        "new part with the song next to it, and the rest of the song is put back unchanged.",
            inputs=[
                *_common_inputs("The song to extend (Audio to ACE-Step Latent)."),
                io.Float.Input("left_seconds", default=0.0, min=0.0, max=MAX_SECONDS, step=0.1,
                               tooltip="Seconds to add before the song."),
                io.Float.Input("right_seconds", default=30.0, min=0.0, max=MAX_SECONDS, step=0.1,
                               tooltip="Seconds to add after the song."),
                io.Float.Input("window_seconds", default=TRAINED_SECONDS, min=0.0, max=MAX_SECONDS, step=1.0,
                               tooltip="Longest stretch the model samples at once (the original's 240 s, what "
                                       "ACE-Step was trained on); 0 = no window, the whole result at once."),
                *_sampling_inputs("seeds"),
                io.String.Input("retake_seeds", default="", tooltip="Seeds of the new parts' noise, one per song; "
                                                                    "empty = random."),
                *_sampling_inputs("steps", *GUIDANCE[:5], "use_erg_tag", "use_erg_lyric", *GUIDANCE[5:]),
            ],
            outputs=[io.Latent.Output(), io.String.Output(display_name="seeds"),
                     io.String.Output(display_name="retake_seeds")],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return Retake.fingerprint_inputs(**kwargs)

    @classmethod
    def execute(cls, model, positive, source, left_seconds, right_seconds, window_seconds, seeds, retake_seeds,
                steps, use_erg_tag, use_erg_lyric, **guidance) -> io.NodeOutput:
        _check_family("ACE-Step 1.5 Extend", model, [("positive", positive)], source)
        for name, value in (("left_seconds", left_seconds), ("right_seconds", right_seconds),
                            ("window_seconds", window_seconds)):
            if finite(name, value) < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        src, seeds, retake = _batch(source["samples"], seeds, retake_seeds)
        length = src.shape[-1]
        left, right = frames_for_seconds(left_seconds), frames_for_seconds(right_seconds)
        total = left + length + right
        window = frames_for_seconds(window_seconds) if window_seconds > 0 else total
        noise = _noise(seeds, length)
        # The original draws the new parts' noise as long as the song; longer extensions need more.
        new = _noise(retake, max(length, left, right))
        plan = editing.extend_plan(src, noise, new, left, right, window)
        x = masked_sampling(model, positive, plan.x0, plan.z0, plan.mask, guidance_settings(**guidance), steps,
                            editing.repaint_start_step(steps, 1.0), use_erg_tag, use_erg_lyric)
        out = plan.finish(x.float().cpu())
        out[..., left:left + length] = src  # the song as it came in (the loop keeps it in the model dtype)
        return _output(out, seeds, retake)


# ------------------------------------------------------------------------------------------------ lyric edit
class SeedStreams:
    """Fresh noise [B, 8, 16, W] at every call, item i from its own generator seeded with seeds[i] (FlowEdit draws
    new noise every step, from per-item generators in the original)."""

    def __init__(self, seeds: list[int], frames: int):
        self.generators = [torch.Generator().manual_seed(s) for s in seeds]
        self.shape = [1, CHANNELS, HEIGHT, frames]

    def __call__(self) -> torch.Tensor:
        return torch.cat([torch.randn(self.shape, generator=g) for g in self.generators])


def edit_range(preset: str, n_min: float, n_max: float, steps: int) -> tuple[int, int]:
    """(n_min, n_max) step indices: int(N·fraction) as the original, from the preset or, for custom, the inputs."""
    lo, hi = EDIT_PRESETS.get(choice("preset", preset, [*EDIT_PRESETS, "custom"]), (n_min, n_max))
    if not 0.0 <= finite("n_min", lo) <= finite("n_max", hi) <= 1.0:
        raise ValueError(f"need 0 <= n_min <= n_max <= 1, got n_min {lo}, n_max {hi}")
    return int(steps * lo), int(steps * hi)


class LyricEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("LyricEdit"),
            display_name=display_name("ACE-Step Lyric Edit"),
            category=EDIT_CATEGORY,
            description="Changes the tags and/or lyrics of an existing song (the original's FlowEdit): between n_min "
                        "and n_max of the steps the song moves by the difference between what the model predicts "
                        "for the new and the original text; after n_max it is finished with the new text. Presets: "
                        "only_lyrics (0.6-1.0) keeps the music, remix (0.2-0.4) lets it change.",
            inputs=[
                io.Model.Input("model", tooltip="The ACE-Step model (LoRAs and ModelSamplingSD3 apply)."),
                io.Latent.Input("source", tooltip="The song to edit (Audio to ACE-Step Latent; any song works)."),
                io.Conditioning.Input("source_positive",
                                      tooltip="The song's own tags and lyrics (ACE-Step Tags + Lyrics)."),
                io.Conditioning.Input("target_positive", tooltip="The new tags and lyrics (ACE-Step Tags + Lyrics)."),
                io.Combo.Input("preset", options=[*EDIT_PRESETS, "custom"], default="only_lyrics",
                               tooltip="only_lyrics: n 0.6-1.0; remix: n 0.2-0.4; custom: n_min / n_max below."),
                io.Float.Input("n_min", default=0.6, min=0.0, max=1.0, step=0.01,
                               tooltip="custom only: fraction of the steps skipped before the edit starts."),
                io.Float.Input("n_max", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="custom only: fraction of the steps where the edit ends and plain sampling "
                                       "with the new text takes over (1: never)."),
                io.Int.Input("n_avg", default=1, min=1, max=16,
                             tooltip="Noise draws averaged per edit step (smoother edits, n_avg times slower)."),
                original_sampler_inputs()["seeds"],
                original_sampler_inputs()["steps"],
                io.Float.Input("guidance_scale", default=15.0, min=0.0, max=100.0, step=0.1,
                               tooltip="APG guidance at every step (0 or 1: off), as the original's edit."),
            ],
            outputs=[io.Latent.Output(), io.String.Output(display_name="seeds")],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return random_unless_seeded(kwargs.get("seeds"))

    @classmethod
    def execute(cls, model, source, source_positive, target_positive, preset, n_min, n_max, n_avg, seeds, steps,
                guidance_scale) -> io.NodeOutput:
        _check_family("ACE-Step 1.5 Cover or Repaint with the new lyrics", model,
                      [("source_positive", source_positive), ("target_positive", target_positive)], source)
        src, seeds, _ = _batch(source["samples"], seeds)
        n_min, n_max = edit_range(preset, n_min, n_max, steps)
        schedule = schedules.flow_schedule(steps, "euler", shift=orig.model_shift(model))
        # The original's edit: APG at full scale on every step, no ERG (interval 1 covers all steps).
        settings = orig.GuidanceSettings("apg", finite("guidance_scale", guidance_scale), interval=1.0,
                                         erg_diffusion=False)
        streams = SeedStreams(seeds, src.shape[-1])
        progress = comfy.utils.ProgressBar((n_max - n_min) * n_avg + max(0, steps - n_max))
        with orig.loaded_diffusion_model(model, src.shape) as dm:
            device, dtype = model.load_device, dm.activation_dtype

            def guided(positive):
                return orig.original_velocity(dm, positive, settings, steps, len(seeds), device, use_erg_tag=False,
                                              use_erg_lyric=False)

            source_v, target_v = guided(source_positive), guided(target_positive)
            target_edit_v = target_v.with_guider(settings.guider(steps))
            target_edit_v.guider.momentum = None  # the original's edit-phase target pass has no momentum buffer

            def velocity_pair(z_src, z_tar, t, i):
                progress.update(1)
                return source_v(z_src, t, i), target_edit_v(z_tar, t, i)

            def velocity_target(x, t, i):
                progress.update(1)
                return target_v(x, t, i)

            out = editing.sample_flowedit(velocity_pair, velocity_target, src.to(device, dtype),
                                          schedule.sigmas.to(device), n_min, n_max,
                                          lambda: streams().to(device, dtype), n_avg)
        return _output(out.float().cpu(), seeds)


# ------------------------------------------------------------------------------------------------ audio2audio
class Audio2Audio(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        s = original_sampler_inputs()
        return io.Schema(
            node_id=node_id("Audio2Audio"),
            display_name=display_name("ACE-Step Audio2Audio"),
            category=EDIT_CATEGORY,
            description="A new song in the image of a reference, as the original app's audio2audio: the reference "
                        "is noised to the first schedule level at or below 1 - ref_audio_strength and sampled from "
                        "there with the original sampler (the original's behaviour before commit 39043aa, where "
                        "the noise the model is told matches the noise the latent has). Strength 0: plain "
                        "text2music; 1: the reference itself.",
            inputs=[
                s["model"], s["positive"],
                io.Latent.Input("reference", tooltip="The reference song (Audio to ACE-Step Latent)."),
                io.Float.Input("ref_audio_strength", default=0.5, min=0.0, max=1.0, step=0.01,
                               tooltip="How much of the reference is kept (the original's 0.5)."),
                *(s[n] for n in ("seeds", "steps", "scheduler", "cfg_type", "guidance_scale", "omega_scale",
                                 "guidance_interval", "guidance_interval_decay", "min_guidance_scale", "use_erg_tag",
                                 "use_erg_lyric", "use_erg_diffusion", "guidance_scale_text",
                                 "guidance_scale_lyric")),
            ],
            outputs=[io.Latent.Output(), io.String.Output(display_name="seeds")],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return random_unless_seeded(kwargs.get("seeds"))

    @classmethod
    def execute(cls, model, positive, reference, ref_audio_strength, seeds, steps, scheduler, omega_scale,
                use_erg_tag, use_erg_lyric, **guidance) -> io.NodeOutput:
        _check_family("ACE-Step 1.5 Cover", model, [("positive", positive)], reference, "the reference latent")
        finite("ref_audio_strength", ref_audio_strength)
        ref, seeds, _ = _batch(reference["samples"], seeds)
        levels = schedules.flow_schedule(steps, "euler", shift=orig.model_shift(model)).sigmas
        first = schedules.audio2audio_start_step(levels, ref_audio_strength)
        if first == steps:
            return _output(ref.clone(), seeds)  # nothing left to sample: the reference as it is
        frames = ref.shape[-1]
        start = editing.noised(ref, _noise(seeds, frames), levels[first])
        schedule = orig.original_schedule(model, steps, scheduler)
        samples = orig.sample_original(model, positive, seeds, frames, guidance_settings(**guidance), schedule, omega_scale,
                                       use_erg_tag, use_erg_lyric, start=start, first_step=first)
        return _output(samples, seeds)


NODES = [Retake, Repaint, Extend, LyricEdit, Audio2Audio]
