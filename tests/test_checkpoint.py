"""Checkpoint reading and loading: the real key layout, tiny round trips, every refusal, and the full-size cost."""
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from measure import report

from ace_step.loading import v1_checkpoint as ckpt
from ace_step.loading.errors import (
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    UnsupportedCheckpointError,
    WrongModelError,
)
from ace_step.loading.v1_layout import ALL_IN_ONE_NAME
from fixtures.v1_layouts import file_layout_shapes
from ace_step.loading.v1_checkpoint import (
    infer_configs,
    inspect_checkpoint,
    load_ace_step,
    load_text_encoder,
    load_text_tokenizer,
    load_transformer,
    load_vae,
)
from ace_step.models.v1.music_vae import MusicVAEConfig
from ace_step.loading.safetensors_io import SafetensorsFile, save_safetensors
from fixtures.tiny_checkpoint import tiny_state_dicts, write_tiny_checkpoint
from ace_step.models.v1.transformer import TransformerConfig
from ace_step.models.v1.umt5 import UMT5Config
from reference import DATA_DIR

ROOT = Path(__file__).resolve().parent.parent
DATA = DATA_DIR
KEYS = {"keys": "weight_norm", "keys_modern": "parametrizations"}
FULL = {"transformer": TransformerConfig.full_size(), "vae": MusicVAEConfig.full_size(),
        "umt5": UMT5Config.full_size()}
TEXTS = ["pop, rock, 120 bpm, female vocals", "Dancing in the rain (with:1.2) you", "我爱音乐 Ça va très bien", ""]
UNUSED_MARKERS = ("projectors.", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out", "mel_transform.",
                  "logit_scale")


# ------------------------------------------------------------------------------------------------ fixtures / helpers

@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny convolutions gain nothing from threads, and on a shared, busy machine OpenMP spin-waits make a 0.1 s
    # vocoder call take seconds: run this module single-threaded (restored afterwards).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {
        "file": write_tiny_checkpoint(root / ALL_IN_ONE_NAME, seed=0),
        "folder": write_tiny_checkpoint(root / "ACE-Step-v1-3.5B", layout="folder", seed=0),
    }


@pytest.fixture(scope="module")
def loaded(tiny):
    return load_ace_step(tiny["file"], dtype=torch.float32)


def all_tensors(path) -> dict:
    with SafetensorsFile(path) as f:
        return {k: f.read(k) for k in f.keys()}


def outputs(models) -> dict:
    """Each network on fixed inputs: tokenizer ids, UMT5 hidden states, transformer velocity, VAE decode."""
    g = torch.Generator().manual_seed(1)
    out = {"ids": [models.tokenizer.encode(t) for t in TEXTS]} if models.tokenizer is not None else {}
    ids = torch.tensor([out["ids"][0]]) if out else torch.tensor([[35, 34, 3, 358, 1]])
    with torch.no_grad():
        if models.text_encoder is not None:
            out["umt5"] = models.text_encoder(ids)
        if models.transformer is not None:
            cfg = models.transformer.config
            text = torch.randn(1, ids.shape[1], cfg.text_embedding_dim, generator=g)
            x = torch.randn(1, 8, 16, 6, generator=g)
            lyrics = torch.randint(0, cfg.lyric_vocab_size, (1, 9), generator=g)
            out["velocity"] = models.transformer(x, torch.tensor([500.0]), text, lyrics)
        if models.vae is not None:
            out["audio"] = models.vae.decode(torch.randn(1, 8, 16, 2, generator=g) * 0.5)
    return out


def assert_same_outputs(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.isfinite(a[k]).all(), k
            assert torch.equal(a[k], b[k]), f"{k} differs: {(a[k] - b[k]).abs().max()}"
        else:
            assert a[k] == b[k], k


def write_raw(path, header: dict, data: bytes = b"", header_len=None):
    raw = json.dumps(header).encode() if isinstance(header, dict) else header
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw) if header_len is None else header_len))
        f.write(raw)
        f.write(data)
    return path


# ------------------------------------------------------------------------------------------------ the real key list

