"""Audio files the tests write: songs in any format, and every kind of broken file."""

from __future__ import annotations

import os
import struct
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
    # distinct track names: one folder holding trunc.wav and trunc.flac would map both to the same stems
    for name, kwargs in [
        ("trunc_wav.wav", {"subtype": "PCM_16"}),
        ("trunc_flac.flac", {}),
        ("trunc_mp3.mp3", {"format": "MP3"}),
    ]:
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
        "trunc_wav.wav": "truncated file (header declares",
        "trunc_flac.flac": "truncated or corrupt",
        "trunc_mp3.mp3": "truncated file (header promises",
        "nan.wav": "contains NaN or infinite samples",
        "missing.wav": "no such file",
    }


def write_with_pyav(
    path: Path,
    audio: np.ndarray,
    rate: int,
    container: str,
    codec: str,
    *,
    bit_rate: int | None = None,
    video: bool = False,
    options: dict[str, str] | None = None,
) -> Path:
    """float32 (channels, n) encoded by FFmpeg's own encoders through PyAV (`container` e.g. "ipod" for m4a,
    "opus", "webm", "asf"); `video` adds a short black video stream before the audio one, as in a phone clip."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    layout = "mono" if audio.shape[0] == 1 else "stereo"
    with av.open(str(path), "w", format=container, options=options or {}) as out:
        picture = None
        if video:
            picture = out.add_stream("mpeg4", rate=25)
            picture.width, picture.height, picture.pix_fmt = 64, 48, "yuv420p"
        sound = out.add_stream(codec, rate=rate, layout=layout)
        if bit_rate:
            sound.bit_rate = bit_rate
        for start in range(0, audio.shape[1], 4096):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(audio[:, start : start + 4096], np.float32), format="fltp", layout=layout
            )
            frame.sample_rate = rate
            for packet in sound.encode(frame):
                out.mux(packet)
        for packet in sound.encode(None):
            out.mux(packet)
        if picture is not None:
            for _ in range(5):
                for packet in picture.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8))):
                    out.mux(packet)
            for packet in picture.encode(None):
                out.mux(packet)
    return path


def media_that_open_other_files(folder: Path, private: Path) -> dict[str, str]:
    """Files whose content makes FFmpeg's playlist and concat demuxers open other files: `private` (an MP3 the
    uploader must never get back, written here) is named by absolute `file://` URL and by a `../` path in HLS
    playlists; an ffconcat list named like a WAV pulls in a sibling MP3; another names itself (FFmpeg recursed
    until it ran out of files or stack). Returns {file name in `folder`: what it tries}."""
    folder.mkdir(parents=True, exist_ok=True)
    private.parent.mkdir(parents=True, exist_ok=True)
    sf.write(private, tones(2, 44100, 44100).T, 44100, format="MP3")
    sf.write(folder / "neighbour.mp3", tones(2, 44100, 44100).T, 44100, format="MP3")
    relative = Path(os.path.relpath(private, folder)).as_posix()
    playlist = "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:1.0,\n{}\n#EXT-X-ENDLIST\n"
    (folder / "absolute.m3u8").write_text(playlist.format(private.resolve().as_uri()))
    (folder / "relative.m3u8").write_text(playlist.format(relative))
    (folder / "sibling.wav").write_text("ffconcat version 1.0\nfile neighbour.mp3\n")
    (folder / "itself.wav").write_text("ffconcat version 1.0\nfile itself.wav\n")
    return {
        "absolute.m3u8": "an HLS playlist naming a file:// URL",
        "relative.m3u8": "an HLS playlist naming a ../ path",
        "sibling.wav": "an ffconcat list pulling in a sibling",
        "itself.wav": "an ffconcat list naming itself",
    }


def write_understated_matroska(path: Path, seconds: float, header_seconds: float, rate: int = 44100) -> Path:
    """A Matroska (AAC) file holding `seconds` of stereo tones whose header claims `header_seconds`: its
    Segment Info Duration (EBML id 0x4489, an 8-byte float in milliseconds) rewritten after encoding."""
    write_with_pyav(path, tones(2, int(seconds * rate), rate), rate, "matroska", "aac")
    data = bytearray(path.read_bytes())
    at = data.find(b"\x44\x89\x88")
    assert at > 0, "no 8-byte Duration element in the Matroska header"
    data[at + 3 : at + 11] = struct.pack(">d", header_seconds * 1000.0)
    path.write_bytes(bytes(data))
    return path
