"""What a user trial found (issue 13), each through the real server: saved files others can read, instrumentals as
the original makes them, lyric losses told on the node (in the browser too) and in the log, the MP3 bit rate asked
for, the converter's edges (non-JSON files, SaveAudioAdvanced) and error texts a user can read."""
import io
import json
import os
import random
import subprocess
import sys
from types import SimpleNamespace

import av
import pytest
import torch
from safetensors.torch import load_file

import workflow_converter as wc
from ace_step.models.v1.umt5 import encode_token_weights, erg_tag_q_scale
from ace_step.sampling import erg, flow_steps, schedules
from ace_step.sampling.guidance import GuidanceSchedule, Guider
from comfy_harness import ComfyError, run_prompt
from measure import OUTPUT_DIR, report
from pack_inprocess import PACKAGE, import_pack
from test_browser import _drop_workflow, browser  # noqa: F401 (fixture)
from test_workflow_convert import assert_loads, official, ui_to_api
from workflow_prompts import ROOT, prepare, prepare_ui

BASE = OUTPUT_DIR / "comfy-base"
EXAMPLE = "example_song.flac"  # setup copies example_audio/ into the server's input folder
START, STOP = 261, 0  # lyric token ids


def _tag(what: str) -> str:
    return f"tests/trial_{what}_{random.randrange(10**9)}"


def _pack(module: str):
    import importlib

    import_pack()
    return importlib.import_module(f"{PACKAGE}.{module}")


def _saved(result, node: str):
    return [BASE / "output" / f["subfolder"] / f["filename"] for f in result.outputs[node]["audio"]]


def _run(server, prompt, expect="success"):
    result = run_prompt(server, prompt, timeout=300)
    assert result.status == expect, f"{result.error}\n{server.log_tail()}"
    return result


def _song(ckpt: str, lyrics: str | None = None, seconds: float = 1.0, steps: int = 1) -> dict:
    """The text-to-music workflow, CI-sized, ending in SaveLatent (node "99")."""
    prompt = prepare(json.loads((ROOT / "workflows/api/ace_step_song.json").read_text()), ckpt, seconds, steps)
    if lyrics is not None:
        next(n for n in prompt.values() if n["class_type"] == "AceStudioTextEncode")["inputs"]["lyrics"] = lyrics
    for key in [k for k, n in prompt.items() if n["class_type"] in ("AceStudioLatentToAudio", "AceStudioSaveAudio")]:
        del prompt[key]
    prompt["99"] = {"class_type": "SaveLatent", "inputs": {"samples": ["7", 0], "filename_prefix": _tag("latent")}}
    return prompt


def _latent(result) -> torch.Tensor:
    [item] = result.outputs["99"]["latents"]
    return load_file(BASE / "output" / item["subfolder"] / item["filename"])["latent_tensor"]


@pytest.fixture(scope="module")
def tiny_inprocess(tiny_checkpoint):
    """The server's tiny checkpoint loaded in this process, and its instrumental (empty lyrics) conditioning."""
    model, clip, _ = _pack("comfy_bridge.models").load_checkpoint(BASE / "models" / "checkpoints" / tiny_checkpoint)
    tags = json.loads((ROOT / "workflows/api/ace_step_song.json").read_text())["4"]["inputs"]["tags"]
    positive = _pack("nodes.text").TextEncode.execute(clip, tags, "", 1.0).result[0]
    return SimpleNamespace(model=model, clip=clip, tags=tags, positive=positive, dm=model.model.diffusion_model)


# ------------------------------------------------------------------------------------------------ file permissions
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_saved_audio_is_as_readable_as_comfyuis_own_files(comfy_server):
    """The pack's Save Audio and ComfyUI's own SaveAudio write to the same folder with the same permissions: those
    the server's umask (inherited from this process) gives new files, 0644 for the usual 022."""
    tag = _tag("mode")
    prompt = {
        "1": {"class_type": "AceStudioLoadAudio", "inputs": {"audio": EXAMPLE}},
        "2": {"class_type": "AceStudioSaveAudio", "inputs": {"audio": ["1", 0], "filename_prefix": tag + "_pack",
                                                             "format": "flac", "quality": "V0"}},
        "3": {"class_type": "SaveAudio", "inputs": {"audio": ["1", 0], "filename_prefix": tag + "_core"}},
    }
    result = _run(comfy_server, prompt)
    [pack], [core] = _saved(result, "2"), _saved(result, "3")
    modes = [path.stat().st_mode & 0o777 for path in (pack, core)]
    report("saved audio file mode (pack, ComfyUI's SaveAudio)", [oct(m) for m in modes], umask=oct(_umask()))
    assert modes == [0o666 & ~_umask()] * 2


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_save_unique_honours_the_umask(tmp_path, mask):
    save_unique = _pack("comfy_bridge.audio_files").save_unique
    old = os.umask(mask)
    try:
        name = save_unique(b"song", str(tmp_path), "song", 1, "flac")
    finally:
        os.umask(old)
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == [name]


