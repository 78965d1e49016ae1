"""The original ACE-Step v1 pipeline's sampling (ace-step/ACE-Step `acestep/pipeline_ace_step.py`, `text2music_diffusion_process`) on a ComfyUI MODEL.

The numbers come from `ace_step` (schedules, guidance, flow_steps, erg); this module only connects them to ComfyUI:
- the model is the MODEL's loaded diffusion model (ComfyUI model management, so LoRA weight patches apply), called
  through its `encode_condition` (once per condition and run, as the original) and `decode` (once per pass);
- conditions are ComfyUI CONDITIONING entries `[text hidden states, {"conditioning_lyrics", "lyrics_strength",
  ...}]`, plus two pack keys: `ERG_TEXT_KEY` (the tags re-encoded with the ERG-tag q-scale, added by the pack's
  text encode node) and `LYRIC_ERG_KEY` (encode the lyrics with the ERG q-scale in the lyric encoder). Core nodes
  pass unknown keys along and ComfyUI's own ACE model ignores them;
- noise is ComfyUI's convention: float32 from a CPU generator, here one generator per batch item and seed, as the
  original seeds each item. The original drew bf16 noise from CUDA generators, which no CPU draw reproduces.

Two ways to run it: `sample_original` (the whole original loop, what the "ACE-Step Sampler (original)" node runs)
and the SAMPLER / GUIDER objects below for SamplerCustomAdvanced.
"""
from __future__ import annotations

import copy
import random
from contextlib import contextmanager
from dataclasses import dataclass

import comfy.model_management as mm
import comfy.sampler_helpers
import comfy.samplers
import comfy.utils
import torch

from ..ace_step.sampling import erg, flow_steps, schedules
from ..ace_step.sampling.guidance import GuidanceSchedule, Guider
from ..ace_step.models.v1.umt5 import encode_token_weights, erg_tag_q_scale
from ..ace_step.models.v1.latent import CHANNELS, HEIGHT
from ..ace_step.text.lyrics import STOP
from .models import AceStepClip, require_transformer_memory

ERG_TEXT_KEY = "acestudio_erg_text"
LYRIC_ERG_KEY = "acestudio_lyric_erg"
MAX_BATCH = 64
RANDOM_SECONDS = (30.0, 240.0)  # the original's range for a duration <= 0


# ------------------------------------------------------------------------------------------------ seeds and noise
def parse_seeds(text: str) -> list[int]:
    """"1, 2,3" -> [1, 2, 3] (commas or new lines); "" -> []."""
    seeds = []
    for part in text.replace("\n", ",").split(","):
        if not part.strip():
            continue
        try:
            seed = int(part)
        except ValueError:
            raise ValueError(f"seeds must be whole numbers separated by commas, got {part.strip()!r}") from None
        if not 0 <= seed < 2**64:
            raise ValueError(f"a seed must be between 0 and 2^64 - 1, got {seed}")
        seeds.append(seed)
    if len(seeds) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} seeds (one song each), got {len(seeds)}")
    return seeds


def random_seeds(count: int) -> list[int]:
    """Fresh seeds from the OS entropy (independent of any global RNG a workflow may have seeded)."""
    rng = random.SystemRandom()
    return [rng.randrange(2**32) for _ in range(count)]  # the original's torch.randint(0, 2**32) range


def seeds_for_batch(seeds: list[int], batch: int) -> list[int]:
    """The original's rule: item i gets seeds[i], or the last seed when the list is shorter."""
    return [seeds[min(i, len(seeds) - 1)] for i in range(batch)]


def seeded_noise(seeds: list[int], item_shape) -> torch.Tensor:
    """[len(seeds), *item_shape] float32 on the CPU, item i drawn from a generator seeded with seeds[i]; a single
    seed gives what ComfyUI's RandomNoise gives for a batch of one."""
    return torch.cat([torch.randn([1, *item_shape], generator=torch.Generator().manual_seed(s)) for s in seeds])