@pytest.mark.parametrize("name", sorted(KEYS))
def test_real_key_list_and_config_inference(name):
    entries = json.loads((DATA / f"ace_step_v1_3.5b.{name}.json").read_text())
    assert len(entries) == 1903
    real = {k: tuple(s) for k, s, _ in entries if s is not None}
    assert [k for k, s, _ in entries if s is None] == [ckpt.SPIECE_KEY]  # its length is data, not architecture

    ours = file_layout_shapes(FULL, "all-in-one", KEYS[name])[ALL_IN_ONE_NAME]
    assert set(ours) == set(real), (sorted(set(ours) - set(real))[:5], sorted(set(real) - set(ours))[:5])
    assert ours == real
    assert infer_configs({k: s for k, s, _ in entries}) == FULL


def test_folder_layout_key_list():
    files = file_layout_shapes(FULL, "folder")
    assert sorted(files) == ["ace_step_transformer/diffusion_pytorch_model.safetensors",
                             "music_dcae_f8c8/diffusion_pytorch_model.safetensors",
                             "music_vocoder/diffusion_pytorch_model.safetensors", "umt5-base/model.safetensors"]
    assert sum(len(v) for v in files.values()) == 1903 - 2  # no spiece_model, no logit_scale
    umt5 = files["umt5-base/model.safetensors"]
    assert umt5["shared.weight"] == (256384, 768) and "encoder.final_layer_norm.weight" in umt5
    assert files["music_dcae_f8c8/diffusion_pytorch_model.safetensors"]["encoder.conv_in.weight"] == (128, 2, 3, 3)
    # Bare keys of all four files route unambiguously (DCAE `encoder.conv_in` vs UMT5 `encoder.block`).
    merged = {k: v for f in files.values() for k, v in f.items()}
    assert len(merged) == 1903 - 2
    assert infer_configs(merged) == FULL


# ------------------------------------------------------------------------------------------------ tiny checkpoints

def test_tiny_checkpoint_is_deterministic_and_marked(tmp_path, tiny):
    again = write_tiny_checkpoint(tmp_path / "again.safetensors", seed=0)
    assert again.read_bytes() == tiny["file"].read_bytes()
    folder = write_tiny_checkpoint(tmp_path / "folder", layout="folder", seed=0)
    files = sorted(p.relative_to(folder) for p in folder.rglob("*") if p.is_file())
    assert len(files) == 11
    assert all((folder / f).read_bytes() == (tiny["folder"] / f).read_bytes() for f in files)
    other = write_tiny_checkpoint(tmp_path / "other.safetensors", seed=1)
    assert other.read_bytes() != tiny["file"].read_bytes()
    info = inspect_checkpoint(tiny["file"])
    assert info.is_tiny_demo and info.layout == "all-in-one"
    assert info.components == ("transformer", "vae", "text_encoder", "tokenizer")
    assert info.vocoder_weight_norm == "weight_norm"
    report("tiny all-in-one checkpoint size", round(tiny["file"].stat().st_size / 1e6, 2), unit="MB (fp32)")

    # The same layout as the real file: every real key family, including the training-only ones.
    keys = set(SafetensorsFile(tiny["file"]).keys())
    for marker in UNUSED_MARKERS + (".weight_g", ".weight_v", ckpt.SPIECE_KEY):
        assert any(marker in k for k in keys), marker
    assert {k.split(".")[0] for k in keys} == {"model", "vae", "text_encoders"}

    # Readable by the reference safetensors implementation, metadata included.
    from safetensors import safe_open

    with safe_open(str(tiny["file"]), "pt") as f:
        assert f.metadata()[ckpt.TINY_DEMO_METADATA_KEY]
        k = "model.diffusion_model.genre_embedder.weight"
        assert torch.equal(f.get_tensor(k), SafetensorsFile(tiny["file"]).read(k))


def test_round_trip_all_in_one_vs_folder(tiny, loaded):
    folder = load_ace_step(tiny["folder"], dtype=torch.float32)
    assert folder.info.layout == "folder" and folder.info.is_tiny_demo
    assert folder.info.configs == loaded.info.configs
    assert folder.info.tokenizer_source.endswith("tokenizer.json")  # the HF tokenizer.json path, not spm bytes
    a, b = outputs(loaded), outputs(folder)
    assert_same_outputs(a, b)
    assert a["audio"].abs().max() > 0 and a["velocity"].std() > 0.01
    report("tiny round trip all-in-one vs folder max abs diff", 0.0, networks="tokenizer, umt5, transformer, vae")


