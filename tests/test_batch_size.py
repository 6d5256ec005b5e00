"""`--batch-size auto`: 1 on CPU without measuring; on an accelerator the fastest batch size, measured once (the
throughput of 1, 2, 4, ... until doubling gains under 10 % or memory runs out) and cached, so a second run measures
nothing. The tuner is driven here by a stand-in network whose cost per batch size the test sets (and a clock that
only it advances), and the command line's path by the tiny network with the CPU standing in for a GPU."""

from __future__ import annotations

import json
import sys

import jax
import numpy as np
import pytest

from modeling_hdemucs_flax import Separator
from modeling_hdemucs_flax.apps.cli import main
from modeling_hdemucs_flax.options import default_batch_size
from modeling_hdemucs_flax.separation import batch_tuning
from modeling_hdemucs_flax.separation.batch_tuning import tune_batch_size

from .audio_files import write_song
from .conftest import SEGMENT_SECONDS

CHUNK = (2, 64)  # (channels, segment samples) of the stand-in's batches
KEY = {"device_kind": "stand-in", "segment_samples": 64, "dtype": "float32"}


class CostedNetwork:
    """A stand-in network whose forward pass of batch size b costs `overhead + per_chunk * b` seconds on a clock
    only it advances, and that runs out of memory (XLA's error) from batch size `memory_limit` on. Records the
    batch sizes it ran."""

    def __init__(self, overhead: float, per_chunk: float, memory_limit: int | None = None):
        self.overhead, self.per_chunk, self.memory_limit = overhead, per_chunk, memory_limit
        self.now, self.sizes = 0.0, []

    def clock(self) -> float:
        return self.now

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        size = batch.shape[0]
        assert batch.shape[1:] == CHUNK and batch.dtype == np.float32
        self.sizes.append(size)
        if self.memory_limit is not None and size >= self.memory_limit:
            raise jax.errors.JaxRuntimeError(
                f"RESOURCE_EXHAUSTED: Out of memory while trying to allocate {size * 0.5:.2f}GiB."
            )
        self.now += self.overhead + self.per_chunk * size
        return np.zeros((size, 4, *CHUNK), np.float32)


def tune(network: CostedNetwork, folder, key=KEY):
    return tune_batch_size(network, CHUNK, key, folder, device="stand-in", clock=network.clock)


def test_default_batch_size_per_platform():
    assert [default_batch_size(p) for p in ("cpu", "gpu", "cuda", "ROCM", "tpu", "metal")] == [1, 8, 8, 8, 8, 1]


def test_the_fastest_batch_size_is_measured_once_then_read_from_the_cache(tmp_path):
    """With a fixed cost per pass of 1 s plus 0.1 s per chunk, throughput is b / (1 + 0.1 b) chunks per second:
    doubling from 64 to 128 gains 7 % (< 10 %), so 64 is chosen. The choice is cached; the same key reads it back
    without running the network; another key (another segment) measures again."""
    network = CostedNetwork(overhead=1.0, per_chunk=0.1)
    choice = tune(network, tmp_path)
    assert (choice.batch_size, choice.how) == (64, "measured")
    assert sorted(choice.throughput) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert choice.throughput[64] == pytest.approx(64 / 7.4) and choice.throughput[128] == pytest.approx(128 / 13.8)
    assert choice.stopped == "batch size 128 gained less than 10%"
    assert set(network.sizes) == {1, 2, 4, 8, 16, 32, 64, 128}
    [entry] = list(tmp_path.iterdir())
    assert entry == choice.path and json.loads(entry.read_text())["batch_size"] == 64
    status = choice.status()
    assert status.startswith("batch size: 64, the fastest on stand-in, measured now (chunks per second by batch size:")
    assert status.endswith(f"batch size 128 gained less than 10%); cached in {entry}")

    again = CostedNetwork(overhead=1.0, per_chunk=0.1)
    cached = tune(again, tmp_path)
    assert again.sizes == []  # nothing measured
    assert (cached.batch_size, cached.how, cached.throughput) == (64, "cached", choice.throughput)
    assert "measured by an earlier run" in cached.status()

    other = CostedNetwork(overhead=0.0, per_chunk=0.1)  # no fixed cost: batching gains nothing
    assert tune(other, tmp_path, {**KEY, "segment_samples": 128}).batch_size == 1
    assert other.sizes == [1, 1, 1, 1, 2, 2, 2, 2]  # one untimed pass, then three timed, per size
    assert len(list(tmp_path.iterdir())) == 2


