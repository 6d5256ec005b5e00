"""`hdemucs-flax separate` end to end with the tiny checkpoint made by the conversion code (acceptance item
3), and the persistent compilation cache across processes (item 4).

`main(argv)` runs in-process (the compiled forward pass comes from the session's persistent cache); one
test runs `python -m modeling_hdemucs_flax` twice in subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from modeling_hdemucs_flax import Separator
from modeling_hdemucs_flax.cli import build_parser, main

from .reference import music_like
from .separation_helpers import AffineStandIn
from .test_audio_io import bad_files

SR = 44100
SEGMENT = str(8192 / SR)  # seconds: the segment the separation tests compile too (shared persistent cache)
SOURCES = ["drums", "bass", "other", "vocals"]
ROOT = Path(__file__).resolve().parents[1]

# input file kind -> (soundfile keyword arguments, extension, subtype a default (WAV) stem gets)
INPUT_KINDS = {
    "wav16": ({"subtype": "PCM_16"}, "wav", "PCM_16"),
    "wav24": ({"subtype": "PCM_24"}, "wav", "PCM_24"),
    "wavfloat": ({"subtype": "FLOAT"}, "wav", "FLOAT"),
    "flac": ({"subtype": "PCM_16"}, "flac", "PCM_16"),
    "ogg": ({"format": "OGG", "subtype": "VORBIS"}, "ogg", "PCM_16"),
    "mp3": ({"format": "MP3", "subtype": "MPEG_LAYER_III"}, "mp3", "PCM_16"),
}


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "jax-compilation-cache"


def cli(checkpoint, jax_cache, *args) -> list[str]:
    return [
        "separate",
        *map(str, args),
        "--model",
        str(checkpoint),
        "--segment",
        SEGMENT,
        "--compilation-cache",
        str(jax_cache),
    ]


def make_song(path: Path, rate: int, channels: int, seconds: float = 0.25, **kwargs) -> Path:
    audio = 0.5 * music_like(int(seconds * rate), channels, seed=rate + channels, sample_rate=rate)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, audio.T, rate, **kwargs)
    return path


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_every_input_format_rate_and_channel_count(tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    songs = {}
    for kind, (kwargs, ext, _) in INPUT_KINDS.items():
        for rate in (22050, 44100, 48000):
            for channels in (1, 2):
                songs[f"{kind}_{rate}_{channels}"] = make_song(
                    tmp_path / "in" / f"{kind}_{rate}_{channels}.{ext}", rate, channels, **kwargs
                )
    status = main(cli(tiny_checkpoint_dir, jax_cache, tmp_path / "in", "-o", tmp_path / "out"))
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert captured.err == ""
    assert len(captured.out.splitlines()) == len(songs)
    for track, song in songs.items():
        kind = track.split("_")[0]
        source = sf.info(song)
        for stem in SOURCES:
            info = sf.info(tmp_path / "out" / track / f"{stem}.wav")
            got = (info.format, info.subtype, info.samplerate, info.channels, info.frames)
            assert got == ("WAV", INPUT_KINDS[kind][2], source.samplerate, source.channels, source.frames), (
                track,
                stem,
            )
            audio, _ = sf.read(tmp_path / "out" / track / f"{stem}.wav")
            assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    assert len(files_under(tmp_path / "out")) == 4 * len(songs)  # no temporaries left


@pytest.mark.parametrize(
    "flags,ext,subtype",
    [
        (["--flac", "--int24"], "flac", "PCM_24"),
        (["--mp3"], "mp3", "MPEG_LAYER_III"),
        (["--ogg", "--clip-mode", "clamp"], "ogg", "VORBIS"),
        (["--float32", "--clip-mode", "none", "--dtype", "bfloat16"], "wav", "FLOAT"),
        (["--int16", "--batch-size", "1", "--overlap", "0.5", "--shifts", "1", "--seed", "3"], "wav", "PCM_16"),
    ],
)
def test_output_formats(tiny_checkpoint_dir, jax_cache, tmp_path, capsys, flags, ext, subtype):
    stereo = make_song(tmp_path / "stereo.wav", 48000, 2, subtype="PCM_24")
    mono = make_song(tmp_path / "mono.flac", 22050, 1)
    assert main(cli(tiny_checkpoint_dir, jax_cache, stereo, mono, "-o", tmp_path / "out", *flags)) == 0
    assert capsys.readouterr().err == ""
    for song in (stereo, mono):
        source = sf.info(song)
        for stem in SOURCES:
            info = sf.info(tmp_path / "out" / song.stem / f"{stem}.{ext}")
            assert (info.subtype, info.samplerate, info.channels) == (subtype, source.samplerate, source.channels)
            assert info.frames == source.frames


def test_two_stems_and_filename_template(tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    song = make_song(tmp_path / "my song.wav", 44100, 2, subtype="PCM_16")
    args = [song, "-o", tmp_path / "out", "--two-stems", "vocals", "--filename", "{track}.{trackext}-{stem}.{ext}"]
    assert main(cli(tiny_checkpoint_dir, jax_cache, *args, "--other-method", "minus")) == 0
    assert files_under(tmp_path / "out") == ["my song.wav-no_vocals.wav", "my song.wav-vocals.wav"]
    assert main(cli(tiny_checkpoint_dir, jax_cache, *args, "-o", tmp_path / "none", "--other-method", "none")) == 0
    assert files_under(tmp_path / "none") == ["my song.wav-vocals.wav"]
    assert main(cli(tiny_checkpoint_dir, jax_cache, song, "--two-stems", "kazoo", "-o", tmp_path / "x")) == 2
    err = capsys.readouterr().err
    assert err == "error: --two-stems kazoo: the model has no such stem (it has drums, bass, other, vocals)\n"


def test_bad_inputs_are_reported_and_the_rest_separated(tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    folder = tmp_path / "bad"
    expected = bad_files(folder)
    sf.write(folder / "six.wav", np.full((500, 6), 0.1), 44100)
    expected["six.wav"] = "6 channels is not supported"
    (tmp_path / "no_audio").mkdir()
    (tmp_path / "no_audio" / "notes.txt").write_text("no audio here")
    good = make_song(tmp_path / "good.wav", 44100, 2, subtype="PCM_16")
    inputs = [folder / name for name in expected] + [tmp_path / "no_audio", good]
    status = main(cli(tiny_checkpoint_dir, jax_cache, *inputs, "-o", tmp_path / "out"))
    err = capsys.readouterr().err
    assert status == 1
    lines = err.splitlines()
    assert len(lines) == len(expected) + 1 and "Traceback" not in err, err
    for name, fragment in expected.items():
        assert any(line.startswith(f"error: {folder / name}: ") and fragment in line for line in lines), (name, err)
    assert f"error: {tmp_path / 'no_audio'}: no audio files in this folder" in err
    assert files_under(tmp_path / "out") == [f"good/{stem}.wav" for stem in sorted(SOURCES)]  # nothing partial


def test_unwritable_output_folder(tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    song = make_song(tmp_path / "song.wav", 44100, 2, subtype="PCM_16")
    (tmp_path / "occupied").write_text("a file where the output folder should be")
    assert main(cli(tiny_checkpoint_dir, jax_cache, song, "-o", tmp_path / "occupied")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {song}: {tmp_path / 'occupied' / 'song'}: cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied", "song.wav"]


def test_unknown_model_and_usage_errors(tmp_path, capsys):
    song = make_song(tmp_path / "song.wav", 44100, 2, subtype="PCM_16")
    (tmp_path / "empty_model").mkdir()
    assert main(["separate", str(song), "--model", str(tmp_path / "empty_model"), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty_model: not a model folder (no config.json)" in err
    assert not (tmp_path / "out").exists()
    for bad in (["--flac", "--float32"], ["--overlap", "1.0"], ["--filename", "{album}/{stem}.{ext}"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["separate", str(song), *bad])
        assert exit_info.value.code == 2
    assert main([]) == 2
    assert "separate" in build_parser().format_help()


def test_failure_midway_leaves_no_stem_files(tiny_pair, jax_cache, tmp_path):
    """An error after some stems' samples were written (here: the forward pass failing on its third call)
    leaves no file at all, neither final nor temporary."""
    _, _, model = tiny_pair
    separator = Separator(model, segment=float(SEGMENT), compilation_cache=jax_cache)
    calls = []

    def failing(batch):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return AffineStandIn([1, 1, 1, 1], [0, 0, 0, 0], batch.shape, poison=False)(batch)

    separator._forward_numpy = failing
    song = make_song(tmp_path / "song.wav", 44100, 2, seconds=1.0, subtype="PCM_16")
    for mode in ("none", "rescale"):
        calls.clear()
        with pytest.raises(RuntimeError, match="device lost"):
            separator.separate_file(song, tmp_path / "out", clip_mode=mode)
        assert files_under(tmp_path) == ["song.wav"]


def test_second_process_reuses_the_persistent_cache(tiny_checkpoint_dir, tmp_path):
    """Two runs of `python -m modeling_hdemucs_flax` with the cache folder given by the environment
    variable: the first compiles the forward pass and stores it, the second loads it."""
    song = make_song(tmp_path / "song.wav", 44100, 2, subtype="PCM_16")
    cache = tmp_path / "cache"
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        HDEMUCS_FLAX_COMPILATION_CACHE=str(cache),
        JAX_LOG_COMPILES="1",
        JAX_EXPLAIN_CACHE_MISSES="1",
        JAX_PLATFORMS="cpu",
    )
    runs = []
    for out in ("first", "second"):
        command = [
            sys.executable,
            "-m",
            "modeling_hdemucs_flax",
            "separate",
            str(song),
            "-o",
            str(tmp_path / out),
            "--model",
            str(tiny_checkpoint_dir),
            "--segment",
            "0.1",
            "-q",
        ]
        runs.append(subprocess.run(command, env=env, capture_output=True, text=True, timeout=600))
        assert runs[-1].returncode == 0, runs[-1].stderr[-3000:]
        assert len(files_under(tmp_path / out)) == 4
        if out == "first":
            entries = sorted(p.name for p in cache.iterdir() if p.name.startswith("jit_hdemucs_separate_batch-"))
    first, second = (run.stderr for run in runs)
    name = "'jit_hdemucs_separate_batch'"
    assert f"PERSISTENT COMPILATION CACHE MISS for {name}" in first
    assert f"Persistent compilation cache hit for {name}" not in first
    assert f"Persistent compilation cache hit for {name}" in second
    assert f"PERSISTENT COMPILATION CACHE MISS for {name}" not in second
    assert len(entries) == 1
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith("jit_hdemucs_separate_batch-")) == entries
