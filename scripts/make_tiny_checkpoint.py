"""Writes a tiny ACE-Step demo checkpoint (real key layout, small random weights; its audio is noise).

    python scripts/make_tiny_checkpoint.py --out models/checkpoints/ace_step_v1_tiny_demo.safetensors
    python scripts/make_tiny_checkpoint.py --out /tmp/ACE-Step-v1-tiny --layout folder --dtype bf16
    python scripts/make_tiny_checkpoint.py --family 1.5 --out models/checkpoints/ace_step_1.5_tiny_demo_aio.safetensors
    python scripts/make_tiny_checkpoint.py --family 1.5 --layout comfyui-split --out models
    python scripts/make_tiny_checkpoint.py --family 1.5 --layout hf-folder --out /tmp/Ace-Step1.5-tiny

Same arguments -> byte-identical files.
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # `ace_step`, and the test fixtures that write the checkpoint

from fixtures.tiny_checkpoint import DTYPES, TINY_FILE_NAME, write_tiny_checkpoint  # noqa: E402

LAYOUTS = {"v1": ("all-in-one", "folder"), "1.5": ("comfyui-aio", "comfyui-split", "hf-folder")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=sorted(LAYOUTS), default="v1", help="ACE-Step v1 or ACE-Step 1.5")
    parser.add_argument("--out", required=True,
                        help=f"v1 all-in-one: a .safetensors path or a folder (gets {TINY_FILE_NAME}); v1 folder: the "
                             "root of the original ACE-Step layout; 1.5 comfyui-aio: a .safetensors path or a folder; "
                             "1.5 comfyui-split: a ComfyUI models folder; 1.5 hf-folder: the root of the original "
                             "layout")
    parser.add_argument("--layout", choices=sorted({x for v in LAYOUTS.values() for x in v}),
                        help="v1: all-in-one (default) or folder; 1.5: comfyui-aio (default), comfyui-split or "
                             "hf-folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--vocoder-variant", choices=("weight_norm", "parametrizations", "fused"),
                        default="weight_norm", help="v1: how the vocoder's weight-normed convolutions are stored")
    parser.add_argument("--variant", default="turbo", help="1.5: the DiT variant the files are named after")
    args = parser.parse_args(argv)
    layout = args.layout or LAYOUTS[args.family][0]
    if layout not in LAYOUTS[args.family]:
        parser.error(f"--layout {layout} is not a layout of the {args.family} family "
                     f"({', '.join(LAYOUTS[args.family])})")
    start = time.perf_counter()
    if args.family == "v1":
        written = write_tiny_checkpoint(args.out, layout=layout, seed=args.seed, dtype=DTYPES[args.dtype],
                                        vocoder_variant=args.vocoder_variant)
    else:
        from fixtures.v15_tiny_checkpoint import write_tiny15

        written = write_tiny15(args.out, layout=layout, seed=args.seed, dtype=DTYPES[args.dtype],
                               variant=args.variant)
    paths = list(written.values()) if isinstance(written, dict) else [written]
    files = sorted({f for p in paths for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file()})
    size = sum(p.stat().st_size for p in files)
    print(f"wrote {', '.join(map(str, paths))} ({len(files)} file(s), {size / 1e6:.1f} MB) in "
          f"{time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
