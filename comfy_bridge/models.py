"""The one adapter between ComfyUI and `ace_step`: our networks wrapped in ComfyUI's model management.

- MODEL: ComfyUI's own ACE-Step `BaseModel` (flow matching, shift 3, ACE latent format, its condition plumbing) whose
  diffusion model is our transformer, built with `comfy.ops` layers and ComfyUI's attention, in a ModelPatcher.
  KSampler, ModelSamplingSD3, LatentApplyOperationCFG, LoRA patching, partial (low-VRAM) loading and ComfyUI's
  attention backends and patches then work as with the native model.
- CLIP and VAE: objects with the methods ComfyUI's CLIP/VAE expose to nodes (`tokenize`, `encode_from_tokens_scheduled`,
  `encode`, `decode`), so core nodes such as TextEncodeAceStepAudio, VAEEncodeAudio and VAEDecodeAudio take them too.
"""
from __future__ import annotations

import logging

import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension
import comfy.supported_models
import comfy.utils
import torch

from ..ace_step.loading.v1_checkpoint import load_ace_step
from ..ace_step.models.v1.latent import SAMPLE_RATE, SAMPLES_PER_FRAME, seconds_for_frames
from ..ace_step.models.v1.transformer import ACEStepTransformer
from ..ace_step.models.v1.umt5 import encode_token_weights, is_weighted
from ..ace_step.sampling.condition_cache import ConditionCache
from ..ace_step.text.lyrics import TRAINED_LYRIC_TOKENS, LyricReport, LyricTokenizer
from .audio_input import float_waveform, to_stereo
from .v1_family import check_latent as check_v1_latent
from .memory import require_memory
from .paths import comfyui_root
from .operations import (
    V1_INFERENCE_DTYPES,
    diffusion_attention,
    diffusion_operations,
    text_encoder_attention,
    text_encoder_operations,
    vae_operations,
)

log = logging.getLogger(__name__)


class ComfyCallableTransformer(ACEStepTransformer):
    """Our transformer, called the way ComfyUI's ACE-Step BaseModel calls its diffusion model (and wrapped, as
    ComfyUI's own is, by the DIFFUSION_MODEL wrappers of `transformer_options`).

    Within a sampling run the condition encoders and the cross-attention keys/values run once per distinct condition,
    not at every step (ace_step.condition_cache); the patcher's pre-run and cleanup callbacks bracket the run."""

    def forward(self, x, timestep, context=None, lyric_token_idx=None, lyrics_strength=1.0, speaker_embeds=None,
                transformer_options=None, control=None, **kwargs):
        transformer_options = transformer_options or {}
        return comfy.patcher_extension.WrapperExecutor.new_class_executor(
            self._forward, self,
            comfy.patcher_extension.get_all_wrappers(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL,
                                                     transformer_options),
        ).execute(x, timestep, context, lyric_token_idx, lyrics_strength, transformer_options)

    def _forward(self, x, timestep, context, lyric_token_idx, lyrics_strength, transformer_options):
        check_song_latent(x)
        require_transformer_memory(self, x.device, x.shape[0], x.shape[-1], 0 if context is None else context.shape[1],
                                   0 if lyric_token_idx is None else lyric_token_idx.shape[-1])
        # ComfyUI always sends zero speaker embeddings of the full model's width; ours are zeros of the right width.
        cache = getattr(self, "condition_cache", None)
        if cache is None or context is None or lyric_token_idx is None or isinstance(lyrics_strength, torch.Tensor):
            return super().forward(x, timestep, text_hidden=context, lyric_ids=lyric_token_idx,
                                   lyrics_strength=lyrics_strength, transformer_options=transformer_options)
        cond, cross_kv = cache.lookup(self, context, lyric_token_idx, float(lyrics_strength), transformer_options)
        return self.decode(x, timestep, cond, cross_kv=cross_kv, transformer_options=transformer_options)

    def start_run(self, patcher):
        """Before sampling (the patcher's pre-run). ComfyUI's weight hooks (a LoRA scheduled on a conditioning) patch
        weights in place between steps, so a run with any is not cached."""
        self.condition_cache = None if patcher.hook_patches else ConditionCache()

    def end_run(self, patcher):
        """After sampling (the patcher's cleanup): frees the run's cache."""
        self.condition_cache = None