# ------------------------------------------------------------------------------------------------ MP3 bit rates
QUALITIES = ["V0", "64k", "96k", "128k", "192k", "320k"]


def _bit_rates(path) -> tuple[int | None, float]:
    """(the bit rate the first frame's header states, the file's average in bits per second)."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return stream.bit_rate, path.stat().st_size * 8 / (samples / stream.rate)


def test_every_quality_gives_the_bit_rate_asked_for(comfy_server):
    """Decoded from the saved files: MP3 at 64k/96k/128k/192k/320k is constant at that rate (64k, 96k and 192k were
    V0 before), V0 is LAME's best VBR; Opus follows its bit rate (V0 = 128k)."""
    tag = _tag("bitrate")
    prompt = {"1": {"class_type": "AceStudioLoadAudio", "inputs": {"audio": EXAMPLE}}}
    for fmt in ("mp3", "opus"):
        for q in QUALITIES:
            prompt[f"{fmt}_{q}"] = {"class_type": "AceStudioSaveAudio", "inputs": {
                "audio": ["1", 0], "filename_prefix": f"{tag}_{q}", "format": fmt, "quality": q}}
    result = _run(comfy_server, prompt)
    rates = {node: _bit_rates(_saved(result, node)[0]) for node in prompt if node != "1"}
    report("MP3 bit rates (header, file average kbps)",
           {q: (rates[f"mp3_{q}"][0], round(rates[f"mp3_{q}"][1] / 1000)) for q in QUALITIES})
    report("Opus file average kbps", {q: round(rates[f"opus_{q}"][1] / 1000) for q in QUALITIES})
    for q in QUALITIES[1:]:
        header, average = rates[f"mp3_{q}"]
        assert header == int(q[:-1]) * 1000 and abs(average / header - 1) < 0.05, (q, header, average)
    assert 128_000 < rates["mp3_V0"][1] < 320_000  # VBR (LAME -V0): the header states only its first frame
    opus = [rates[f"opus_{q}"][1] for q in QUALITIES[1:]]
    assert opus == sorted(opus) and abs(rates["opus_V0"][1] - rates["opus_128k"][1]) < 1000
    assert all(abs(average / (int(q[:-1]) * 1000) - 1) < 0.25 for q, average in zip(QUALITIES[1:], opus))


def test_mp3_below_32_khz_says_what_it_can_hold(caplog):
    """MPEG-2 layer III (16-24 kHz) holds at most 160 kbps: LAME caps 320k there, and the log says so."""
    encode_audio = _pack("comfy_bridge.audio_files").encode_audio
    tone = (0.3 * torch.sin(torch.arange(32000) * 0.1)).repeat(2, 1).numpy()
    with caplog.at_level("WARNING"):
        data = encode_audio(tone, 16000, "mp3", "320k")
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.audio[0].bit_rate == 160_000
    assert "MP3 at 16000 Hz holds at most 160 kbps, so this file gets 160k instead of the 320k" in caplog.text


# ------------------------------------------------------------------------------------------------ lyric losses
HEBREW, THAI, EMOJI = "שלום עולם", "สวัสดีครับ", "🎵🎶 dancing all night long 🎶"
LOSSY_LYRICS = f"[verse]\nWe walk the line\n{HEBREW}\n{THAI}\n{EMOJI}"


def _text_output(result) -> str:
    [node] = [k for k, n in result.history["prompt"][2].items() if n["class_type"] == "AceStudioTextEncode"]
    assert node in result.outputs, "the Tags + Lyrics node sent no UI output"
    [text] = result.outputs[node]["text"]
    return text


def _server_log(server, since: int) -> str:
    return server.log_path.read_text(errors="replace")[since:]


