"""The music DCAE of ACE-Step v1: a Sana-style deep-compression autoencoder (DC-AE) on stereo log-mel images.

Input "image": [B, 2, 128, F] (left/right mel as 2 channels, 128 mel bins, F frames). The encoder downsamples by 2
three times (levels 128/256/512/1024 wide) to a latent [B, 8, 16, F/8]; the decoder mirrors it. Levels 0-2 use
residual conv blocks; level 3 uses EfficientViT blocks (ReLU linear attention over the whole latent image plus a
gated depthwise MLP). Every down/up-sampling step and the latent projections carry a parameter-free "shortcut" (a
channel average or channel repeat of pixel-(un)shuffled features), the DC-AE trick that makes deep compression
trainable. The scaling_factor of the original config is never used by ACE (its wrapper calls encoder/decoder
directly), so it does not appear here. State-dict keys equal the checkpoint's `vae.dcae.*` keys without the prefix.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..operations import TorchOps, cast_to, with_conv_forward
from ..time_tiles import map_time_tiles

RES = "ResBlock"
VIT = "EfficientViTBlock"


@dataclass
class DCAEConfig:
    in_channels: int = 2
    latent_channels: int = 8
    encoder_widths: tuple[int, ...] = (128, 256, 512, 1024)
    decoder_widths: tuple[int, ...] = (128, 256, 512, 1024)
    encoder_depths: tuple[int, ...] = (2, 2, 3, 3)
    decoder_depths: tuple[int, ...] = (3, 3, 3, 3)
    encoder_block_types: tuple[str, ...] = (RES, RES, RES, VIT)
    decoder_block_types: tuple[str, ...] = (RES, RES, RES, VIT)
    # Attention head width. Heads = width // head_dim; the checkpoint stores it as proj_out's per-group width.
    head_dim: int = 32
    # Kernel sizes of the depthwise "multi-scale" q/k/v aggregation branches of the attention blocks.
    qkv_multiscales: tuple[int, ...] = (5,)
    mlp_expand: int = 4  # GLUMBConv hidden width = mlp_expand × width (twice that before the gate split)

    def __post_init__(self):
        for name in ("encoder_widths", "decoder_widths", "encoder_depths", "decoder_depths",
                     "encoder_block_types", "decoder_block_types", "qkv_multiscales"):
            setattr(self, name, tuple(getattr(self, name)))
        levels = len(self.encoder_widths)
        for name in ("decoder_widths", "encoder_depths", "decoder_depths", "encoder_block_types",
                     "decoder_block_types"):
            if len(getattr(self, name)) != levels:
                raise ValueError(f"DCAEConfig.{name} needs {levels} entries (one per level)")
        if min(self.encoder_depths) < 1 or min(self.decoder_depths) < 1:
            raise ValueError("every level needs at least one block")
        for widths, types in ((self.encoder_widths, self.encoder_block_types),
                              (self.decoder_widths, self.decoder_block_types)):
            for w, t in zip(widths, types):
                if t not in (RES, VIT):
                    raise ValueError(f"unknown block type {t!r}")
                if t == VIT and w % self.head_dim:
                    raise ValueError(f"attention level width {w} is not a multiple of head_dim {self.head_dim}")
        if self.encoder_widths[-1] % self.latent_channels or self.decoder_widths[-1] % self.latent_channels:
            raise ValueError("the deepest width must be a multiple of latent_channels (latent shortcuts)")

    @property
    def downsample_factor(self) -> int:
        """Mel pixels per latent pixel along each axis (8 for 4 levels)."""
        return 2 ** (len(self.encoder_widths) - 1)

    @classmethod
    def full_size(cls) -> "DCAEConfig":
        return cls()

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, tuple[int, ...]]) -> "DCAEConfig":
        """Infers the config from the `encoder.*`/`decoder.*` key → shape mapping.

        Widths, depths, block types, the latent and input channels, head_dim (proj_out's per-group input width) and the
        multi-scale kernel sizes are all readable from shapes. The GLU expansion is read from conv_point.
        """
        shapes = {k: tuple(v) for k, v in shapes.items()}

        def blocks(side: str, group: str) -> dict[int, dict[int, str]]:
            found: dict[int, dict[int, str]] = {}
            for key in shapes:
                m = re.match(rf"{side}\.{group}\.(\d+)\.(\d+)\.(conv1|attn|conv)\.", key)
                if m:
                    kind = {"conv1": RES, "attn": VIT, "conv": "sample"}[m.group(3)]
                    found.setdefault(int(m.group(1)), {})[int(m.group(2))] = kind
            return found

        enc, dec = blocks("encoder", "down_blocks"), blocks("decoder", "up_blocks")
        levels = len(enc)
        if levels == 0 or sorted(enc) != list(range(levels)) or sorted(dec) != list(range(levels)):
            raise ValueError("not a DCAE state dict: encoder.down_blocks/decoder.up_blocks levels missing")

        def level_info(found, level):
            kinds = [k for _, k in sorted(found[level].items()) if k != "sample"]
            if len(set(kinds)) != 1:
                raise ValueError(f"mixed block types in level {level}")
            return kinds[0], len(kinds)

        enc_types, enc_depths = zip(*(level_info(enc, i) for i in range(levels)))
        dec_types, dec_depths = zip(*(level_info(dec, i) for i in range(levels)))

        def level_width(side, group, level, kind, first):
            key = f"{side}.{group}.{level}.{first}." + ("conv1.bias" if kind == RES else "attn.to_q.weight")
            return shapes[key][0] if kind == RES else shapes[key][1]

        enc_widths = tuple(level_width("encoder", "down_blocks", i, enc_types[i], 0) for i in range(levels))
        dec_widths = tuple(level_width("decoder", "up_blocks", i, dec_types[i], 1 if i < levels - 1 else 0)
                           for i in range(levels))

        head_dim, multiscales, expand = cls.head_dim, (), cls.mlp_expand
        vit_keys = sorted(k for k in shapes if re.search(r"\.attn\.to_qkv_multiscale\.\d+\.proj_out\.weight$", k))
        if vit_keys:
            prefix = vit_keys[0].split(".attn.")[0]
            head_dim = shapes[vit_keys[0]][1]
            multiscales, j = [], 0
            while f"{prefix}.attn.to_qkv_multiscale.{j}.proj_in.weight" in shapes:
                multiscales.append(shapes[f"{prefix}.attn.to_qkv_multiscale.{j}.proj_in.weight"][-1])
                j += 1
            point = shapes[f"{prefix}.conv_out.conv_point.weight"]
            expand = point[1] // point[0]
        return cls(
            in_channels=shapes["encoder.conv_in.weight"][1],
            latent_channels=shapes["encoder.conv_out.weight"][0],
            encoder_widths=enc_widths,
            decoder_widths=dec_widths,
            encoder_depths=enc_depths,
            decoder_depths=dec_depths,
            encoder_block_types=enc_types,
            decoder_block_types=dec_types,
            head_dim=head_dim,
            qkv_multiscales=tuple(multiscales) if vit_keys else cls.qkv_multiscales,
            mlp_expand=expand,
        )


def unused_checkpoint_shapes(config: DCAEConfig) -> dict[str, tuple[int, ...]]:
    """Every DCAE tensor of the checkpoint is used."""
    return {}


# --------------------------------------------------------------------------------------------------------------------
# Building blocks


class ChannelRMSNorm(nn.Module):
    """RMSNorm over the channel axis of [B, C, H, W] with a weight and a bias (eps 1e-5)."""

    def __init__(self, channels: int, eps: float = 1e-5, dtype=None, device=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.zeros(channels, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.rms_norm(x.movedim(1, -1), (x.shape[1],), cast_to(self.weight, x.dtype, x.device), self.eps)
        return (x + cast_to(self.bias, x.dtype, x.device)).movedim(-1, 1)


def conv3x3(cin: int, cout: int, bias: bool = True, stride: int = 1, dtype=None, device=None, operations=TorchOps):
    return operations.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias, dtype=dtype, device=device)


class ResBlock(nn.Module):
    """conv → SiLU → conv (no bias) → RMSNorm, plus the input."""

    def __init__(self, channels: int, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        self.conv1 = conv3x3(channels, channels, dtype=dtype, device=device, operations=operations)
        self.conv2 = conv3x3(channels, channels, bias=False, dtype=dtype, device=device, operations=operations)
        self.norm = ChannelRMSNorm(channels, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.conv2(F.silu(self.conv1(x))))


class MultiscaleProjection(nn.Module):
    """Aggregates q/k/v over a k×k neighbourhood: depthwise conv, then a per-head-group 1×1 conv."""

    def __init__(self, channels: int, groups: int, kernel_size: int, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        self.proj_in = operations.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels,
                                         bias=False, dtype=dtype, device=device)
        self.proj_out = operations.Conv2d(channels, channels, 1, groups=groups, bias=False, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.proj_in(x))


class MultiscaleLinearAttention(nn.Module):
    """Sana's multi-scale ReLU linear attention with RMSNorm output and residual.

    The plain q/k/v projections and each multi-scale aggregation of them are stacked along channels and cut into
    consecutive groups of 3·head_dim channels; each group is read as (q, k, v) of one head. (The groups do not line up
    with the to_q/to_k/to_v outputs; that is how the checkpoint was trained.) Attention weights are ReLU(k)·ReLU(q),
    normalised over keys, computed in fp32 as V·Kᵀ·Q (linear in the number of pixels) unless the image has at most
    head_dim pixels, where the quadratic form is cheaper.
    """

    def __init__(self, channels: int, head_dim: int, multiscales: tuple[int, ...], eps: float = 1e-15, dtype=None,
                 device=None, operations=TorchOps):
        super().__init__()
        heads = channels // head_dim
        inner = heads * head_dim
        self.head_dim = head_dim
        self.eps = eps
        kw = dict(bias=False, dtype=dtype, device=device)
        self.to_q = operations.Linear(channels, inner, **kw)
        self.to_k = operations.Linear(channels, inner, **kw)
        self.to_v = operations.Linear(channels, inner, **kw)
        self.to_qkv_multiscale = nn.ModuleList(
            MultiscaleProjection(3 * inner, 3 * heads, k, dtype, device, operations) for k in multiscales)
        self.to_out = operations.Linear(inner * (1 + len(multiscales)), channels, **kw)
        self.norm_out = ChannelRMSNorm(channels, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        dtype = x.dtype
        tokens = x.movedim(1, -1)
        qkv = torch.cat([self.to_q(tokens), self.to_k(tokens), self.to_v(tokens)], dim=-1).movedim(-1, 1)
        qkv = torch.cat([qkv] + [ms(qkv) for ms in self.to_qkv_multiscale], dim=1)
        linear = h * w > self.head_dim
        if linear:
            qkv = qkv.float()
        qkv = qkv.reshape(b, -1, 3 * self.head_dim, h * w)  # [B, groups, 3·d, N]
        q, k, v = qkv.chunk(3, dim=2)
        q, k = F.relu(q), F.relu(k)
        if linear:
            # Row of ones appended to V: the same product then yields Σ_keys k·q, the normaliser.
            v = F.pad(v, (0, 0, 0, 1), value=1.0)
            out = (v @ k.transpose(-1, -2)) @ q  # [B, groups, d+1, N]
            out = (out[:, :, :-1] / (out[:, :, -1:] + self.eps)).to(dtype)
        else:
            scores = (k.transpose(-1, -2) @ q).float()  # [B, groups, N_keys, N_queries]
            scores = scores / (scores.sum(dim=2, keepdim=True) + self.eps)
            out = v @ scores.to(v.dtype)
        out = self.to_out(out.reshape(b, -1, h, w).movedim(1, -1)).movedim(-1, 1)
        return x + self.norm_out(out)


class GLUMBConv(nn.Module):
    """Gated inverted-bottleneck MLP: 1×1 up (×2·expand) → SiLU → depthwise 3×3 → value·SiLU(gate) → 1×1 down → RMSNorm,
    plus the input."""

    def __init__(self, channels: int, expand: int, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        hidden = expand * channels
        self.conv_inverted = operations.Conv2d(channels, 2 * hidden, 1, dtype=dtype, device=device)
        self.conv_depth = operations.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, dtype=dtype,
                                            device=device)
        self.conv_point = operations.Conv2d(hidden, channels, 1, bias=False, dtype=dtype, device=device)
        self.norm = ChannelRMSNorm(channels, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_depth(F.silu(self.conv_inverted(x)))
        value, gate = y.chunk(2, dim=1)
        return x + self.norm(self.conv_point(value * F.silu(gate)))


class EfficientViTBlock(nn.Module):
    def __init__(self, channels: int, head_dim: int, multiscales: tuple[int, ...], expand: int, dtype=None,
                 device=None, operations=TorchOps):
        super().__init__()
        self.attn = MultiscaleLinearAttention(channels, head_dim, multiscales, dtype=dtype, device=device,
                                              operations=operations)
        self.conv_out = GLUMBConv(channels, expand, dtype, device, operations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(self.attn(x))


class Downsample(nn.Module):
    """Stride-2 3×3 conv, plus a shortcut: pixel-unshuffle (C → 4C at half size) then average groups of channels."""

    def __init__(self, cin: int, cout: int, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        if (4 * cin) % cout:
            raise ValueError(f"downsample {cin}→{cout}: 4·{cin} is not a multiple of {cout}")
        self.group = 4 * cin // cout
        self.conv = conv3x3(cin, cout, stride=2, dtype=dtype, device=device, operations=operations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = F.pixel_unshuffle(x, 2).unflatten(1, (-1, self.group)).mean(dim=2)
        return self.conv(x) + shortcut


# Nearest ×2 upsampling then a 3×3 conv, per output pixel parity: the 3 kernel rows fall on 2 input rows. Parity 0
# (even rows) sees input rows (i−1, i) through kernel rows (0, 1+2); parity 1 sees (i, i+1) through (0+1, 2).
_SUBPIXEL_TAPS = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]])


def _upsampling_conv(self, x: torch.Tensor, weight: torch.Tensor, bias) -> torch.Tensor:
    """Nearest ×2 upsampling of x, then this 3×3 conv, as four 2×2 convs on x, one per output pixel parity (sub-pixel
    form: 16 products per input pixel instead of 36), equal up to float rounding."""
    taps = _SUBPIXEL_TAPS.to(weight.device, weight.dtype)
    kernels = torch.einsum("pak,oikl,qbl->pqoiab", taps, weight, taps)  # [row parity, col parity, out, in, 2, 2]
    padded = F.pad(x, (1, 1, 1, 1))
    h, w = x.shape[-2:]
    phases = [F.conv2d(padded[..., py : py + h + 1, px : px + w + 1], kernels[py, px], bias)
              for py in (0, 1) for px in (0, 1)]
    return F.pixel_shuffle(torch.stack(phases, dim=2).flatten(1, 2), 2)


class Upsample(nn.Module):
    """Nearest ×2 then 3×3 conv, plus a shortcut: repeat each channel, then pixel-shuffle (4C → C at double size)."""

    def __init__(self, cin: int, cout: int, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        if (4 * cout) % cin:
            raise ValueError(f"upsample {cin}→{cout}: 4·{cout} is not a multiple of {cin}")
        self.repeats = 4 * cout // cin
        conv = with_conv_forward(operations.Conv2d, _upsampling_conv, "UpsamplingConv2d")
        self.conv = conv(cin, cout, 3, padding=1, dtype=dtype, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) + F.pixel_shuffle(x.repeat_interleave(self.repeats, dim=1), 2)


def make_block(kind: str, width: int, config: DCAEConfig, dtype=None, device=None, operations=TorchOps) -> nn.Module:
    if kind == RES:
        return ResBlock(width, dtype, device, operations)
    return EfficientViTBlock(width, config.head_dim, config.qkv_multiscales, config.mlp_expand, dtype, device,
                             operations)


def _attention_level(level: nn.Sequential, x: torch.Tensor, tile_elements: int | None) -> torch.Tensor:
    """An attention level, whole when `tile_elements` is None. Otherwise its local parts run on time tiles: each
    block's attention sees the whole song, its GLUMBConv (pointwise convs around one depthwise 3×3: one column of
    context) runs on tiles of at most `tile_elements` values of its widest intermediate (2·expand × the width).
    Untiled, at the deepest level of a 30 s song that intermediate is 170 MB, fresh pages from the kernel at every
    call (see `time_tiles`)."""
    if not tile_elements:
        return level(x)
    for block in level:
        if not isinstance(block, EfficientViTBlock):  # an up- or downsampler: whole
            x = block(x)
            continue
        x = block.attn(x)
        column = block.conv_out.conv_inverted.out_channels * x.shape[2]
        x = map_time_tiles(block.conv_out, x, core=max(1, tile_elements // column), context=1)
    return x


def _conv_context(level: nn.Sequential, extra_convs: int = 0) -> int:
    """Columns of context on each side of a convolutional level: one per 3×3 conv (two per ResBlock, one in an
    up- or downsampler), plus `extra_convs` more (conv_in, conv_out)."""
    return sum(2 if isinstance(m, ResBlock) else 1 for m in level) + extra_convs


class Encoder(nn.Module):
    """mel [B, in, H, W] → latent [B, latent_channels, H/8, W/8] (unscaled).

    As in the decoder, the convolutional levels (with conv_in) run on time tiles on a CPU (`tile_elements = None`:
    untiled, the reference order of operations); in attention levels only the attention sees the whole song."""

    tile_elements: int | None = 2 ** 22

    def __init__(self, config: DCAEConfig, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        kw = dict(dtype=dtype, device=device, operations=operations)
        widths, levels = config.encoder_widths, len(config.encoder_widths)
        self.conv_in = conv3x3(config.in_channels, widths[0], **kw)
        self.down_blocks = nn.ModuleList()
        for i in range(levels):
            layers = [make_block(config.encoder_block_types[i], widths[i], config, **kw)
                      for _ in range(config.encoder_depths[i])]
            if i < levels - 1:
                layers.append(Downsample(widths[i], widths[i + 1], **kw))
            self.down_blocks.append(nn.Sequential(*layers))
        self.local_levels = [t == RES for t in config.encoder_block_types]
        self.conv_out = conv3x3(widths[-1], config.latent_channels, **kw)
        self.out_group = widths[-1] // config.latent_channels

    def _tiled_level(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """conv_in first when i is 0, then level i (convolutional), on time tiles."""
        level = self.down_blocks[i]
        stride = 2 if isinstance(level[-1], Downsample) else 1
        # At the level's input resolution, conv_in included.
        context = _conv_context(level, extra_convs=1 if i == 0 else 0)
        fn = (lambda t: level(self.conv_in(t))) if i == 0 else level
        column = level[0].conv1.out_channels * x.shape[2]
        return map_time_tiles(fn, x, core=max(1, self.tile_elements // column), context=context, stride=stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tiled = bool(self.tile_elements) and x.device.type == "cpu"
        if not (tiled and self.local_levels[0]):
            x = self.conv_in(x)
        for i, level in enumerate(self.down_blocks):
            x = (self._tiled_level(i, x) if tiled and self.local_levels[i]
                 else _attention_level(level, x, self.tile_elements if tiled else None))
        # Shortcut to the latent: the average of each group of consecutive channels.
        return self.conv_out(x) + x.unflatten(1, (-1, self.out_group)).mean(dim=2)


class Decoder(nn.Module):
    """latent [B, latent_channels, h, w] → mel [B, in, 8h, 8w]. Levels run deepest first.

    The convolutional levels (and the output head) are local along time, so on a CPU they run on time tiles of at most
    `tile_elements` output values per item (`time_tiles`); only float rounding differs from the untiled result
    (`tile_elements = None`, the reference code's order of operations, which GPUs run). In attention levels the
    attention sees the whole song, and each block's GLUMBConv runs on tiles."""

    tile_elements: int | None = 2 ** 22

    def __init__(self, config: DCAEConfig, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        kw = dict(dtype=dtype, device=device, operations=operations)
        widths, levels = config.decoder_widths, len(config.decoder_widths)
        self.conv_in = conv3x3(config.latent_channels, widths[-1], **kw)
        self.in_repeats = widths[-1] // config.latent_channels
        self.up_blocks = nn.ModuleList()
        for i in range(levels):  # stored by level index; level i starts by upsampling from level i+1
            layers = [Upsample(widths[i + 1], widths[i], **kw)] if i < levels - 1 else []
            layers += [make_block(config.decoder_block_types[i], widths[i], config, **kw)
                       for _ in range(config.decoder_depths[i])]
            self.up_blocks.append(nn.Sequential(*layers))
        self.local_levels = [t == RES for t in config.decoder_block_types]
        self.norm_out = ChannelRMSNorm(widths[0], dtype=dtype, device=device)
        self.conv_out = conv3x3(widths[0], config.in_channels, **kw)

    def _output(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_out(F.relu(self.norm_out(x)))

    def _tiled_level(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Level i (convolutional), then the output head when i is 0, on time tiles."""
        level = self.up_blocks[i]
        scale = 2 if isinstance(level[0], Upsample) else 1
        # At the level's output resolution, conv_out included; at its input, the upsampler halves it.
        out_context = _conv_context(level, extra_convs=1 if i == 0 else 0)
        fn = (lambda t: self._output(level(t))) if i == 0 else level
        out_column = level[-1].conv1.out_channels * x.shape[2] * scale
        return map_time_tiles(fn, x, core=max(1, self.tile_elements // (out_column * scale)),
                              context=-(-out_context // scale), scale=scale)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z) + z.repeat_interleave(self.in_repeats, dim=1)
        tiled = bool(self.tile_elements) and z.device.type == "cpu"
        for i in reversed(range(len(self.up_blocks))):
            x = (self._tiled_level(i, x) if tiled and self.local_levels[i]
                 else _attention_level(self.up_blocks[i], x, self.tile_elements if tiled else None))
        return x if tiled and self.local_levels[0] else self._output(x)


class DCAE(nn.Module):
    def __init__(self, config: DCAEConfig, dtype=None, device=None, operations=TorchOps):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config, dtype, device, operations)
        self.decoder = Decoder(config, dtype, device, operations)

    def encode(self, mel: torch.Tensor) -> torch.Tensor:
        return self.encoder(mel)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)
