"""The dataset core without Ray (`separate_dataset`, engine "local"), on a local folder and on S3 (moto's server
on 127.0.0.1 through fsspec/s3fs): planning (keys, collisions, list / CSV / parquet inputs, markers listed once,
options-hash mismatch), publishing all stems or none, the staging sweep, the attempts limit for inputs that
kill their worker, manifest and summary contents, and the command's exit codes.

The tiny random-weight model runs every separation (compiled once per session); songs are a quarter second.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from modeling_hdemucs_flax import (
    DatasetError,
    OptionError,
    OutputOptions,
    SeparationOptions,
    Separator,
    separate_dataset,
)
from modeling_hdemucs_flax.apps.cli import main
from modeling_hdemucs_flax.apps.dataset_plan import plan_tracks
from modeling_hdemucs_flax.apps.dataset_worker import MARKERS
from modeling_hdemucs_flax.io.storage import LocalStore, ObjectStore

from .audio_files import write_song
from .conftest import SEGMENT_SECONDS, SOURCES
from .dataset_helpers import Place, sha256, start_command, usage_message, wait_until
from .flows import REPO_ROOT, error_lines, run_script
from .hub_server import FileServer, trickle
from .separation_helpers import AffineStandIn, FailingForward

KEYS = ["pop/song", "rock/song", "solo"]


@pytest.fixture(scope="module")
def separator(tiny_pair):
    _, _, model = tiny_pair
    return Separator(model, segment=SEGMENT_SECONDS)


@pytest.fixture(params=["local", "s3"])
def place(request, tmp_path):
    if request.param == "local":
        return Place("local", tmp_path)
    return Place("s3", tmp_path, request.getfixturevalue("s3_endpoint"))


def library(place: Place) -> dict[str, str]:
    """Three songs under in/ (two named `song` in different folders; a mono 22.05 kHz one): {key: URL}."""
    return {
        "pop/song": place.song("in/pop/song.flac", channels=2),
        "rock/song": place.song("in/rock/song.wav", subtype="PCM_16"),
        "solo": place.song("in/solo.wav", rate=22050, channels=1, subtype="PCM_16"),
    }


def run(place: Place, separator, inputs=None, **kwargs):
    kwargs.setdefault("scratch_dir", place.scratch)
    return separate_dataset(
        inputs or [place.url("in")], place.url("out"), model=separator, storage_options=place.storage_options, **kwargs
    )


def manifest(place: Place) -> list[dict]:
    return [json.loads(line) for line in place.read("out/manifest.jsonl").decode().splitlines()]


def outputs(place: Place) -> list[str]:
    """Every file under out/ except the run records (manifest, summary and the archive of earlier runs)."""
    return sorted(
        rel
        for rel in place.files("out")
        if rel not in ("manifest.jsonl", "summary.json") and not rel.startswith("_hdemucs/runs/")
    )


def stems(keys, names=SOURCES) -> list[str]:
    return [f"{key}/{name}.flac" for key in keys for name in names]


def test_plan_keys_for_every_kind_of_input(place, tmp_path):
    """Keys are paths relative to the input root without extension: a folder, a glob's fixed part, a file's
    folder, the common folder of a list's paths (relative rows resolved beside the list), a CSV `key` column."""
    urls = library(place)
    assert [(t.key, t.source) for t in plan_tracks([place.url("in")], place.storage_options)] == list(urls.items())
    glob = plan_tracks([place.url("in/*/song.*")], place.storage_options)
    assert [t.key for t in glob] == ["pop/song", "rock/song"]
    assert [t.key for t in plan_tracks([place.url("in/solo.wav")], place.storage_options)] == ["solo"]

    place.write_bytes("lists/songs.txt", b"# a comment\n../in/rock/song.wav\n\n../in/pop/song.flac\n")
    listed = plan_tracks([place.url("lists/songs.txt")], place.storage_options)
    assert [(t.key, t.source) for t in listed] == [("pop/song", urls["pop/song"]), ("rock/song", urls["rock/song"])]

    rows = tmp_path / "catalogue.csv"
    with open(rows, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "key"])
        writer.writerow([urls["solo"], "artists/solo/take1"])
        writer.writerow([urls["rock/song"], ""])  # no key: relative to the paths' common folder
    place.put("lists/catalogue.csv", rows)
    catalogue = plan_tracks([place.url("lists/catalogue.csv")], place.storage_options)
    expected = [("artists/solo/take1", urls["solo"]), ("rock/song", urls["rock/song"])]
    assert [(t.key, t.source) for t in catalogue] == expected

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"path": [urls["pop/song"], urls["solo"]], "year": [1999, 2001]}), tmp_path / "c.parquet")
    place.put("lists/catalogue.parquet", tmp_path / "c.parquet")
    parquet = plan_tracks([place.url("lists/catalogue.parquet")], place.storage_options)
    assert [(t.key, t.source) for t in parquet] == [("pop/song", urls["pop/song"]), ("solo", urls["solo"])]


