"""Hostile media: files that make FFmpeg open other files, and headers that understate a file's length.

FFmpeg probes a file's content, not its name, and some of its demuxers open what the file names: an HLS
playlist (`x.m3u8`) its segments, by absolute `file://` URL or `../` path; an ffconcat list (even one named
`x.wav`) its entries; a list naming itself recursed inside FFmpeg until the open-file limit or a crash. Before
the fix, the uploader got the named file's audio back as stems. Every surface reads audio through
`audio_io`, which now opens media with an allow-list of single-file demuxers and the plain-file protocol only;
each surface is checked here on the path a user takes (the Space's in `test_space.py`).

A duration limit (a server's `max_duration`) is enforced by counting decoded samples, not by trusting the
container's header: a Matroska file claiming 1 s may hold minutes.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from modeling_hdemucs_flax import AudioFormatError, AudioTooLongError, Separator, read_audio, separate_dataset
from modeling_hdemucs_flax.apps.serve import create_app
from modeling_hdemucs_flax.io.audio_io import inspect_audio, iter_audio_blocks

from .audio_files import media_that_open_other_files, write_song, write_understated_matroska
from .conftest import SEGMENT_SECONDS, SOURCES
from .flows import REPO_ROOT
from .serve_helpers import ThreadedServer, files_in, upload, wait_ready

REFUSED = "not a readable audio file"


@pytest.fixture()
def hostile(tmp_path):
    """(folder of the hostile files, {name: what it tries}); the private MP3 they name lies outside it."""
    folder = tmp_path / "uploads"
    return folder, media_that_open_other_files(folder, tmp_path / "private" / "secret.mp3")


def test_the_reader_refuses_every_file_that_opens_another(hostile, capfd):
    folder, cases = hostile
    for name in cases:
        with pytest.raises(AudioFormatError) as caught:
            read_audio(folder / name)
        message = str(caught.value)
        assert message.startswith(f"{folder / name}: {REFUSED}") and "\n" not in message, (name, message)
    assert read_audio(folder / "neighbour.mp3")[0].shape[0] == 2  # the demuxers still read ordinary files
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # FFmpeg's refusal is not printed


def test_the_command_line_refuses_them(hostile, tiny_checkpoint_dir, jax_cache, tmp_path):
    folder, cases = hostile
    out = tmp_path / "separated"
    env = {"PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"}
    command = [sys.executable, "-m", "modeling_hdemucs_flax", "separate", *(str(folder / n) for n in cases)]
    command += ["-o", str(out), "--model", str(tiny_checkpoint_dir), "--segment", str(SEGMENT_SECONDS)]
    command += ["--compilation-cache", str(jax_cache)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1, result.stderr[-2000:]
    assert sorted(errors) == sorted(f"error: {folder / n}: {REFUSED} (Format not recognised.)" for n in cases)
    assert not out.exists() or files_in(out) == []


def test_serve_refuses_them_and_still_answers(hostile, tiny_pair, tmp_path):
    folder, cases = hostile
    _, _, model = tiny_pair
    separator = Separator(model, segment=SEGMENT_SECONDS)
    with ThreadedServer(create_app(separator, workdir=tmp_path / "work")) as server:
        wait_ready(server.client)
        for name in cases:  # the self-referencing list last but one: the server must survive it
            response = server.client.post("/v1/separate", **upload(folder / name))
            assert response.status_code == 415, (name, response.status_code, response.text[:200])
            assert response.json() == {"error": f"{name}: {REFUSED} (Format not recognised.)"}
        assert server.client.get("/v1/health").status_code == 200
        song = write_song(tmp_path / "song.wav", 0.5, 44100, 2, subtype="PCM_16")
        response = server.client.post("/v1/separate", **upload(song))
        assert response.status_code == 200 and response.headers["content-type"] == "application/zip"


def test_the_dataset_engine_records_them_as_failed(hostile, tiny_pair, tmp_path):
    folder, cases = hostile
    _, _, model = tiny_pair
    inputs = [str(folder / name) for name in cases]
    report = separate_dataset(
        inputs, str(tmp_path / "out"), model=Separator(model, segment=SEGMENT_SECONDS), scratch_dir=tmp_path / "s"
    )
    assert (report.ok, report.failed, report.exit_status) == (0, len(cases), 1)
    assert sorted(f["error"] for f in report.failures) == sorted(
        f"{folder / n}: {REFUSED} (Format not recognised.)" for n in cases
    )
    stems = [p for p in (tmp_path / "out").rglob("*") if p.suffix == ".flac" and p.stem in SOURCES]
    assert stems == []


def test_a_header_that_understates_the_length_is_caught_by_counting(tmp_path):
    liar = write_understated_matroska(tmp_path / "liar.mka", seconds=12.0, header_seconds=1.0)
    info = inspect_audio(liar)
    assert info.duration == pytest.approx(1.0)  # what the header says
    read = 0
    with pytest.raises(AudioTooLongError) as caught:
        for block in iter_audio_blocks(info, 8192, max_seconds=3.0):
            read += block.shape[-1]
    assert read <= 3 * info.sample_rate  # never more than the cap is handed on
    assert str(caught.value) == f"{liar}: more than 3 s of audio (its header says 1.0 s); the limit is 3 s"
    assert sum(b.shape[-1] for b in iter_audio_blocks(info)) > 11 * info.sample_rate  # all of it, uncapped
    with pytest.raises(AudioTooLongError, match="12.0 s long; the limit is 3 s"):  # an honest header: at once
        next(iter_audio_blocks(inspect_audio(write_song(tmp_path / "honest.wav", 12.0, 8000, 1)), max_seconds=3.0))


def test_separate_file_stops_at_the_cap_and_leaves_nothing(tiny_pair, tmp_path):
    from modeling_hdemucs_flax import separate_file

    liar = write_understated_matroska(tmp_path / "liar.mka", seconds=6.0, header_seconds=0.5)
    separator = Separator(tiny_pair[2], segment=SEGMENT_SECONDS)
    with pytest.raises(AudioTooLongError, match="more than 2 s of audio"):
        separate_file(separator, liar, tmp_path / "out", max_seconds=2.0)
    assert not (tmp_path / "out").exists() or files_in(tmp_path / "out") == []
    assert sorted(separate_file(separator, liar, tmp_path / "out")) == sorted(SOURCES)  # no cap: all of it
