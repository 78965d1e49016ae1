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
import comfy.supported_models
import comfy.utils
import torch

from ..ace_step.transformer import ACEStepTransformer
from ..ace_step.umt5 import encode_token_weights

LATENT_SAMPLES_PER_FRAME = 4096  # 8 mel frames of hop 512 at 44.1 kHz
SAMPLE_RATE = 44100


class ComfyCallableTransformer(ACEStepTransformer):
    """Our transformer, called the way ComfyUI's ACE-Step BaseModel calls its diffusion model."""

    def forward(self, x, timestep, context=None, lyric_token_idx=None, lyrics_strength=1.0, speaker_embeds=None,
                transformer_options=None, control=None, **kwargs):
        # ComfyUI always sends zero speaker embeddings of the full model's width; ours are zeros of the right width.
        return super().forward(x, timestep, text_hidden=context, lyric_ids=lyric_token_idx,
                               lyrics_strength=lyrics_strength)


def model_patcher(transformer: ACEStepTransformer) -> comfy.model_patcher.ModelPatcher:
    """MODEL for ComfyUI's samplers, with our transformer as its diffusion model."""
    model_config = comfy.supported_models.ACEStep({"audio_model": "ace", "disable_unet_model_creation": True})
    model_config.set_inference_dtype(transformer.dtype, None)
    base = comfy.model_base.ACEStep(model_config, device=transformer.device)
    # The same module, re-typed so ComfyUI's call signature reaches our forward; parameters are untouched.
    transformer.__class__ = ComfyCallableTransformer
    base.diffusion_model = transformer
    return comfy.model_patcher.ModelPatcher(base, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


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

    def _on_window(self, progress):
        def step(done, total):
            mm.throw_exception_if_processing_interrupted()
            progress.update_absolute(done, total)
        return step

    def encode_audio(self, waveform: torch.Tensor, sample_rate: int) -> torch.Tensor:
        """[B, 2, T] at any rate -> latent [B, 8, 16, ceil(T·44100/sr / 4096)] on the intermediate device."""
        self._load(int(min(waveform.shape[-1], self.CHUNK_FRAMES * LATENT_SAMPLES_PER_FRAME) * 330 * 4))
        device = self.patcher.load_device
        frames = self.music_vae.latent_frames(-(-waveform.shape[-1] * SAMPLE_RATE // sample_rate))
        progress = comfy.utils.ProgressBar(self.music_vae.count_windows(frames, self.CHUNK_FRAMES, self.OVERLAP_FRAMES))
        latent = self.music_vae.encode_chunked(waveform.to(device), sample_rate, self.CHUNK_FRAMES, self.OVERLAP_FRAMES,
                                               on_window=self._on_window(progress))
        return latent.to(mm.intermediate_device())

    def decode_audio(self, latent: torch.Tensor) -> torch.Tensor:
        """latent [B, 8, 16, W] -> waveform [B, 2, 4096·W] at 44.1 kHz on the intermediate device."""
        self._load(int(16 * min(latent.shape[-1], self.CHUNK_FRAMES + 2 * self.OVERLAP_FRAMES) * 87000 * 4))
        progress = comfy.utils.ProgressBar(self.music_vae.count_windows(latent.shape[-1], self.CHUNK_FRAMES,
                                                                        self.OVERLAP_FRAMES))
        audio = self.music_vae.decode_chunked(latent.to(self.patcher.load_device), self.CHUNK_FRAMES,
                                              self.OVERLAP_FRAMES, on_window=self._on_window(progress))
        return audio.to(mm.intermediate_device())

    # ComfyUI's VAE interface (core VAEEncodeAudio / VAEDecodeAudio): channels last.
    def encode(self, samples_btc: torch.Tensor) -> torch.Tensor:
        return self.encode_audio(samples_btc.movedim(-1, 1), SAMPLE_RATE)

    def decode(self, latent: torch.Tensor, vae_options=None) -> torch.Tensor:
        return self.decode_audio(latent).movedim(1, -1)
