"""Speed of the 5 Hz LM planner's network path (`ace_step.sampling.planner_lm.Qwen3PlannerLM`): prefill and decode
tokens per second, with and without classifier-free guidance, beside the floor the device allows.

    .venv/bin/python scripts/benchmark_planner.py                                  # CPU: 0.6B width, 2 layers
    python scripts/benchmark_planner.py --device cuda --sizes lm-0.6B,lm-1.7B,lm-4B  # GPU: full size, bf16

Random weights (speed does not depend on their values) at the real configs (`Qwen3Config.full_size`), optionally
reduced in depth (`--layers`). One sample: CFG runs its conditional and unconditional rows in one batch (2 rows),
no CFG runs 1 row. Every row holds a `--prompt`-token prompt; decode then writes `--decode` tokens.

Columns:
- prefill tok/s: prompt tokens of all rows per second of `prefill` (cache writes, last-position logits included).
- decode tok/s: tokens per sequence per second of `step` (one token per sample per step, whatever the CFG rows),
  the tokens fed from the device, so the host never waits: the network's own rate. Timed on a second pass over the
  same windows, so CUDA graphs (`graphs` column) are already captured; `first pass` holds the captures.
- +sampling tok/s: the same steps with what `planner.decode` does per token in phase 2 (guidance, the audio-code
  mask over the 217,204 logits, top-p 0.9, temperature 0.85, a seeded draw, the token list read on the host and
  fed back): the rate `plan` can reach.
- floors (`floor tok/s`): the fastest the device allows, from two measured device figures (`--bandwidth`,
  `--peak` override them): B = copy bandwidth (bytes read + written per second, one large tensor copy) and
  F = matrix-multiply rate (one large square matmul in the run's dtype).
    decode step time >= max(bytes / B, flops / F), with
      bytes = s * P_read + s_kv * rows * C * layers * 2 * kv_heads * head_dim  (weights read once per step: all
              layer weights, the final norm and the vocabulary x hidden output head, i.e. every parameter but the
              embedding rows looked up; plus the keys and values of the C attended cache slots; s = bytes per
              element),
      flops = 2 * rows * P_matmul + 4 * rows * layers * heads * head_dim * C  (projections and head; scores and
              weighted values);
    prefill time >= flops / F with flops = 2 * rows * L * P_layers + 2 * rows * layers * heads * head_dim * L^2
      (causal half of the L x L scores and values) + 2 * rows * hidden * vocab (last-position logits).
  C is the mean attended window (slots rounded up to the adapter's window); `kv %` is the cache's share of the
  floor's bytes. `gqa +%`: the bytes the layers add on top (`layers.Attention._expand_kv` repeats each key/value
  head r = heads / kv_heads times before attention, as the operations contract asks: it reads the window's keys
  and values, writes r copies, and attention reads those r copies, i.e. 2r times the cache bytes more), as a
  share of the floor's bytes.
On CUDA the floor is also given for an H100 SXM's datasheet figures (3.35 TB/s HBM3, 989 TFLOP/s dense bf16),
the issue's target device: the 1.7B planner should decode at >= 500 tok/s with CFG there.

Writes the table to stdout and every number, with the machine, to `--json` (default
test-output/benchmark_planner.json).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ace_step.models.v15.qwen3 import AUDIO_CODE_COUNT, AUDIO_CODE_FIRST_ID, Qwen3CausalLM, Qwen3Config  # noqa: E402
from ace_step.sampling.planner_lm import DEFAULT_WINDOW, Qwen3PlannerLM  # noqa: E402
from ace_step.sampling.planner_sampling import SamplingParams, draw, filter_logits, guided_logits  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
H100_SXM = {"bandwidth": 3.35e12, "peak_bf16": 989e12}  # NVIDIA H100 SXM5 datasheet (dense bf16 tensor core)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--sizes", default=None, help="comma list of lm-0.6B, lm-1.7B, lm-4B (default: lm-0.6B on CPU, "
                                                 "all three on CUDA)")
    p.add_argument("--layers", type=int, default=None, help="reduce every size to this many layers (default: 2 on "
                                                             "CPU, the real depth on CUDA)")
    p.add_argument("--dtypes", default=None, help="comma list of fp32, bf16, fp16 (default: fp32,bf16 on CPU, bf16 "
                                                  "on CUDA)")
    p.add_argument("--prompt", type=int, default=None, help="prompt tokens per row (default 256 CPU, 512 CUDA)")
    p.add_argument("--decode", type=int, default=None, help="tokens decoded (default 32 CPU, 512 CUDA)")
    p.add_argument("--cfg", choices=("both", "on", "off"), default="both")
    p.add_argument("--graphs", choices=("both", "on", "off"), default="both", help="CUDA graphs (CUDA only)")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats; the median is reported")
    p.add_argument("--bandwidth", type=float, default=None, help="device bandwidth, GB/s (default: measured)")
    p.add_argument("--peak", type=float, default=None, help="device matmul rate, TFLOP/s (default: measured)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=str(ROOT / "test-output" / "benchmark_planner.json"))
    args = p.parse_args(argv)
    cuda = torch.device(args.device).type == "cuda"
    args.sizes = (args.sizes or ("lm-0.6B,lm-1.7B,lm-4B" if cuda else "lm-0.6B")).split(",")
    args.layers = args.layers if args.layers is not None else (None if cuda else 2)
    args.dtypes = (args.dtypes or ("bf16" if cuda else "fp32,bf16")).split(",")
    args.prompt = args.prompt or (512 if cuda else 256)
    args.decode = args.decode or (512 if cuda else 32)
    return args


def cpu_name() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def measure_device(device: torch.device, dtype: torch.dtype) -> dict:
    """Copy bandwidth (bytes read + written per second) and square-matmul rate (FLOP/s) in `dtype`."""
    cuda = device.type == "cuda"
    elements = (1 << 28) if cuda else (1 << 25)  # 1 GiB / 128 MiB of fp32
    a = torch.ones(elements, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    copy = min(timed(lambda: b.copy_(a), device) for _ in range(5))
    n = 8192 if cuda else 1024
    x = torch.randn(n, n, device=device).to(dtype)
    y = torch.randn(n, n, device=device).to(dtype)
    matmul = min(timed(lambda: x @ y, device) for _ in range(5))
    return {"bandwidth": 2 * a.numel() * 4 / copy, "peak": 2 * n ** 3 / matmul}


def model_figures(config: Qwen3Config, lm: Qwen3CausalLM) -> dict:
    """Parameter counts: all, the layers', read per decode step, multiplied per token."""
    layers = sum(p.numel() for p in lm.model.layers.parameters())
    head = config.vocab_size * config.hidden_size  # the tied embedding table, or lm_head
    return {"params": sum(p.numel() for p in lm.parameters()), "layer_params": layers,
            "read_per_step": layers + config.hidden_size + head, "matmul_params": layers + head}