def test_planning_errors_name_the_inputs(place, tmp_path):
    """Two inputs with one key are a usage error naming both (never one overwriting the other); so are an input
    that yields nothing and a catalogue without a `path` column."""
    urls = library(place)
    with pytest.raises(DatasetError, match="two inputs have the key 'song'") as error:
        plan_tracks([place.url("in/pop"), place.url("in/rock")], place.storage_options)
    assert urls["pop/song"] in str(error.value) and urls["rock/song"] in str(error.value)
    twin = place.song("in/solo.flac")
    with pytest.raises(DatasetError, match="'solo'") as error:
        plan_tracks([place.url("in")], place.storage_options)
    assert urls["solo"] in str(error.value) and twin in str(error.value)
    with pytest.raises(DatasetError, match="no such file"):
        plan_tracks([place.url("missing/thing.wav")], place.storage_options)
    with pytest.raises(DatasetError, match="matches no audio files"):
        plan_tracks([place.url("in/*.mp3")], place.storage_options)
    place.write_bytes("bad.csv", b"file\nx.wav\n")
    with pytest.raises(DatasetError, match=r"no 'path' column \(columns: file\)"):
        plan_tracks([place.url("bad.csv")], place.storage_options)


def test_separate_resume_manifest_and_summary(place, separator, monkeypatch):
    """A run publishes every stem, one completion marker per track (sizes and sha256 of the stems as stored, the
    options hash), one manifest row per input and the summary. A second run lists the markers once, skips
    everything and modifies no output file."""
    urls = library(place)
    report = run(place, separator)
    assert (report.ok, report.skipped, report.failed, report.exit_status) == (3, 0, 0, 0)
    digest = report.summary["options_hash"]
    expected = sorted(stems(KEYS) + [f"{MARKERS}/{key}.{digest}.done.json" for key in KEYS])
    assert outputs(place) == expected

    rows = manifest(place)
    assert [(r["key"], r["source"], r["status"], r["error"]) for r in rows] == [(k, urls[k], "ok", None) for k in KEYS]
    for row in rows:
        assert sorted(row["stems"]) == sorted(SOURCES)
        for stem in row["stems"].values():
            data = place.read(f"out/{stem['path']}")
            assert (stem["bytes"], stem["sha256"]) == (len(data), sha256(data))
        marker = json.loads(place.read(f"out/{MARKERS}/{row['key']}.{digest}.done.json"))
        assert marker["stems"] == row["stems"] and marker["options_hash"] == digest
        assert marker["options"]["separation"]["segment"] == SEGMENT_SECONDS
        assert set(marker["timings"]) == {"fetch_s", "separate_s", "publish_s", "wall_s"}
        assert row["worker"] == f"{socket.gethostname()}:{os.getpid()}" and row["device"].startswith("cpu:0")
    solo = place.audio_info("out/solo/vocals.flac")
    assert (solo.samplerate, solo.channels, solo.frames, solo.format) == (22050, 1, int(0.25 * 22050), "FLAC")
    seconds = [0.25, 0.25, int(0.25 * 22050) / 22050]  # each song's frames / its rate
    assert [r["audio_seconds"] for r in rows] == pytest.approx(seconds, abs=1e-6)

    summary = json.loads(place.read("out/summary.json"))
    assert summary["counts"] == {"ok": 3, "skipped": 0, "failed": 0, "total": 3}
    assert summary["audio_hours"] == pytest.approx(sum(seconds) / 3600, abs=1e-6)
    (worker,) = summary["workers"].values()
    assert worker["tracks"] == 3 and worker["audio_s"] == pytest.approx(sum(seconds), abs=1e-3)
    assert worker["realtime"] == pytest.approx(sum(seconds) / worker["busy_s"], rel=1e-2)
    assert summary["model_load_s"] is not None and summary["compile_s"] is not None
    assert summary["realtime"] == pytest.approx(sum(seconds) / summary["wall_s"], rel=1e-2)

    before = {rel: stamp for rel, stamp in place.files("out").items() if rel not in ("manifest.jsonl", "summary.json")}
    listings = []
    for cls in (LocalStore, ObjectStore):
        original = cls.find
        monkeypatch.setattr(cls, "find", lambda self, rel, _f=original: listings.append(rel) or _f(self, rel))
    again = run(place, separator)
    assert (again.ok, again.skipped, again.failed, again.exit_status) == (0, 3, 0, 0)
    assert listings == [MARKERS]  # one recursive listing, no request per track
    after = place.files("out")
    assert {rel: after[rel] for rel in before} == before  # no output file touched
    assert [r["status"] for r in manifest(place)] == ["skipped"] * 3
    first_run = report.summary["run_id"]
    assert f"_hdemucs/runs/{first_run}/manifest.jsonl" in after  # the earlier run's records are kept


