"""Nodes for the original ACE-Step v1 pipeline's sampling: one high-level sampler with the original app's defaults,
and its parts (SIGMAS, SAMPLER, GUIDER, NOISE, ERG conditionings) for SamplerCustomAdvanced."""
import logging

from comfy_api.latest import io

from ..ace_step.sampling.guidance import double_guidance_active
from ..ace_step.sampling.schedules import SCHEDULERS
from ..comfy_bridge import original_sampling as orig
from ..comfy_bridge.v1_family import check_latent, require_conditioning, require_model
from .common import CATEGORY, display_name, node_id
from .sampling_inputs import (
    OSS_TOOLTIP,
    SEEDS_TOOLTIP,
    guidance_inputs,
    guidance_settings,
    original_sampler_inputs,
    random_unless_seeded,
    seeds_and_frames,
)

PARTS_CATEGORY = f"{CATEGORY}/original sampling"
# What does each node's job for ACE-Step 1.5, named when a 1.5 input arrives.
SAMPLE_15 = "core KSampler (text to music) or the ACE-Step 1.5 Cover / Repaint / Extend nodes"
GUIDER_15 = "core CFGGuider with ConditioningZeroOut as the negative"
log = logging.getLogger(__name__)


class OriginalSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id=node_id("OriginalSampler"),
            display_name=display_name("ACE-Step Sampler (original)"),
            category=CATEGORY,
            description="Text to music exactly as the original ACE-Step app samples: its schedule (shift 3, or the "
                        "MODEL's ModelSamplingSD3 shift), euler with omega / heun / pingpong, APG guidance inside a "
                        "guidance interval, and ERG (attention-flattened tags, lyrics and diffusion for the "
                        "unconditional pass). The defaults are the app's. One song per seed.",
            inputs=list(original_sampler_inputs().values()),
            outputs=[io.Latent.Output(), io.String.Output(display_name="seeds")],
        )

    @classmethod
    def fingerprint_inputs(cls, **kwargs):
        return random_unless_seeded(kwargs.get("seeds"))

    @classmethod
    def execute(cls, model, positive, seeds, duration, steps, scheduler, cfg_type, guidance_scale, omega_scale,
                guidance_interval, guidance_interval_decay, min_guidance_scale, use_erg_tag, use_erg_lyric,
                use_erg_diffusion, guidance_scale_text, guidance_scale_lyric, oss_steps, latent=None) -> io.NodeOutput:
        require_model(model, SAMPLE_15)
        require_conditioning(positive, SAMPLE_15)
        if latent is not None:
            check_latent(latent["samples"], "the latent", SAMPLE_15)
        seeds, frames = seeds_and_frames(seeds, duration, latent)
        schedule = orig.original_schedule(model, steps, scheduler, oss_steps)
        settings = guidance_settings(cfg_type, guidance_scale, guidance_interval, guidance_interval_decay, min_guidance_scale,
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
        require_model(model, "core BasicScheduler")
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
                *guidance_inputs().values(),
                io.Conditioning.Input("text_only", optional=True,
                                      tooltip="For double guidance only: ACE-Step Text-only Condition."),
            ],
            outputs=[io.Guider.Output()],
        )

    @classmethod
    def execute(cls, model, positive, negative, cfg_type, guidance_scale, guidance_interval, guidance_interval_decay,
                min_guidance_scale, use_erg_diffusion, guidance_scale_text, guidance_scale_lyric,
                text_only=None) -> io.NodeOutput:
        require_model(model, GUIDER_15)
        for name, conditioning in (("positive", positive), ("negative", negative), ("text_only", text_only)):
            require_conditioning(conditioning, GUIDER_15, f"{name} CONDITIONING")
        settings = guidance_settings(cfg_type, guidance_scale, guidance_interval, guidance_interval_decay, min_guidance_scale,
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
        return random_unless_seeded(kwargs.get("seeds"))

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
        require_conditioning(positive, "core ConditioningZeroOut for the negative")
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
        require_conditioning(positive, GUIDER_15 + " (ACE-Step 1.5 has no double guidance)")
        return io.NodeOutput(orig.text_only_conditioning(positive, use_erg_lyric))


NODES = [OriginalSampler, OriginalSchedule, OriginalSamplerSelect, OriginalGuider, SeedsNoise, ErgNegative,
         TextOnlyConditioning]
