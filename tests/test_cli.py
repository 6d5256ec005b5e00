"""`hdemucs-flax separate` end to end with the tiny checkpoint made by the conversion code: every input format,
rate and channel count, every output option, one-line errors that leave no partial files, a light start-up
(`--help` loads none of the heavy libraries), and a second process loading the compiled network from the
persistent cache instead of compiling it.

`main(argv)` runs in-process (the compiled forward pass comes from the session's persistent cache); the
start-up and cache tests run the command in subprocesses.
"""

from __future__ import annotations

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
    *per_file, summary = captured.out.splitlines()  # one line per file, then the run's summary
    assert len(per_file) == len(songs)
    assert summary.startswith(f"{len(songs)} files separated: {0.25 * len(songs):.1f} s of audio in ")
    assert summary.endswith("x real time")
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
    assert out[2].startswith("1 file separated (1 skipped): 0.3 s of audio in ") and out[2].endswith("x real time")
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
    assert lines[1].split()[:3] == ["hdemucs-flax/hdemucs-high-musdb-plus", "(default)", "no"]
    assert lines[2].split()[:3] == ["hdemucs-flax/hdemucs-high-musdb", "torchaudio", "file"]
    assert "CC BY-NC-SA 4.0" in lines[1] and lines[-1].startswith(f"cache folder: {tmp_path / 'cache'}")


def test_device_selection_and_the_status_line(tiny_checkpoint_dir, jax_cache, tmp_path, capsys, monkeypatch):
    from modeling_hdemucs_flax import Separator

    assert Separator.from_pretrained(tiny_checkpoint_dir, segment=SEGMENT_SECONDS).device == "cpu"
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # status lines are for terminals
    assert main(cli(tiny_checkpoint_dir, jax_cache, song, "-o", tmp_path / "out", "--device", "cpu")) == 0
    assert "device: cpu\n" in capsys.readouterr().err
    assert main(cli(tiny_checkpoint_dir, jax_cache, song, "-o", tmp_path / "tpu", "--device", "tpu")) == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if x.startswith("error:")]
    assert (
        line.startswith("error: --device tpu: JAX finds no TPU here; it has cpu (") and not (tmp_path / "tpu").exists()
    )


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
    lines = [x for x in gpu.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and "--device gpu: JAX finds no GPU here (install JAX's CUDA wheels: " in lines[0], lines
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
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
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
