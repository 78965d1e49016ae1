"""The pack inside the real ComfyUI server: registration, naming, and no network traffic."""
import ipaddress
import json
import socket

import soundfile as sf

from measure import OUTPUT_DIR
from pack_inprocess import pack_node_schemas
from workflow_prompts import ROOT, prepare

PACK_MODULE = "custom_nodes.comfyui-acestep-studio"


def test_every_pack_node_is_registered(comfy_server):
    info = comfy_server.get_json("/object_info")
    schemas = pack_node_schemas()
    assert schemas, "the pack registers no node"
    for schema in schemas:
        assert schema.node_id in info, f"{schema.node_id} missing from /object_info: see {comfy_server.log_path}"
        # A node id equal to a core id is silently ignored by ComfyUI: the core node shows up instead of ours.
        assert info[schema.node_id]["python_module"] == PACK_MODULE, \
            f"{schema.node_id} is served by {info[schema.node_id]['python_module']}, not by the pack"
    served = {name for name, node in info.items() if node["python_module"] == PACK_MODULE}
    assert served == {s.node_id for s in schemas}
    assert "IMPORT FAILED" not in comfy_server.log_tail(10**7)


def test_names_prefix_and_category(comfy_server):
    info = comfy_server.get_json("/object_info")
    core_ids = {name for name, node in info.items() if node["python_module"] != PACK_MODULE}
    for schema in pack_node_schemas():
        assert schema.node_id.startswith("AceStudio")
        assert schema.node_id not in core_ids
        assert schema.category == "audio/ACE-Step" or schema.category.startswith("audio/ACE-Step/")
        assert "ACE-Step Studio" in info[schema.node_id]["display_name"]
        for name, spec in {**info[schema.node_id]["input"].get("required", {}),
                           **info[schema.node_id]["input"].get("optional", {})}.items():
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            assert options.get("tooltip"), f"{schema.node_id}.{name} has no tooltip"


def test_workflow_templates_are_served(comfy_server):
    templates = comfy_server.get_json("/workflow_templates")
    assert sorted(templates.get("comfyui-acestep-studio", [])) == sorted(p.stem for p in (ROOT / "workflows").glob("*.json"))


def _is_loopback(host: str) -> bool:
    if host in ("localhost", "", None):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback or ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


def test_run_saves_audio_and_makes_no_outbound_connection(comfy_server, tiny_checkpoint):
    from comfy_harness import run_prompt

    prompt = prepare(json.loads((ROOT / "workflows/api/ace_step_song.json").read_text()), tiny_checkpoint)
    result = run_prompt(comfy_server, prompt, timeout=300)
    assert result.status == "success", result.error
    [saved] = result.output_files("audio")
    data, sr = sf.read(OUTPUT_DIR / "comfy-base/output" / saved["subfolder"] / saved["filename"])
    assert sr == 44100 and data.shape[1] == 2 and data.shape[0] > 44100

    netlog = comfy_server.netlog_path
    attempts = [json.loads(line) for line in netlog.read_text().splitlines()] if netlog.exists() else []
    outside = [a for a in attempts if not _is_loopback(str(a["address"][0]))]
    assert not outside, f"ComfyUI tried to reach outside loopback: {outside}"


def test_netguard_records_connections(tmp_path):
    """The guard behind the test above logs real connection attempts (here: to a loopback listener)."""
    import os
    import subprocess
    import sys

    from comfy_harness import NETGUARD_DIR

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        log = tmp_path / "net.jsonl"
        env = dict(os.environ, PYTHONPATH=str(NETGUARD_DIR), ACE_NETGUARD_LOG=str(log))
        subprocess.run([sys.executable, "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}))"],
                       env=env, check=True, timeout=30)
    events = [json.loads(line) for line in log.read_text().splitlines()]
    assert {"event": "socket.connect", "address": ["127.0.0.1", port]} in events
