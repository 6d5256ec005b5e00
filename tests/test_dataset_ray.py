"""`separate-dataset --engine ray` on a real local Ray cluster (conftest's `ray_cluster`: one for the session,
2 CPUs, no dashboard, auth disabled). Each run is the console script in a fresh driver process
(`scripts/dataset_cli.py`, which also reports whether the driver imported JAX or Ray); the actors load the tiny
checkpoint made by the conversion code and the compiled network from the session's compilation cache.

Few runs, each checking much: a Ray run costs seconds of actor start-up.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from .audio_files import write_song
from .conftest import SEGMENT_SECONDS, SOURCES
from .dataset_helpers import start_command, wait_until
from .flows import REPO_ROOT, error_lines, run_script
from .hub_server import FileServer, trickle


def dataset_run(ray_cluster, checkpoint, cache, inputs, out, *flags, env=None, timeout=300):
    address, cluster_env = ray_cluster
    argv = ["separate-dataset", *map(str, inputs), "-o", str(out), "--engine", "ray", "--ray-address", address]
    argv += ["--model", str(checkpoint), "--segment", str(SEGMENT_SECONDS), "--compilation-cache", str(cache), "-q"]
    return run_script("dataset_cli", {**cluster_env, **(env or {})}, *argv, *map(str, flags), timeout=timeout)


def files(folder: Path) -> dict[str, tuple[int, int]]:
    """{relative path: (size, mtime_ns)} of every file below `folder`."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def exit_status(result) -> int:
    return int(result.stdout.rsplit("exit status: ", 1)[1].split()[0])


