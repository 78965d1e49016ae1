"""A careful reader and a deterministic writer for `.safetensors` files.

Why our own reader: checkpoints come from anywhere (downloads, other tools), so we validate the whole header
before touching any tensor data, and we read only the tensors we are asked for. Training-only tensors (hundreds of
MB in the real ACE-Step file) are never read at all. Pickle-based formats (.ckpt/.pt/.pth/.bin) are refused
outright: unpickling can run arbitrary code.

Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N, then N bytes of
UTF-8 JSON `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`, then the data
buffer. Offsets are relative to the start of the data buffer; the tensors tile it exactly, with no gaps, no
overlaps and nothing after the last one.
"""
from __future__ import annotations

import json
import math
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch

# The reference implementation refuses headers above 100 MB too; real headers are a few hundred kB.
MAX_HEADER_BYTES = 100 * 1024 * 1024

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES: dict[torch.dtype, str] = {v: k for k, v in DTYPES.items()}

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle")

CONVERT_HINT = (
    "Convert it once, in an environment you trust, with: python -c \"import torch, safetensors.torch as st; "
    "sd = torch.load('IN', map_location='cpu', weights_only=True); sd = sd.get('state_dict', sd); "
    "st.save_file({k: v.contiguous() for k, v in sd.items()}, 'OUT.safetensors')\" "
    "or download the .safetensors release (e.g. Comfy-Org/ACE-Step_ComfyUI_repackaged, ace_step_v1_3.5b.safetensors)."
)


# ----------------------------------------------------------------------------------------------------------------
# Errors: every problem with a checkpoint is one of these, with a message naming the file, the problem and the fix.

