"""`hdemucs-flax separate` end to end with the tiny checkpoint made by the conversion code: every input format,
rate and channel count, every output option, one-line errors that leave no partial files, a light start-up
(`--help` loads none of the heavy libraries), and a second process loading the compiled network from the
persistent cache instead of compiling it.

`main(argv)` runs in-process (the compiled forward pass comes from the session's persistent cache); the
start-up and cache tests run the command in subprocesses.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from modeling_hdemucs_flax import Separator, separate_file
from modeling_hdemucs_flax.apps.cli import build_parser, main

from .audio_files import bad_files, write_song
from .conftest import SEGMENT_SECONDS, SOURCES
from .flows import REPO_ROOT, run_script, with_ctrl_c
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


def exit_status(argv: list[str]) -> int:
    """`main(argv)`'s exit status, whether it returns it or argparse raises it (a usage error)."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code or 0)


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
    *per_file, summary = captured.out.splitlines()  # one line per file, then the run's summary
    assert len(per_file) == len(songs)
    assert summary.startswith(f"{len(songs)} files separated: {0.25 * len(songs):.1f} s of audio in ")
    assert summary.endswith("x real time on cpu:0")  # where the network ran, on a terminal or not
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
    assert exit_status(cli(tiny_checkpoint_dir, jax_cache, song, "--two-stems", "kazoo", "-o", tmp_path / "x")) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: hdemucs-flax separate ")
    assert err.endswith(
        "\nhdemucs-flax separate: error: --two-stems kazoo: the model has no such stem (it has drums, bass, other, "
        "vocals)\n"
    )


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
        ("--flac", "--float32"): "--float32: FLAC files hold 16-bit integer or 24-bit integer samples, not 32-bit "
        "float; write WAV for 32-bit float samples",
        ("--overlap", "1.0"): "--overlap 1.0: must be in [0, 1)",
        ("--shifts", "-1"): "--shifts -1: must be an integer in [0, 100]",
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


# ---------------------------------------------------------------------------------------------------------
# Paths, signals and the options users expect (issue 11)


