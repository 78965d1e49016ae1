"""The original's text-normalisation tables, read from `data/` (their origin and licence: data/README.md)."""
from __future__ import annotations

import json
from pathlib import Path

_DATA = Path(__file__).parent / "data"


def load_table(name: str) -> dict:
    """The JSON table `data/<name>.json`."""
    return json.loads((_DATA / f"{name}.json").read_text(encoding="utf-8"))
