"""`hdemucs-flax separate` end to end with the tiny checkpoint made by the conversion code: every input format,
rate and channel count, every output option, one-line errors that leave no partial files, a light start-up
(`--help` loads none of the heavy libraries), and a second process loading the compiled network from the
persistent cache instead of compiling it.

`main(argv)` runs in-process (the compiled forward pass comes from the session's persistent cache); the
start-up and cache tests run the command in subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from modeling_hdemucs_flax import Separator, separate_file
from modeling_hdemucs_flax.cli import build_parser, main

from .audio_files import bad_files, write_song
from .conftest import SEGMENT_SECONDS, SOURCES
from .flows import REPO_ROOT, run_script
from .separation_helpers import FailingForward

# input file kind -> (soundfile keyword arguments, extension, subtype a default (WAV) stem gets)
INPUT_KINDS = {
    "wav16": ({"subtype": "PCM_16"}, "wav", "PCM_16"),
    "wav24": ({"subtype": "PCM_24"}, "wav", "PCM_24"),
    "wavfloat": ({"subtype": "FLOAT"}, "wav", "FLOAT"),
    "flac": ({"subtype": "PCM_16"}, "flac", "PCM_16"),
    "ogg": ({"format": "OGG", "subtype": "VORBIS"}, "ogg", "PCM_16"),
    "mp3": ({"format": "MP3", "subtype": "MPEG_LAYER_III"}, "mp3", "PCM_16"),
}


def cli(checkpoint, jax_cache, *args) -> list[str]:
    return [
        "separate",
        *map(str, args),
        "--model",
        str(checkpoint),
        "--segment",
        str(SEGMENT_SECONDS),
        "--compilation-cache",
        str(jax_cache),
    ]


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_every_input_format_rate_and_channel_count(tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    songs = {}
    for kind, (kwargs, ext, _) in INPUT_KINDS.items():
        for rate in (22050, 44100, 48000):
            for channels in (1, 2):
                songs[f"{kind}_{rate}_{channels}"] = write_song(
                    tmp_path / "in" / f"{kind}_{rate}_{channels}.{ext}", 0.25, rate, channels, **kwargs
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
    stereo = write_song(tmp_path / "stereo.wav", 0.25, 48000, 2, subtype="PCM_24")
    mono = write_song(tmp_path / "mono.flac", 0.25, 22050, 1)
    assert main(cli(tiny_checkpoint_dir, jax_cache, stereo, mono, "-o", tmp_path / "out", *flags)) == 0
    assert capsys.readouterr().err == ""
    for song in (stereo, mono):
        source = sf.info(song)
        for stem in SOURCES:
            info = sf.info(tmp_path / "out" / song.stem / f"{stem}.{ext}")
            assert (info.subtype, info.samplerate, info.channels) == (subtype, source.samplerate, source.channels)
            assert info.frames == source.frames


def test_two_stems_and_filename_template(tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    song = write_song(tmp_path / "my song.wav", 0.25, 44100, 2, subtype="PCM_16")
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
    good = write_song(tmp_path / "good.wav", 0.25, 44100, 2, subtype="PCM_16")
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
    song = write_song(tmp_path / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    (tmp_path / "occupied").write_text("a file where the output folder should be")
    assert main(cli(tiny_checkpoint_dir, jax_cache, song, "-o", tmp_path / "occupied")) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {song}: {tmp_path / 'occupied' / 'song'}: cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["occupied", "song.wav"]


def test_unknown_model_and_usage_errors(tmp_path, capsys):
    song = write_song(tmp_path / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    (tmp_path / "empty_model").mkdir()
    assert main(["separate", str(song), "--model", str(tmp_path / "empty_model"), "-o", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "empty_model: not a model folder (no config.json)" in err
    assert not (tmp_path / "out").exists()
    usage_errors = {
        ("--flac", "--float32"): "--float32: flac files cannot hold it (possible: PCM_16, PCM_24)",
        ("--overlap", "1.0"): "--overlap 1.0: must be in [0, 1)",
        ("--shifts", "-1"): "--shifts -1: must be an integer >= 0",
        ("--filename", "{album}/{stem}.{ext}"): "--filename '{album}/{stem}.{ext}': unknown variable",
    }
    for bad, message in usage_errors.items():
        with pytest.raises(SystemExit) as exit_info:
            main(["separate", str(song), *bad])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert f"hdemucs-flax separate: error: {message}" in err, err  # the option, its value and the rule
        assert err.startswith("usage: hdemucs-flax separate")  # the subcommand's usage, not the top level's
    assert main([]) == 2
    assert "separate" in build_parser().format_help()


def test_help_and_usage_errors_import_no_heavy_library(tmp_path):
    """`--help` and usage errors are answered by the light package face: torch (installed here), transformers
    and JAX stay unimported, so the answer comes in a fraction of a second instead of seconds."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for args in ([], ["--help"], ["separate", "--help"], ["separate", "song.wav", "--overlap", "1.5"]):
        result = run_script("cli_modules", env, *args)
        assert result.returncode == 0, result.stderr[-2000:]
        for name in ("torch", "transformers", "jax", "flax"):
            assert f"loaded {name}: False" in result.stdout, (args, name)
        assert f"exit status: {0 if '--help' in args else 2}" in result.stdout


