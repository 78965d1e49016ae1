"""Nodes for the original ACE-Step v1 pipeline's sampling: one high-level sampler with the original app's defaults,
and its parts (SIGMAS, SAMPLER, GUIDER, NOISE, ERG conditionings) for SamplerCustomAdvanced."""
import logging

from comfy_api.latest import io

from ..ace_step.sampling.guidance import CFG_TYPES, double_guidance_active
from ..ace_step.sampling.schedules import SCHEDULERS
from ..comfy_bridge import original_sampling as orig
from .common import CATEGORY, display_name, node_id
from ..ace_step.models.v1.latent import frames_for_seconds
from .latent import MAX_SECONDS

PARTS_CATEGORY = f"{CATEGORY}/original sampling"
log = logging.getLogger(__name__)
SEEDS_TOOLTIP = ("Seeds separated by commas, one song per seed (\"1,2,3\" makes three); empty = random seeds "
                 "(see the seeds output).")
OSS_TOOLTIP = ("Optional \"optimal steps\" of the original (e.g. 16, 29, 52, 96, 129, 158, 172, 183, 189, 200): "
               "picks these steps of a max(oss_steps)-step schedule and replaces steps. Not with heun.")


def _guidance_inputs() -> dict:
    """The guidance widgets shared by the high-level sampler and the guider, by name, with the original app's
    defaults."""
    inputs = [
        io.Combo.Input("cfg_type", options=list(CFG_TYPES), default="apg",
                       tooltip="apg: adaptive projected guidance (the original's default, fewer artefacts at high "
                               "scale); cfg: classic; cfg_star: CFG-Zero*."),
        io.Float.Input("guidance_scale", default=15.0, min=0.0, max=100.0, step=0.1,
                       tooltip="Guidance strength inside the guidance interval; 0 or 1 turns guidance off."),
        io.Float.Input("guidance_interval", default=0.5, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of the steps, centred, that run guidance (0.5: the middle half); the others "
                               "run the conditional pass only."),
        io.Float.Input("guidance_interval_decay", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Lowers the scale linearly over the interval towards min_guidance_scale (0: constant)."),
        io.Float.Input("min_guidance_scale", default=3.0, min=0.0, max=100.0, step=0.1,
                       tooltip="The scale the decay ends at."),
        io.Boolean.Input("use_erg_diffusion", default=True,
                         tooltip="ERG on the unconditional pass: flattens the cross-attention of the middle "
                                 "transformer blocks instead of dropping the condition."),
        io.Float.Input("guidance_scale_text", default=0.0, min=0.0, max=100.0, step=0.1,
                       tooltip="Double guidance, text part: active only when both text and lyric scales are above "
                               "1; it then replaces cfg_type and guidance_scale inside the interval."),
        io.Float.Input("guidance_scale_lyric", default=0.0, min=0.0, max=100.0, step=0.1,
                       tooltip="Double guidance, lyric part (see guidance_scale_text)."),
    ]
    return {i.id: i for i in inputs}


def _settings(cfg_type, guidance_scale, guidance_interval, guidance_interval_decay, min_guidance_scale,
              use_erg_diffusion, guidance_scale_text, guidance_scale_lyric) -> orig.GuidanceSettings:
    return orig.GuidanceSettings(cfg_type, guidance_scale, guidance_interval, guidance_interval_decay,
                                 min_guidance_scale, guidance_scale_text, guidance_scale_lyric, use_erg_diffusion)


def _random_unless_seeded(seeds) -> object:
    """Fingerprint for nodes whose empty seeds mean "random": NaN (never equal) makes ComfyUI run them again."""
    if isinstance(seeds, str) and not orig.parse_seeds(seeds):
        return float("nan")
    return seeds


def seeds_and_frames(seeds: str, duration: float, latent: dict | None) -> tuple[list[int], int]:
    """The seeds (random ones, one per latent item, when empty) and the song length in frames: the latent's, or
    duration's (<= 0: random 30-240 s from the first seed)."""
    seeds = orig.parse_seeds(seeds)
    batch = latent["samples"].shape[0] if latent is not None else 1
    seeds = seeds or orig.random_seeds(batch)
    if latent is not None:
        frames = latent["samples"].shape[-1]
    else:
        seconds = duration if duration > 0 else orig.random_duration(seeds[0])
        if seconds > MAX_SECONDS:
            raise ValueError(f"duration must be at most {MAX_SECONDS:.0f} s, got {seconds}")
        frames = frames_for_seconds(seconds)
    if frames < 1:
        raise ValueError(f"the song is shorter than one latent frame (0.093 s); duration {duration}")
    return seeds, frames


class OriginalSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        guidance = _guidance_inputs()
        return io.Schema(
            node_id=node_id("OriginalSampler"),
            display_name=display_name("ACE-Step Sampler (original)"),
            category=CATEGORY,
            description="Text to music exactly as the original ACE-Step app samples: its schedule (shift 3, or the "
                        "MODEL's ModelSamplingSD3 shift), euler with omega / heun / pingpong, APG guidance inside a "
                        "guidance interval, and ERG (attention-flattened tags, lyrics and diffusion for the "
                        "unconditional pass). The defaults are the app's. One song per seed.",
            inputs=[
                io.Model.Input("model", tooltip="The ACE-Step model (LoRAs and ModelSamplingSD3 apply)."),
                io.Conditioning.Input("positive", tooltip="Tags and lyrics from the ACE-Step Tags + Lyrics node."),
                io.String.Input("seeds", default="", tooltip=SEEDS_TOOLTIP),
                io.Float.Input("duration", default=60.0, min=-1.0, max=MAX_SECONDS, step=0.1,
                               tooltip="Song length in seconds; -1 (any value <= 0) = random 30-240 s drawn from the "
                                       "first seed, as the original's -1. Ignored when a latent is connected."),
                io.Int.Input("steps", default=60, min=1, max=1000, tooltip="Diffusion steps (the original's 60)."),
                io.Combo.Input("scheduler", options=list(SCHEDULERS), default="euler",
                               tooltip="euler (with omega), heun (2 model calls per step, with omega) or pingpong "
                                       "(stochastic, ignores omega)."),
                guidance["cfg_type"],
                guidance["guidance_scale"],
                io.Float.Input("omega_scale", default=10.0, min=-100.0, max=100.0, step=0.1,
                               tooltip="The original's \"granularity scale\": above 0 amplifies the detail of each "
                                       "step (10: x1.046), below 0 softens it."),
                guidance["guidance_interval"],
                guidance["guidance_interval_decay"],
                guidance["min_guidance_scale"],
                io.Boolean.Input("use_erg_tag", default=True,
                                 tooltip="ERG for the tags: the unconditional pass sees the tags encoded with "
                                         "flattened attention (used together with use_erg_lyric, as the original)."),
                io.Boolean.Input("use_erg_lyric", default=True,
                                 tooltip="ERG for the lyrics: the unconditional pass sees the lyrics encoded with "
                                         "flattened attention; off: zero tags and [STOP] lyrics."),
                guidance["use_erg_diffusion"],
                guidance["guidance_scale_text"],
                guidance["guidance_scale_lyric"],
                io.String.Input("oss_steps", default="", tooltip=OSS_TOOLTIP),
                io.Latent.Input("latent", optional=True,
                                tooltip="Optional: take the song length (and, without seeds, the batch size) from "
                                        "this latent instead of duration."),
            ],
            outputs=[io.Latent.Output(), io.String.Output(display_name="seeds")],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return _random_unless_seeded(kwargs.get("seeds"))

    @classmethod
    def execute(cls, model, positive, seeds, duration, steps, scheduler, cfg_type, guidance_scale, omega_scale,
                guidance_interval, guidance_interval_decay, min_guidance_scale, use_erg_tag, use_erg_lyric,
                use_erg_diffusion, guidance_scale_text, guidance_scale_lyric, oss_steps, latent=None) -> io.NodeOutput:
        seeds, frames = seeds_and_frames(seeds, duration, latent)
        schedule = orig.original_schedule(model, steps, scheduler, oss_steps)
        settings = _settings(cfg_type, guidance_scale, guidance_interval, guidance_interval_decay, min_guidance_scale,
                             use_erg_diffusion, guidance_scale_text, guidance_scale_lyric)
        log.info("ACE-Step original sampling: seeds %s, %d latent frames", seeds, frames)
        samples = orig.sample_original(model, positive, seeds, frames, settings, schedule, omega_scale, use_erg_tag,
                                       use_erg_lyric)
        return io.NodeOutput({"samples": samples, "type": "audio"}, ",".join(map(str, seeds)))


class OriginalSchedule(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("OriginalSchedule"),
            display_name=display_name("ACE-Step Original Schedule"),
            category=PARTS_CATEGORY,
            description="SIGMAS of the original ACE-Step schedulers (the shift applied twice, as the original "
                        "does; oss_steps applies it a third time). The same table serves euler, heun and pingpong.",
            inputs=[
                io.Model.Input("model", tooltip="The ACE-Step model: its shift (3, or ModelSamplingSD3's) and dtype."),
                io.Int.Input("steps", default=60, min=1, max=1000, tooltip="Diffusion steps (the original's 60)."),
                io.String.Input("oss_steps", default="", tooltip=OSS_TOOLTIP),
            ],
            outputs=[io.Sigmas.Output()],
        )

    @classmethod
    def execute(cls, model, steps, oss_steps) -> io.NodeOutput:
        return io.NodeOutput(orig.original_schedule(model, steps, "euler", oss_steps).sigmas)


class OriginalSamplerSelect(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("OriginalSamplerSelect"),
            display_name=display_name("ACE-Step Original Sampler Select"),
            category=PARTS_CATEGORY,
            description="SAMPLER with the original ACE-Step steps: euler with omega (the original's default), heun "
                        "with omega, or pingpong, over any SIGMAS.",
            inputs=[
                io.Combo.Input("scheduler", options=list(SCHEDULERS), default="euler",
                               tooltip="euler (with omega), heun (2 model calls per step, with omega) or pingpong "
                                       "(stochastic: fresh noise from the noise seed each step, ignores omega)."),
                io.Float.Input("omega_scale", default=10.0, min=-100.0, max=100.0, step=0.1,
                               tooltip="The original's \"granularity scale\": above 0 amplifies the detail of each "
                                       "step (10: x1.046), below 0 softens it."),
            ],
            outputs=[io.Sampler.Output()],
        )

    @classmethod
    def execute(cls, scheduler, omega_scale) -> io.NodeOutput:
        return io.NodeOutput(orig.original_sampler(scheduler, omega_scale))


class OriginalGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("OriginalGuider"),
            display_name=display_name("ACE-Step Original Guider"),
            category=PARTS_CATEGORY,
            description="GUIDER with the original ACE-Step guidance (APG / CFG / CFG-Zero*, guidance interval and "
                        "decay, double guidance, diffusion ERG), for SamplerCustomAdvanced. Use the ERG Negative "
                        "node for the original's unconditional condition.",
            inputs=[
                io.Model.Input("model", tooltip="The ACE-Step model (LoRAs apply)."),
                io.Conditioning.Input("positive", tooltip="Tags and lyrics from the ACE-Step Tags + Lyrics node."),
                io.Conditioning.Input("negative",
                                      tooltip="The unconditional condition: ACE-Step ERG Negative (the original's), "
                                              "or e.g. ConditioningZeroOut."),
                *_guidance_inputs().values(),
                io.Conditioning.Input("text_only", optional=True,
                                      tooltip="For double guidance only: ACE-Step Text-only Condition."),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg_type, guidance_scale, guidance_interval, guidance_interval_decay,
                min_guidance_scale, use_erg_diffusion, guidance_scale_text, guidance_scale_lyric,
                text_only=None) -> io.NodeOutput:
        settings = _settings(cfg_type, guidance_scale, guidance_interval, guidance_interval_decay, min_guidance_scale,
                             use_erg_diffusion, guidance_scale_text, guidance_scale_lyric)
        if double_guidance_active(settings.scale_text, settings.scale_lyric) and text_only is None:
            raise ValueError("double guidance (both text and lyric scales above 1) needs the text_only input")
        guider = orig.OriginalGuider(model, settings)
        guider.set_conds(positive, negative, text_only)
        return io.NodeOutput(guider)


class SeedsNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("SeedsNoise"),
            display_name=display_name("ACE-Step Seeds Noise"),
            category=PARTS_CATEGORY,
            description="NOISE with one seed per batch item, as the original seeds each song (a one-seed batch gets "
                        "the same noise as RandomNoise with that seed). Shorter lists repeat their last seed.",
            inputs=[io.String.Input("seeds", default="", tooltip=SEEDS_TOOLTIP)],
            outputs=[io.Noise.Output(), io.String.Output(display_name="seeds")],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return _random_unless_seeded(kwargs.get("seeds"))

    @classmethod
    def execute(cls, seeds) -> io.NodeOutput:
        seeds = orig.parse_seeds(seeds) or orig.random_seeds(orig.MAX_BATCH)
        return io.NodeOutput(orig.SeedListNoise(seeds), ",".join(map(str, seeds)))


class ErgNegative(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("ErgNegative"),
            display_name=display_name("ACE-Step ERG Negative (original)"),
            category=PARTS_CATEGORY,
            description="The original's unconditional condition from the positive one: with lyric ERG, the lyrics "
                        "(and with tag ERG the tags) encoded with flattened attention; without, zero tags and "
                        "[STOP] lyrics. The lyric ERG acts in the pack's samplers; core samplers see the text part.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="Tags and lyrics from the ACE-Step Tags + Lyrics node."),
                io.Boolean.Input("use_erg_tag", default=True,
                                 tooltip="Use the tags encoded with flattened attention (needs use_erg_lyric, as the "
                                         "original)."),
                io.Boolean.Input("use_erg_lyric", default=True,
                                 tooltip="Encode the lyrics with flattened attention; off: zero tags and [STOP] "
                                         "lyrics."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, positive, use_erg_tag, use_erg_lyric) -> io.NodeOutput:
        return io.NodeOutput(orig.null_conditioning(positive, use_erg_tag, use_erg_lyric))


class TextOnlyConditioning(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("TextOnlyConditioning"),
            display_name=display_name("ACE-Step Text-only Condition (original)"),
            category=PARTS_CATEGORY,
            description="Double guidance's text-only condition: the tags with ERG-weakened lyrics (or [STOP] lyrics "
                        "without lyric ERG). Feed it to the Original Guider's text_only input.",
            inputs=[
                io.Conditioning.Input("positive", tooltip="Tags and lyrics from the ACE-Step Tags + Lyrics node."),
                io.Boolean.Input("use_erg_lyric", default=True,
                                 tooltip="Weaken the lyrics with ERG; off: [STOP] lyrics."),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def execute(cls, positive, use_erg_lyric) -> io.NodeOutput:
        return io.NodeOutput(orig.text_only_conditioning(positive, use_erg_lyric))


NODES = [OriginalSampler, OriginalSchedule, OriginalSamplerSelect, OriginalGuider, SeedsNoise, ErgNegative,
         TextOnlyConditioning]
