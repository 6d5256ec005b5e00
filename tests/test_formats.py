"""Input formats beyond libsndfile's, and odd files: m4a/AAC, Opus, WebM, WMA and a video's sound track (written by
FFmpeg's encoders through PyAV), decoded by the PyAV fallback block by block with the same one-line errors;
a streamed WAV with unknown sizes; 1 sample at 96 kHz; memory bounded by model-rate samples at absurd input
rates; MP3 reads from many threads leaving stderr where it was; MP3 stems at a chosen bitrate and preset."""

from __future__ import annotations

import os
import struct
import threading
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from modeling_hdemucs_flax import AudioError, Separator, inspect_audio, read_audio, separate_file
from modeling_hdemucs_flax.io.audio_io import iter_audio_blocks

from .audio_files import tones, write_song, write_with_pyav
from .conftest import SEGMENT_SECONDS, SOURCES, SR
from .reference import error_report, music_like
from .separation_helpers import AffineStandIn

# name -> (container, codec, rate, bit_rate, video)
PYAV_FILES = {
    "song.m4a": ("ipod", "aac", 44100, None, False),
    "song.opus": ("opus", "libopus", 48000, None, False),
    "song.webm": ("webm", "libopus", 48000, None, False),
    "song.wma": ("asf", "wmav2", 44100, 128_000, False),
    "clip.mp4": ("mp4", "aac", 44100, None, True),
}


def identity(model, batch_size=1):
    """A Separator whose network returns its input for every source (cheap; the schedule alone runs)."""
    shape = (batch_size, 2, int(round(SEGMENT_SECONDS * SR)))
    return Separator(
        model,
        segment=SEGMENT_SECONDS,
        batch_size=batch_size,
        forward=AffineStandIn([1] * 4, [0] * 4, shape, poison=False),
    )


@pytest.mark.parametrize("name", sorted(PYAV_FILES))
def test_files_ffmpeg_writes_are_found_read_and_separated(tiny_pair, tmp_path, name):
    container, codec, rate, bit_rate, video = PYAV_FILES[name]
    audio = music_like(int(1.2 * rate), 2, seed=4, sample_rate=rate)
    path = write_with_pyav(tmp_path / "in" / name, audio, rate, container, codec, bit_rate=bit_rate, video=video)
    info = inspect_audio(path)
    assert (info.sample_rate, info.channels) == (rate, 2)
    decoded, got_rate = read_audio(path)
    assert got_rate == rate and abs(decoded.shape[1] - audio.shape[1]) < 4096  # codecs add or drop a frame
    # streamed in blocks = read whole, in order
    np.testing.assert_array_equal(np.concatenate(list(iter_audio_blocks(info, blocksize=5000)), axis=1), decoded)

    from modeling_hdemucs_flax import find_tracks

    [track], problems = find_tracks([tmp_path / "in"])  # a folder scan finds it (today it skips .m4a and .opus)
    assert problems == [] and track.path == path
    paths = separate_file(identity(tiny_pair[2]), track, tmp_path / "out", subtype="FLOAT", clip_mode="none")
    assert sorted(paths) == sorted(SOURCES)
    stem, stem_rate = read_audio(paths["vocals"])
    assert stem_rate == rate and stem.shape == decoded.shape
    # the identity network gives the decoded mix back (through 44.1 kHz and back for 48 kHz files: soxr's
    # round trip costs a little; measured -81 dB, and -149 dB at 44.1 kHz)
    bound = -70 if rate != SR else -120
    _, db = error_report(f"{name} identity separation", stem[:, 200:-200], decoded[:, 200:-200], bound)
    assert db < bound


