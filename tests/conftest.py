import json
import sys

import pytest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from measure import MEASUREMENTS  # noqa: E402


def pytest_sessionstart(session):
    MEASUREMENTS.unlink(missing_ok=True)


def pytest_terminal_summary(terminalreporter):
    if not MEASUREMENTS.exists():
        return
    terminalreporter.section("measurements")
    for line in MEASUREMENTS.read_text().splitlines():
        row = json.loads(line)
        extra = {k: v for k, v in row.items() if k not in ("name", "value")}
        terminalreporter.write_line(f"{row['name']}: {row['value']}" + (f"  {extra}" if extra else ""))


sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from comfy_harness import ComfyServer  # noqa: E402
from measure import OUTPUT_DIR  # noqa: E402


TINY_CHECKPOINT = "ace_step_v1_tiny_demo.safetensors"
# Test-only custom node (tests/native_hook) that lets native ComfyUI build the reduced transformer of the
# native-equivalence checkpoint; it adds no nodes and leaves every other checkpoint alone.
NATIVE_HOOK = "ace_step_native_parity_hook"


@pytest.fixture(scope="session")
def tiny_checkpoint(comfy_server) -> str:
    """The tiny demo checkpoint (real key layout, random weights) in the test server's models/checkpoints/."""
    from ace_step.tiny_checkpoint import write_tiny_checkpoint

    path = OUTPUT_DIR / "comfy-base" / "models" / "checkpoints" / TINY_CHECKPOINT
    if not path.exists():
        write_tiny_checkpoint(path)
    return TINY_CHECKPOINT


@pytest.fixture(scope="session")
def comfy_server():
    """One real ComfyUI server (CPU, loopback, in-memory database) with only this pack, for the whole session.

    Its base directory is test-output/comfy-base (custom_nodes: the pack and NATIVE_HOOK); every connection attempt
    it makes is logged to netlog.jsonl."""
    base = OUTPUT_DIR / "comfy-base"
    hook = base / "custom_nodes" / NATIVE_HOOK
    hook.parent.mkdir(parents=True, exist_ok=True)
    if not hook.is_symlink():
        hook.symlink_to(Path(__file__).resolve().parent / "native_hook", target_is_directory=True)
    netlog = OUTPUT_DIR / "netlog.jsonl"
    netlog.unlink(missing_ok=True)
    server = ComfyServer(base_dir=base, log_path=OUTPUT_DIR / "comfyui-server.log", netlog_path=netlog)
    server.start()
    try:
        yield server
    finally:
        server.stop()
