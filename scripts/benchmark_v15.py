"""ACE-Step 1.5 speed in seconds per second of audio, by stage, beside a reference timed in the same run:

    .venv/bin/python scripts/benchmark_v15.py --preset cpu      # BENCHMARKS.md's 1.5 CPU table (full-size, fp32)
    .venv/bin/python scripts/benchmark_v15.py --preset gpu      # on CUDA: bf16, 30/120/240 s
    .venv/bin/python scripts/benchmark_v15.py --preset tiny     # a smoke run (tests/test_benchmark_v15.py)

Stages and references (random weights at the real configs: speed does not depend on their values):
- planner LM (`ace_step.sampling.planner_lm.Qwen3PlannerLM` over `Qwen3CausalLM`, default lm-1.7B): a `--lm-prompt`
  token prompt prefilled, then 5 audio codes per audio second (the 5 Hz codes) decoded one token per step, with
  classifier-free guidance (conditional and unconditional rows in one batch of 2, as the planner runs them). The
  fed tokens come from the device, so the sampling work is not in it (scripts/benchmark_planner.py times that).
  Reference: transformers' `Qwen3ForCausalLM` holding THE SAME weight tensors (sdpa attention, a DynamicCache,
  last-position logits only in prefill), the same prompt and tokens, alternating with the pack. The floor is
  benchmark_planner's (copy bandwidth and matmul rate measured in this run).
- DiT (`ace_step.models.v15.dit.DiTDecoder`, what `AceStep15.decode` runs every step; default the 2B config):
  one forward on `seconds` x 25 latent frames (patched to half as many tokens) against a random condition memory
  of `--memory` tokens whose cross-attention keys/values are computed once per run (`memory_kv`, timed apart).
  turbo = 8 steps x 1 row (cfg 1), sft/base = 50 steps x 2 rows (CFG batch). No other implementation is
  installable, so the reference is the FLOP floor: (2 x P x tokens + attention) / F per forward, P the per-token
  matmul parameters (everything but the cross-attention key/value projections, which act on the memory once),
  attention 4 x heads x head_dim x tokens x (keys seen) per layer (sliding layers: at most 2 x window + 1 keys;
  cross-attention: the memory), F the matmul rate measured in the run (benchmark_planner.measure_device).
- VAE (`ace_step.models.v15.vae.OobleckVAE`, full size): decode of `seconds` x 25 latent frames and encode of
  `seconds` of 48 kHz stereo, by the plain module (tiled, its default), through the pack's ComfyUI VAE
  (`comfy_bridge/v15_vae.AceStep15Vae`: model management, windows, progress; ComfyUI imported in process) and by
  diffusers' `AutoencoderOobleck` (the original pipeline's class, untiled) holding the same weights, alternating.
  Floor: the convolutions' multiply-adds (counted on the `meta` device, untiled) / F.

- tasks (`--stages tasks`, not in the default stages): each ACE-Step 1.5 task as a user runs it on the pack's ComfyUI
  MODEL and CLIP (`ComfyCallableAceStep15` in `model_patcher`, `AceStep15Clip`, built with the loaders' operations
  and attention, random weights; the full text encoder Qwen3-Embedding-0.6B at the real configs), from the
  CONDITIONING of ACE-Step 1.5 Text Encode (timed once, its own row) and a source latent to the output latent, VAE
  encode / decode excluded (the VAE rows). text2music = ComfyUI's KSampler (euler, simple, ConditioningZeroOut as
  the negative, ModelSamplingAuraFlow as the workflows), the baseline; cover (strength 1), repaint of the middle
  third, extend by +50 % on the right = the nodes' `execute` (nodes/v15_editing.py) on the turbo schedule (8 steps,
  cfg 1); extract vocals, lego drums (the whole song), complete (drums, bass) = the stem nodes' `execute`
  (nodes/v15_stems.py) on the base schedule at `--task-steps` with cfg 7, beside KSampler text2music at the same
  steps and cfg. So each task's time holds the caption re-encoded with its instruction, its DiT condition, the DiT
  loop and the repaint merge, at `--task-seconds` (source) over `--task-repeats` runs. "× text2music" = the task's
  s / audio s over the text2music row's of the same schedule (per second of OUTPUT: extend writes 1.5 x the
  source). DiT forwards are counted by a hook on the DiTDecoder, calls and rows as the code runs them: the task
  loop calls the DiT once per pass; ComfyUI would batch KSampler's cond and uncond, but the pack's MODEL marks the
  unconditional pass with a `replace_with_null_embeds` key the positive lacks, so they run as two 1-row calls too
  (the DiT stage above times a 2-row CFG batch). The floor is the sum over those forwards of the DiT floor above
  (the DiT loop alone, no text or condition encoder), so "of floor" shows what the rest adds.

Timings are medians of `--repeats` (each implementation once per repeat, the order flipping every repeat) after a
warm-up run of each (a short one on CPU; the tasks: one short text2music and repaint). "s / audio s" = the stage's
time for `seconds` of audio / `seconds`; "vs ref" = reference time / pack time (> 1: the pack is faster); "of
floor" = floor time / measured time.
Writes the table to stdout and every number, with the machine, to `--json`. No timing is asserted.
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "scripts"), str(ROOT / "tests")]

import torch  # noqa: E402
from torch import nn  # noqa: E402

# The planner benchmark's device figures, floors and timing helpers: one copy, imported.
from benchmark_planner import DTYPES, cpu_name, floors, measure_device, model_figures, sync, timed  # noqa: E402
from ace_step.models.v15.audio_codes import AudioDetokenizerConfig, AudioTokenizerConfig  # noqa: E402
from ace_step.models.v15.condition_encoder import ConditionEncoderConfig  # noqa: E402
from ace_step.models.v15.dit import SLIDING, DiTConfig, DiTDecoder  # noqa: E402
from ace_step.models.v15.layers import StackConfig  # noqa: E402
from ace_step.models.v15.model import AceStep15Config  # noqa: E402
from ace_step.models.v15.qwen3 import Qwen3CausalLM, Qwen3Config  # noqa: E402
from ace_step.models.v15.vae import OobleckConfig, OobleckVAE, to_file_state_dict  # noqa: E402
from ace_step.sampling.planner_lm import DEFAULT_WINDOW, Qwen3PlannerLM  # noqa: E402

CODES_PER_SECOND = 5  # the planner's audio codes: 5 Hz
CHANNELS_15 = 64  # 1.5 latent channels
FRAMES_PER_SECOND = 25  # DiT / VAE latent frames: 48000 / 1920
STEPS = {"turbo": (8, 1), "sft/base": (50, 2)}  # sampling steps, rows per forward (2 = CFG batch)

# Smoke-test sizes (the real structures, tiny widths).
TINY = {
    "lm": Qwen3Config(vocab_size=1000, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                      num_kv_heads=2, head_dim=16),
    "dit": DiTConfig(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=128,
                     condition_size=64, sliding_window=4),
    # 64 latent channels (the ComfyUI VAE checks them), encoder width 2 x 64 (diffusers ties the two), flat widths.
    "vae": OobleckConfig(encoder_channels=128, decoder_channels=8, latent_channels=64,
                         channel_multiples=(1, 1, 1, 1, 1)),
    # The tasks stage: the tiny DiT inside a whole 1.5 model (one-layer condition encoder, tokenizer, detokenizer)
    # reading a tiny text encoder's states (the real vocabulary: the real tokenizer feeds it).
    "text": Qwen3Config(vocab_size=151_669, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4,
                        num_kv_heads=2, head_dim=16),
}
_TINY_STACK = StackConfig(hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=16, intermediate_size=128)
TINY["model"] = AceStep15Config(
    decoder=TINY["dit"], encoder=ConditionEncoderConfig(lyric=_TINY_STACK, timbre=_TINY_STACK, text_hidden_dim=64),
    tokenizer=AudioTokenizerConfig(pooler=_TINY_STACK), detokenizer=AudioDetokenizerConfig(stack=_TINY_STACK))

PRESETS = {
    # Full size, fp32 (what ComfyUI computes in on a CPU). 14 minutes on 2 cores (LM 9), 8.2 GB peak RSS.
    # Tasks (--stages tasks): 10 s, base 6 steps, one repeat: about 7-8 minutes (estimated from the DiT rows).
    "cpu": dict(device="cpu", dtype="fp32", lm="lm-1.7B", dit="2B", vae="full", seconds=[10], lm_seconds=10,
                lm_prompt=256, memory=512, repeats=2, short_warmup=True, task_seconds=[10], task_steps=6,
                task_repeats=1),
    "gpu": dict(device="cuda", dtype="bf16", lm="lm-1.7B", dit="2B", vae="full", seconds=[30, 120, 240],
                lm_seconds=30, lm_prompt=512, memory=512, repeats=3, short_warmup=False, task_seconds=[30, 120],
                task_steps=50, task_repeats=3),
    # tests/test_benchmark_v15.py: the whole machinery in seconds; its timings mean nothing.
    "tiny": dict(device="cpu", dtype="fp32", lm="tiny", dit="tiny", vae="tiny", seconds=[0.4], lm_seconds=0.4,
                 lm_prompt=16, memory=8, repeats=1, short_warmup=True, task_seconds=[0.4], task_steps=2,
                 task_repeats=1),
}
# The tasks stage is not a default stage: the default run is BENCHMARKS.md's table (14 min, 8.2 GB on the CPU), and
# the tasks hold a second full-size model (the whole 1.5 DiT and the text encoder: ~12 GB in fp32) for ~8 more minutes.
STAGES = ("lm", "dit", "vae")
ALL_STAGES = STAGES + ("tasks",)
COLUMNS = ("stage", "impl", "work", "audio_s", "median_s", "s_per_audio_s", "vs_ref", "floor_s_per_audio_s",
           "of_floor")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--stages", default=",".join(STAGES), help="comma list of lm, dit, vae, tasks (default: not tasks)")
    p.add_argument("--seconds", default=None, help="comma list: audio seconds for the DiT and VAE (preset's)")
    p.add_argument("--task-seconds", default=None, help="comma list: source audio seconds for the tasks (preset's)")
    p.add_argument("--task-steps", type=int, default=None, help="base-schedule steps of the base-only tasks")
    p.add_argument("--task-repeats", type=int, default=None, help="timed runs of each task after the warm-up")
    p.add_argument("--lm-seconds", type=float, default=None, help="audio seconds of codes the LM writes")
    p.add_argument("--lm-prompt", type=int, default=None, help="prompt tokens per LM row")
    p.add_argument("--lm", default=None, help="lm-0.6B, lm-1.7B, lm-4B")
    p.add_argument("--lm-layers", type=int, default=None, help="fewer LM layers (default: the real depth)")
    p.add_argument("--dit", default=None, help="2B or XL")
    p.add_argument("--dit-layers", type=int, default=None, help="fewer DiT layers (default: the real depth)")
    p.add_argument("--memory", type=int, default=None, help="condition memory tokens the DiT attends to")
    p.add_argument("--vae-impls", default="pack,comfy,diffusers",
                   help="comma list of pack (the module), comfy (the pack's ComfyUI VAE), diffusers")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--json", default=str(ROOT / "test-output" / "benchmark_v15.json"))
    args = p.parse_args(argv)
    preset = PRESETS[args.preset]
    for key, value in preset.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key in ("seconds", "task_seconds"):
        if isinstance(getattr(args, key), str):
            setattr(args, key, [float(s) for s in getattr(args, key).split(",")])
    args.stages = [s for s in args.stages.split(",") if s]
    args.vae_impls = [s for s in args.vae_impls.split(",") if s]
    if set(args.stages) - set(ALL_STAGES) or set(args.vae_impls) - {"pack", "comfy", "diffusers"}:
        p.error(f"--stages: {ALL_STAGES}; --vae-impls: pack, comfy, diffusers")
    return args


# ---------------------------------------------------------------------------------------------------- helpers
def random_init_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random values for every parameter of a module built on `meta` and moved with `to_empty`: matrices and
    convolutions N(0, 1/fan_in), norm weights near 1, the rest small. Activations stay of order one."""
    g = torch.Generator(device=next(module.parameters()).device).manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2 and "scale_shift_table" not in name and "special_tokens" not in name:
                fan_in = p[0].numel()
                p.normal_(0.0, fan_in ** -0.5, generator=g)
            elif "norm" in name:
                p.normal_(1.0, 0.1, generator=g)
            else:
                p.normal_(0.0, 0.02, generator=g)
    return module


