"""Records measured numbers (parity errors, timings) so the test output shows them.

Each call appends one JSON line to test-output/measurements.jsonl; conftest prints them all in the summary.
"""
import json
import os
from pathlib import Path

import torch

OUTPUT_DIR = Path(os.environ.get("ACE_TEST_OUTPUT", Path(__file__).resolve().parent.parent / "test-output"))
MEASUREMENTS = OUTPUT_DIR / "measurements.jsonl"


def report(name: str, value, **extra):
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    row = {"name": name, "value": value, **extra}
    with open(MEASUREMENTS, "a") as f:
        f.write(json.dumps(row) + "\n")


def max_rel_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|: one number per tensor, stable where ref has zeros."""
    ours, ref = ours.detach().double(), ref.detach().double()
    assert ours.shape == ref.shape, f"shape {tuple(ours.shape)} != reference {tuple(ref.shape)}"
    return ((ours - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