def test_lost_lyrics_are_told_on_the_node_and_in_the_log(comfy_server, tiny_checkpoint):
    since = len(comfy_server.log_path.read_text(errors="replace"))
    message = _text_output(_run(comfy_server, _song(tiny_checkpoint, LOSSY_LYRICS)))
    for fragment in (f'line 3 "{HEBREW}"', "(Hebrew)", f'line 4 "{THAI}"', "(Thai)", f'line 5 "{EMOJI}"',
                     "emoji or symbols", "Fix: write those words"):
        assert fragment in message, (fragment, message)
    assert "line 2" not in message  # the English line is read
    log = _server_log(comfy_server, since)  # ComfyUI writes a record's message only
    assert message in log
    # Lyrics the model reads whole: nothing to say (and the node's display clears).
    assert _text_output(_run(comfy_server, _song(tiny_checkpoint, "[verse]\nWe walk the line"))) == ""


def test_the_report_is_logged_as_a_warning(tiny_inprocess, caplog):
    """Every tokenisation through the pack's CLIP (core TextEncodeAceStepAudio's too) logs what is lost."""
    with caplog.at_level("WARNING"):
        tokens = tiny_inprocess.clip.tokenize("rock", lyrics=LOSSY_LYRICS)
    [record] = [r for r in caplog.records if "ACE-Step lyrics" in r.getMessage()]
    assert record.levelname == "WARNING" and f'line 3 "{HEBREW}"' in record.getMessage()
    assert tokens["lyrics"] == tiny_inprocess.clip.lyric_tokenizer.encode(LOSSY_LYRICS)
    caplog.clear()
    tiny_inprocess.clip.tokenize("rock", lyrics="[verse]\nWe walk the line")
    assert not [r for r in caplog.records if "ACE-Step lyrics" in r.getMessage()]


def test_lyrics_longer_than_the_trained_limit_are_told(comfy_server, tiny_checkpoint):
    lyrics = "\n".join(["Neon lights they flicker bright in the city of the night"] * 180)  # 10,259 characters
    ids = _pack("comfy_bridge.models").LyricTokenizer(comfyui_root=ROOT / ".comfyui").encode(lyrics)
    message = _text_output(_run(comfy_server, _song(tiny_checkpoint, lyrics)))
    report("10,259-character lyrics", len(ids), unit="lyric tokens")
    assert f"{len(ids):,} tokens, more than the 4,096 ACE-Step v1 was trained on" in message


def test_lyric_report_is_shown_on_the_node_in_the_browser(comfy_server, tiny_checkpoint, browser):  # noqa: F811
    """The real frontend runs the song workflow with a Hebrew line: the report arrives with the node's `executed`
    message and the pack's frontend extension shows it on the Tags + Lyrics node."""
    comfy_server.post_json("/api/settings/Comfy.TutorialCompleted", True)
    graph = prepare_ui(json.loads((ROOT / "workflows" / "ace_step_song.json").read_text()), tiny_checkpoint,
                       seconds=1.0, steps=1)
    [encode] = [n for n in graph["nodes"] if n["type"] == "AceStudioTextEncode"]
    encode["widgets_values"][1] = f"[verse]\nWe walk the line\n{HEBREW}"
    page = browser.new_page(viewport={"width": 1600, "height": 1000})
    try:
        page.goto(comfy_server.url, wait_until="domcontentloaded", timeout=60_000)
        page.wait_for_function("() => window.app && window.app.graph && window.app.canvas", timeout=60_000)
        page.wait_for_timeout(1000)
        _drop_workflow(page, "lyric_report.json", graph)
        page.wait_for_function("(n) => window.app.graph._nodes.length === n", arg=len(graph["nodes"]), timeout=30_000)
        page.evaluate("""(id) => { window.__aceReport = null; window.__aceResult = new Promise(resolve => {
            window.app.api.addEventListener('executed', e => {
                if (String(e.detail.node) === String(id)) window.__aceReport = e.detail.output.text[0]; });
            window.app.api.addEventListener('execution_success', () => resolve('success'));
            window.app.api.addEventListener('execution_error', e => resolve('error: ' + JSON.stringify(e.detail)));
        }); }""", encode["id"])
        for toast_close in page.locator(".p-toast-close-button").all():
            toast_close.click()
        page.get_by_role("button", name="Run", exact=True).first.click(timeout=30_000)
        assert page.evaluate("() => window.__aceResult") == "success"
        sent = page.evaluate("() => window.__aceReport")
        assert f'line 3 "{HEBREW}"' in sent and "(Hebrew)" in sent
        page.wait_for_function(
            """([id, want]) => { const node = window.app.graph.getNodeById(id);
                                  const w = (node.widgets || []).find(w => w.name === 'lyric_report');
                                  return w && w.value.includes(want); }""",
            arg=[encode["id"], f'line 3 "{HEBREW}"'], timeout=30_000)
        # Shown, never saved with the workflow nor sent with a prompt.
        saved = page.evaluate("(id) => window.app.graph.getNodeById(id).serialize().widgets_values", encode["id"])
        assert saved[:3] == encode["widgets_values"][:3] and not any("line 3" in str(v) for v in saved)
        queued = page.evaluate("async () => (await window.app.graphToPrompt()).output")
        assert "lyric_report" not in queued[str(encode["id"])]["inputs"]
        # Close up on the node: its report box is on the page, holding the text.
        page.evaluate("""(id) => { const node = window.app.graph.getNodeById(id), ds = window.app.canvas.ds;
                                   ds.scale = 1.2; ds.offset = [60 - node.pos[0], 140 - node.pos[1]];
                                   window.app.canvas.setDirty(true, true); }""", encode["id"])
        box = page.locator("textarea[placeholder='Lyrics: nothing lost']")
        box.wait_for(state="visible", timeout=30_000)
        assert f'line 3 "{HEBREW}"' in box.input_value()
        shot = OUTPUT_DIR / "browser" / "lyric_report.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot))
    finally:
        page.close()