def built(cls, config, device, dtype, seed=0, **kw):
    """`cls(config)` on `device` in `dtype`, random, without paying for torch's default initialisation."""
    with torch.device("meta"):
        module = cls(config, dtype=dtype, device="meta", **kw)
    return random_init_(module.to_empty(device=device), seed).eval().requires_grad_(False)


def alternate(impls: dict, repeats: int, warmup=None) -> dict:
    """{name: [seconds per repeat]}: each callable once per repeat, the order flipping every repeat, after one
    warm-up call of each (`warmup`: {name: callable} to warm up with instead)."""
    for name, fn in (warmup or impls).items():
        fn()
    times = {name: [] for name in impls}
    names = list(impls)
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            times[name].append(impls[name]())
    return times


def free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def row(stage, impl, work, audio_s, median_s, floor_s=None, ref_s=None, **extra) -> dict:
    return {"stage": stage, "impl": impl, "work": work, "audio_s": audio_s, "median_s": median_s,
            "s_per_audio_s": median_s / audio_s, "vs_ref": None if ref_s is None else ref_s / median_s,
            "floor_s_per_audio_s": None if floor_s is None else floor_s / audio_s,
            "of_floor": None if floor_s is None else floor_s / median_s, **extra}


# ---------------------------------------------------------------------------------------------------- LM
def hf_twin(lm: Qwen3CausalLM, config: Qwen3Config, device: torch.device):
    """transformers' Qwen3ForCausalLM holding `lm`'s own weight tensors (no copy)."""
    import transformers
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RotaryEmbedding

    hf_config = transformers.Qwen3Config(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim, rms_norm_eps=config.rms_norm_eps,
        rope_theta=config.rope_theta, tie_word_embeddings=config.tie_word_embeddings, attn_implementation="sdpa",
        max_position_embeddings=40960)
    with torch.device("meta"):
        hf = transformers.Qwen3ForCausalLM(hf_config)
    state = dict(lm.state_dict())
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    hf.load_state_dict(state, strict=True, assign=True)
    hf.lm_head.weight = hf.model.embed_tokens.weight if config.tie_word_embeddings else hf.lm_head.weight
    hf.model.rotary_emb = Qwen3RotaryEmbedding(hf_config, device=device)  # its buffer is not in the state dict
    return hf.eval().requires_grad_(False)


