"""ACE-Step 1.5's audio VAE: 48 kHz stereo waveform <-> 64-channel latent at 25 frames per second.

An Oobleck autoencoder (Stable Audio Open, arXiv 2407.14358): weight-normed 1-D convolutions, Snake activations
with a per-channel frequency α and magnitude β (BigVGAN's SnakeBeta, arXiv 2206.04658), residual units of dilations
1, 3, 9, and strided (transposed) convolutions of kernel 2·stride between levels. ACE-Step 1.5 uses strides
2·4·4·6·10 = 1920 samples per latent frame (Stable Audio Open: 2·4·4·8·8 at 44.1 kHz). Sources: ComfyUI
(`Comfy-Org/ComfyUI` `comfy/ldm/audio/autoencoder.py` @ a125cd84b054a57729b5eecab930ca9408719832; its `comfy/sd.py`
@ 033046cc4fac82d954c6daedccf1c8128433c4f1 picks strides [2, 4, 4, 6, 10] and 48 kHz when the second decoder
block's transposed kernel is 12), diffusers (`huggingface/diffusers`
`src/diffusers/models/autoencoders/autoencoder_oobleck.py`, v0.38.0, which the original pipeline
`ace-step/ACE-Step-1.5` `acestep/handler.py` @ f30aee4c186c33b7b8a6ea59a4b7fc36f795b49f loads).

Checkpoint layouts (every convolution weight-normed, stored as its two halves):
- "comfyui": ComfyUI's `vae/ace_1.5_vae.safetensors` (stable-audio-tools names, `nn.Sequential` indices:
  `decoder.layers.1.layers.2.layers.1.weight_g`), Snake α/β of shape [C]. The module's own keys are these, with
  each `X.weight_g`/`X.weight_v` pair held fused as `X.weight`.
- "diffusers": the original Hugging Face folder's `vae/diffusion_pytorch_model.safetensors` (`AutoencoderOobleck`:
  `decoder.block.0.res_unit1.conv1.weight_g`), Snake α/β of shape [1, C, 1]. `module_key` maps its names.
Either weight-norm spelling (`weight_g`/`weight_v` or `parametrizations.weight.original0/1`) is read; the loader
fuses the halves with `ace_step.loading.weight_norm`.

Encoding: ComfyUI (`AudioOobleckVAE.encode`, `VAEBottleneck`) and the original pipeline (`tiled_encode`,
`latent_dist.sample()`) both return a sample of the posterior, mean + (softplus(scale) + 1e-4)·N(0, 1), with no
latent scaling; `encode` does the same by default. Long songs run on time tiles widened by the networks' exact
receptive field, so memory stays bounded and the result equals the untiled one up to float rounding.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ...loading.weight_norm import SPELLINGS, fuse_state_dict, parse_key, split_state_dict
from ..operations import TorchOps, cast_to
from ..time_tiles import map_time_tiles

LAYOUTS = ("comfyui", "diffusers")
RESIDUAL_DILATIONS = (1, 3, 9)
RESIDUAL_KERNEL = 7
# Posterior: std = softplus(scale) + POSTERIOR_STD_FLOOR (ComfyUI's vae_sample, diffusers'
# OobleckDiagonalGaussianDistribution).
POSTERIOR_STD_FLOOR = 1e-4
# Snake: x + sin²(e^alpha · x) / (e^beta + SNAKE_EPS), both references' constant.
SNAKE_EPS = 1e-9
# Finest-level [B, width, samples] tensors alive at once at the peak of encode or decode (see `working_bytes`).
ACTIVATION_COPIES = 9


@dataclass(frozen=True)
class OobleckConfig:
    """Sizes of an Oobleck VAE. Level i (i = 0 finest) downsamples by `strides[i]` into
    `channels · channel_multiples[i]` channels; the decoder mirrors it with its own base width."""

    audio_channels: int = 2
    encoder_channels: int = 128
    decoder_channels: int = 128
    latent_channels: int = 64
    channel_multiples: tuple[int, ...] = (1, 2, 4, 8, 16)
    strides: tuple[int, ...] = (2, 4, 4, 6, 10)
    # Not stored in the weights: ACE-Step 1.5's vae/config.json and ComfyUI's sd.py both say 48 kHz.
    sample_rate: int = 48000

    def __post_init__(self):
        object.__setattr__(self, "channel_multiples", tuple(self.channel_multiples))
        object.__setattr__(self, "strides", tuple(self.strides))
        for name in ("audio_channels", "encoder_channels", "decoder_channels", "latent_channels", "sample_rate"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"OobleckConfig.{name} must be a positive integer, got {getattr(self, name)!r}")
        if not self.strides:
            raise ValueError("OobleckConfig.strides must name at least one level")
        if len(self.channel_multiples) != len(self.strides):
            raise ValueError(f"OobleckConfig.channel_multiples has {len(self.channel_multiples)} entries but strides "
                             f"has {len(self.strides)}: give one multiple per level")
        if any(not isinstance(m, int) or m < 1 for m in self.channel_multiples):
            raise ValueError(f"OobleckConfig.channel_multiples must be positive integers, got {self.channel_multiples}")
        # Kernel 2s with padding s/2 maps n samples to exactly n/s (and back to n·s) only for even strides.
        if any(not isinstance(s, int) or s < 2 or s % 2 for s in self.strides):
            raise ValueError(f"OobleckConfig.strides must be even integers >= 2, got {self.strides}")

    @property
    def hop_length(self) -> int:
        """Waveform samples per latent frame."""
        return math.prod(self.strides)

    @property
    def levels(self) -> int:
        return len(self.strides)

    def encoder_widths(self) -> tuple[int, ...]:
        """Channels at the encoder's input conv and after each level."""
        return tuple(self.encoder_channels * m for m in (1,) + self.channel_multiples)

    def decoder_widths(self) -> tuple[int, ...]:
        """Channels at the decoder's output (finest) and before each level, finest first."""
        return tuple(self.decoder_channels * m for m in (1,) + self.channel_multiples)

    @classmethod
    def full_size(cls) -> "OobleckConfig":
        """ACE-Step 1.5's VAE (vae/config.json: encoder_hidden_size 128, decoder_channels 128, 64 latent channels,
        channel_multiples [1, 2, 4, 8, 16], downsampling_ratios [2, 4, 4, 6, 10], 48 kHz)."""
        return cls()

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...]], sample_rate: int = 48000) -> "OobleckConfig":
        """The config whose parameters have these shapes, from a state dict in either layout and either weight-norm
        spelling (or fused). `sample_rate` is not in the weights."""
        layout = detect_layout(shapes)
        levels = count_levels(shapes, layout)
        weights = {}
        for key, shape in shapes.items():
            parsed = parse_key(key)
            if parsed is None or parsed[1] == "v":  # v (the direction) has the fused weight's shape
                key = parsed[0] if parsed else key
                if key.endswith(".weight"):
                    weights[module_key(key, layout, levels)] = tuple(shape)

        def weight(key: str) -> tuple[int, ...]:
            if key not in weights:
                raise ValueError(f"not a complete Oobleck VAE state dict: no weight for {key!r} (module layout)")
            return weights[key]

        audio = weight("encoder.layers.0.weight")[1]
        encoder_channels = weight("encoder.layers.0.weight")[0]
        downs = [weight(f"encoder.layers.{i + 1}.layers.4.weight") for i in range(levels)]
        strides = tuple(w[2] // 2 for w in downs)
        multiples = []
        for i, w in enumerate(downs):
            if w[0] % encoder_channels:
                raise ValueError(f"encoder level {i} has {w[0]} channels, not a multiple of {encoder_channels}")
            multiples.append(w[0] // encoder_channels)
        latent = weight("decoder.layers.0.weight")[1]
        decoder_channels = weight(f"decoder.layers.{levels + 2}.weight")[1]
        if weight(f"encoder.layers.{levels + 2}.weight")[0] != 2 * latent:
            raise ValueError(f"the encoder writes {weight(f'encoder.layers.{levels + 2}.weight')[0]} channels, not "
                             f"mean and scale for the decoder's {latent} latent channels")
        # Decoder level j (decoder.layers.j+1) undoes encoder level levels-1-j: a ConvTranspose1d [in, out, 2s].
        for j in range(levels):
            level = levels - 1 - j
            up = weight(f"decoder.layers.{j + 1}.layers.1.weight")
            widths = [decoder_channels * m for m in [1] + multiples]
            if tuple(up) != (widths[level + 1], widths[level], 2 * strides[level]):
                raise ValueError(f"decoder level {level} ({list(up)}) does not mirror encoder level {level} "
                                 f"(stride {strides[level]}): not an Oobleck VAE this code can build")
        return cls(audio_channels=audio, encoder_channels=encoder_channels, decoder_channels=decoder_channels,
                   latent_channels=latent, channel_multiples=tuple(multiples), strides=strides,
                   sample_rate=sample_rate)


# ---------------------------------------------------------------------------------------------------- key layouts
_LEAVES = ("weight", "bias", "alpha", "beta") + tuple(s[1:] for pair in SPELLINGS.values() for s in pair)


def detect_layout(keys) -> str:
    """"comfyui" or "diffusers", from a state dict's keys (after any prefix strip)."""
    if any(k.startswith(("encoder.layers.", "decoder.layers.")) for k in keys):
        return "comfyui"
    if any(k.startswith(("encoder.block.", "decoder.block.")) for k in keys):
        return "diffusers"
    raise ValueError("not an Oobleck VAE state dict: expected keys like 'decoder.layers.1.layers.0.beta' (ComfyUI's "
                     "ace_1.5_vae.safetensors) or 'decoder.block.0.snake1.beta' (the original vae/ folder)")


def count_levels(keys, layout: str) -> int:
    """Number of down/upsampling levels a state dict's keys describe."""
    prefix = ("encoder.layers.", "decoder.layers.") if layout == "comfyui" else ("encoder.block.", "decoder.block.")
    indices = {int(k[len(p):].split(".")[0]) for k in keys for p in prefix if k.startswith(p)}
    if not indices:
        raise ValueError(f"no Oobleck levels found in a {layout!r}-layout state dict")
    # ComfyUI: layers.0 is the input conv, layers.1..n the levels, then the Snake and the output conv.
    return max(indices) - 2 if layout == "comfyui" else max(indices) + 1


def _diffusers_paths(levels: int) -> dict[str, str]:
    """diffusers module path -> this module's path, for `levels` levels (diffusers' `AutoencoderOobleck` names its
    parts; ComfyUI's, and so ours, are `nn.Sequential` indices)."""
    paths = {}
    for side in ("encoder", "decoder"):
        paths[f"{side}.conv1"] = f"{side}.layers.0"
        paths[f"{side}.snake1"] = f"{side}.layers.{levels + 1}"
        paths[f"{side}.conv2"] = f"{side}.layers.{levels + 2}"
        # Encoder blocks: three residual units, Snake, downsampler; decoder blocks: Snake, upsampler, three units.
        first_unit, named = (0, {"snake1": 3, "conv1": 4}) if side == "encoder" else (2, {"snake1": 0, "conv_t1": 1})
        for i in range(levels):
            theirs, ours = f"{side}.block.{i}", f"{side}.layers.{i + 1}.layers"
            for name, slot in named.items():
                paths[f"{theirs}.{name}"] = f"{ours}.{slot}"
            for unit in range(3):
                for slot, name in enumerate(("snake1", "conv1", "snake2", "conv2")):
                    paths[f"{theirs}.res_unit{unit + 1}.{name}"] = f"{ours}.{first_unit + unit}.layers.{slot}"
    return paths


def _split_leaf(key: str) -> tuple[str, str]:
    for leaf in sorted(_LEAVES, key=len, reverse=True):
        if key.endswith("." + leaf):
            return key[: -len(leaf) - 1], leaf
    raise ValueError(f"{key!r} is not an Oobleck VAE parameter (expected it to end in one of {_LEAVES})")


def module_key(file_key: str, layout: str, levels: int) -> str:
    """This module's name for a checkpoint key of `layout` ("comfyui" names are the module's own). The parameter
    name at the end (`weight_g`, `parametrizations.weight.original0`, `alpha`, ...) is kept, so weight-norm halves
    still need fusing (`ace_step.loading.weight_norm.fuse_state_dict`)."""
    if layout == "comfyui":
        return file_key
    if layout != "diffusers":
        raise ValueError(f"unknown layout {layout!r}: expected one of {LAYOUTS}")
    path, leaf = _split_leaf(file_key)
    paths = _diffusers_paths(levels)
    if path not in paths:
        raise ValueError(f"{file_key!r} is not a parameter of a {levels}-level diffusers AutoencoderOobleck")
    return f"{paths[path]}.{leaf}"


def file_shapes(config: OobleckConfig, layout: str, spelling: str = "weight_norm") -> dict[str, tuple[int, ...]]:
    """Every key of a checkpoint of `config` in `layout`, with its shape, in module order (built on `meta`: free at
    full size). Each conv weight appears as its weight-norm halves in `spelling` (see `weight_norm.SPELLINGS`)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: expected one of {LAYOUTS}")
    g_suffix, v_suffix = SPELLINGS[spelling]
    inverse = {ours: theirs for theirs, ours in _diffusers_paths(config.levels).items()}
    out = {}
    for name, p in OobleckVAE(config, device="meta").named_parameters():
        path, leaf = _split_leaf(name)
        path = path if layout == "comfyui" else inverse[path]
        shape = tuple(p.shape)
        if leaf == "weight":
            # torch's weight norm (dim 0) keeps one magnitude per row of the stored weight, also for transposed convs.
            out[path + g_suffix] = (shape[0],) + (1,) * (len(shape) - 1)
            out[path + v_suffix] = shape
        elif layout == "diffusers" and leaf in ("alpha", "beta"):
            out[f"{path}.{leaf}"] = (1,) + shape + (1,)  # Snake1d's [1, C, 1]
        else:
            out[f"{path}.{leaf}"] = shape
    return out


def key_map(config: OobleckConfig, layout: str, spelling: str = "weight_norm") -> dict[str, str]:
    """Checkpoint key -> module key (before fusing) for every key of a `layout` checkpoint of `config`."""
    return {key: module_key(key, layout, config.levels) for key in file_shapes(config, layout, spelling)}


def to_module_state_dict(state_dict: Mapping[str, torch.Tensor], layout: Optional[str] = None) -> dict:
    """A checkpoint's tensors (either layout, either weight-norm spelling) as this module's state dict: keys
    renamed, Snake α/β flattened to [C], weight-norm halves fused."""
    layout = layout or detect_layout(state_dict)
    levels = count_levels(state_dict, layout)
    renamed = {}
    for key, value in state_dict.items():
        key = module_key(key, layout, levels)
        renamed[key] = value.reshape(-1) if key.endswith((".alpha", ".beta")) else value
    return fuse_state_dict(renamed)


def to_file_state_dict(state_dict: Mapping[str, torch.Tensor], config: OobleckConfig, layout: str,
                       spelling: str = "weight_norm") -> dict:
    """Inverse of `to_module_state_dict`: this module's state dict in a checkpoint layout (to write test files)."""
    split = split_state_dict(state_dict, [k for k in state_dict if k.endswith(".weight")], spelling)
    shapes = file_shapes(config, layout, spelling)
    inverse = {module_key(k, layout, config.levels): k for k in shapes}
    return {inverse[k]: v.reshape(shapes[inverse[k]]) for k, v in split.items()}


# ---------------------------------------------------------------------------------------------- receptive fields
def _residual_reach() -> int:
    """Samples on each side one residual stack (three units, kernel 7, dilations 1, 3, 9) reads."""
    return sum((RESIDUAL_KERNEL - 1) // 2 * d for d in RESIDUAL_DILATIONS)


def decoder_context(config: OobleckConfig) -> int:
    """Latent frames on each side of output sample t's frame (t // hop) that t depends on.

    Walked back from the output: the output conv (kernel 7), then per level, finest first, its residual stack and
    its transposed conv (kernel 2s, stride s, padding s/2: output t reads inputs i with 0 <= t + s/2 - i·s < 2s),
    then the input conv (kernel 7)."""
    reach = 3
    for s in config.strides:
        reach += _residual_reach()
        pad = s // 2
        # Worst case over t's offset u = t mod s within its source frame.
        reach = max((s - 1 + reach + pad) // s, (reach - pad + 2 * s - 1) // s)
    return reach + 3


def encoder_context(config: OobleckConfig) -> int:
    """Waveform samples on each side of latent frame j's samples [j·hop, (j+1)·hop) that frame j depends on.

    Walked back from the latent: the output conv (kernel 3), then per level, coarsest first, its downsampler
    (kernel 2s, stride s, padding s/2: reaches s/2 past its source samples on each side) and residual stack, then
    the input conv (kernel 7)."""
    reach = 1
    for s in reversed(config.strides):
        reach = reach * s + s // 2 + _residual_reach()
    return reach + 3


# ---------------------------------------------------------------------------------------------------- network
class Snake(nn.Module):
    """x + sin²(α·x)/β per channel, α = e^alpha and β = e^beta (log-scale parameters, as the checkpoint stores
    them), + 1e-9 against division by zero: BigVGAN's SnakeBeta (arXiv 2206.04658) with Snake's form (Ziyin et al.,
    arXiv 2006.08195)."""

    def __init__(self, channels: int, dtype=None, device=None):
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(channels, dtype=dtype, device=device))
        self.beta = nn.Parameter(torch.zeros(channels, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The per-channel factors in float32 (C values), then in the activations' dtype.
        alpha = cast_to(self.alpha, torch.float32, x.device).exp()
        inv_beta = (cast_to(self.beta, torch.float32, x.device).exp() + SNAKE_EPS).reciprocal()
        alpha, inv_beta = alpha.to(x.dtype)[:, None], inv_beta.to(x.dtype)[:, None]
        # In place on one temporary: at the finest level each [B, C, T] copy is the largest thing alive.
        return (x * alpha).sin_().pow_(2).mul_(inv_beta).add_(x)


class ResidualUnit(nn.Module):
    """x + conv1x1(snake(conv7_dilated(snake(x))))."""

    def __init__(self, channels: int, dilation: int, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        pad = (RESIDUAL_KERNEL - 1) // 2 * dilation
        self.layers = nn.Sequential(
            Snake(channels, dtype, device),
            operations.Conv1d(channels, channels, RESIDUAL_KERNEL, dilation=dilation, padding=pad, dtype=dtype,
                              device=device),
            Snake(channels, dtype, device),
            operations.Conv1d(channels, channels, 1, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).add_(x)


def _residual_stack(channels: int, dtype, device, operations) -> list[nn.Module]:
    return [ResidualUnit(channels, d, dtype, device, operations) for d in RESIDUAL_DILATIONS]


class EncoderBlock(nn.Module):
    """Residual units, Snake, then a conv of kernel 2s and stride s: n samples -> n/s."""

    def __init__(self, cin: int, cout: int, stride: int, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        self.layers = nn.Sequential(
            *_residual_stack(cin, dtype, device, operations),
            Snake(cin, dtype, device),
            operations.Conv1d(cin, cout, 2 * stride, stride=stride, padding=stride // 2, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class DecoderBlock(nn.Module):
    """Snake, a transposed conv of kernel 2s and stride s (n samples -> n·s), then residual units."""

    def __init__(self, cin: int, cout: int, stride: int, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        self.layers = nn.Sequential(
            Snake(cin, dtype, device),
            operations.ConvTranspose1d(cin, cout, 2 * stride, stride=stride, padding=stride // 2, dtype=dtype,
                                       device=device),
            *_residual_stack(cout, dtype, device, operations))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class OobleckEncoder(nn.Module):
    """waveform [B, audio_channels, T] -> [B, 2·latent_channels, T / hop]: posterior mean, then scale."""

    def __init__(self, config: OobleckConfig, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        w = config.encoder_widths()
        self.layers = nn.Sequential(
            operations.Conv1d(config.audio_channels, w[0], 7, padding=3, dtype=dtype, device=device),
            *(EncoderBlock(w[i], w[i + 1], s, dtype, device, operations) for i, s in enumerate(config.strides)),
            Snake(w[-1], dtype, device),
            operations.Conv1d(w[-1], 2 * config.latent_channels, 3, padding=1, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class OobleckDecoder(nn.Module):
    """latent [B, latent_channels, F] -> waveform [B, audio_channels, F · hop] (no output tanh: ACE-Step 1.5's
    config has none)."""

    def __init__(self, config: OobleckConfig, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        w = config.decoder_widths()
        levels = range(config.levels - 1, -1, -1)  # coarsest first
        self.layers = nn.Sequential(
            operations.Conv1d(config.latent_channels, w[-1], 7, padding=3, dtype=dtype, device=device),
            *(DecoderBlock(w[i + 1], w[i], config.strides[i], dtype, device, operations) for i in levels),
            Snake(w[0], dtype, device),
            operations.Conv1d(w[0], config.audio_channels, 7, padding=3, bias=False, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class OobleckVAE(nn.Module):
    """ACE-Step 1.5's audio VAE (module docstring). Inference only (activations are overwritten in place).

    `tile_frames`: latent frames per time tile (each widened by the receptive field on both sides: `decode` needs
    9 frames, `encode` 7), about 1.3 GB of float32 activations per item at full size whatever the song's length;
    None runs whole songs in one piece, about 13 GB per minute of audio per item (`working_bytes`)."""

    tile_frames: Optional[int] = 128

    def __init__(self, config: OobleckConfig, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        self.config = config
        self.encoder = OobleckEncoder(config, dtype, device, operations)
        self.decoder = OobleckDecoder(config, dtype, device, operations)
        self.encoder_context = encoder_context(config)
        self.decoder_context = decoder_context(config)

    def posterior(self, waveform: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the latent posterior, each [B, latent_channels, T / hop], for a waveform
        [B, audio_channels, T] at `config.sample_rate` (T a multiple of `config.hop_length`)."""
        c, hop = self.config, self.config.hop_length
        if waveform.ndim != 3 or waveform.shape[1] != c.audio_channels:
            raise ValueError(f"waveform must be [batch, {c.audio_channels}, samples], got {list(waveform.shape)}")
        if waveform.shape[-1] < hop or waveform.shape[-1] % hop:
            raise ValueError(f"waveform has {waveform.shape[-1]} samples: the VAE encodes a positive multiple of "
                             f"{hop} ({hop} samples per latent frame at {c.sample_rate} Hz); crop or pad it first "
                             f"(ComfyUI's VAE Encode crops centred: `crop_to_frames`)")
        if self.tile_frames is None:
            moments = self.encoder(waveform)
        else:
            moments = map_time_tiles(self.encoder, waveform, core=self.tile_frames * hop,
                                     context=self.encoder_context, stride=hop)
        mean, scale = moments.chunk(2, dim=1)
        return mean, F.softplus(scale) + POSTERIOR_STD_FLOOR

    def encode(self, waveform: torch.Tensor, *, sample: bool = True,
               generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Latent [B, latent_channels, T / hop] of a waveform [B, audio_channels, T]: a posterior sample (as ComfyUI
        and the original pipeline encode; noise drawn as diffusers' `randn_tensor` draws it, from `generator` or
        torch's global generator), or its mean when `sample` is False."""
        mean, std = self.posterior(waveform)
        if not sample:
            return mean
        noise = torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                            device=generator.device if generator is not None else mean.device)
        return mean + std * noise.to(mean.device)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """Waveform [B, audio_channels, F · hop] at `config.sample_rate` of a latent [B, latent_channels, F]."""
        c = self.config
        if latent.ndim != 3 or latent.shape[1] != c.latent_channels or latent.shape[-1] < 1:
            raise ValueError(f"latent must be [batch, {c.latent_channels}, frames] with frames >= 1, got "
                             f"{list(latent.shape)}")
        if self.tile_frames is None:
            return self.decoder(latent)
        return map_time_tiles(self.decoder, latent, core=self.tile_frames, context=self.decoder_context,
                              scale=self.config.hop_length)

    def working_bytes(self, batch: int, frames: int, *, encode: bool = False,
                      dtype: Optional[torch.dtype] = None) -> int:
        """Peak memory of `decode` (or `encode`) of `frames` latent frames beyond the weights, activations in `dtype`
        (default: the weights'): per tile (the whole song untiled) ACTIVATION_COPIES [batch, width, samples] tensors
        of the finest level, plus the result. The finest two levels hold the most (width w at T samples, 2w at T/2),
        and there a block's input stays alive under the residual unit's input, its Snake and conv outputs and the
        conv's workspace (a CPU transposed conv needs about 3.4 copies of its output); measured at 5 to 7 (tests:
        the tiny model with full-size allocator behaviour), so the estimate runs 20 to 80 % above."""
        c = self.config
        element = torch.empty((), dtype=dtype or next(self.parameters()).dtype).element_size()
        if self.tile_frames is None:
            tile = frames
        else:
            context = self.decoder_context if not encode else -(-self.encoder_context // c.hop_length)
            tile = min(frames, self.tile_frames + 2 * context)
        width = c.encoder_channels if encode else c.decoder_channels
        # encode: the moments, std, noise and sample; decode: the waveform.
        result = 6 * c.latent_channels if encode else c.audio_channels * c.hop_length
        return element * batch * (ACTIVATION_COPIES * width * tile * c.hop_length + result * frames)


def crop_to_frames(waveform: torch.Tensor, hop_length: int) -> torch.Tensor:
    """The centred stretch of a [..., T] waveform that is a whole number of latent frames long, as ComfyUI's VAE
    Encode crops (`comfy/sd.py` `vae_encode_crop_pixels`: offset (T mod hop) // 2)."""
    length = waveform.shape[-1] // hop_length * hop_length
    if length == 0:
        raise ValueError(f"a waveform of {waveform.shape[-1]} samples is shorter than one latent frame "
                         f"({hop_length} samples)")
    start = (waveform.shape[-1] - length) // 2
    return waveform[..., start:start + length]