def test_tensors_read_do_not_keep_the_file_mapped(tmp_path):
    """`read` returns copies: a view of the file map would keep the whole file mapped (and resident) as long as any
    loaded weight lives. The header is padded so that the tensors lie 64-byte aligned, where a view is usable."""
    path = tmp_path / "aligned.safetensors"
    tensors = {f"w{i}": torch.full((4, 16), float(i)) for i in range(8)}
    for pad in range(64):
        save_safetensors(path, tensors, {"pad": "x" * pad})
        with SafetensorsFile(path) as f:
            aligned = f.data_start % 64 == 0
        if aligned:
            break
    assert aligned
    with SafetensorsFile(path) as f:
        read = {k: f.read(k) for k in f.keys()}
    assert all(torch.equal(read[k], tensors[k]) for k in tensors)
    assert [line for line in Path("/proc/self/maps").read_text().splitlines() if str(path) in line] == []


def test_bf16_load_and_write(tmp_path, tiny, loaded):
    bf = load_ace_step(tiny["file"], dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf.transformer.parameters())
    out = outputs(bf)
    ref = outputs(loaded)
    for k in ("velocity", "umt5", "audio"):
        assert torch.isfinite(out[k]).all()
        err = ((out[k].float() - ref[k]).abs().max() / ref[k].abs().max()).item()
        report(f"tiny bf16 vs fp32 load, {k}: max rel error", err)
        assert err < 0.1, k
    mixed = load_ace_step(tiny["file"], dtype={"transformer": torch.bfloat16, "vae": torch.float32,
                                               "text_encoder": torch.float16}, components=("transformer", "vae",
                                                                                           "text_encoder"))
    assert next(mixed.transformer.parameters()).dtype == torch.bfloat16
    assert next(mixed.vae.parameters()).dtype == torch.float32
    assert next(mixed.text_encoder.parameters()).dtype == torch.float16
    path = write_tiny_checkpoint(tmp_path / "bf16.safetensors", dtype=torch.bfloat16)
    assert set(SafetensorsFile(path).dtypes().values()) == {"BF16", "U8"}
    assert load_ace_step(path, dtype=torch.bfloat16).info.file_dtypes["transformer"] == ["BF16"]


def test_hf_cache_folder_and_config_json_heads(tmp_path, tiny):
    snap = tmp_path / "models--ACE-Step--ACE-Step-v1-3.5B" / "snapshots" / "0123abc"
    shutil.copytree(tiny["folder"], snap)
    info = inspect_checkpoint(tmp_path)
    assert info.layout == "folder" and info.components == ("transformer", "vae", "text_encoder", "tokenizer")
    # Heads cannot be read from shapes; an original config.json that states them is honoured.
    cfg_path = snap / "ace_step_transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["num_attention_heads"] = 4
    cfg_path.write_text(json.dumps(cfg))
    model = load_transformer(tmp_path, dtype=torch.float32)
    assert (model.config.num_heads, model.config.head_dim) == (4, 16)