def bench_lm(args, device, dtype, device_figures) -> list[dict]:
    from transformers import DynamicCache

    config = TINY["lm"] if args.lm == "tiny" else Qwen3Config.full_size(args.lm)
    if args.lm_layers:
        config = dataclasses.replace(config, num_layers=args.lm_layers)
    lm = built(Qwen3CausalLM, config, device, dtype)
    hf = hf_twin(lm, config, device)
    rows, prompt = 2, args.lm_prompt
    codes = max(1, round(CODES_PER_SECOND * args.lm_seconds))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, min(config.vocab_size, 151_669), (rows, prompt), generator=g).to(device)
    fed = torch.randint(0, config.vocab_size, (codes, 1, 1), generator=g).expand(-1, rows, 1).contiguous().to(device)
    padding = torch.zeros(rows, prompt, dtype=torch.bool, device=device)
    adapter = Qwen3PlannerLM(lm, max_tokens=prompt + codes + 1, device=device, dtype=dtype, window=DEFAULT_WINDOW)

    def pack(n=codes, p=prompt):
        def run():
            adapter.prefill(ids[:, :p], padding[:, :p])
            for k in range(n):
                adapter.step(fed[k])
        return run

    def reference(n=codes, p=prompt):
        def run():
            cache = DynamicCache()
            hf(input_ids=ids[:, :p], past_key_values=cache, use_cache=True, logits_to_keep=1)
            for k in range(n):
                hf(input_ids=fed[k], past_key_values=cache, use_cache=True)
        return run

    phases = {}
    with torch.inference_mode():
        short = dict(n=min(codes, 4), p=min(prompt, 32)) if args.short_warmup else {}
        warm = {"pack": lambda: pack(**short)(), "transformers": lambda: reference(**short)()}
        # Prefill alone, then the whole (prefill + codes); decode = whole - prefill.
        for name, fn in (("prefill", dict(pack=pack(0), transformers=reference(0))),
                         ("total", dict(pack=pack(), transformers=reference()))):
            phases[name] = alternate({k: (lambda f=f: timed(f, device)) for k, f in fn.items()}, args.repeats,
                                     warm if name == "prefill" else {})
    adapter.release()
    context = statistics.mean(adapter.window_for(prompt + k + 1) for k in range(codes))
    size = torch.finfo(dtype).bits // 8
    floor = floors(config, model_figures(config, lm), rows, prompt, context, size, device_figures)
    floor_s = rows * prompt / floor["prefill_tok_s"] + codes / floor["decode_tok_s"]
    audio_s = codes / CODES_PER_SECOND
    name = f"{args.lm}" if args.lm == "tiny" else f"{args.lm} ({config.num_layers} layers)"
    work = f"{name}, CFG 2 rows: {prompt}-token prompt + {codes} codes"
    med = {impl: statistics.median(phases["total"][impl]) for impl in ("pack", "transformers")}
    out = []
    for impl in ("pack", "transformers"):
        prefill_s = statistics.median(phases["prefill"][impl])
        out.append(row("LM", impl, work, audio_s, med[impl], floor_s,
                       med["transformers"] if impl == "pack" else None,
                       prefill_s=prefill_s, decode_s=med[impl] - prefill_s,
                       prefill_tok_s=rows * prompt / prefill_s,
                       decode_tok_s=codes / max(med[impl] - prefill_s, 1e-9),
                       floor_prefill_tok_s=floor["prefill_tok_s"], floor_decode_tok_s=floor["decode_tok_s"],
                       layers=config.num_layers, params=sum(p.numel() for p in lm.parameters()),
                       times=phases["total"][impl], prefill_times=phases["prefill"][impl]))
    del adapter, lm, hf
    free(device)
    return out


