"""scripts/benchmark.py end to end in its tiny mode: both implementations run in their own processes, the printed
JSON holds each one's phases and memory, and their latents agree. No timing is asserted (it depends on the machine);
BENCHMARKS.md has the measured numbers."""
import json
import subprocess
import sys
from pathlib import Path

from measure import OUTPUT_DIR, report

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_tiny_mode():
    workdir = OUTPUT_DIR / "benchmark-test"  # not the script's default folder, whose checkpoints it keeps
    out = workdir / "tiny.json"
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--preset", "tiny",
                               "--workdir", str(workdir), "--json", str(out)],
                              capture_output=True, text=True, timeout=1800)
    finally:
        for checkpoint in (workdir / "checkpoints").glob("*.safetensors"):
            checkpoint.unlink()  # 2.5 GB (full-size VAE and UMT5), rebuilt in seconds
    assert proc.returncode == 0, proc.stderr[-5000:]
    result = json.loads(out.read_text())
    assert json.loads(proc.stdout[proc.stdout.index("\n{") + 1:]) == result, "the printed JSON is the written one"
    assert result["versions"]["comfyui"] and result["machine"]["cores"] >= 1

    [case] = result["cases"]
    assert (case["seconds"], case["steps"], case["batch"]) == (1, 4, 1)
    for impl in ("native", "pack"):
        stats = case[impl]
        assert all(stats[phase]["seconds"] > 0 and stats[phase]["cpu_seconds"] > 0
                   for phase in ("encode", "diffusion", "decode"))
        assert stats["total_seconds"] > stats["diffusion"]["seconds"]
        assert stats["peak_rss_mb"] > 1000, "the full-size VAE and text encoder are resident"
        assert f"| {impl} " in proc.stdout
    assert case["latent_std"] > 0.1, "the sampled latent is not (near) zero"
    report("benchmark tiny mode: native vs pack latent max abs diff", case["latent_max_abs_diff"],
           tolerance=case["latent_tolerance"])
    assert case["latent_match"] and case["latent_max_abs_diff"] <= case["latent_tolerance"]
