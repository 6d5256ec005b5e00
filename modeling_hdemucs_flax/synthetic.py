"""Synthetic music: short, deterministic songs with a part for each of HDemucs's sources.

One generator serves every place that needs music without shipping anyone's recordings: the converter's
parity probe, the Space's example clips (`space/make_examples.py`), the test suite's inputs and the
benchmarks' songs. Numpy only (soundfile for `write_synth_wav`, when called).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _envelope(t: np.ndarray, attack: float, decay: float) -> np.ndarray:
    return np.minimum(t / attack, 1.0) * np.exp(-np.maximum(t - attack, 0.0) / decay)


def _midi(note: float) -> float:
    return 440.0 * 2 ** ((note - 69) / 12)


STEM_NAMES = ("drums", "bass", "other", "vocals")  # the parts `synth_stems` returns, in this order


def synth_song(
    samples: int,
    sample_rate: int = 44100,
    channels: int = 2,
    *,
    bpm: float = 112,
    root: int = 57,
    progression: Sequence[int] = (0, 8, 3, 10),
    melody: Sequence[int] = (7, 4, 5, 7, 12, 11, 7, -1),
    seed: int = 0,
    peak: float = 0.8,
    dc_offset: float = 0.0,
) -> np.ndarray:
    """float32 (channels, samples): kick/snare/hi-hat, a bass line on the chord roots, a pad, and a vibrato
    'voice' (a sawtooth through two vowel formants) singing `melody` (semitones above `root` + 12, one per beat;
    -1 is a rest), over chords `progression` (semitones above `root`, one per bar of four beats).

    The mix is scaled to `peak` (absolute), faded in over 10 ms and out over 300 ms, then `dc_offset` is added.
    Stereo places the parts left to right; one channel is the mean of the two, more than two channels blend
    from the left mix to the right one. Harmonics above the Nyquist frequency are left out.
    """
    mix, _ = _render(samples, sample_rate, channels, bpm, root, progression, melody, seed, peak, parts=False)
    return (mix + dc_offset).astype(np.float32)


def synth_stems(
    samples: int,
    sample_rate: int = 44100,
    channels: int = 2,
    *,
    bpm: float = 112,
    root: int = 57,
    progression: Sequence[int] = (0, 8, 3, 10),
    melody: Sequence[int] = (7, 4, 5, 7, 12, 11, 7, -1),
    seed: int = 0,
    peak: float = 0.8,
) -> np.ndarray:
    """float32 (4, channels, samples): `synth_song`'s parts apart, in `STEM_NAMES` order (drums: kick, snare and
    hi-hat; bass; other: the pad; vocals: the voice), scaled and faded as the song is, so that they add up to
    `synth_song` with the same arguments (to float32 round-off): a multitrack with known stems."""
    _, stems = _render(samples, sample_rate, channels, bpm, root, progression, melody, seed, peak, parts=True)
    assert stems is not None
    return stems.astype(np.float32)


def _render(
    samples: int,
    sample_rate: int,
    channels: int,
    bpm: float,
    root: int,
    progression: Sequence[int],
    melody: Sequence[int],
    seed: int,
    peak: float,
    parts: bool,
) -> tuple[np.ndarray, np.ndarray | None]:
    """float64 (channels, samples) mix, and with `parts` its (4, channels, samples) stems (see `synth_song`)."""
    rng = np.random.default_rng(seed)
    n = int(samples)
    seconds = n / sample_rate
    t = np.arange(n) / sample_rate
    beat = 60.0 / bpm
    beat_samples = int(beat * sample_rate)
    local = np.arange(beat_samples) / sample_rate
    left, right = np.zeros(n), np.zeros(n)
    # each part's left and right, summed apart from the mix (whose sums stay in their order, bit for bit)
    stems = np.zeros((len(STEM_NAMES), 2, n)) if parts else None

    def add(signal: np.ndarray, start: float, pan: float = 0.0, part: int = 0) -> None:
        i = int(start * sample_rate)
        if i >= n:
            return
        piece = signal[: n - i]
        left_piece, right_piece = piece * np.sqrt((1 - pan) / 2), piece * np.sqrt((1 + pan) / 2)
        left[i : i + piece.size] += left_piece
        right[i : i + piece.size] += right_piece
        if stems is not None:
            stems[part, 0, i : i + piece.size] += left_piece
            stems[part, 1, i : i + piece.size] += right_piece

    for b in range(int(np.ceil(seconds / beat))):
        start = b * beat
        # kick on 1 and 3, snare on 2 and 4, hi-hat every eighth
        if b % 2 == 0:
            kick = np.sin(2 * np.pi * (50 + 90 * np.exp(-local / 0.03)) * local)
            add(0.9 * kick * _envelope(local, 0.002, 0.15), start)
        else:
            add(0.35 * rng.standard_normal(local.size) * _envelope(local, 0.001, 0.08), start, pan=0.1)
        for half in (0.0, 0.5):
            hat = np.diff(rng.standard_normal(int(0.05 * sample_rate) + 1))  # differenced noise: bright
            add(0.08 * hat * _envelope(np.arange(hat.size) / sample_rate, 0.001, 0.015), start + half * beat, pan=0.4)
        chord = progression[(b // 4) % len(progression)]
        # bass: eighth notes on the chord root, a plucked tone with its octave
        note_t = local[: int(0.5 * beat * sample_rate)]
        f = _midi(root - 12 + chord)
        tone = np.sin(2 * np.pi * f * note_t) + 0.3 * np.sin(4 * np.pi * f * note_t)
        for half in (0.0, 0.5):
            add(0.3 * tone * _envelope(note_t, 0.005, 0.2), start + half * beat, part=1)
        # pad: the chord's triad, sustained through the beat, slightly wide
        pad = sum(np.sin(2 * np.pi * _midi(root + chord + k) * local + k) for k in (0, 4, 7))
        add(0.05 * pad * _envelope(local, 0.05, 1.0), start, pan=-0.3, part=2)
        # voice: vibrato sawtooth shaped by formants near 700 and 1200 Hz ("ah"), one note per beat
        note = melody[b % len(melody)]
        if note >= 0:
            base = _midi(root + 12 + note)
            f0 = base * (1 + 0.012 * np.sin(2 * np.pi * 5.5 * local))
            phase = 2 * np.pi * np.cumsum(f0) / sample_rate
            harmonics = [k for k in range(1, 20) if k * base * 1.012 < sample_rate / 2]
            voice = sum(
                np.sin(k * phase)
                / k
                * (np.exp(-(((k * f0 - 700) / 250) ** 2)) + 0.6 * np.exp(-(((k * f0 - 1200) / 300) ** 2)))
                for k in harmonics
            )
            add(0.45 * voice * _envelope(local, 0.04, 0.6), start, part=3)

    mix = np.stack([left, right])
    loudest = np.abs(mix).max(initial=0.0)
    gain = np.minimum(1.0, np.minimum(t / 0.01, (seconds - t) / 0.3))
    if loudest > 0:
        mix *= peak / loudest
    mix *= gain
    if stems is not None:
        stems *= (peak / loudest if loudest > 0 else 1.0) * gain
    return _to_channels(mix, channels), None if stems is None else _to_channels(stems, channels)


def _to_channels(stereo: np.ndarray, channels: int) -> np.ndarray:
    """(..., 2, samples) placed left to right as (..., channels, samples): stereo as it is, one channel the mean
    of the two, more a blend from the left to the right."""
    if channels == 2:
        return stereo
    blend = np.array([0.5]) if channels == 1 else np.arange(channels) / (channels - 1)
    return (1 - blend)[:, None] * stereo[..., :1, :] + blend[:, None] * stereo[..., 1:, :]


def write_synth_wav(path: str | os.PathLike, minutes: float, rate: int = 44100) -> Path:
    """A 16-bit stereo WAV of `minutes` of synthetic music (a 30-second `synth_song`, repeated), written block by
    block, so an hour-long test song never sits in memory (the memory benchmarks)."""
    import soundfile as sf

    loop = synth_song(30 * rate, rate, 2).T
    frames = int(minutes * 60 * rate)
    with sf.SoundFile(path, "w", samplerate=rate, channels=2, subtype="PCM_16") as handle:
        for start in range(0, frames, loop.shape[0]):
            handle.write(loop[: frames - start])
    return Path(path)