# ---------------------------------------------------------------------------------------------------- DiT
def dit_flops(decoder: DiTDecoder, rows: int, tokens: int, memory: int) -> dict:
    c = decoder.config
    per_token = decoder.proj_in[1].weight.numel() + decoder.proj_out[1].weight.numel()
    for name, m in decoder.layers.named_modules():
        if isinstance(m, nn.Linear) and not name.endswith(("cross_attn.k_proj", "cross_attn.v_proj")):
            per_token += m.weight.numel()
    attention = 0
    for kind in c.layer_types:
        keys = min(tokens, 2 * c.sliding_window + 1) if kind == SLIDING else tokens
        attention += 4 * c.num_heads * c.head_dim * tokens * (keys + memory)
    return {"matmul": 2 * rows * tokens * per_token, "attention": rows * attention, "per_token_params": per_token}


def bench_dit(args, device, dtype, device_figures, seconds) -> list[dict]:
    config = TINY["dit"] if args.dit == "tiny" else AceStep15Config.full_size(args.dit).decoder
    if args.dit_layers:
        config = dataclasses.replace(config, num_layers=args.dit_layers, layer_types=None)
    decoder = built(DiTDecoder, config, device, dtype)
    name = "tiny" if args.dit == "tiny" else f"{args.dit} ({config.num_layers} layers)"
    g = torch.Generator().manual_seed(1)
    out = []
    with torch.inference_mode():
        memory = torch.randn(2, args.memory, config.condition_size, generator=g).to(device, dtype)
        kv_times = alternate({"kv": lambda: timed(lambda: decoder.memory_kv(memory[:1]), device)}, args.repeats)["kv"]
        for s in seconds:
            frames = round(FRAMES_PER_SECOND * s)
            tokens = math.ceil(frames / config.patch_size)
            per_forward = {}
            for rows in sorted({r for _, r in STEPS.values()}):
                kv = decoder.memory_kv(memory[:rows])
                x = torch.randn(rows, frames, config.latent_channels, generator=g).to(device, dtype)
                ctx = torch.randn(rows, frames, 2 * config.latent_channels, generator=g).to(device, dtype)
                t = torch.full((rows,), 0.5, device=device, dtype=dtype)
                fn = lambda: timed(lambda: decoder(x, t, ctx, kv), device)  # noqa: E731
                warm = {"w": lambda: timed(lambda: decoder(x[:, :min(frames, 50)], t, ctx[:, :min(frames, 50)], kv),
                                           device)} if args.short_warmup else None
                per_forward[rows] = alternate({"pack": fn}, max(3, args.repeats), warm)["pack"]
                del kv, x, ctx
            for label, (steps, rows) in STEPS.items():
                flops = dit_flops(decoder, rows, tokens, args.memory)
                floor_s = steps * (flops["matmul"] + flops["attention"]) / device_figures["peak"]
                forward_s = statistics.median(per_forward[rows])
                out.append(row("DiT", "pack", f"{name} {label}: {steps} steps x {rows} row{'s' * (rows > 1)}, "
                                              f"{tokens} tokens", s, steps * forward_s, floor_s,
                               forward_s=forward_s, forward_times=per_forward[rows], steps=steps, rows=rows,
                               tokens=tokens, flops=flops, layers=config.num_layers))
            out.append(row("DiT", "pack", f"{name} cross-attention K/V of {args.memory} memory tokens, once per run",
                           s, statistics.median(kv_times), times=kv_times))
    del decoder, memory
    free(device)
    return out


