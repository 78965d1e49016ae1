"""ACE-Step 1.5's audio VAE (ace_step/models/v15/vae.py): key layouts against the real files, parity with diffusers'
AutoencoderOobleck and ComfyUI's AudioOobleckVAE on a reduced config, time tiles, receptive fields, memory estimates,
and the operations contract."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from fixtures.v15_vae_configs import LOPSIDED, MEMORY, PARITY, comfyui_kwargs, diffusers_kwargs, randomize_
from measure import max_rel_error, report
from test_memory_estimates import measured_peak, needs_proc

from ace_step.loading.weight_norm import SPELLINGS
from ace_step.models.operations import TorchOps
from ace_step.models.v15.vae import (LAYOUTS, OobleckConfig, OobleckVAE, crop_to_frames, decoder_context,
                                     detect_layout, encoder_context, file_shapes, key_map, to_file_state_dict,
                                     to_module_state_dict)

FULL = OobleckConfig.full_size()
HOP = FULL.hop_length
# Comfy-Org/ace_step_1.5_ComfyUI_files, split_files/vae/ace_1.5_vae.safetensors @ d04a435b (Hugging Face file size).
COMFY_FILE_BYTES = 337_431_732


def safetensors_bytes(shapes: dict, dtype: str, element: int) -> int:
    """Size of a safetensors file of these tensors: 8-byte header length, the JSON header (tensors sorted by name,
    compact separators, padded with spaces to 8 bytes), then the data."""
    header, offset = {}, 0
    for key in sorted(shapes):
        size = math.prod(shapes[key]) * element
        header[key] = {"dtype": dtype, "shape": list(shapes[key]), "data_offsets": [offset, offset + size]}
        offset += size
    return 8 + -(-len(json.dumps(header, separators=(",", ":"))) // 8) * 8 + offset


def diffusers_reference(vae: OobleckVAE) -> nn.Module:
    """diffusers' AutoencoderOobleck holding `vae`'s weights, written in the original folder's layout."""
    from diffusers import AutoencoderOobleck

    reference = AutoencoderOobleck(**diffusers_kwargs(vae.config)).eval()
    reference.load_state_dict(to_file_state_dict(vae.state_dict(), vae.config, "diffusers"), strict=True)
    return reference


def comfyui_class():
    from comfy_inprocess import import_comfy

    import_comfy()
    from comfy.ldm.audio.autoencoder import AudioOobleckVAE

    return AudioOobleckVAE


def comfyui_reference(vae: OobleckVAE) -> nn.Module:
    """ComfyUI's AudioOobleckVAE holding `vae`'s weights, written as ComfyUI's file stores them (weight_g/weight_v;
    torch converts them to the parametrizations ComfyUI registers)."""
    reference = comfyui_class()(**comfyui_kwargs(vae.config)).eval()
    reference.load_state_dict(to_file_state_dict(vae.state_dict(), vae.config, "comfyui"), strict=True)
    return reference


def ours_from(reference: nn.Module) -> OobleckVAE:
    """A fresh module loaded from a reference's own state dict, through the key map."""
    state = reference.state_dict()
    vae = OobleckVAE(OobleckConfig.from_shapes({k: tuple(v.shape) for k, v in state.items()})).eval()
    vae.load_state_dict(to_module_state_dict(state), strict=True)
    return vae


# ------------------------------------------------------------------------------------------------ sizes and keys
def test_full_size_parameters_and_the_real_comfyui_file():
    with torch.device("meta"):
        fused = sum(p.numel() for p in OobleckVAE(FULL).parameters())
    stored = {f"{layout}/{spelling}": file_shapes(FULL, layout, spelling)
              for layout in LAYOUTS for spelling in SPELLINGS}
    counts = {name: sum(math.prod(s) for s in shapes.values()) for name, shapes in stored.items()}
    report("v1.5 VAE parameters (fused / as stored)", [fused, counts["comfyui/weight_norm"]])
    assert fused == 168_660_608
    assert set(counts.values()) == {168_695_426}  # + one weight-norm magnitude per conv output row
    # Only ComfyUI's layout, with weight_g/weight_v halves and bfloat16 data, gives the published file's size.
    sizes = {f"{name} {dtype}": safetensors_bytes(shapes, dtype, 2) for name, shapes in stored.items()
             for dtype in ("BF16", "F16")}
    assert [name for name, size in sizes.items() if size == COMFY_FILE_BYTES] == ["comfyui/weight_norm BF16"]
    for shapes in stored.values():
        assert OobleckConfig.from_shapes(shapes) == FULL