def test_split_files(tmp_path, tiny, loaded):
    t = all_tensors(tiny["file"])

    def part(prefix, new=""):
        return {new + k[len(prefix):]: v for k, v in t.items() if k.startswith(prefix)}

    def same(a, b):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)

    # diffusion_models/: with and without the checkpoint prefix
    for name, tensors in (("prefixed", part("model.diffusion_model.", "model.diffusion_model.")),
                          ("bare", part("model.diffusion_model."))):
        path = tmp_path / f"unet_{name}.safetensors"
        save_safetensors(path, tensors)
        same(load_transformer(path, dtype=torch.float32), loaded.transformer)
        assert inspect_checkpoint(path).layout == "split"
    # vae/: `vae.dcae.*` or bare `dcae.*`, vocoder in another weight-norm spelling
    save_safetensors(tmp_path / "vae_prefixed.safetensors", part("vae.", "vae."))
    same(load_vae(tmp_path / "vae_prefixed.safetensors"), loaded.vae)
    vae_state, _ = tiny_state_dicts(seed=0, vocoder_variant="parametrizations")
    save_safetensors(tmp_path / "vae_param.safetensors", vae_state["vae"])
    vae = load_vae(tmp_path / "vae_param.safetensors")
    assert inspect_checkpoint(tmp_path / "vae_param.safetensors").vocoder_weight_norm == "parametrizations"
    for k, v in loaded.vae.state_dict().items():
        torch.testing.assert_close(vae.state_dict()[k], v, rtol=1e-6, atol=1e-7)
    fused_state, _ = tiny_state_dicts(seed=0, vocoder_variant="fused")  # the module's own weights, unnormed
    save_safetensors(tmp_path / "vae_fused.safetensors", {"vae." + k: v for k, v in fused_state["vae"].items()})
    assert inspect_checkpoint(tmp_path / "vae_fused.safetensors").vocoder_weight_norm == "fused"
    vae = load_vae(tmp_path / "vae_fused.safetensors")
    assert all(torch.equal(v, fused_state["vae"][k]) for k, v in vae.state_dict().items())
    # text_encoders/: ComfyUI naming with spiece_model, or HF naming (tied embed_tokens copy, no tokenizer)
    save_safetensors(tmp_path / "te_comfy.safetensors", part("text_encoders.", ""))
    te = load_ace_step(tmp_path / "te_comfy.safetensors", dtype=torch.float32,
                       components=("text_encoder", "tokenizer"))
    same(te.text_encoder, loaded.text_encoder)
    assert [te.tokenizer.encode(x) for x in TEXTS] == [loaded.tokenizer.encode(x) for x in TEXTS]
    hf = part("text_encoders.umt5base.transformer.")
    hf["encoder.embed_tokens.weight"] = hf["shared.weight"]
    save_safetensors(tmp_path / "te_hf.safetensors", hf)
    same(load_text_encoder(tmp_path / "te_hf.safetensors"), loaded.text_encoder)
    with pytest.raises(CheckpointNotFoundError, match="has no tokenizer"):
        load_text_tokenizer(tmp_path / "te_hf.safetensors")
    tok = load_text_tokenizer(tiny["folder"] / "umt5-base" / "tokenizer.json")
    assert tok.encode(TEXTS[0]) == loaded.tokenizer.encode(TEXTS[0])
    # A component file asked for everything says what it lacks and what to do.
    with pytest.raises(CheckpointNotFoundError, match="has no vae, text_encoder, tokenizer weights") as e:
        load_ace_step(tmp_path / "unet_bare.safetensors")
    assert "Load that component from its own file" in str(e.value)


# ------------------------------------------------------------------------------------------------ dropped keys

def test_dropped_keys_are_never_read(tmp_path, tiny, loaded, monkeypatch):
    read = []
    original = SafetensorsFile.read

    def spy(self, name, dtype=None):
        read.append(name)
        return original(self, name, dtype)

    monkeypatch.setattr(SafetensorsFile, "read", spy)
    load_ace_step(tiny["file"], dtype=torch.float32)
    keys = SafetensorsFile(tiny["file"]).keys()
    unused = [k for k in keys if any(m in k for m in UNUSED_MARKERS)]
    assert len(unused) == 28 + 2 + 1  # tiny: 2 projectors x 6, 2 blocks x 8 add_*; 2 mel buffers; logit_scale
    assert not set(read) & set(unused)
    assert sorted(read) == sorted(set(keys) - set(unused))  # everything else, once each
    monkeypatch.undo()

    # Garble every unused tensor's bytes (0xFF = NaN in fp32): the load and its outputs do not change.
    garbled = tmp_path / "garbled.safetensors"
    shutil.copy(tiny["file"], garbled)
    with SafetensorsFile(garbled) as f:
        spans = [(b, e - b) for b, e in map(f.byte_range, unused)]
    with open(garbled, "r+b") as fh:
        for start, n in spans:
            fh.seek(start)
            fh.write(b"\xff" * n)
    assert_same_outputs(outputs(load_ace_step(garbled, dtype=torch.float32)), outputs(loaded))


# ------------------------------------------------------------------------------------------------ refusals

