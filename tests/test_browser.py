"""The real ComfyUI frontend in headless Debian chromium: drop a workflow from workflows/, press Run, see the result."""
import json
import re
import shutil
from pathlib import Path
from urllib.parse import urlparse

import pytest

from measure import OUTPUT_DIR, report
from workflow_prompts import prepare_ui, tiny15_files  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
UI_WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
# Flags that keep chromium from calling home on start (this machine's network is closed).
# The stock ComfyUI 0.3.75 frontend looks up the node packs of every loaded workflow in the Comfy Registry (its Run
# button's missing-nodes check), even for a graph of core nodes only. Those lookups are blocked here so nothing leaves
# the machine (the host resolver maps every name but loopback to nothing); any other request outside loopback fails
# the test.
FRONTEND_REGISTRY_LOOKUP = re.compile(r"^https://api\.comfy\.org/(nodes\?node_id=[\w.-]+(&node_id=[\w.-]+)*|comfy-nodes/[\w.-]+/node)$")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-default-apps", "--metrics-recording-only",
                 "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def _drop_workflow(page, name: str, workflow: dict):
    """What a user's drag-and-drop does: a `drop` event carrying the JSON file, on the graph canvas."""
    page.evaluate(
        """([name, text]) => {
            const dt = new DataTransfer();
            dt.items.add(new File([text], name, {type: 'application/json'}));
            const target = document.querySelector('#graph-canvas') || document.body;
            for (const type of ['dragenter', 'dragover', 'drop']) {
                target.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
            }
        }""",
        [name, json.dumps(workflow)],
    )


@pytest.mark.parametrize("workflow", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_drop_workflow_and_run(comfy_server, tiny_checkpoint, tiny15_files, browser, workflow):
    comfy_server.post_json("/api/settings/Comfy.TutorialCompleted", True)
    requests = []
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(comfy_server.url, wait_until="domcontentloaded", timeout=60_000)
        page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=60_000)
        page.wait_for_timeout(1000)  # the frontend restores its default graph after the app object appears
        graph = prepare_ui(json.loads(workflow.read_text()), tiny_checkpoint)
        _drop_workflow(page, workflow.name, graph)
        expected = sorted(n["type"] for n in graph["nodes"])
        page.wait_for_function(
            "(want) => JSON.stringify(window.app.graph._nodes.map(n => n.type).sort()) === JSON.stringify(want)",
            arg=expected, timeout=30_000)
        page.evaluate("""() => { window.__aceResult = new Promise(resolve => {
            window.app.api.addEventListener('execution_success', e => resolve('success'));
            window.app.api.addEventListener('execution_error', e => resolve('error: ' + JSON.stringify(e.detail)));
        }); }""")
        for toast_close in page.locator(".p-toast-close-button").all():
            toast_close.click()
        page.get_by_role("button", name="Run", exact=True).first.click(timeout=30_000)
        result = page.evaluate("() => window.__aceResult", )
        assert result == "success", result
        # The saved song's player appears on the save node (LoadAudio's own player is not counted).
        save_id = next(n["id"] for n in graph["nodes"] if n["type"] == "AceStudioSaveAudio")
        page.wait_for_function(
            """(id) => { const node = window.app.graph.getNodeById(id);
                         return (node.widgets || []).some(w => w.element && w.element.querySelector &&
                                 (w.element.tagName === 'AUDIO' || w.element.querySelector('audio'))); }""",
            arg=save_id, timeout=30_000)
        shot = OUTPUT_DIR / "browser" / f"{workflow.stem}.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot))
    finally:
        page.close()
    outside = [u for u in requests
               if urlparse(u).scheme not in ("data", "blob") and urlparse(u).hostname not in ("127.0.0.1", "localhost")]
    unexpected = [u for u in outside if not FRONTEND_REGISTRY_LOOKUP.match(u)]
    assert not unexpected, f"the page requested addresses outside loopback: {unexpected[:10]}"
    report(f"browser {workflow.stem}: blocked frontend registry lookups", len(outside), urls=sorted(set(outside)))