# ---------------------------------------------------------------------------------------------------- VAE
def conv_flops(vae: OobleckVAE, frames: int, encode: bool) -> int:
    """Multiply-adds x 2 of every convolution of one untiled decode of `frames` frames (or encode of as many
    frames of audio), counted on the `meta` device."""
    with torch.device("meta"):
        meta = OobleckVAE(vae.config, device="meta")
    total = [0]

    def hook(m, inputs, output):
        cin, k = m.in_channels // m.groups, m.kernel_size[0]
        length = inputs[0].shape[-1] if isinstance(m, nn.ConvTranspose1d) else output.shape[-1]
        total[0] += 2 * output.shape[0] * cin * m.out_channels * k * length

    handles = [m.register_forward_hook(hook) for m in meta.modules() if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d))]
    c = vae.config
    with torch.no_grad():
        if encode:
            meta.encoder(torch.empty(1, c.audio_channels, frames * c.hop_length, device="meta"))
        else:
            meta.decoder(torch.empty(1, c.latent_channels, frames, device="meta"))
    for h in handles:
        h.remove()
    return total[0]


def comfy_vae(vae: OobleckVAE, cuda: bool):
    """The pack's ComfyUI VAE (as its loader builds it) over `vae`'s own weight tensors, ComfyUI imported here."""
    from comfy_inprocess import import_comfy

    import_comfy(cpu=not cuda)
    from pack_inprocess import PACKAGE, import_pack

    import_pack()
    bridge = importlib.import_module(f"{PACKAGE}.comfy_bridge.v15_vae")
    ops = importlib.import_module(f"{PACKAGE}.comfy_bridge.operations")
    vae_cls = importlib.import_module(f"{PACKAGE}.ace_step.models.v15.vae").OobleckVAE
    with torch.device("meta"):
        net = vae_cls(vae.config, device="meta", operations=ops.vae_operations())
    net.load_state_dict(vae.state_dict(), assign=True)
    return bridge.AceStep15Vae(net.eval().requires_grad_(False))


def bench_vae(args, device, dtype, device_figures, seconds) -> list[dict]:
    from fixtures.v15_vae_configs import diffusers_kwargs, randomize_

    config = TINY["vae"] if args.vae == "tiny" else OobleckConfig.full_size()
    vae = randomize_(OobleckVAE(config)).to(device, dtype).eval().requires_grad_(False)
    impls = {}
    if "pack" in args.vae_impls:
        impls["pack"] = (lambda z: vae.decode(z), lambda x: vae.encode(x))
    if "comfy" in args.vae_impls:
        bridged = comfy_vae(vae, device.type == "cuda")
        impls["pack (ComfyUI VAE)"] = (lambda z: bridged.decode_waveform(z),
                                       lambda x: bridged.encode_waveform(x, config.sample_rate))
    if "diffusers" in args.vae_impls:
        from diffusers import AutoencoderOobleck

        reference = AutoencoderOobleck(**diffusers_kwargs(config))
        reference.load_state_dict(to_file_state_dict(vae.state_dict(), config, "diffusers"), strict=True)
        reference = reference.to(device, dtype).eval().requires_grad_(False)
        impls["diffusers"] = (lambda z: reference.decode(z).sample,
                              lambda x: reference.encode(x).latent_dist.sample())
    g = torch.Generator().manual_seed(2)
    out = []
    with torch.inference_mode():
        for s in seconds:
            frames = round(FRAMES_PER_SECOND * s)
            z = torch.randn(1, config.latent_channels, frames, generator=g).to(device, dtype)
            x = (0.3 * torch.randn(1, config.audio_channels, frames * config.hop_length, generator=g)).to(device, dtype)
            short = min(frames, 2 * FRAMES_PER_SECOND)
            for i, what in enumerate(("decode", "encode")):
                arg = z if what == "decode" else x
                arg_short = z[..., :short] if what == "decode" else x[..., :short * config.hop_length]
                results = {}

                def timed_call(name, a, keep=False):
                    def run():
                        start = time.perf_counter()
                        y = impls[name][i](a)
                        sync(device)
                        elapsed = time.perf_counter() - start
                        if keep:
                            results[name] = y.float().cpu()
                        return elapsed
                    return run

                warm = {n: timed_call(n, arg_short if args.short_warmup else arg, keep=not args.short_warmup)
                        for n in impls}
                times = alternate({n: timed_call(n, arg, keep=True) for n in impls}, args.repeats, warm)
                floor_s = conv_flops(vae, frames, encode=what == "encode") / device_figures["peak"]
                ref = statistics.median(times["diffusers"]) if "diffusers" in times else None
                for name in impls:
                    y = results[name]
                    diff = None
                    if what == "decode" and "diffusers" in results and name != "diffusers":
                        diff = (y - results["diffusers"]).abs().max().item()
                    # Encode draws noise (posterior samples): compared through the output's shape only.
                    out.append(row(f"VAE {what}", name, f"{'full size' if args.vae != 'tiny' else 'tiny'}, "
                                                        f"{frames} frames", s, statistics.median(times[name]),
                                   floor_s, ref if name != "diffusers" else None, times=times[name],
                                   max_abs_diff_vs_diffusers=diff, finite=bool(torch.isfinite(y).all()),
                                   output_shape=list(y.shape)))
            del z, x
    del vae, impls
    free(device)
    return out


