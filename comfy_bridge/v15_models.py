"""ACE-Step 1.5's diffusion model inside ComfyUI's model management: the MODEL that core KSampler,
ModelSamplingAuraFlow / ModelSamplingSD3, CFG nodes, LoRA patching and partial (low-VRAM) loading work with.

- `ComfyCallableAceStep15`: the pack's DiT (`ace_step.models.v15.model.AceStep15`, built with `comfy.ops` layers and
  ComfyUI's attention), called with exactly what ComfyUI's ACE-Step 1.5 model passes it (`context`, `lyric_embed`,
  `refer_audio`, `audio_codes`, `is_covers`, `replace_with_null_embeds`, `transformer_options`, `control`), wrapped
  like ComfyUI's own diffusion models by the DIFFUSION_MODEL wrappers. Within a sampling run the condition is
  encoded once per distinct condition row (`v15_condition_cache`).
- `AceStep15Model`: ComfyUI's `comfy.model_base.ACEStep15` when the host has it (so core code that asks
  `isinstance(model, ACEStep15)`, e.g. the LoRA key map of newer ComfyUI, treats it as 1.5), else a `BaseModel` with
  the same behaviour: flow matching, shift 3, t = sigma (multiplier 1), 64-channel 1-D latents, and the same
  `extra_conds` (comfy/model_base.py `ACEStep15` in Comfy-Org/ComfyUI @ 0f1fa67ad8a68b62c65ebc97a7bf485df2459c3a),
  except that the silence latent comes from `v15_silence` (file, host or VAE). It also reports the DiT's memory need
  (`memory_required`) so ComfyUI offloads and batches by what a call really takes, and feeds the DiT sigma whatever
  multiplier a model-sampling patch uses (ModelSamplingSD3 passes sigma·1000, which ComfyUI's native 1.5 model reads
  as a timestep 1000 times too large).
"""
from __future__ import annotations

from typing import Optional

import comfy.conds
import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension
import comfy.supported_models
import comfy.supported_models_base
import torch

from ..ace_step.models.v15.model import AceStep15, AceStep15Config
from .memory import require_memory
from .v15_condition_cache import ConditionCache
from .v15_family import CHANNELS, check_latent, refuse_v1_conditioning, seconds_for_frames
from .v15_silence import SilenceLatent

INFERENCE_DTYPES = [torch.bfloat16, torch.float32]
ATTENTION_CHUNK = 4096  # queries per chunk of ComfyUI's sub-quadratic attention at most


class AceAudio15Latent(comfy.latent_formats.LatentFormat):
    """ACE-Step 1.5's latent on ComfyUI builds without `comfy.latent_formats.ACEAudio15`: 64 channels, 1-D, no
    scaling."""

    latent_channels = CHANNELS
    latent_dimensions = 1


class AceStep15ComfyConfig(comfy.supported_models_base.BASE):
    """ComfyUI's model config for ACE-Step 1.5 on builds without `comfy.supported_models.ACEStep15` (the same
    values)."""

    unet_config = {"audio_model": "ace1.5"}
    unet_extra_config = {}
    sampling_settings = {"multiplier": 1.0, "shift": 3.0}
    latent_format = AceAudio15Latent
    memory_usage_factor = 4.7
    supported_inference_dtypes = INFERENCE_DTYPES


MODEL_CONFIG = getattr(comfy.supported_models, "ACEStep15", AceStep15ComfyConfig)
LATENT_FORMAT = getattr(comfy.latent_formats, "ACEAudio15", AceAudio15Latent)
_HOST_BASE = getattr(comfy.model_base, "ACEStep15", comfy.model_base.BaseModel)


