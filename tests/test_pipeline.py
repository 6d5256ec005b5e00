"""The schedule as a pipeline: reading, chunking, blending and the consumer's work overlap with the network
(shown by the order of events, not by timing); batches span song boundaries without changing any song's
stems; a song that cannot be read fails alone; several devices give one device's stems and one compile."""

from __future__ import annotations

import functools
import json
import os
import tracemalloc

import numpy as np
import pytest

from modeling_hdemucs_flax import (
    AudioError,
    OptionError,
    OutputOptions,
    Separator,
    read_audio,
    separate_file,
    write_audio,
)
from modeling_hdemucs_flax.separation.file_output import separate_files
from modeling_hdemucs_flax.separation.separator import Signal, chunk_weight, overlap_add_stream

from .audio_files import write_corrupt
from .conftest import SEGMENT_SECONDS, SOURCES, SR
from .flows import REPO_ROOT, run_script
from .reference import error_report, music_like
from .separation_helpers import AffineStandIn, EventLog, nonzero_signal


def test_next_chunk_is_read_and_previous_output_consumed_while_the_network_runs():
    """While batch k is in the (stand-in) network, the pipeline reads the input of batch k + 1, and batch k - 1's
    output reaches the consumer before batch k is done. The stand-in network holds batch k until the log shows
    the read of block k + 2, the first one only chunk k + 1 needs (or the log's 3 s wait passes): an unpipelined
    schedule reads it only after the network's end, and hands on no output before it either."""
    segment, stride, block = 400, 300, 300  # chunk k covers blocks k and k + 1: each chunk needs one new block
    length = 12 * stride + segment
    x = nonzero_signal(2, length, seed=1)
    log = EventLog()
    stand_in = AffineStandIn([1.0, 2.0], [0.0, 0.0], (1, 2, segment))
    calls = []

    def network(batch):
        k = len(calls)
        calls.append(k)
        log.add("network start", k)
        log.wait_for(("read", k + 2))
        log.add("network end", k)
        return stand_in(batch)

    def reader():
        for i in range(0, length, block):
            log.add("read", i // block)
            yield x[:, i : i + block].copy()

    weight = chunk_weight(segment, segment - stride)
    out = []
    for piece in overlap_add_stream(
        reader(), length, network, channels=2, segment=segment, stride=stride, batch_size=1, weight=weight
    ):
        log.add("consumed", len(out))
        out.append(piece)
    np.testing.assert_allclose(np.concatenate(out, axis=-1), stand_in.expected(x), atol=2e-6)

    position = {event: i for i, event in enumerate(log.events)}
    batches = len(calls)
    assert batches == 13
    for k in range(batches - 1):  # the last batch has no next input to read
        assert position[("read", k + 2)] < position[("network end", k)], (k, log.events)
    for k in range(1, batches):  # the output of batch k - 1 is handed on while batch k is still running
        assert position[("consumed", k - 1)] < position[("network end", k)], (k, log.events)


class Dispatched:
    """What an asynchronous network (JAX's dispatch) returns: an output numpy must wait for. Converting it to numpy
    (`np.asarray`, the wait for the device) is logged as ("converted", batch)."""

    def __init__(self, values: np.ndarray, batch: int, log: list):
        self.values, self.batch, self.log = values, batch, log

    def __array__(self, dtype=None, copy=None):
        self.log.append(("converted", self.batch))
        return self.values if dtype is None else self.values.astype(dtype)


def test_the_next_batch_is_dispatched_before_the_previous_output_is_converted(tiny_pair):
    """Two batches in flight: for every batch k but the last, batch k + 1 is handed to the network before batch
    k's output is converted to numpy, so a device has the next batch queued while it hands back the previous one
    (a schedule that converts each output as soon as the network returns it leaves the device idle meanwhile).
    The stems are those of the same network returning numpy, bit for bit; the model's own forward pass returns
    a `jax.Array` without waiting for it."""
    _, _, model = tiny_pair
    log: list[tuple[str, int]] = []
    shape = Separator(model, segment=SEGMENT_SECONDS, batch_size=2).input_shape
    stand_in = AffineStandIn([1.0, -1.0, 0.5, 2.0], [0.0] * 4, shape, poison=False)

    def network(batch):
        k = sum(kind == "dispatched" for kind, _ in log)
        log.append(("dispatched", k))
        return Dispatched(stand_in(batch), k, log)

    song = music_like(60000, 2, seed=8)
    got = Separator(model, segment=SEGMENT_SECONDS, batch_size=2, forward=network).separate(song, SR)
    want = Separator(model, segment=SEGMENT_SECONDS, batch_size=2, forward=stand_in).separate(song, SR)
    for name in SOURCES:
        np.testing.assert_array_equal(got[name], want[name])
    position = {event: i for i, event in enumerate(log)}
    batches = len(position) // 2
    assert batches == stand_in.calls // 2 > 2
    for k in range(batches - 1):
        assert position[("dispatched", k + 1)] < position[("converted", k)], (k, log)

    import jax

    separator = Separator(model, segment=SEGMENT_SECONDS, batch_size=2)
    assert isinstance(separator.forward(np.zeros(separator.input_shape, np.float32)), jax.Array)


def test_memory_held_for_blending_does_not_grow_with_the_batch_size(tiny_pair):
    """Beyond the two batches in flight (each one's input and output), separating with batches of 16 chunks holds
    no more memory than with batches of 1: each chunk's output is blended and its finished samples handed on as
    it is added, so the float64 sums span about one segment whatever the batch size. (Sums spanning a whole
    batch, copied for every chunk added, made the host side 3x slower at batch 16 than at batch 1 with a network
    that costs nothing: `benchmarks/bench_batch_size.py --stand-in`.) Peak traced allocations, not time."""
    _, _, model = tiny_pair
    song = nonzero_signal(2, 600_000, seed=9)

    def beyond_batches(batch_size: int) -> int:
        separator = Separator(
            model, segment=SEGMENT_SECONDS, batch_size=batch_size, forward=lambda b: np.stack([b] * len(SOURCES), 1)
        )
        in_flight = 2 * np.zeros(separator.input_shape, np.float32).nbytes * (1 + len(SOURCES))

        def blocks():
            return (song[:, i : i + 65536] for i in range(0, song.shape[1], 65536))

        tracemalloc.start()
        try:
            assert sum(block.shape[-1] for block in separator.stream(blocks, 2, SR)) == song.shape[1]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return peak - in_flight

    one, sixteen = beyond_batches(1), beyond_batches(16)
    print(f"[memory] beyond the batches in flight: {one / 1e6:.2f} MB at batch 1, {sixteen / 1e6:.2f} MB at batch 16")
    assert sixteen < 1.3 * one  # measured 2.0 vs 3.0 MB (before: 26 vs 2.8 MB)


def test_batches_span_songs_and_leave_every_song_unchanged(tiny_pair):
    """Three songs of different lengths and rates through one schedule with batches of 4 give the stems each
    song gets alone, and the network runs ceil(total chunks / 4) times: the batches are full across songs."""
    config, _, model = tiny_pair
    songs = [
        (music_like(3000, 2, seed=1), SR),
        (music_like(30000, 1, seed=2, sample_rate=48000), 48000),
        (music_like(12000, 2, seed=3), SR),
    ]
    alone = Separator(model, segment=SEGMENT_SECONDS, batch_size=4)
    want = [alone.separate(audio, rate) for audio, rate in songs]
    chunks = sum(alone.chunks_total(audio.shape[-1], rate) for audio, rate in songs)

    calls = []
    separator = Separator(
        model, segment=SEGMENT_SECONDS, batch_size=4, forward=lambda batch: calls.append(1) or alone.forward(batch)
    )
    signals = [
        Signal(functools.partial(iter, [audio]), audio.shape[0], rate, f"song{i}")
        for i, (audio, rate) in enumerate(songs)
    ]
    got: dict[int, list[np.ndarray]] = {i: [] for i in range(len(songs))}
    done = []
    for event in separator.stream_many(signals):
        assert event.kind != "failed", event
        if event.kind == "block":
            assert event.index not in done
            got[event.index].append(event.value)
        else:
            done.append(event.index)
    assert done == [0, 1, 2]
    assert len(calls) == -(-chunks // 4) and chunks > 4
    for i, (audio, _) in enumerate(songs):
        stems = np.concatenate(got[i], axis=-1)
        assert stems.shape == (len(config.sources), *audio.shape)
        _, db = error_report(f"cross-song batch, song {i}", stems, np.stack([want[i][s] for s in SOURCES]), -120)
        assert db < -120


def test_a_song_that_cannot_be_read_fails_alone(tiny_pair, tmp_path):
    """A file that breaks while it is being read, an unreadable file and a good file through one schedule:
    the two bad ones are reported failed with their one-line errors and leave no stem file, the good one is
    separated exactly as alone."""
    _, _, model = tiny_pair
    separator = Separator(model, segment=SEGMENT_SECONDS, batch_size=2)

    song, passes = music_like(40000, 2, seed=4), []

    def breaks_midway():  # the statistics pass reads it whole; the separating pass breaks halfway
        passes.append(1)
        yield song[:, :20000]
        if len(passes) > 1:
            raise AudioError("broken.flac: cannot decode audio after 20000 of 40000 frames")
        yield song[:, 20000:]

    good = music_like(15000, 2, seed=5)
    signals = [Signal(breaks_midway, 2, SR, "broken.flac"), Signal(functools.partial(iter, [good]), 2, SR, "good")]
    events = list(separator.stream_many(signals))
    failed = [e for e in events if e.kind == "failed"]
    assert [(e.index, str(e.value)) for e in failed] == [
        (0, "broken.flac: cannot decode audio after 20000 of 40000 frames")
    ]
    assert [e.index for e in events if e.kind == "done"] == [1]
    stems = np.concatenate([e.value for e in events if e.kind == "block" and e.index == 1], axis=-1)
    alone = separator.separate(good, SR)
    np.testing.assert_array_equal(stems, np.stack([alone[s] for s in SOURCES]))

    songs = [
        write_audio(tmp_path / "in" / "first.wav", music_like(9000, 2, seed=6), SR, subtype="FLOAT"),
        write_corrupt(tmp_path / "in" / "corrupt.wav"),
        write_audio(tmp_path / "in" / "last.wav", music_like(7000, 1, seed=7), SR, subtype="FLOAT"),
    ]
    exact = OutputOptions(clip_mode="none", subtype="FLOAT")
    results = list(separate_files(separator, songs, tmp_path / "out", exact))
    assert [r.path for r in results] == songs
    assert results[1].stems is None and "corrupt.wav: not a readable audio file" in str(results[1].error)
    for result in (results[0], results[2]):
        assert result.error is None and sorted(result.stems) == sorted(SOURCES)
        single = separate_file(separator, result.path, tmp_path / "alone", exact)
        for stem, path in result.stems.items():
            # samples, not bytes: libsndfile's PEAK chunk in float WAVs holds the second it was written
            np.testing.assert_array_equal(read_audio(path)[0], read_audio(single[stem])[0])
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["first", "last"]


def test_batches_split_over_devices_equal_one_device(tiny_checkpoint_dir, jax_cache, tmp_path):
    """With two (forced) CPU devices, batches split over both give one device's stems — for one song and for
    songs sharing batches — and the network is compiled once for the sharded batch."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "HDEMUCS_FLAX_COMPILATION_CACHE": str(jax_cache),
    }
    result = run_script("multi_device", env, str(tiny_checkpoint_dir), str(SEGMENT_SECONDS), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    print(report)
    assert report["devices"] == 2
    assert report["sharded_compiles"] == 1
    for name, db in report["relative_db"].items():
        assert db < -120, (name, db)  # measured: identical, or float32 round-off


def test_batch_size_must_divide_over_the_devices(tiny_pair):
    _, _, model = tiny_pair
    import jax

    with pytest.raises(OptionError, match="batch_size=3: must be a multiple of the 2 devices"):
        Separator(model, batch_size=3, devices=[jax.devices()[0]] * 2)
