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

from modeling_hdemucs_flax.apps.dataset_ray import actor_environment
from modeling_hdemucs_flax.apps.dataset_worker import WorkerResources

from .audio_files import write_song
from .conftest import SEGMENT_SECONDS, SOURCES
from .dataset_helpers import start_command, usage_message, wait_until
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
        assert worker["devices"] == ["cpu:0"] and worker["batch_size"] == 1
        # holding no GPU, it sees none (Ray leaves CUDA_VISIBLE_DEVICES unset) and starts JAX's CPU backend only
        assert worker["environment"]["CUDA_VISIBLE_DEVICES"] == "" and worker["environment"]["JAX_PLATFORMS"] == "cpu"

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


def test_workers_see_the_gpus_they_hold_and_half_a_gpu_caps_jax_memory(
    ray_cluster, tiny_checkpoint_dir, jax_cache, tmp_path, monkeypatch
):
    """On the session's cluster, whose 2 GPUs exist for Ray's scheduler only (the test hook makes the workers
    compute on the CPU): workers holding half a GPU each see that GPU (Ray's CUDA_VISIBLE_DEVICES) and let JAX's
    pool take at most 90 % of their half, as needed, which jaxlib's GPU client reads as such; a worker holding a
    whole GPU sees it and keeps JAX's defaults. (A worker holding none sees none: the first test.)"""
    from jaxlib import xla_client

    for name in ("one", "two"):
        write_song(tmp_path / "in" / f"{name}.wav", 0.25, 44100, 2, subtype="PCM_16")
    hook = {"HDEMUCS_FLAX_TEST_COMPUTE_ON": "cpu"}
    seen = {}
    for gpus, workers in (("0.5", "2"), ("1", "1")):
        out = tmp_path / f"out-{gpus}"
        flags = ["--gpus-per-worker", gpus, "--workers", workers, "--cpus-per-worker", "0.5"]
        result = dataset_run(ray_cluster, tiny_checkpoint_dir, jax_cache, [tmp_path / "in"], out, *flags, env=hook)
        assert exit_status(result) == 0, result.stderr[-3000:]
        seen[gpus] = [w["environment"] for w in json.loads((out / "summary.json").read_text())["workers"].values()]
    memory = ("XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_PREALLOCATE")
    for environment in seen["0.5"] + seen["1"]:
        assert environment["CUDA_VISIBLE_DEVICES"] in ("0", "1") and environment["JAX_PLATFORMS"] is None
    for environment in seen["1"]:
        assert [environment[name] for name in memory] == [None, None, None]
    for environment in seen["0.5"]:
        assert [environment[name] for name in memory] == ["0.45", None, "false"]
        for name in memory:  # this process's environment as the actor's was
            monkeypatch.delenv(name, raising=False)
            if environment[name] is not None:
                monkeypatch.setenv(name, environment[name])
        options = xla_client.generate_pjrt_gpu_plugin_options()  # what JAX's CUDA plugin starts its client with
        assert options["memory_fraction"] == 0.45 and options["preallocate"] is False


def test_each_actor_environment_follows_what_it_holds():
    """`actor_environment` for each kind of worker; a node's old-named memory fraction is removed beside the new
    one (jaxlib refuses both)."""
    cpu, tpu = WorkerResources(), WorkerResources(tpus_per_worker=4)
    assert actor_environment("cpu", cpu) == {"JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    assert actor_environment("tpu", tpu) == {"JAX_PLATFORMS": None, "CUDA_VISIBLE_DEVICES": ""}
    assert actor_environment("gpu", WorkerResources(gpus_per_worker=2)) == {"JAX_PLATFORMS": None}
    assert actor_environment("gpu", WorkerResources(gpus_per_worker=0.25)) == {
        "JAX_PLATFORMS": None,
        "XLA_CLIENT_MEM_FRACTION": "0.225",
        "XLA_PYTHON_CLIENT_MEM_FRACTION": None,
        "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
    }


def test_device_and_resources_that_disagree_are_usage_errors_before_ray_starts(tmp_path):
    """Each is a one-line usage error naming the flag, answered before Ray or JAX is imported."""
    write_song(tmp_path / "in" / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    base = ["separate-dataset", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--engine", "ray"]
    base += ["--model", str(tmp_path / "no_model")]  # never looked for: the usage error comes first
    cases = {
        ("--device", "gpu"): "--device gpu: the workers hold no GPU: reserve some with --gpus-per-worker",
        ("--device", "tpu"): "--device tpu: the workers hold no TPU: reserve some with --tpus-per-worker",
        ("--device", "cpu", "--gpus-per-worker", "1"): (
            "--device cpu: the workers hold GPUs (--gpus-per-worker) they would not use: drop --gpus-per-worker or "
            "--device"
        ),
        ("--gpus-per-worker", "1.5"): "--gpus-per-worker 1.5: must be a fraction of one GPU or whole GPUs",
        ("--tpus-per-worker", "3"): "--tpus-per-worker 3: must be 0 or one of 1, 2, 4, 8",
        ("--gpus-per-worker", "1", "--tpus-per-worker", "4"): (
            "--tpus-per-worker 4: a worker holds GPUs or TPU chips, not both"
        ),
    }
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    for flags, message in cases.items():
        result = run_script("dataset_cli", env, *base, *flags)
        assert exit_status(result) == 2, (flags, result.stderr[-3000:])
        assert usage_message(result.stderr) == message
        assert "loaded ray: False" in result.stdout and "loaded jax: False" in result.stdout
    assert not (tmp_path / "out").exists()