def test_local_outputs_get_the_mode_the_umask_allows(tmp_path, separator):
    """Stems, markers, manifest and summary in an output folder are created through temporaries (mode 0600)
    and renamed into place; each gets the mode the umask allows, as a plain `open()` would give it."""
    place = Place("local", tmp_path)
    library(place)
    old = os.umask(0o027)
    try:
        assert run(place, separator).exit_status == 0
    finally:
        os.umask(old)
    out = Path(place.url("out"))
    modes = {str(p.relative_to(out)): p.stat().st_mode & 0o777 for p in out.rglob("*") if p.is_file()}
    assert any(rel.startswith(MARKERS) for rel in modes) and "manifest.jsonl" in modes and "summary.json" in modes
    assert {rel: mode for rel, mode in modes.items() if mode != 0o640} == {}


def test_other_options_need_overwrite(place, separator):
    """Outputs made with other options are a usage error naming the difference; with `overwrite` they are
    separated again, their old markers and the stems the new options no longer write removed."""
    library(place)
    first = run(place, separator)
    two = OutputOptions(ext="flac", two_stems="vocals")
    with pytest.raises(DatasetError, match=r"3 input\(s\) were separated .* with other options .*two_stems None"):
        run(place, separator, output_options=two)
    report = run(place, separator, output_options=two, overwrite=True)
    assert (report.ok, report.failed) == (3, 0)
    digest = report.summary["options_hash"]
    assert digest != first.summary["options_hash"]
    expected = stems(KEYS, ["no_vocals", "vocals"]) + [f"{MARKERS}/{key}.{digest}.done.json" for key in KEYS]
    assert outputs(place) == sorted(expected)


def test_bad_inputs_become_failed_rows_and_retry_failed(place, separator):
    """An empty file and a non-audio file become failed rows with the command line's one-line messages (the job
    goes on); later runs skip them until `retry_failed`, which runs only them."""
    urls = library(place)
    empty = place.write_bytes("in/empty.wav", b"")
    text = place.write_bytes("in/notes.wav", b"not audio\n" * 50)
    report = run(place, separator)
    assert (report.ok, report.failed, report.exit_status) == (3, 2, 1)
    assert report.failures == [
        {"key": "empty", "source": empty, "error": f"{empty}: empty file (0 bytes)"},
        {"key": "notes", "source": text, "error": f"{text}: not a readable audio file (Format not recognised.)"},
    ]
    rows = {r["key"]: r for r in manifest(place)}
    assert len(rows) == 5 and rows["empty"]["status"] == "failed" and rows["empty"]["stems"] is None

    again = run(place, separator)
    assert (again.ok, again.skipped, again.failed, again.failed_before, again.exit_status) == (0, 5, 0, 2, 0)
    assert {r["key"]: r["error"] for r in manifest(place)}["empty"].startswith("failed in an earlier run")

    place.song("in/empty.wav", subtype="PCM_16")  # the user repairs one of them
    retried = run(place, separator, retry_failed=True)
    assert (retried.ok, retried.skipped, retried.failed) == (1, 3, 1)
    assert {r["key"]: r["status"] for r in manifest(place)} == {
        "empty": "ok",
        "notes": "failed",
        **dict.fromkeys(urls, "skipped"),
    }
    assert "in/empty/vocals.flac" not in outputs(place) and "empty/vocals.flac" in outputs(place)


def test_a_failure_between_stems_leaves_no_marker_and_no_output(place, separator, tiny_pair, monkeypatch):
    """A network failure after some stems' samples were written, or an upload/rename failing after the first
    stem was published: no marker, no stem visible, nothing staged; the input is a failed row."""
    library(place)
    _, _, model = tiny_pair
    place.song("in/long.wav", seconds=1.0, subtype="PCM_16")  # several chunks: the failure comes mid-song
    broken = Separator(model, segment=SEGMENT_SECONDS, forward=FailingForward(fail_at=3))
    report = run(place, broken, inputs=[place.url("in/long.wav")])
    assert report.failures[0]["error"].endswith("RuntimeError: device lost")
    digest = report.summary["options_hash"]
    assert outputs(place) == [f"{MARKERS}/long.{digest}.failed.json"]
    assert not list(place.scratch.glob("hdemucs-flax-work/*/*/*"))  # the worker's scratch is empty

    published = []
    store_class = LocalStore if place.kind == "local" else ObjectStore
    original = store_class.publish

    def publish_once(self, local, rel):
        if published:
            raise OSError("connection reset")
        published.append(rel)
        original(self, local, rel)

    monkeypatch.setattr(store_class, "publish", publish_once)
    report = run(place, separator, inputs=[place.url("in/rock")])
    assert report.failures[0]["error"] == f"{place.url('in/rock/song.wav')}: OSError: connection reset"
    assert published == ["song/drums.flac"]
    assert [rel for rel in outputs(place) if not rel.endswith("failed.json")] == []


