"""Writes a tiny ACE-Step v1 demo checkpoint (real key layout, small random weights; its audio is noise).

    python scripts/make_tiny_checkpoint.py --out models/checkpoints/ace_step_v1_tiny_demo.safetensors
    python scripts/make_tiny_checkpoint.py --out /tmp/ACE-Step-v1-tiny --layout folder --dtype bf16

Same seed and dtype -> byte-identical files.
"""
import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # `ace_step`, and the test fixtures that write the checkpoint

from fixtures.tiny_checkpoint import DTYPES, TINY_FILE_NAME, write_tiny_checkpoint  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True,
                        help=f"all-in-one: a .safetensors path or a folder (gets {TINY_FILE_NAME}); "
                             "folder: the root of the original ACE-Step layout")
    parser.add_argument("--layout", choices=("all-in-one", "folder"), default="all-in-one")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--vocoder-variant", choices=("weight_norm", "parametrizations", "fused"),
                        default="weight_norm", help="how the vocoder's weight-normed convolutions are stored")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    path = write_tiny_checkpoint(args.out, layout=args.layout, seed=args.seed, dtype=DTYPES[args.dtype],
                                 vocoder_variant=args.vocoder_variant)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    print(f"wrote {path} ({len(files)} file(s), {size / 1e6:.1f} MB) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
