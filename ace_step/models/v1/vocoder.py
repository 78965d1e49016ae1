"""ADaMoS HiFi-GAN vocoder of ACE-Step v1: log-mel [B, 128, F] at 44.1 kHz / hop 512 → waveform [B, 1, 512·F].

Two parts (keys as in the checkpoint's `vae.vocoder.*` without the prefix):
- `backbone`: a 1-D ConvNeXt (Fish-Audio style) that turns the mel into 512 feature channels per frame. Stem conv k7
  with replicate padding + channels-first LayerNorm, then 4 stages (widths 128/256/384/512, depths 3/3/9/3) separated
  by LayerNorm + 1×1 conv, each block DWConv k7 → LayerNorm → Linear 4× → GELU → Linear → ×γ → residual; a final
  LayerNorm.
- `head`: a HiFi-GAN generator. conv_pre k13, then 7 transposed-conv upsamplers (×4,4,2,2,2,2,2 = 512 = hop, SiLU
  before each) each followed by the average of 4 multi-receptive-field ResBlock1s (kernels 3,7,11,13, dilations
  1,3,5), then SiLU → conv_post k13 → tanh.

The checkpoint stores the head's convolutions weight-normalised (`weight_g`/`weight_v` in older ComfyUI saves,
`parametrizations.weight.original0/1` in newer ones). This module holds plain, already fused `weight`s (the loader
fuses them with `ace_step.loading.weight_norm`); `weight_norm_keys` names them and `checkpoint_shapes` describes the
file layout.
The analysis mel (`mel_transform`, used by the VAE encoder side) holds no tensors; the file's two mel buffers are
derived data, listed by `unused_checkpoint_shapes`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ...audio.dsp import LogMelSpectrogram, MelConfig
from ...loading import weight_norm
from ..operations import TorchOps, cast_to, with_conv_forward
from ..time_tiles import map_time_tiles


@dataclass
class VocoderConfig:
    n_mels: int = 128
    backbone_dims: tuple[int, ...] = (128, 256, 384, 512)
    backbone_depths: tuple[int, ...] = (3, 3, 9, 3)
    backbone_kernel: int = 7
    upsample_initial_channel: int = 1024
    upsample_rates: tuple[int, ...] = (4, 4, 2, 2, 2, 2, 2)
    upsample_kernels: tuple[int, ...] = (8, 8, 4, 4, 4, 4, 4)
    resblock_kernels: tuple[int, ...] = (3, 7, 11, 13)
    resblock_dilations: tuple[int, ...] = (1, 3, 5)  # the same for every ResBlock1
    pre_conv_kernel: int = 13
    post_conv_kernel: int = 13
    mel: MelConfig = field(default_factory=MelConfig)

    def __post_init__(self):
        for name in ("backbone_dims", "backbone_depths", "upsample_rates", "upsample_kernels", "resblock_kernels",
                     "resblock_dilations"):
            setattr(self, name, tuple(getattr(self, name)))
        if len(self.backbone_dims) != len(self.backbone_depths):
            raise ValueError("backbone_dims and backbone_depths differ in length")
        if len(self.upsample_rates) != len(self.upsample_kernels):
            raise ValueError("upsample_rates and upsample_kernels differ in length")
        hop = 1
        for r in self.upsample_rates:
            hop *= r
        if hop != self.mel.hop_length:
            raise ValueError(f"the upsampling rates multiply to {hop}, but the mel hop is {self.mel.hop_length}")
        if self.upsample_initial_channel % 2 ** len(self.upsample_rates):
            raise ValueError("upsample_initial_channel must stay a whole number of channels after every halving")
        if self.mel.n_mels != self.n_mels:
            raise ValueError("n_mels differs from the analysis mel's n_mels")

    @property
    def hop_length(self) -> int:
        return self.mel.hop_length

    @classmethod
    def full_size(cls) -> "VocoderConfig":
        return cls()

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> "VocoderConfig":
        """Infers the config from a vocoder key → shape mapping, in any of the three weight layouts.

        Not stored in shapes, and fixed by rule: each upsampling rate is kernel // 2 (HiFi-GAN's k = 2u with padding
        (k−u)/2, true for every upsampler of the real model), the ResBlock1 dilations are 1, 3, 5, … (n convs take
        the first n odd numbers),
        and the analysis mel keeps the real values (44.1 kHz, n_fft 2048, hop 512, 40 Hz–16 kHz) with n_mels from the
        stem.
        """
        fused = {}
        for key, shape in shapes.items():  # a weight-normed conv has its weight's shape in v
            parsed = weight_norm.parse_key(key)
            if parsed is None or parsed[1] == "v":
                fused[key if parsed is None else parsed[0]] = tuple(shape)
        shapes = fused

        def count(pattern: str) -> int:
            return len({m.group(1) for k in shapes if (m := re.match(pattern, k))})

        n_stages = count(r"backbone\.stages\.(\d+)\.")
        dims = tuple(shapes[f"backbone.stages.{i}.0.gamma"][0] for i in range(n_stages))
        depths = tuple(count(rf"backbone\.stages\.{i}\.(\d+)\.") for i in range(n_stages))
        n_ups = count(r"head\.ups\.(\d+)\.")
        kernels = tuple(shapes[f"head.ups.{i}.weight"][-1] for i in range(n_ups))
        n_res = count(r"head\.resblocks\.(\d+)\.")
        per_level = n_res // n_ups
        res_kernels = tuple(shapes[f"head.resblocks.{j}.convs1.0.weight"][-1] for j in range(per_level))
        n_dil = count(r"head\.resblocks\.0\.convs1\.(\d+)\.")
        stem = shapes["backbone.channel_layers.0.0.weight"]
        return cls(
            n_mels=stem[1],
            backbone_dims=dims,
            backbone_depths=depths,
            backbone_kernel=shapes["backbone.stages.0.0.dwconv.weight"][-1],
            upsample_initial_channel=shapes["head.conv_pre.weight"][0],
            upsample_rates=tuple(k // 2 for k in kernels),
            upsample_kernels=kernels,
            resblock_kernels=res_kernels,
            resblock_dilations=tuple(2 * i + 1 for i in range(n_dil)),
            pre_conv_kernel=shapes["head.conv_pre.weight"][-1],
            post_conv_kernel=shapes["head.conv_post.weight"][-1],
            mel=MelConfig(n_mels=stem[1]),
        )


# --------------------------------------------------------------------------------------------------------------------
# Checkpoint layout helpers (weight norm)

def weight_norm_keys(config: VocoderConfig) -> list[str]:
    """The module keys (fused `…weight`) of the weight-normalised convolutions: conv_pre, ups, resblocks, conv_post."""
    keys = ["head.conv_pre.weight"]
    keys += [f"head.ups.{i}.weight" for i in range(len(config.upsample_rates))]
    n_res = len(config.upsample_rates) * len(config.resblock_kernels)
    keys += [f"head.resblocks.{j}.{c}.{m}.weight" for j in range(n_res) for c in ("convs1", "convs2")
             for m in range(len(config.resblock_dilations))]
    keys.append("head.conv_post.weight")
    return keys


def unused_checkpoint_shapes(config: VocoderConfig) -> dict[str, tuple[int, ...]]:
    """File tensors the module never loads: the analysis mel's window and filterbank (recomputed in code)."""
    return {
        "mel_transform.mel_scale.fb": (config.mel.n_fft // 2 + 1, config.mel.n_mels),
        "mel_transform.spectrogram.window": (config.mel.win_length,),
    }


def checkpoint_shapes(config: VocoderConfig, variant: str = "weight_norm") -> dict[str, tuple[int, ...]]:
    """Every vocoder tensor of a file in the real layout, unused mel buffers included.

    variant "weight_norm": `weight_g` [out, 1, …] / `weight_v`; "parametrizations": `original0` / `original1`;
    "fused": plain `weight` (this module's own layout).
    """
    module_shapes = {k: tuple(v.shape) for k, v in Vocoder(config, device="meta").state_dict().items()}
    if variant != "fused":
        g_suffix, v_suffix = weight_norm.SPELLINGS[variant]
        for key in weight_norm_keys(config):
            shape = module_shapes.pop(key)
            base = key[: -len(".weight")]
            module_shapes[base + g_suffix] = (shape[0],) + (1,) * (len(shape) - 1)
            module_shapes[base + v_suffix] = shape
    module_shapes.update(unused_checkpoint_shapes(config))
    return module_shapes


# --------------------------------------------------------------------------------------------------------------------
# Backbone (ConvNeXt)


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of [B, C, T] (eps 1e-6)."""

    def __init__(self, channels: int, eps: float = 1e-6, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(channels, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = cast_to(self.weight, x.dtype, x.device), cast_to(self.bias, x.dtype, x.device)
        return F.layer_norm(x.transpose(1, 2), (x.shape[1],), weight, bias, self.eps).transpose(1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, kernel_size: int, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        self.dwconv = operations.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim, dtype=dtype,
                                        device=device)
        self.norm = operations.LayerNorm(dim, eps=1e-6, dtype=dtype, device=device)
        self.pwconv1 = operations.Linear(dim, 4 * dim, dtype=dtype, device=device)
        self.pwconv2 = operations.Linear(4 * dim, dim, dtype=dtype, device=device)
        self.gamma = nn.Parameter(torch.ones(dim, dtype=dtype, device=device))  # layer scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(self.dwconv(x).transpose(1, 2))
        y = self.pwconv2(F.gelu(self.pwconv1(y))) * cast_to(self.gamma, y.dtype, y.device)
        return x + y.transpose(1, 2)


class ConvNeXtBackbone(nn.Module):
    def __init__(self, config: VocoderConfig, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        dims, k = config.backbone_dims, config.backbone_kernel
        stem = nn.Sequential(
            operations.Conv1d(config.n_mels, dims[0], k, padding=k // 2, padding_mode="replicate", dtype=dtype,
                              device=device),
            ChannelsFirstLayerNorm(dims[0], dtype=dtype, device=device),
        )
        transitions = [nn.Sequential(ChannelsFirstLayerNorm(dims[i], dtype=dtype, device=device),
                                     operations.Conv1d(dims[i], dims[i + 1], 1, dtype=dtype, device=device))
                       for i in range(len(dims) - 1)]
        self.channel_layers = nn.ModuleList([stem] + transitions)
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(d, k, dtype, device, operations) for _ in range(depth)))
            for d, depth in zip(dims, config.backbone_depths)
        )
        self.norm = ChannelsFirstLayerNorm(dims[-1], dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for transition, stage in zip(self.channel_layers, self.stages):
            x = stage(transition(x))
        return self.norm(x)


# --------------------------------------------------------------------------------------------------------------------
# Head (HiFi-GAN generator)


def _conv1d_any_layout(self, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """This 1-D convolution on [B, C, T], or on [B, C, 1, T] (channels-last time tiles) as a 2-D one."""
    if x.ndim == 3:
        return F.conv1d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
    return F.conv2d(x, weight.unsqueeze(2), bias, padding=(0, self.padding[0]), dilation=(1, self.dilation[0]),
                    groups=self.groups)


class ResBlock1(nn.Module):
    """Three (SiLU → dilated conv → SiLU → conv) residual steps at one kernel size.

    Takes [B, C, T], or [B, C, 1, T] (the layout of the head's time tiles, run as 2-D convolutions)."""

    def __init__(self, channels: int, kernel_size: int, dilations: tuple[int, ...], dtype=None, device=None,
                 operations=TorchOps):
        super().__init__()
        conv = with_conv_forward(operations.Conv1d, _conv1d_any_layout, "Conv1dAnyLayout")
        self.convs1 = nn.ModuleList(
            conv(channels, channels, kernel_size, dilation=d, padding=d * (kernel_size - 1) // 2, dtype=dtype,
                 device=device)
            for d in dilations
        )
        self.convs2 = nn.ModuleList(
            conv(channels, channels, kernel_size, padding=(kernel_size - 1) // 2, dtype=dtype, device=device)
            for _ in dilations
        )
        # Samples on each side that one output sample depends on.
        self.context = sum(c1.padding[0] + c2.padding[0] for c1, c2 in zip(self.convs1, self.convs2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place where a tensor is fresh and used once: at audio rate every allocation is tens of MB.
        for c1, c2 in zip(self.convs1, self.convs2):
            x = c2(F.silu(c1(F.silu(x)), inplace=True)).add_(x)
        return x


class HiFiGANHead(nn.Module):
    """conv_pre, then per level: SiLU → transposed-conv upsampler → the average of the level's ResBlock1s
    (multi-receptive-field fusion); then SiLU → conv_post → tanh.

    On a CPU each level runs on time tiles of at most `tile_elements` output values per item (`time_tiles`), the
    fusion channels-last: at audio rate the narrow levels are bound by memory traffic, not arithmetic, and oneDNN runs
    few channels faster channels-last. Only float rounding differs from the untiled result (`tile_elements = None`,
    the reference code's order of operations, which GPUs run: they have no page faults to avoid, and one kernel
    launch per operation costs less than one per tile)."""

    tile_elements: int | None = 2 ** 20

    def __init__(self, config: VocoderConfig, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        ch = config.upsample_initial_channel
        kw = dict(dtype=dtype, device=device)
        self.conv_pre = operations.Conv1d(config.backbone_dims[-1], ch, config.pre_conv_kernel,
                                          padding=(config.pre_conv_kernel - 1) // 2, **kw)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()  # flat, len(ups) × len(resblock_kernels), as in the checkpoint
        for i, (rate, kernel) in enumerate(zip(config.upsample_rates, config.upsample_kernels)):
            cin, cout = ch // 2 ** i, ch // 2 ** (i + 1)
            self.ups.append(operations.ConvTranspose1d(cin, cout, kernel, rate, padding=(kernel - rate) // 2, **kw))
            for k in config.resblock_kernels:
                self.resblocks.append(ResBlock1(cout, k, config.resblock_dilations, operations=operations, **kw))
        self.num_kernels = len(config.resblock_kernels)
        self.conv_post = operations.Conv1d(ch // 2 ** len(config.upsample_rates), 1, config.post_conv_kernel,
                                           padding=(config.post_conv_kernel - 1) // 2, **kw)

    def _level(self, i: int, x: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        x = self.ups[i](F.silu(x))
        if channels_last:
            x = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)
        blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
        acc = blocks[0](x)
        for block in blocks[1:]:
            acc += block(x)
        acc = acc.div_(self.num_kernels)
        return acc[:, :, 0] if channels_last else acc

    def _level_context(self, i: int) -> int:
        """Input samples on each side that level i's output over a span of input samples depends on."""
        up = self.ups[i]
        rate, kernel, pad = up.stride[0], up.kernel_size[0], up.padding[0]
        # The transposed conv spreads input j over outputs j·rate − pad … j·rate − pad + kernel − 1.
        up_context = max((kernel - 1 - pad) // rate, (pad + rate - 1) // rate)
        blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
        return up_context + -(-max(block.context for block in blocks) // rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_pre(x)
        for i, up in enumerate(self.ups):
            if self.tile_elements and x.device.type == "cpu":
                x = map_time_tiles(lambda t, i=i: self._level(i, t, channels_last=True), x,
                                   core=max(1, self.tile_elements // (up.out_channels * up.stride[0])),
                                   context=self._level_context(i), scale=up.stride[0])
            else:
                x = self._level(i, x)
        return torch.tanh(self.conv_post(F.silu(x)))


class Vocoder(nn.Module):
    """mel [B, n_mels, F] → waveform [B, 1, hop·F] (`forward`/`decode`); waveform → log-mel (`mel_transform`)."""

    def __init__(self, config: VocoderConfig, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        self.config = config
        self.backbone = ConvNeXtBackbone(config, dtype, device, operations)
        self.head = HiFiGANHead(config, dtype, device, operations)
        self.mel_transform = LogMelSpectrogram(config.mel)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(mel))

    decode = forward

    def encode(self, audio: torch.Tensor) -> torch.Tensor:
        return self.mel_transform(audio)