def test_layouts_match_diffusers_and_comfyui_modules():
    from diffusers import AutoencoderOobleck

    with torch.device("meta"):
        theirs = AutoencoderOobleck(**diffusers_kwargs(FULL)).state_dict()
    assert file_shapes(FULL, "diffusers") == {k: tuple(v.shape) for k, v in theirs.items()}
    with torch.device("meta"):  # ComfyUI 0.3.75 registers torch's parametrizations spelling
        comfy = comfyui_class()(**comfyui_kwargs(FULL)).state_dict()
    assert file_shapes(FULL, "comfyui", "parametrizations") == {k: tuple(v.shape) for k, v in comfy.items()}


def test_key_maps():
    mapping = key_map(FULL, "diffusers")
    assert mapping["decoder.block.0.res_unit1.conv1.weight_g"] == "decoder.layers.1.layers.2.layers.1.weight_g"
    assert mapping["decoder.block.4.conv_t1.weight_v"] == "decoder.layers.5.layers.1.weight_v"
    assert mapping["encoder.block.4.conv1.bias"] == "encoder.layers.5.layers.4.bias"
    assert mapping["encoder.block.2.res_unit3.snake2.beta"] == "encoder.layers.3.layers.2.layers.2.beta"
    assert mapping["encoder.snake1.alpha"] == "encoder.layers.6.alpha"
    assert mapping["decoder.conv2.weight_v"] == "decoder.layers.7.weight_v"
    assert len(set(mapping.values())) == len(mapping)
    assert all(k == v for k, v in key_map(FULL, "comfyui", "parametrizations").items())
    with torch.device("meta"):
        module_keys = set(OobleckVAE(FULL).state_dict())
    for layout in LAYOUTS:
        for spelling in SPELLINGS:
            fused = {k.replace(".parametrizations.weight.original1", ".weight").replace(".weight_v", ".weight")
                     for k in key_map(FULL, layout, spelling).values() if not k.endswith(("_g", "original0"))}
            assert fused == module_keys, (layout, spelling)