def require_transformer_memory(transformer: ACEStepTransformer, device, batch: int, frames: int, text_tokens: int,
                               lyric_tokens: int):
    """Refuses a transformer call (condition encoding, denoising or both) the machine cannot hold, naming the
    part that makes it too big."""
    needed = transformer.working_bytes(batch, frames, text_tokens, lyric_tokens)
    element = torch.finfo(transformer.activation_dtype).bits // 8
    if transformer.lyric_encoder.working_bytes(lyric_tokens, batch, element) > needed / 2:
        what = f"encoding {lyric_tokens:,} lyric tokens (the lyric encoder's attention grows with their square)"
        fix = (f"shorten the lyrics: ACE-Step v1 was trained on up to {TRAINED_LYRIC_TOKENS:,} tokens, and a "
               "song's lyrics are rarely above 2,000")
    else:
        seconds = seconds_for_frames(frames)
        what = f"sampling {batch} × {frames:,} latent frames ({seconds:,.0f} s)"
        fix = "lower the batch size or the song length"
    require_memory(needed, device, what, fix)


class AceStepV1Model(comfy.model_base.ACEStep):
    """ComfyUI's ACE-Step v1 model (flow matching, shift 3, its condition plumbing) reporting our transformer's memory
    need, so that ComfyUI offloads and batches by what a call really takes (ComfyUI calls `memory_required` with the
    latent shape and, through `extra_conds_shapes`, the conditions' shapes)."""

    def extra_conds_shapes(self, **kwargs):
        out = {}
        if kwargs.get("cross_attn") is not None:
            out["c_crossattn"] = list(kwargs["cross_attn"].shape)
        if kwargs.get("conditioning_lyrics") is not None:
            out["lyric_token_idx"] = list(kwargs["conditioning_lyrics"].shape)
        return out

    def memory_required(self, input_shape, cond_shapes={}, **kwargs):
        text = max((s[1] for s in cond_shapes.get("c_crossattn", [])), default=0)
        lyrics = max((s[-1] for s in cond_shapes.get("lyric_token_idx", [])), default=0)
        return self.diffusion_model.working_bytes(input_shape[0], input_shape[-1], text, lyrics)


def model_patcher(transformer: ComfyCallableTransformer, manual_cast_dtype) -> comfy.model_patcher.ModelPatcher:
    """MODEL for ComfyUI's samplers, with our transformer (built with ComfyUI's operations) as its diffusion model.

    A classic ModelPatcher (not ComfyUI's dynamic-VRAM one, which a custom node only gets by asking for
    `CoreModelPatcher`): it loads whole or partially as VRAM allows, and applies LoRA patches in place on what it
    loads and at call time, through the `comfy.ops` layers, on what it leaves offloaded."""
    model_config = comfy.supported_models.ACEStep({"audio_model": "ace", "disable_unet_model_creation": True})
    model_config.set_inference_dtype(transformer.dtype, manual_cast_dtype)
    transformer.compute_dtype = manual_cast_dtype
    base = AceStepV1Model(model_config, device=transformer.device)
    base.diffusion_model = transformer
    patcher = comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    patcher.add_callback(comfy.patcher_extension.CallbacksMP.ON_PRE_RUN, transformer.start_run)
    patcher.add_callback(comfy.patcher_extension.CallbacksMP.ON_CLEANUP, transformer.end_run)
    return patcher


