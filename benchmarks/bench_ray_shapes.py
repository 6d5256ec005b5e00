"""Two shapes for the Ray engine, measured side by side with a stand-in network (issue 18, item 3; a benchmark that
prints a table, not a test. `--smoke` is the seconds-long run CI makes.)

    A  today's engine, `separate_dataset(..., engine="ray")`: one actor per accelerator (`RayTrackWorker`), each
       separating whole tracks (`separate_file`) with its own host I/O pool of `cpus_per_worker` threads around
       its network; only paths and manifest rows travel through Ray.
    B  Ray Data stages apart (a prototype that lives here only), one row per song:
         decode   CPU tasks or a pool of CPU actors: decode, mix statistics, normalise, resample, cut into chunks
         network  one actor holding the stand-in's device (a custom resource, as it would hold a GPU): forward passes
         encode   CPU tasks or a pool of CPU actors: overlap-add, de-normalise, 4 stems encoded and renamed into place
       so the chunks (4/3 of the song: 85 MB for 3 minutes of float32 stereo) and the network's output (4 sources:
       340 MB) go through Ray's object store. `--sizing decode/network/encode`: a CPU stage as Ray CPUs per task
       ("1") or a fixed pool of actors and the CPUs of each ("2x0.75"), the network actor as its CPUs ("0").

Both run the same songs (`--songs` synthetic songs of `--seconds`, MP3 320 kbps, made by bench_host's
`make_inputs`) into 4 FLAC stems, on one local Ray cluster this script starts (`--cpus` CPUs, `--object-store-mb`),
with the same stand-in network (bench_host's `StandInNetwork`: sleeps `--cost-ms` per audio-second of each batch,
returns a quarter of the chunk per source) made by `StandInMaker` from the same tiny random-weight model folder (its
shape alone matters: 4 sources, stereo, 44.1 kHz, 7.8 s segments, overlap 0.25, batch 1). A gets it through
`separate_dataset(network=...)`; B's network actor loads the same folder and applies the same maker. B's stages call
the product's own pieces in the product's order (`iter_audio_blocks`, `mix_statistics`, `_resample_stream`,
`plan_chunks`, `OverlapAdd` popped after every chunk, `_SongOutput`, `StemWriter`, `commit_all`), and the run checks
that every stem's decoded samples are identical between the shapes.

Figures per shape and stand-in cost, each run a fresh `separate_dataset` call or Ray Data job on the running cluster
(A's actor, and B's actors, start, import JAX and the model stack, and load the model in it):

  wall s          from the call to its return
  first song s    when the first song's stems were committed (A: its row reached the driver; B: its encode ended)
  x realtime      audio-seconds / wall
  CPU ms/audio-s  CPU seconds of every process of the cluster (this process and its descendants: the driver, Ray's
                  own processes, workers and actors; `ClusterMeter`) per audio-second, split driver/ray/workers
  obj store MB    what the stages put into the object store: B's chunks and network outputs; A: paths and rows (0)
  peak PSS MB     the largest sum of proportional set sizes over the cluster's processes (shared object-store pages
                  counted once); the idle cluster's figure is printed before the runs
  steady          from the commit of song `--warm-songs` to the last: the songs committed in between per second
                  (x realtime), the cluster's CPU over that window per audio-second, and the stand-in's sleeping
                  time over the window (net busy: what a 1000x accelerator would be used). What a long job approaches:
                  start-up and the first songs' pipeline filling are left out; actors started later (tasks that Ray
                  Data scales out) count.

Noise: the machine may be shared; the CPU name and the load average are printed before and after, the shapes run in
alternating order (`--repeats`), and only figures of one run should be compared.

    python benchmarks/bench_ray_shapes.py --repeats 2    # 8 songs of 3 minutes, stand-in at 0 and 1 ms (docs)
    python benchmarks/bench_ray_shapes.py --cost-ms 1 --sizing 2/0/1 1x1/0/1x1
    python benchmarks/bench_ray_shapes.py --smoke [--jsonl rows.jsonl]   # 1 song of 10 s, A and B 1/0/1, 0 ms
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from bench_host import ROOT, Rows, StandInNetwork, cpu_name, make_inputs

SMOKE = {"songs": 1, "seconds": 10.0, "cost_ms": [0.0], "repeats": 1, "sizing": ["1/0/1"]}
ROUTE = "mp3-flac"
# The custom resource the cluster has one of and B's network actor holds, as it would hold a GPU (`num_gpus=1`).
ACCELERATOR = "stand_in_accelerator"
SHAPES = {
    "A": "today: an actor per accelerator holding its own I/O pool",
    "B": "Ray Data stages apart: decode -> network actor -> encode",
}


@dataclass(frozen=True)
class StandInMaker:
    """A `NetworkMaker` (`separate_dataset(network=...)`): bench_host's `StandInNetwork` for the model it is given,
    sleeping `cost_ms` per audio-second of each batch. A dataclass, so its repr (recorded in the markers) is stable."""

    cost_ms: float
    output: str = "music"

    def __call__(self, model: Any) -> StandInNetwork:
        config = model.config
        return StandInNetwork(self.cost_ms, int(config.sampling_rate), len(config.sources), self.output)


@dataclass(frozen=True)
class Schedule:
    """The schedule's shape that B's CPU stages share (the `Separator`'s, taken from it once in the driver)."""

    sample_rate: int
    channels: int
    sources: tuple[str, ...]
    segment: int
    stride: int
    batch_size: int
    weighting: str
    transition_power: float

    @classmethod
    def of(cls, separator: Any) -> Schedule:
        options = separator.options
        return cls(
            sample_rate=separator.sample_rate,
            channels=separator.audio_channels,
            sources=tuple(separator.sources),
            segment=separator.segment_samples,
            stride=separator.stride,
            batch_size=separator.batch_size,
            weighting=options.weighting,
            transition_power=options.transition_power,
        )


# ---------------------------------------------------------------------------------------------------------
# Shape B's stages (run in Ray workers)


def decode_song(row: dict[str, Any], schedule: Schedule) -> dict[str, Any]:
    """One song -> its normalised chunks, float32 (chunks, channels, segment), with what the encode stage needs.
    The product's first and second passes (`Separator._open`): the same blocks, statistics and normalisation, and
    `_Window`'s chunks (zeros outside the song)."""
    from modeling_hdemucs_flax.io.audio_io import inspect_audio, iter_audio_blocks
    from modeling_hdemucs_flax.separation.separator import (
        _adapt_channels_in,
        _exact_length,
        _resample_stream,
        mix_statistics,
        plan_chunks,
        resampled_length,
    )

    started = time.time()
    info = inspect_audio(row["path"])
    blocks = list(iter_audio_blocks(info))  # decoded once and replayed, as the product does for a compressed file
    stats = mix_statistics(blocks, str(info.path))
    mean, scale = np.float32(stats.mean), np.float32(stats.scale())
    length = max(1, resampled_length(stats.frames, info.sample_rate, schedule.sample_rate))
    normalised = (_adapt_channels_in((b - mean) / scale, schedule.channels) for b in blocks)
    at_rate = _resample_stream(normalised, info.sample_rate, schedule.sample_rate, schedule.channels)
    signal = np.concatenate(list(_exact_length(at_rate, length, (schedule.channels,))), axis=1)
    plan = plan_chunks(length, schedule.segment, schedule.stride)
    chunks = np.zeros((len(plan), schedule.channels, schedule.segment), np.float32)
    for index, chunk in enumerate(plan):
        lo, hi = max(chunk.start, 0), min(chunk.start + schedule.segment, length)
        chunks[index, :, lo - chunk.start : hi - chunk.start] = signal[:, lo:hi]
    return {
        "path": row["path"],
        "chunks": chunks,
        "starts": np.array([chunk.start for chunk in plan], np.int64),
        "length": length,
        "frames": stats.frames,
        "mean": float(mean),
        "scale": float(scale),
        "input_rate": info.sample_rate,
        "input_channels": info.channels,
        "input_subtype": info.subtype,
        "audio_s": info.duration,
        "decode_s": time.time() - started,
    }


class NetworkStage:
    """B's network actor: the model folder loaded as a `Separator` (as A's worker loads it), its forward pass
    replaced by `maker`'s stand-in; each song's chunks go through it `batch_size` at a time (the last batch padded
    with zero rows, as the product's schedule does), float32 (chunks, sources, channels, segment) out."""

    def __init__(self, model: str, maker: StandInMaker, schedule: Schedule):
        from modeling_hdemucs_flax import Separator

        separator = Separator.from_pretrained(model, batch_size=schedule.batch_size)
        self.forward, self.schedule = maker(separator.model), schedule

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch of one song (`map_batches(batch_size=1)`): its chunks -> its chunks' outputs."""
        (chunks,) = batch["chunks"]
        size = self.schedule.batch_size
        out = np.empty((1, len(chunks), len(self.schedule.sources), *chunks.shape[1:]), np.float32)
        for start in range(0, len(chunks), size):
            rows = chunks[start : start + size]
            inputs = np.zeros((size, *chunks.shape[1:]), np.float32)
            inputs[: len(rows)] = rows
            out[0, start : start + len(rows)] = np.asarray(self.forward(inputs), np.float32)[: len(rows)]
        rest = {name: column for name, column in batch.items() if name != "chunks"}
        return {**rest, "outputs": out, "chunk_bytes": np.array([chunks.nbytes], np.int64)}


def encode_song(row: dict[str, Any], schedule: Schedule, out: str, threads: int) -> dict[str, Any]:
    """One song's chunk outputs -> 4 FLAC stems in `out`/<song>/: overlap-add popped after every chunk (the samples
    no later chunk covers), back to the input's rate and channels, de-normalised (`_SongOutput`), each stem kept
    within full scale and encoded (`StemWriter`, demucs's "rescale"), all renamed into place together (`commit_all`,
    `threads` stems encoded at once)."""
    from modeling_hdemucs_flax.io.audio_io import StemWriter, make_folders, output_subtype
    from modeling_hdemucs_flax.separation.file_output import OutputOptions, commit_all
    from modeling_hdemucs_flax.separation.separator import OverlapAdd, _SongOutput, chunk_weight

    started = time.time()
    options = OutputOptions(ext="flac")
    outputs, starts, length = row["outputs"], row["starts"], int(row["length"])
    weight = chunk_weight(
        schedule.segment, schedule.segment - schedule.stride, schedule.weighting, schedule.transition_power
    )
    name = Path(row["path"]).stem
    rates = (schedule.sample_rate, int(row["input_rate"]))
    channels = int(row["input_channels"])
    mean, scale = np.float32(row["mean"]), np.float32(row["scale"])  # exact: float32 values carried as float64
    song = _SongOutput(len(schedule.sources), channels, rates, int(row["frames"]), mean, scale, row["path"])
    ola = OverlapAdd(length, 1, weight, outputs.shape[1:3])
    folder = Path(out) / name
    make_folders(folder)
    subtype = output_subtype(options.ext, str(row["input_subtype"]), options.subtype)
    writers = {
        stem: StemWriter(folder / f"{stem}.flac", rates[1], channels, subtype, options.ext, options.clip_mode)
        for stem in options.stem_names(schedule.sources)
    }

    def write(block: np.ndarray) -> None:
        for stem, samples in options.select(block, schedule.sources, None).items():
            writers[stem].write(samples)

    for index, start in enumerate(starts):
        ola.add(0, int(start), outputs[index])
        block = ola.pop(int(starts[index + 1]) if index + 1 < len(starts) else length)
        if block.shape[-1]:
            finished = song.push(block)
            if finished.shape[-1]:
                write(finished)
    tail = song.close()
    if tail.shape[-1]:
        write(tail)
    commit_all(writers, threads)
    done = time.time()
    return {
        "path": row["path"],
        "audio_s": float(row["audio_s"]),
        "chunks": len(starts),
        "object_store_bytes": int(row["chunk_bytes"]) + outputs.nbytes,
        "decode_s": float(row["decode_s"]),
        "encode_s": done - started,
        "done_at": done,
    }


# ---------------------------------------------------------------------------------------------------------
# Measuring the cluster's processes


def _pss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            return next(int(line.split()[1]) for line in rollup if line.startswith("Pss:")) / 1024
    except (OSError, StopIteration):
        return 0.0


class ClusterMeter:
    """CPU seconds and memory of this process and all its descendants (the local Ray cluster), sampled in a thread.

    CPU: each process's user + system time, read every `every` seconds; a process that ends keeps the last value
    read (Ray's raylet does not collect its ended workers' times, so up to `every` of an ending process's CPU is
    lost: an actor `separate_dataset` kills at the end is idle by then), one that starts counts from zero. Split by
    kind: "driver" (this process: the benchmark, `separate_dataset`'s or Ray Data's executor; the sampling thread's
    own CPU taken out), "workers" (Ray's task and actor processes) and "ray" (gcs_server, raylet, Ray's agents).
    Memory: the sum of the processes' proportional set sizes (shared object-store pages counted once), read every
    `pss_every` seconds; `peak_pss_mb` is the largest."""

    def __init__(self, every: float = 0.2, pss_every: float = 1.0):
        import psutil

        self._psutil, self.every, self.pss_every = psutil, every, pss_every
        self._base: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._kinds: dict[int, str] = {}
        self.cpu: dict[str, float] = {}  # CPU seconds between `start` and `stop`, by kind
        self.pss: list[float] = []
        self.samples: list[tuple[float, float]] = []  # (time.time(), CPU seconds since `start`, every kind)
        self._meter_cpu = 0.0  # CPU seconds of the sampling thread since `start`
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def processes(self) -> list[Any]:
        me = self._psutil.Process()
        return [me, *me.children(recursive=True)]

    def _kind(self, process: Any) -> str:
        if process.pid not in self._kinds:  # a worker is `python .../default_worker.py` until it names itself "ray::"
            command = process.cmdline()
            first = command[0] if command else ""
            worker = first.startswith("ray::") and "Agent" not in first
            worker = worker or (first.endswith("python") and any(a.endswith("default_worker.py") for a in command))
            self._kinds[process.pid] = "driver" if process.pid == os.getpid() else "workers" if worker else "ray"
        return self._kinds[process.pid]

    def _read_cpu(self) -> None:
        for process in self.processes():
            try:
                times = process.cpu_times()
                self._kind(process)
            except self._psutil.Error:
                continue
            self._last[process.pid] = times.user + times.system

    def pss_mb(self) -> float:
        return sum(_pss_mb(process.pid) for process in self.processes())

    def _total(self) -> float:
        return sum(value - self._base.get(pid, 0.0) for pid, value in self._last.items()) - self._meter_cpu

    def start(self) -> None:
        self._last.clear()
        self.pss.clear()
        self.samples.clear()
        self._read_cpu()
        self._base, self._meter_cpu = dict(self._last), 0.0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="cluster-meter", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_pss = 0.0
        while not self._stop.is_set():
            started = time.thread_time()
            self._read_cpu()
            if time.monotonic() >= next_pss:
                self.pss.append(self.pss_mb())
                next_pss = time.monotonic() + self.pss_every
            self._meter_cpu += time.thread_time() - started
            self.samples.append((time.time(), self._total()))
            self._stop.wait(self.every)

    def stop(self) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._read_cpu()
        self.samples.append((time.time(), self._total()))
        self.pss.append(self.pss_mb())
        self.cpu = dict.fromkeys(("driver", "ray", "workers"), 0.0)
        for pid, value in self._last.items():
            self.cpu[self._kinds[pid]] += value - self._base.get(pid, 0.0)
        self.cpu["driver"] -= self._meter_cpu

    def cpu_at(self, when: float) -> float:
        """CPU seconds since `start` at `when`, every kind (interpolated between the samples around it)."""
        times = [at for at, _ in self.samples]
        return float(np.interp(when, times, [cpu for _, cpu in self.samples]))

    @property
    def peak_pss_mb(self) -> float:
        return max(self.pss)


# ---------------------------------------------------------------------------------------------------------
# The two shapes


def run_shape_a(
    paths: list[Path], out: Path, model: Path, maker: StandInMaker, cpus: float, scratch: Path
) -> dict[str, Any]:
    """Today's engine, the product's own call; (wall start, completion times, audio, object-store bytes)."""
    from modeling_hdemucs_flax.apps.dataset import WorkerResources, separate_dataset

    done: list[tuple[float, float]] = []  # (time, audio seconds) of each song, as its row arrives

    def on_row(row: dict) -> None:
        if row["status"] != "ok":
            raise SystemExit(f"shape A failed on {row['source']}: {row['error']}")
        done.append((time.time(), row["audio_seconds"]))

    started = time.time()
    separate_dataset(
        [str(p) for p in paths],
        out,
        model=str(model),
        engine="ray",
        resources=WorkerResources(workers=1, cpus_per_worker=cpus),
        compilation_cache=False,
        scratch_dir=scratch,
        network=maker,
        progress=False,
        on_row=on_row,
    )
    return {"started": started, "done": done, "object_store_bytes": 0}


@dataclass(frozen=True)
class CpuStage:
    """How one of B's CPU stages is sized: `cpus` Ray CPUs per task, or per actor of a pool of `actors` (0: tasks).
    Written "0.5" (tasks) or "2x0.75" (two actors)."""

    cpus: float
    actors: int = 0

    @classmethod
    def parse(cls, text: str) -> CpuStage:
        actors, _, cpus = text.rpartition("x")
        return cls(float(cpus), int(actors or 0))

    def __str__(self) -> str:
        return f"{self.actors}x{self.cpus:g}" if self.actors else f"{self.cpus:g}"

    def options(self, function: Any, **kwargs: Any) -> dict[str, Any]:
        """`Dataset.map`'s arguments for `function` (a stage function taking a row and `kwargs`)."""
        import ray

        if not self.actors:
            return {"fn": function, "fn_kwargs": kwargs, "num_cpus": self.cpus}
        pool = ray.data.ActorPoolStrategy(size=self.actors)
        arguments = {"function": function, "kwargs": kwargs}
        return {"fn": StageActor, "fn_constructor_kwargs": arguments, "compute": pool, "num_cpus": self.cpus}


class StageActor:
    """A CPU stage as an actor of a fixed pool: the stage function, with the product's modules imported once when the
    actor starts (a task worker imports them on its first task, and Ray Data may start new ones as it scales)."""

    def __init__(self, function: Any, kwargs: dict[str, Any]):
        import modeling_hdemucs_flax.separation.file_output
        import modeling_hdemucs_flax.separation.separator  # noqa: F401  (JAX and the model stack: seconds of CPU)

        self.function, self.kwargs = function, kwargs

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        return self.function(row, **self.kwargs)


@dataclass(frozen=True)
class Sizing:
    """Shape B's sizing by Ray resources: the decode stage, the network actor's CPUs, the encode stage. Written
    "decode/network/encode", e.g. "1/0/1" (tasks of 1 CPU) or "1x0.5/0/2x0.75" (actor pools)."""

    decode: CpuStage
    network: float
    encode: CpuStage

    @classmethod
    def parse(cls, text: str) -> Sizing:
        decode, network, encode = text.split("/")
        return cls(CpuStage.parse(decode), float(network), CpuStage.parse(encode))

    @property
    def label(self) -> str:
        return f"B {self.decode}/{self.network:g}/{self.encode}"


def run_shape_b(
    paths: list[Path], out: Path, model: Path, maker: StandInMaker, schedule: Schedule, sizing: Sizing
) -> dict[str, Any]:
    """The Ray Data prototype; the same figures as `run_shape_a`."""
    import ray

    started = time.time()
    items = [{"path": str(p)} for p in paths]
    dataset = ray.data.from_items(items, override_num_blocks=len(items))
    dataset = dataset.map(**sizing.decode.options(decode_song, schedule=schedule))
    dataset = dataset.map_batches(
        NetworkStage,
        fn_constructor_kwargs={"model": str(model), "maker": maker, "schedule": schedule},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=1),
        num_cpus=sizing.network,
        resources={ACCELERATOR: 1},  # the stand-in's device; also keeps Ray Data from fusing decode tasks into it
    )
    threads = max(1, round(sizing.encode.cpus))  # stems encoded at once
    dataset = dataset.map(**sizing.encode.options(encode_song, schedule=schedule, out=str(out), threads=threads))
    rows = dataset.take_all()
    done = sorted((row["done_at"], row["audio_s"]) for row in rows)
    return {"started": started, "done": done, "object_store_bytes": sum(row["object_store_bytes"] for row in rows)}


