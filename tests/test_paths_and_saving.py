"""Where the pack reads and writes (issue 7): names with '..', absolute paths and links in checkpoint, LoRA and
filename-prefix inputs never reach outside ComfyUI's folders; saving is atomic, never replaces a file, survives a
full disk with a clear error, and a later failing node never removes an earlier output.

The resolve functions run in-process against a private ComfyUI folder layout (tmp_path); the end-to-end cases run
through the real server (the hostile corpus in test_hostile_inputs.py covers the prompt side of the names)."""
import errno
import os
import random
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from comfy_harness import run_prompt
from measure import OUTPUT_DIR
from pack_inprocess import PACKAGE, import_pack

BASE = OUTPUT_DIR / "comfy-base"
HOSTILE_NAMES = ["../x.safetensors", "../../outside/x.safetensors", "/etc/passwd", "sub/../../x.safetensors",
                 "..\\..\\x.safetensors", "x\0.safetensors", "", "..", 5]


@pytest.fixture
def comfy_dirs(tmp_path, monkeypatch):
    """ComfyUI's folder_paths pointed at tmp_path/comfy (models, input, output, temp, user); tmp_path/outside is a
    folder ComfyUI does not own, holding a model and a LoRA that links may point to."""
    import_pack()
    import folder_paths

    root = tmp_path / "comfy"
    models = root / "models"
    kinds = {name: ([str(models / name)], exts) for name, (_, exts) in folder_paths.folder_names_and_paths.items()}
    for paths, _ in kinds.values():
        Path(paths[0]).mkdir(parents=True)
    monkeypatch.setattr(folder_paths, "folder_names_and_paths", kinds)
    monkeypatch.setattr(folder_paths, "filename_list_cache", {})
    monkeypatch.setattr(folder_paths, "models_dir", str(models))
    for name in ("output", "input", "temp", "user"):
        (root / name).mkdir()
        monkeypatch.setattr(folder_paths, f"{name}_directory", str(root / name))
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.safetensors").write_bytes(b"secret model")
    (models / "x.safetensors").write_bytes(b"not a checkpoint folder file")  # what '../x.safetensors' would reach
    return root, outside


def _pack(module: str):
    import importlib

    return importlib.import_module(f"{PACKAGE}.{module}")


# ------------------------------------------------------------------------------------------------ reading models
@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=[repr(n) for n in HOSTILE_NAMES])
def test_hostile_model_names_are_refused(comfy_dirs, name):
    paths, loader = _pack("comfy_bridge.paths"), _pack("nodes.loader")
    for resolve in (loader.resolve_checkpoint, lambda n: paths.model_file("loras", n),
                    lambda n: paths.model_folder("checkpoints", n, "ace_step_transformer")):
        with pytest.raises(paths.UnsafePathError) as e:
            resolve(name)
        assert any(s in str(e.value) for s in ("outside ComfyUI's folders", "is empty", "NUL", "must be a name"))


def test_model_links_are_followed_only_inside_comfyui(comfy_dirs):
    root, outside = comfy_dirs
    paths, loader = _pack("comfy_bridge.paths"), _pack("nodes.loader")
    checkpoints, loras = root / "models" / "checkpoints", root / "models" / "loras"
    (checkpoints / "real.safetensors").write_bytes(b"a")
    assert loader.resolve_checkpoint("real.safetensors") == (checkpoints / "real.safetensors").resolve()
    # A link to another of ComfyUI's model folders is fine (models shared between kinds).
    (root / "models" / "diffusion_models" / "shared.safetensors").write_bytes(b"b")
    (checkpoints / "shared.safetensors").symlink_to(root / "models" / "diffusion_models" / "shared.safetensors")
    assert loader.resolve_checkpoint("shared.safetensors") == \
        (root / "models" / "diffusion_models" / "shared.safetensors").resolve()
    # Links that leave ComfyUI's folders: a file, a file in a linked sub-folder, a LoRA.
    (checkpoints / "evil.safetensors").symlink_to(outside / "x.safetensors")
    (checkpoints / "linked").symlink_to(outside, target_is_directory=True)
    (loras / "evil.safetensors").symlink_to(outside / "x.safetensors")
    for resolve, name in ((loader.resolve_checkpoint, "evil.safetensors"),
                          (loader.resolve_checkpoint, "linked/x.safetensors"),
                          (lambda n: paths.model_file("loras", n), "evil.safetensors")):
        with pytest.raises(paths.UnsafePathError) as e:
            resolve(name)
        assert str(outside / "x.safetensors") in str(e.value) and "extra_model_paths.yaml" in str(e.value)
    # Dangling links and missing files are "not there", with where to put the file.
    (checkpoints / "dangling.safetensors").symlink_to(outside / "gone.safetensors")
    for name in ("dangling.safetensors", "missing.safetensors"):
        with pytest.raises(FileNotFoundError, match="put it there"):
            loader.resolve_checkpoint(name)