class AceStepClip:
    """CLIP for ACE-Step: UMT5 tags encoder + lyric tokenizer, with the interface ComfyUI's CLIP gives nodes."""

    def __init__(self, text_encoder, text_tokenizer, lyric_tokenizer, patcher=None):
        self.text_encoder = text_encoder
        self.text_tokenizer = text_tokenizer
        self.lyric_tokenizer = lyric_tokenizer
        self.patcher = patcher or comfy.model_patcher.ModelPatcher(
            text_encoder, load_device=mm.text_encoder_device(), offload_device=mm.text_encoder_offload_device())
        self.patcher.is_clip = True

    def clone(self) -> "AceStepClip":
        return AceStepClip(self.text_encoder, self.text_tokenizer, self.lyric_tokenizer, self.patcher.clone())

    def tokenize(self, text: str, lyrics: str = "", **kwargs) -> dict:
        return self.tokenize_with_report(text, lyrics)[0]

    def tokenize_with_report(self, text: str, lyrics: str = "") -> tuple[dict, LyricReport]:
        """`tokenize`'s tokens and what the model will not get from the lyrics (unreadable lines, unknown section
        tags, more tokens than it was trained on), which is also logged as a warning."""
        ids, report = self.lyric_tokenizer.encode_with_report(lyrics)
        if not report.ok:
            log.warning("%s", report.message())
        return {"umt5base": self.text_tokenizer.encode_with_weights(text), "lyrics": ids}, report

    def load_model(self):
        mm.load_model_gpu(self.patcher)
        return self.patcher

    def encode_from_tokens(self, tokens: dict, return_pooled=False, return_dict=False):
        tags = tokens["umt5base"]
        rows = 2 if is_weighted(tags) else 1
        require_memory(self.text_encoder.working_bytes(len(tags), rows), self.patcher.load_device,
                       f"encoding {len(tags):,} tag tokens (the text encoder's attention grows with their square)",
                       "shorten the tags: a few dozen comma-separated words describe a song, and the original "
                       "ACE-Step reads only the first 256 tokens")
        self.load_model()
        cond = encode_token_weights(self.patcher.model, tokens["umt5base"]).to(mm.intermediate_device())
        lyrics = torch.tensor([tokens["lyrics"]], dtype=torch.long, device=mm.intermediate_device())
        if return_dict:
            return {"cond": cond, "pooled_output": None, "conditioning_lyrics": lyrics}
        return (cond, None) if return_pooled else cond

    def encode_from_tokens_scheduled(self, tokens: dict, unprojected=False, add_dict=None, show_pbar=True):
        out = self.encode_from_tokens(tokens, return_dict=True)
        cond = out.pop("cond")
        return [[cond, {**out, **(add_dict or {})}]]


def check_song_latent(latent):
    """Refuses what is not an ACE-Step song latent [batch, 8, 16, frames] (an ACE-Step 1.5 latent, an image latent,
    another audio model's), before it reaches a layer whose shape error would say nothing useful."""
    check_v1_latent(latent)