def test_a_separation_never_imports_torch(tiny_checkpoint_dir, jax_cache, tmp_path):
    """The command's process loads transformers and JAX, but not torch, although torch is installed beside them
    (transformers would import it on its own)."""
    song = write_song(tmp_path / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    env = {k: v for k, v in os.environ.items() if k != "USE_TORCH"} | {"PYTHONPATH": str(REPO_ROOT)}
    result = run_script("cli_modules", env, *cli(tiny_checkpoint_dir, jax_cache, song, "-o", tmp_path / "out", "-q"))
    assert result.returncode == 0 and "exit status: 0" in result.stdout, result.stderr[-3000:]
    assert "loaded torch: False" in result.stdout
    assert "loaded transformers: True" in result.stdout and "loaded jax: True" in result.stdout
    assert len(files_under(tmp_path / "out")) == 4


def test_failure_midway_leaves_no_stem_files(tiny_pair, tmp_path):
    """An error after some stems' samples were written (here: the forward pass failing on its third call)
    leaves no file at all, neither final nor temporary."""
    _, _, model = tiny_pair
    song = write_song(tmp_path / "song.wav", 1.0, 44100, 2, subtype="PCM_16")
    for mode in ("none", "rescale"):
        separator = Separator(model, segment=SEGMENT_SECONDS, forward=FailingForward(fail_at=3))
        with pytest.raises(RuntimeError, match="device lost"):
            separate_file(separator, song, tmp_path / "out", clip_mode=mode)
        assert files_under(tmp_path) == ["song.wav"]


def test_second_process_reuses_the_persistent_cache(tiny_checkpoint_dir, tmp_path):
    """Two runs of `python -m modeling_hdemucs_flax` with the cache folder given by the environment
    variable: the first compiles the forward pass and stores it, the second loads it."""
    song = write_song(tmp_path / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    cache = tmp_path / "cache"
    env = dict(
        os.environ,
        PYTHONPATH=str(REPO_ROOT),
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
            entries = sorted(p.name for p in cache.iterdir() if p.name.startswith("jit_hdemucs_forward-"))
    first, second = (run.stderr for run in runs)
    name = "'jit_hdemucs_forward'"
    assert f"PERSISTENT COMPILATION CACHE MISS for {name}" in first
    assert f"Persistent compilation cache hit for {name}" not in first
    assert f"Persistent compilation cache hit for {name}" in second
    assert f"PERSISTENT COMPILATION CACHE MISS for {name}" not in second
    assert len(entries) == 1
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith("jit_hdemucs_forward-")) == entries
