"""Music VAE side of ACE-Step v1: DCAE, vocoder, log-mel front end, resampling, and the MusicVAE wrapper.

Checks the checkpoint layout against the real key lists, numerical parity with ComfyUI's own classes (reduced configs,
identical random weights, fp32) and with torchaudio (imported here only), and the wrapper's shape conventions and
chunked paths.
"""
import dataclasses
import json

import pytest
import torch

from ace_step.audio import dsp as audio_dsp
from ace_step.models.v1 import dcae, music_vae, vocoder
from ace_step.models.v1.dcae import DCAE, DCAEConfig
from ace_step.models.v1.music_vae import MusicVAE, MusicVAEConfig
from ace_step.models.v1.vocoder import Vocoder, VocoderConfig
from ace_step.loading import weight_norm
from ace_step.models.v1.latent import SAMPLES_PER_FRAME
from fixtures.v1_configs import tiny_dcae, tiny_music_vae, tiny_vocoder
from comfy_inprocess import import_comfy
from measure import max_rel_error, report
from reference import DATA_DIR

KEYS_DIR = DATA_DIR
PARITY_TOL = 1e-5


def _file_shapes(name: str, prefix: str) -> dict[str, tuple[int, ...]]:
    rows = json.loads((KEYS_DIR / name).read_text())
    return {k[len(prefix):]: tuple(s) for k, s, _ in rows if k.startswith(prefix)}


@pytest.fixture(scope="module")
def comfy():
    import_comfy()
    import comfy.ldm.ace.vae.autoencoder_dc as autoencoder_dc
    import comfy.ldm.ace.vae.music_dcae_pipeline as music_dcae_pipeline
    import comfy.ldm.ace.vae.music_log_mel as music_log_mel
    import comfy.ldm.ace.vae.music_vocoder as music_vocoder

    return dataclasses.make_dataclass("Comfy", ["dc", "pipeline", "log_mel", "vocoder"])(
        autoencoder_dc, music_dcae_pipeline, music_log_mel, music_vocoder)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Weights of a sensible scale (unit-ish activations), whatever the module's own init is (ComfyUI leaves its
    parameters uninitialised)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("original0") or name.endswith("weight_g"):  # weight-norm magnitude
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif p.ndim >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
            elif name.endswith("gamma"):
                p.copy_(0.2 + 0.8 * torch.rand(p.shape, generator=gen))
            elif name.endswith("weight"):  # norms
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            else:  # biases
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def _comfy_dcae_kwargs(c: DCAEConfig) -> dict:
    return dict(
        in_channels=c.in_channels, latent_channels=c.latent_channels, attention_head_dim=c.head_dim,
        encoder_block_types=list(c.encoder_block_types), decoder_block_types=list(c.decoder_block_types),
        encoder_block_out_channels=c.encoder_widths, decoder_block_out_channels=c.decoder_widths,
        encoder_layers_per_block=c.encoder_depths, decoder_layers_per_block=c.decoder_depths,
        encoder_qkv_multiscales=[c.qkv_multiscales] * len(c.encoder_widths),
        decoder_qkv_multiscales=[c.qkv_multiscales] * len(c.decoder_widths),
    )


def _comfy_vocoder_kwargs(c: VocoderConfig) -> dict:
    return dict(
        input_channels=c.n_mels, depths=list(c.backbone_depths), dims=list(c.backbone_dims),
        upsample_rates=c.upsample_rates, upsample_kernel_sizes=c.upsample_kernels,
        resblock_kernel_sizes=c.resblock_kernels,
        resblock_dilation_sizes=[c.resblock_dilations] * len(c.resblock_kernels),
        num_mels=c.backbone_dims[-1], upsample_initial_channel=c.upsample_initial_channel,
        pre_conv_kernel_size=c.pre_conv_kernel, post_conv_kernel_size=c.post_conv_kernel,
    )


def _paired_vocoders(comfy, config: VocoderConfig, seed: int = 1):
    theirs = comfy.vocoder.ADaMoSHiFiGANV1(**_comfy_vocoder_kwargs(config)).eval()
    _randomize(theirs, seed)
    file_sd = {k: v for k, v in theirs.state_dict().items()}
    unused = vocoder.unused_checkpoint_shapes(config)
    assert set(unused) <= set(file_sd)
    ours = Vocoder(config).eval()
    ours.load_state_dict(weight_norm.fuse_state_dict({k: v for k, v in file_sd.items() if k not in unused}))
    return ours, theirs, file_sd