def test_unreadable_files_get_one_line_for_every_decoder(tmp_path, capfd):
    good = write_with_pyav(
        tmp_path / "good.m4a", tones(2, 44100, 44100), 44100, "mp4", "aac", options={"movflags": "faststart"}
    )
    data = good.read_bytes()
    (tmp_path / "truncated.m4a").write_bytes(data[: len(data) // 2])  # index first, half the audio
    (tmp_path / "garbage.m4a").write_bytes(np.random.default_rng(1).bytes(5000))
    write_with_pyav(tmp_path / "silent_video.mp4", tones(2, 100, 44100), 44100, "mp4", "aac", video=True)
    # FFmpeg's tty demuxer would open text as a video (ANSI art); it is not among the demuxers used
    (tmp_path / "notes.txt").write_text("hello\n" * 100)
    cases = {
        "truncated.m4a": "truncated",
        "garbage.m4a": "not a readable audio file (",
        "notes.txt": "not a readable audio file (",
    }
    for name, words in cases.items():
        with pytest.raises(AudioError) as caught:
            read_audio(tmp_path / name)
        message = str(caught.value)
        assert message.startswith(f"{tmp_path / name}: ") and words in message and "\n" not in message, message
    assert read_audio(tmp_path / "silent_video.mp4")[0].shape[0] == 2
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # FFmpeg's own log stays quiet


def test_a_streamed_wav_with_unknown_sizes_is_read_whole(tmp_path):
    """`ffmpeg ... -f wav pipe:` cannot seek back and leaves RIFF and data sizes at 0xFFFFFFFF."""
    audio = tones(2, 5000, 44100)
    path = tmp_path / "piped.wav"
    sf.write(path, audio.T, 44100, subtype="PCM_16")
    data = bytearray(path.read_bytes())
    at = data.find(b"data")
    data[4:8] = data[at + 4 : at + 8] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(data))
    back, rate = read_audio(path)
    assert rate == 44100 and back.shape == (2, 5000)
    np.testing.assert_allclose(back, audio, atol=1 / 32768)


@pytest.mark.parametrize("rate", [96000, 192000, 22050])
def test_one_sample_above_the_model_rate_is_separated(tiny_pair, tmp_path, rate):
    """1 sample at 96 kHz resamples to 0 samples at 44.1 kHz; it is still 1 sample in, 1 sample out."""
    separator = Separator(tiny_pair[2], segment=SEGMENT_SECONDS)
    stems = separator.separate(np.array([[0.25], [-0.25]], np.float32), rate)
    assert all(s.shape == (2, 1) and np.isfinite(s).all() for s in stems.values())
    song = tmp_path / "one.wav"
    sf.write(song, np.array([[0.5]]), rate)
    paths = separate_file(separator, song, tmp_path / "out")
    assert all(sf.info(p).frames == 1 and sf.info(p).samplerate == rate for p in paths.values())


def test_memory_is_bounded_by_model_rate_samples(tiny_pair, tmp_path):
    """A 100 Hz file (each input sample is 441 model-rate samples): the resampler is never asked for more than a
    block at once. Before, one 65,536-frame block became a 231 MB array in one soxr call."""
    frames = 65_536
    song = tmp_path / "low.wav"
    sf.write(song, (0.3 * np.sin(np.arange(frames) / 7.0)).astype(np.float32), 100, subtype="FLOAT")
    separator = identity(tiny_pair[2])
    info = inspect_audio(song)
    tracemalloc.start()
    blocks = separator.stream(lambda: iter_audio_blocks(info), 1, 100, name="low.wav")
    first = next(blocks)
    for _ in range(3):
        next(blocks)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    blocks.close()
    print(f"[memory] 100 Hz input: peak traced allocation {peak / 1e6:.1f} MB while separating its start")
    assert first.shape[:2] == (4, 1)
    assert peak < 50e6


def test_concurrent_mp3_reads_leave_stderr_alone(tmp_path, capfd):
    songs = [write_song(tmp_path / f"s{i}.mp3", 0.3, 44100, 2, format="MP3") for i in range(4)]
    before = os.fstat(2)
    errors = []

    def read_many(path):
        try:
            for _ in range(15):
                read_audio(path)
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=read_many, args=(p,)) for p in songs * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = os.fstat(2)
    assert errors == []
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino), "fd 2 no longer is the original stderr"
    os.write(2, b"still here\n")
    assert "still here" in capfd.readouterr().err


@pytest.mark.parametrize("bitrate,preset", [(320, 2), (96, 7)])
def test_mp3_stems_have_the_chosen_bitrate(tiny_pair, tmp_path, bitrate, preset):
    song = write_song(tmp_path / "song.wav", 4.0, 44100, 2, subtype="PCM_16")
    paths = separate_file(
        identity(tiny_pair[2]), song, tmp_path / "out", ext="mp3", mp3_bitrate=bitrate, mp3_preset=preset
    )
    for path in paths.values():
        info = sf.info(path)
        assert (info.frames, info.samplerate, info.channels) == (4 * 44100, 44100, 2)
        kbps = path.stat().st_size * 8 / 4.0 / 1000
        assert abs(kbps - bitrate) < 0.1 * bitrate, (path.name, kbps)
