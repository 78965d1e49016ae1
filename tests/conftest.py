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
# Test-only nodes (tests/hostile_nodes): AUDIO and LATENT no file can carry, a short-window VAE, a failing node.
HOSTILE_NODES = "ace_step_hostile_test_nodes"
# Test-only custom node (tests/lowvram_hook): a stand-in GPU of a chosen size on the CPU, active only when a server is
# started with its environment variable.
LOWVRAM_HOOK = "ace_step_lowvram_hook"


@pytest.fixture(scope="session")
def tiny_checkpoint(comfy_server) -> str:
    """The tiny demo checkpoint (real key layout, random weights) in the test server's models/checkpoints/, and a
    LoRA for it (PEFT keys, no alpha: RapMachine's format) in models/loras/ as workflow_prompts.TINY_LORA."""
    from fixtures.lora import write_test_lora
    from fixtures.tiny_checkpoint import tiny_configs, write_tiny_checkpoint
    from workflow_prompts import TINY_LORA

    path = OUTPUT_DIR / "comfy-base" / "models" / "checkpoints" / TINY_CHECKPOINT
    if not path.exists():
        write_tiny_checkpoint(path)
    lora = OUTPUT_DIR / "comfy-base" / "models" / "loras" / TINY_LORA
    if not lora.exists():
        write_test_lora(lora, tiny_configs()["transformer"], rank=4, seed=1)
    return TINY_CHECKPOINT


@pytest.fixture(scope="session")
def comfy_server():
    """One real ComfyUI server (CPU, loopback, in-memory database) with only this pack, for the whole session.

    Its base directory is test-output/comfy-base (custom_nodes: the pack, NATIVE_HOOK and HOSTILE_NODES); every
    connection attempt it makes is logged to netlog.jsonl."""
    base = OUTPUT_DIR / "comfy-base"
    for name, folder in ((NATIVE_HOOK, "native_hook"), (HOSTILE_NODES, "hostile_nodes"), (LOWVRAM_HOOK, "lowvram_hook")):
        link = base / "custom_nodes" / name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.is_symlink():
            link.symlink_to(Path(__file__).resolve().parent / folder, target_is_directory=True)
    netlog = OUTPUT_DIR / "netlog.jsonl"
    netlog.unlink(missing_ok=True)
    server = ComfyServer(base_dir=base, log_path=OUTPUT_DIR / "comfyui-server.log", netlog_path=netlog)
    server.start()
    try:
        yield server
    finally:
        server.stop()