def test_same_names_in_two_folders_keep_their_folders_or_are_refused(tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    """Two `song.wav` in different folders: given as a folder, each keeps its folder under -o; given as files
    (or with a template without {folder}) the run is refused before anything is written, naming both."""
    a = write_song(tmp_path / "music" / "a" / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    b = write_song(tmp_path / "music" / "b" / "song.wav", 0.2, 44100, 1, subtype="PCM_16")
    assert main(cli(tiny_checkpoint_dir, jax_cache, tmp_path / "music", "-o", tmp_path / "out")) == 0
    assert files_under(tmp_path / "out") == [f"{d}/song/{s}.wav" for d in "ab" for s in sorted(SOURCES)]
    assert sf.info(tmp_path / "out" / "b" / "song" / "vocals.wav").channels == 1
    capsys.readouterr()
    for args in ([a, b], [tmp_path / "music", "--filename", "{track}/{stem}.{ext}"]):
        with pytest.raises(SystemExit) as stop:
            main(cli(tiny_checkpoint_dir, jax_cache, *args, "-o", tmp_path / "again"))
        assert stop.value.code == 2
        err = capsys.readouterr().err.splitlines()[-1]
        assert f"{a} and {b} would both be written to {tmp_path / 'again' / 'song' / 'drums.wav'}" in err, err
        assert not (tmp_path / "again").exists()


def test_outputs_outside_the_folder_or_over_an_input_are_refused(tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    dots = write_song(tmp_path / "in" / "...wav", 0.2, 44100, 2, format="WAV", subtype="PCM_16")
    (tmp_path / "precious.wav").write_bytes(b"the user's file next to -o")
    vocals = write_song(tmp_path / "dir" / "vocals.wav", 0.2, 44100, 2, subtype="PCM_16")
    original = vocals.read_bytes()
    cases = [
        ([dots, "-o", tmp_path / "out"], "outside the output folder"),
        ([vocals, "-o", tmp_path / "dir", "--filename", "{stem}.{ext}"], "would replace the input file"),
    ]
    for args, words in cases:
        with pytest.raises(SystemExit) as stop:
            main(cli(tiny_checkpoint_dir, jax_cache, *args))
        assert stop.value.code == 2 and words in capsys.readouterr().err
    assert vocals.read_bytes() == original and (tmp_path / "precious.wav").read_bytes() == b"the user's file next to -o"
    assert sorted(p.name for p in (tmp_path / "dir").iterdir()) == ["vocals.wav"]


def test_skip_existing_and_the_summary(tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    first = write_song(tmp_path / "in" / "first.wav", 0.2, 44100, 2, subtype="PCM_16")
    write_song(tmp_path / "in" / "second.flac", 0.3, 22050, 1)
    assert main(cli(tiny_checkpoint_dir, jax_cache, first, "-o", tmp_path / "out")) == 0
    stamp = (tmp_path / "out" / "first" / "drums.wav").stat().st_mtime_ns
    capsys.readouterr()
    args = [tmp_path / "in", "-o", tmp_path / "out", "--skip-existing"]
    assert main(cli(tiny_checkpoint_dir, jax_cache, *args)) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"{first}: skipped (its 4 stems exist)"
    assert out[1].startswith(f"{tmp_path / 'in' / 'second.flac'}: 4 stems in ")
    assert out[2].startswith("1 file separated (1 skipped): 0.3 s of audio in ")
    assert out[2].endswith("x real time on cpu:0")
    assert (tmp_path / "out" / "first" / "drums.wav").stat().st_mtime_ns == stamp  # not redone


def test_version_models_and_unknown_options(tmp_path, capsys):
    from modeling_hdemucs_flax import __version__

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"hdemucs-flax {__version__}\n"
    with pytest.raises(SystemExit) as stop:
        main(["separate", "song.wav", "--bogus", "1"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.startswith("usage: hdemucs-flax separate")
    assert err.endswith("hdemucs-flax separate: error: unrecognized arguments: --bogus 1\n")
    usage = {
        ("--segment", "0.00001"): "--segment 1e-05: must be between 0.05 and 600 seconds",
        ("--segment", "1e7"): "--segment 10000000.0: must be between 0.05 and 600 seconds",
        ("--batch-size", "1000000"): "--batch-size 1000000: must be an integer in [1, 256]",
        ("--batch-size", "lots"): "--batch-size lots: must be an integer in [1, 256] or auto",
        ("--shifts", "100000000"): "--shifts 100000000: must be an integer in [0, 100]",
        ("--mp3-bitrate", "5000"): "--mp3-bitrate 5000: must be an integer in [8, 320]",
        ("--mp3-preset", "1"): "--mp3-preset 1: must be an integer in [2, 7]",
    }
    for flags, message in usage.items():
        with pytest.raises(SystemExit) as stop:
            main(["separate", "song.wav", *flags])
        assert stop.value.code == 2 and f"hdemucs-flax separate: error: {message}\n" in capsys.readouterr().err


def test_models_lists_the_known_models_and_the_cached_ones(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HDEMUCS_FLAX_CACHE", str(tmp_path / "cache"))
    copied = tmp_path / "cache" / "torchaudio" / "models" / "hdemucs_high_musdbhq_only.pt"
    copied.parent.mkdir(parents=True)
    copied.write_bytes(b"a copy from another machine")
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(map(len, lines[:-1])) <= 100, lines  # a terminal's width; the last line is the cache's path
    assert lines[:4] == [
        "hdemucs-flax/hdemucs-high-musdb-plus (default)",
        "    cached here:  no",
        "    licence:      CC BY-NC-SA 4.0",
        "    weights:      torchaudio's HDEMUCS_HIGH_MUSDB_PLUS",
    ]
    described = " ".join(line.strip() for line in lines[4 : lines.index("hdemucs-flax/hdemucs-high-musdb")])
    assert described == (
        "trained on:   MUSDB-HQ train and test sets plus 150 extra songs from an internal database produced for "
        "Meta. The model has seen MUSDB18's test set, so MUSDB18 test scores are not a fair measure of it. "
        "sources:      drums, bass, other, vocals parameters:   83.64 M (download 335 MB)"
    )
    other = lines.index("hdemucs-flax/hdemucs-high-musdb")
    assert lines[other + 1] == "    cached here:  torchaudio file"
    # demucs's released models by name, each with its facts; one of them copied into the cache by hand
    names = [line for line in lines if line and not line.startswith(" ")]
    assert names[2:6] == ["htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi"], names
    six = lines.index("htdemucs_6s")
    assert "    sources:      drums, bass, other, vocals, guitar, piano" in lines[six : six + 9]
    assert "    parameters:   4 x 41.98 M (download 336 MB)" in lines[lines.index("htdemucs_ft") :]
    assert lines[-1] == f"cache folder (HDEMUCS_FLAX_CACHE): {tmp_path / 'cache'}"


def test_device_selection_and_the_status_line(tiny_checkpoint_dir, jax_cache, tmp_path, capsys, monkeypatch):
    from modeling_hdemucs_flax import Separator

    assert Separator.from_pretrained(tiny_checkpoint_dir, segment=SEGMENT_SECONDS).device == "cpu:0"
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # status lines are for terminals
    assert main(cli(tiny_checkpoint_dir, jax_cache, song, "-o", tmp_path / "out", "--device", "cpu")) == 0
    assert "device: cpu:0\n" in capsys.readouterr().err
    assert main(cli(tiny_checkpoint_dir, jax_cache, song, "-o", tmp_path / "tpu", "--device", "tpu")) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: hdemucs-flax separate ")
    [line] = [x for x in err.splitlines() if "error:" in x]
    assert line.startswith("hdemucs-flax separate: error: --device tpu: JAX finds no TPU here; it has cpu (")
    assert not (tmp_path / "tpu").exists()


def test_device_flag_in_a_fresh_process(tiny_checkpoint_dir, tmp_path):
    """`--device gpu` on a machine without one: one line saying so and how to install the CUDA wheels; before
    JAX starts, `--device cpu` restricts JAX to the CPU even when the environment asked for another platform."""
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "tpu"}
    base = [sys.executable, "-m", "modeling_hdemucs_flax", "separate", str(song), "--model", str(tiny_checkpoint_dir)]
    base += ["--segment", "0.1", "--no-compilation-cache"]
    gpu = subprocess.run(
        [*base, "-o", str(tmp_path / "gpu"), "-d", "gpu"], env=env, capture_output=True, text=True, timeout=300
    )
    assert gpu.returncode == 2, gpu.stderr[-2000:]
    lines = [x for x in gpu.stderr.splitlines() if "error:" in x]
    assert len(lines) == 1 and lines[0].startswith("hdemucs-flax separate: error: --device gpu: "), lines
    assert "JAX finds no GPU here (install JAX's CUDA wheels: " in lines[0] and gpu.stderr.startswith("usage: ")
    cpu = subprocess.run(
        [*base, "-o", str(tmp_path / "cpu"), "-d", "cpu"], env=env, capture_output=True, text=True, timeout=300
    )
    assert cpu.returncode == 0, cpu.stderr[-2000:]
    assert len(files_under(tmp_path / "cpu")) == 4


def _run_until_partial(checkpoint: Path, jax_cache: Path, tmp_path: Path, out: Path) -> subprocess.Popen:
    """`python -m modeling_hdemucs_flax separate` on a 60-second song, returned once it writes its first stem
    temporary into `out`."""
    song = write_song(tmp_path / "long.wav", 60.0, 44100, 2, subtype="PCM_16")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu"}
    command = [sys.executable, "-m", "modeling_hdemucs_flax", *cli(checkpoint, jax_cache, song, "-o", out), "-q"]
    process = subprocess.Popen(with_ctrl_c(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and any(p.name.endswith(".partial") for p in out.rglob("*")):
            return process
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"no temporary file appeared; stderr: {process.communicate()[1][-2000:]!r}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_midway_leaves_no_temporary_and_no_empty_folder(tiny_checkpoint_dir, jax_cache, tmp_path, signum):
    """A real `hdemucs-flax` process stopped while writing stems (SIGTERM as `timeout`/`docker stop` send it,
    SIGINT as Ctrl-C): one error line, exit 128 + signal (130 for Ctrl-C), and nothing left under -o."""
    out = tmp_path / "out"
    process = _run_until_partial(tiny_checkpoint_dir, jax_cache, tmp_path, out)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    stderr = stderr.decode()
    name = signal.Signals(signum).name
    if signum == signal.SIGINT:
        assert process.returncode == 130, stderr[-2000:]
        assert stderr.splitlines()[-1] == "error: interrupted; no partial stem files were kept"
    else:
        assert process.returncode == 128 + signum, stderr[-2000:]
        assert stderr.splitlines()[-1] == f"error: terminated ({name}); no partial stem files were kept"
    # no stems, no temporaries, no track folder (nor -o itself, which this run had created)
    assert not out.exists(), sorted(map(str, out.rglob("*")))


def test_temporaries_of_a_killed_run_are_swept_by_the_next(tiny_checkpoint_dir, jax_cache, tmp_path):
    """SIGKILL cannot be handled: its temporaries stay. The next run writing into those folders removes them
    (only the writers' own names, of processes that are gone)."""
    out = tmp_path / "out"
    process = _run_until_partial(tiny_checkpoint_dir, jax_cache, tmp_path, out)
    process.kill()
    process.communicate(timeout=60)
    left = [p for p in out.rglob("*") if p.is_file()]
    assert left and all(p.name.endswith(".partial") for p in left)
    (out / "long" / "notes.txt").write_text("the user's own file")
    short = write_song(tmp_path / "short" / "long.wav", 0.2, 44100, 2, subtype="PCM_16")
    assert main(cli(tiny_checkpoint_dir, jax_cache, short, "-o", out)) == 0
    assert files_under(out) == sorted(["long/notes.txt", *(f"long/{s}.wav" for s in SOURCES)])


def test_failure_midway_leaves_no_folder_either(tiny_pair, tmp_path):
    _, _, model = tiny_pair

    def failing(batch):
        raise RuntimeError("device lost")

    separator = Separator(model, segment=SEGMENT_SECONDS, forward=failing)
    song = write_song(tmp_path / "song.wav", 1.0, 44100, 2, subtype="PCM_16")
    (tmp_path / "out").mkdir()
    with pytest.raises(RuntimeError, match="device lost"):
        separate_file(separator, song, tmp_path / "out" / "deep" / "er")
    assert list((tmp_path / "out").iterdir()) == []  # "deep/er/song" was made for the stems and removed again


# ---------------------------------------------------------------------------------------------------------
# What the model's config.json tells is checked before the model is loaded (issue 17)


def config_only_model(folder: Path, checkpoint: Path, **changes) -> Path:
    """A model folder with the tiny model's config.json (fields `changes` replaced) and a model.safetensors of
    garbage: any run that reads the weights fails, so a run that answers correctly never read them."""
    config = json.loads((checkpoint / "config.json").read_text())
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    (folder / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(3000))
    return folder


def run_light(env: dict[str, str], *argv: object) -> tuple[int, str, str]:
    """`hdemucs-flax separate ARGV` in a fresh process that must import none of JAX, flax, transformers and torch:
    (exit status, stdout, stderr), the import report taken off stdout."""
    result = run_script("cli_modules", env, "separate", *map(str, argv))
    out, report = result.stdout.split("loaded torch: ")
    for name in ("torch", "transformers", "jax", "flax"):
        assert f"loaded {name}: False" in "loaded torch: " + report, (argv, name, result.stderr[-2000:])
    return int(report.rsplit("exit status: ", 1)[1]), out, result.stderr


def test_what_the_config_tells_is_answered_without_loading_the_model(tiny_checkpoint_dir, tmp_path):
    """A `--two-stems` typo, two inputs on one output, a file that is not audio, a file with more channels than the
    model takes and a `--skip-existing` run with nothing left to do are answered from the model's config.json and
    the inputs' headers: JAX is never imported and the (garbage) weights are never read."""
    model = config_only_model(tmp_path / "model", tiny_checkpoint_dir)
    a = write_song(tmp_path / "a" / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    b = write_song(tmp_path / "b" / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    notes = tmp_path / "notes.wav"
    notes.write_text("my notes, not audio")
    done = tmp_path / "done"
    for stem in SOURCES:  # an earlier run's stems
        write_song(done / "song" / f"{stem}.wav", 0.2, 44100, 2, subtype="PCM_16")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    common = ["--model", model, "-o", tmp_path / "out"]

    status, _, err = run_light(env, a, "--two-stems", "kazoo", *common)
    assert status == 2 and err.startswith("usage: hdemucs-flax separate ")
    assert err.splitlines()[-1] == (
        "hdemucs-flax separate: error: --two-stems kazoo: the model has no such stem (it has drums, bass, other, "
        "vocals)"
    )
    status, _, err = run_light(env, a, b, *common)
    assert status == 2 and f"{a} and {b} would both be written to {tmp_path / 'out' / 'song' / 'drums.wav'}" in err
    status, out, err = run_light(env, notes, *common)
    assert status == 1 and err == f"error: {notes}: not a readable audio file (Format not recognised.)\n"
    assert out.startswith("0 files separated (1 failed): 0.0 s of audio in ")
    six = write_song(tmp_path / "surround.wav", 0.2, 44100, 6, subtype="PCM_16")
    status, out, err = run_light(env, six, *common)
    assert status == 1 and err == (
        f"error: {six}: 6 channels is not supported (this model separates mono or stereo audio)\n"
    )
    status, out, err = run_light(env, a, "--model", model, "-o", done, "--skip-existing")
    assert status == 0 and err == "", err
    assert out.splitlines()[0] == f"{a}: skipped (its 4 stems exist)"
    assert out.splitlines()[1].startswith("0 files separated (1 skipped): 0.0 s of audio in ")
    assert not (tmp_path / "out").exists()


def test_a_hub_models_config_is_fetched_alone_to_check_a_run(tiny_checkpoint_dir, tmp_path):
    """`--model user/repo`: only the repo's config.json is downloaded to answer a `--two-stems` typo; the weights
    are not requested and JAX is not imported."""
    from .flows import flow_env
    from .hub_server import HubServer

    files = {
        "config.json": (tiny_checkpoint_dir / "config.json").read_bytes(),
        "model.safetensors": (tiny_checkpoint_dir / "model.safetensors").read_bytes(),
    }
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    with HubServer() as hub:
        hub.create("someone/tiny", files=files)
        env = flow_env(tmp_path, HF_ENDPOINT=hub.url)
        status, _, err = run_light(env, song, "--model", "someone/tiny", "--two-stems", "voclas", "-o", tmp_path / "o")
        requested = [path for _, path in hub.requests]
    assert status == 2
    assert err.splitlines()[-1] == (
        "hdemucs-flax separate: error: --two-stems voclas: the model has no such stem (it has drums, bass, other, "
        "vocals)"
    )
    assert any(path.endswith("/config.json") for path in requested), requested
    assert not any("safetensors" in path for path in requested), requested


def test_an_unreachable_hub_costs_the_pre_check_one_quick_attempt(tmp_path):
    """The pre-check's fetch of a Hub repo's config.json is one attempt (no retries, whose 23 s the loader would
    then spend again): connection refused gives up at once and leaves the answer to the loader."""
    import socket

    from .flows import flow_env

    with socket.socket() as probe_socket:  # a port nobody listens on once it is closed
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    env = flow_env(tmp_path, HF_ENDPOINT=f"http://127.0.0.1:{port}")
    code = (
        "import time; from modeling_hdemucs_flax.zoo.model_facts import read_model_facts; t = time.monotonic(); "
        "print(read_model_facts('someone/tiny'), time.monotonic() - t)"
    )
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    facts, seconds = result.stdout.split()
    assert facts == "None" and float(seconds) < 5, (result.stdout, result.stderr[-2000:])


@pytest.mark.parametrize(
    "sources,problem",
    [
        (["drums", "bass", "other", "voc/als"], "source 'voc/als' contains a path separator"),
        (["drums", "bass", "other", "voc\\als"], "source 'voc\\\\als' contains a path separator"),
        (["drums", "bass", "other", "vocals\x00"], "source 'vocals\\x00' contains a control character"),
        (["drums", "bass", "other", ".wav"], "source '.wav' starts with a dot"),
        (["drums", "bass", "other", ".."], "source '..' starts with a dot"),
        (["vocals", "no_vocals"], "source 'no_vocals' is the name --two-stems vocals gives the accompaniment"),
        (["Vocals", "vocals"], "source names must be unique ignoring case"),
        (["drums", " bass"], "source ' bass' starts or ends with white space"),
        (["drums", ""], "must be a list of 1 to 64 source names"),
    ],
)
def test_source_names_that_cannot_be_file_names_are_refused(tiny_checkpoint_dir, tmp_path, sources, problem):
    """A config.json's source names become stem file names: a name that would make a traceback, a hidden file, a
    subfolder or a clash with `--two-stems`' no_STEM is refused in one line (exit 1: the model is unusable),
    before the weights are read (which here are garbage) and before anything is written."""
    model = config_only_model(tmp_path / "model", tiny_checkpoint_dir, sources=sources)
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    status, _, err = run_light(env, song, "--model", model, "-o", tmp_path / "out")
    assert status == 1
    assert err.startswith(f"error: cannot load model '{model}': HDemucsConfig.sources={sources!r}: "), err
    assert problem in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


APART = "so each keeps its subfolder, or separate them in two runs with different output folders"


@pytest.mark.parametrize(
    "files,inputs,template,hint",
    [
        (  # the same name in two folders, given as files
            ["a/song.wav", "b/song.wav"],
            ["a/song.wav", "b/song.wav"],
            None,
            f"give the folder that holds both (.) as the input, {APART}",
        ),
        (  # ... given as their folders
            ["a/song.wav", "b/song.wav"],
            ["a", "b"],
            None,
            f"give the folder that holds both (.) as the input, {APART}",
        ),
        (  # ... with a template without {folder}
            ["x/a/song.wav", "x/b/song.wav"],
            ["x/a/song.wav", "x/b/song.wav"],
            "{track}/{stem}.{ext}",
            f"give the folder that holds both (x) as the input and add {{folder}} to the template, {APART}",
        ),
        (  # their folder given, a template without {folder}
            ["a/song.wav", "b/song.wav"],
            ["."],
            "{track}/{stem}.{ext}",
            "add {folder} to the template (e.g. '{folder}/{track}/{stem}.{ext}')",
        ),
        (  # one name, two extensions
            ["a/song.flac", "a/song.wav"],
            ["a"],
            None,
            "add {trackext} to the template (e.g. '{folder}/{track}.{trackext}/{stem}.{ext}')",
        ),
        (  # a template without {track}
            ["a/other.wav", "a/song.wav"],
            ["a/other.wav", "a/song.wav"],
            "{folder}/{stem}.{ext}",
            "add {track} to the template (e.g. '{folder}/{track}/{stem}.{ext}')",
        ),
    ],
)
def test_a_collision_names_the_fix_that_works(
    tiny_checkpoint_dir, tmp_path, monkeypatch, capsys, files, inputs, template, hint
):
    """Two inputs on one output file: the hint depends on what tells them apart (issue 17, item 8)."""
    root = tmp_path / "music"
    for name in files:
        write_song(root / name, 0.2, 44100, 2, subtype="PCM_16")
    monkeypatch.chdir(root)
    model = config_only_model(tmp_path / "model", tiny_checkpoint_dir)
    flags = ["--filename", template] if template else []
    assert exit_status(["separate", *inputs, *flags, "--model", str(model), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: hdemucs-flax separate ")
    last = err.splitlines()[-1]
    assert last.startswith("hdemucs-flax separate: error: --filename ") and " would both be written to " in last
    assert last.endswith("; " + hint), last
    assert not (tmp_path / "out").exists()


def test_usage_errors_found_after_parsing_look_like_argparses(tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    """An option argparse refuses, a plan that would lose data, a stem the model lacks and a device JAX lacks (found
    only while the model loads): the same usage line, `hdemucs-flax separate: error: ...`, exit status 2."""
    song = write_song(tmp_path / "in" / "vocals.wav", 0.2, 44100, 2, subtype="PCM_16")
    base = cli(tiny_checkpoint_dir, jax_cache, song, "-o", tmp_path / "out")
    cases = {
        "--overlap 1.5: must be in [0, 1)": ["--overlap", "1.5"],
        "--filename '{stem}.{ext}': the vocals stem of": ["--filename", "{stem}.{ext}", "-o", tmp_path / "in"],
        "--two-stems kazoo: the model has no such stem": ["--two-stems", "kazoo"],
        "--device tpu: JAX finds no TPU here": ["--device", "tpu"],
    }
    for message, extra in cases.items():
        assert exit_status([*base, *map(str, extra)]) == 2, message
        lines = capsys.readouterr().err.splitlines()
        assert lines[0].startswith("usage: hdemucs-flax separate [-h]"), (message, lines)
        assert lines[-1].startswith(f"hdemucs-flax separate: error: {message}"), (message, lines)
        assert not any(line.startswith("error:") for line in lines), lines
    assert not (tmp_path / "out").exists() and sorted(p.name for p in (tmp_path / "in").iterdir()) == ["vocals.wav"]


def test_mp3_with_a_sample_format_is_refused_in_plain_words(tmp_path, capsys):
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    cases = {
        ("--mp3", "--int24"): "--int24: MP3 files have no sample format to choose (their encoder sets the "
        "precision); write WAV or FLAC for 24-bit integer samples",
        ("--ogg", "--float32"): "--float32: Ogg Vorbis files have no sample format to choose (their encoder sets the "
        "precision); write WAV for 32-bit float samples",
    }
    for flags, message in cases.items():
        assert exit_status(["separate", str(song), *flags]) == 2
        err = capsys.readouterr().err
        assert err.endswith(f"\nhdemucs-flax separate: error: {message}\n"), err
        assert "MPEG_LAYER_III" not in err and "VORBIS" not in err and "PCM_" not in err