def figures(result: dict[str, Any], meter: ClusterMeter, ended: float, warm: int, net_seconds: float) -> dict:
    """One run's figures (see the module's docstring); the steady ones from the `warm`-th song's commit on.
    `net_seconds` is the stand-in's sleeping time per audio-second (its cost x the chunks' share of the audio)."""
    started, done = result["started"], sorted(result["done"])
    audio = sum(seconds for _, seconds in done)
    wall = ended - started
    split = meter.cpu
    row: dict[str, Any] = {
        "songs": len(done),
        "audio_s": audio,
        "wall_s": wall,
        "first_song_s": done[0][0] - started,
        "x_realtime": audio / wall,
        "cpu_ms_per_audio_s": sum(split.values()) * 1000 / audio,
        **{f"cpu_{kind}_ms_per_audio_s": seconds * 1000 / audio for kind, seconds in split.items()},
        "object_store_mb": result["object_store_bytes"] / 1e6,
        "peak_pss_mb": meter.peak_pss_mb,
    }
    if 0 < warm < len(done):
        (begin, _), (end, _) = done[warm - 1], done[-1]
        steady_audio = sum(seconds for _, seconds in done[warm:])
        row["steady_x_realtime"] = steady_audio / (end - begin)
        row["steady_cpu_ms_per_audio_s"] = (meter.cpu_at(end) - meter.cpu_at(begin)) * 1000 / steady_audio
        row["steady_net_busy"] = net_seconds * steady_audio / (end - begin)
    return row


