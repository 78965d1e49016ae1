"""Imports the installed ComfyUI into the test process, for parity tests against its own ACE-Step code.

Only tests and scripts/benchmark.py use this; nothing of ComfyUI is copied into the pack.
"""
import ast
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NATIVE_HOOK_SOURCE = Path(__file__).resolve().parent / "native_hook" / "__init__.py"


def comfyui_path() -> Path:
    return Path(os.environ.get("COMFYUI_PATH") or ROOT / ".comfyui")


def import_comfy(cpu: bool = True, lowvram: bool = False, pytorch_attention: bool = False):
    """Makes `comfy` importable (on CPU unless `cpu=False`; `lowvram`: ComfyUI's --lowvram; `pytorch_attention`: its
    --use-pytorch-cross-attention) and returns its root."""
    path = comfyui_path()
    if not (path / "main.py").exists():
        raise RuntimeError(f"no ComfyUI at {path}: run `bash scripts/setup.sh` first")
    if str(path) not in sys.path:
        # Before the repo root: ComfyUI's top-level `nodes`/`utils` must win over the pack's folders.
        sys.path.insert(0, str(path))
    from comfy.cli_args import args

    args.cpu = cpu
    args.lowvram = lowvram
    args.use_pytorch_cross_attention = pytorch_attention
    import comfy.model_management  # noqa: F401  (device detection reads args.cpu and args.lowvram)

    return path


def native_hook_constant(name: str):
    """A constant of tests/native_hook, read from its source (importing it would patch this process's ComfyUI)."""
    for node in ast.parse(NATIVE_HOOK_SOURCE.read_text()).body:
        if isinstance(node, ast.Assign) and [ast.unparse(t) for t in node.targets] == [name]:
            return ast.literal_eval(node.value)
    raise LookupError(name)
