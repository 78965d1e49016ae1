"""scripts/benchmark_v15.py end to end in its tiny mode (tiny LM, DiT and VAE; every implementation: the pack's LM
and transformers' on the same tensors, the DiT with its FLOP floor, the VAE module, the pack's ComfyUI VAE and
diffusers' AutoencoderOobleck): it runs, prints the table, and its JSON holds finite numbers in the documented
columns. The tasks stage (`--stages tasks`) apart: every 1.5 task's row, output length and DiT forward count. No
timing is asserted (it depends on the machine); BENCHMARKS.md has the measured numbers."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from measure import OUTPUT_DIR

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = ["stage", "impl", "work", "audio_s", "median_s", "s_per_audio_s", "vs_ref", "floor_s_per_audio_s",
           "of_floor"]


def test_benchmark_v15_tiny_mode():
    out = OUTPUT_DIR / "benchmark-v15-test" / "tiny.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_v15.py"), "--preset", "tiny",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    result = json.loads(out.read_text())
    assert result["columns"] == COLUMNS
    assert result["machine"]["device_figures"]["peak"] > 0 and result["machine"]["transformers"]
    rows = result["rows"]
    assert all(list(r)[:len(COLUMNS)] == COLUMNS for r in rows)
    got = {(r["stage"], r["impl"]) for r in rows}
    assert got == {("LM", "pack"), ("LM", "transformers"), ("DiT", "pack"),
                   *((f"VAE {what}", impl) for what in ("decode", "encode")
                     for impl in ("pack", "pack (ComfyUI VAE)", "diffusers"))}
    for r in rows:
        numbers = [r["audio_s"], r["median_s"], r["s_per_audio_s"]]
        numbers += [r[k] for k in ("vs_ref", "floor_s_per_audio_s", "of_floor") if r[k] is not None]
        assert all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in numbers), r
        assert r["s_per_audio_s"] == r["median_s"] / r["audio_s"]
    # The pack rows compare against their reference, every reference-timed stage and the DiT has a floor.
    for r in rows:
        if r["impl"].startswith("pack") and r["stage"] != "DiT":
            assert r["vs_ref"] is not None and r["of_floor"] is not None, r
    assert sum(r["stage"] == "DiT" and r["of_floor"] is not None for r in rows) == 2  # turbo, sft/base
    # Same weights: the VAE decodes agree with diffusers' to float rounding; every output is finite.
    for r in rows:
        if r["stage"].startswith("VAE"):
            assert r["finite"]
            if r["stage"] == "VAE decode" and r["impl"] != "diffusers":
                assert r["max_abs_diff_vs_diffusers"] <= 1e-4, r
    header = "| stage | impl | work | audio s | median s | s / audio s | vs ref | floor s / audio s | of floor |"
    assert header in proc.stdout
    assert sum(line.startswith("| LM |") or line.startswith("| DiT |") or line.startswith("| VAE ")
               for line in proc.stdout.splitlines()) == len(rows)


# The tasks stage (not a default stage): every 1.5 task through the pack's nodes (text2music through KSampler).
TASKS = {"turbo": ["text2music", "cover", "repaint", "extend"], "base": ["text2music", "extract", "lego", "complete"]}


def test_benchmark_v15_tasks_stage_tiny_mode():
    out = OUTPUT_DIR / "benchmark-v15-test" / "tiny-tasks.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_v15.py"), "--preset", "tiny",
                           "--stages", "tasks", "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-5000:]
    result = json.loads(out.read_text())
    steps, [source] = result["args"]["task_steps"], result["args"]["task_seconds"]
    rows = result["rows"]
    assert all(list(r)[:len(COLUMNS)] == COLUMNS and r["stage"] == "Task" for r in rows)
    # Each task once, in order, after the text encode (which no task row holds).
    assert [(r["schedule"], r["impl"]) for r in rows] == \
        [(None, "text encode")] + [(schedule, task) for schedule, tasks in TASKS.items() for task in tasks]
    for r in rows:
        assert all(math.isfinite(x) and x > 0 for x in (r["audio_s"], r["median_s"], *r["times"])), r
        assert r["s_per_audio_s"] == r["median_s"] / r["audio_s"] and r["vs_ref"] is None
        if r["impl"] == "text encode":
            assert r["forwards"] == 0 and r["floor_s_per_audio_s"] is None
            continue
        assert r["finite"] and r["floor_s_per_audio_s"] > 0 and r["of_floor"] > 0
        # Seconds of output: extend adds half the song on the right; the others keep its length.
        assert r["audio_s"] == pytest.approx(source * (1.5 if r["impl"] == "extend" else 1.0))
        baseline = next(b for b in rows if b["schedule"] == r["schedule"] and b["impl"] == "text2music")
        assert r["x_text2music"] == pytest.approx(r["s_per_audio_s"] / baseline["s_per_audio_s"])
        # DiT forwards: turbo 8 steps of one row (cfg 1); base `steps` with CFG = 2 rows a step, which the task loop
        # runs as two 1-row calls and KSampler as ComfyUI batches cond and uncond (today two calls: the pack's null
        # pass has a key the positive lacks; one 2-row call if that changes).
        if r["schedule"] == "turbo":
            assert (r["forwards"], r["dit_rows"], r["steps"]) == (8, 8, 8), r
        else:
            assert r["dit_rows"] == 2 * steps and r["steps"] == steps, r
            assert r["forwards"] in ((steps, 2 * steps) if r["impl"] == "text2music" else (2 * steps,)), r
        assert len(r["forward_shapes"]) == r["forwards"]
    assert sum(line.startswith("| Task |") for line in proc.stdout.splitlines()) == len(rows)
    assert f"turbo 8 steps cfg 1; base {steps} steps cfg 7" in proc.stdout