# ------------------------------------------------------------------------------------------------ instrumentals
SAMPLER = dict(seeds="5", duration=1.0, steps=3, scheduler="euler", cfg_type="apg", guidance_scale=15.0,
               omega_scale=10.0, guidance_interval=1.0, guidance_interval_decay=0.0, min_guidance_scale=3.0,
               use_erg_tag=True, use_erg_lyric=True, use_erg_diffusion=True, guidance_scale_text=0.0,
               guidance_scale_lyric=0.0, oss_steps="")
FRAMES = int(SAMPLER["duration"] * 44100 / 4096)


def original_by_hand(t, lyric_ids: list[int], lyric_mask: list[int] | None) -> torch.Tensor:
    """The original text2music loop (ace-step/ACE-Step `acestep/pipeline_ace_step.py`) from the ace_step building
    blocks, for the SAMPLER settings, with the given lyric ids and mask (None: all attended) in every condition."""
    dm, te = t.dm, t.clip.text_encoder
    tokens = t.clip.tokenize(t.tags)["umt5base"]
    text = encode_token_weights(te, tokens)
    erg_text = encode_token_weights(te, tokens, q_scale=erg_tag_q_scale(te.config.num_layers))
    ids = torch.tensor([lyric_ids])
    mask = None if lyric_mask is None else torch.tensor([lyric_mask])
    with torch.no_grad():
        cond, cond_mask = dm.encode_condition(text, ids, lyric_mask=mask)
        with erg.scaled_outputs(dm, erg.lyric_modules(dm.config.lyric_encoder_blocks)):
            uncond, uncond_mask = dm.encode_condition(erg_text, ids, lyric_mask=mask)
    s = SAMPLER
    guider = Guider(GuidanceSchedule(s["steps"], s["guidance_scale"], s["guidance_interval"],
                                     s["guidance_interval_decay"], s["min_guidance_scale"]), s["cfg_type"], 0.0, 0.0)

    def velocity(x, timestep, i):
        def unconditional():
            with erg.scaled_outputs(dm, erg.diffusion_modules(dm.config.num_layers)):
                return dm.decode(x, timestep, uncond, uncond_mask)
        return guider(i, lambda: dm.decode(x, timestep, cond, cond_mask), unconditional)

    noise = torch.randn(1, 8, 16, FRAMES, generator=torch.Generator().manual_seed(int(s["seeds"])))
    with torch.no_grad():
        return flow_steps.sample("euler", velocity, noise, schedules.flow_schedule(s["steps"], "euler").sigmas,
                                 s["omega_scale"], None)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _original_sampler_prompt(ckpt: str) -> dict:
    prompt = _song(ckpt, lyrics="")
    prompt["7"] = {"class_type": "AceStudioOriginalSampler",
                   "inputs": {"model": ["1", 0], "positive": ["4", 0], **SAMPLER}}
    return prompt