class CheckpointError(Exception):
    """Base class: a checkpoint could not be loaded. The message says which file, what is wrong and what to do."""

    def __init__(self, path, problem: str, fix: str = ""):
        self.path = str(path) if path is not None else None
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem}" + (f" {fix}" if fix else ""))


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The file or folder does not exist, or holds none of the expected files."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle-based file (.ckpt/.pt/.pth/.bin, or a zip/pickle under another name): refused, never unpickled."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated or its header is malformed, oversized or inconsistent with the data."""


class UnsupportedCheckpointError(CheckpointError):
    """A well-formed file that uses something we cannot load (an unknown dtype, another file format)."""


class CheckpointMismatchError(CheckpointError):
    """The tensors do not fit the model: missing tensors, wrong shapes, unexpected keys."""


class WrongModelError(CheckpointMismatchError):
    """The file is a different kind of model (a LoRA, an image model, ...), not ACE-Step v1."""


# ----------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype_name: str
    shape: tuple[int, ...]
    begin: int  # offsets relative to the start of the data buffer
    end: int

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    @property
    def nbytes(self) -> int:
        return self.end - self.begin


def sniff_unsafe(path) -> str | None:
    """Returns why `path` is a pickle-based checkpoint (by name or by content), or None."""
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


def _refuse_pickle(path, why: str):
    raise UnsafeCheckpointError(
        path,
        f"refusing to open this file: {why}. ACE-Step Studio only loads .safetensors files, because opening a "
        "pickle can run arbitrary code.",
        CONVERT_HINT,
    )


def _no_duplicate_keys(pairs):
    out = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class SafetensorsFile:
    """One `.safetensors` file, header validated on open; tensor data read on demand, one tensor at a time.

    `keys()`, `shapes()`, `metadata` come from the header alone. `read(name, dtype)` seeks to that tensor and reads
    exactly its bytes, so tensors never asked for are never read. `names_read` and `bytes_read` record what was read.
    """

    def __init__(self, path, max_header_bytes: int = MAX_HEADER_BYTES):
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointNotFoundError(self.path, "no such file.", "Check the path and the file name.")
        why = sniff_unsafe(self.path)
        if why:
            _refuse_pickle(self.path, why)
        self.names_read: list[str] = []
        self.bytes_read = 0
        self._file = open(self.path, "rb")
        try:
            self._parse_header(max_header_bytes)
        except BaseException:
            self._file.close()
            raise

    # -- header ---------------------------------------------------------------------------------------------------

    def _corrupt(self, problem: str, fix: str = ""):
        fix = fix or "The file is damaged or was not written by a safetensors writer: download it again."
        raise CorruptCheckpointError(self.path, problem, fix)

    def _parse_header(self, max_header_bytes: int):
        f = self._file
        f.seek(0, os.SEEK_END)
        self.file_size = size = f.tell()
        f.seek(0)
        if size < 8:
            self._corrupt(f"file is only {size} bytes, too small to be a safetensors file.")
        (n,) = struct.unpack("<Q", f.read(8))
        if n > max_header_bytes:
            self._corrupt(
                f"header claims to be {n:,} bytes, above the {max_header_bytes:,}-byte limit; real headers are a few "
                "hundred kB, so this is not a valid safetensors file (or it is corrupt)."
            )
        if 8 + n > size:
            raise CorruptCheckpointError(
                self.path,
                f"file is truncated: the header alone needs {8 + n:,} bytes but the file has {size:,}.",
                "The download or copy was probably interrupted: download the file again.",
            )
        raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
        except (UnicodeDecodeError, ValueError) as e:
            self._corrupt(f"header is not valid JSON ({e}).")
        if not isinstance(header, dict):
            self._corrupt("header is not a JSON object.")

        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
            self._corrupt("header field __metadata__ must map strings to strings.")
        self.metadata: dict[str, str] = dict(meta)
        self.data_start = 8 + n

        entries: dict[str, TensorEntry] = {}
        for name, info in header.items():
            if not isinstance(info, dict):
                self._corrupt(f"header entry for tensor {name!r} is not an object.")
            dtype_name, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
            if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
                self._corrupt(f"tensor {name!r} has an invalid shape {shape!r} in the header.")
            if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
                    and 0 <= offsets[0] <= offsets[1]):
                self._corrupt(f"tensor {name!r} has invalid data_offsets {offsets!r} in the header.")
            if dtype_name not in DTYPES:
                raise UnsupportedCheckpointError(
                    self.path,
                    f"tensor {name!r} has dtype {dtype_name!r}, which this loader does not support "
                    f"(supported: {', '.join(DTYPES)}).",
                    "Re-save the checkpoint in bf16, fp16 or fp32.",
                )
            entries[name] = TensorEntry(name, dtype_name, tuple(shape), offsets[0], offsets[1])

        # Every tensor's byte range must equal dtype size x number of elements: a header that says otherwise lies.
        for e in entries.values():
            expected = math.prod(e.shape) * e.dtype.itemsize
            if e.nbytes != expected:
                self._corrupt(
                    f"header is inconsistent: tensor {e.name!r} ({e.dtype_name} {list(e.shape)}) needs {expected:,} "
                    f"bytes but its data_offsets span {e.nbytes:,}."
                )

        data_size = size - self.data_start
        ordered = sorted(entries.values(), key=lambda e: (e.begin, e.end))
        beyond = [e for e in ordered if e.end > data_size]
        if beyond:
            needed = max(e.end for e in ordered)
            raise CorruptCheckpointError(
                self.path,
                f"file is truncated: it has {size:,} bytes but its header needs {self.data_start + needed:,} "
                f"(tensor {beyond[0].name!r} and {len(beyond) - 1} more lie past the end).",
                "The download or copy was probably interrupted: download the file again.",
            )
        # The tensors must tile the data buffer: sorted by offset, each starts where the previous ended.
        pos, prev = 0, None
        for e in ordered:
            if e.begin < pos:
                self._corrupt(f"header is inconsistent: the bytes of tensor {e.name!r} overlap those of {prev!r}.")
            if e.begin > pos:
                after = f"after tensor {prev!r}" if prev else "at the start of the data"
                self._corrupt(f"header is inconsistent: it leaves {e.begin - pos:,} unused bytes {after}.")
            pos, prev = e.end, e.name
        if pos != data_size:
            self._corrupt(f"header is inconsistent: the file has {data_size - pos:,} bytes after the last tensor.")
        self._entries = entries

    # -- access ---------------------------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def entry(self, name: str) -> TensorEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise CheckpointMismatchError(self.path, f"has no tensor {name!r}.") from None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: e.shape for k, e in self._entries.items()}

    def dtypes(self) -> dict[str, str]:
        return {k: e.dtype_name for k, e in self._entries.items()}

    def read(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Reads one tensor (and nothing else) into a fresh CPU tensor.

        `dtype` converts floating-point tensors only; integer and bool tensors keep their stored dtype.
        """
        e = self.entry(name)
        if sys.byteorder != "little" and e.dtype.itemsize > 1:
            raise UnsupportedCheckpointError(self.path, "big-endian machines are not supported.")
        buf = torch.empty(e.nbytes, dtype=torch.uint8)
        if e.nbytes:
            view = memoryview(buf.numpy())
            self._file.seek(self.data_start + e.begin)
            got = 0
            while got < e.nbytes:
                n = self._file.readinto(view[got:])
                if not n:
                    raise CorruptCheckpointError(
                        self.path, f"file ended while reading tensor {name!r} (was it changed while loading?).",
                        "Download the file again.",
                    )
                got += n
        self.names_read.append(name)
        self.bytes_read += e.nbytes
        t = buf.view(e.dtype).reshape(e.shape)
        if dtype is not None and t.is_floating_point() and t.dtype != dtype:
            t = t.to(dtype)
        return t

    def read_many(self, names: Iterable[str], dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        # In file order: sequential reads are kinder to disks than jumping around.
        order = sorted(names, key=lambda k: self.entry(k).begin)
        return {k: self.read(k, dtype) for k in order}

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"SafetensorsFile({str(self.path)!r}, {len(self)} tensors)"


def read_header(path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Validated shapes and metadata of a safetensors file, without reading any tensor data."""
    with SafetensorsFile(path) as f:
        return f.shapes(), f.metadata


def save_safetensors(path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None):
    """Writes a standard safetensors file, deterministically: same tensors and metadata give the same bytes.

    Tensors are laid out by decreasing element size and then by name, so each one starts at an offset aligned to
    its element size (the header is padded with spaces to a multiple of 8, as the reference writer does).
    The file is written next to its destination and then renamed, so a crash never leaves a half file.
    """
    path = Path(path)
    items = []
    for name, t in tensors.items():
        if not isinstance(name, str) or name == "__metadata__":
            raise ValueError(f"invalid tensor name {name!r}")
        if t.dtype not in DTYPE_NAMES:
            raise ValueError(f"tensor {name!r}: dtype {t.dtype} has no safetensors name")
        items.append((name, t.detach().to("cpu").contiguous()))
    items.sort(key=lambda kv: (-kv[1].dtype.itemsize, kv[0]))

    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    pos = 0
    for name, t in items:
        n = t.numel() * t.dtype.itemsize
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [pos, pos + n]}
        pos += n
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("utf-8")
    raw += b" " * (-len(raw) % 8)

    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for _, t in items:
            if t.numel():
                f.write(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    os.replace(tmp, path)