def working_bytes(config: AceStep15Config, batch: int, frames: int, text_tokens: int, lyric_tokens: int,
                  element: int) -> int:
    """Peak memory of one DiT call (condition encoding and one denoising pass) beyond the weights, activations of
    `element` bytes. Per token of a transformer stack: its residual stream, norm and projections (8 widths), the
    queries and the keys/values repeated to every head (3 · heads · head_dim) and the SwiGLU's three intermediate
    maps; per layer the attention of one layer: scores, their softmax and a masked copy for up to ATTENTION_CHUNK
    queries at a time (what ComfyUI's sub-quadratic CPU attention holds; fused GPU kernels hold less); the condition
    memory and every layer's cross-attention keys/values, kept for the whole call. The timbre encoder reads the
    reference (or silence) latent, which ComfyUI always gives the song's length."""
    dit, enc = config.decoder, config.encoder

    def stack(tokens: int, keys: int, hidden: int, heads: int, head_dim: int, intermediate: int) -> int:
        scores = 3 * heads * min(tokens, ATTENTION_CHUNK) * keys
        return tokens * (8 * hidden + 3 * heads * head_dim + 3 * intermediate) + scores

    memory = lyric_tokens + text_tokens + 1  # lyrics ; one timbre vector ; caption
    tokens = -(-frames // dit.patch_size)
    window_mask = tokens * tokens  # the sliding layers' additive mask, shared by the batch
    decode = (stack(tokens, tokens + memory, dit.hidden_size, dit.num_heads, dit.head_dim, dit.intermediate_size)
              + frames * 6 * dit.latent_channels)
    lyric, timbre = enc.lyric, enc.timbre
    encode = max(stack(lyric_tokens, lyric_tokens, lyric.hidden_size, lyric.num_heads, lyric.head_dim,
                       lyric.intermediate_size),
                 stack(frames, frames, timbre.hidden_size, timbre.num_heads, timbre.head_dim,
                       timbre.intermediate_size))
    kept = memory * (enc.hidden_size + 2 * dit.num_layers * dit.num_kv_heads * dit.head_dim) + frames * 2 * CHANNELS
    return element * (batch * (max(decode, encode) + kept) + window_mask)


class ComfyCallableAceStep15(AceStep15):
    """The DiT, called the way ComfyUI's ACE-Step 1.5 model calls its diffusion model (module docstring).

    Weights in `dtype` (fp8 too, with casting operations); activations in `compute_dtype` when ComfyUI's manual cast
    sets one, else the weights' dtype."""

    compute_dtype: Optional[torch.dtype] = None

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype (what ComfyUI's BaseModel reads as the model dtype)."""
        return self.decoder.condition_embedder.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder.condition_embedder.weight.device

    @property
    def activation_dtype(self) -> torch.dtype:
        return self.compute_dtype or self.dtype

    def working_bytes(self, batch: int, frames: int, text_tokens: int, lyric_tokens: int) -> int:
        element = torch.finfo(self.activation_dtype).bits // 8
        return working_bytes(self.config, batch, frames, text_tokens, lyric_tokens, element)

    def forward(self, x, timestep, context=None, lyric_embed=None, refer_audio=None, audio_codes=None,
                is_covers=None, replace_with_null_embeds=False, transformer_options=None, control=None, **kwargs):
        transformer_options = transformer_options or {}
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._forward, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                     transformer_options),
        ).execute(x, timestep, context, lyric_embed, refer_audio, audio_codes, is_covers, replace_with_null_embeds,
                  transformer_options)

    def _forward(self, x, timestep, context, lyric_embed, refer_audio, audio_codes, is_covers,
                 replace_with_null_embeds, transformer_options):
        check_latent(x, "the latent this ACE-Step 1.5 MODEL samples")
        if context is None or lyric_embed is None or refer_audio is None:
            raise ValueError("this ACE-Step 1.5 MODEL got no caption/lyric conditioning: encode the text with ACE-Step "
                             "1.5 Text Encode and connect it to the sampler's positive (and, through "
                             "ConditioningZeroOut, negative) input")
        require_dit_memory(self, x.device, x.shape[0], x.shape[-1], context.shape[1], lyric_embed.shape[1])
        cache = getattr(self, "condition_cache", None)
        if cache is None or isinstance(is_covers, torch.Tensor):
            return super().forward(x, timestep, context, lyric_embed, refer_audio, audio_codes, is_covers,
                                   replace_with_null_embeds, transformer_options=transformer_options)
        condition = cache.lookup(self, context, lyric_embed, refer_audio, x.shape[-1], audio_codes, is_covers,
                                 replace_with_null_embeds, transformer_options)
        return self.decode(x, timestep, condition, transformer_options=transformer_options)

    def start_run(self, patcher):
        """Before sampling (the patcher's pre-run). Weight hooks (a LoRA scheduled on a conditioning) patch weights
        in place between steps, so a run with any is not cached."""
        self.condition_cache = None if patcher.hook_patches else ConditionCache()

    def end_run(self, patcher):
        """After sampling (the patcher's cleanup): frees the run's cache."""
        self.condition_cache = None


def require_dit_memory(dit: ComfyCallableAceStep15, device, batch: int, frames: int, text_tokens: int,
                       lyric_tokens: int):
    """Refuses a DiT call the machine cannot hold, naming what makes it big."""
    needed = dit.working_bytes(batch, frames, text_tokens, lyric_tokens)
    what = (f"sampling {batch} × {frames:,} ACE-Step 1.5 latent frames ({seconds_for_frames(frames):,.0f} s) with "
            f"{lyric_tokens:,} lyric tokens")
    require_memory(needed, device, what, "lower the batch size or the song length, or shorten the lyrics")