# ---------------------------------------------------------------------------------------------------- tasks
TASK_TAGS = "synth pop, dreamy, female vocals, electric piano"
TASK_LYRICS = "[verse]\nSilver rain upon the window\nNeon hums a quiet tune\n[chorus]\nHold the night, hold the night"
TASK_SEED, TURBO_SHIFT, BASE_CFG = 42, 3.0, 7.0  # the workflows' seed and turbo shift, the stem nodes' default cfg


def pack_module(name: str):
    from pack_inprocess import PACKAGE

    return importlib.import_module(f"{PACKAGE}.{name}")


def task_objects(args, device, dtype):
    """(MODEL, CLIP) as the pack's 1.5 loaders build them (`v15_loading`'s operations and attention, the DiT in
    `model_patcher`, the text encoder in `AceStep15Clip` with the real tokenizer), random weights at the real configs
    (TINY's for the tiny preset), ComfyUI and the pack imported in this process."""
    from comfy_inprocess import import_comfy

    import_comfy(cpu=device.type != "cuda")
    from pack_inprocess import import_pack

    import_pack()
    from fixtures.v15_text_models import bundled_tokenizer_dir

    loading, models = pack_module("comfy_bridge.v15_loading"), pack_module("comfy_bridge.v15_models")
    config = TINY["model"] if args.dit == "tiny" else AceStep15Config.full_size(args.dit)
    if args.dit_layers:
        config = dataclasses.replace(config, decoder=dataclasses.replace(config.decoder, num_layers=args.dit_layers,
                                                                         layer_types=None))
    _, dit_ops, dit_attention, _ = loading._dit_options("default")
    _, text_ops, text_attention = loading._text_options()
    dit = built(models.ComfyCallableAceStep15, config, device, dtype, operations=dit_ops["dit"],
                attention=dit_attention["dit"])
    head = torch.randn(1, config.decoder.latent_channels, 8, generator=torch.Generator().manual_seed(5))
    model = models.model_patcher(dit, None, pack_module("comfy_bridge.v15_silence").SilenceLatent("random", head=head))
    # The base-only nodes check the variant the file name says; the turbo tasks take the schedule from a widget.
    model.model.variant_guess = pack_module("ace_step.loading.v15_layout").VariantGuess(
        "base", name="acestep_v1.5_base (random weights)")
    text_config = TINY["text"] if args.dit == "tiny" else Qwen3Config.full_size("embedding-0.6B")
    text_encoder = built(pack_module("ace_step.models.v15.qwen3").Qwen3Model, text_config, device, dtype, seed=6,
                         operations=text_ops["text_encoder"], attention=text_attention["text_encoder"])
    tokenizer = pack_module("ace_step.text.qwen_tokenizer").load_qwen3_tokenizer([bundled_tokenizer_dir()],
                                                                                 audio_codes=False)
    return model, pack_module("comfy_bridge.v15_clip").AceStep15Clip(text_encoder, tokenizer)


