"""The one adapter between ComfyUI and `ace_step`: our networks wrapped in ComfyUI's model management.

- MODEL: ComfyUI's own ACE-Step `BaseModel` (flow matching, shift 3, ACE latent format, its condition plumbing) whose
  diffusion model is our transformer, in a ModelPatcher. KSampler, ModelSamplingSD3, LatentApplyOperationCFG and
  LoRA patching then work as with the native model.
- CLIP and VAE: objects with the methods ComfyUI's CLIP/VAE expose to nodes (`tokenize`, `encode_from_tokens_scheduled`,
  `encode`, `decode`), so core nodes such as TextEncodeAceStepAudio, VAEEncodeAudio and VAEDecodeAudio take them too.
"""
from __future__ import annotations

import comfy.latent_formats
import comfy.model_base
import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension
import comfy.supported_models
import comfy.utils
import torch

from ..ace_step.sampling.condition_cache import ConditionCache
from ..ace_step.models.v1.transformer import ACEStepTransformer
from ..ace_step.models.v1.umt5 import encode_token_weights, is_weighted
from .audio_input import float_waveform, to_stereo
from .memory import require_memory

LATENT_SAMPLES_PER_FRAME = 4096  # 8 mel frames of hop 512 at 44.1 kHz
LATENT_CHANNELS, LATENT_HEIGHT = 8, 16
SAMPLE_RATE = 44100
TRAINED_LYRIC_TOKENS = 4096  # the longest lyrics ACE-Step v1 was trained on (tech report)


class ComfyCallableTransformer(ACEStepTransformer):
    """Our transformer, called the way ComfyUI's ACE-Step BaseModel calls its diffusion model.

    Within a sampling run the condition encoders and the cross-attention keys/values run once per distinct condition,
    not at every step (ace_step.condition_cache); the patcher's pre-run and cleanup callbacks bracket the run."""

    def forward(self, x, timestep, context=None, lyric_token_idx=None, lyrics_strength=1.0, speaker_embeds=None,
                transformer_options=None, control=None, **kwargs):
        # ComfyUI's own layers check its interrupt flag on every op; plain torch layers never do, so once per call.
        mm.throw_exception_if_processing_interrupted()
        check_song_latent(x)
        require_transformer_memory(self, x.shape[0], x.shape[-1], 0 if context is None else context.shape[1],
                                   0 if lyric_token_idx is None else lyric_token_idx.shape[-1])
        # ComfyUI always sends zero speaker embeddings of the full model's width; ours are zeros of the right width.
        cache = getattr(self, "condition_cache", None)
        if cache is None or context is None or lyric_token_idx is None or isinstance(lyrics_strength, torch.Tensor):
            return super().forward(x, timestep, text_hidden=context, lyric_ids=lyric_token_idx,
                                   lyrics_strength=lyrics_strength)
        cond, cross_kv = cache.lookup(self, context, lyric_token_idx, float(lyrics_strength))
        return self.decode(x, timestep, cond, cross_kv=cross_kv)

    def start_run(self, patcher):
        """Before sampling (the patcher's pre-run). ComfyUI's weight hooks (a LoRA scheduled on a conditioning) patch
        weights in place between steps, so a run with any is not cached."""
        self.condition_cache = None if patcher.hook_patches else ConditionCache()

    def end_run(self, patcher):
        """After sampling (the patcher's cleanup): frees the run's cache."""
        self.condition_cache = None


def require_transformer_memory(transformer: ACEStepTransformer, batch: int, frames: int, text_tokens: int,
                               lyric_tokens: int):
    """Refuses a transformer call (condition encoding, denoising or both) the machine cannot hold, naming the
    part that makes it too big."""
    needed = transformer.working_bytes(batch, frames, text_tokens, lyric_tokens)
    if transformer.lyric_encoder.working_bytes(lyric_tokens, batch) > needed / 2:
        what = f"encoding {lyric_tokens:,} lyric tokens (the lyric encoder's attention grows with their square)"
        fix = (f"shorten the lyrics: ACE-Step v1 was trained on up to {TRAINED_LYRIC_TOKENS:,} tokens, and a "
               "song's lyrics are rarely above 2,000")
    else:
        seconds = frames * LATENT_SAMPLES_PER_FRAME / SAMPLE_RATE
        what = f"sampling {batch} × {frames:,} latent frames ({seconds:,.0f} s)"
        fix = "lower the batch size or the song length"
    require_memory(needed, transformer.device, what, fix)


def model_patcher(transformer: ACEStepTransformer) -> comfy.model_patcher.ModelPatcher:
    """MODEL for ComfyUI's samplers, with our transformer as its diffusion model."""
    model_config = comfy.supported_models.ACEStep({"audio_model": "ace", "disable_unet_model_creation": True})
    model_config.set_inference_dtype(transformer.dtype, None)
    base = comfy.model_base.ACEStep(model_config, device=transformer.device)
    # The same module, re-typed so ComfyUI's call signature reaches our forward; parameters are untouched.
    transformer.__class__ = ComfyCallableTransformer
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
        return {"umt5base": self.text_tokenizer.encode_with_weights(text), "lyrics": self.lyric_tokenizer.encode(lyrics)}

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
    """Refuses what is not an ACE-Step song latent [batch, 8, 16, frames] (an image latent, another audio model's),
    before it reaches a layer whose shape error would say nothing useful."""
    shape = tuple(latent.shape) if isinstance(latent, torch.Tensor) else None
    if shape is None or len(shape) != 4 or shape[1:3] != (LATENT_CHANNELS, LATENT_HEIGHT) or 0 in shape:
        raise ValueError(f"this LATENT ({'shape ' + str(list(shape)) if shape is not None else type(latent).__name__})"
                         f" is not an ACE-Step song latent [batch, {LATENT_CHANNELS}, {LATENT_HEIGHT}, frames]: it "
                         "comes from an image or another audio model, or is empty; connect an ACE-Step latent (Empty "
                         "ACE-Step Latent Audio, Audio to ACE-Step Latent, or a sampler fed by them)")


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
        window_bytes = int(min(samples, self.CHUNK_FRAMES * LATENT_SAMPLES_PER_FRAME) * 330 * 4)
        # float32 copies of the input, then of the stereo signal resampled and padded (two alive at once).
        copies = 4 * batch * (channels * samples + 2 * 2 * frames * LATENT_SAMPLES_PER_FRAME)
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
        self._require_memory(window_bytes, 4 * batch * 2 * frames * LATENT_SAMPLES_PER_FRAME,
                             f"decoding {batch} × {frames * LATENT_SAMPLES_PER_FRAME / SAMPLE_RATE:,.0f} s of audio",
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