def _original_parts_prompt(ckpt: str) -> dict:
    s = SAMPLER
    prompt = _song(ckpt, lyrics="", seconds=s["duration"])
    prompt.update({
        "20": {"class_type": "AceStudioErgNegative", "inputs": {"positive": ["4", 0], "use_erg_tag": True,
                                                                "use_erg_lyric": True}},
        "21": {"class_type": "AceStudioOriginalGuider", "inputs": {
            "model": ["1", 0], "positive": ["4", 0], "negative": ["20", 0],
            **{k: s[k] for k in ("cfg_type", "guidance_scale", "guidance_interval", "guidance_interval_decay",
                                 "min_guidance_scale", "use_erg_diffusion", "guidance_scale_text",
                                 "guidance_scale_lyric")}}},
        "22": {"class_type": "AceStudioOriginalSamplerSelect", "inputs": {"scheduler": "euler",
                                                                          "omega_scale": s["omega_scale"]}},
        "23": {"class_type": "AceStudioOriginalSchedule", "inputs": {"model": ["1", 0], "steps": s["steps"],
                                                                     "oss_steps": ""}},
        "24": {"class_type": "AceStudioSeedsNoise", "inputs": {"seeds": s["seeds"]}},
        "7": {"class_type": "SamplerCustomAdvanced", "inputs": {"noise": ["24", 0], "guider": ["21", 0],
                                                                "sampler": ["22", 0], "sigmas": ["23", 0],
                                                                "latent_image": ["6", 0]}},
    })
    return prompt


def test_instrumentals_are_sampled_as_the_original_samples_them(comfy_server, tiny_checkpoint, tiny_inprocess):
    """Empty lyrics: the original feeds one [STOP] token masked out; the pack's text encode gives ComfyUI's
    [START] (kept for core samplers). The original sampler and its SamplerCustomAdvanced parts, through the server,
    equal the original loop with the masked [STOP] and not with [START]."""
    t = tiny_inprocess
    assert t.positive[0][1]["conditioning_lyrics"].tolist() == [[START]]  # core KSampler: ComfyUI's tokens
    masked = original_by_hand(t, [STOP], [0])
    unmasked = original_by_hand(t, [START], None)
    node = _latent(_run(comfy_server, _original_sampler_prompt(tiny_checkpoint)))
    parts = _latent(_run(comfy_server, _original_parts_prompt(tiny_checkpoint)))
    errors = {"node vs original": _rel(node, masked), "parts vs original": _rel(parts, masked),
              "node vs [START] unmasked": _rel(node, unmasked)}
    report("instrumental latents, max rel difference", errors)
    # The server and this process round differently (3.9e-5 measured between the old node and its own reference).
    assert errors["node vs original"] < 2e-4 and errors["parts vs original"] < 2e-4
    assert errors["node vs [START] unmasked"] > 1e-3


