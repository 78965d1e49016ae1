"""`.safetensors` files through the `safetensors` library, with the checks it lacks and errors that say what to do.

`safetensors.safe_open` (https://github.com/huggingface/safetensors) validates the header (size limit, offsets that
tile the data exactly, shapes that match the byte ranges, known dtypes) and reads tensors lazily, one at a time.
What it does not do, and this layer adds:
- refuse pickle-based files (.ckpt/.pt/.bin, or a torch.save zip or pickle under a .safetensors name) before
  anything opens them: unpickling can run arbitrary code;
- refuse headers that name a tensor twice (its JSON reader keeps the last one silently);
- say "truncated, download again" for the most common damage, and translate its other errors into
  `CorruptCheckpointError` / `UnsupportedCheckpointError` naming the file.
- return every tensor as a copy and map the file afresh every `REMAP_BYTES` read: the library's tensors are views
  of one map of the whole file, which stays resident (every page read through it) while any view or the handle lives.
`save_safetensors` writes with `safetensors.torch.save_file` next to the destination, then renames, so a crash never
leaves half a file. The library orders tensors deterministically but writes the metadata in hash order; the header is
rewritten in place with the metadata sorted (the same bytes permuted), so equal inputs give equal files.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable, Mapping, Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .errors import (
    CONVERT_HINT,
    PICKLE_SUFFIXES,
    REDOWNLOAD,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    UnsupportedCheckpointError,
)


def sniff_unsafe(path) -> Optional[str]:
    """Why `path` is a pickle-based checkpoint (by name or by content), or None."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return f"its extension '{path.suffix}' marks a PyTorch pickle checkpoint"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return None
    if head.startswith(b"PK\x03\x04"):
        return "it is a zip archive (the format torch.save writes), not safetensors"
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "it starts like a Python pickle (the legacy torch.save format), not safetensors"
    return None


# The library refuses headers above 100 MB too; this check comes first so that such a claim is never read.
MAX_HEADER_BYTES = 100 * 1024 * 1024


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


REMAP_BYTES = 512 << 20