def test_stale_staging_and_scratch_are_swept(tmp_path, separator):
    """Staging a killed run left in the output, and the scratch folder of a dead worker process, are removed
    when the next run starts; a live process's scratch is left alone."""
    place = Place("local", tmp_path)
    library(place)
    stale = tmp_path / "place" / "out" / "_hdemucs" / "staging" / "0123456789ab-deadbeef" / "song"
    stale.mkdir(parents=True)
    (stale / ".drums.flac.x.partial").write_bytes(b"half a stem")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    dead_scratch = place.scratch / "hdemucs-flax-work" / f"{host}@{int(dead.stdout)}-abcdef12"
    live_scratch = place.scratch / "hdemucs-flax-work" / f"{host}@{os.getppid()}-abcdef12"
    for folder in (dead_scratch, live_scratch):
        (folder / "inputs").mkdir(parents=True)
    assert run(place, separator).ok == 3
    assert not stale.parent.exists()
    assert [p for p in (tmp_path / "place" / "out" / "_hdemucs" / "staging").rglob("*") if p.is_file()] == []
    assert not dead_scratch.exists() and live_scratch.exists()


class Killed(BaseException):
    """Stands in for the process dying: nothing in the job catches it."""


def test_an_input_that_kills_its_worker_fails_after_max_attempts(place, separator, monkeypatch):
    """The test hook kills the worker mid-file (here `os._exit` raises instead, so the test process lives); each
    death leaves its attempt counted in the store, and once `max_attempts` are used up the input is a failed
    row without being tried again, while the other inputs are done."""
    library(place)
    monkeypatch.setenv("HDEMUCS_FLAX_TEST_EXIT_ON", json.dumps({"solo": 99}))

    def exit_(code):
        raise Killed(code)

    monkeypatch.setattr(os, "_exit", exit_)
    for attempt in (1, 2):
        with pytest.raises(Killed):
            run(place, separator, max_attempts=2)
        assert json.loads(place.read("out/_hdemucs/attempts/solo.json"))["attempts"] == attempt
    report = run(place, separator, max_attempts=2)
    assert (report.ok, report.skipped, report.failed) == (0, 2, 1)
    (row,) = [r for r in manifest(place) if r["status"] == "failed"]
    assert row["key"] == "solo" and "its worker died on each of 2 attempts" in row["error"]
    assert "--max-attempts 2" in row["error"]
    assert "_hdemucs/attempts/solo.json" not in outputs(place)
    assert run(place, separator, max_attempts=2).failed_before == 1