def floors(config: Qwen3Config, figures: dict, rows: int, prompt: int, context: float, size: int, device: dict
           ) -> dict:
    """Prefill tokens/s and decode steps/s the device allows (module docstring), and the cache's byte share."""
    c = config
    kv_bytes = size * rows * context * c.num_layers * 2 * c.num_kv_heads * c.head_dim
    step_bytes = size * figures["read_per_step"] + kv_bytes
    step_flops = 2 * rows * figures["matmul_params"] + 4 * rows * c.num_layers * c.num_heads * c.head_dim * context
    prefill_flops = (2 * rows * prompt * figures["layer_params"]
                     + 2 * rows * c.num_layers * c.num_heads * c.head_dim * prompt ** 2
                     + 2 * rows * c.hidden_size * c.vocab_size)
    step = max(step_bytes / device["bandwidth"], step_flops / device["peak"])
    gqa_bytes = 2 * (c.num_heads // c.num_kv_heads) * kv_bytes if c.num_heads > c.num_kv_heads else 0
    return {"prefill_tok_s": rows * prompt / (prefill_flops / device["peak"]), "decode_tok_s": 1 / step,
            "decode_memory_bound": step_bytes / device["bandwidth"] >= step_flops / device["peak"],
            "kv_share": kv_bytes / step_bytes, "gqa_repeat_extra": gqa_bytes / step_bytes,
            "step_bytes": step_bytes, "step_flops": step_flops, "prefill_flops": prefill_flops}


def sample_like_planner(logits: torch.Tensor, rows: int, blocked: torch.Tensor, params: SamplingParams,
                        generator: torch.Generator) -> torch.Tensor:
    """What `planner.decode` does with one step's logits in phase 2 (one sample), down to the fed-back ids."""
    guided = guided_logits(logits[:1], logits[1:] if rows == 2 else None, params.cfg_scale)
    guided = guided.masked_fill(blocked, float("-inf"))
    tokens = draw(filter_logits(guided, params), params.temperature, generator).tolist()
    return torch.tensor(tokens * rows, dtype=torch.long, device=logits.device)[:, None]


def run_case(lm, config, args, device, dtype, rows, graphs, figures, device_figures) -> dict:
    adapter = Qwen3PlannerLM(lm, max_tokens=args.prompt + args.decode + 1, device=device, dtype=dtype,
                             cuda_graphs=graphs, window=args.window)
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, AUDIO_CODE_FIRST_ID, (rows, args.prompt), generator=g).to(device)
    padding = torch.zeros(rows, args.prompt, dtype=torch.bool, device=device)
    fed = torch.randint(AUDIO_CODE_FIRST_ID, AUDIO_CODE_FIRST_ID + AUDIO_CODE_COUNT, (args.decode, 1, 1),
                        generator=g).expand(-1, rows, 1).contiguous().to(device)

    def decode():
        for k in range(args.decode):
            adapter.step(fed[k])

    prefill_s = [timed(lambda: adapter.prefill(ids, padding), device) for _ in range(args.repeats)]
    first_pass = timed(decode, device)  # captures the step graphs of every window
    decode_s = []
    for _ in range(args.repeats):
        adapter.prefill(ids, padding)
        decode_s.append(timed(decode, device))

    params = SamplingParams(cfg_scale=2.0 if rows == 2 else 1.0)
    blocked = torch.ones(config.vocab_size, dtype=torch.bool, device=device)
    blocked[AUDIO_CODE_FIRST_ID:AUDIO_CODE_FIRST_ID + AUDIO_CODE_COUNT] = False
    generator = torch.Generator(device=device).manual_seed(0)

    def decode_and_sample(logits):
        for _ in range(args.decode):
            logits = adapter.step(sample_like_planner(logits, rows, blocked, params, generator))

    sampled_s = [timed(functools.partial(decode_and_sample, adapter.prefill(ids, padding)), device)
                 for _ in range(args.repeats)]
    cache_bytes = sum(t.numel() * t.element_size() for layer in adapter.cache.layers
                      for t in (layer.keys, layer.values))
    captured = len(adapter.captured)
    adapter.release()

    context = statistics.mean(adapter.window_for(args.prompt + k + 1) for k in range(args.decode))
    size = torch.finfo(dtype).bits // 8
    result = {
        "prefill_tok_s": rows * args.prompt / statistics.median(prefill_s),
        "decode_tok_s": args.decode / statistics.median(decode_s),
        "sampling_tok_s": args.decode / statistics.median(sampled_s),
        "first_pass_s": first_pass, "graphs_captured": captured, "cache_mib": cache_bytes / 2 ** 20,
        "mean_window": context,
        "floor": floors(config, figures, rows, args.prompt, context, size, device_figures),
    }
    if device.type == "cuda":
        result["floor_h100_sxm"] = floors(config, figures, rows, args.prompt, context, size,
                                          {"bandwidth": H100_SXM["bandwidth"], "peak": H100_SXM["peak_bf16"]})
        result["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    machine = {"platform": platform.platform(), "processor": platform.processor(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
               "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
               "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name()}
    rows_options = {"both": (2, 1), "on": (2,), "off": (1,)}[args.cfg]
    graph_options = {"both": (False, True), "on": (True,), "off": (False,)}[args.graphs] if cuda else (False,)
    results = []
    header = (f"{'size':8} {'layers':>6} {'dtype':5} {'cfg':3} {'graphs':6} | {'prefill':>9} {'floor':>9} | "
              f"{'decode':>8} {'+sampling':>9} {'floor':>8} {'of floor':>8} {'kv %':>5} {'gqa +%':>6} | "
              f"{'first pass':>10}")
    print(header)
    print("-" * len(header))
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        measured = measure_device(device, dtype)
        device_figures = {"bandwidth": args.bandwidth * 1e9 if args.bandwidth else measured["bandwidth"],
                          "peak": args.peak * 1e12 if args.peak else measured["peak"]}
        for size_name in args.sizes:
            config = Qwen3Config.full_size(size_name)
            if args.layers is not None:
                config = dataclasses.replace(config, num_layers=args.layers)
            torch.manual_seed(0)
            lm = Qwen3CausalLM(config, dtype=dtype, device=device).eval()
            figures = model_figures(config, lm)
            for rows in rows_options:
                for graphs in graph_options:
                    if cuda:
                        torch.cuda.reset_peak_memory_stats(device)
                    r = run_case(lm, config, args, device, dtype, rows, graphs, figures, device_figures)
                    r.update(size=size_name, layers=config.num_layers, dtype=dtype_name, cfg=rows == 2,
                             cuda_graphs=graphs, rows=rows, prompt=args.prompt, decode=args.decode,
                             device_figures=device_figures, params=figures["params"])
                    results.append(r)
                    f = r["floor"]
                    print(f"{size_name:8} {config.num_layers:6d} {dtype_name:5} {'yes' if rows == 2 else 'no':3} "
                          f"{'yes' if graphs else 'no':6} | {r['prefill_tok_s']:9.1f} {f['prefill_tok_s']:9.1f} | "
                          f"{r['decode_tok_s']:8.1f} {r['sampling_tok_s']:9.1f} {f['decode_tok_s']:8.1f} "
                          f"{r['decode_tok_s'] / f['decode_tok_s']:8.1%} {f['kv_share']:5.1%} {f['gqa_repeat_extra']:6.1%} | "
                          f"{r['first_pass_s']:9.2f}s", flush=True)
            del lm
            if cuda:
                torch.cuda.empty_cache()
        print(f"  {dtype_name} device figures: bandwidth {device_figures['bandwidth'] / 1e9:.1f} GB/s, matmul "
              f"{device_figures['peak'] / 1e12:.2f} TFLOP/s ({'given' if args.bandwidth or args.peak else 'measured'})")
    if cuda:
        print("H100 SXM floors (3.35 TB/s, 989 TFLOP/s): " + ", ".join(
            f"{r['size']} {'cfg' if r['cfg'] else 'no cfg'} {r['floor_h100_sxm']['decode_tok_s']:.0f} tok/s"
            for r in results if r["cuda_graphs"]))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "args": vars(args), "results": results}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
