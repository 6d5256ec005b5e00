"""Reading, writing and rejecting audio files (soundfile), without the model."""

from __future__ import annotations

import numpy as np
import pytest

from modeling_hdemucs_flax import OptionError
from modeling_hdemucs_flax.io.audio_io import (
    AtomicAudioWriter,
    AudioError,
    inspect_audio,
    iter_audio_blocks,
    output_subtype,
    read_audio,
    write_audio,
)

from .audio_files import bad_files, tones
from .reference import error_report

# (file name, subtype written, relative error of a round trip in dB: lossless formats are bounded by their
# quantisation, lossy ones only have to be recognisably the same signal)
FORMATS = [
    ("pcm16.wav", "PCM_16", -80),
    ("pcm24.wav", "PCM_24", -120),
    ("float.wav", "FLOAT", -200),
    ("pcm16.flac", "PCM_16", -80),
    ("pcm24.flac", "PCM_24", -120),
    ("vorbis.ogg", "VORBIS", -10),
    ("layer3.mp3", "MPEG_LAYER_III", -10),
]


@pytest.mark.parametrize("name,subtype,max_db", FORMATS)
@pytest.mark.parametrize("rate", [22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_round_trip(tmp_path, name, subtype, max_db, rate, channels):
    audio = tones(channels, 9000, rate)
    path = write_audio(tmp_path / name, audio, rate, subtype=subtype)
    info = inspect_audio(path)
    assert (info.sample_rate, info.channels, info.frames, info.subtype) == (rate, channels, 9000, subtype)
    back, back_rate = read_audio(path)
    assert back_rate == rate and back.shape == audio.shape and back.dtype == np.float32
    if max_db > -20:  # lossy codecs delay and smear the signal: compare energy only
        assert abs(np.linalg.norm(back) / np.linalg.norm(audio) - 1) < 0.2
    else:
        _, db = error_report(f"round trip {name} {rate} Hz {channels} ch", back, audio, max_db)
        assert db < max_db
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary left behind


def test_blocks_cover_the_file_in_order(tmp_path):
    audio = tones(2, 10000, 44100)
    info = inspect_audio(write_audio(tmp_path / "x.wav", audio, 44100, subtype="FLOAT"))
    blocks = list(iter_audio_blocks(info, blocksize=3000))
    assert [b.shape for b in blocks] == [(2, 3000)] * 3 + [(2, 1000)]
    np.testing.assert_array_equal(np.concatenate(blocks, axis=1), audio)


def test_bad_files_raise_one_line_errors(tmp_path, capfd):
    for name, fragment in bad_files(tmp_path).items():
        with pytest.raises(AudioError) as info:
            read_audio(tmp_path / name)
        message = str(info.value)
        assert message.startswith(f"{tmp_path / name}: ") and fragment in message and "\n" not in message, message
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # nothing else on the C-level stderr either (libmpg123 warnings are silenced)


def test_atomic_writer_leaves_nothing_on_failure(tmp_path):
    writer = AtomicAudioWriter(tmp_path / "stem.wav", 44100, 2, "PCM_16")
    writer.write(np.zeros((2, 100), np.float32))
    assert not (tmp_path / "stem.wav").exists()  # only the temporary exists until commit
    writer.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), AtomicAudioWriter(tmp_path / "stem.flac", 44100, 2, "PCM_24") as writer:
        writer.write(np.zeros((2, 100), np.float32))
        raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destinations(tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(AudioError, match="cannot write to output folder"):
        write_audio(tmp_path / "file" / "song" / "drums.wav", np.zeros((2, 10), np.float32), 44100)
    with pytest.raises(AudioError, match="MP3 cannot store 96000 Hz"):
        write_audio(tmp_path / "x.mp3", np.zeros((2, 10), np.float32), 96000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize(
    "ext,given,requested,want",
    [
        ("wav", "PCM_24", None, "PCM_24"),
        ("wav", "FLOAT", None, "FLOAT"),
        ("wav", "DOUBLE", None, "FLOAT"),
        ("wav", "VORBIS", None, "PCM_16"),
        ("wav", "MPEG_LAYER_III", None, "PCM_16"),
        ("flac", "FLOAT", None, "PCM_24"),
        ("flac", "PCM_24", None, "PCM_24"),
        ("mp3", "PCM_24", None, "MPEG_LAYER_III"),
        ("ogg", "PCM_16", None, "VORBIS"),
        ("wav", "PCM_16", "FLOAT", "FLOAT"),
        ("flac", "PCM_16", "PCM_24", "PCM_24"),
    ],
)
def test_output_subtype_keeps_bit_depth(ext, given, requested, want):
    assert output_subtype(ext, given, requested) == want


def test_output_subtype_rejects_impossible_requests():
    with pytest.raises(OptionError, match=r"subtype='FLOAT': FLAC files hold 16-bit integer or 24-bit integer "):
        output_subtype("flac", "PCM_16", "FLOAT")