HEADER = (
    f"{'shape':<18} {'cost ms':>7} {'wall s':>6} {'first song s':>12} {'x realtime':>10} {'CPU ms/audio-s':>14} "
    f"{'(driver/ray/workers)':>20} {'obj store MB':>12} {'peak PSS MB':>11} | {'x realtime':>10} "
    f"{'CPU ms/audio-s':>14} {'net busy':>8}"
)


def format_row(shape: str, cost_ms: float, row: dict[str, Any]) -> str:
    split = "/".join(f"{row[f'cpu_{kind}_ms_per_audio_s']:.1f}" for kind in ("driver", "ray", "workers"))
    line = (
        f"{shape:<18} {cost_ms:>7g} {row['wall_s']:>6.1f} {row['first_song_s']:>12.1f} {row['x_realtime']:>9.1f}x "
        f"{row['cpu_ms_per_audio_s']:>14.2f} {split:>20} {row['object_store_mb']:>12.0f} {row['peak_pss_mb']:>11.0f} |"
    )
    if "steady_x_realtime" not in row:
        return f"{line} {'-':>10} {'-':>14} {'-':>8}"
    return (
        f"{line} {row['steady_x_realtime']:>9.1f}x {row['steady_cpu_ms_per_audio_s']:>14.2f} "
        f"{row['steady_net_busy']:>8.1%}"
    )


