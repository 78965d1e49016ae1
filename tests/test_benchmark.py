"""scripts/benchmark.py end to end in its tiny mode: both implementations run in their own processes, the printed
JSON holds each one's phases and memory, and their latents agree. No timing is asserted (it depends on the machine);
BENCHMARKS.md has the measured numbers. Also its checkpoint writer: streamed tensor by tensor, the same bytes as the
in-memory writer, in memory about one tensor at a time."""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ace_step.loading.safetensors_io import SafetensorsFile
from ace_step.models.v1.transformer import TransformerConfig
from benchmark import text_encoder_values_both_sides_hold
from fixtures.streamed_safetensors import write_streamed
from fixtures.tiny_checkpoint import stream_tiny_checkpoint, write_tiny_checkpoint
from measure import OUTPUT_DIR, report

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_tiny_mode():
    """Also its --baseline side: the pack at the committed revision, extracted and imported from its own folder."""
    workdir = OUTPUT_DIR / "benchmark-test"  # not the script's default folder, whose checkpoints it keeps
    out = workdir / "tiny.json"
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--preset", "tiny",
                               "--workdir", str(workdir), "--json", str(out), "--baseline", "HEAD"],
                              capture_output=True, text=True, timeout=1800)
    finally:
        for checkpoint in (workdir / "checkpoints").glob("*.safetensors"):
            checkpoint.unlink()  # 2.5 GB (full-size VAE and UMT5), rebuilt in seconds
        for tree in workdir.glob("baseline-*"):
            shutil.rmtree(tree)
    assert proc.returncode == 0, proc.stderr[-5000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout[proc.stdout.index("\n{") + 1:]) == result, "the printed JSON is the written one"
    assert result["versions"]["comfyui"] and result["machine"]["cores"] >= 1

    [case] = result["cases"]
    assert (case["seconds"], case["steps"], case["batch"]) == (1, 4, 1)
    for impl in ("native", "pack", "baseline"):
        stats = case[impl]
        assert all(stats[phase]["seconds"] > 0 and stats[phase]["cpu_seconds"] > 0
                   for phase in ("encode", "diffusion", "decode"))
        assert stats["total_seconds"] > stats["diffusion"]["seconds"]
        assert stats["decode"]["minor_faults"] > 0 and stats["decode"]["system_seconds"] >= 0
        assert stats["peak_rss_mb"] > 1000, "the full-size VAE and text encoder are resident"
        assert f"| {impl} " in proc.stdout
    assert case["latent_std"] > 0.1, "the sampled latent is not (near) zero"
    report("benchmark tiny mode: native vs pack latent max abs diff", case["latent_max_abs_diff"],
           tolerance=case["latent_tolerance"])
    assert case["latent_match"] and case["latent_max_abs_diff"] <= case["latent_tolerance"]

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert result["versions"]["baseline"] == commit.strip()
    assert result["pack_folders"] == {"pack": [str(ROOT)],
                                      "baseline": [str(workdir / f"baseline-{commit[:12]}")]}
    assert case["baseline_latent_match"] and case["baseline_latent_max_abs_diff"] <= case["latent_tolerance"]
    assert case["baseline_speedup"] > 0 and "| baseline " in proc.stdout
    assert set(case["pack_vs_baseline"]) == {"encode", "diffusion", "decode", "total"}
    assert case["pack_vs_baseline"]["total"] == case["baseline"]["total_seconds"] / case["pack"]["total_seconds"]
    assert "total pack vs baseline" in proc.stdout


@pytest.mark.parametrize("options", [
    {},
    {"seed": 3, "dtype": "bf16", "vocoder_variant": "parametrizations"},
    # The benchmark's own: UMT5 stored in fp16 (the edit changes its dtype), extra metadata.
    {"dtype": torch.float32, "edit": text_encoder_values_both_sides_hold, "metadata": {"ace_step_studio.x": "ü"}},
    {"dtype": "fp16", "vocoder_variant": "fused", "configs": {"transformer": TransformerConfig(
        hidden_size=256, num_heads=2, head_dim=128, num_layers=1)}},
], ids=["default", "bf16-parametrizations", "benchmark-edit", "fp16-fused-wider-dit"])
def test_streamed_checkpoint_bytes_equal_the_in_memory_writer(tmp_path, options):
    in_memory = write_tiny_checkpoint(tmp_path / "in_memory.safetensors", **options)
    streamed = stream_tiny_checkpoint(tmp_path / "streamed.safetensors", **options)
    assert streamed.read_bytes() == in_memory.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in_memory.safetensors", "streamed.safetensors"]
    # Read back through the library and through the pack's reader: the same tensors, in the standard layout.
    with SafetensorsFile(streamed) as ours, safe_open(str(streamed), "pt") as library:
        assert sorted(ours.keys()) == sorted(library.keys()) and ours.metadata == library.metadata()
        for key in ours.keys():
            assert torch.equal(ours.read(key), library.get_tensor(key)), key
        if "edit" in options:
            assert {d for k, d in ours.dtypes().items() if k.startswith("text_encoders.umt5base.")} == {"F16"}


def test_benchmark_text_encoder_values_are_exact_in_fp16_and_bf16():
    torch.manual_seed(0)
    values = torch.cat([torch.randn(10_000) * scale for scale in (1e-3, 0.02, 1.0, 30.0)])
    states = {"umt5": {"w": values.clone()}}
    text_encoder_values_both_sides_hold(states)
    held = states["umt5"]["w"]
    assert held.dtype == torch.float16
    assert torch.equal(held.bfloat16().float(), held.float()), "a value bf16 does not represent"
    assert (held.float() - values).abs().max() <= values.abs().max() * 2**-8, "more than bf16 rounding"


def test_streamed_writer_holds_about_one_tensor(tmp_path):
    """A 0.5 GB file (DiT 512 wide x 6 blocks, fp32) while the process's peak resident memory grows by less than a
    fifth of that: the in-memory writer holds every tensor (twice)."""
    transformer = TransformerConfig(hidden_size=512, num_heads=4, head_dim=128, num_layers=6)
    stream_tiny_checkpoint(tmp_path / "warm.safetensors", configs={"transformer": TransformerConfig(
        hidden_size=128, num_heads=1, head_dim=128, num_layers=1)})  # imports, SentencePiece, first allocations
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
    before = _vm_kb("VmRSS")
    path = stream_tiny_checkpoint(tmp_path / "big.safetensors", configs={"transformer": transformer})
    grown = (_vm_kb("VmHWM") - before) * 1024
    size = path.stat().st_size
    report("streamed checkpoint writer: peak RSS growth / file size", grown / size)
    assert size > 500e6 and grown < size / 5, f"peak grew {grown / 1e6:.0f} MB writing {size / 1e6:.0f} MB"


def _vm_kb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def test_streamed_writer_refuses_missing_and_unannounced_tensors(tmp_path):
    entries = {"a": ((2, 3), torch.float32), "b": ((4,), torch.bfloat16)}
    path = tmp_path / "x.safetensors"
    with pytest.raises(ValueError, match=r"1 announced tensors never came: \['b'\]"):
        write_streamed(path, entries, [("a", torch.zeros(2, 3))])
    with pytest.raises(ValueError, match="c: not announced"):
        write_streamed(path, entries, [("c", torch.zeros(1))])
    with pytest.raises(ValueError, match=r"b: got torch.float32 \[4\], the header says torch.bfloat16 \[4\]"):
        write_streamed(path, entries, [("b", torch.zeros(4))])
    assert list(tmp_path.iterdir()) == [], "no file, complete or partial, after a failure"