def pingpong_generator(seed: int, item_shape) -> torch.Generator:
    """The generator the original's ping-pong steps draw from: the first item's, after that item's noise."""
    generator = torch.Generator().manual_seed(seed)
    torch.randn([1, *item_shape], generator=generator)
    return generator


def random_duration(seed: int) -> float:
    """A duration <= 0 means "random 30-240 s" in the original; here it is drawn from the first seed, so the same
    seeds give the same length."""
    return random.Random(seed).uniform(*RANDOM_SECONDS)


class SeedListNoise:
    """ComfyUI NOISE (for SamplerCustomAdvanced) with one seed per batch item; `seed` (the first) is what
    samplers draw their own noise from."""

    def __init__(self, seeds: list[int]):
        self.seeds = seeds
        self.seed = seeds[0]

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        latent = input_latent["samples"]
        seeds = seeds_for_batch(self.seeds, latent.shape[0])
        return seeded_noise(seeds, latent.shape[1:]).to(latent.dtype)


# ------------------------------------------------------------------------------------------------ conditions
def single_entry(conditioning: list) -> tuple[torch.Tensor, dict]:
    """(text hidden states, extras) of a one-entry ACE-Step CONDITIONING; the original has one condition per
    pass, so combined, timestep-ranged or area conditionings are refused."""
    if len(conditioning) != 1:
        raise ValueError(f"the original ACE-Step sampling takes one condition per input, got {len(conditioning)} "
                         "(combined or scheduled conditioning is not supported here)")
    cond, extras = conditioning[0]
    if "conditioning_lyrics" not in extras:
        raise ValueError("this CONDITIONING has no lyrics: make it with the ACE-Step Tags + Lyrics node")
    return cond, extras


def erg_tag_hidden(clip: AceStepClip, tokens: dict) -> torch.Tensor:
    """The tags re-encoded with the ERG-tag query scale (UMT5 blocks 8 and 9 x 0.01, the original's `use_erg_tag`), prompt weights
    applied as in the plain encoding."""
    clip.load_model()
    encoder = clip.patcher.model
    hidden = encode_token_weights(encoder, tokens["umt5base"], q_scale=erg_tag_q_scale(encoder.config.num_layers))
    return hidden.to(mm.intermediate_device())


def null_conditioning(positive: list, use_erg_tag: bool, use_erg_lyric: bool) -> list:
    """The original's unconditional condition (`text2music_diffusion_process`). With lyric ERG: the ERG-tag text (or zeros without tag
    ERG) and the real lyrics, encoded with the lyric-encoder ERG; without: zero text and [STOP] (id 0) lyrics of
    the same length (the original then drops the ERG-tag text even if it was computed)."""
    cond, extras = single_entry(positive)
    if not use_erg_lyric:
        lyrics = torch.zeros_like(extras["conditioning_lyrics"])
        return [[torch.zeros_like(cond), {**extras, "conditioning_lyrics": lyrics, LYRIC_ERG_KEY: False}]]
    if not use_erg_tag:
        text = torch.zeros_like(cond)
    elif extras.get(ERG_TEXT_KEY) is None:
        raise ValueError("tag ERG needs the conditioning of the ACE-Step Tags + Lyrics node (it adds the "
                         "ERG-encoded tags); turn use_erg_tag off for other conditionings")
    else:
        text = extras[ERG_TEXT_KEY]
    return [[text, {**extras, LYRIC_ERG_KEY: True}]]


def text_only_conditioning(positive: list, use_erg_lyric: bool) -> list:
    """Double guidance's text-only condition (the original's `guidance_scale_text`/`guidance_scale_lyric` branch): the real text with ERG-weakened lyrics, or with [STOP]
    lyrics when lyric ERG is off."""
    cond, extras = single_entry(positive)
    if use_erg_lyric:
        return [[cond, {**extras, LYRIC_ERG_KEY: True}]]
    return [[cond, {**extras, "conditioning_lyrics": torch.zeros_like(extras["conditioning_lyrics"]),
                    LYRIC_ERG_KEY: False}]]