# ---------------------------------------------------------------------------------------------------------
# Checking the stems


def compare_stems(a: Path, b: Path, songs: list[str], stems: tuple[str, ...]) -> dict[str, Any]:
    """Decoded samples of every stem of every song, A against B: {"stems": compared, "identical": how many have equal
    samples, "same_bytes": how many are equal files, "max_abs": the largest difference}."""
    import soundfile as sf

    compared = identical = same_bytes = 0
    max_abs = 0.0
    for song in songs:
        for stem in stems:
            one, two = a / song / f"{stem}.flac", b / song / f"{stem}.flac"
            x, rate_x = sf.read(one, dtype="int32", always_2d=True)
            y, rate_y = sf.read(two, dtype="int32", always_2d=True)
            compared += 1
            if rate_x == rate_y and x.shape == y.shape:
                difference = float(np.abs(x.astype(np.int64) - y).max(initial=0)) / 2**31
                max_abs = max(max_abs, difference)
                identical += difference == 0.0
            else:
                max_abs = float("inf")
            same_bytes += one.read_bytes() == two.read_bytes()
    return {"stems": compared, "identical": identical, "same_bytes": same_bytes, "max_abs": max_abs}


# ---------------------------------------------------------------------------------------------------------
# The run


def start_cluster(cpus: float, object_store_mb: int) -> Any:
    """A local Ray cluster with the product's conventions (`dataset_ray._import_ray`: token authentication with a
    fresh token of this process's own, set before Ray is imported), `cpus` CPUs and no dashboard."""
    import logging

    from modeling_hdemucs_flax.apps.dataset_ray import _import_ray

    ray = _import_ray("local")
    ray.init(
        num_cpus=cpus,
        object_store_memory=object_store_mb * 1_000_000,
        resources={ACCELERATOR: 1},
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.WARNING,
    )
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    return ray


