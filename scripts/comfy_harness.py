"""Starts a real ComfyUI server with this pack and drives it over its HTTP + websocket API.

Used by the demo (`scripts/demo.sh`) and by the tests. Every wait is bounded; the server is always stopped by PID.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import websocket  # websocket-client

ROOT = Path(__file__).resolve().parent.parent
PACK_DIRNAME = "comfyui-acestep-studio"
NETGUARD_DIR = Path(__file__).resolve().parent / "netguard"


def comfyui_path() -> Path:
    return Path(os.environ.get("COMFYUI_PATH") or ROOT / ".comfyui")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_base_directory(base: Path) -> Path:
    """A ComfyUI base directory (models, input, output, user, custom_nodes) holding only this pack."""
    for sub in ("models/checkpoints", "models/loras", "input", "output", "user", "temp", "custom_nodes"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    link = base / "custom_nodes" / PACK_DIRNAME
    if not link.is_symlink():
        link.symlink_to(ROOT, target_is_directory=True)
    for song in (ROOT / "example_audio").glob("*.flac"):
        shutil.copy2(song, base / "input" / song.name)
    return base


class ComfyError(RuntimeError):
    pass


@dataclass
class ComfyServer:
    """A ComfyUI process: `with ComfyServer(base_dir) as server: ...`."""

    base_dir: Path | None = None  # None: ComfyUI's own folders (the demo); a path: an isolated base directory
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    netlog_path: Path | None = None  # every outbound connection attempt is logged here (see netguard/)
    extra_args: tuple[str, ...] = ()
    env: dict = field(default_factory=dict)  # extra environment variables for the server process
    start_timeout: float = 120.0
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "ComfyServer":
        comfy = comfyui_path()
        cmd = [sys.executable, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
               "--disable-auto-launch", "--disable-api-nodes", "--database-url", "sqlite:///:memory:"]
        if self.base_dir is not None:
            cmd += ["--base-directory", str(prepare_base_directory(self.base_dir))]
        cmd += list(self.extra_args)
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        if self.netlog_path is not None:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NETGUARD_DIR), env.get("PYTHONPATH")]))
            env["ACE_NETGUARD_LOG"] = str(self.netlog_path)
        self.log_path = self.log_path or (comfy / f"comfyui-{self.port}.log")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        # Own process group, so stop() also ends any child ComfyUI started.
        self.proc = subprocess.Popen(cmd, cwd=comfy, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ComfyError(f"ComfyUI exited with {self.proc.returncode} during start-up:\n{self.log_tail()}")
            try:
                self.get_json("/system_stats", timeout=2)
                return self
            except (OSError, urllib.error.URLError):
                time.sleep(0.5)
        self.stop()
        raise ComfyError(f"ComfyUI did not answer within {self.start_timeout:.0f} s:\n{self.log_tail()}")

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        except ProcessLookupError:
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except (OSError, AttributeError):
            return "(no log)"

    # --- HTTP ---
    def get_json(self, path: str, timeout: float = 30):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def post_json(self, path: str, payload, timeout: float = 30):
        req = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                body = r.read()
        except urllib.error.HTTPError as e:
            raise ComfyError(f"POST {path} -> {e.code}: {e.read().decode(errors='replace')}") from e
        return json.loads(body) if body else None

    def interrupt(self):
        self.post_json("/interrupt", {})


@dataclass
class RunResult:
    prompt_id: str
    status: str  # "success" or "error"
    events: list[dict]
    history: dict
    error: dict | None = None

    @property
    def outputs(self) -> dict:
        return self.history.get("outputs", {})

    def output_files(self, kind: str = "audio") -> list[dict]:
        return [f for node in self.outputs.values() for f in node.get(kind, [])]


def run_prompt(server: ComfyServer, prompt: dict, timeout: float = 600, on_event=None) -> RunResult:
    """Queues an API-format prompt and follows it on the websocket until success or error."""
    client_id = uuid.uuid4().hex
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}", timeout=10)
    try:
        queued = server.post_json("/prompt", {"prompt": prompt, "client_id": client_id})
        prompt_id = queued["prompt_id"]
        events, status, error = [], None, None
        deadline = time.monotonic() + timeout
        while status is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s:\n{server.log_tail()}")
            ws.settimeout(min(remaining, 10))
            try:
                raw = ws.recv()
            except websocket.WebSocketTimeoutException:
                if server.proc is not None and server.proc.poll() is not None:
                    raise ComfyError(f"ComfyUI died while running the prompt:\n{server.log_tail()}")
                continue
            if not isinstance(raw, str):
                continue  # binary preview frames
            msg = json.loads(raw)
            data = msg.get("data", {})
            if data.get("prompt_id") not in (None, prompt_id):
                continue
            events.append(msg)
            if on_event:
                on_event(msg)
            if msg["type"] == "execution_success":
                status = "success"
            elif msg["type"] in ("execution_error", "execution_interrupted"):
                status, error = ("error" if msg["type"] == "execution_error" else "interrupted"), data
    finally:
        ws.close()
    history = {}
    for _ in range(20):  # history is written just after the final websocket message
        history = server.get_json(f"/history/{prompt_id}").get(prompt_id, {})
        if history:
            break
        time.sleep(0.25)
    return RunResult(prompt_id, status, events, history, error)
