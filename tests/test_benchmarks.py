"""The benchmarks run, so that they cannot rot: `benchmarks/bench_gpu.py --smoke` (the tiny config on the CPU) as
a user runs it, and its rule that a row running out of memory is reported and the run goes on."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import jax
import pytest
import torch

from .flows import REPO_ROOT

BENCH_GPU = REPO_ROOT / "benchmarks" / "bench_gpu.py"


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
    done = subprocess.run(
        [sys.executable, str(BENCH_GPU), "--smoke", "--jsonl", str(rows_file)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    print(done.stdout)
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


def load_bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", BENCH_GPU)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_row_that_runs_out_of_memory_says_so_and_the_run_goes_on(tmp_path, capsys):
    """XLA's RESOURCE_EXHAUSTED and torch's OutOfMemoryError end their own row only ("out of memory", also in the
    JSON lines); any other error ends the run."""
    bench = load_bench_gpu()
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
