"""Audio files the tests write: songs in any format, and every kind of broken file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from .reference import music_like


def write_song(path: Path, seconds: float, rate: int, channels: int, **soundfile_kwargs) -> Path:
    """A synthetic song at half scale (`music_like`, seeded by rate and channels) written with soundfile."""
    audio = 0.5 * music_like(int(seconds * rate), channels, seed=rate + channels, sample_rate=rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio.T, rate, **soundfile_kwargs)
    return path


def write_corrupt(path: Path) -> Path:
    """A file named .wav whose RIFF header is followed by garbage."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVE" + np.random.default_rng(0).bytes(4000))
    return path


def tones(channels: int, frames: int, rate: int) -> np.ndarray:
    """float32 (channels, frames): a 0.4-amplitude sine per channel, 440 Hz + 110 Hz per channel index."""
    t = np.arange(frames) / rate
    return np.stack([0.4 * np.sin(2 * np.pi * (440 + 110 * c) * t) for c in range(channels)]).astype(np.float32)


def bad_files(folder: Path) -> dict[str, str]:
    """Write every kind of unusable input file into `folder`; returns {file name: expected message fragment}."""
    folder.mkdir(exist_ok=True)
    good = tones(2, 4000, 44100)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "text.wav").write_text("this is not audio\n" * 20)
    sf.write(folder / "zero.wav", np.zeros((0, 2)), 44100)
    for name, kwargs in [("trunc.wav", {"subtype": "PCM_16"}), ("trunc.flac", {}), ("trunc.mp3", {"format": "MP3"})]:
        sf.write(folder / name, good.T, 44100, **kwargs)
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 2])
    nan = good.copy()
    nan[1, 1234] = np.nan
    sf.write(folder / "nan.wav", nan.T, 44100, subtype="FLOAT")
    return {
        "empty.wav": "empty file (0 bytes)",
        "text.wav": "not a readable audio file",
        "zero.wav": "no audio samples (0 frames)",
        "trunc.wav": "truncated file (header declares",
        "trunc.flac": "truncated or corrupt",
        "trunc.mp3": "truncated file (header promises",
        "nan.wav": "contains NaN or infinite samples",
        "missing.wav": "no such file",
    }
