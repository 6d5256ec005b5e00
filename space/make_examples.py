"""Write the Space's example clips: short synthetic songs (drums, bass, chords, a sung melody), deterministic.

    python space/make_examples.py            # rewrites space/examples/*.ogg

They are synthesised here rather than cut from recordings so the repository holds no third-party music.
Ogg Vorbis keeps each 8-second stereo clip under 100 kB.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf

RATE = 44100
HERE = Path(__file__).resolve().parent


def _envelope(t: np.ndarray, attack: float, decay: float) -> np.ndarray:
    return np.minimum(t / attack, 1.0) * np.exp(-np.maximum(t - attack, 0.0) / decay)


def _midi(note: float) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


def synth_song(
    seconds: float, bpm: float, root: int, progression: list[int], melody: list[int], seed: int
) -> np.ndarray:
    """float32 (2, seconds * RATE): kick/snare/hi-hat, a bass line on the chord roots, a pad, and a vibrato
    'voice' (a sawtooth through two vowel formants) singing `melody` (semitones above `root` + 12, one per beat;
    -1 is a rest)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    beat = 60.0 / bpm
    left, right = np.zeros(n), np.zeros(n)

    def add(signal: np.ndarray, start: float, pan: float = 0.0) -> None:
        i = int(start * RATE)
        if i >= n:
            return
        piece = signal[: n - i]
        left[i : i + piece.size] += piece * np.sqrt((1 - pan) / 2)
        right[i : i + piece.size] += piece * np.sqrt((1 + pan) / 2)

    beats = int(seconds / beat)
    for b in range(beats):
        start = b * beat
        local = np.arange(int(beat * RATE)) / RATE
        # kick on 1 and 3, snare on 2 and 4, hi-hat every eighth
        if b % 2 == 0:
            add(
                0.9 * np.sin(2 * np.pi * (50 + 90 * np.exp(-local / 0.03)) * local) * _envelope(local, 0.002, 0.15),
                start,
            )
        else:
            noise = rng.standard_normal(local.size)
            add(0.35 * noise * _envelope(local, 0.001, 0.08), start, pan=0.1)
        for half in (0.0, 0.5):
            hat = np.diff(rng.standard_normal(int(0.05 * RATE) + 1))  # differenced noise: bright
            add(0.08 * hat * _envelope(np.arange(hat.size) / RATE, 0.001, 0.015), start + half * beat, pan=0.4)
        chord = progression[(b // 4) % len(progression)]
        # bass: eighth notes on the chord root, a plucked sawtooth-ish tone
        for half in (0.0, 0.5):
            f = _midi(root - 12 + chord)
            note_t = local[: int(0.5 * beat * RATE)]
            tone = np.sin(2 * np.pi * f * note_t) + 0.3 * np.sin(4 * np.pi * f * note_t)
            add(0.3 * tone * _envelope(note_t, 0.005, 0.2), start + half * beat)
        # pad: the chord's triad, sustained through the beat, slightly wide
        pad = sum(np.sin(2 * np.pi * _midi(root + chord + k) * local + k) for k in (0, 4, 7))
        add(0.05 * pad * _envelope(local, 0.05, 1.0), start, pan=-0.3)
        # voice: vibrato sawtooth shaped by formants near 700 and 1200 Hz ("ah"), one note per beat
        note = melody[b % len(melody)]
        if note >= 0:
            f0 = _midi(root + 12 + note) * (1 + 0.012 * np.sin(2 * np.pi * 5.5 * local))
            phase = 2 * np.pi * np.cumsum(f0) / RATE
            voice = sum(
                np.sin(k * phase)
                / k
                * (np.exp(-(((k * f0 - 700) / 250) ** 2)) + 0.6 * np.exp(-(((k * f0 - 1200) / 300) ** 2)))
                for k in range(1, 20)
            )
            add(0.45 * voice * _envelope(local, 0.04, 0.6), start)
    mix = np.stack([left, right])
    mix *= 0.8 / np.abs(mix).max()
    fade = np.minimum(1.0, np.minimum(t / 0.01, (seconds - t) / 0.3))
    return (mix * fade).astype(np.float32)


EXAMPLES = {
    "synth_pop.ogg": dict(
        seconds=8.0, bpm=112, root=57, progression=[0, 8, 3, 10], melody=[7, 4, 5, 7, 12, 11, 7, -1], seed=1
    ),
    "slow_ballad.ogg": dict(
        seconds=8.0, bpm=76, root=50, progression=[0, 5, 7, 5], melody=[4, 2, 0, -1, 7, 5, 4, 2], seed=2
    ),
}


def main() -> int:
    out = HERE / "examples"
    out.mkdir(exist_ok=True)
    for name, kwargs in EXAMPLES.items():
        sf.write(out / name, synth_song(**kwargs).T, RATE, format="OGG", subtype="VORBIS")
        print(f"{out / name}: {(out / name).stat().st_size / 1000:.0f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