def test_running_out_of_memory_ends_the_measurement_at_the_last_size_that_fit(tmp_path):
    choice = tune(CostedNetwork(overhead=1.0, per_chunk=0.1, memory_limit=16), tmp_path)
    assert (choice.batch_size, choice.stopped) == (8, "batch size 16 ran out of memory")
    assert sorted(choice.throughput) == [1, 2, 4, 8]
    with pytest.raises(jax.errors.JaxRuntimeError, match="RESOURCE_EXHAUSTED"):  # nothing fits: said as it is
        tune(CostedNetwork(overhead=1.0, per_chunk=0.1, memory_limit=1), tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_an_unreadable_or_foreign_cache_entry_is_measured_again(tmp_path):
    choice = tune(CostedNetwork(overhead=1.0, per_chunk=0.1), tmp_path)
    for content in ("{not json", json.dumps({"key": {**KEY, "dtype": "bfloat16"}, "batch_size": 2})):
        assert choice.path is not None
        choice.path.write_text(content)
        network = CostedNetwork(overhead=1.0, per_chunk=0.1)
        again = tune(network, tmp_path)
        assert (again.batch_size, again.how) == (64, "measured") and network.sizes
    assert json.loads(choice.path.read_text())["key"] == KEY


def test_the_command_line_says_its_batch_size_and_measures_it_once_on_an_accelerator(
    tiny_checkpoint_dir, jax_cache, tmp_path, capsys, monkeypatch
):
    """`hdemucs-flax separate` with the default `--batch-size auto`: on CPU batch size 1, unmeasured, said in a
    status line; with the CPU standing in for an accelerator the first run measures (its status says so), uses
    the size it chose and caches it, and the second run uses the cached size without measuring. An explicit
    `--batch-size` is used as given."""
    monkeypatch.setenv("HDEMUCS_FLAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # status lines are for terminals
    used = []
    warmup = Separator.warmup
    monkeypatch.setattr(Separator, "warmup", lambda self: used.append(self.batch_size) or warmup(self))
    song = write_song(tmp_path / "song.wav", 0.3, 44100, 2, subtype="PCM_16")

    def separate(out: str, *flags: str) -> list[str]:
        argv = ["separate", str(song), "-o", str(tmp_path / out), "--model", str(tiny_checkpoint_dir)]
        argv += ["--segment", str(SEGMENT_SECONDS), "--compilation-cache", str(jax_cache), *flags]
        assert main(argv) == 0
        assert len(list((tmp_path / out).rglob("*.wav"))) == 4
        return [line for line in capsys.readouterr().err.splitlines() if "batch size" in line]

    assert separate("cpu") == ["batch size: 1 (the default on cpu; --batch-size N sets another)"]
    assert used == [1] and not (tmp_path / "cache" / "batch-size").exists()

    monkeypatch.setattr(batch_tuning, "TUNED_PLATFORMS", ("cpu",))  # the CPU standing in for a GPU
    measuring, measured = separate("first")
    assert measuring == "measuring the fastest batch size on cpu:0 (once; the result is cached) ..."
    [entry] = list((tmp_path / "cache" / "batch-size").iterdir())
    chosen = json.loads(entry.read_text())["batch_size"]
    assert measured.startswith(f"batch size: {chosen}, the fastest on cpu:0, measured now (chunks per second")
    assert measured.endswith(f"; cached in {entry}") and used[-1] == chosen

    [cached] = separate("second")
    assert cached.startswith(f"batch size: {chosen}, the fastest on cpu:0, measured by an earlier run (")
    assert used[-1] == chosen

    assert separate("explicit", "--batch-size", "3") == [] and used[-1] == 3
