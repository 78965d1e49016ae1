"""Synthesises the project's example input song (example_audio/), so the audio-to-audio workflows have a real,
license-free input: 12 s of stereo 44.1 kHz pop at 100 BPM (I-V-vi-IV chords, bass, drums).

    .venv/bin/python scripts/make_example_audio.py
"""
from pathlib import Path

import numpy as np
import soundfile as sf

SR = 44100
BPM = 100
OUT = Path(__file__).resolve().parent.parent / "example_audio" / "example_song.flac"


def midi_hz(note):
    return 440.0 * 2 ** ((note - 69) / 12)


def envelope(n, attack=0.01, release=0.3):
    t = np.arange(n) / SR
    return np.minimum(1, t / attack) * np.exp(-t / release)


def main(seconds=12.0):
    n = int(seconds * SR)
    left, right = np.zeros(n), np.zeros(n)
    beat = int(SR * 60 / BPM)
    chords = [[60, 64, 67], [55, 59, 62], [57, 60, 64], [53, 57, 60]]  # C G Am F
    rng = np.random.default_rng(20250426)
    for bar in range(int(n / (4 * beat)) + 1):
        chord = chords[bar % 4]
        start = bar * 4 * beat
        for i, note in enumerate(chord):  # pad, panned
            m = min(4 * beat, n - start)
            if m <= 0:
                break
            t = np.arange(m) / SR
            tone = np.sin(2 * np.pi * midi_hz(note) * t) * envelope(m, 0.05, 2.0) * 0.08
            pan = (i - 1) * 0.4
            left[start:start + m] += tone * (1 - pan)
            right[start:start + m] += tone * (1 + pan)
        for b in range(4):
            s = start + b * beat
            if s >= n:
                break
            m = min(beat, n - s)
            t = np.arange(m) / SR
            bass = np.sin(2 * np.pi * midi_hz(chord[0] - 24) * t) * envelope(m, 0.005, 0.25) * 0.25
            kick = np.sin(2 * np.pi * (50 + 80 * np.exp(-t * 40)) * t) * np.exp(-t * 12) * (0.5 if b % 2 == 0 else 0)
            snare = rng.standard_normal(m) * np.exp(-t * 25) * (0.15 if b % 2 == 1 else 0)
            hat = np.zeros(m)
            h = beat // 2
            for k in (0, h):
                hm = min(m - k, int(0.05 * SR))
                hat[k:k + hm] += rng.standard_normal(hm) * np.exp(-np.arange(hm) / SR * 80) * 0.05
            mono = bass + kick + snare
            left[s:s + m] += mono + hat * 0.7
            right[s:s + m] += mono + hat * 1.3
    audio = np.stack([left, right], axis=1)
    audio *= 0.8 / np.abs(audio).max()
    OUT.parent.mkdir(exist_ok=True)
    sf.write(OUT, audio.astype(np.float32), SR, subtype="PCM_16")
    print(OUT)


if __name__ == "__main__":
    main()