# --------------------------------------------------------------------------------------------------------------------
# Layout


def test_dcae_full_size_keys_equal_checkpoint():
    with torch.device("meta"):
        model = DCAE(DCAEConfig.full_size())
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert ours == _file_shapes("ace_step_v1_3.5b.keys.json", "vae.dcae.")
    assert dcae.unused_checkpoint_shapes(DCAEConfig.full_size()) == {}


@pytest.mark.parametrize("variant,name", [("weight_norm", "ace_step_v1_3.5b.keys.json"),
                                          ("parametrizations", "ace_step_v1_3.5b.keys_modern.json")])
def test_vocoder_checkpoint_shapes_equal_file(variant, name):
    file_shapes = _file_shapes(name, "vae.vocoder.")
    assert vocoder.checkpoint_shapes(VocoderConfig.full_size(), variant) == file_shapes
    assert VocoderConfig.from_shapes(file_shapes) == VocoderConfig.full_size()
    # The module's own keys are the file's minus the mel buffers, with fused weights.
    config = VocoderConfig.full_size()
    with torch.device("meta"):
        module = {k: tuple(v.shape) for k, v in Vocoder(config).state_dict().items()}
    unused = vocoder.unused_checkpoint_shapes(config)
    assert module == {k: v for k, v in vocoder.checkpoint_shapes(config, "fused").items() if k not in unused}


def test_music_vae_layout_and_from_shapes():
    full = MusicVAEConfig.full_size()
    file_shapes = _file_shapes("ace_step_v1_3.5b.keys.json", "vae.")
    assert music_vae.checkpoint_shapes(full) == file_shapes
    assert MusicVAEConfig.from_shapes(file_shapes) == full
    with torch.device("meta"):
        model = MusicVAE(full)  # builds on meta: no .item() or data-dependent work in constructors
    module = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    unused = music_vae.unused_checkpoint_shapes(full)
    assert set(unused) == {"vocoder.mel_transform.mel_scale.fb", "vocoder.mel_transform.spectrogram.window"}
    assert len(module) == len(file_shapes) - len(unused) - 177  # 177 weight-normed convs: g and v → one weight
    params = sum(p.numel() for p in model.dcae.parameters())
    assert params == 156_812_426
    for cfg_cls, mod_cls, tiny in ((DCAEConfig, DCAE, tiny_dcae()), (VocoderConfig, Vocoder, tiny_vocoder()),
                                   (MusicVAEConfig, MusicVAE, tiny_music_vae())):
        m = mod_cls(tiny)
        assert cfg_cls.from_shapes({k: tuple(v.shape) for k, v in m.state_dict().items()}) == tiny
        assert sum(p.numel() for p in m.parameters()) * 4 < 5e6  # < 5 MB of fp32 weights
        with torch.device("meta"):
            full = mod_cls(cfg_cls.full_size())
        assert cfg_cls.from_shapes({k: tuple(v.shape) for k, v in full.state_dict().items()}) == cfg_cls.full_size()


def test_weight_norm_variants_fuse_identically(comfy):
    config = tiny_vocoder()
    _, _, file_sd = _paired_vocoders(comfy, config)
    modern = {k: v for k, v in file_sd.items() if "parametrizations" in k}
    assert modern, "ComfyUI's vocoder should use parametrizations.weight.original0/1"
    legacy = {k.replace(".parametrizations.weight.original0", ".weight_g")
               .replace(".parametrizations.weight.original1", ".weight_v"): v for k, v in file_sd.items()}
    unused = vocoder.unused_checkpoint_shapes(config)
    a = {k: v for k, v in weight_norm.fuse_state_dict(file_sd).items() if k not in unused}
    b = {k: v for k, v in weight_norm.fuse_state_dict(legacy).items() if k not in unused}
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert weight_norm.fuse_state_dict(a).keys() == a.keys()  # already fused passes through
    # ComfyUI's own parametrization computes the same weights.
    theirs = comfy.vocoder.ADaMoSHiFiGANV1(**_comfy_vocoder_kwargs(config))
    theirs.load_state_dict(file_sd)
    err = max(max_rel_error(a["head.conv_pre.weight"], theirs.head.conv_pre.weight),
              max_rel_error(a["head.ups.1.weight"], theirs.head.ups[1].weight))
    report("fused weight vs torch weight_norm parametrization, max rel", err)
    assert err < 1e-6
    # split → fuse round trip, in both file layouts
    for variant in ("weight_norm", "parametrizations"):
        split = weight_norm.split_state_dict(a, vocoder.weight_norm_keys(config), variant)
        assert {k: tuple(v.shape) for k, v in split.items()} == {
            k: v for k, v in vocoder.checkpoint_shapes(config, variant).items() if k not in unused}
        again = weight_norm.fuse_state_dict(split)
        assert max(max_rel_error(again[k], a[k]) for k in a) < 1e-6