@pytest.mark.parametrize("config", [PARITY, LOPSIDED], ids=["parity", "lopsided"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("spelling", list(SPELLINGS))
def test_file_round_trip(config, layout, spelling):
    ours = randomize_(OobleckVAE(config)).state_dict()
    written = to_file_state_dict(ours, config, layout, spelling)
    assert {k: tuple(v.shape) for k, v in written.items()} == file_shapes(config, layout, spelling)
    shapes = {k: tuple(v.shape) for k, v in written.items()}
    assert detect_layout(written) == layout and OobleckConfig.from_shapes(shapes) == config
    back = to_module_state_dict(written)
    assert back.keys() == ours.keys()
    assert max(max_rel_error(back[k], ours[k]) for k in ours) < 1e-6


# ------------------------------------------------------------------------------------------------ parity
def test_parity_with_diffusers():
    """Random weights written in the original folder's layout (weight_g/weight_v, Snake [1, C, 1]) into diffusers'
    AutoencoderOobleck, whose own state dict is read back through the key map; float32, untiled and tiled."""
    reference = diffusers_reference(randomize_(OobleckVAE(PARITY)))
    vae = ours_from(reference)
    x = torch.randn(2, 2, 30 * HOP, generator=torch.Generator().manual_seed(1))
    z = torch.randn(2, PARITY.latent_channels, 30, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        posterior = reference.encode(x).latent_dist
        want_sample = posterior.sample(torch.Generator().manual_seed(3))
        want_audio = reference.decode(z).sample
        for tile_frames in (None, 4):  # 4-frame tiles: each run widened to 18 (encode) or 22 (decode) frames
            vae.tile_frames = tile_frames
            mean, std = vae.posterior(x)
            errors = {"mean": max_rel_error(mean, posterior.mean), "std": max_rel_error(std, posterior.std),
                      "sample": max_rel_error(vae.encode(x, generator=torch.Generator().manual_seed(3)), want_sample),
                      "decode": max_rel_error(vae.decode(z), want_audio)}
            report(f"v1.5 VAE vs diffusers AutoencoderOobleck, fp32, tile_frames={tile_frames}", errors)
            assert max(errors.values()) <= 1e-5, errors
            assert torch.equal(vae.encode(x, sample=False), mean)


def test_parity_with_comfyui():
    """ComfyUI's own AudioOobleckVAE (the installed ComfyUI, strides set as its sd.py sets them for ACE 1.5) given
    random weights as ComfyUI's file stores them (weight_g/weight_v), its own state dict (torch's parametrizations
    spelling) read back by ours; float32, the same global-generator noise for the posterior sample."""
    reference = comfyui_reference(randomize_(OobleckVAE(PARITY)))
    vae = ours_from(reference)
    x = torch.randn(1, 2, 10 * HOP, generator=torch.Generator().manual_seed(4))
    z = torch.randn(1, PARITY.latent_channels, 10, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.manual_seed(6)
        want = reference.encode(x)  # a posterior sample from torch's global generator
        torch.manual_seed(6)
        errors = {"encode (sample)": max_rel_error(vae.encode(x), want),
                  "decode": max_rel_error(vae.decode(z), reference.decode(z))}
    report("v1.5 VAE vs ComfyUI AudioOobleckVAE, fp32", errors)
    assert max(errors.values()) <= 1e-5, errors


def test_bfloat16_keeps_the_input_dtype():
    vae = randomize_(OobleckVAE(PARITY))
    z = torch.randn(1, PARITY.latent_channels, 6, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        want = vae.decode(z)
        got = vae.to(torch.bfloat16).decode(z.bfloat16())
    assert got.dtype == torch.bfloat16
    report("v1.5 VAE decode bf16 vs fp32", max_rel_error(got, want))
    assert max_rel_error(got, want) < 0.05


# ------------------------------------------------------------------------------------------------ long audio
def test_receptive_fields_are_exact():
    """decoder_context and encoder_context are the true reach (not just upper bounds): perturbing one latent frame
    changes output samples exactly that many frames away; encoder frame j's gradient reaches exactly that many
    samples beyond its own."""
    assert (decoder_context(FULL), encoder_context(FULL)) == (9, 12165)
    vae = randomize_(OobleckVAE(PARITY))
    vae.tile_frames = None
    z = torch.randn(1, PARITY.latent_channels, 25, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        base = vae.decode(z)
        nudged = z.clone()
        nudged[..., 12] += 1
        changed = ((vae.decode(nudged) - base).abs().amax(dim=1)[0] > 0).nonzero().flatten() // HOP
    assert (changed - 12).abs().max().item() == decoder_context(PARITY)
    reference = diffusers_reference(vae)  # autograd through the reference (ours overwrites activations in place)
    x = torch.randn(1, 2, 30 * HOP, requires_grad=True)
    grad, = torch.autograd.grad(reference.encoder(x)[0, :, 15].sum(), x)
    reached = (grad.abs().amax(dim=1)[0] > 0).nonzero().flatten()
    assert 15 * HOP - reached.min().item() == reached.max().item() + 1 - 16 * HOP == encoder_context(PARITY)


def test_tiles_equal_the_whole_song():
    vae = randomize_(OobleckVAE(PARITY))
    frames = 45
    x = torch.randn(2, 2, frames * HOP, generator=torch.Generator().manual_seed(9))
    z = torch.randn(2, PARITY.latent_channels, frames, generator=torch.Generator().manual_seed(10))
    calls = []
    vae.decoder.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[-1]))
    with torch.no_grad():
        vae.tile_frames = None
        whole = vae.posterior(x)[0], vae.decode(z)
        vae.tile_frames = 8
        tiled = vae.posterior(x)[0], vae.decode(z)
    # Six 8-frame cores, each widened by up to 9 frames (the decoder's context) on both sides.
    assert calls == [45, 17, 25, 26, 26, 22, 14]
    errors = {"encode": max_rel_error(tiled[0], whole[0]), "decode": max_rel_error(tiled[1], whole[1])}
    report("v1.5 VAE tiled vs untiled (8-frame tiles), fp32", errors)
    assert max(errors.values()) < 1e-6, errors


# ------------------------------------------------------------------------------------------------ memory
MEMORY_CASES = [(False, 100, None), (False, 150, 32), (True, 100, None), (True, 150, 32)]  # encode, frames, tiles


def estimates_and_peaks(cases) -> list[tuple[int, int]]:
    """(working_bytes, measured resident peak) of the MEMORY model for each (encode, frames, tile_frames)."""
    vae = randomize_(OobleckVAE(MEMORY)).eval()
    out = []
    for encode, frames, tile_frames in cases:
        vae.tile_frames = tile_frames
        if encode:
            x = torch.randn(1, 2, frames * HOP)
            run = lambda: vae.encode(x)  # noqa: E731
        else:
            z = torch.randn(1, MEMORY.latent_channels, frames)
            run = lambda: vae.decode(z)  # noqa: E731
        out.append((vae.working_bytes(1, frames, encode=encode), measured_peak(run)))
    return out


@pytest.fixture(scope="module")
def measured():
    """The peaks, measured in a fresh process whose C allocator behaves as at full size. There every tile tensor
    (about 140 MB) is far above glibc's mmap threshold (at most 32 MB): it comes from the kernel and goes back when
    freed, so the resident peak is the live peak. The tiny model's tensors are a few MB, and a heap that earlier
    work (or earlier tiles) left behind would keep them, so the child lowers the threshold to 1 MB from its start."""
    tests = Path(__file__).resolve().parent
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(1 << 20),
               PYTHONPATH=os.pathsep.join([str(tests), str(tests.parent), os.environ.get("PYTHONPATH", "")]))
    code = "import json, sys, test_v15_vae as t; print(json.dumps(t.estimates_and_peaks(json.loads(sys.argv[1]))))"
    child = subprocess.run([sys.executable, "-c", code, json.dumps(MEMORY_CASES)], cwd=tests, env=env,
                           capture_output=True, text=True)
    assert child.returncode == 0, child.stderr[-3000:]
    return dict(zip(MEMORY_CASES, json.loads(child.stdout.splitlines()[-1])))


@needs_proc
@pytest.mark.parametrize("case", MEMORY_CASES, ids=lambda c: f"{'encode' if c[0] else 'decode'}-{c[1]}-tiles{c[2]}")
def test_working_bytes_bounds_the_measured_peak(measured, case):
    (estimate, peak), (encode, frames, tile_frames) = measured[case], case
    name = f"v1.5 VAE {'encode' if encode else 'decode'} {frames} frames, tile_frames={tile_frames}"
    report(f"memory estimate / measured peak: {name}", round(estimate / peak, 2), estimate_mib=estimate >> 20,
           peak_mib=peak >> 20)
    assert peak <= estimate <= 3 * peak, f"{name}: estimate {estimate >> 20} MiB, measured {peak >> 20} MiB"


# ------------------------------------------------------------------------------------------------ contract, inputs
def test_every_weighted_layer_comes_from_operations():
    names = [n for n in vars(TorchOps) if not n.startswith("_")]
    counts = dict.fromkeys(names, 0)

    class Recording(TorchOps):
        pass

    for name in names:
        base = getattr(TorchOps, name)

        def init(self, *args, _base=base, _name=name, **kwargs):
            counts[_name] += 1
            _base.__init__(self, *args, **kwargs)

        setattr(Recording, name, type(f"Recording{name}", (base,), {"__init__": init}))

    vae = OobleckVAE(PARITY, operations=Recording)
    torch_layers = tuple(getattr(TorchOps, n) for n in names)
    recorded = tuple(getattr(Recording, n) for n in names)
    assert [n for n, m in vae.named_modules() if isinstance(m, torch_layers) and not isinstance(m, recorded)] == []
    # 5 levels: encoder 1 + 5·(3·2 + 1) + 1 convs, decoder 1 + 5·3·2 + 1 convs and 5 transposed convs.
    assert {n: c for n, c in counts.items() if c} == {"Conv1d": 37 + 32, "ConvTranspose1d": 5}
    loose = {n.rsplit(".", 1)[-1] for n, p in vae.named_parameters()
             if not isinstance(vae.get_submodule(n.rsplit(".", 1)[0]), recorded)}
    assert loose == {"alpha", "beta"}


def test_bad_inputs_are_refused_with_the_fix():
    vae = OobleckVAE(PARITY)
    with pytest.raises(ValueError, match=r"positive multiple of 1920 .* crop or pad it first"):
        vae.encode(torch.zeros(1, 2, 1920 * 3 + 5))
    with pytest.raises(ValueError, match=r"waveform must be \[batch, 2, samples\]"):
        vae.encode(torch.zeros(1, 1, 1920))
    with pytest.raises(ValueError, match=r"latent must be \[batch, 4, frames\]"):
        vae.decode(torch.zeros(1, 64, 10))
    with pytest.raises(ValueError, match="strides must be even"):
        OobleckConfig(strides=(2, 4, 4, 6, 5))
    with pytest.raises(ValueError, match="channel_multiples has 4 entries but strides has 5"):
        OobleckConfig(channel_multiples=(1, 2, 4, 8))
    with pytest.raises(ValueError, match="not an Oobleck VAE state dict"):
        to_module_state_dict({"model.diffusion_model.x.weight": torch.zeros(1)})
    partial = {k: v for k, v in file_shapes(PARITY, "comfyui").items() if not k.startswith("encoder.layers.3.")}
    with pytest.raises(ValueError, match="no weight for 'encoder.layers.3.layers.4.weight'"):
        OobleckConfig.from_shapes(partial)


def test_crop_to_frames_is_centred_like_comfyui():
    x = torch.arange(3 * 1920 + 7.0)[None, None]
    cropped = crop_to_frames(x, 1920)
    assert cropped.shape[-1] == 3 * 1920 and cropped[0, 0, 0].item() == 3.0  # offset (7 // 2)
    with pytest.raises(ValueError, match="shorter than one latent frame"):
        crop_to_frames(x[..., :100], 1920)