def test_original_layout_folder_links(comfy_dirs):
    root, outside = comfy_dirs
    paths, loader = _pack("comfy_bridge.paths"), _pack("nodes.loader")
    checkpoints = root / "models" / "checkpoints"
    good = checkpoints / "ace" / "ace_step_transformer"
    good.mkdir(parents=True)
    (good / "diffusion_pytorch_model.safetensors").write_bytes(b"c")
    assert loader.resolve_checkpoint("ace/") == (checkpoints / "ace").resolve()
    # The folder itself linked outside, or one file inside it linked outside: both refused.
    (outside / "ace_out" / "ace_step_transformer").mkdir(parents=True)
    (checkpoints / "ace_linked").symlink_to(outside / "ace_out", target_is_directory=True)
    (good / "config.json").symlink_to(outside / "x.safetensors")
    for name, leaked in (("ace_linked/", outside / "ace_out"), ("ace/", outside / "x.safetensors")):
        with pytest.raises(paths.UnsafePathError, match="outside ComfyUI's folders") as e:
            loader.resolve_checkpoint(name)
        assert str(leaked) in str(e.value)


# ------------------------------------------------------------------------------------------------ writing songs
@pytest.mark.parametrize("prefix,says", [
    ("../escaped", "outside ComfyUI's folders"), ("a/../../escaped", "outside ComfyUI's folders"),
    ("/tmp/escaped", "outside ComfyUI's folders"), ("linked_out/song", "is a link to"),
    ("linked_out/new/song", "is a link to"), ("", "is empty"), ("./", "has no file name"),
    ("x" * 300, "file name of 300 bytes"), ("a\0b", "NUL"),
])
def test_hostile_filename_prefixes_are_refused(comfy_dirs, prefix, says):
    root, outside = comfy_dirs
    paths = _pack("comfy_bridge.paths")
    (root / "output" / "linked_out").symlink_to(outside, target_is_directory=True)
    before = sorted(p.name for p in outside.iterdir())
    with pytest.raises(paths.UnsafePathError, match=says.replace("(", r"\(")):
        paths.save_folder(prefix)
    assert sorted(p.name for p in outside.iterdir()) == before  # nothing created there


def test_filename_prefixes_inside_the_output_folder(comfy_dirs):
    root, _ = comfy_dirs
    paths = _pack("comfy_bridge.paths")
    output = (root / "output").resolve()
    (root / "output" / "albums").mkdir()
    (root / "output" / "latest").symlink_to(root / "output" / "albums", target_is_directory=True)
    cases = (("song", output), ("audio/ACE-Step", output / "audio"), ("deep/new/dir/x", output / "deep/new/dir"),
             ("latest/x", output / "albums"))
    for prefix, folder in cases:
        got, stem, counter, _ = paths.save_folder(prefix)
        assert Path(got).resolve() == folder and stem == prefix.split("/")[-1] and counter == 1