def test_instrumental_velocity_differs_by_the_lyric_token(tiny_inprocess):
    """The size of what the fix changes: the first step's conditional velocity with [START] unmasked against the
    original's masked [STOP], relative to the velocity's largest value (random tiny weights)."""
    t = tiny_inprocess
    dm, te = t.dm, t.clip.text_encoder
    text = encode_token_weights(te, t.clip.tokenize(t.tags)["umt5base"])
    x = torch.randn(1, 8, 16, FRAMES, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        v = {}
        for name, ids, mask in (("start", [START], None), ("stop", [STOP], torch.tensor([[0]]))):
            cond, cond_mask = dm.encode_condition(text, torch.tensor([ids]), lyric_mask=mask)
            v[name] = dm.decode(x, torch.tensor([1000.0]), cond, cond_mask)
    change = _rel(v["start"], v["stop"])
    report("instrumental velocity change, [START] unmasked vs masked [STOP]", round(change, 4),
           unit="max |dv| / max |v|")
    assert change > 1e-3


# ------------------------------------------------------------------------------------------------ converter
def test_converter_says_a_non_json_file_is_not_a_workflow(tmp_path):
    for name, data in (("notes.json", b"my lyrics, not a workflow"), ("image.json", b"\x89PNG\r\n\x1a\n\x00\xff"),
                       ("cut.json", b'{"nodes": [')):
        path = tmp_path / name
        path.write_bytes(data)
        run = subprocess.run([sys.executable, "-I", str(ROOT / "scripts" / "convert_workflow.py"), str(path)],
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and run.stdout == ""
        assert run.stderr.startswith(f"{path}: not a ComfyUI workflow: the file is not ")
        assert "Workflow > Export" in run.stderr and "Traceback" not in run.stderr


def _with_save_audio_advanced(template: dict, fmt: str, quality: str | None) -> dict:
    """The official template as the current templates save: SaveAudioAdvanced in place of SaveAudioMP3, with the
    widgets and input slots the newest frontend writes for it."""
    [node] = [n for n in template["nodes"] if n["type"] == "SaveAudioMP3"]
    node.update(type="SaveAudioAdvanced", widgets_values=["tests/trial_advanced", fmt] + ([quality] if quality else []),
                outputs=[{"name": "audio", "type": "AUDIO", "links": None}])
    node["properties"]["Node name for S&R"] = "SaveAudioAdvanced"
    node["inputs"] += [{"name": "filename_prefix", "type": "STRING", "widget": {"name": "filename_prefix"},
                        "link": None},
                       {"name": "format", "type": "COMBO", "widget": {"name": "format"}, "link": None}]
    if quality:
        node["inputs"].append({"name": "format.quality", "type": "COMBO", "widget": {"name": "format.quality"},
                               "link": None})
    return template


def test_save_audio_advanced_becomes_the_packs_save_audio_and_runs(comfy_server, tiny_checkpoint):
    """ComfyUI 0.3.75 has no SaveAudioAdvanced: the converted official template saves with the pack's Save Audio in
    the same format and quality, loads in the frontend's terms and runs; the file is an MP3 at 320 kbps."""
    template = _with_save_audio_advanced(official("audio_ace_step_1_t2a_song"), "mp3", "320k")
    [save_id] = [n["id"] for n in template["nodes"] if n["type"] == "SaveAudioAdvanced"]
    result = wc.convert_workflow(template)
    assert f"#{save_id} SaveAudioAdvanced -> AceStudioSaveAudio" in result.changes and result.warnings == []
    [node] = [n for n in result.workflow["nodes"] if n["id"] == save_id]
    assert node["type"] == "AceStudioSaveAudio" and node["widgets_values"] == ["tests/trial_advanced", "mp3", "320k"]
    assert [i["name"] for i in node["inputs"]] == ["audio", "filename_prefix", "format", "quality"]
    assert node["inputs"][3]["widget"] == {"name": "quality"} and node["outputs"] == []
    info = comfy_server.get_json("/object_info")
    assert "SaveAudioAdvanced" not in info
    assert_loads(result.workflow, info)
    prompt = prepare(ui_to_api(result.workflow, info), tiny_checkpoint, seconds=2.0, steps=1)
    prompt[str(save_id)]["inputs"]["filename_prefix"] = _tag("advanced")
    [path] = _saved(_run(comfy_server, prompt), str(save_id))
    assert path.suffix == ".mp3" and _bit_rates(path)[0] == 320_000


def test_save_audio_advanced_in_the_api_format():
    prompt = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "ace_step_v1_3.5b.safetensors"}},
        "2": {"class_type": "EmptyAceStepLatentAudio", "inputs": {"seconds": 10.0, "batch_size": 1}},
        "3": {"class_type": "VAEDecodeAudio", "inputs": {"samples": ["2", 0], "vae": ["1", 2]}},
        "4": {"class_type": "SaveAudioAdvanced", "inputs": {"audio": ["3", 0], "filename_prefix": "audio/song",
                                                            "format": "opus", "format.quality": "64k"},
              "_meta": {"title": "Save Audio (Advanced)"}},
        "5": {"class_type": "SaveAudioAdvanced", "inputs": {"audio": ["3", 0], "filename_prefix": "audio/lossless",
                                                            "format": "flac"}},
        "6": {"class_type": "SaveAudioAdvanced", "inputs": {"audio": ["3", 0], "filename_prefix": "audio/x",
                                                            "format": "mp3", "format.quality": "V0"}},
        "7": {"class_type": "PreviewAudio", "inputs": {"audio": ["6", 0]}},
    }
    result = wc.convert_workflow(prompt)
    out = result.workflow
    assert out["4"] == {"class_type": "AceStudioSaveAudio", "inputs": {
        "audio": ["3", 0], "filename_prefix": "audio/song", "format": "opus", "quality": "64k"},
        "_meta": {"title": "AceStudioSaveAudio"}}
    assert out["5"]["inputs"] == {"audio": ["3", 0], "filename_prefix": "audio/lossless", "format": "flac",
                                  "quality": "V0"}
    assert out["6"] == prompt["6"]  # its AUDIO output feeds a preview: the pack's saver has none
    assert "#6 SaveAudioAdvanced left as is: its AUDIO output feeds other nodes, and the pack's Save Audio has no " \
           "output" in result.warnings


