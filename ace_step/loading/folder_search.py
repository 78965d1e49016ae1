"""Finding the folder that holds a model's original sub-folders when the user points at a folder above it (a
download folder, a Hugging Face cache repo with several snapshots)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Optional

SEARCH_DEPTH = 4


def find_root(path: Path, folders_in: Callable[[Path], Mapping[str, Path]],
              depth: int = SEARCH_DEPTH) -> Optional[Path]:
    """`path` or the folder below it (at most `depth` levels down) for which `folders_in` finds model folders; of
    several, the one whose newest model folder changed last (the newest Hugging Face snapshot)."""
    if folders_in(path):
        return path
    if depth == 0:
        return None
    try:
        children = sorted(c for c in path.iterdir() if c.is_dir() and not c.name.startswith("."))
    except OSError:
        return None
    found = [r for r in (find_root(c, folders_in, depth - 1) for c in children) if r is not None]
    if not found:
        return None
    return max(found, key=lambda root: max(folder.stat().st_mtime for folder in folders_in(root).values()))