def test_save_unique_never_replaces_and_leaves_no_partial_file(tmp_path):
    save_unique = _pack("comfy_bridge.audio_files").save_unique
    (tmp_path / "song_00001_.flac").write_bytes(b"first")
    (tmp_path / "song_00002_.flac").symlink_to(tmp_path / "nowhere" / "x")  # a dangling link is a taken name too
    assert save_unique(b"second", str(tmp_path), "song", 1, "flac") == "song_00003_.flac"
    assert (tmp_path / "song_00001_.flac").read_bytes() == b"first"
    assert not (tmp_path / "nowhere").exists()
    assert (tmp_path / "song_00003_.flac").read_bytes() == b"second"
    assert not list(tmp_path.glob(".partial-*"))


def test_concurrent_saves_get_unique_names(tmp_path):
    """Several writers (another ComfyUI on the same output folder, say) never share or clobber a name."""
    save_unique = _pack("comfy_bridge.audio_files").save_unique
    names, lock = {}, threading.Lock()

    def writer(i):
        for j in range(5):
            data = f"writer {i} song {j}".encode() * 1000
            name = save_unique(data, str(tmp_path), "batch", 1, "wav")
            with lock:
                names[name] = data

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(names) == 40
    for name, data in names.items():
        assert (tmp_path / name).read_bytes() == data
    assert not list(tmp_path.glob(".partial-*"))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_full_disk_gives_a_clear_error_and_touches_nothing(tmp_path, monkeypatch, code):
    audio_files = _pack("comfy_bridge.audio_files")
    (tmp_path / "song_00001_.flac").write_bytes(b"earlier song")

    real_fdopen = os.fdopen

    class FailingFile:
        def __init__(self, fd, mode):
            self.f = real_fdopen(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])  # half of it lands, then the disk is full
            raise OSError(code, os.strerror(code))

    monkeypatch.setattr(audio_files.os, "fdopen", FailingFile)
    with pytest.raises(OSError) as e:
        audio_files.save_unique(b"x" * 10000, str(tmp_path), "song", 1, "flac")
    assert e.value.errno == code
    if code != errno.EIO:
        assert "is full" in str(e.value) and "free some space" in str(e.value) and str(tmp_path) in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song_00001_.flac"]
    assert (tmp_path / "song_00001_.flac").read_bytes() == b"earlier song"


# ------------------------------------------------------------------------------------------------ through the server
def test_later_failure_keeps_the_earlier_output(comfy_server, tiny_checkpoint):
    """Save first, then a node further down the graph fails: the song stays on disk and in the history."""
    prefix = f"tests/kept_{random.randrange(10**9)}"
    prompt = {
        "1": {"class_type": "AceStudioCheckpointLoader", "inputs": {"ckpt_name": tiny_checkpoint}},
        "2": {"class_type": "AceStudioEmptyLatentAudio", "inputs": {"seconds": 1.0, "batch_size": 1}},
        "3": {"class_type": "AceStudioLatentToAudio", "inputs": {"samples": ["2", 0], "vae": ["1", 2],
                                                                 "normalize": True}},
        "4": {"class_type": "AceStudioSaveAudio", "inputs": {"audio": ["3", 0], "filename_prefix": prefix,
                                                             "format": "flac", "quality": "V0"}},
        "5": {"class_type": "AudioAdjustVolume", "inputs": {"audio": ["3", 0], "volume": -6}},
        "6": {"class_type": "TestDeliberateFailure", "inputs": {"audio": ["5", 0]}},
    }
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "error" and result.error["node_type"] == "TestDeliberateFailure"
    assert "4" in result.error["executed"], "the save should have run before the failure"
    saved = list((BASE / "output" / "tests").glob(f"{prefix.split('/')[-1]}_*.flac"))
    assert len(saved) == 1
    data, rate = sf.read(saved[0])
    assert rate == 44100 and data.shape == (10 * 4096, 2) and np.isfinite(data).all()
    assert not list((BASE / "output" / "tests").glob(".partial-*"))