class AceStep15Model(_HOST_BASE):
    """ComfyUI's ACE-Step 1.5 model around the pack's DiT (module docstring)."""

    def __init__(self, model_config, silence: SilenceLatent, device=None):
        super().__init__(model_config, model_type=comfy.model_base.ModelType.FLOW, device=device)
        self.silence = silence

    def process_timestep(self, timestep, **kwargs):
        """The DiT reads sigma in [0, 1]: undo the multiplier of whatever model sampling is in place."""
        multiplier = getattr(self.model_sampling, "multiplier", 1.0)
        return timestep if multiplier == 1.0 else timestep / multiplier

    def extra_conds(self, **kwargs):
        out = comfy.model_base.BaseModel.extra_conds(self, **kwargs)
        device, noise = kwargs["device"], kwargs["noise"]
        length = noise.shape[-1]
        cross_attn = kwargs.get("cross_attn")
        if cross_attn is not None:
            if torch.count_nonzero(cross_attn) == 0:  # ConditioningZeroOut: the unconditional pass
                out["replace_with_null_embeds"] = comfy.conds.CONDConstant(True)
            out["c_crossattn"] = comfy.conds.CONDRegular(cross_attn)
            lyrics = kwargs.get("conditioning_lyrics")
            if lyrics is None:
                raise ValueError("this conditioning has caption states but no lyric embeddings: it was not made by "
                                 "an ACE-Step 1.5 text encoder; use ACE-Step 1.5 Text Encode")
            # Core KSampler has no input check of its own: v1 lyric token ids would reach the DiT's lyric encoder.
            refuse_v1_conditioning([[cross_attn, kwargs]])
            out["lyric_embed"] = comfy.conds.CONDRegular(lyrics)
        references = kwargs.get("reference_audio_timbre_latents")
        if references:
            refer = check_latent(references[-1], "the reference audio latent")[:, :, :length]
            out["is_covers"] = comfy.conds.CONDConstant(True)
        else:
            # ComfyUI cuts the silence to 750 frames when there are audio codes, then pads it back with silence: the
            # same tensor.
            refer = self.silence(length, device)
            codes = kwargs.get("audio_codes")
            if codes is not None:
                out["audio_codes"] = comfy.conds.CONDRegular(torch.tensor(codes, dtype=torch.long, device=device))
            else:
                out["is_covers"] = comfy.conds.CONDConstant(False)
        if refer.shape[-1] < length:
            pad = self.silence(length, device)
            refer = torch.cat([refer.to(pad), pad[:, :, refer.shape[-1]:]], dim=-1)
        out["refer_audio"] = comfy.conds.CONDRegular(refer)
        return out

    def extra_conds_shapes(self, **kwargs):
        out = {}
        if kwargs.get("cross_attn") is not None:
            out["c_crossattn"] = list(kwargs["cross_attn"].shape)
        if kwargs.get("conditioning_lyrics") is not None:
            out["lyric_embed"] = list(kwargs["conditioning_lyrics"].shape)
        return out

    def memory_required(self, input_shape, cond_shapes={}, **kwargs):
        text = max((s[1] for s in cond_shapes.get("c_crossattn", [])), default=0)
        lyrics = max((s[1] for s in cond_shapes.get("lyric_embed", [])), default=0)
        return self.diffusion_model.working_bytes(input_shape[0], input_shape[-1], text, lyrics)


def model_patcher(dit: ComfyCallableAceStep15, manual_cast_dtype, silence: SilenceLatent
                  ) -> comfy.model_patcher.ModelPatcher:
    """MODEL for ComfyUI's samplers with the pack's DiT (built with ComfyUI's operations) as its diffusion model.

    A classic ModelPatcher, as for v1 (comfy_bridge/models.py): it loads whole or partially as VRAM allows and applies
    LoRA patches in place on what it loads and at call time, through the `comfy.ops` layers, on what it leaves
    offloaded."""
    model_config = MODEL_CONFIG({"audio_model": "ace1.5", "disable_unet_model_creation": True})
    model_config.set_inference_dtype(dit.dtype, manual_cast_dtype)
    dit.compute_dtype = manual_cast_dtype
    base = AceStep15Model(model_config, silence, device=dit.device)
    base.diffusion_model = dit
    patcher = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    patcher.add_callback(comfy.patcher_extension.CallbacksMP.ON_PRE_RUN, dit.start_run)
    patcher.add_callback(comfy.patcher_extension.CallbacksMP.ON_CLEANUP, dit.end_run)
    return patcher

