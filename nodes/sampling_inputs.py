"""The original sampler's widgets and the rules its nodes share (the high-level sampler, its SamplerCustomAdvanced
parts and the editing nodes), so that every node offers them with the same defaults and tooltips."""
from comfy_api.latest import io

from ..ace_step.models.v1.latent import frames_for_seconds
from ..ace_step.sampling.guidance import CFG_TYPES
from ..ace_step.sampling.schedules import SCHEDULERS
from ..comfy_bridge import original_sampling as orig
from .latent import MAX_SECONDS

SEEDS_TOOLTIP = ("Seeds separated by commas, one song per seed (\"1,2,3\" makes three); empty = random seeds "
                 "(see the seeds output).")
OSS_TOOLTIP = ("Optional \"optimal steps\" of the original (e.g. 16, 29, 52, 96, 129, 158, 172, 183, 189, 200): "
               "picks these steps of a max(oss_steps)-step schedule and replaces steps. Not with heun.")


def guidance_inputs() -> dict:
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


def guidance_settings(cfg_type, guidance_scale, guidance_interval, guidance_interval_decay, min_guidance_scale,
              use_erg_diffusion, guidance_scale_text, guidance_scale_lyric) -> orig.GuidanceSettings:
    return orig.GuidanceSettings(cfg_type, guidance_scale, guidance_interval, guidance_interval_decay,
                                 min_guidance_scale, guidance_scale_text, guidance_scale_lyric, use_erg_diffusion)


def random_unless_seeded(seeds) -> object:
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


def original_sampler_inputs() -> dict:
    """The "ACE-Step Sampler (original)" node's inputs by name, in its order."""
    guidance = guidance_inputs()
    inputs = [
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
    ]
    return {i.id: i for i in inputs}