def task_callables(model, clip, positive, steps: int) -> dict:
    """{(schedule, task): fn(song latent) -> output latent}: ComfyUI's KSampler for text2music (the 1.5 workflows'
    graph: ModelSamplingAuraFlow, ConditioningZeroOut negative, an empty latent as long as the song), the pack's
    task nodes' `execute` for the rest, each with its defaults but the range and the schedule."""
    import nodes
    from comfy_extras.nodes_model_advanced import ModelSamplingAuraFlow

    editing, stems = pack_module("nodes.v15_editing"), pack_module("nodes.v15_stems")
    sampled = ModelSamplingAuraFlow().patch_aura(model, TURBO_SHIFT)[0]
    negative = nodes.ConditioningZeroOut().zero_out(positive)[0]
    common = dict(model=model, clip=clip, positive=positive, seed=TASK_SEED)
    turbo = dict(model_variant="turbo", steps=8, shift=TURBO_SHIFT, cfg=1.0)
    base = dict(steps=steps, shift=stems.BASE_SHIFT, cfg=BASE_CFG)
    ranged = dict(crossfade_frames=editing.REPAINT_CROSSFADE_FRAMES, injection_ratio=editing.REPAINT_INJECTION_RATIO)

    def seconds(song) -> float:
        return song["samples"].shape[-1] / FRAMES_PER_SECOND

    def text2music(song, steps, cfg):
        empty = {"samples": torch.zeros_like(song["samples"]), "type": "audio"}
        return nodes.KSampler().sample(sampled, TASK_SEED, steps, cfg, "euler", "simple", positive, negative, empty,
                                       denoise=1.0)[0]

    def node(cls, **kw):
        return lambda song: cls.execute(**common, source=song, **kw).result[0]

    return {
        ("turbo", "text2music"): lambda song: text2music(song, 8, 1.0),
        ("turbo", "cover"): node(editing.Cover15, audio_cover_strength=1.0, **turbo),
        ("turbo", "repaint"): lambda song: node(editing.Repaint15, start_seconds=seconds(song) / 3,
                                                end_seconds=2 * seconds(song) / 3, **ranged, **turbo)(song),
        ("turbo", "extend"): lambda song: node(editing.Extend15, left_seconds=0.0, right_seconds=seconds(song) / 2,
                                               window_seconds=float(editing.MAX_SECONDS), crossfade_frames=0,
                                               injection_ratio=editing.REPAINT_INJECTION_RATIO, **turbo)(song),
        ("base", "text2music"): lambda song: text2music(song, steps, BASE_CFG),
        ("base", "extract"): node(stems.Extract15, track="vocals", **base),
        ("base", "lego"): node(stems.Lego15, track="drums", start_seconds=0.0, end_seconds=stems.SONG_END, **ranged,
                               **base),
        ("base", "complete"): node(stems.Complete15, tracks="drums, bass", **base),
    }


TASK_WORK = {
    ("turbo", "text2music"): "KSampler (euler, simple), ConditioningZeroOut negative",
    ("turbo", "cover"): "ACE-Step 1.5 Cover, strength 1",
    ("turbo", "repaint"): "ACE-Step 1.5 Repaint of the middle third, crossfade 10",
    ("turbo", "extend"): "ACE-Step 1.5 Extend +50 % on the right",
    ("base", "text2music"): "KSampler (euler, simple), ConditioningZeroOut negative",
    ("base", "extract"): "ACE-Step 1.5 Extract Stem, vocals",
    ("base", "lego"): "ACE-Step 1.5 Lego, drums over the whole song",
    ("base", "complete"): "ACE-Step 1.5 Complete, drums + bass",
}


def bench_tasks(args, device, dtype, device_figures, seconds) -> list[dict]:
    model, clip = task_objects(args, device, dtype)
    decoder = model.model.diffusion_model.decoder
    layers = decoder.config.num_layers
    name = "tiny" if args.dit == "tiny" else f"{args.dit} ({layers} layers)"
    calls = []  # (rows, frames, memory tokens) of every DiT forward of the run being timed
    hook = decoder.register_forward_pre_hook(
        lambda module, a: calls.append((a[0].shape[0], a[0].shape[1], a[3][0][0].shape[2])))
    g = torch.Generator().manual_seed(3)
    out = []
    try:
        with torch.inference_mode():
            for s in seconds:
                frames = round(FRAMES_PER_SECOND * s)
                song = {"samples": torch.randn(1, CHANNELS_15, frames, generator=g), "type": "audio"}
                # The Text Encode node takes 10-600 s (the tiny preset's 0.4 s song says 10 s in its metas).
                tokens = clip.tokenize(TASK_TAGS, lyrics=TASK_LYRICS, bpm=120, duration=float(max(s, 10)),
                                       timesignature="4",
                                       language="en", keyscale="F# minor", generate_audio_codes=False)
                positive = []

                def encode():
                    positive[:] = clip.encode_from_tokens_scheduled(tokens)

                encode_times = alternate({"encode": lambda: timed(encode, device)}, args.task_repeats)["encode"]
                out.append(row("Task", "text encode", "ACE-Step 1.5 Text Encode (caption + lyrics, no LM): once per "
                                                      "song, in no task row", s, statistics.median(encode_times),
                               times=encode_times, schedule=None, x_text2music=None, forwards=0, dit_rows=0))
                tasks = task_callables(model, clip, positive, args.task_steps)
                results = {}

                def timed_task(key, latent, keep=True):
                    def run():
                        calls.clear()
                        result = []
                        elapsed = timed(lambda: result.append(tasks[key](latent)["samples"]), device)
                        if keep:
                            results[key] = (list(calls), result[0].shape[-1], bool(torch.isfinite(result[0]).all()))
                        return elapsed
                    return run

                short = {"samples": song["samples"][..., :min(frames, 2 * FRAMES_PER_SECOND)], "type": "audio"}
                warm = {k: timed_task(k, short, keep=False) for k in (("turbo", "text2music"), ("turbo", "repaint"))}
                times = alternate({k: timed_task(k, song) for k in tasks}, args.task_repeats,
                                  warm if args.short_warmup else None)
                baseline = {}
                for key in tasks:
                    schedule, task = key
                    forwards, out_frames, finite = results[key]
                    floor_s = sum(dit_flops(decoder, rows, math.ceil(f / decoder.config.patch_size), memory)[k]
                                  for rows, f, memory in forwards for k in ("matmul", "attention"))
                    floor_s /= device_figures["peak"]
                    steps = 8 if schedule == "turbo" else args.task_steps
                    cfg = 1.0 if schedule == "turbo" else BASE_CFG
                    audio_s = out_frames / FRAMES_PER_SECOND
                    r = row("Task", task, f"{name} {schedule} {steps} steps, cfg {cfg:g}: {TASK_WORK[key]}; "
                                          f"{s:g} s source", audio_s, statistics.median(times[key]), floor_s,
                            schedule=schedule, steps=steps, cfg=cfg, forwards=len(forwards),
                            dit_rows=sum(f[0] for f in forwards), forward_shapes=forwards, source_s=s,
                            finite=finite, times=times[key], layers=layers)
                    baseline.setdefault(schedule, r["s_per_audio_s"])
                    r["x_text2music"] = r["s_per_audio_s"] / baseline[schedule]
                    out.append(r)
    finally:
        hook.remove()
    del model, clip, decoder
    free(device)
    return out


