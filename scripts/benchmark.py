"""Side-by-side benchmark: this pack vs ComfyUI's native ACE-Step, on identical weights, text to audio end to end.

    .venv/bin/python scripts/benchmark.py --preset cpu            # the CPU table of BENCHMARKS.md (reduced DiT)
    .venv/bin/python scripts/benchmark.py --preset cpu-full       # its full-size row (3.5B, fp32, ~15 GB a side)
    .venv/bin/python scripts/benchmark.py --preset cpu-full --load-only  # whether each side's load fits the RAM
    .venv/bin/python scripts/benchmark.py --preset gpu            # full-size 3.5B, bf16, on CUDA
    .venv/bin/python scripts/benchmark.py --preset gpu --lowvram  # the same under ComfyUI's --lowvram
    .venv/bin/python scripts/benchmark.py --preset cpu --baseline 72125b1  # + the pack at an older revision

Both sides run the same steps through ComfyUI's own Python API: load the checkpoint (native: CheckpointLoaderSimple;
pack: AceStudioCheckpointLoader), encode tags + lyrics (TextEncodeAceStepAudio / AceStudioTextEncode, then
ConditioningZeroOut), sample with ComfyUI's euler sampler and "simple" schedule under the original ACE-Step's default
guidance (APG, scale 15, momentum -0.75, inside the middle half of the steps; the conditional pass alone outside), and
decode (VAEDecodeAudio / AceStudioLatentToAudio). Each implementation runs in its own process (so peak memory is its
own), the two alternate (native first on even repeats, pack first on odd ones), and the table reports medians.
`--baseline REV` adds a third side, the pack as it was at git revision REV (its tree extracted with `git archive`
into the work folder), in the same alternation: whether the pack got slower, measured in one run, so a machine that
runs slower than on an earlier day cannot hide or fake a regression.

Identical weights: one generated checkpoint in the real all-in-one layout, random weights (its audio is noise, which
does not change the work done), written tensor by tensor (tests/fixtures/tiny_checkpoint.py `stream_tiny_checkpoint`:
the writer holds about one tensor, so the full-size fp32 file, 14.8 GB, is written on a 24 GB machine). ComfyUI builds
its VAE, UMT5 and lyric encoder only at full size, so those are full size; the DiT is reduced in the `cpu` preset
(`--width`, `--layers`), and native ComfyUI builds a reduced one through the test-only hook in tests/native_hook. A
reduced DiT flatters the diffusion speedup (the condition encoders whose output the pack caches weigh more beside a
small DiT); `cpu-full` measures the real size. UMT5 weights hold values that fp16 and bf16 both represent, because
native ComfyUI keeps its text encoder in fp16. The latents of both sides (same seed, same noise) are compared: the
script exits with 1 if their max |difference| exceeds the tolerance of the dtype.

Timings: encode = text encoding (tokenizers + UMT5), diffusion = sampling (condition encoding, DiT, guidance),
decode = latent to waveform; "s per audio s" = total / (seconds x batch). Memory per phase: peak RSS (the kernel's
high-water mark, reset before each phase) and, on CUDA, torch.cuda.max_memory_allocated / max_memory_reserved. The
load is measured the same way, and its resident memory split into anonymous (the process's own) and file-backed
pages (the checkpoint's page cache while mapped: the kernel can drop those, so the anonymous part is what must fit).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # `ace_step`, and the in-process ComfyUI helpers of the tests

IMPLEMENTATIONS = ("native", "pack", "baseline")  # baseline: the pack at --baseline REV, when given
PHASES = ("encode", "diffusion", "decode")
SEED = 20250426
TAGS = "synth-pop, electronic, female vocals, bright synthesizer, punchy drums, 118 bpm, uplifting"
LYRICS = """[verse]
Streetlights hum a silver tune
Painted shadows on the avenue
Every window tells a story
Every heartbeat finds a groove

[chorus]
Turn it up and let it glow
Running wild where the rivers flow
We are electric, we are gold
Dancing out into the cold

[verse]
Midnight trains and paper stars
Humming engines in the boulevard
Hold my hand across the static
Follow echoes where we are

[bridge]
Oh the city never sleeps
Oh the rhythm runs so deep