def save_model(folder: Path) -> Path:
    """bench_host's tiny random-weight model (HDemucs "low" with 4 channels) as a `save_pretrained` folder."""
    from modeling_hdemucs_flax import FlaxHDemucs, HDemucsConfig

    config = HDemucsConfig.from_preset("low", channels=4, norm_starts=2, dconv_lstm=3, dconv_attn=3)
    FlaxHDemucs(config, seed=0).save_pretrained(folder, safe_serialization=True)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--songs", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=180.0, help="each song's length (default: 180)")
    parser.add_argument("--cost-ms", type=float, nargs="+", default=[0.0, 1.0], help="stand-in ms per audio-second")
    parser.add_argument("--warm-songs", type=int, default=2, help="steady figures start at this song's commit")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each shape per cost, in alternating order")
    parser.add_argument("--cpus", type=float, default=2.0, help="the local cluster's CPUs (A: its one worker's)")
    parser.add_argument("--object-store-mb", type=int, default=3000)
    parser.add_argument(
        "--sizing",
        nargs="+",
        default=["1/0/1", "1x0.5/0/2x0.75"],
        help="shape B's sizings, one run each: decode/network/encode; a CPU stage as Ray CPUs per task (0.5) or a "
        "pool of actors (2x0.75), the network actor as its CPUs (default: 1/0/1 1x0.5/0/2x0.75)",
    )
    parser.add_argument("--jsonl", default=None, help="append each row to this file as JSON")
    parser.add_argument("--smoke", action="store_true", help="1 song of 10 s, A and B 1/0/1, stand-in at 0 ms (CI)")
    args = parser.parse_args(argv)
    if args.smoke:
        for name, value in SMOKE.items():
            setattr(args, name, value)
    sizings = [Sizing.parse(text) for text in args.sizing]
    # the workers' too: this checkout's package, and bench_host (which the stand-in's pickled maker names)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")])
    os.environ["JAX_PLATFORMS"] = "cpu"  # every worker computes on the CPU here

    print(
        f"{cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; Ray cluster of {args.cpus:g} "
        f"CPUs, object store {args.object_store_mb} MB; {args.songs} song(s) of {args.seconds:g} s, {ROUTE}",
        flush=True,
    )
    started = time.perf_counter()
    ray = start_cluster(args.cpus, args.object_store_mb)  # before JAX starts in this process
    print(f"cluster started in {time.perf_counter() - started:.1f} s", flush=True)
    print(f"A: {SHAPES['A']} (1 worker, {args.cpus:g} CPUs, {max(1, round(args.cpus))} io workers)")
    print(f"B: {SHAPES['B']} (labelled by --sizing: decode/network/encode)", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="bench_ray_shapes_") as scratch:
            compare(Path(scratch), args, sizings, Rows(args.jsonl))
    finally:
        ray.shutdown()
    print(f"load average after the run: {os.getloadavg()[0]:.2f}", flush=True)