# ---------------------------------------------------------------------------------------------------- main
def fmt(value, spec) -> str:
    return "" if value is None else format(value, spec)


def print_table(rows: list[dict], args=None) -> None:
    tasks = [r for r in rows if r["stage"] == "Task"]
    rows = [r for r in rows if r["stage"] != "Task"]
    if rows:
        print("| stage | impl | work | audio s | median s | s / audio s | vs ref | floor s / audio s | of floor |")
        print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['impl']} | {r['work']} | {r['audio_s']:g} | {r['median_s']:.3f} | "
              f"{r['s_per_audio_s']:.3f} | {fmt(r['vs_ref'], '.2f') + ('×' if r['vs_ref'] else '')} | "
              f"{fmt(r['floor_s_per_audio_s'], '.3f')} | {fmt(r['of_floor'], '.0%')} |", flush=True)
    if tasks:
        print_task_table(tasks, args)


def print_task_table(rows: list[dict], args) -> None:
    """The tasks stage: its sizes first, then one row per task ("audio s" = seconds of output)."""
    sources = ", ".join(f"{s:g}" for s in args.task_seconds)
    warm = "a short warm-up (2 s text2music and repaint)" if args.short_warmup else "a warm-up run of each"
    print(f"\nTasks: {sources} s source latents; turbo 8 steps cfg 1; base {args.task_steps} steps cfg {BASE_CFG:g}; "
          f"median of {args.task_repeats} run{'s' * (args.task_repeats > 1)} after {warm}; VAE not included")
    print("| stage | task | schedule | work | audio s | median s | s / audio s | × text2music | DiT forwards "
          "(rows) | floor s / audio s | of floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['impl']} | {r['schedule'] or ''} | {r['work']} | {r['audio_s']:g} | "
              f"{r['median_s']:.3f} | {r['s_per_audio_s']:.3f} | "
              f"{fmt(r['x_text2music'], '.2f') + ('×' if r['x_text2music'] else '')} | "
              f"{r['forwards']} ({r['dit_rows']}) | {fmt(r['floor_s_per_audio_s'], '.3f')} | "
              f"{fmt(r['of_floor'], '.0%')} |", flush=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    cuda = device.type == "cuda"
    start = time.perf_counter()
    device_figures = measure_device(device, dtype)
    commit = os.popen(f"git -C {ROOT} rev-parse --short HEAD 2>/dev/null").read().strip()
    machine = {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cpus": os.cpu_count(), "device_name": torch.cuda.get_device_name(device) if cuda else cpu_name(),
               "load_average": os.getloadavg(), "commit": commit, "device_figures": device_figures}
    try:
        import diffusers
        import transformers
        machine.update(diffusers=diffusers.__version__, transformers=transformers.__version__)
    except ImportError:
        pass
    print(f"{machine['device_name']}, {machine['threads']} threads, torch {torch.__version__}, {args.dtype}; "
          f"copy {device_figures['bandwidth'] / 1e9:.1f} GB/s, matmul {device_figures['peak'] / 1e9:.1f} GFLOP/s",
          flush=True)
    rows = []
    for stage in args.stages:
        t0 = time.perf_counter()
        if stage == "lm":
            rows += bench_lm(args, device, dtype, device_figures)
        elif stage == "dit":
            rows += bench_dit(args, device, dtype, device_figures, args.seconds)
        elif stage == "tasks":
            rows += bench_tasks(args, device, dtype, device_figures, args.task_seconds)
        elif stage == "vae":
            rows += bench_vae(args, device, dtype, device_figures, args.seconds)
        print(f"  {stage}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    print_table(rows, args)
    result = {"machine": machine, "args": vars(args), "columns": list(COLUMNS), "rows": rows,
              "wall_s": time.perf_counter() - start}
    if cuda:
        result["max_memory_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2 ** 20
    else:
        import resource
        result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out} ({result['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