# --------------------------------------------------------------------------------------------------------------------
# Front end vs torchaudio / ComfyUI


def test_mel_filterbank_matches_torchaudio():
    import torchaudio

    ref = torchaudio.functional.melscale_fbanks(1025, 40.0, 16000.0, 128, 44100, norm="slaney", mel_scale="slaney")
    err = max_rel_error(audio_dsp.mel_filterbank(1025, 40.0, 16000.0, 128, 44100), ref)
    report("mel filterbank vs torchaudio, max rel", err)
    assert err <= PARITY_TOL


@pytest.mark.parametrize("orig", [48000, 8000, 96000, 22050])
def test_resample_matches_torchaudio(orig):
    import torchaudio

    gen = torch.Generator().manual_seed(orig)
    x = torch.randn(2, 2, orig // 5 + 7, generator=gen)  # 0.2 s + an odd tail
    ref = torchaudio.functional.resample(x, orig, 44100)
    ours = audio_dsp.resample(x, orig, 44100)
    err = max_rel_error(ours, ref)
    report(f"resample {orig}->44100 vs torchaudio, max rel", err)
    assert err <= PARITY_TOL
    # Chunked along time (tiny chunks) gives the same numbers.
    assert max_rel_error(audio_dsp.resample(x, orig, 44100, max_chunk_elements=2000), ours) <= 1e-6


def test_resample_gather_path_and_edge_cases():
    import torchaudio

    gen = torch.Generator().manual_seed(7)
    x = torch.randn(1, 3000, generator=gen)
    # Coprime rates with many phases: the gather path (no dense filter); compare on small numbers to torchaudio.
    ref = torchaudio.functional.resample(x, 1009, 1000)
    old = audio_dsp._DENSE_KERNEL_LIMIT
    try:
        audio_dsp._DENSE_KERNEL_LIMIT = 0
        ours = audio_dsp.resample(x, 1009, 1000)
    finally:
        audio_dsp._DENSE_KERNEL_LIMIT = old
    err = max_rel_error(ours, ref)
    report("resample 1009->1000 (gather path) vs torchaudio, max rel", err)
    assert err <= PARITY_TOL
    assert audio_dsp.resample(x, 44100, 44100) is x
    assert audio_dsp.resample(x.to(torch.bfloat16), 48000, 44100).dtype == torch.bfloat16


def test_log_mel_matches_comfy(comfy):
    ref_module = comfy.log_mel.LogMelSpectrogram(sample_rate=44100, n_fft=2048, win_length=2048, hop_length=512,
                                                 n_mels=128, f_min=40, f_max=16000)
    gen = torch.Generator().manual_seed(3)
    audio = 0.3 * torch.randn(2, 4096 * 3, generator=gen)
    ref = ref_module(audio)
    ours = audio_dsp.LogMelSpectrogram()(audio)
    assert ours.shape == (2, 128, 24)
    err = max_rel_error(ours, ref)
    report("log-mel vs ComfyUI LogMelSpectrogram, max rel", err)
    assert err <= PARITY_TOL
    # Frame ranges equal slices of the full spectrogram (what chunked encoding relies on).
    part = torch.cat([audio_dsp.LogMelSpectrogram()(audio, s, s + 5) for s in range(0, 24, 5)], dim=-1)
    assert torch.equal(part, ours)


# --------------------------------------------------------------------------------------------------------------------
# Networks vs ComfyUI


def test_dcae_matches_comfy(comfy):
    config = tiny_dcae()
    ours = DCAE(config).eval()
    _randomize(ours, 0)
    theirs = comfy.dc.AutoencoderDC(**_comfy_dcae_kwargs(config)).eval()
    theirs.load_state_dict(ours.state_dict())
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for frames in (48, 16):  # latent width 6 (linear attention) and 2 (quadratic: 16·2 pixels <= head_dim)
            mel = torch.randn(1, 2, 128, frames, generator=gen)
            err = max_rel_error(ours.encode(mel), theirs.encoder(mel))
            report(f"DCAE encoder vs ComfyUI ({frames} mel frames), max rel", err)
            assert err <= PARITY_TOL
            z = torch.randn(1, 8, 16, frames // 8, generator=gen)
            err = max_rel_error(ours.decode(z), theirs.decoder(z))
            report(f"DCAE decoder vs ComfyUI ({frames // 8} latent frames), max rel", err)
            assert err <= PARITY_TOL


def test_vocoder_matches_comfy(comfy):
    ours, theirs, _ = _paired_vocoders(comfy, tiny_vocoder())
    gen = torch.Generator().manual_seed(9)
    mel = torch.randn(2, 128, 24, generator=gen) * 2 - 4
    with torch.no_grad():
        ref = theirs.decode(mel)
        out = ours(mel)
    assert out.shape == (2, 1, 24 * 512)
    err = max_rel_error(out, ref)
    report("vocoder waveform vs ComfyUI, max rel", err, ref_max=ref.abs().max().item())
    assert err <= PARITY_TOL


def _check_time_tiles(what: str, holder, run, ref: torch.Tensor, tile_sizes: dict[str, int]) -> None:
    """run() untiled (holder.tile_elements = None), then with each tile size: tiled vs ComfyUI's untiled `ref` within
    the parity tolerance, and vs our untiled path within float rounding."""
    holder.tile_elements = None
    with torch.no_grad():
        untiled = run()
        for label, tile_elements in tile_sizes.items():
            holder.tile_elements = tile_elements
            tiled = run()
            err = max_rel_error(tiled, ref)
            report(f"{what}, tiles of {label}, vs ComfyUI, max rel", err)
            assert err <= PARITY_TOL
            assert max_rel_error(tiled, untiled) <= 1e-6


def test_time_tiled_networks_match_comfy(comfy):
    """The DCAE's and the vocoder's time tiles (`ace_step.time_tiles`), forced down to 1-6 columns per tile so every
    seam and both signal ends are exercised, still match ComfyUI's untiled classes, and equal our untiled path (the
    reference order of operations) up to float rounding."""
    config = tiny_dcae()
    ours = DCAE(config).eval()
    _randomize(ours, 0)
    theirs = comfy.dc.AutoencoderDC(**_comfy_dcae_kwargs(config)).eval()
    theirs.load_state_dict(ours.state_dict())
    mel = torch.randn(1, 2, 128, 8 * 13, generator=torch.Generator().manual_seed(5))
    z = torch.randn(1, 8, 16, 13, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ref_latent, ref_mel = theirs.encoder(mel), theirs.decoder(z)
    # Every tiny encoder level's input column holds 1024 values; every decoder level's output column too, at twice
    # its input's width.
    _check_time_tiles("DCAE encoder", ours.encoder, lambda: ours.encode(mel), ref_latent,
                      {"2 columns": 2048, "6 columns": 6144})
    _check_time_tiles("DCAE decoder", ours.decoder, lambda: ours.decode(z), ref_mel,
                      {"1 column": 2048, "3 columns": 6144})

    ours_v, theirs_v, _ = _paired_vocoders(comfy, tiny_vocoder())
    mel = torch.randn(2, 128, 29, generator=torch.Generator().manual_seed(8)) * 2 - 4
    with torch.no_grad():
        ref_wave = theirs_v.decode(mel)
    # Level 0 has 16 channels at ×8.
    _check_time_tiles("vocoder", ours_v.head, lambda: ours_v(mel), ref_wave,
                      {"1 level-0 sample": 128, "3 level-0 samples": 384})


def test_map_time_tiles_equals_the_whole_signal():
    from ace_step.models.time_tiles import map_time_tiles

    gen = torch.Generator().manual_seed(4)
    w1, w2 = torch.randn(3, 3, 5, generator=gen), torch.randn(2, 3, 3, generator=gen)

    def local(x):  # context: 2 input samples (first conv) + 1 (the second conv's 1 sample at double rate, rounded up)
        x = torch.nn.functional.conv1d(x, w1, padding=2)
        return torch.nn.functional.conv1d(x.repeat_interleave(2, dim=-1), w2, padding=1)

    x = torch.randn(2, 3, 23, generator=gen)
    whole = local(x)
    for core in (1, 4, 22):
        tiled = map_time_tiles(local, x, core=core, context=3, scale=2)
        assert tiled.shape == whole.shape == (2, 2, 46)
        assert max_rel_error(tiled, whole) <= 1e-6
    # Too little context changes the samples next to each seam: the tiles really are cut.
    assert max_rel_error(map_time_tiles(local, x, core=4, context=1, scale=2), whole) > 1e-3
    assert map_time_tiles(local, x, core=23, context=0, scale=2).equal(whole)
    with pytest.raises(ValueError):
        map_time_tiles(local, x, core=0, context=3)

    def downsample(x):  # stride 2, kernel 3: context 1 input sample
        return torch.nn.functional.conv1d(x, w1[:, :, :3], stride=2, padding=1)

    x = x[..., :22]
    whole = downsample(x)
    for core in (1, 2, 5, 8):  # odd cores round up to whole output samples
        tiled = map_time_tiles(downsample, x, core=core, context=1, stride=2)
        assert tiled.shape == whole.shape == (2, 3, 11)
        assert max_rel_error(tiled, whole) <= 1e-6
    with pytest.raises(ValueError):
        map_time_tiles(downsample, x[..., :21], core=4, context=1, stride=2)  # 21 samples have no stride-2 grid


def test_music_vae_matches_comfy_wrapper(comfy):
    """End to end: our MusicVAE vs ComfyUI's MusicDCAE wrapper (including its torchaudio resampling)."""
    config = tiny_music_vae()
    ours = MusicVAE(config).eval()
    _randomize(ours.dcae, 11)
    theirs = comfy.pipeline.MusicDCAE(source_sample_rate=44100, dcae_config=_comfy_dcae_kwargs(config.dcae),
                                      vocoder_config=_comfy_vocoder_kwargs(config.vocoder)).eval()
    _randomize(theirs.vocoder, 12)
    theirs.dcae.load_state_dict(ours.dcae.state_dict())
    file_sd = theirs.vocoder.state_dict()
    ours.vocoder.load_state_dict(weight_norm.fuse_state_dict(
        {k: v for k, v in file_sd.items() if k not in vocoder.unused_checkpoint_shapes(config.vocoder)}))
    gen = torch.Generator().manual_seed(13)
    audio = 0.3 * torch.randn(1, 2, 48000 // 2, generator=gen)  # 0.5 s at 48 kHz, not a whole number of frames
    with torch.no_grad():
        latent, ref_latent = ours.encode(audio, 48000), theirs.encode(audio, sr=48000)
        assert latent.shape == ref_latent.shape == (1, 8, 16, 6)
        err = max_rel_error(latent, ref_latent)
        report("MusicVAE.encode (48 kHz input) vs ComfyUI MusicDCAE.encode, max rel", err)
        assert err <= PARITY_TOL
        wave, ref_wave = ours.decode(ref_latent), theirs.decode(ref_latent)
        assert wave.shape == ref_wave.shape == (1, 2, 6 * 4096)
        err = max_rel_error(wave, ref_wave)
        report("MusicVAE.decode vs ComfyUI MusicDCAE.decode, max rel", err)
        assert err <= PARITY_TOL


# --------------------------------------------------------------------------------------------------------------------
# Wrapper conventions and chunking


def _tiny_vae(seed: int, attention: bool = True) -> MusicVAE:
    config = tiny_music_vae()
    if not attention:
        # Same family without the global attention level and with one block per level: a short, finite receptive
        # field (about 10 latent frames end to end), so 12 frames of context make chunking exact.
        res, ones = (dcae.RES,) * 4, (1, 1, 1, 1)
        config = MusicVAEConfig(
            dataclasses.replace(config.dcae, encoder_block_types=res, decoder_block_types=res,
                                encoder_depths=ones, decoder_depths=ones),
            dataclasses.replace(config.vocoder, backbone_depths=ones))
    model = MusicVAE(config).eval()
    _randomize(model, seed)
    return model


def test_round_trip_shapes_and_padding():
    model = _tiny_vae(21)
    assert model.samples_per_frame == SAMPLES_PER_FRAME == 4096
    gen = torch.Generator().manual_seed(22)
    audio = 0.3 * torch.randn(2, 2, 4096 * 3 + 17, generator=gen)
    latent = model.encode(audio)
    assert latent.shape == (2, 8, 16, 4) and latent.dtype == torch.float32
    padded = torch.nn.functional.pad(audio, (0, 4096 - 17))
    assert torch.equal(model.encode(padded), latent)  # right zero-padding to whole latent frames
    wave = model.decode(latent)
    assert wave.shape == (2, 2, 4 * 4096) and wave.dtype == torch.float32
    assert model.encode(0.3 * torch.randn(1, 2, 22050, generator=gen), sample_rate=22050).shape == (1, 8, 16, 11)
    with pytest.raises(ValueError):
        model.encode(audio[:, :1])  # mono is the nodes' job
    # bf16 runs (compute in bf16, outputs float32).
    model16 = _tiny_vae(21).to(torch.bfloat16)
    out16 = model16.decode(model16.encode(audio))
    assert out16.dtype == torch.float32 and torch.isfinite(out16).all()


def test_chunked_paths_exact_without_attention():
    """Without the attention level everything is local: chunked results equal the full ones."""
    model = _tiny_vae(31, attention=False)
    gen = torch.Generator().manual_seed(32)
    audio = 0.3 * torch.randn(1, 2, 4096 * 30 - 100, generator=gen)
    full = model.encode(audio)
    chunked = model.encode_chunked(audio, chunk_frames=8, overlap_frames=12)
    err = max_rel_error(chunked, full)
    report("encode_chunked vs encode, no attention (exact case), max rel", err)
    assert err <= PARITY_TOL
    latent = torch.randn(1, 8, 16, 33, generator=gen)  # last core: a single frame
    full_wave = model.decode(latent)
    calls = []
    chunked_wave = model.decode_chunked(latent, 8, 12, 8192, on_window=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 5) for i in range(1, 6)] and model.count_windows(33, 8, 12) == 5
    err = max_rel_error(chunked_wave, full_wave)
    report("decode_chunked vs decode, no attention (exact case), max rel", err)
    assert err <= PARITY_TOL


def test_chunked_paths_with_attention():
    """With the global attention level, chunking changes the context: measure how much."""
    model = _tiny_vae(41)
    gen = torch.Generator().manual_seed(42)
    latent = torch.randn(1, 8, 16, 32, generator=gen)
    full_wave = model.decode(latent)
    chunked_wave = model.decode_chunked(latent, chunk_frames=8, overlap_frames=12, crossfade_samples=2048)
    assert chunked_wave.shape == full_wave.shape
    err = max_rel_error(chunked_wave, full_wave)
    report("decode_chunked vs decode, tiny random model with attention, max rel", err)
    assert err < 0.5
    audio = 0.3 * torch.randn(1, 2, 4096 * 32, generator=gen)
    full = model.encode(audio)
    err = max_rel_error(model.encode_chunked(audio, chunk_frames=8, overlap_frames=12), full)
    report("encode_chunked vs encode, tiny random model with attention, max rel", err)
    assert err < 0.5
    with pytest.raises(ValueError):
        model.decode_chunked(latent, chunk_frames=8, overlap_frames=0, crossfade_samples=2048)  # no context to fade in
    # A window covering everything is the plain path.
    assert torch.equal(model.decode_chunked(latent, chunk_frames=32, overlap_frames=0, crossfade_samples=0), full_wave)


def test_meta_build_then_load_file_layout():
    """The loader's path: build on meta, load a file-layout state dict (weight_g/_v, mel buffers) with assign=True."""
    ref = _tiny_vae(51)
    config = ref.config
    module_sd = ref.state_dict()
    file_sd = {f"dcae.{k[5:]}": v for k, v in module_sd.items() if k.startswith("dcae.")}
    vocoder_sd = weight_norm.split_state_dict({k[8:]: v for k, v in module_sd.items() if k.startswith("vocoder.")},
                                              vocoder.weight_norm_keys(config.vocoder), "weight_norm")
    vocoder_sd["mel_transform.mel_scale.fb"] = audio_dsp.mel_filterbank()
    vocoder_sd["mel_transform.spectrogram.window"] = torch.hann_window(2048)
    file_sd.update({f"vocoder.{k}": v for k, v in vocoder_sd.items()})
    assert {k: tuple(v.shape) for k, v in file_sd.items()} == music_vae.checkpoint_shapes(config, "weight_norm")
    assert MusicVAEConfig.from_shapes({k: tuple(v.shape) for k, v in file_sd.items()}) == config
    with torch.device("meta"):
        model = MusicVAE(config)
    unused = music_vae.unused_checkpoint_shapes(config)
    model.load_state_dict(weight_norm.fuse_state_dict({k: v for k, v in file_sd.items() if k not in unused}),
                          strict=True, assign=True)
    model.eval()
    gen = torch.Generator().manual_seed(52)
    audio = 0.3 * torch.randn(1, 2, 4096 * 2, generator=gen)
    latent = model.encode(audio)
    assert max_rel_error(latent, ref.encode(audio)) < 1e-6
    assert max_rel_error(model.decode(latent), ref.decode(latent)) < 1e-5