def compare(scratch: Path, args: argparse.Namespace, sizings: list[Sizing], rows: Rows) -> None:
    """Every shape at every stand-in cost over the same songs, in alternating order, printed as measured; then the
    stems of each B against A's."""
    from modeling_hdemucs_flax import Separator

    model = save_model(scratch / "model")
    schedule = Schedule.of(Separator.from_pretrained(str(model)))
    (scratch / "songs").mkdir()
    paths = [p for found in make_inputs(scratch / "songs", [ROUTE], args.songs, args.seconds).values() for p in found]
    chunk_share = sum(_chunk_seconds(p, schedule) for p in paths) / sum(_seconds(p) for p in paths)
    meter = ClusterMeter()
    print(f"idle cluster and this driver: PSS {meter.pss_mb():.0f} MB", flush=True)
    print(f"\n{' ' * 112}| steady: after the first {args.warm_songs} song(s)\n{HEADER}", flush=True)
    shapes: list[str | Sizing] = ["A", *sizings]
    for cost in args.cost_ms:
        maker = StandInMaker(cost)
        kept: dict[str, Path] = {}  # each shape's first output, to compare
        for repeat in range(args.repeats):
            for shape in shapes if repeat % 2 == 0 else shapes[::-1]:
                label = shape if isinstance(shape, str) else shape.label
                out = scratch / f"out_{len(kept)}_{repeat}"
                meter.start()
                if isinstance(shape, str):
                    result = run_shape_a(paths, out, model, maker, args.cpus, scratch)
                else:
                    result = run_shape_b(paths, out, model, maker, schedule, shape)
                ended = time.time()
                meter.stop()
                row = figures(result, meter, ended, args.warm_songs, cost / 1000 * chunk_share)
                rows.add(format_row(label, cost, row), {"table": "shape", "shape": label, "cost_ms": cost, **row})
                if label in kept:
                    shutil.rmtree(out)
                else:
                    kept[label] = out
        for label, out in kept.items():
            if label != "A":
                check = compare_stems(kept["A"], out, [p.stem for p in paths], schedule.sources)
                rows.add(
                    f"stems, stand-in {cost:g} ms, A against {label}: {check['identical']} of {check['stems']} with "
                    f"identical decoded samples (largest difference {check['max_abs']:.3g}), {check['same_bytes']} "
                    "identical files",
                    {"table": "stems", "cost_ms": cost, "shape": label, **check},
                )
        for out in kept.values():
            shutil.rmtree(out)


def _seconds(path: Path) -> float:
    from modeling_hdemucs_flax.io.audio_io import inspect_audio

    return inspect_audio(path).duration


def _chunk_seconds(path: Path, schedule: Schedule) -> float:
    """The audio the network runs on for `path`: its chunks' seconds (at overlap 0.25, 4/3 of the song's)."""
    from modeling_hdemucs_flax.io.audio_io import inspect_audio
    from modeling_hdemucs_flax.separation.separator import plan_chunks, resampled_length

    info = inspect_audio(path)
    length = max(1, resampled_length(info.frames, info.sample_rate, schedule.sample_rate))
    return len(plan_chunks(length, schedule.segment, schedule.stride)) * schedule.segment / schedule.sample_rate


if __name__ == "__main__":
    sys.exit(main())