def original_lyrics(lyrics: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(lyric ids, lyric mask or None: all attended) as the original pipeline feeds a CONDITIONING's lyrics [B, L]
    to the model. Empty lyrics are one token there (ComfyUI's [START], or the [STOP] a null condition made of it),
    and the original feeds them as one [STOP] masked out (ace-step/ACE-Step `acestep/pipeline_ace_step.py`,
    `__call__`, "# 6 lyric"; `LyricTokenizer.encode_with_mask("")`); any other lyrics are at least two tokens."""
    if lyrics.shape[-1] != 1:
        return lyrics, None
    return torch.full_like(lyrics, STOP), torch.zeros(lyrics.shape)


def encode_conditioning(diffusion_model, conditioning: list, batch: int,
                        device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`encode_condition` of one CONDITIONING on `device` (the MODEL's load device), repeated for the batch, and its
    mask. ComfyUI's text and lyric tokens are all real, so the mask is None (all attended) except for empty lyrics,
    which are masked out as in the original (`original_lyrics`)."""
    cond, extras = single_entry(conditioning)
    lyrics, lyric_mask = original_lyrics(extras["conditioning_lyrics"])
    require_transformer_memory(diffusion_model, device, cond.shape[0], 0, cond.shape[1], lyrics.shape[-1])
    hooked = erg.lyric_modules(diffusion_model.config.lyric_encoder_blocks) if extras.get(LYRIC_ERG_KEY) else []
    with erg.scaled_outputs(diffusion_model, hooked):
        encoded, mask = diffusion_model.encode_condition(cond.to(device), lyrics.to(device), lyric_mask=lyric_mask,
                                                         lyrics_strength=extras.get("lyrics_strength", 1.0))
    return encoded.expand(batch, -1, -1), None if mask is None else mask.expand(batch, -1)


# ------------------------------------------------------------------------------------------------ guided velocity
@dataclass(frozen=True)
class GuidanceSettings:
    """Everything of the original's guidance that does not depend on the schedule."""

    cfg_type: str = "apg"
    scale: float = 15.0
    interval: float = 0.5
    decay: float = 0.0
    min_scale: float = 3.0
    scale_text: float = 0.0
    scale_lyric: float = 0.0
    erg_diffusion: bool = True

    def guider(self, num_steps: int) -> Guider:
        """A fresh `Guider` (new APG momentum) for one run of num_steps (the original's N)."""
        return Guider(GuidanceSchedule(num_steps, self.scale, self.interval, self.decay, self.min_scale),
                      self.cfg_type, self.scale_text, self.scale_lyric)


class OriginalVelocity:
    """v(x, t, i) of the original loop: conditions encoded once, then per loop index i the passes the guider asks
    for, the unconditional one with the diffusion ERG hooks (the original's `use_erg_diffusion`) when enabled."""

    def __init__(self, diffusion_model, settings: GuidanceSettings, num_steps: int, positive: list, negative: list,
                 text_only: list | None, batch: int, device):
        self.model, self.device = diffusion_model, device
        self.guider = settings.guider(num_steps)
        if self.guider.double_condition and text_only is None:
            raise ValueError("double guidance (guidance_scale_text and guidance_scale_lyric both > 1) needs the "
                             "text-only condition")
        self.cond = self._encoded(positive, batch)
        self.uncond = self._encoded(negative, batch)
        self.text_only = self._encoded(text_only, batch) if self.guider.double_condition else None
        # The diffusion ERG scales queries only, so the unconditional keys/values are the plain ones.
        self.uncond_hooks = erg.diffusion_modules(diffusion_model.config.num_layers) if settings.erg_diffusion else []

    def with_guider(self, guider: Guider) -> "OriginalVelocity":
        """The same encoded conditions under another guider (its own APG momentum)."""
        other = copy.copy(self)
        other.guider = guider
        return other

    def _encoded(self, conditioning: list, batch: int) -> tuple:
        """(cond, mask, cross-attention keys/values): constant over the run, so computed once, not per pass, and
        for the one row the batch repeats."""
        cond, mask = encode_conditioning(self.model, conditioning, batch, self.device)
        kv = [(k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1))
              for k, v in self.model.cross_attention_kv(cond[:1])]
        return cond, mask, kv

    def _pass(self, x, t, condition, hooks=()):
        cond, mask, kv = condition

        def run():
            with erg.scaled_outputs(self.model, hooks):
                return self.model.decode(x, t, cond, mask, cross_kv=kv)
        return run

    def __call__(self, x: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
        mm.throw_exception_if_processing_interrupted()
        text_only = self._pass(x, t, self.text_only) if self.text_only is not None else None
        return self.guider(i, self._pass(x, t, self.cond), self._pass(x, t, self.uncond, self.uncond_hooks), text_only)


# ------------------------------------------------------------------------------------------------ schedule
def model_shift(model) -> float:
    """The MODEL's flow shift: 3 for ACE-Step (the original's), or what a ModelSamplingSD3 node set."""
    return float(getattr(model.get_model_object("model_sampling"), "shift", schedules.SHIFT))


def original_schedule(model, steps: int, scheduler: str, oss_steps: str = "") -> schedules.Schedule:
    """The original schedule for the MODEL's shift; oss_steps (e.g. "16, 29, 52") replaces `steps` and picks its
    timesteps in the model's dtype, as the original picks them in the pipeline dtype."""
    oss = schedules.parse_oss_steps(oss_steps)
    if oss:
        return schedules.oss_schedule(oss, scheduler, model.model_dtype(), model_shift(model))
    return schedules.flow_schedule(steps, scheduler, shift=model_shift(model))


# ------------------------------------------------------------------------------------------------ the whole loop
@contextmanager
def loaded_diffusion_model(model, shape):
    """The MODEL's diffusion model, loaded through ComfyUI model management (weight patches applied, memory made
    for latents of `shape`) for the duration of one run."""
    require_transformer_memory(model.model.diffusion_model, model.load_device, shape[0], shape[-1], 0, 0)
    real_model, _, loaded = comfy.sampler_helpers.prepare_sampling(model, shape, {}, model.model_options)
    model.pre_run()
    try:
        yield real_model.diffusion_model
    finally:
        model.cleanup()
        comfy.sampler_helpers.cleanup_models({}, loaded)


def original_velocity(diffusion_model, positive: list, settings: GuidanceSettings, num_steps: int, batch: int,
                      device, use_erg_tag: bool = True, use_erg_lyric: bool = True) -> OriginalVelocity:
    """The original's guided velocity for `positive`, with its ERG unconditional and text-only conditions, computed
    on `device`."""
    negative = null_conditioning(positive, use_erg_tag, use_erg_lyric)
    text_only = text_only_conditioning(positive, use_erg_lyric)
    return OriginalVelocity(diffusion_model, settings, num_steps, positive, negative, text_only, batch, device)


def with_progress(velocity, total: int):
    """`velocity` reporting one step of a ComfyUI progress bar of `total` per call."""
    progress = comfy.utils.ProgressBar(total)

    def step(x, t, i):
        v = velocity(x, t, i)
        progress.update(1)
        return v
    return step


def sample_original(model, positive: list, seeds: list[int], frames: int, settings: GuidanceSettings,
                    schedule: schedules.Schedule, omega_scale: float = 10.0, use_erg_tag: bool = True,
                    use_erg_lyric: bool = True, start: torch.Tensor | None = None,
                    first_step: int = 0) -> torch.Tensor:
    """The original text2music loop (`text2music_diffusion_process`) for one batch item per seed: latent [len(seeds), 8, 16, frames]
    (float32, intermediate device). The latent stays in the model dtype between steps, as in the original.

    `start` replaces the seed noise as the initial latent (retake's mixed noise, audio2audio's noised reference);
    `first_step` skips the schedule's first steps (audio2audio), the loop index still counting them for the
    guidance interval (Heun: 2 calls per skipped step)."""
    item_shape = [CHANNELS, HEIGHT, frames]
    noise = seeded_noise(seeds, item_shape) if start is None else start
    generator = pingpong_generator(seeds[0], item_shape) if schedule.scheduler == "pingpong" else None
    offset = 2 * first_step if schedule.scheduler == "heun" else first_step
    sigmas = schedule.sigmas[offset:]
    with loaded_diffusion_model(model, noise.shape) as diffusion_model:
        velocity = with_progress(original_velocity(diffusion_model, positive, settings, schedule.num_steps,
                                                   len(seeds), model.load_device, use_erg_tag, use_erg_lyric),
                                 len(sigmas) - 1)
        x = noise.to(device=model.load_device, dtype=diffusion_model.activation_dtype)
        out = flow_steps.sample(schedule.scheduler, lambda x, t, i: velocity(x, t, i + offset), x,
                                sigmas.to(model.load_device), omega_scale, generator)
    return out.float().to(mm.intermediate_device())


# ------------------------------------------------------------------------------------------------ SamplerCustomAdvanced
def _flow_sampler(scheduler: str):
    """A k-diffusion-style sampler function running the original `scheduler` loop: the model ComfyUI hands it
    returns denoised x0, turned back into the velocity v = (x − x0)/σ the original steps take."""
    heun = scheduler == "heun"

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None, omega_scale=10.0):
        extra_args = extra_args or {}
        table = schedules.heun_sigmas(sigmas) if heun else sigmas
        s_in = x.new_ones([x.shape[0]])

        def velocity(x, t, i):
            sigma = table[i]
            denoised = model(x, sigma * s_in, **extra_args)
            if callback is not None and not (heun and i % 2):  # once per step: Heun's corrector calls are extra
                callback({"x": x, "i": i // 2 if heun else i, "sigma": sigma, "sigma_hat": sigma,
                          "denoised": denoised})
            return (x - denoised) / sigma

        generator = None
        if scheduler == "pingpong":
            generator = pingpong_generator(extra_args.get("seed") or 0, x.shape[1:])
        return flow_steps.sample(scheduler, velocity, x, table, omega_scale, generator)

    return sample


def original_sampler(scheduler: str, omega_scale: float) -> comfy.samplers.KSAMPLER:
    """SAMPLER for SamplerCustomAdvanced: the original euler (with omega), heun (with omega) or pingpong step over
    a plain sigma table [σ0 … σN] (Heun's duplicated table is built inside)."""
    if scheduler not in schedules.SCHEDULERS:
        raise ValueError(f"unknown scheduler {scheduler!r}; expected one of {schedules.SCHEDULERS}")
    return comfy.samplers.KSAMPLER(_flow_sampler(scheduler), extra_options={"omega_scale": omega_scale})


class OriginalGuider(comfy.samplers.CFGGuider):
    """GUIDER for SamplerCustomAdvanced with the original guidance: APG / CFG / CFG-Zero* inside the guidance
    interval (conditional pass only outside), decay, double guidance, and diffusion ERG on the unconditional pass.

    The interval and CFG-Zero*'s zero-init count model calls since the start of the run, as the original's loop
    index does (Heun: 2N − 1 calls over N steps); N is len(sigmas) − 1. Conditions are encoded once per run. The
    MODEL's wrappers and pre-CFG functions are not applied: guidance happens on velocities here.
    """

    def __init__(self, model_patcher, settings: GuidanceSettings):
        super().__init__(model_patcher)
        self.settings = settings
        self.calls = 0

    def set_conds(self, positive, negative, text_only=None):
        conds = {"positive": positive, "negative": negative}
        if text_only is not None:
            conds["text_only"] = text_only
        self.inner_set_conds(conds)
        self.conditioning = (positive, negative, text_only)

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, *args, **kwargs):
        self.velocity = OriginalVelocity(self.inner_model.diffusion_model, self.settings, len(sigmas) - 1,
                                         *self.conditioning, noise.shape[0], device)
        self.calls = 0
        try:
            return super().inner_sample(noise, latent_image, device, sampler, sigmas, *args, **kwargs)
        finally:
            del self.velocity

    def predict_noise(self, x, timestep, model_options=None, seed=None):
        model_sampling = self.inner_model.model_sampling
        v = self.velocity(x, model_sampling.timestep(timestep).float(), self.calls)
        self.calls += 1
        return model_sampling.calculate_denoised(timestep, v.float(), x)