[chorus]
Turn it up and let it glow
Running wild where the rivers flow
We are electric, we are gold
Dancing out into the cold"""
LYRICS_STRENGTH = 1.0
# The original ACE-Step v1 pipeline's default guidance.
GUIDANCE_SCALE, GUIDANCE_INTERVAL = 15.0, 0.5
# max |latent(native) - latent(pack)| accepted (latents have std ~1). fp32: float rounding over the run (measured
# <= 5e-6); bf16: provisional, not yet measured.
TOLERANCE = {"fp32": 1e-4, "bf16": 5e-2}

PRESETS = {
    # Reduced DiT (4 x 128-wide heads, 6 blocks) with the full-size lyric encoder, VAE and UMT5.
    "cpu": dict(device="cpu", dtype="fp32", width=512, layers=6, seconds=[10, 30], steps=[27, 60], batch=[1],
                repeats=3, warmup=True),
    # The full-size DiT (20 x 128-wide heads, 24 blocks; 3.3 B parameters in the file). fp32: on a CPU native
    # ComfyUI holds and computes the DiT in fp32 whatever the file's dtype, so a bf16 file would save disk, not its
    # memory, and put the two sides on different numerics. Each side's process peaks at ~15 GB of its own memory
    # (measured: native 15.4 GB, pack 13.3 GB), one at a time. No warm-up: at this size it costs about three DiT
    # passes (the weights are read whatever the length), more than the first-call effects it would remove.
    "cpu-full": dict(device="cpu", dtype="fp32", width=2560, layers=24, seconds=[10], steps=[27], batch=[1],
                     repeats=1, warmup=False),
    "gpu": dict(device="cuda", dtype="bf16", width=2560, layers=24, seconds=[30, 120, 240], steps=[27, 60],
                batch=[1, 4], repeats=3, warmup=True),
    # A smoke run of the whole machinery (tests/test_benchmark.py): its timings mean nothing.
    "tiny": dict(device="cpu", dtype="fp32", width=256, layers=2, seconds=[1], steps=[4], batch=[1], repeats=1,
                 warmup=False),
}


# ---------------------------------------------------------------------------------------------------- checkpoint
def import_native_hook():
    """tests/native_hook: lets native ComfyUI build a reduced DiT from checkpoints that carry its marker."""
    name = "ace_step_native_parity_hook"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "native_hook" / "__init__.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules[name] = module
    return sys.modules[name]


def text_encoder_values_both_sides_hold(states: dict):
    """Native ComfyUI holds UMT5 in fp16, the pack in the model dtype: store values exact in fp16 and bf16 both
    (rounded to bf16's 8 significant bits, stored in fp16). Per tensor, and shapes only on meta tensors, as the
    streamed writer needs."""
    states["umt5"] = {k: v.float().bfloat16().half() if v.is_floating_point() else v
                      for k, v in states["umt5"].items()}


def ensure_checkpoint(folder: Path, width: int, layers: int, dtype: str) -> str:
    """The benchmark checkpoint's file name in `folder`, written first if missing (deterministic, seeded)."""
    from comfy_inprocess import native_hook_constant

    marker = native_hook_constant("MARKER")
    from ace_step.models.v1.music_vae import MusicVAEConfig
    from fixtures.tiny_checkpoint import stream_tiny_checkpoint
    from ace_step.models.v1.transformer import TransformerConfig
    from ace_step.models.v1.umt5 import UMT5Config

    name = f"ace_step_benchmark_dit{width}x{layers}_{dtype}.safetensors"
    path = folder / name
    if not path.exists():
        start = time.perf_counter()
        print(f"writing {path} ...", file=sys.stderr, flush=True)
        transformer = TransformerConfig(hidden_size=width, num_heads=width // 128, head_dim=128, num_layers=layers)
        # Tensor by tensor, renamed into place once complete (an interrupted write leaves no file under `name`).
        stream_tiny_checkpoint(path, dtype=dtype, configs={
            "transformer": transformer, "vae": MusicVAEConfig.full_size(), "umt5": UMT5Config.full_size(),
        }, edit=text_encoder_values_both_sides_hold, metadata={marker: "benchmark: DiT may be reduced"})
        print(f"  {path.stat().st_size / 1e9:.2f} GB in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return name


def import_comfy_for(device: str, lowvram: bool = False, pytorch_attention: bool = False):
    from comfy_inprocess import import_comfy

    return import_comfy(cpu=device == "cpu", lowvram=lowvram, pytorch_attention=pytorch_attention)


# ---------------------------------------------------------------------------------------------------- one process
class Native:
    """ComfyUI's own nodes."""

    def __init__(self):
        import_native_hook()
        import nodes
        from comfy_extras import nodes_ace, nodes_audio

        self.nodes, self.ace, self.audio = nodes, nodes_ace, nodes_audio

    def load(self, ckpt_name: str):
        return self.nodes.CheckpointLoaderSimple().load_checkpoint(ckpt_name)

    def encode(self, clip):
        return self.ace.TextEncodeAceStepAudio.execute(clip, TAGS, LYRICS, LYRICS_STRENGTH).args[0]

    def empty_latent(self, seconds: float, batch: int):
        return self.ace.EmptyAceStepLatentAudio.execute(seconds, batch).args[0]

    def decode(self, vae, latent):
        return self.audio.VAEDecodeAudio().decode(vae, latent)[0]


class Pack:
    """This pack's nodes (or those of the tree at `root`), loaded the way ComfyUI loads a custom node pack."""

    def __init__(self, root: Path = ROOT):
        from pack_inprocess import import_pack

        package = import_pack(root)
        self.nodes, self.folder = package.nodes, str(Path(package.__file__).parent)

    def load(self, ckpt_name: str):
        return self.nodes.CheckpointLoader.execute(ckpt_name).args

    def encode(self, clip):
        return self.nodes.TextEncode.execute(clip, TAGS, LYRICS, LYRICS_STRENGTH).args[0]

    def empty_latent(self, seconds: float, batch: int):
        return self.nodes.EmptyLatentAudio.execute(seconds, batch).args[0]

    def decode(self, vae, latent):
        return self.nodes.LatentToAudio.execute(latent, vae, True).args[0]


def interval_apg_guider(model, steps: int):
    """A ComfyUI guider running the original's default guidance: APG at GUIDANCE_SCALE on the loop indices the
    GuidanceSchedule selects (cond and uncond batched by ComfyUI), the conditional pass alone elsewhere."""
    import comfy.samplers

    from ace_step.sampling.guidance import GuidanceSchedule, MomentumBuffer, apg

    class IntervalAPGGuider(comfy.samplers.CFGGuider):
        def __init__(self):
            super().__init__(model)
            self.schedule = GuidanceSchedule(steps, GUIDANCE_SCALE, GUIDANCE_INTERVAL)
            self.momentum = MomentumBuffer()

        def predict_noise(self, x, timestep, model_options={}, seed=None):
            sigmas = model_options["transformer_options"]["sample_sigmas"]
            step = int((sigmas[:-1] - timestep[0]).abs().argmin())
            use_cfg, scale = self.schedule.at(step)
            conds = [self.conds.get("positive")] + ([self.conds.get("negative")] if use_cfg else [])
            denoised = comfy.samplers.calc_cond_batch(self.inner_model, conds, x, timestep, model_options)
            if not use_cfg:
                return denoised[0]
            # ComfyUI's flow models predict x0 = x - sigma * v; APG works on the velocities, as in the original.
            sigma = timestep.reshape(-1, *([1] * (x.ndim - 1)))
            velocity = apg((x - denoised[0]) / sigma, (x - denoised[1]) / sigma, scale, self.momentum)
            return x - sigma * velocity

    return IntervalAPGGuider()


def sample(model, positive, negative, latent: dict, steps: int):
    import comfy.model_management as mm
    import comfy.sample
    import comfy.samplers

    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    noise = comfy.sample.prepare_noise(samples, SEED)
    guider = interval_apg_guider(model, steps)
    guider.set_conds(positive, negative)
    sigmas = comfy.samplers.calculate_sigmas(model.get_model_object("model_sampling"), "simple", steps)
    out = guider.sample(noise, samples, comfy.samplers.sampler_object("euler"), sigmas, seed=SEED,
                        disable_pbar=True)
    return {**latent, "samples": out.to(mm.intermediate_device())}


class PhaseMeter:
    """Wall time, CPU and system time, minor page faults and peak memory of one phase (CUDA work is synchronised at
    both ends)."""

    def __init__(self, device: str):
        import torch

        self.torch, self.cuda = torch, device == "cuda"

    def __enter__(self):
        if self.cuda:
            self.torch.cuda.synchronize()
            self.torch.cuda.reset_peak_memory_stats()
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        self.start, self.start_cpu = time.perf_counter(), time.process_time()
        self.start_usage = resource.getrusage(resource.RUSAGE_SELF)
        return self

    def __exit__(self, *exc):
        if self.cuda:
            self.torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self.start_cpu
        usage = resource.getrusage(resource.RUSAGE_SELF)
        # Fresh pages from the kernel: where an allocator's state slows a phase down (see BENCHMARKS.md "CPU").
        self.system_seconds = usage.ru_stime - self.start_usage.ru_stime
        self.minor_faults = usage.ru_minflt - self.start_usage.ru_minflt
        status = Path("/proc/self/status").read_text()
        self.memory = {"peak_rss_mb": int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024}
        if self.cuda:
            self.memory["cuda_max_allocated_mb"] = self.torch.cuda.max_memory_allocated() / 2**20
            self.memory["cuda_max_reserved_mb"] = self.torch.cuda.max_memory_reserved() / 2**20


def resident_mb() -> dict:
    """The process's resident memory now: its own (anonymous) pages and file-backed ones (mapped checkpoints)."""
    status = Path("/proc/self/status").read_text()
    return {f"{name}_mb": int(re.search(rf"{field}:\s+(\d+) kB", status).group(1)) / 1024
            for name, field in (("rss_anon", "RssAnon"), ("rss_file", "RssFile"))}


def run_pipeline(impl, models, seconds: float, steps: int, batch: int, device: str):
    """({phase: timings and peak memory}, the sampled latent)."""
    model, clip, vae = models
    with PhaseMeter(device) as encode:
        positive = impl.encode(clip)
        negative = zero_out(positive)
    with PhaseMeter(device) as diffusion:
        latent = sample(model, positive, negative, impl.empty_latent(seconds, batch), steps)
    with PhaseMeter(device) as decode:
        audio = impl.decode(vae, latent)
    assert audio["waveform"].shape[0] == batch
    phases = {name: {"seconds": meter.seconds, "cpu_seconds": meter.cpu_seconds,
                     "system_seconds": meter.system_seconds, "minor_faults": meter.minor_faults, **meter.memory}
              for name, meter in zip(PHASES, (encode, diffusion, decode))}
    return phases, latent["samples"]


def zero_out(conditioning):
    """Core ConditioningZeroOut (the graph both sides share)."""
    import nodes

    return nodes.ConditioningZeroOut().zero_out(conditioning)[0]


def child(spec_path: Path) -> int:
    spec = json.loads(spec_path.read_text())
    import_comfy_for(spec["device"], spec["lowvram"], spec["pytorch_attention"])
    import folder_paths
    import torch

    folder_paths.add_model_folder_path("checkpoints", spec["checkpoint_dir"], is_default=True)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    impl = Native() if spec["impl"] == "native" else Pack(Path(spec["pack_root"]))
    with PhaseMeter(spec["device"]) as load:
        models = impl.load(spec["checkpoint"])
    loaded = {"seconds": load.seconds, **load.memory, **resident_mb()}
    source = {"pack_folder": impl.folder} if isinstance(impl, Pack) else {}
    if spec["load_only"]:
        Path(spec["result"]).write_text(json.dumps({"load": loaded, "runs": [], **source}))
        return 0
    with torch.inference_mode():
        if spec["warmup"]:  # first-call allocations, weight transfers
            run_pipeline(impl, models, 1.0, 2, 1, spec["device"])
        runs = []
        for case in spec["cases"]:
            phases, latent = run_pipeline(impl, models, case["seconds"], case["steps"], case["batch"], spec["device"])
            latent_path = Path(spec["latent_dir"]) / f"{spec['impl']}_{case['id']}.pt"
            torch.save(latent.cpu(), latent_path)
            runs.append({"case": case["id"], "phases": phases, "latent": str(latent_path)})
            print(f"  {spec['impl']} {case['id']}: {sum(p['seconds'] for p in phases.values()):.1f} s",
                  file=sys.stderr, flush=True)
    Path(spec["result"]).write_text(json.dumps({"load": loaded, "runs": runs, **source}))
    return 0


# ---------------------------------------------------------------------------------------------------- driver
def machine_and_versions(device: str, threads: int | None) -> tuple[dict, dict]:
    import torch
    from comfy_inprocess import comfyui_path

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = re.findall(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = names[0].strip() if names else cpu
    meminfo = Path("/proc/meminfo").read_text() if Path("/proc/meminfo").exists() else ""
    total = re.search(r"MemTotal:\s+(\d+) kB", meminfo)
    machine = {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads or torch.get_num_threads(),
               "ram_gb": round(int(total.group(1)) / 2**20, 1) if total else None, "os": platform.platform()}
    if device == "cuda":
        machine["gpu"] = torch.cuda.get_device_name(0)
    comfy_version = re.search(r'__version__ = "([^"]+)"', (comfyui_path() / "comfyui_version.py").read_text())
    git = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True)
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "comfyui": comfy_version.group(1) if comfy_version else None, "pack": git.stdout.strip() or None}
    return machine, versions


def median_phases(runs: list[dict]) -> dict:
    """Per phase the medians over the repeats; totals: medians of the per-run sums; peak memory: the largest phase's."""
    out = {phase: {k: statistics.median(r["phases"][phase][k] for r in runs) for k in runs[0]["phases"][phase]}
           for phase in PHASES}
    for key in ("seconds", "cpu_seconds"):
        out[f"total_{key}"] = statistics.median(sum(r["phases"][p][key] for p in PHASES) for r in runs)
    out.update({key: max(out[p][key] for p in PHASES) for key in runs[0]["phases"]["encode"] if key.endswith("_mb")})
    out["runs_total_seconds"] = [round(sum(r["phases"][p]["seconds"] for p in PHASES), 3) for r in runs]
    return out


def side_key(impl: str, name: str) -> str:
    """A row's key for one pack side's figure: `speedup` for this checkout, `baseline_speedup` for the baseline."""
    return name if impl == "pack" else f"{impl}_{name}"


def summarise(cases: list[dict], results: dict, tolerance: float) -> list[dict]:
    """Per case: each side's medians, and per pack side (this checkout's, and the baseline's when run) its speedups
    over native and its largest latent difference from native's over the repeats."""
    import torch

    def latent(result: dict, case_id: str):
        return torch.load(next(r["latent"] for r in result["runs"] if r["case"] == case_id)).double()

    rows = []
    for case in cases:
        row = dict(case)
        for impl in results:
            stats = median_phases([next(r for r in res["runs"] if r["case"] == case["id"]) for res in results[impl]])
            stats["seconds_per_audio_second"] = stats["total_seconds"] / (case["seconds"] * case["batch"])
            row[impl] = stats
        row["latent_std"] = latent(results["native"][0], case["id"]).std().item()
        row["latent_tolerance"] = tolerance
        for impl in results:
            if impl == "native":
                continue
            diff = max((latent(native, case["id"]) - latent(ours, case["id"])).abs().max().item()
                       for native, ours in zip(results["native"], results[impl]))
            row[side_key(impl, "speedup")] = row["native"]["total_seconds"] / row[impl]["total_seconds"]
            row[side_key(impl, "cpu_time_speedup")] = (row["native"]["total_cpu_seconds"]
                                                       / row[impl]["total_cpu_seconds"])
            row[side_key(impl, "diffusion_speedup")] = (row["native"]["diffusion"]["seconds"]
                                                        / row[impl]["diffusion"]["seconds"])
            row[side_key(impl, "latent_max_abs_diff")] = diff
            row[side_key(impl, "latent_match")] = diff <= tolerance
        if "baseline" in results:  # > 1: this checkout is faster than the baseline revision
            row["pack_vs_baseline"] = {phase: row["baseline"][phase]["seconds"] / row["pack"][phase]["seconds"]
                                       for phase in PHASES}
            row["pack_vs_baseline"]["total"] = row["baseline"]["total_seconds"] / row["pack"]["total_seconds"]
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    cuda = "cuda_max_allocated_mb" in rows[0]["native"]
    head = ["audio", "steps", "batch", "impl", "total s", "s/audio s", "encode s", "diffusion s", "decode s",
            "peak RSS MB"] + (["CUDA alloc MB", "CUDA reserved MB"] if cuda else []) + [
            "speedup", "CPU-time speedup", "diffusion speedup", "latent diff"]
    lines = [head]
    for row in rows:
        for impl in (i for i in IMPLEMENTATIONS if i in row):
            s = row[impl]
            line = [f"{row['seconds']:g} s", str(row["steps"]), str(row["batch"]), impl, f"{s['total_seconds']:.2f}",
                    f"{s['seconds_per_audio_second']:.3f}", f"{s['encode']['seconds']:.2f}",
                    f"{s['diffusion']['seconds']:.2f}", f"{s['decode']['seconds']:.2f}", f"{s['peak_rss_mb']:.0f}"]
            if cuda:
                line += [f"{s['cuda_max_allocated_mb']:.0f}", f"{s['cuda_max_reserved_mb']:.0f}"]
            line += ([f"{row[side_key(impl, 'speedup')]:.2f}x", f"{row[side_key(impl, 'cpu_time_speedup')]:.2f}x",
                      f"{row[side_key(impl, 'diffusion_speedup')]:.2f}x",
                      f"{row[side_key(impl, 'latent_max_abs_diff')]:.1e}"] if impl != "native" else [""] * 4)
            lines.append(line)
    return markdown(lines)


def baseline_table(rows: list[dict]) -> str:
    """This checkout against the baseline revision, same run: baseline seconds / pack seconds per phase."""
    lines = [["audio", "steps", "batch", *(f"{p} pack vs baseline" for p in (*PHASES, "total"))]]
    for row in rows:
        lines.append([f"{row['seconds']:g} s", str(row["steps"]), str(row["batch"]),
                      *(f"{row['pack_vs_baseline'][p]:.3f}x" for p in (*PHASES, "total"))])
    return markdown(lines)


def load_table(load: dict) -> str:
    lines = [["impl", "load s", "peak RSS MB", "anonymous MB after", "file-backed MB after"]]
    for impl in load:
        for r in load[impl]:
            lines.append([impl, f"{r['seconds']:.1f}", f"{r['peak_rss_mb']:.0f}", f"{r['rss_anon_mb']:.0f}",
                          f"{r['rss_file_mb']:.0f}"])
    return markdown(lines)


def markdown(lines: list[list[str]]) -> str:
    """A Markdown table (first line: the head), columns padded to their widest cell."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    fmt = lambda line: "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |"  # noqa: E731
    return "\n".join([fmt(lines[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(l) for l in lines[1:]])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="default: the preset's")
    parser.add_argument("--dtype", choices=sorted(TOLERANCE), help="default: the preset's")
    parser.add_argument("--width", type=int, help="DiT width (a multiple of 128; 2560 = full size)")
    parser.add_argument("--layers", type=int, help="DiT blocks (24 = full size)")
    parser.add_argument("--seconds", type=float, nargs="+")
    parser.add_argument("--steps", type=int, nargs="+")
    parser.add_argument("--batch", type=int, nargs="+")
    parser.add_argument("--repeats", type=int, help="runs per implementation; medians are reported")
    parser.add_argument("--lowvram", action="store_true", help="run both sides under ComfyUI's --lowvram")
    parser.add_argument("--pytorch-attention", action="store_true",
                        help="run both sides under ComfyUI's --use-pytorch-cross-attention (on a CPU ComfyUI "
                             "otherwise picks its sub-quadratic attention)")
    parser.add_argument("--threads", type=int, help="torch CPU threads of each side (default: torch's, one per core)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "test-output" / "benchmark",
                        help="holds the generated checkpoint (reused across runs) and the run's latents")
    parser.add_argument("--json", type=Path, help="also write the JSON result here")
    parser.add_argument("--load-only", action="store_true",
                        help="each side only loads the checkpoint (once) and reports time and memory: whether a size "
                             "fits the machine, before a long run")
    parser.add_argument("--baseline", metavar="REV",
                        help="also run the pack as it was at this git revision, as a third side of the same run")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    opts = parser.parse_args(argv)
    if opts.child:
        return child(opts.child)

    config = {k: v for k, v in PRESETS[opts.preset].items()}
    config.update({k: getattr(opts, k) for k in config if getattr(opts, k, None) is not None})
    if config["width"] % 128:
        parser.error("--width must be a multiple of 128 (ComfyUI's 128-wide heads)")
    config["lowvram"], config["pytorch_attention"] = opts.lowvram, opts.pytorch_attention
    if opts.load_only:
        config["repeats"] = 1
    cases = [{"id": f"{s:g}s_{n}steps_b{b}", "seconds": s, "steps": n, "batch": b}
             for s in config["seconds"] for n in config["steps"] for b in config["batch"]]
    checkpoint_dir = opts.workdir / "checkpoints"
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    roots, baseline_commit = {"native": None, "pack": ROOT}, None
    if opts.baseline:  # before writing a checkpoint, so a wrong revision is refused at once
        baseline_commit, roots["baseline"] = extract_revision(opts.baseline, opts.workdir)
    implementations = tuple(roots)
    ckpt = ensure_checkpoint(checkpoint_dir, config["width"], config["layers"], config["dtype"])
    machine, versions = machine_and_versions(config["device"], opts.threads)
    if baseline_commit:
        versions["baseline"] = baseline_commit

    results = {impl: [] for impl in implementations}
    with tempfile.TemporaryDirectory(dir=opts.workdir) as scratch:
        for repeat in range(config["repeats"]):
            order = implementations if repeat % 2 == 0 else implementations[::-1]
            for impl in order:
                run_dir = Path(scratch) / f"{impl}_{repeat}"
                run_dir.mkdir()
                spec = {"impl": impl, "device": config["device"], "lowvram": config["lowvram"],
                        "pytorch_attention": config["pytorch_attention"], "cases": cases,
                        "warmup": config["warmup"], "threads": opts.threads, "load_only": opts.load_only,
                        "checkpoint_dir": str(checkpoint_dir), "checkpoint": ckpt, "latent_dir": str(run_dir),
                        "result": str(run_dir / "result.json"), "pack_root": roots[impl] and str(roots[impl])}
                (run_dir / "spec.json").write_text(json.dumps(spec))
                print(f"repeat {repeat + 1}/{config['repeats']}: {impl}", file=sys.stderr, flush=True)
                subprocess.run([sys.executable, __file__, "--child", str(run_dir / "spec.json")], check=True)
                results[impl].append(json.loads((run_dir / "result.json").read_text()))
        rows = [] if opts.load_only else summarise(cases, results, TOLERANCE[config["dtype"]])

    report = {
        "command": shlex.join([Path(sys.executable).name, "scripts/benchmark.py", *(argv or sys.argv[1:])]),
        "machine": machine, "versions": versions,
        "config": {**config, "checkpoint": ckpt, "guidance": f"APG scale {GUIDANCE_SCALE:g}, interval "
                   f"{GUIDANCE_INTERVAL:g}, euler, simple schedule", "seed": SEED},
        "load": {impl: [{k: round(v, 2) for k, v in r["load"].items()} for r in results[impl]]
                 for impl in implementations},
        "pack_folders": {impl: sorted({r["pack_folder"] for r in results[impl]}) for impl in implementations
                         if impl != "native"},
        "cases": rows,
    }
    print(load_table(report["load"]))
    if rows:
        print(table(rows))
    if rows and opts.baseline:
        print(baseline_table(rows))
    text = json.dumps(report, indent=1)
    print(text)
    if opts.json:
        opts.json.write_text(text + "\n")
    return 0 if all(row[side_key(impl, "latent_match")] for row in rows for impl in implementations
                    if impl != "native") else 1


def extract_revision(rev: str, workdir: Path) -> tuple[str, Path]:
    """(full commit id, folder holding that revision's tree): `git archive`, so the checkout and its index stay as
    they are; reused when already extracted."""
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                            capture_output=True, text=True)
    if commit.returncode:
        sys.exit(f"--baseline {rev}: not a revision of this repository ({commit.stderr.strip()})")
    commit = commit.stdout.strip()
    tree = workdir / f"baseline-{commit[:12]}"
    if not (tree / "__init__.py").exists():
        tree.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return commit, tree


if __name__ == "__main__":
    sys.exit(main())