# ------------------------------------------------------------------------------------------------ error texts
def test_error_types_and_fixes_read_cleanly(comfy_server, tiny_checkpoint):
    """What the UI's error report shows: the pack's exception types by their own name (not the pack folder's
    module path), and a fix that fits the input (a filename_prefix is typed, not chosen from a list)."""
    corrupt = BASE / "models" / "checkpoints" / "trial_corrupt.safetensors"
    corrupt.write_bytes(b"\xff" * 64)
    try:
        cases = [
            ({"1": {"class_type": "AceStudioLoadAudio", "inputs": {"audio": EXAMPLE}},
              "2": {"class_type": "AceStudioSaveAudio", "inputs": {"audio": ["1", 0], "filename_prefix": prefix,
                                                                   "format": "flac", "quality": "V0"}}},
             "UnsafePathError", says)
            for prefix, says in (("../escape", "type a path inside the output folder, such as 'audio/my_song'"),
                                 (" ", "type a folder and file name start, such as 'audio/my_song'"))]
        cases.append(({"1": {"class_type": "AceStudioCheckpointLoader",
                             "inputs": {"ckpt_name": corrupt.name, "weight_dtype": "default"}},
                       "2": {"class_type": "PreviewAny", "inputs": {"source": ["1", 0]}}},
                      "CorruptCheckpointError", corrupt.name))
        seen = {}
        for prompt, exception_type, says in cases:
            error = _run(comfy_server, prompt, expect="error").error
            seen[exception_type] = error["exception_type"]
            assert error["exception_type"] == exception_type and says in error["exception_message"], error
            assert "list" not in error["exception_message"] or exception_type != "UnsafePathError"
        report("exception types as the server reports them", seen)
    finally:
        corrupt.unlink()


def test_every_pack_exception_type_has_a_plain_name():
    errors = _pack("ace_step.loading.errors")
    types = [_pack("comfy_bridge.paths").UnsafePathError, _pack("comfy_bridge.memory").NotEnoughMemoryError,
             _pack("ace_step.text.lyrics.vocab").VocabNotFoundError,
             *(v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, errors.CheckpointError))]
    assert len(types) == 10
    for kind in types:
        assert kind.__module__ == "builtins", kind.__qualname__


def test_repaint_default_end_is_the_songs_end(comfy_server, tiny_checkpoint):
    """Repaint with its defaults (start 0, end -1) on a 2 s song (the old default end, 30 s, was outside it)
    repaints the whole song."""
    info = comfy_server.get_json("/object_info")["AceStudioRepaint"]["input"]["required"]
    assert info["end_seconds"][1]["default"] == -1.0
    prompt = _song(tiny_checkpoint, seconds=2.0)
    defaults = {name: spec[1]["default"] for name, spec in info.items()
                if len(spec) > 1 and "default" in spec[1] and name not in ("seeds", "steps")}
    prompt["7"] = {"class_type": "AceStudioRepaint", "inputs": {
        **defaults, "model": ["3", 0], "positive": ["4", 0], "source": ["6", 0], "seeds": "1", "retake_seeds": "2",
        "steps": 2, "variance": 1.0}}
    latent = _latent(_run(comfy_server, prompt))
    frames = int(2.0 * 44100 / 4096)
    assert latent.shape == (1, 8, 16, frames) and (latent != 0).all()  # the zero source, repainted everywhere
    with pytest.raises(ComfyError, match="end_seconds"):  # below -1 stays refused by the widget's range
        run_prompt(comfy_server, {**prompt, "7": {**prompt["7"], "inputs": {**prompt["7"]["inputs"],
                                                                          "end_seconds": -2.0}}}, timeout=60)
