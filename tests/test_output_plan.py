"""Output planning and the writers' file hygiene, without the model: every stem path is planned before anything is
written, and a plan that would lose data (two inputs on one file, a path outside the output folder, a stem
over its own input) is refused naming both parties; folder structure is kept; stems get the umask's mode;
temporaries of killed runs are swept; a failed track leaves no empty folder."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest

from modeling_hdemucs_flax import OptionError, OutputOptions, Track, find_tracks, plan_outputs
from modeling_hdemucs_flax.io.audio_io import AtomicAudioWriter, StemWriter, sweep_partial_files

from .audio_files import tones, write_song
from .conftest import SOURCES


def songs(tmp_path: Path, *names: str) -> list[Path]:
    return [write_song(tmp_path / name, 0.05, 8000, 1) for name in names]


def test_folders_keep_their_structure_and_hidden_files_and_the_output_are_skipped(tmp_path):
    songs(tmp_path, "music/a/song.wav", "music/b/song.wav", "music/top.flac", "music/.hidden/x.wav")
    songs(tmp_path, "music/out/old/vocals.wav", "single.wav")
    (tmp_path / "music" / "._top.m4a").write_bytes(b"macOS resource fork")
    (tmp_path / "music" / "notes.txt").write_text("not audio")
    tracks, problems = find_tracks(
        [tmp_path / "music", tmp_path / "single.wav", tmp_path / "music" / "top.flac"], exclude=tmp_path / "music/out"
    )
    assert problems == []
    assert [(t.relative.as_posix(), t.folder) for t in tracks] == [
        ("a/song.wav", "a"),
        ("b/song.wav", "b"),
        ("top.flac", ""),
        ("single.wav", ""),
    ]  # the second top.flac (given directly too) is kept once
    plan = plan_outputs(tracks, tmp_path / "out", OutputOptions(), SOURCES)
    got = {t.relative.as_posix(): plan[t]["vocals"].relative_to(tmp_path / "out").as_posix() for t in tracks}
    assert got == {
        "a/song.wav": "a/song/vocals.wav",
        "b/song.wav": "b/song/vocals.wav",
        "top.flac": "top/vocals.wav",
        "single.wav": "single/vocals.wav",
    }


def test_every_extension_that_can_be_decoded_is_found(tmp_path):
    from modeling_hdemucs_flax import AUDIO_EXTENSIONS

    for ext in (".m4a", ".opus", ".wma", ".webm", ".mp4", ".mkv", ".aac", ".mp3", ".flac"):
        (tmp_path / f"x{ext}").write_bytes(b"whatever")
        assert ext in AUDIO_EXTENSIONS
    tracks, _ = find_tracks([tmp_path])
    assert len(tracks) == 9


@pytest.mark.parametrize(
    "names,template,words",
    [
        (
            ["a/song.wav", "b/song.wav"],
            "{track}/{stem}.{ext}",
            "a/song.wav and {root}/b/song.wav would both be written to {root}/out/song/drums.wav; give the folder "
            "that holds both ({root}) as the input and add {{folder}} to the template, so each keeps its subfolder",
        ),
        (
            ["a/song.wav", "a/song.flac"],
            None,
            "a/song.flac and {root}/a/song.wav would both be written to {root}/out/song/drums.wav; add {{trackext}} "
            "to the template",
        ),
        (["a/song.wav"], "{track}.{ext}", "stems drums and bass of {root}/a/song.wav would both be written to"),
    ],
)
def test_two_inputs_on_one_file_are_refused_naming_both(tmp_path, names, template, words):
    paths = songs(tmp_path, *names)
    options = OutputOptions() if template is None else OutputOptions(filename=template)
    tracks = [Track(p) for p in sorted(paths)]
    with pytest.raises(OptionError) as caught:
        plan_outputs(tracks, tmp_path / "out", options, SOURCES)
    message = str(caught.value)
    assert words.format(root=tmp_path) in message and "\n" not in message, message
    assert not (tmp_path / "out").exists()


def test_paths_outside_the_output_folder_are_refused(tmp_path):
    dots = write_song(tmp_path / "in" / "...wav", 0.05, 8000, 1, format="WAV")  # its track name is ".."
    for track, template in [(Track(dots), None), (Track(songs(tmp_path, "in/x.wav")[0]), "../{stem}.{ext}")]:
        options = OutputOptions() if template is None else OutputOptions(filename=template)
        with pytest.raises(OptionError, match="outside the output folder"):
            plan_outputs([track], tmp_path / "out", options, SOURCES)
    with pytest.raises(OptionError, match="not an absolute one"):
        OutputOptions(filename="/etc/{stem}.{ext}")


def test_a_stem_over_its_own_input_is_refused(tmp_path):
    [vocals] = songs(tmp_path, "dir/vocals.wav")
    with pytest.raises(OptionError, match=r"the vocals stem of .*vocals.wav would replace the input file"):
        plan_outputs([Track(vocals)], tmp_path / "dir", OutputOptions(filename="{stem}.{ext}"), SOURCES)
    os.link(vocals, tmp_path / "dir" / "drums.wav")  # another name of the input: still refused
    with pytest.raises(OptionError, match="would replace the input file"):
        plan_outputs([Track(vocals)], tmp_path / "dir", OutputOptions(filename="{stem}.{ext}"), SOURCES[:1])


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
@pytest.mark.parametrize("clip_mode", ["rescale", "none"])
def test_stems_get_the_mode_the_umask_allows(tmp_path, umask, clip_mode):
    previous = os.umask(umask)
    try:
        writer = StemWriter(tmp_path / "song" / "vocals.flac", 8000, 1, "PCM_16", clip_mode=clip_mode)
        writer.write(tones(1, 800, 8000))
        path = writer.commit()
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in path.parent.iterdir()] == ["vocals.flac"]


def test_stale_partial_files_of_dead_runs_are_swept(tmp_path):
    writer = AtomicAudioWriter(tmp_path / "vocals.wav", 8000, 1, "PCM_16")  # a live temporary of this process
    old = time.time() - 10
    names = {
        "dead": ".vocals.wav.999999999-k2j5x_0a.partial",  # its process is gone
        "staging": "..vocals.wav.float.wav.999999999-abcdefgh.partial",  # a rescale staging file, too
        "alive": f".vocals.wav.{os.getppid()}-abcdefgh.partial",  # a running process's
        "fresh": ".drums.wav.999999999-abcdefgh.partial",  # newer than the run
        "not ours": ".vocals.wav.partial",
        "user": "vocals.999999999-abcdefgh.partial",  # not hidden: not a writer's name
    }
    for key, name in names.items():
        (tmp_path / name).write_bytes(b"x")
        if key != "fresh":
            os.utime(tmp_path / name, (old, old))
    started = time.time() - 5
    removed = sweep_partial_files(tmp_path, started)
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["staging"]])
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([writer.temp_path.name, names["alive"], names["fresh"], names["not ours"], names["user"]])
    writer.abort()


@pytest.mark.parametrize("step", ["after creating the file", "while libsndfile opens it"])
def test_an_interrupt_while_a_stem_file_is_made_leaves_no_temporary(tmp_path, monkeypatch, step):
    """Ctrl-C (or SIGTERM, raised as `runtime.Terminated`, a KeyboardInterrupt) can arrive between any two steps
    of making a stem's temporary file; the writer knows the name before the file exists, so none is left
    whichever step it interrupts."""
    import soundfile

    from modeling_hdemucs_flax.io import audio_io

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    if step == "after creating the file":
        real = audio_io.tempfiles.create

        def create(temp):
            os.close(real(temp))
            interrupt()

        monkeypatch.setattr(audio_io.tempfiles, "create", create)
    else:
        monkeypatch.setattr(soundfile, "SoundFile", interrupt)
    for clip_mode in ("rescale", "none"):
        with pytest.raises(KeyboardInterrupt):
            StemWriter(tmp_path / "song" / "vocals.wav", 8000, 1, "PCM_16", clip_mode=clip_mode)
        assert list((tmp_path / "song").iterdir()) == [], clip_mode


def test_an_audio_file_writer_creates_no_file_until_commit(tmp_path):
    writer = AtomicAudioWriter(tmp_path / "a" / "b.wav", 8000, 2, "PCM_16")
    writer.write(np.zeros((2, 10), np.float32))
    assert [p.name.endswith(".partial") for p in (tmp_path / "a").iterdir()] == [True]
    writer.abort()