def outputs(out: Path) -> list[str]:
    return sorted(rel for rel in files(out) if rel not in ("manifest.jsonl", "summary.json") and "/runs/" not in rel)


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """Good songs (two named `song` in different folders), an empty file and a non-audio file."""
    folder = tmp_path_factory.mktemp("library")
    write_song(folder / "live" / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    write_song(folder / "studio" / "song.flac", 0.25, 44100, 2)
    write_song(folder / "mono.wav", 0.25, 22050, 1, subtype="PCM_16")
    (folder / "empty.wav").write_bytes(b"")
    (folder / "notes.wav").write_text("this is not audio\n" * 20)
    return folder


def test_a_ray_run_then_a_rerun_that_skips_everything(ray_cluster, tiny_checkpoint_dir, jax_cache, library, tmp_path):
    """Two actors separate the good files; the empty and the non-audio file are failed rows named on stderr
    (exit 1), exactly the expected files appear, and the driver never imports JAX. The same command again
    skips every input without starting Ray (so no actor), and modifies no output file."""
    out = tmp_path / "out"
    first = dataset_run(ray_cluster, tiny_checkpoint_dir, jax_cache, [library], out, "--workers", "2")
    assert exit_status(first) == 1, first.stderr[-3000:]
    assert sorted(first.stderr.splitlines()) == [  # nothing else: no error-level line of Ray's own
        f"error: {library / 'empty.wav'}: empty file (0 bytes)",
        f"error: {library / 'notes.wav'}: not a readable audio file (Format not recognised.)",
    ]
    assert "loaded jax: False" in first.stdout and "loaded ray: True" in first.stdout
    summary = json.loads((out / "summary.json").read_text())
    digest = summary["options_hash"]
    keys = ["live/song", "mono", "studio/song"]
    expected = [f"{key}/{stem}.flac" for key in keys for stem in SOURCES]
    expected += [f"_hdemucs/markers/{key}.{digest}.done.json" for key in keys]
    expected += [f"_hdemucs/markers/{key}.{digest}.failed.json" for key in ("empty", "notes")]
    assert outputs(out) == sorted(expected)
    rows = manifest(out)
    assert sorted((r["key"], r["status"]) for r in rows) == [
        ("empty", "failed"),
        ("live/song", "ok"),
        ("mono", "ok"),
        ("notes", "failed"),
        ("studio/song", "ok"),
    ]
    assert summary["counts"] == {"ok": 3, "skipped": 0, "failed": 2, "total": 5}
    # Which of the two actors took tracks depends on start-up times (one may finish all five before the other
    # has loaded the model on a busy machine): the summary holds a row for every actor that did.
    assert 1 <= len(summary["workers"]) <= 2, summary["workers"]
    assert sum(w["tracks"] for w in summary["workers"].values()) == 5
    for worker in summary["workers"].values():
        assert worker["device"].startswith("cpu:0") and worker["model_load_s"] > 0 and worker["compile_s"] > 0

    before = {rel: stamp for rel, stamp in files(out).items() if rel not in ("manifest.jsonl", "summary.json")}
    second = dataset_run(ray_cluster, tiny_checkpoint_dir, jax_cache, [library], out, "--workers", "2")
    assert exit_status(second) == 0, second.stderr[-3000:]
    assert "loaded ray: False" in second.stdout and "loaded jax: False" in second.stdout  # no cluster, no actor
    after = files(out)
    assert {rel: after[rel] for rel in before} == before
    assert sorted((r["key"], r["status"]) for r in manifest(out)) == [
        (k, "skipped") for k in sorted([*keys, "empty", "notes"])
    ]


def test_a_cluster_of_its_own_runs_quietly_with_token_authentication(tiny_checkpoint_dir, jax_cache, tmp_path):
    """Without --ray-address (and no RAY_ADDRESS or RAY_AUTH_MODE set) the command starts a local cluster for
    itself: a successful run prints its summary line and nothing on stderr (no token-authentication warning, no
    error-level line), and writes no token file into the home folder."""
    write_song(tmp_path / "in" / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    env.update(HOME=str(tmp_path / "home"), JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT))
    argv = ["separate-dataset", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--engine", "ray", "-q"]
    argv += [
        "--model",
        str(tiny_checkpoint_dir),
        "--segment",
        str(SEGMENT_SECONDS),
        "--compilation-cache",
        str(jax_cache),
    ]
    result = run_script("dataset_cli", env, *argv)
    assert exit_status(result) == 0, result.stderr[-3000:]
    assert f"{tmp_path / 'out'}: 1 separated, 0 skipped, 0 failed;" in result.stdout
    assert result.stderr == ""
    assert not (tmp_path / "home" / ".ray" / "auth_token").exists()


def test_killed_worker_is_retried_and_a_poison_input_fails_after_max_attempts(
    ray_cluster, tiny_checkpoint_dir, jax_cache, tmp_path
):
    """The test hook kills the actor mid-file: on its first attempt for `crash_once` (Ray restarts the actor and
    retries; the track ends `ok` with one manifest row), and on every attempt for `poison` (recorded `failed`
    after --max-attempts 2, without a third try); the job finishes and exits 1."""
    songs = tmp_path / "in"
    for name in ("crash_once", "poison", "fine"):
        write_song(songs / f"{name}.wav", 0.25, 44100, 2, subtype="PCM_16")
    out = tmp_path / "out"
    hook = {"HDEMUCS_FLAX_TEST_EXIT_ON": json.dumps({"crash_once": 1, "poison": 1000})}
    result = dataset_run(ray_cluster, tiny_checkpoint_dir, jax_cache, [songs], out, "--max-attempts", "2", env=hook)
    assert exit_status(result) == 1, result.stderr[-3000:]
    rows = {r["key"]: r for r in manifest(out)}
    assert len(manifest(out)) == 3
    assert rows["crash_once"]["status"] == "ok" and rows["crash_once"]["attempt"] == 2
    assert rows["fine"]["status"] == "ok"
    assert rows["poison"]["status"] == "failed" and "died on each of 2 attempts" in rows["poison"]["error"]
    digest = json.loads((out / "summary.json").read_text())["options_hash"]
    failed = json.loads((out / f"_hdemucs/markers/poison.{digest}.failed.json").read_text())
    assert len(failed["attempts"]) == 2 and len({a["worker"] for a in failed["attempts"]}) == 2  # two processes
    expected = [f"{key}/{stem}.flac" for key in ("crash_once", "fine") for stem in SOURCES]
    expected += [f"_hdemucs/markers/{key}.{digest}.done.json" for key in ("crash_once", "fine")]
    assert outputs(out) == sorted([*expected, f"_hdemucs/markers/poison.{digest}.failed.json"])


def test_sigterm_stops_a_ray_run_without_counting_an_attempt(ray_cluster, tiny_checkpoint_dir, jax_cache, tmp_path):
    """SIGTERM reaches the driver while an actor fetches its track (from a server that trickles it): the run ends
    with the command's one line and 143 (Ray's own handler would exit at once), the actors are stopped and the
    attempt the actor had counted is taken back, so the interrupt never adds up to a 'worker died' failure."""
    song = write_song(tmp_path / "song.wav", 0.25, 44100, 2, subtype="PCM_16").read_bytes()
    out = tmp_path / "out"
    address, env = ray_cluster
    with FileServer({"song.wav": trickle(song, 0.05)}) as server:
        listing = tmp_path / "songs.txt"
        listing.write_text(f"{server.url}/song.wav\n")
        argv = ["separate-dataset", str(listing), "-o", str(out), "--engine", "ray", "--ray-address", address, "-q"]
        argv += ["--model", str(tiny_checkpoint_dir), "--segment", str(SEGMENT_SECONDS)]
        process = start_command([*argv, "--compilation-cache", str(jax_cache)], env)
        wait_until(lambda: ("GET", "song.wav") in server.requests, process, "an actor fetches the track")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert error_lines(stderr) == ["error: terminated (SIGTERM); no partial stem files were kept"], stderr[-3000:]
    assert not (out / "_hdemucs" / "attempts" / "song.json").exists()
