"""The benchmarks run, so that they cannot rot: `benchmarks/bench_gpu.py --smoke` (the tiny config on the CPU) as
a user runs it, and its rule that a row running out of memory is reported and the run goes on;
`benchmarks/bench_host.py --smoke` (the host side with a stand-in network) and its stand-in;
`benchmarks/bench_ray_shapes.py --smoke` (the Ray engine's two shapes with that stand-in)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest
import torch

from .flows import REPO_ROOT

BENCH_GPU = REPO_ROOT / "benchmarks" / "bench_gpu.py"
BENCH_HOST = REPO_ROOT / "benchmarks" / "bench_host.py"
BENCH_RAY_SHAPES = REPO_ROOT / "benchmarks" / "bench_ray_shapes.py"


def run_smoke(script: Path, rows_file: Path, env: dict, *extra: str) -> subprocess.CompletedProcess:
    """`script --smoke --jsonl rows_file` in a subprocess (in the rows file's folder), which must succeed; its
    table is printed."""
    done = subprocess.run(
        [sys.executable, str(script), "--smoke", "--jsonl", str(rows_file), *extra],
        env=env,
        cwd=rows_file.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout)
    return done


def test_bench_gpu_smoke_measures_every_row_and_the_parity(jax_cache, tmp_path):
    """Every (dtype, batch size) row of our Separator (loaded from a saved folder, as the command line loads it)
    and of torchaudio's forward pass has its figures; demucs's apply_model rows appear when demucs imports, else a
    line says it is missing; the float32 parity against torchaudio is printed and within -100 dB."""
    rows_file = tmp_path / "rows.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "HDEMUCS_FLAX_COMPILATION_CACHE": str(jax_cache),
        "HDEMUCS_FLAX_CACHE": str(tmp_path / "cache"),
    }
    done = run_smoke(BENCH_GPU, rows_file, env)
    assert "default device cpu; network on cpu:0; torch on cpu;" in done.stdout
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    measured = {(r["pipeline"], r["dtype"], r["batch_size"]): r for r in rows if r["pipeline"] != "parity"}
    grid = {(dtype, batch) for dtype in ("float32", "tensorfloat32", "bfloat16") for batch in (1, 2)}
    assert {(d, b) for p, d, b in measured if p == "flax Separator"} == grid
    assert {(d, b) for p, d, b in measured if p == "torchaudio forward"} == grid
    for (pipeline, _, _), row in measured.items():
        assert "error" not in row, row
        figures = ("compile_s", "forward_x_rt", "separate_x_rt") if pipeline == "flax Separator" else ()
        figures += ("forward_x_rt",) if pipeline == "torchaudio forward" else ()
        figures += ("separate_x_rt",) if pipeline == "demucs apply_model" else ()
        assert all(row[name] > 0 for name in figures), row
    demucs = importlib.util.find_spec("demucs") is not None
    assert {d for p, d, _ in measured if p == "demucs apply_model"} == (
        {"float32", "tensorfloat32", "bfloat16"} if demucs else set()
    )
    assert demucs or "demucs not installed: no apply_model rows (pip install '.[bench]')" in done.stdout
    [parity] = [r for r in rows if r["pipeline"] == "parity"]
    assert parity["db"] < -100  # measured -138 dB on the CPU
    assert f"TF32 off on both sides: {parity['db']:.1f} dB (target <= -100 dB)" in done.stdout


def test_bench_gpu_smoke_covers_htdemucs_against_demucs(jax_cache, tmp_path):
    """`--architecture htdemucs`: random weights drawn in demucs's own HTDemucs (the reference) and converted;
    every row of ours, of demucs's forward pass and of its apply_model has its figures, and the float32 parity
    against demucs is within -100 dB."""
    rows_file = tmp_path / "rows.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HDEMUCS_FLAX_COMPILATION_CACHE": str(jax_cache)}
    run_smoke(BENCH_GPU, rows_file, env, "--architecture", "htdemucs", "--dtypes", "float32")
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    measured = {(r["pipeline"], r["dtype"], r["batch_size"]): r for r in rows if r["pipeline"] != "parity"}
    grid = {("float32", 1), ("float32", 2)}  # the other dtypes run the same code as for HDemucs (test above)
    assert {(d, b) for p, d, b in measured if p == "flax Separator"} == grid
    assert {(d, b) for p, d, b in measured if p == "demucs forward"} == grid
    assert {d for p, d, _ in measured if p == "demucs apply_model"} == {"float32"}
    assert all("error" not in row for row in measured.values()), rows
    [parity] = [r for r in rows if r["pipeline"] == "parity"]
    assert parity["db"] < -100, parity


def load_benchmark(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_a_row_that_runs_out_of_memory_says_so_and_the_run_goes_on(tmp_path, capsys):
    """XLA's RESOURCE_EXHAUSTED and torch's OutOfMemoryError end their own row only ("out of memory", also in the
    JSON lines); any other error ends the run."""
    bench = load_benchmark(BENCH_GPU)
    table = bench.Table(str(tmp_path / "rows.jsonl"))

    def xla_out_of_memory():
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 38.00GiB.")

    def torch_out_of_memory():
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    def broken():
        raise RuntimeError("device lost")

    assert table.row("flax Separator", "float32", 32, xla_out_of_memory)["error"] == "out of memory"
    assert table.row("torchaudio forward", "float32", 32, torch_out_of_memory)["error"] == "out of memory"
    after = table.row("flax Separator", "bfloat16", 1, lambda: {"compile_s": 1.0, "forward_x_rt": 50.0})
    assert after == {
        "pipeline": "flax Separator",
        "dtype": "bfloat16",
        "batch_size": 1,
        "compile_s": 1.0,
        "forward_x_rt": 50.0,
    }
    with pytest.raises(RuntimeError, match="device lost"):
        table.row("flax Separator", "float32", 1, broken)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["flax", "Separator", "float32", "32", "-", "-", "-", "out", "of", "memory"]
    assert lines[2].split() == ["torchaudio", "forward", "float32", "32", "-", "-", "-", "out", "of", "memory"]
    assert lines[3].split() == ["flax", "Separator", "bfloat16", "1", "1.0", "50.0x", "-"]
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    assert [row.get("error") for row in rows] == ["out of memory", "out of memory", None]


def test_bench_host_smoke_measures_every_row(tmp_path):
    """Every stage of both smoke routes, the end-to-end rows (a free stand-in for each route, and the 1 ms per
    audio-second feed check for the headline route mp3-flac, on one CPU) and the projection have positive figures in
    the JSON lines; no timing is asserted."""
    rows_file = tmp_path / "rows.jsonl"
    done = run_smoke(BENCH_HOST, rows_file, {**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    routes = ("wav-wav", "mp3-flac")
    stages = {(r["route"], r["stage"]): r["ms_per_audio_s"] for r in rows if r["table"] == "stage"}
    expected = {"decode", "statistics", "normalise", "schedule", "stand_in_output", "encode"}  # no resample_out
    assert set(stages) == {(route, stage) for route in routes for stage in expected}
    assert all(ms > 0 for ms in stages.values()), stages
    runs = {(r["route"], r["cpus"], r["cost_ms"]): r for r in rows if r["table"] == "end_to_end"}
    assert set(runs) == {("wav-wav", 1, 0.0), ("mp3-flac", 1, 0.0), ("mp3-flac", 1, 1.0)}
    for (_, _, cost), run in runs.items():
        assert run["audio_s"] == pytest.approx(6.0, abs=0.1)  # 2 songs of 3 s (MP3's decoded length, near)
        assert all(run[name] > 0 for name in ("host_ms_per_audio_s", "x_realtime", "wall_s", "peak_rss_mb")), run
        assert 0 < run["wait_fraction"] < 1 if cost else run["wait_fraction"] == 1.0, run  # a free stand-in waits
    projection = {r["route"]: r["cores_per_accelerator_at_1000x"] for r in rows if r["table"] == "projection"}
    assert set(projection) == set(routes) and all(cores > 0 for cores in projection.values())
    assert "no two-CPU against one-CPU ratio: CPU counts measured [1]" in done.stdout


def test_the_host_benchmarks_stand_in_and_its_io_workers_adaptation():
    """The stand-in sleeps its cost per audio-second of the batch and returns a quarter of the input per source (or
    zeros); `io_workers` reaches only functions that take it, and only when asked for."""
    import numpy as np

    bench = load_benchmark(BENCH_HOST)
    batch = np.random.default_rng(0).standard_normal((2, 2, 4410)).astype(np.float32)  # 0.2 s of audio
    network = bench.StandInNetwork(cost_ms=100.0, sample_rate=44100, sources=4)
    out = network(batch)
    assert out.shape == (2, 4, 2, 4410) and out.dtype == np.float32 and out.flags.writeable
    np.testing.assert_array_equal(out, np.broadcast_to(batch[:, None] * np.float32(0.25), out.shape))
    assert network.busy >= 0.02  # 100 ms per audio-second x 0.2 s
    free = bench.StandInNetwork(cost_ms=0.0, sample_rate=44100, sources=4, output="zeros")
    assert not free(batch).any() and free.busy == 0.0

    def with_workers(paths, *, io_workers=None): ...

    def without(paths): ...

    assert bench.io_workers_kwargs(with_workers, 3) == {"io_workers": 3}
    assert bench.io_workers_kwargs(with_workers, None) == {}
    assert bench.io_workers_kwargs(without, 3) == {}


def test_bench_ray_shapes_smoke_runs_both_shapes_to_the_same_stems(tmp_path):
    """One song through today's Ray engine (A: `separate_dataset(engine="ray", network=...)`) and the Ray Data
    prototype (B: decode tasks -> network actor -> encode tasks) on a local cluster the script starts: both rows have
    positive figures, only B moves audio through the object store, and every stem's decoded samples agree."""
    pytest.importorskip("ray")
    rows_file = tmp_path / "rows.jsonl"
    done = run_smoke(BENCH_RAY_SHAPES, rows_file, {**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    rows = [json.loads(line) for line in rows_file.read_text().splitlines()]
    runs = {(r["shape"], r["cost_ms"]): r for r in rows if r["table"] == "shape"}
    assert set(runs) == {("A", 0.0), ("B 1/0/1", 0.0)}
    for run in runs.values():
        assert run["audio_s"] == pytest.approx(10.0, abs=0.1)  # 1 song of 10 s (MP3's decoded length, near)
        assert all(run[name] > 0 for name in ("wall_s", "x_realtime", "cpu_ms_per_audio_s", "peak_pss_mb")), run
    assert runs["A", 0.0]["object_store_mb"] == 0 and runs["B 1/0/1", 0.0]["object_store_mb"] > 0
    [stems] = [r for r in rows if r["table"] == "stems"]
    assert stems["stems"] == stems["identical"] == 4 and stems["max_abs"] == 0, stems
    table = [line.split()[0] for line in done.stdout.splitlines() if line.split()[:1] in (["A"], ["B"])]
    assert table[:2] == ["A", "B"]


def test_bench_train_smoke_reports_the_step_and_the_data_wait(jax_cache, tmp_path):
    """The training benchmark on the tiny config: a row with the first and median step, the cost per second of
    training audio and the data-wait fraction, the CPU named."""
    rows_file = tmp_path / "rows.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HDEMUCS_FLAX_COMPILATION_CACHE": str(jax_cache)}
    run_smoke(REPO_ROOT / "benchmarks" / "bench_train.py", rows_file, env, "--batch-size", "2", "--steps", "3")
    (row,) = [json.loads(line) for line in rows_file.read_text().splitlines()]
    assert row["architecture"] == "tiny" and row["steps"] == 3 and row["cpu"]
    assert row["median_step_s"] > 0 and row["s_per_audio_s"] > 0 and 0 <= row["data_wait"] < 1
