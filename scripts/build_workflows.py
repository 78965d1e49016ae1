"""Builds the drag-and-drop workflows in workflows/ (UI format) and workflows/api/ (API format) from one spec each,
so the two formats can never drift apart.

    .venv/bin/python scripts/build_workflows.py          # writes the files
    .venv/bin/python scripts/build_workflows.py --check  # exits 1 if a file differs from its spec
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UI_DIR = ROOT / "workflows"
API_DIR = ROOT / "workflows" / "api"


@dataclass
class Node:
    id: int
    type: str
    widgets: list[tuple[str, object]] = field(default_factory=list)  # in the node's widget order
    inputs: list[tuple[str, str, tuple[int, int]]] = field(default_factory=list)  # (name, type, (node id, slot))
    outputs: list[tuple[str, str]] = field(default_factory=list)  # (name, type)
    title: str | None = None
    seed_widget: str | None = None  # a widget followed by the frontend's "control after generate" value
    ui_only_widgets: list[object] = field(default_factory=list)  # extra values the frontend keeps (upload button...)
    size: tuple[int, int] = (320, 120)


@dataclass
class Note:
    text: str
    size: tuple[int, int] = (420, 320)


@dataclass
class Workflow:
    name: str
    nodes: list[Node]
    note: Note | None = None


def to_api(wf: Workflow) -> dict:
    prompt = {}
    for n in wf.nodes:
        inputs = {name: value for name, value in n.widgets}
        for name, _type, (src, slot) in n.inputs:
            inputs[name] = [str(src), slot]
        prompt[str(n.id)] = {"class_type": n.type, "inputs": inputs, "_meta": {"title": n.title or n.type}}
    return prompt


def to_ui(wf: Workflow) -> dict:
    links, ui_nodes = [], []
    link_id = 0
    out_links: dict[tuple[int, int], list[int]] = {}
    in_links: dict[tuple[int, str], int] = {}
    for n in wf.nodes:
        for name, typ, (src, slot) in n.inputs:
            link_id += 1
            links.append([link_id, src, slot, n.id, [i[0] for i in n.inputs].index(name), typ])
            out_links.setdefault((src, slot), []).append(link_id)
            in_links[(n.id, name)] = link_id
    order = {n.id: i for i, n in enumerate(wf.nodes)}
    x, column_width = 40, 380
    for i, n in enumerate(wf.nodes):
        values = []
        for name, value in n.widgets:
            values.append(value)
            if name == n.seed_widget:
                values.append("fixed")
        values += n.ui_only_widgets
        ui_nodes.append({
            "id": n.id, "type": n.type, "pos": [x + column_width * (i // 3), 60 + 260 * (i % 3)],
            "size": list(n.size), "flags": {}, "order": order[n.id], "mode": 0,
            "inputs": [{"name": name, "type": typ, "link": in_links[(n.id, name)]} for name, typ, _ in n.inputs],
            "outputs": [{"name": name, "type": typ, "links": out_links.get((n.id, slot), []), "slot_index": slot}
                        for slot, (name, typ) in enumerate(n.outputs)],
            "properties": {"Node name for S&R": n.type},
            "widgets_values": values,
            **({"title": n.title} if n.title else {}),
        })
    last_id = max(n.id for n in wf.nodes)
    if wf.note is not None:
        last_id += 1
        ui_nodes.append({
            "id": last_id, "type": "MarkdownNote", "pos": [40, -380], "size": list(wf.note.size), "flags": {},
            "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
            "widgets_values": [wf.note.text], "title": "How to use this workflow",
        })
    return {"last_node_id": last_id, "last_link_id": link_id, "nodes": ui_nodes, "links": links, "groups": [],
            "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [0, 400]}}, "version": 0.4}


def workflows() -> list[Workflow]:
    return [
        Workflow(
            "ace_step_song",
            nodes=[
                Node(1, "LoadAudio", widgets=[("audio", "example_song.flac")], outputs=[("AUDIO", "AUDIO")],
                     ui_only_widgets=[None, ""]),
                Node(2, "AceStudioSaveAudio",
                     widgets=[("filename_prefix", "audio/ACE-Step"), ("format", "flac"), ("quality", "V0")],
                     inputs=[("audio", "AUDIO", (1, 0))]),
            ],
            note=Note("## Placeholder\nThe model nodes land next; this graph loads the example song and saves it."),
        ),
    ]


def rendered() -> dict[Path, str]:
    files = {}
    for wf in workflows():
        files[UI_DIR / f"{wf.name}.json"] = json.dumps(to_ui(wf), indent=2) + "\n"
        files[API_DIR / f"{wf.name}.json"] = json.dumps(to_api(wf), indent=2) + "\n"
    return files


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    check = parser.parse_args().check
    stale = []
    for path, text in rendered().items():
        if check:
            if not path.exists() or path.read_text() != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            print(path.relative_to(ROOT))
    if stale:
        sys.exit("out of date, run scripts/build_workflows.py: " + ", ".join(str(p) for p in stale))


if __name__ == "__main__":
    main()