class SafetensorsFile:
    """One `.safetensors` file: header checked on open, tensors read on demand, one at a time, never those not
    asked for. `keys()`, `shapes()`, `dtypes()`, `metadata` and `offset(key)` come from the header alone."""

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointNotFoundError(self.path, "no such file.", "Check the path and the file name.")
        why = sniff_unsafe(self.path)
        if why:
            raise UnsafeCheckpointError(
                self.path, f"refusing to open this file: {why}. ACE-Step Studio only loads .safetensors files, "
                "because opening a pickle can run arbitrary code.", CONVERT_HINT)
        self._header = self._read_header()
        self._open()
        self.metadata: dict[str, str] = self._file.metadata() or {}

    def _open(self):
        try:
            self._file = safe_open(str(self.path), framework="pt")
        except SafetensorError as e:
            raise self._translate(e) from None
        self._bytes_through_map = 0

    def _read_header(self) -> dict:
        """The header JSON, refusing duplicate names and a file cut short (whose tensors end past its end)."""
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CorruptCheckpointError(self.path, f"file is only {size} bytes, too small to be a safetensors "
                                             "file.", REDOWNLOAD)
            (n,) = struct.unpack("<Q", head)
            if n > MAX_HEADER_BYTES:
                raise CorruptCheckpointError(self.path, f"its header claims {n:,} bytes, above the {MAX_HEADER_BYTES:,}"
                                             "-byte limit (real headers are a few hundred kB): it is not a valid "
                                             "safetensors file.", "Download the file again.")
            if 8 + n > size:
                raise CorruptCheckpointError(self.path, f"file is truncated: the header alone needs {8 + n:,} bytes "
                                             f"but the file has {size:,}.", REDOWNLOAD)
            raw = f.read(n)
        self.data_start = 8 + n
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
        except _DuplicateKey as e:
            raise CorruptCheckpointError(self.path, f"its header names {e.args[0]!r} twice, so which tensor is meant is "
                                         "ambiguous.", "Re-save the file with a safetensors writer.") from None
        except (UnicodeDecodeError, ValueError) as e:
            raise CorruptCheckpointError(self.path, f"its header is not valid JSON ({e}).",
                                         "The file is damaged or not a safetensors file: download it again.") from None
        if not isinstance(header, dict):
            raise CorruptCheckpointError(self.path, "its header is not a JSON object.", REDOWNLOAD)
        ends = [info["data_offsets"][1] for k, info in header.items() if k != "__metadata__"
                and isinstance(info, dict) and isinstance(info.get("data_offsets"), list)
                and len(info["data_offsets"]) == 2 and isinstance(info["data_offsets"][1], int)]
        if ends and 8 + n + max(ends) > size:
            raise CorruptCheckpointError(self.path, f"file is truncated: it has {size:,} bytes but its header needs "
                                         f"{8 + n + max(ends):,}.", REDOWNLOAD)
        return header

    def _translate(self, e: SafetensorError) -> Exception:
        text = str(e)
        if "unknown variant" in text:
            return UnsupportedCheckpointError(self.path, f"it stores a tensor in a dtype this safetensors version "
                                              f"cannot read ({text}).", "Re-save the checkpoint in bf16, fp16 or fp32.")
        return CorruptCheckpointError(self.path, f"its header is inconsistent with its data ({text}).",
                                      "The file is damaged or was not written by a safetensors writer: download it "
                                      "again.")

    def keys(self) -> list[str]:
        return [k for k in self._header if k != "__metadata__"]

    def __contains__(self, key) -> bool:
        return key != "__metadata__" and key in self._header

    def _info(self, key: str) -> dict:
        if key not in self:
            raise CheckpointMismatchError(self.path, f"has no tensor {key!r}.")
        return self._header[key]

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(self._header[k]["shape"]) for k in self.keys()}

    def dtypes(self) -> dict[str, str]:
        return {k: self._header[k]["dtype"] for k in self.keys()}

    def byte_range(self, key: str) -> tuple[int, int]:
        """Where the tensor's bytes lie in the file: [begin, end)."""
        begin, end = self._info(key)["data_offsets"]
        return self.data_start + begin, self.data_start + end

    def offset(self, key: str) -> int:
        """Where the tensor's bytes begin (to read in file order, kinder to disks)."""
        return self.byte_range(key)[0]

    def read(self, key: str, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
        """One tensor (and nothing else) as a CPU tensor; `dtype` converts floating-point tensors only."""
        self._info(key)
        try:
            t = self._file.get_tensor(key)
        except SafetensorError as e:
            raise self._translate(e) from None
        # A copy, never a view of the library's file map: one view keeps the whole map resident, with every page
        # read through it, beside the copies (1.5 GB of a 2.1 GB checkpoint stayed mapped). And a fresh tensor is
        # 64-byte aligned: CPU kernels pick their code path by alignment, so the same weights would compute
        # differently depending on where they lie in the file.
        out = t.to(dtype) if dtype is not None and t.is_floating_point() and t.dtype != dtype else t.clone()
        # The pages read stay resident while the map lives: a fresh map every REMAP_BYTES bounds them during a load.
        self._bytes_through_map += t.numel() * t.element_size()
        del t
        if self._bytes_through_map >= REMAP_BYTES:
            self.close()
            self._open()
        return out

    def read_many(self, keys: Iterable[str], dtype: Optional[torch.dtype] = None) -> dict[str, torch.Tensor]:
        return {k: self.read(k, dtype) for k in sorted(keys, key=self.offset)}

    def close(self):
        self._file.__exit__(None, None, None)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"SafetensorsFile({str(self.path)!r}, {len(self.keys())} tensors)"


def save_safetensors(path, tensors: Mapping[str, torch.Tensor], metadata: Optional[Mapping[str, str]] = None):
    """Writes `tensors` (deterministic bytes for the same input) beside `path`, then renames it into place."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    plain, seen = {}, set()
    for key, value in tensors.items():
        value = value.detach().to("cpu").contiguous()
        storage = value.untyped_storage().data_ptr()
        # The library refuses tensors sharing memory (a tied embedding and its copy): each gets its own bytes.
        plain[key] = value.clone() if storage in seen else value
        seen.add(storage)
    save_file(plain, str(tmp), metadata={str(k): str(v) for k, v in (metadata or {}).items()} or None)
    if metadata:
        _sort_metadata(tmp)
    os.replace(tmp, path)


def _sort_metadata(path: Path) -> None:
    with open(path, "r+b") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        raw = f.read(n)
        header = json.loads(raw)
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        ordered = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        ordered += b" " * (n - len(ordered))  # the writer pads the header with spaces to 8-byte alignment
        if len(ordered) != n or sorted(ordered) != sorted(raw):
            raise RuntimeError(f"{path}: could not reorder the safetensors metadata in place")
        f.seek(8)
        f.write(ordered)