def test_command_exit_codes_and_messages(tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    """`separate-dataset`: 0 when every input is separated or skipped, 1 when any fails (one `error:` line
    each, naming the file), 2 for usage errors worded with the flag, before any work."""
    songs = tmp_path / "in"
    write_song(songs / "a" / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    write_song(songs / "b" / "song.flac", 0.25, 44100, 2)
    (songs / "empty.wav").write_bytes(b"")
    out = tmp_path / "out"
    common = ["--model", str(tiny_checkpoint_dir), "--segment", str(SEGMENT_SECONDS)]
    common += ["--compilation-cache", str(jax_cache), "--scratch-dir", str(tmp_path / "scratch")]

    assert main(["separate-dataset", str(songs), "-o", str(out), *common]) == 1
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"error: {songs / 'empty.wav'}: empty file (0 bytes)"]
    assert captured.out.startswith(f"{out}: 2 separated, 0 skipped, 1 failed;")
    assert sorted(p.name for p in (out / "a" / "song").iterdir()) == [f"{s}.flac" for s in sorted(SOURCES)]

    assert main(["separate-dataset", str(songs), "-o", str(out), *common]) == 0
    assert "note: 1 input(s) that failed in an earlier run were skipped" in capsys.readouterr().err

    usage = {
        ("--max-attempts", "0"): "--max-attempts 0: must be an integer >= 1",
        ("--workers", "2"): "--workers 2: the local engine runs one worker; use the ray engine",
        ("--filename", "{track}.{ext}"): "--filename '{track}.{ext}': must contain {stem}",
        ("--overlap", "0.5"): "were separated into",
        ("--limit", "0"): "--limit 0: must be an integer >= 1",
    }
    for flags, message in usage.items():
        assert main(["separate-dataset", str(songs), "-o", str(out), *common, *flags]) == 2, flags
        err = capsys.readouterr().err
        assert message in usage_message(err), err
    assert main(["separate-dataset", str(songs / "a"), str(songs / "b"), "-o", str(out), *common]) == 2
    assert "two inputs have the key 'song'" in capsys.readouterr().err
    assert main(["separate-dataset", str(tmp_path / "nothing"), "-o", str(out), *common]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        main(["separate-dataset", str(songs), "-o", str(out), "--flac", "--float32"])
    assert stop.value.code == 2
    assert (
        "--float32: FLAC files hold 16-bit integer or 24-bit integer samples, not 32-bit float"
        in capsys.readouterr().err
    )

    (tmp_path / "no_model").mkdir()
    fresh = ["separate-dataset", str(songs / "a"), "-o", str(tmp_path / "fresh"), "--model", str(tmp_path / "no_model")]
    assert main(fresh) == 1
    assert "no_model: not a model folder (no config.json)" in capsys.readouterr().err


def test_help_imports_neither_jax_nor_ray(tmp_path):
    """`separate-dataset --help` is answered without JAX, Ray or torch."""
    result = run_script("dataset_cli", {**os.environ, "PYTHONPATH": str(REPO_ROOT)}, "separate-dataset", "--help")
    assert "exit status: 0" in result.stdout and "--retry-failed" in result.stdout
    for name in ("jax", "ray", "torch", "transformers"):
        assert f"loaded {name}: False" in result.stdout


def test_option_errors_are_raised_before_any_work(tmp_path, separator):
    """The Python API raises `OptionError` for engine settings, before planning."""
    with pytest.raises(OptionError, match="engine='spark'"):
        separate_dataset([str(tmp_path)], str(tmp_path / "out"), engine="spark")
    with pytest.raises(OptionError, match="a ready Separator works with the local engine only"):
        separate_dataset([str(tmp_path)], str(tmp_path / "out"), engine="ray", model=separator)
    assert not (tmp_path / "out").exists()


@dataclass(frozen=True)
class ScaledStandIn:
    """A `NetworkMaker`: every source is `gain` x the chunk (`AffineStandIn` without poison); the models it was
    given are listed in `made_for`."""

    gain: float
    made_for: list = field(default_factory=list, compare=False, repr=False)

    def __call__(self, model):
        self.made_for.append(model)
        sources = len(model.config.sources)
        return lambda batch: AffineStandIn([self.gain] * sources, [0] * sources, batch.shape, poison=False)(batch)


def test_a_stand_in_network_replaces_the_workers_forward_and_is_recorded(tiny_checkpoint_dir, tiny_pair, tmp_path):
    """`network=` (the benchmarks' seam): the worker loads the model named and runs its batches through the
    stand-in made for it (stems byte-identical to a ready Separator's with that stand-in as `forward`); the options
    its markers certify name the stand-in, so a run with the model's own network does not take its stems as done.
    With a ready Separator, or something not callable, it is an `OptionError`."""
    write_song(tmp_path / "in" / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    stand_in = ScaledStandIn(0.5)
    flags = {"scratch_dir": tmp_path / "scratch", "schedule": SeparationOptions(segment=SEGMENT_SECONDS)}
    named = tmp_path / "named"
    report = separate_dataset([tmp_path / "in"], named, model=tiny_checkpoint_dir, network=stand_in, **flags)
    assert report.ok == 1 and [m.config.sources for m in stand_in.made_for] == [SOURCES]
    assert report.summary["options"]["network"] == "ScaledStandIn(gain=0.5)"
    _, _, model = tiny_pair
    ready = Separator(model, segment=SEGMENT_SECONDS, forward=stand_in(model))
    separate_dataset([tmp_path / "in"], tmp_path / "ready", model=ready, scratch_dir=tmp_path / "scratch")
    for stem in SOURCES:
        wanted = (tmp_path / "ready" / "song" / f"{stem}.flac").read_bytes()
        assert (named / "song" / f"{stem}.flac").read_bytes() == wanted, stem
    with pytest.raises(DatasetError, match=r"network 'ScaledStandIn\(gain=0.5\)' -> None"):
        separate_dataset([tmp_path / "in"], named, model=tiny_checkpoint_dir, **flags)
    with pytest.raises(OptionError, match="a ready Separator runs its own forward"):
        separate_dataset([tmp_path / "in"], tmp_path / "other", model=ready, network=stand_in)
    with pytest.raises(OptionError, match="must be callable"):
        separate_dataset([tmp_path / "in"], tmp_path / "other", model=tiny_checkpoint_dir, network="stand-in")


def test_command_on_s3(tiny_checkpoint_dir, jax_cache, s3_endpoint, tmp_path, capsys):
    """The command on S3 URLs with `--storage-option`s: stems and markers land in the bucket, a bad input is one
    `error:` line naming its URL (exit 1), and the re-run skips everything (exit 0)."""
    place = Place("s3", tmp_path, s3_endpoint)
    song = place.song("in/album/song.wav", subtype="PCM_16")
    bad = place.write_bytes("in/album/bad.wav", b"")
    options = [f"--storage-option={key}={value}" for key, value in place.storage_options.items()]
    argv = ["separate-dataset", place.url("in"), "-o", place.url("out"), *options, "--model", str(tiny_checkpoint_dir)]
    argv += ["--segment", str(SEGMENT_SECONDS), "--compilation-cache", str(jax_cache), "--mp3"]
    argv += ["--scratch-dir", str(tmp_path / "scratch")]
    assert main(argv) == 1
    assert capsys.readouterr().err.splitlines() == [f"error: {bad}: empty file (0 bytes)"]
    assert sorted(rel for rel in outputs(place) if rel.endswith(".mp3")) == [
        f"album/song/{s}.mp3" for s in sorted(SOURCES)
    ]
    assert [r["source"] for r in manifest(place)] == [bad, song]
    assert main(argv) == 0
    assert [r["status"] for r in manifest(place)] == ["skipped", "skipped"]


# ---------------------------------------------------------------------------------------------------------
# Faults a user meets through the command: interrupts, unusable inputs and outputs, reserved names, two runs


def model_args(checkpoint: Path, cache: Path, scratch: Path) -> list[str]:
    """The tiny model, its compiled segment and the session's compilation cache, as command-line flags."""
    return ["--model", str(checkpoint), "--segment", str(SEGMENT_SECONDS), "--compilation-cache", str(cache)] + [
        "--scratch-dir",
        str(scratch),
    ]


def command_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu", "HDEMUCS_FLAX_CACHE": str(tmp_path)}


def test_an_interrupted_track_is_not_counted_as_a_worker_death(tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    """Ctrl-C (SIGINT), then SIGTERM, reach a real `separate-dataset` while it fetches its track from a server
    that trickles it: each run ends with its one line and 128 + the signal, and takes back the attempt it had
    counted, so with --max-attempts 2 the next run separates the track instead of recording it as failed."""
    song = write_song(tmp_path / "song.wav", 0.25, 44100, 2, subtype="PCM_16").read_bytes()
    out = tmp_path / "out"
    with FileServer({"song.wav": trickle(song, 0.05)}) as server:
        listing = tmp_path / "songs.txt"
        listing.write_text(f"{server.url}/song.wav\n")
        argv = ["separate-dataset", str(listing), "-o", str(out), "--max-attempts", "2", "-q"]
        argv += model_args(tiny_checkpoint_dir, jax_cache, tmp_path / "scratch")
        expected = {
            signal.SIGINT: "error: interrupted; no partial stem files were kept",
            signal.SIGTERM: "error: terminated (SIGTERM); no partial stem files were kept",
        }
        for number, line in expected.items():
            server.requests.clear()
            process = start_command(argv, command_env(tmp_path))
            wait_until(lambda: ("GET", "song.wav") in server.requests, process, "the track is being fetched")
            process.send_signal(number)
            _, stderr = process.communicate(timeout=120)
            assert process.returncode == 128 + number, stderr[-3000:]
            assert error_lines(stderr) == [line], stderr[-3000:]
            assert not (out / "_hdemucs" / "attempts" / "song.json").exists()
        server.files["song.wav"] = song
        assert main(argv) == 0
    assert capsys.readouterr().out.startswith(f"{out}: 1 separated, 0 skipped, 0 failed;")
    assert sorted(p.name for p in (out / "song").iterdir()) == [f"{s}.flac" for s in sorted(SOURCES)]


def files(folder: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file below `folder`."""
    return {p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def unusable(tmp_path: Path, case: str) -> tuple[list[str], str, str]:
    """(inputs, output, the error line's text after 'error: ') of one kind of unusable input or output."""
    songs = tmp_path / "in"
    write_song(songs / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    out = str(tmp_path / "out")
    if case == "read-only output":  # sysfs: no process, root included, may create anything there
        out = "/sys/hdemucs-flax-test-output"
        reason = os.strerror(errno.EPERM if os.geteuid() == 0 else errno.EACCES)
        return [str(songs)], out, f"{out}: cannot write to this output ({reason}); choose one you can write to"
    if case == "non-UTF-8 CSV":
        listing = tmp_path / "songs.csv"
        listing.write_bytes("path\ncafé.wav\n".encode("latin-1"))
        return [str(listing)], out, f"{listing}: not UTF-8 text (it holds the byte 0xe9); save the list as UTF-8"
    if case == "corrupt parquet":
        listing = tmp_path / "songs.parquet"
        listing.write_bytes(b"PAR1" + bytes(range(256)) * 4 + b"PAR1")
        return [str(listing)], out, f"{listing}: not a readable parquet file ("
    if case == "unreachable ftp input":
        url = f"ftp://127.0.0.1:{unused_port()}/music/"
        return [url], out, f"{url}: cannot reach it ([Errno {errno.ECONNREFUSED}] Connection refused)"
    assert case == "key summary.json"  # its stems would make the folder summary.json/
    reserved = write_song(songs / "summary.json.wav", 0.25, 44100, 2, subtype="PCM_16")
    return [str(songs)], out, f"{reserved}: its stems would go to summary.json/, a name the job keeps for its own"


@pytest.mark.parametrize(
    "case", ["read-only output", "non-UTF-8 CSV", "corrupt parquet", "unreachable ftp input", "key summary.json"]
)
def test_unusable_inputs_and_outputs_are_one_line_usage_errors(case, tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    """Each is one `error:` line naming the file or URL and the problem (exit 2, before any work), never a
    traceback; nothing is written to the output."""
    inputs, out, message = unusable(tmp_path, case)
    argv = ["separate-dataset", *inputs, "-o", out, *model_args(tiny_checkpoint_dir, jax_cache, tmp_path / "s")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert usage_message(err).startswith(message), err
    assert not Path(out).exists()


def test_a_second_run_on_a_busy_output_is_refused(tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    """While a real `separate-dataset` holds an output (fetching a track from a server that trickles it), a second
    run on it is a usage error naming the first (exit 2) that touches nothing; once the first is killed with
    SIGKILL, which leaves its lock file but no lock, the next run goes ahead."""
    song = write_song(tmp_path / "song.wav", 0.25, 44100, 2, subtype="PCM_16").read_bytes()
    local = write_song(tmp_path / "other" / "solo.wav", 0.25, 44100, 2, subtype="PCM_16")
    out = tmp_path / "out"
    flags = model_args(tiny_checkpoint_dir, jax_cache, tmp_path / "scratch")
    with FileServer({"song.wav": trickle(song, 0.05)}) as server:
        listing = tmp_path / "songs.txt"
        listing.write_text(f"{server.url}/song.wav\n")
        first = start_command(["separate-dataset", str(listing), "-o", str(out), "-q", *flags], command_env(tmp_path))
        try:
            wait_until(lambda: ("GET", "song.wav") in server.requests, first, "the first run fetches its track")
            before = files(out)
            assert main(["separate-dataset", str(local.parent), "-o", str(out), *flags]) == 2
            err = capsys.readouterr().err
            expected = f"{out} is in use by another run (pid {first.pid} on {socket.gethostname()}, started "
            assert usage_message(err).startswith(expected), err
            assert err.endswith("); wait for it to finish, or choose another output\n"), err
            assert files(out) == before
        finally:
            first.kill()
            first.communicate(timeout=60)
    assert (out / "_hdemucs" / "lock").exists()
    assert main(["separate-dataset", str(local.parent), "-o", str(out), *flags]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: 1 separated, 0 skipped, 0 failed;")
    assert not (out / "_hdemucs" / "lock").exists()  # released at the end of the run


def test_an_object_store_output_is_held_by_a_lock_object(s3_endpoint, tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    """On S3 the output's lock is the object `_hdemucs/lock.json`: a run is refused while another run's lock is
    fresh (a live process of this host, or another host's recent heartbeat) and takes it over when its owner is
    a dead process of this host or it has not been renewed for five minutes; it removes its own at the end."""
    place = Place("s3", tmp_path, s3_endpoint)
    place.song("in/song.wav", subtype="PCM_16")
    options = [f"--storage-option={key}={value}" for key, value in place.storage_options.items()]
    argv = ["separate-dataset", place.url("in"), "-o", place.url("out"), *options, "-q"]
    argv += model_args(tiny_checkpoint_dir, jax_cache, tmp_path / "scratch")
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host, now = socket.gethostname(), time.time()
    holders = [  # (lock of another run, refused?)
        ({"host": host, "pid": os.getppid(), "heartbeat": now - 30}, True),  # a live process here
        ({"host": "elsewhere", "pid": 1, "heartbeat": now - 30}, True),
        ({"host": host, "pid": int(dead.stdout), "heartbeat": now}, False),  # killed here: gone at once
        ({"host": "elsewhere", "pid": 1, "heartbeat": now - 301}, False),  # no heartbeat for 5 minutes
    ]
    for holder, refused in holders:
        lock = {"id": "other", "started": "2026-01-01T00:00:00Z", **holder}
        place.write_bytes("out/_hdemucs/lock.json", json.dumps(lock).encode())
        status = main(argv)
        err = capsys.readouterr().err
        if refused:
            assert status == 2, err
            who = f"another run (pid {holder['pid']} on {holder['host']}, started 2026-01-01T00:00:00Z)"
            assert usage_message(err).startswith(f"{place.url('out')} is in use by {who} (its lock "), err
            assert "out/manifest.jsonl" not in place.files()
        else:
            assert status == 0, err
            assert "out/_hdemucs/lock.json" not in place.files()
    assert [r["status"] for r in manifest(place)] == ["skipped"]  # the first run taking over separated it


def test_ray_engine_without_ray_says_how_to_install_the_extra(tiny_checkpoint_dir, tmp_path, monkeypatch, capsys):
    """Without Ray the ray engine is a usage error before any work, advising the [ray] extra of the checkout (the
    package is not on PyPI under its name)."""
    write_song(tmp_path / "in" / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as it does where Ray is not installed
    argv = ["separate-dataset", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--engine", "ray"]
    assert main([*argv, "--model", str(tiny_checkpoint_dir)]) == 2
    assert usage_message(capsys.readouterr().err) == (
        "the ray engine needs Ray: install the [ray] extra from your checkout of hdemucs-flax: pip install '.[ray]'"
    )
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------
# Devices


def worker_info(out: Path) -> dict:
    """The one worker's entry of a run's summary.json."""
    (worker,) = json.loads((out / "summary.json").read_text())["workers"].values()
    return worker


def test_the_local_engine_computes_on_the_device_asked_for(tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    """`--device cpu` computes on the CPU device (the summary names it); `--device gpu` where JAX has no GPU is
    a one-line usage error (exit 2) and no stem, never a run on the CPU: in a process whose JAX has started
    already (this one), and in a fresh process, as users run the command."""
    write_song(tmp_path / "in" / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    flags = model_args(tiny_checkpoint_dir, jax_cache, tmp_path / "scratch")

    def argv(out: str, device: str) -> list[str]:
        return ["separate-dataset", str(tmp_path / "in"), "-o", str(tmp_path / out), *flags, "--device", device]

    assert main(argv("cpu", "cpu")) == 0
    capsys.readouterr()
    assert worker_info(tmp_path / "cpu")["devices"] == ["cpu:0"]
    assert main(argv("started", "gpu")) == 2
    message = usage_message(capsys.readouterr().err)
    assert message == "--device gpu: JAX started in this process before the job without a GPU (it has cpu)"
    result = run_script("dataset_cli", command_env(tmp_path), *argv("fresh", "gpu"))
    assert "exit status: 2" in result.stdout, result.stderr[-3000:]
    assert usage_message(result.stderr).startswith("--device gpu: JAX finds no GPU here"), result.stderr[-3000:]
    for out in ("started", "fresh"):
        assert not (tmp_path / out / "song").exists()


def test_a_worker_splits_its_batches_over_every_device_it_holds(tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    """With two (simulated) CPU devices, `separate-dataset --device cpu` computes on both: batches of two chunks
    (the default batch size: one chunk per device), one per device, and the stems of one device (to 16-bit
    rounding); a --batch-size that is not a multiple of two is a usage error naming the devices."""
    write_song(tmp_path / "in" / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    flags = [*model_args(tiny_checkpoint_dir, jax_cache, tmp_path / "scratch"), "--device", "cpu", "-q"]
    env = {**command_env(tmp_path), "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    both = run_script("dataset_cli", env, "separate-dataset", str(tmp_path / "in"), "-o", str(tmp_path / "two"), *flags)
    assert "exit status: 0" in both.stdout, both.stderr[-3000:]
    worker = worker_info(tmp_path / "two")
    assert worker["devices"] == ["cpu:0", "cpu:1"] and worker["batch_size"] == 2

    assert main(["separate-dataset", str(tmp_path / "in"), "-o", str(tmp_path / "one"), *flags]) == 0  # one device
    capsys.readouterr()
    for stem in SOURCES:
        one, _ = sf.read(tmp_path / "one" / "song" / f"{stem}.flac", dtype="float32")
        two, _ = sf.read(tmp_path / "two" / "song" / f"{stem}.flac", dtype="float32")
        assert np.abs(one - two).max() <= 2**-15, stem  # one 16-bit step: float32 round-off may cross one

    odd = ["separate-dataset", str(tmp_path / "in"), "-o", str(tmp_path / "odd"), *flags, "--batch-size", "3"]
    refused = run_script("dataset_cli", env, *odd)
    assert "exit status: 2" in refused.stdout, refused.stderr[-3000:]
    assert usage_message(refused.stderr).startswith("--batch-size 3: must be a multiple of the 2 devices")


def test_markers_certify_the_segment_a_model_chooses_itself(tiny_checkpoint_dir, tiny_pair, tmp_path):
    """A model whose config names its own segment (demucs's hdemucs_mmi: 44 s) and no --segment: the workers
    separate with the model's segment, and the options the markers certify say so (not the schedule's 7.8 s), so a
    later run asking for 7.8 s explicitly does not take these stems as its own."""
    folder = tmp_path / "own-segment"
    shutil.copytree(tiny_checkpoint_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "segment": SEGMENT_SECONDS}))
    write_song(tmp_path / "in" / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    report = separate_dataset([tmp_path / "in"], tmp_path / "out", model=folder, scratch_dir=tmp_path / "scratch")
    assert report.ok == 1 and report.summary["options"]["separation"]["segment"] == SEGMENT_SECONDS
    _, _, model = tiny_pair
    ready = Separator(model, segment=SEGMENT_SECONDS)
    separate_dataset([tmp_path / "in"], tmp_path / "ready", model=ready, scratch_dir=tmp_path / "scratch")
    for stem in SOURCES:
        wanted = (tmp_path / "ready" / "song" / f"{stem}.flac").read_bytes()
        assert (tmp_path / "out" / "song" / f"{stem}.flac").read_bytes() == wanted, stem