class _Payload:
    """Unpickling this creates a marker file: proof of whether a loader ran the pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_payload_is_live(tmp_path):
    marker = tmp_path / "pwned"
    pickle.loads(pickle.dumps(_Payload(marker)))  # deliberately, to show the test below is meaningful
    assert marker.exists()


@pytest.mark.parametrize("name,zip_format", [("model.ckpt", True), ("model.pt", False), ("sneaky.safetensors", True),
                                             ("legacy.safetensors", False)])
def test_pickle_is_refused_unopened(tmp_path, name, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / name
    torch.save({"state_dict": {"x": torch.zeros(2)}, "evil": _Payload(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    for call in (lambda: load_ace_step(path), lambda: SafetensorsFile(path), lambda: inspect_checkpoint(path)):
        with pytest.raises(UnsafeCheckpointError) as e:
            call()
        msg = str(e.value)
        assert str(path) in msg and "only loads .safetensors" in msg and "safetensors.torch" in msg
    assert not marker.exists()


def test_folder_with_only_pickles_is_refused(tmp_path, tiny):
    root = tmp_path / "ckpt"
    shutil.copytree(tiny["folder"], root)
    (root / "ace_step_transformer" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, root / "ace_step_transformer" / "diffusion_pytorch_model.bin")
    with pytest.raises(UnsafeCheckpointError, match="only pickle weights"):
        load_ace_step(root)


def test_truncated_file(tmp_path, tiny):
    data = tiny["file"].read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(data[: len(data) - 1000])
    with pytest.raises(CorruptCheckpointError) as e:
        load_ace_step(path)
    assert "file is truncated" in str(e.value) and "download the file again" in str(e.value)
    assert str(path) in str(e.value)
    path.write_bytes(data[:100])  # cut inside the header
    with pytest.raises(CorruptCheckpointError, match="truncated: the header alone needs"):
        SafetensorsFile(path)
    path.write_bytes(data[:5])
    with pytest.raises(CorruptCheckpointError, match="too small"):
        SafetensorsFile(path)


def test_header_problems(tmp_path):
    t = lambda name, n: {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}  # noqa: E731
    cases = {
        "huge header": (write_raw(tmp_path / "huge.safetensors", b"{}", header_len=2**40),
                        CorruptCheckpointError, "above the 104,857,600-byte limit"),
        "lying size": (write_raw(tmp_path / "lie.safetensors", {"a": {"dtype": "F32", "shape": [4],
                                                                      "data_offsets": [0, 8]}}, b"\0" * 8),
                       CorruptCheckpointError, "header is inconsistent with its data"),
        "overlap": (write_raw(tmp_path / "overlap.safetensors", {"a": t("a", 2), "b": t("b", 2)}, b"\0" * 16),
                    CorruptCheckpointError, "invalid offset for tensor"),
        "gap": (write_raw(tmp_path / "gap.safetensors", {"a": {"dtype": "F32", "shape": [2],
                                                               "data_offsets": [8, 16]}}, b"\0" * 16),
                CorruptCheckpointError, "invalid offset for tensor"),
        "trailing": (write_raw(tmp_path / "trail.safetensors", {"a": t("a", 2)}, b"\0" * 12),
                     CorruptCheckpointError, "file not fully covered"),
        "beyond end": (write_raw(tmp_path / "short.safetensors", {"a": t("a", 4)}, b"\0" * 8),
                       CorruptCheckpointError, "file is truncated"),
        "unknown dtype": (write_raw(tmp_path / "dtype.safetensors", {"a": {"dtype": "F4X", "shape": [2],
                                                                           "data_offsets": [0, 1]}}, b"\0"),
                          UnsupportedCheckpointError, "unknown variant `F4X`"),
        "not json": (write_raw(tmp_path / "nojson.safetensors", b"{nope"), CorruptCheckpointError, "not valid JSON"),
        "duplicate": (write_raw(tmp_path / "dup.safetensors", b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                                b'"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4),
                      CorruptCheckpointError, "names 'a' twice"),
        "bad shape": (write_raw(tmp_path / "shape.safetensors", {"a": {"dtype": "F32", "shape": [-1],
                                                                       "data_offsets": [0, 4]}}, b"\0" * 4),
                      CorruptCheckpointError, "integer `-1`"),
    }
    for case, (path, cls, text) in cases.items():
        with pytest.raises(cls) as e:
            SafetensorsFile(path)
        assert text in str(e.value), case
        assert str(path) in str(e.value), case


def _tiny_with(tmp_path, name, edit) -> Path:
    tensors = all_tensors(write_tiny_checkpoint(tmp_path / "base.safetensors"))
    edit(tensors)
    path = tmp_path / name
    save_safetensors(path, tensors)
    return path


def test_missing_and_wrong_shaped_tensors(tmp_path):
    key = "model.diffusion_model.transformer_blocks.1.attn.to_q.weight"
    path = _tiny_with(tmp_path, "missing.safetensors", lambda t: t.pop(key))
    with pytest.raises(CheckpointMismatchError) as e:
        load_ace_step(path)
    assert f"1 tensors are missing: {key}" in str(e.value) and str(path) in str(e.value)

    many = sorted(k for k in all_tensors(tmp_path / "base.safetensors")
                  if k.startswith("model.diffusion_model.transformer_blocks.") and k.endswith(".bias")
                  and not any(m in k for m in UNUSED_MARKERS))[:15]
    path = _tiny_with(tmp_path, "many.safetensors", lambda t: [t.pop(k) for k in many])
    with pytest.raises(CheckpointMismatchError, match=r"15 tensors are missing: .* \(and 5 more\)") as e:
        load_transformer(path)
    assert many[0] in str(e.value) and many[-1] not in str(e.value)
    load_vae(path)  # the other components of that file are fine

    path = _tiny_with(tmp_path, "nodecoder.safetensors",
                      lambda t: [t.pop(k) for k in list(t) if k.startswith("vae.dcae.decoder.up_blocks.0.")])
    with pytest.raises(CheckpointMismatchError, match="shapes do not describe a valid ACE-Step v1 music VAE"):
        load_vae(path)

    key = "text_encoders.umt5base.transformer.encoder.block.1.layer.1.DenseReluDense.wo.weight"
    path = _tiny_with(tmp_path, "shape.safetensors", lambda t: t.__setitem__(key, torch.zeros(32, 63)))
    with pytest.raises(CheckpointMismatchError, match=rf"wrong shape: {key} \[32, 63\] \(expected \[32, 64\]\)"):
        load_text_encoder(path)

    key = "model.diffusion_model.genre_embedder.weight"  # needed to infer the config at all
    path = _tiny_with(tmp_path, "noconfig.safetensors", lambda t: t.pop(key))
    with pytest.raises(CheckpointMismatchError, match="tensor 'genre_embedder.weight'.* is missing"):
        load_transformer(path)

    key = "vae.vocoder.head.conv_pre.weight_g"
    path = _tiny_with(tmp_path, "halfwn.safetensors", lambda t: t.pop(key))
    with pytest.raises(CheckpointMismatchError, match="has no partner"):
        load_vae(path)


def test_unexpected_and_foreign_keys(tmp_path):
    path = _tiny_with(tmp_path, "extra.safetensors",
                      lambda t: t.__setitem__("model.diffusion_model.transformer_blocks.0.attn.extra.weight",
                                              torch.zeros(2)))
    with pytest.raises(CheckpointMismatchError, match="1 tensors are not part of the diffusion transformer: "
                                                      "model.diffusion_model.transformer_blocks.0.attn.extra.weight"):
        load_transformer(path)
    path = _tiny_with(tmp_path, "stray.safetensors", lambda t: t.__setitem__("some_other_thing.weight", torch.zeros(2)))
    with pytest.raises(CheckpointMismatchError, match="belong to no part of ACE-Step v1: some_other_thing.weight"):
        load_ace_step(path)
    # A LoRA merged into the file, a LoRA on its own, an SDXL checkpoint.
    path = _tiny_with(tmp_path, "merged_lora.safetensors", lambda t: t.__setitem__(
        "model.diffusion_model.transformer_blocks.0.attn.to_q.lora_A.weight", torch.zeros(4, 64)))
    with pytest.raises(WrongModelError, match="this looks like a LoRA"):
        load_transformer(path)
    lora = tmp_path / "lora.safetensors"
    save_safetensors(lora, {"transformer_blocks.0.attn.to_q.lora_A.weight": torch.zeros(4, 64),
                                 "transformer_blocks.0.attn.to_q.lora_B.weight": torch.zeros(64, 4)})
    with pytest.raises(WrongModelError, match="this looks like a LoRA .*not an ACE-Step v1 base checkpoint"):
        load_ace_step(lora)
    sdxl = tmp_path / "sdxl.safetensors"
    save_safetensors(sdxl, {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4),
                            "model.diffusion_model.label_emb.0.0.weight": torch.zeros(4),
                            "conditioner.embedders.1.model.ln_final.weight": torch.zeros(4),
                            "first_stage_model.encoder.conv_in.weight": torch.zeros(4)})
    with pytest.raises(WrongModelError, match="this looks like an SDXL image checkpoint, not ACE-Step v1"):
        load_ace_step(sdxl)
    with pytest.raises(CheckpointNotFoundError, match="no such file"):
        load_ace_step(tmp_path / "nope.safetensors")


# ------------------------------------------------------------------------------------------------ full size

def _write_sparse_full_size(path: Path, dtype_name="BF16"):
    """A real-layout, full-size all-in-one file whose data is a hole (all zeros): instant to write, no disk used.
    Only the tokenizer bytes (the tiny spm's) are real."""
    from fixtures.spm_training import train_tiny_spm

    shapes = file_layout_shapes(FULL)[ALL_IN_ONE_NAME]
    spm = train_tiny_spm()
    header, pos = {"__metadata__": {"note": "sparse full-size test file"}}, 0
    for k in sorted(shapes):
        n = 2 * int(torch.Size(shapes[k]).numel())
        header[k] = {"dtype": dtype_name, "shape": list(shapes[k]), "data_offsets": [pos, pos + n]}
        pos += n
    header[ckpt.SPIECE_KEY] = {"dtype": "U8", "shape": [len(spm)], "data_offsets": [pos, pos + len(spm)]}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        f.seek(8 + len(raw) + pos)
        f.write(spm)
    return path


def test_full_size_header_inspection(tmp_path):
    path = _write_sparse_full_size(tmp_path / ALL_IN_ONE_NAME)
    assert path.stat().st_size > 7.6e9
    start = time.perf_counter()
    info = inspect_checkpoint(path)
    report("full-size header validation + config inference", round(time.perf_counter() - start, 2), unit="s")
    assert info.configs == FULL and info.layout == "all-in-one"
    assert info.components == ("transformer", "vae", "text_encoder", "tokenizer")


def _mem_available_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1e6
    except OSError:
        pass
    return 0.0


HEAVY = os.environ.get("ACE_HEAVY_TESTS", "auto")


@pytest.mark.skipif(HEAVY == "0" or (HEAVY == "auto" and _mem_available_gb() < 10),
                    reason="needs ~7 GB of RAM (set ACE_HEAVY_TESTS=1 to force, 0 to skip)")
def test_full_size_load_bf16_time_and_memory(tmp_path):
    """The whole 3.5B model materialised in bf16 on CPU through the real loader path (file reads included), in a
    fresh process so that its peak RSS is the loader's alone."""
    path = _write_sparse_full_size(tmp_path / ALL_IN_ONE_NAME)
    script = textwrap.dedent("""
        import json, resource, sys, time, torch
        start = time.perf_counter()
        from ace_step.loading.v1_checkpoint import load_ace_step
        m = load_ace_step(sys.argv[1], dtype=torch.bfloat16)
        seconds = time.perf_counter() - start
        nets = (m.transformer, m.vae, m.text_encoder)
        print(json.dumps({
            "seconds": seconds,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
            "params": sum(p.numel() for n in nets for p in n.parameters()),
            "bf16": all(p.dtype == torch.bfloat16 for n in nets for p in n.parameters()),
            "skipped": m.info.skipped,
        }))
    """)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    report("full-size load bf16 on CPU (all components, sparse file)", round(result["seconds"], 1), unit="s",
           peak_rss_gb=round(result["peak_rss_gb"], 2), params_loaded=result["params"],
           skipped_unread=result["skipped"])
    assert result["bf16"]
    assert result["params"] == 3_130_078_891  # 3.847 G in the file minus 0.718 G training-only/dead, minus buffers
    assert result["skipped"] == {"transformer": 12 + 24 * 8, "vae": 2, "umt5": 1}
    assert result["peak_rss_gb"] < 10
    assert result["seconds"] < 120
