"""Multitrack folders in MUSDB18-HQ's layout, made of `synthetic.synth_stems` songs: what the `evaluate` and
`train` tests read."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

from modeling_hdemucs_flax.synthetic import STEM_NAMES, synth_stems


def track_stems(index: int, samples: int, rate: int = 44100, channels: int = 2) -> np.ndarray:
    """float32 (4, channels, samples): track `index`'s stems, a song of its own (tempo, key, chords, tune)."""
    rng = np.random.default_rng(1000 + index)
    return synth_stems(
        samples,
        rate,
        channels,
        bpm=float(rng.uniform(90, 150)),
        root=int(rng.integers(45, 60)),
        progression=tuple(int(x) for x in rng.choice(12, 4)),
        melody=tuple(int(x) for x in rng.choice([-1, 0, 2, 4, 5, 7, 9, 11, 12], 8)),
        seed=index,
        peak=float(rng.uniform(0.5, 0.9)),
    )


def write_multitracks(
    root: str | Path,
    tracks: int = 2,
    seconds: float = 2.0,
    rate: int = 44100,
    channels: int = 2,
    *,
    first: int = 0,
    sources: Sequence[str] = STEM_NAMES,
    subtype: str = "FLOAT",
    mixture: bool = True,
) -> dict[str, np.ndarray]:
    """Write `tracks` track folders (`track00`, `track01`, ... from `first`) under `root`: `<source>.wav` for each
    of `sources` (WAV, `subtype`) and the sum as `mixture.wav`. Returns {track name: float32 (sources, channels,
    samples) as written}."""
    written = {}
    samples = int(seconds * rate)
    for index in range(first, first + tracks):
        stems = track_stems(index, samples, rate, channels)[: len(sources)]
        folder = Path(root) / f"track{index:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for name, stem in zip(sources, stems, strict=True):
            sf.write(folder / f"{name}.wav", stem.T, rate, subtype=subtype)
        if mixture:
            sf.write(folder / "mixture.wav", stems.sum(0).T, rate, subtype=subtype)
        written[folder.name] = stems
    return written
