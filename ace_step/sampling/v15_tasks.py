"""ACE-Step 1.5 tasks as the original pipeline defines them: which instruction the DiT's caption prompt carries, and
the source latents, chunk mask and cover flags the DiT's context is built from (`v15_condition`), plus what a repaint
keeps (`v15_sampling.RepaintMerge`).

Sources (ace-step/ACE-Step-1.5): `acestep/constants.py` @ f30aee4c (TASK_TYPES_TURBO / _BASE, TASK_INSTRUCTIONS,
TRACK_NAMES), `acestep/handler.py` @ f30aee4c (`generate_instruction`, `prepare_padding_info`, `_prepare_batch`,
`prepare_batch_data`), `acestep/core/generation/handler/conditioning_masks.py` @ eae40dac (the later split of
`_prepare_batch`: cover flagged by the task, lego keeping its source inside the range), README.md @ f30aee4c (the
model table: extract, lego and complete only on acestep-v15-base).

Latents are channels first, [B, C, T] (ComfyUI's layout), 25 frames per second (48 kHz / 1920 samples). `silence`
is the silence latent [1, C, >= T] (comfy_bridge/v15_silence.py), used where the original uses its
`silence_latent.pt`: as the source of text2music, inside a repaint range, and as padding.

Per task (the original's rules):
- text2music: source = silence, chunk mask 1, not a cover. Instruction "Fill the audio semantic mask ...".
- cover: source = the song, chunk mask 1, cover (the DiT sees the LM hints of the song: its 5 Hz codes decoded back,
  `v15_condition`), instruction "Generate audio semantic tokens ...". `audio_cover_strength` < 1 switches to plain
  text2music conditioning (silence source, not a cover, text2music instruction, same lyrics and timbre) from step
  int(N * strength) on (`v15_sampling.cover_switch_step`); LM codes instead of a song: `plan_cover_codes`.
- repaint [start, end) seconds: frames int(s * 48000 // 1920), clamped into the song; the source is the song with the
  range replaced by silence (position by position), chunk mask 1 inside the range, not a cover, instruction
  "Repaint the mask area ...". A range reaching before 0 or past the end pads the song with silence first
  (outpainting: the original's extend). The sampler re-noises the song into the outside for the first half of the
  steps and blends at the end (`v15_sampling.RepaintMerge`).
- extend: repaint of the new seconds only (left and/or right), `plan_extend`; longer than `window_frames` it runs on
  the window next to the new part and re-attaches the rest (`TaskPlan.finish`).
- extract (base only): source = the mix, chunk mask 1, "Extract the VOCALS track from the audio:".
- lego (base only): source = the song (kept inside the range too), chunk mask 1 on the range (default: all),
  "Generate the GUITAR track based on the audio context:"; a partial range is merged like a repaint.
- complete (base only): source = the song, chunk mask 1, "Complete the input track with DRUMS | BASS:".

Deliberate differences: padding and ranges work on latents (the original pads the waveform with zeros and encodes it:
its padded frames are the VAE's encoding of silence, i.e. the silence latent up to the frames next to the song);
`plan_extend` takes seconds to add on each side (the original's extend is a repaint range reaching outside the song,
one range, so both sides at once regenerate the whole song; here both sides give two ranges and the song between
is kept) and windows long results like the v1 extend plan (the original has no window: its limit is 600 s); a
repaint range wholly outside the song (which the original fills with a silent gap) is refused; the original's
minimum of 128 frames (shorter sources padded with silence) is left to the caller.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch

from ..text.v15_prompts import DIT_INSTRUCTION_TEXT2MUSIC, DIT_INSTRUCTION_WITH_CODES

SAMPLE_RATE = 48000
SAMPLES_PER_FRAME = 1920
FRAMES_PER_SECOND = SAMPLE_RATE // SAMPLES_PER_FRAME  # 25
MAX_SECONDS = 600  # the original's DURATION_MAX
MAX_FRAMES = MAX_SECONDS * FRAMES_PER_SECOND  # 15000: the default extend window

TASKS = ("text2music", "cover", "repaint", "extend", "extract", "lego", "complete")
BASE_ONLY_TASKS = ("extract", "lego", "complete")
VARIANTS = ("turbo", "sft", "base")
TRACK_NAMES = ("vocals", "backing_vocals", "drums", "bass", "guitar", "keyboard", "percussion", "strings", "synth",
               "fx", "brass", "woodwinds")

INSTRUCTION_REPAINT = "Repaint the mask area based on the given conditions:"
INSTRUCTION_EXTRACT = "Extract the {TRACK_NAME} track from the audio:"
INSTRUCTION_LEGO = "Generate the {TRACK_NAME} track based on the audio context:"
INSTRUCTION_COMPLETE = "Complete the input track with {TRACK_CLASSES}:"
INSTRUCTION_COMPLETE_DEFAULT = "Complete the input track:"


def seconds_to_frame(seconds: float) -> int:
    """The latent frame of a time, as the original computes it: int(seconds * 48000 // 1920)."""
    return int(seconds * SAMPLE_RATE // SAMPLES_PER_FRAME)


def check_variant(task: str, variant: str) -> None:
    """Raises ValueError when `variant` ("turbo", "sft" or "base", XL included) cannot run `task`."""
    if task not in TASKS:
        raise ValueError(f"unknown ACE-Step 1.5 task {task!r}; choose one of {', '.join(TASKS)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown ACE-Step 1.5 model variant {variant!r}; choose one of {', '.join(VARIANTS)} "
                         "(acestep-v15-turbo, -sft, -base and their XL versions)")
    if task in BASE_ONLY_TASKS and variant != "base":
        raise ValueError(f"{task} runs on the base model only (acestep-v15-base or acestep-v15-xl-base), not on "
                         f"{variant}: load a base model, or choose text2music, cover, repaint or extend")


def _track(name: str) -> str:
    if name not in TRACK_NAMES:
        raise ValueError(f"unknown track {name!r}: ACE-Step 1.5 knows {', '.join(TRACK_NAMES)}")
    return name.upper()


def task_instruction(task: str, track: Optional[str] = None, tracks: Sequence[str] = ()) -> str:
    """The instruction line of the DiT's caption prompt (`v15_prompts.dit_caption_prompt`). `track`: the stem of
    extract / lego; `tracks`: the instruments complete adds (none: the original's generic instruction)."""
    if task == "text2music":
        return DIT_INSTRUCTION_TEXT2MUSIC
    if task == "cover":
        return DIT_INSTRUCTION_WITH_CODES
    if task in ("repaint", "extend"):
        return INSTRUCTION_REPAINT
    if task in ("extract", "lego"):
        if track is None:
            raise ValueError(f"{task} needs a track: one of {', '.join(TRACK_NAMES)}")
        return (INSTRUCTION_EXTRACT if task == "extract" else INSTRUCTION_LEGO).format(TRACK_NAME=_track(track))
    if task == "complete":
        if not tracks:
            return INSTRUCTION_COMPLETE_DEFAULT
        return INSTRUCTION_COMPLETE.format(TRACK_CLASSES=" | ".join(_track(t) for t in tracks))
    raise ValueError(f"unknown ACE-Step 1.5 task {task!r}; choose one of {', '.join(TASKS)}")


@dataclass(frozen=True)
class TaskPlan:
    """What one task feeds the DiT. Channels first; B rows.

    source [B, C, T]: the DiT's source latents before the cover rows are replaced by LM hints (`v15_condition`).
    chunk_mask [B, 1, T] float: 1 where the DiT generates (the context's second half).
    is_covers [B] bool: rows whose source becomes the LM hints of `source` (or of `audio_codes`).
    audio_codes [B, n] int: LM codes that stand for the song (a cover from codes), else None.
    region [B, T] bool and clean [B, C, T]: what a repaint keeps: outside `region` the result is `clean`
        (`v15_sampling.RepaintMerge`); None when nothing is kept.
    head, tail [B, C, *]: song frames outside the sampled window, re-attached by `finish`.
    metas_duration: the seconds the caption prompt's "duration" says (the original: the source's length).
    silence [1, C, T]: the silence latent over the plan, for the cover switch's text2music condition."""

    task: str
    instruction: str
    source: torch.Tensor
    chunk_mask: torch.Tensor
    is_covers: torch.Tensor
    silence: torch.Tensor
    metas_duration: float
    audio_codes: Optional[torch.Tensor] = None
    region: Optional[torch.Tensor] = None
    clean: Optional[torch.Tensor] = None
    head: Optional[torch.Tensor] = None
    tail: Optional[torch.Tensor] = None

    @property
    def frames(self) -> int:
        return self.source.shape[-1]

    def finish(self, x: torch.Tensor) -> torch.Tensor:
        """The sampled latents [B, C, T] with the frames cut off before sampling put back on either side."""
        return torch.cat([p.to(x) if p is not x else x for p in (self.head, x, self.tail) if p is not None], dim=-1)

    def text2music_phase(self) -> "TaskPlan":
        """The plan of the cover switch's second phase (`audio_cover_strength` < 1): silence source, not a cover,
        the text2music instruction, the same chunk mask (the original's `non_cover` condition)."""
        b = self.source.shape[0]
        return replace(self, task="text2music", instruction=DIT_INSTRUCTION_TEXT2MUSIC, audio_codes=None,
                       source=self.silence.to(self.source).expand(b, -1, -1),
                       is_covers=torch.zeros_like(self.is_covers))


def check_latents(latents: torch.Tensor, name: str = "source", channels: int = 64) -> torch.Tensor:
    """A [B, C, T] ACE-Step 1.5 latent (a single [C, T] gets a batch axis), finite, with `channels` channels."""
    if latents.ndim == 4 and latents.shape[1:3] == (8, 16):
        raise ValueError(f"the {name} is an ACE-Step v1 latent [B, 8, 16, T]: encode the audio with the ACE-Step 1.5 "
                         "VAE (64 channels, 25 frames per second)")
    if latents.ndim == 2:
        latents = latents[None]
    if latents.ndim != 3 or latents.shape[1] != channels or latents.shape[-1] < 1:
        raise ValueError(f"the {name} must be ACE-Step 1.5 latents [batch, {channels}, frames], got "
                         f"{tuple(latents.shape)}: encode 48 kHz stereo audio with the ACE-Step 1.5 VAE")
    if not latents.dtype.is_floating_point or not torch.isfinite(latents).all():
        raise ValueError(f"the {name} latents must be finite floating-point values")
    return latents


def _silence(silence: torch.Tensor, frames: int, like: torch.Tensor) -> torch.Tensor:
    if silence.ndim == 2:
        silence = silence[None]
    if silence.ndim != 3 or silence.shape[0] != 1 or silence.shape[1] != like.shape[1]:
        raise ValueError(f"the silence latent must be [1, {like.shape[1]}, frames], got {tuple(silence.shape)}")
    if silence.shape[-1] < frames:
        raise ValueError(f"the silence latent has {silence.shape[-1]} frames, the task needs {frames}: pass "
                         f"silence({frames})")
    return silence[..., :frames].to(like)


def _plan(task: str, instruction: str, source: torch.Tensor, silence: torch.Tensor, cover: bool,
          metas_duration: float, **kw) -> TaskPlan:
    """A plan that generates every frame (chunk mask 1)."""
    b, _, t = source.shape
    chunk = torch.ones(b, 1, t, dtype=source.dtype, device=source.device)
    covers = torch.full((b,), cover, dtype=torch.bool, device=source.device)
    return TaskPlan(task, instruction, source, chunk, covers, silence, metas_duration, **kw)


def _duration(frames: int) -> float:
    return frames / FRAMES_PER_SECOND


def plan_text2music(silence: torch.Tensor, frames: int, batch: int = 1) -> TaskPlan:
    """Generate `frames` frames from the text alone (with LM codes, use `plan_cover_codes`: the original switches
    text2music with codes to cover)."""
    if frames < 1 or batch < 1:
        raise ValueError(f"text2music needs frames >= 1 and batch >= 1, got {frames}, {batch}")
    ref = silence if silence.ndim == 3 else silence[None]
    source = _silence(silence, frames, ref).expand(batch, -1, -1)
    return _plan("text2music", DIT_INSTRUCTION_TEXT2MUSIC, source, source[:1], False, _duration(frames))


def plan_cover(source: torch.Tensor, silence: torch.Tensor) -> TaskPlan:
    """Re-sing / re-arrange `source` [B, C, T] from new tags and lyrics."""
    source = check_latents(source)
    t = source.shape[-1]
    return _plan("cover", DIT_INSTRUCTION_WITH_CODES, source, _silence(silence, t, source), True, _duration(t))


def plan_cover_codes(codes: torch.Tensor, silence: torch.Tensor, frames: Optional[int] = None,
                     pool_window: int = 5) -> TaskPlan:
    """A cover of LM audio codes [B, n] (5 Hz): `frames` defaults to n * 5; the DiT's source is the codes' hints,
    padded with silence or cut to `frames` (`v15_condition`)."""
    if codes.ndim == 1:
        codes = codes[None]
    if codes.ndim != 2 or codes.shape[1] < 1 or codes.dtype.is_floating_point:
        raise ValueError(f"audio codes must be integers [batch, n], got {codes.dtype} {tuple(codes.shape)}")
    frames = codes.shape[1] * pool_window if frames is None else frames
    ref = silence if silence.ndim == 3 else silence[None]
    filler = _silence(silence, frames, ref).expand(codes.shape[0], -1, -1)
    return _plan("cover", DIT_INSTRUCTION_WITH_CODES, filler, filler[:1], True, _duration(frames),
                 audio_codes=codes)


def plan_extract(source: torch.Tensor, silence: torch.Tensor, track: str, variant: str) -> TaskPlan:
    """Isolate `track` from the mix `source` [B, C, T] (base model only)."""
    check_variant("extract", variant)
    source = check_latents(source)
    t = source.shape[-1]
    return _plan("extract", task_instruction("extract", track), source, _silence(silence, t, source), False,
                 _duration(t))


def plan_complete(source: torch.Tensor, silence: torch.Tensor, tracks: Sequence[str], variant: str) -> TaskPlan:
    """Add the instruments `tracks` to a partial arrangement `source` (base model only)."""
    check_variant("complete", variant)
    source = check_latents(source)
    t = source.shape[-1]
    return _plan("complete", task_instruction("complete", tracks=tracks), source, _silence(silence, t, source),
                 False, _duration(t))


# ------------------------------------------------------------------------------------------ ranges (repaint, lego)


def _runs_mask(frames: int, runs: Sequence[tuple[int, int]], device) -> torch.Tensor:
    mask = torch.zeros(frames, dtype=torch.bool, device=device)
    for start, end in runs:
        mask[start:end] = True
    return mask


def _window(frames: int, runs: Sequence[tuple[int, int]], window_frames: Optional[int], what: str) -> int:
    """The first frame of a window of `window_frames` that holds every run (0 when everything fits)."""
    if not window_frames or frames <= window_frames:
        return 0
    lo, hi = min(r[0] for r in runs), max(r[1] for r in runs)
    if hi - lo > window_frames:
        raise ValueError(f"the {what} spans {_duration(hi - lo):.1f} s, more than the window "
                         f"({_duration(window_frames):.1f} s): work on one side at a time, or raise window_seconds")
    # Centre the generated part, so it gets context on both sides where the song allows.
    return max(0, min(lo - (window_frames - (hi - lo)) // 2, frames - window_frames))


def _ranged_plan(task: str, instruction: str, song: torch.Tensor, silence: torch.Tensor, runs, keep_inside: bool,
                 metas_duration: float, window_frames: Optional[int]) -> TaskPlan:
    """`song` [B, C, T] already padded; `runs` the generated frame ranges."""
    b, _, t = song.shape
    start = _window(t, runs, window_frames, f"{task} range")
    w = t if not window_frames or t <= window_frames else window_frames
    head, tail = (song[..., :start] if start else None), (song[..., start + w:] if start + w < t else None)
    song = song[..., start:start + w]
    runs = [(a - start, e - start) for a, e in runs]
    quiet = _silence(silence, start + w, song)[..., start:]
    region = _runs_mask(w, runs, song.device)
    source = song if keep_inside else torch.where(region, quiet, song)
    chunk = region.to(song.dtype).expand(b, 1, w).contiguous()
    covers = torch.zeros(b, dtype=torch.bool, device=song.device)
    return TaskPlan(task, instruction, source, chunk, covers, quiet, metas_duration,
                    region=region.expand(b, w).contiguous(), clean=song, head=head, tail=tail)


def _pad(song: torch.Tensor, silence: torch.Tensor, left: int, right: int) -> torch.Tensor:
    """The song with `left` / `right` frames of silence around it (position by position in the silence latent)."""
    b, _, t = song.shape
    quiet = _silence(silence, left + t + right, song).expand(b, -1, -1)
    return torch.cat([quiet[..., :left], song, quiet[..., left + t:]], dim=-1)


def _range_frames(task: str, frames: int, start: float, end: Optional[float]) -> tuple[float, float]:
    duration = _duration(frames)
    end = duration if end is None or end < 0 else end  # the original's -1 = to the end
    if end <= start:
        raise ValueError(f"the {task} range [{start:g}, {end:g}) s is empty: end must be after start")
    if start >= duration or end <= 0:
        raise ValueError(f"the {task} range [{start:g}, {end:g}) s lies outside the song (0 to {duration:.2f} s): "
                         "give a range that overlaps it (to add audio before or after it, use extend)")
    return start, end


def plan_repaint(source: torch.Tensor, silence: torch.Tensor, start: float, end: Optional[float] = None, *,
                 window_frames: Optional[int] = None) -> TaskPlan:
    """Regenerate [start, end) seconds of `source` [B, C, T]; end None or < 0 = the song's end. A range reaching
    before 0 or past the end pads the song with silence (outpainting), as the original's repaint does."""
    source = check_latents(source)
    t0 = source.shape[-1]
    start, end = _range_frames("repaint", t0, start, end)
    left = max(0.0, -start)
    pad_left = seconds_to_frame(left)
    frames = max(pad_left + t0, seconds_to_frame(end + left))
    song = _pad(source, silence, pad_left, frames - pad_left - t0)
    a = max(0, min(seconds_to_frame(start + left), frames - 1))
    e = max(a + 1, min(seconds_to_frame(end + left), frames))
    return _ranged_plan("repaint", INSTRUCTION_REPAINT, song, silence, [(a, e)], False, _duration(t0),
                        window_frames)


def plan_extend(source: torch.Tensor, silence: torch.Tensor, left_seconds: float = 0.0, right_seconds: float = 0.0,
                *, window_frames: Optional[int] = MAX_FRAMES) -> TaskPlan:
    """Add `left_seconds` before and/or `right_seconds` after `source` [B, C, T]; the song itself is kept. Past
    `window_frames` (600 s by default; None = no window) the DiT sees the window next to the new part and the rest
    is re-attached by `finish`."""
    source = check_latents(source)
    if left_seconds < 0 or right_seconds < 0:
        raise ValueError(f"extend seconds must be >= 0, got left {left_seconds:g}, right {right_seconds:g}")
    left, right = seconds_to_frame(left_seconds), seconds_to_frame(right_seconds)
    if left + right == 0:
        raise ValueError("nothing to extend: left_seconds and right_seconds are both under one latent frame (0.04 s)")
    t0 = source.shape[-1]
    runs = [r for r in ((0, left), (left + t0, left + t0 + right)) if r[1] > r[0]]
    if window_frames and left and right and left + t0 + right > window_frames:
        raise ValueError(f"the result ({_duration(left + t0 + right):.1f} s) is longer than the window "
                         f"({_duration(window_frames):.1f} s) on both sides: extend one side at a time, or raise "
                         "window_seconds")
    if window_frames and max(left, right) >= window_frames:
        raise ValueError(f"the extension ({_duration(max(left, right)):.1f} s) does not fit in the window "
                         f"({_duration(window_frames):.1f} s) beside any of the song: extend in shorter steps")
    song = _pad(source, silence, left, right)
    return _ranged_plan("extend", INSTRUCTION_REPAINT, song, silence, runs, False, _duration(t0), window_frames)


def plan_lego(source: torch.Tensor, silence: torch.Tensor, track: str, variant: str, start: float = 0.0,
              end: Optional[float] = None) -> TaskPlan:
    """Add `track` to `source` [B, C, T] over [start, end) seconds (default: the whole song), base model only.
    The song stays the DiT's source inside the range too (conditioning_masks.py @ eae40dac; the f30aee4c handler
    silenced it there as for repaint)."""
    check_variant("lego", variant)
    source = check_latents(source)
    t0 = source.shape[-1]
    start, end = _range_frames("lego", t0, start, end)
    if start < 0 or end > _duration(t0):
        raise ValueError(f"the lego range [{start:g}, {end:g}) s must lie inside the song (0 to "
                         f"{_duration(t0):.2f} s): lego adds a track to existing audio")
    a = max(0, min(seconds_to_frame(start), t0 - 1))
    e = max(a + 1, min(seconds_to_frame(end), t0))
    instruction = task_instruction("lego", track)
    if (a, e) == (0, t0):  # the whole song: nothing is kept, as the original's all-True repaint mask
        return _plan("lego", instruction, source, _silence(silence, t0, source), False, _duration(t0))
    return _ranged_plan("lego", instruction, source, silence, [(a, e)], True, _duration(t0), None)
