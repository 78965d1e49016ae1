"""Starts ComfyUI with the pack, queues one API-format workflow, and prints where each output file went.

    .venv/bin/python scripts/run_workflow.py workflows/api/ace_step_song.json [--seed N]
"""
import argparse
import json
import random
import sys
from pathlib import Path

from comfy_harness import ComfyServer, comfyui_path, run_prompt


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workflow", type=Path)
    parser.add_argument("--seed", type=int, default=None, help="override every seed input (default: random)")
    parser.add_argument("--checkpoint", default=None, help="override the checkpoint file the workflow loads")
    parser.add_argument("--timeout", type=float, default=1800)
    opts = parser.parse_args()
    prompt = json.loads(opts.workflow.read_text())
    seed = opts.seed if opts.seed is not None else random.randrange(2**32)
    for node in prompt.values():
        if opts.checkpoint and "ckpt_name" in node["inputs"]:
            node["inputs"]["ckpt_name"] = opts.checkpoint
        if "seed" in node["inputs"] and not isinstance(node["inputs"]["seed"], list):
            node["inputs"]["seed"] = seed
    print(f"starting ComfyUI at {comfyui_path()} ...", flush=True)
    with ComfyServer() as server:
        print(f"ComfyUI is up at {server.url}; running {opts.workflow} (seed {seed})", flush=True)

        def progress(msg):
            if msg["type"] == "progress":
                print(f"  step {msg['data']['value']}/{msg['data']['max']}", flush=True)

        result = run_prompt(server, prompt, timeout=opts.timeout, on_event=progress)
        if result.status != "success":
            sys.exit(f"the workflow failed: {json.dumps(result.error, indent=2)}\n--- ComfyUI log ---\n"
                     f"{server.log_tail()}")
        out_dir = comfyui_path() / "output"
        files = [out_dir / f["subfolder"] / f["filename"] for f in result.output_files("audio")]
        if not files:
            sys.exit("the workflow finished but saved no audio")
        for f in files:
            print(f"saved: {f}")


if __name__ == "__main__":
    main()