class AceStepVae:
    """VAE for ACE-Step (music DCAE + vocoder) with the interface ComfyUI's VAE gives the audio nodes:
    `encode([B, T, C] at 44.1 kHz) -> [B, 8, 16, W]` and `decode([B, 8, 16, W]) -> [B, T, 2]`."""

    CHUNK_FRAMES = 384  # latent frames per decode/encode window (~36 s): bounds memory for any song length
    OVERLAP_FRAMES = 64

    def __init__(self, music_vae, patcher=None):
        self.music_vae = music_vae
        self.patcher = patcher or comfy.model_patcher.ModelPatcher(
            music_vae, load_device=mm.vae_device(), offload_device=mm.vae_offload_device())

    def throw_exception_if_invalid(self):
        return None

    def _load(self, work_bytes: int):
        mm.load_models_gpu([self.patcher], memory_required=work_bytes, force_full_load=True)
        # The windows check for an interrupt after each one; this covers the time before the first.
        mm.throw_exception_if_processing_interrupted()

    def _on_window(self, progress):
        def step(done, total):
            mm.throw_exception_if_processing_interrupted()
            progress.update_absolute(done, total)
        return step

    def _require_memory(self, window_bytes: int, result_bytes: int, what: str, fix: str):
        """The working memory of one window plus the whole result on the VAE's device, and the result again where
        it is handed on when that is another device."""
        require_memory(window_bytes + result_bytes, self.patcher.load_device, what, fix)
        if torch.device(mm.intermediate_device()) != torch.device(self.patcher.load_device):
            require_memory(result_bytes, mm.intermediate_device(), what, fix)

    def encode_audio(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """[B, C, T] at any rate, float or integer PCM, any channel count (folded to stereo) -> latent
        [B, 8, 16, ceil(T·44100/sr / 4096)] on the intermediate device."""
        batch, channels, samples = waveform.shape
        frames = self.music_vae.latent_frames(-(-samples * SAMPLE_RATE // sample_rate))
        window_bytes = int(min(samples, self.CHUNK_FRAMES * SAMPLES_PER_FRAME) * 330 * 4)
        # float32 copies of the input, then of the stereo signal resampled and padded (two alive at once).
        copies = 4 * batch * (channels * samples + 2 * 2 * frames * SAMPLES_PER_FRAME)
        self._require_memory(window_bytes, copies, f"encoding {batch} × {samples / sample_rate:,.0f} s of audio",
                             "encode fewer or shorter songs at once (Trim Audio Duration cuts a song)")
        waveform = to_stereo(float_waveform(waveform))
        self._load(window_bytes)
        device = self.patcher.load_device
        progress = comfy.utils.ProgressBar(self.music_vae.count_windows(frames, self.CHUNK_FRAMES, self.OVERLAP_FRAMES))
        latent = self.music_vae.encode_chunked(waveform.to(device), sample_rate, self.CHUNK_FRAMES, self.OVERLAP_FRAMES,
                                               on_window=self._on_window(progress))
        return latent.to(mm.intermediate_device())

    def decode_audio(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, 8, 16, W] -> waveform [B, 2, 4096·W] at 44.1 kHz on the intermediate device."""
        check_song_latent(latent)
        batch, frames = latent.shape[0], latent.shape[-1]
        window_bytes = int(16 * min(frames, self.CHUNK_FRAMES + 2 * self.OVERLAP_FRAMES) * 87000 * 4)
        self._require_memory(window_bytes, 4 * batch * 2 * frames * SAMPLES_PER_FRAME,
                             f"decoding {batch} × {seconds_for_frames(frames):,.0f} s of audio",
                             "decode fewer songs at once (a smaller batch) or shorter ones")
        if not torch.isfinite(latent).all():
            raise ValueError("the latent contains NaN or infinite values, so its audio would be noise or silence: "
                             "sampling diverged (a NaN or very large cfg, shift, guidance or prompt weight?) or the "
                             "checkpoint is damaged")
        self._load(window_bytes)
        progress = comfy.utils.ProgressBar(self.music_vae.count_windows(frames, self.CHUNK_FRAMES, self.OVERLAP_FRAMES))
        audio = self.music_vae.decode_chunked(latent.to(self.patcher.load_device), self.CHUNK_FRAMES,
                                              self.OVERLAP_FRAMES, on_window=self._on_window(progress))
        return audio.to(mm.intermediate_device())

    # ComfyUI's VAE interface (core VAEEncodeAudio / VAEDecodeAudio): channels last.
    def encode(self, samples_btc: torch.Tensor) -> torch.Tensor:
        return self.encode_audio(samples_btc.movedim(-1, 1), SAMPLE_RATE)

    def decode(self, latent: torch.Tensor, vae_options=None) -> torch.Tensor:
        return self.decode_audio(latent).movedim(1, -1)


def load_checkpoint(path, weight_dtype: str = "default") -> tuple:
    """(MODEL, CLIP, VAE) from an ACE-Step v1 checkpoint, each network built with ComfyUI's operations and attention.

    weight_dtype: one of `operations.WEIGHT_DTYPES` for the diffusion model, as ComfyUI's UNETLoader offers them; the
    text encoder and the VAE keep ComfyUI's default weight dtype. Weights go to the offload device; ComfyUI moves
    them when a node runs the model."""
    base_dtype = mm.unet_dtype(supported_dtypes=V1_INFERENCE_DTYPES)
    unet_dtype, compute_dtype, unet_ops = diffusion_operations(weight_dtype, mm.get_torch_device(),
                                                               V1_INFERENCE_DTYPES)
    models = load_ace_step(
        path, dtype={"transformer": unet_dtype, "vae": base_dtype, "text_encoder": base_dtype},
        device=mm.unet_offload_device(), transformer_cls=ComfyCallableTransformer,
        operations={"transformer": unet_ops, "text_encoder": text_encoder_operations(), "vae": vae_operations()},
        attention={"transformer": diffusion_attention, "text_encoder": text_encoder_attention})
    clip = AceStepClip(models.text_encoder, models.tokenizer, LyricTokenizer(comfyui_root=comfyui_root()))
    return model_patcher(models.transformer, compute_dtype), clip, AceStepVae(models.vae)
