"""The host side of separation with the network simulated: can the CPUs keep a 1000x-realtime accelerator fed?
(issue 18; a benchmark that prints tables, not a test. `--smoke` is the seconds-long run CI makes.)

The network is a stand-in whose cost is set in milliseconds per audio-second (`--cost-ms`: 0 = free, 1 = a
1000x-realtime accelerator). Each forward pass sleeps cost x the batch's audio (batch x segment, padding rows
included; `time.sleep` releases the GIL, as waiting for a device does) and returns stems that are music, not
silence: each source is a quarter of its input chunk, written into a fresh array as a device's output is copied
to the host (`--stand-in-output zeros` returns zeros instead, which encoders find far cheaper: LAME takes 4x less
time on silence, FLAC 1.4x). The model is a tiny random-weight HDemucs whose shape alone matters (4 sources,
stereo, 44.1 kHz, 7.8 s segments, overlap 0.25, batch `--batch-size`); the real network is never compiled.

Inputs: `--songs` songs of `--seconds` made by `synth_song` (seed = song number), written once to a temporary
folder in each route's input format by the package's own writer (`write_audio`; MP3 through LAME at 320 kbps).
Routes (`--routes`):

    wav-wav     44.1 kHz 16-bit WAV -> 4 WAV stems
    mp3-flac    MP3 320 kbps -> 4 FLAC stems (the headline route)
    wav48-flac  48 kHz 16-bit WAV -> 4 FLAC stems, resampled to 44.1 kHz and back
    mp3-mp3     MP3 -> 4 MP3 stems (LAME 320 kbps, preset 2: the package's quality default)

Figures (all "per audio-second" figures divide by the songs' duration):

  stages        host CPU ms per audio-second (`time.process_time`: every thread of the process) of each stage
                measured alone, in this process, on song 0: decode (`inspect_audio` + `iter_audio_blocks`);
                statistics pass (`mix_statistics` on the decoded blocks); normalise + resample in (the schedule's
                own soxr stream; the identity at 44.1 kHz); resample out (the 4 stems back to the input's rate,
                only where the route resamples); schedule (`Separator.stream` over the decoded blocks, held in
                memory, with a free stand-in: its own statistics pass, normalise, resampling both ways, chunking,
                overlap-add, de-normalise, and the stand-in's output copy, shown on the next line, as a device's
                download would cost); encode (the route's `StemWriter`s, clip mode rescale, writing 4 stems of
                the song's length). The pipeline today decodes a file twice (statistics, then separation), so end
                to end costs about 2 x decode + schedule + encode.
  end to end    `separate_files(separator, songs, out, OutputOptions(ext=...))` over every song, in a child process
                pinned by `os.sched_setaffinity` to one CPU and to two: host CPU ms per audio-second, x realtime
                delivered (audio-seconds / wall-seconds), the fraction of the run the stand-in WAITED for input
                (1 - its busy time / wall time; 100 % with a free stand-in, which is never busy) and the child's
                peak RSS. The headline route (mp3-flac, when among `--routes`) also gets a row at 1 ms per
                audio-second on the most CPUs measured (the feed check), unless `--cost-ms` is 1 already.
  scaling       x realtime on two CPUs / on one, per route (with a free stand-in this is the host alone).
  projection    host CPUs needed per accelerator at 1000x realtime = host CPU seconds per audio-second x 1000,
                from each route's fastest row.
  memory        (`--memory`, instead of the rest) peak RSS (VmHWM of a child) separating a 1-minute and a
                60-minute 44.1 kHz WAV to WAV stems with a free stand-in, and their ratio; beside it the child's
                peak before separating (imports, transformers bringing torch, and the model: most of the figure).

`--io-workers N [N ...]` runs the end-to-end rows once per N, passing `io_workers=N` to `separate_files` (and to
`Separator`) only where they take that parameter; where they do not, the pipeline has no io workers, the run
says so and measures it once. Noise: run on an otherwise idle machine (the load average is printed before and
after), and compare figures of one run only.

Issue 18's targets (a 2-core machine, measured side by side in one run):
  - host CPU, MP3 -> 4 FLAC stems <= 8 ms per audio-second (20 when filed); WAV -> WAV <= 6 ms (15 when filed);
  - with a free stand-in, two cores deliver >= 1.7x the throughput of one;
  - with a 1 ms/audio-second stand-in, the stand-in waits < 10 % of the run on two cores for 4 songs (overlap 0.25
    runs the network on 4/3 of the audio, 1.33 ms per song-second, so a wall time under 1.33 / 0.9 = 1.48 ms per
    song-second: two cores must deliver >= 675x realtime, <= 3 ms of host CPU per audio-second with both fully
    used; at the 8 ms above the stand-in would still wait about 2/3 of the run);
  - peak RSS of a 60-minute song within 1.3x of a 1-minute song.

    python benchmarks/bench_host.py                        # every route, 4 songs of 3 minutes (several minutes)
    python benchmarks/bench_host.py --routes mp3-flac --cost-ms 1 --io-workers 1 2 4
    python benchmarks/bench_host.py --memory               # peak RSS, 1 and 60 minutes
    python benchmarks/bench_host.py --smoke [--jsonl rows.jsonl]   # 2 songs of 3 s, wav-wav and mp3-flac, 1 CPU
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Route:
    input_ext: str  # wav or mp3
    input_rate: int  # Hz
    output_ext: str  # the stems' format


ROUTES = {
    "wav-wav": Route("wav", 44100, "wav"),
    "mp3-flac": Route("mp3", 44100, "flac"),
    "wav48-flac": Route("wav", 48000, "flac"),
    "mp3-mp3": Route("mp3", 44100, "mp3"),
}
HEADLINE = "mp3-flac"
FEED_COST_MS = 1.0  # the feed check: a 1000x-realtime accelerator
# issue 18's targets for host CPU per audio-second, end to end (ms)
CPU_TARGETS_MS = {"mp3-flac": 8.0, "wav-wav": 6.0}
SMOKE = {"songs": 2, "seconds": 3.0, "routes": ["wav-wav", "mp3-flac"], "cpus": [1]}


def cpu_name() -> str:
    return next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")


def io_workers_kwargs(function: Callable, io_workers: int | None) -> dict[str, int]:
    """{"io_workers": n} for `function` (`Separator`, `separate_file`, `separate_files`) when it takes that
    parameter and a number was asked for, else {} (the pipeline's own default, or a pipeline without io workers).
    The one place this benchmark adapts to the pipeline's version."""
    if io_workers is None or "io_workers" not in inspect.signature(function).parameters:
        return {}
    return {"io_workers": io_workers}


class StandInNetwork:
    """`Separator(model, forward=...)`'s network, simulated: float32 (batch, channels, segment) -> (batch, sources,
    channels, segment), after sleeping `cost_ms` per audio-second of the batch. `busy` is the seconds slept, `cpu`
    the CPU seconds spent making outputs (what copying a device's output to the host would cost)."""

    def __init__(self, cost_ms: float, sample_rate: int, sources: int, output: str = "music"):
        self.cost_ms, self.sample_rate, self.sources, self.output = cost_ms, sample_rate, sources, output
        self.busy = self.cpu = 0.0
        self._lock = threading.Lock()

    def __call__(self, batch: Any) -> Any:
        import numpy as np

        if self.cost_ms > 0:
            start = time.perf_counter()
            time.sleep(self.cost_ms / 1000 * batch.shape[0] * batch.shape[-1] / self.sample_rate)
            with self._lock:
                self.busy += time.perf_counter() - start
        start = time.thread_time()
        shape = (batch.shape[0], self.sources, *batch.shape[1:])
        if self.output == "zeros":
            out = np.zeros(shape, np.float32)
        else:
            out = np.multiply(batch[:, None], np.float32(1 / self.sources), out=np.empty(shape, np.float32))
        with self._lock:
            self.cpu += time.thread_time() - start
        return out


def stand_in_separator(cost_ms: float, output: str, batch_size: int, io_workers: int | None) -> tuple[Any, Any]:
    """(Separator, StandInNetwork): a tiny random-weight HDemucs's shape (4 sources, stereo, 44.1 kHz, 7.8 s
    segments) around the stand-in; the network itself is never compiled."""
    from modeling_hdemucs_flax import FlaxHDemucs, HDemucsConfig, Separator

    config = HDemucsConfig.from_preset("low", channels=4, norm_starts=2, dconv_lstm=3, dconv_attn=3)
    model = FlaxHDemucs(config, seed=0)
    network = StandInNetwork(cost_ms, int(config.sampling_rate), len(config.sources), output)
    io = io_workers_kwargs(Separator, io_workers)
    return Separator(model, batch_size=batch_size, forward=network, **io), network


class Rows:
    """Prints rows as they are measured and appends them to `jsonl` (so a run cut short keeps what it measured)."""

    def __init__(self, jsonl: str | None):
        self.jsonl = jsonl

    def add(self, line: str, row: dict[str, Any]) -> None:
        print(line, flush=True)
        if self.jsonl:
            with open(self.jsonl, "a") as handle:
                handle.write(json.dumps(row) + "\n")


# ---------------------------------------------------------------------------------------------------------
# Inputs


def make_inputs(folder: Path, routes: list[str], songs: int, seconds: float) -> dict[tuple[str, int], list[Path]]:
    """{(input ext, rate): song paths} for the routes' input formats, each song written once."""
    import numpy as np
    import soxr

    from modeling_hdemucs_flax import synth_song
    from modeling_hdemucs_flax.io.audio_io import write_audio

    formats = sorted({(ROUTES[r].input_ext, ROUTES[r].input_rate) for r in routes})
    paths: dict[tuple[str, int], list[Path]] = {key: [] for key in formats}
    for number in range(songs):
        song = synth_song(int(seconds * 44100), 44100, 2, seed=number)
        for ext, rate in formats:
            audio = song if rate == 44100 else np.ascontiguousarray(soxr.resample(song.T, 44100, rate).T)
            paths[ext, rate].append(write_audio(folder / f"song{number}_{rate}.{ext}", audio, rate))
    return paths


# ---------------------------------------------------------------------------------------------------------
# Stages, in this process


def stage_table(rows: Rows, route_name: str, path: Path, scratch: Path, output: str) -> None:
    """Host CPU ms per audio-second of each stage alone, on one song."""
    import numpy as np

    from modeling_hdemucs_flax.io.audio_io import StemWriter, inspect_audio, iter_audio_blocks, output_subtype
    from modeling_hdemucs_flax.separation.separator import BLOCK, _resample_stream, mix_statistics

    route = ROUTES[route_name]
    separator, network = stand_in_separator(0.0, output, 1, None)
    model_rate, channels = separator.sample_rate, separator.audio_channels
    info = inspect_audio(path)
    seconds = info.frames / info.sample_rate

    def measure(stage: str, label: str, work: Callable[[], Any]) -> Any:
        start = time.process_time()
        result = work()
        ms = (time.process_time() - start) * 1000 / seconds
        row = {"table": "stage", "route": route_name, "stage": stage, "label": label, "ms_per_audio_s": ms}
        rows.add(f"{route_name:<11} {label:<44} {ms:>9.2f}", row)
        return result

    blocks = measure("decode", "decode", lambda: list(iter_audio_blocks(inspect_audio(path))))
    stats = measure("statistics", "statistics pass", lambda: mix_statistics(blocks, str(path)))
    mean, scale = np.float32(stats.mean), np.float32(stats.scale())
    resample_in = f"normalise + resample in ({info.sample_rate} -> {model_rate} Hz)"
    if info.sample_rate == model_rate:
        resample_in = "normalise (no resampling)"
    normalised = measure(
        "normalise",
        resample_in,
        lambda: list(_resample_stream(((b - mean) / scale for b in blocks), info.sample_rate, model_rate, channels)),
    )
    if info.sample_rate != model_rate:
        stems = np.tile(np.concatenate(normalised, axis=1), (len(separator.sources), 1))  # (sources x channels, n)
        pieces = (stems[:, i : i + BLOCK] for i in range(0, stems.shape[1], BLOCK))
        width = stems.shape[0]
        measure(
            "resample_out",
            f"resample out, 4 stems ({model_rate} -> {info.sample_rate} Hz)",
            lambda: list(_resample_stream(pieces, model_rate, info.sample_rate, width)),
        )

    def schedule() -> None:
        for _ in separator.stream(lambda: iter(blocks), info.channels, info.sample_rate, name=str(path)):
            pass

    network.cpu = 0.0
    measure("schedule", "schedule (Separator.stream, decoded blocks)", schedule)
    copy_ms = network.cpu * 1000 / seconds
    row = {"table": "stage", "route": route_name, "stage": "stand_in_output", "ms_per_audio_s": copy_ms}
    rows.add(f"{route_name:<11} {'  of which the stand-in output copy':<44} {copy_ms:>9.2f}", row | {"label": ""})
    stem = np.concatenate(blocks, axis=1) * np.float32(1 / len(separator.sources))
    subtype = output_subtype(route.output_ext, info.subtype)

    def encode() -> None:
        writers = [
            StemWriter(scratch / f"{name}.{route.output_ext}", info.sample_rate, info.channels, subtype)
            for name in separator.sources
        ]
        for start in range(0, stem.shape[1], BLOCK):
            for writer in writers:
                writer.write(stem[:, start : start + BLOCK])
        for writer in writers:
            writer.commit().unlink()

    measure("encode", f"encode, 4 {route.output_ext.upper()} stems ({subtype})", encode)


# ---------------------------------------------------------------------------------------------------------
# End to end, in a pinned child process


def run_child(options: dict[str, Any]) -> dict[str, Any]:
    """This script in a child process (`--child OPTIONS`), which pins itself to `options["cpus"]` first."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")  # the host alone: JAX never claims an accelerator's memory here
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    done = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps(options)], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"benchmark child failed ({options}):\n{done.stderr[-4000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def child(options: dict[str, Any]) -> dict[str, Any]:
    """One end-to-end measurement: `separate_files` over `options["paths"]`, or (memory) one file."""
    os.sched_setaffinity(0, options["cpus"])  # first, so every thread the libraries start runs there
    from modeling_hdemucs_flax.io.audio_io import inspect_audio
    from modeling_hdemucs_flax.separation.file_output import OutputOptions, separate_files

    separator, network = stand_in_separator(
        options["cost_ms"], options["output"], options["batch_size"], options["io_workers"]
    )
    paths = [Path(p) for p in options["paths"]]
    audio_s = sum(inspect_audio(p).duration for p in paths)
    io = io_workers_kwargs(separate_files, options["io_workers"])
    before = peak_rss_mb()  # imports (transformers brings torch) and the model: the same for any song
    start, start_cpu = time.perf_counter(), time.process_time()
    results = list(separate_files(separator, paths, options["out"], OutputOptions(ext=options["ext"]), **io))
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    failed = [f"{r.path}: {r.error}" for r in results if r.error is not None]
    if failed:
        raise SystemExit("\n".join(failed))
    return {
        "audio_s": audio_s,
        "rss_before_mb": before,
        "wall_s": wall,
        "host_ms_per_audio_s": cpu * 1000 / audio_s,
        "x_realtime": audio_s / wall,
        "wait_fraction": 1 - network.busy / wall,
        "peak_rss_mb": peak_rss_mb(),
    }


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM). Not `ru_maxrss`: Linux carries the parent's peak into a child across
    fork/vfork + exec, so a child of this benchmark's parent (which holds decoded songs) would report >= 1.7 GB."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


E2E_HEADER = (
    f"{'route':<11} {'CPUs':>4} {'io workers':>10} {'cost ms':>7} {'host ms/audio s':>15} {'x realtime':>10} "
    f"{'stand-in waits':>14} {'peak RSS MB':>11} {'wall s':>7}"
)


def end_to_end_row(
    rows: Rows, route: str, cpus: list[int], io_workers: int | None, cost_ms: float, **options: Any
) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_host_out_") as out:
        result = run_child({**options, "cpus": cpus, "io_workers": io_workers, "cost_ms": cost_ms, "out": out})
    row = {"table": "end_to_end", "route": route, "cpus": len(cpus), "io_workers": io_workers, "cost_ms": cost_ms}
    row.update(result)
    io = "default" if io_workers is None else str(io_workers)
    rows.add(
        f"{route:<11} {len(cpus):>4} {io:>10} {cost_ms:>7g} {result['host_ms_per_audio_s']:>15.2f} "
        f"{result['x_realtime']:>9.1f}x {result['wait_fraction']:>13.1%} {result['peak_rss_mb']:>11.0f} "
        f"{result['wall_s']:>7.1f}",
        row,
    )
    return row


# ---------------------------------------------------------------------------------------------------------
# The run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--songs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=180.0, help="each song's length (default: 180)")
    parser.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES))
    parser.add_argument("--cost-ms", type=float, default=0.0, help="stand-in ms per audio-second (0: free)")
    parser.add_argument("--stand-in-output", choices=("music", "zeros"), default="music")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--io-workers", type=int, nargs="+", default=None, help="host workers, one run each")
    parser.add_argument("--cpus", type=int, nargs="+", default=[1, 2], help="CPU counts to pin to (default: 1 2)")
    parser.add_argument("--repeats", type=int, default=1, help="end-to-end runs per row (best is compared)")
    parser.add_argument("--memory", action="store_true", help="only: peak RSS of a 1- and a 60-minute song")
    parser.add_argument("--memory-minutes", type=float, nargs=2, default=[1.0, 60.0])
    parser.add_argument("--jsonl", default=None, help="append each row to this file as JSON")
    parser.add_argument("--smoke", action="store_true", help="2 songs of 3 s, wav-wav and mp3-flac, 1 CPU (CI)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        print("RESULT " + json.dumps(child(json.loads(args.child))), flush=True)
        return
    if args.smoke:
        for name, value in SMOKE.items():
            setattr(args, name, value)

    from modeling_hdemucs_flax.runtime import select_platform

    select_platform("cpu")  # the host alone: JAX never claims an accelerator's memory here
    from modeling_hdemucs_flax.separation.file_output import separate_files

    available = sorted(os.sched_getaffinity(0))
    print(
        f"{cpu_name()}, {len(available)} CPUs available to this process (of {os.cpu_count()}), load average "
        f"{os.getloadavg()[0]:.2f}; stand-in network: {args.cost_ms:g} ms per audio-second, {args.stand_in_output} "
        f"stems, batch {args.batch_size}",
        flush=True,
    )
    rows = Rows(args.jsonl)
    if args.memory:
        memory_table(rows, args)
        return
    cpu_sets = []
    for count in args.cpus:
        if count > len(available):
            print(f"skipping the {count}-CPU rows: this process has {len(available)} CPU(s)", flush=True)
        else:
            cpu_sets.append(available[:count])
    io_settings: list[int | None] = [None]
    if not io_workers_kwargs(separate_files, 1):
        print("the pipeline has no io workers (separate_files takes no io_workers): one run per row", flush=True)
    elif args.io_workers:
        io_settings = list(args.io_workers)

    with tempfile.TemporaryDirectory(prefix="bench_host_") as scratch:
        scratch = Path(scratch)
        started = time.perf_counter()
        inputs = make_inputs(scratch, args.routes, args.songs, args.seconds)
        print(
            f"{args.songs} songs of {args.seconds:g} s written in {time.perf_counter() - started:.1f} s "
            f"({', '.join(f'{ext} {rate} Hz' for ext, rate in inputs)})",
            flush=True,
        )
        print(f"\nstages, host CPU ms per audio-second, song 0 ({cpu_name()})", flush=True)
        print(f"{'route':<11} {'stage':<44} {'ms/audio s':>9}", flush=True)
        for route in args.routes:
            path = inputs[ROUTES[route].input_ext, ROUTES[route].input_rate][0]
            stage_table(rows, route, path, scratch, args.stand_in_output)

        print(
            f"\nend to end: separate_files over {args.songs} songs, pinned child processes ({cpu_name()})", flush=True
        )
        print(E2E_HEADER, flush=True)
        measured: list[dict] = []
        common = {"output": args.stand_in_output, "batch_size": args.batch_size}
        for route in args.routes:
            paths = [str(p) for p in inputs[ROUTES[route].input_ext, ROUTES[route].input_rate]]
            route_options = {**common, "paths": paths, "ext": ROUTES[route].output_ext}
            for _ in range(args.repeats):
                for cpus in cpu_sets:
                    for io in io_settings:
                        measured.append(end_to_end_row(rows, route, cpus, io, args.cost_ms, **route_options))
            if route == HEADLINE and args.cost_ms != FEED_COST_MS and cpu_sets:
                for io in io_settings:
                    measured.append(end_to_end_row(rows, route, cpu_sets[-1], io, FEED_COST_MS, **route_options))
    summary(rows, args, measured, cpu_sets)
    print(f"load average after the run: {os.getloadavg()[0]:.2f}", flush=True)


def best(measured: list[dict], **match: Any) -> dict | None:
    """The fastest row matching every `match` field."""
    found = [r for r in measured if all(r[key] == value for key, value in match.items())]
    return max(found, key=lambda r: r["x_realtime"]) if found else None


def summary(rows: Rows, args: argparse.Namespace, measured: list[dict], cpu_sets: list[list[int]]) -> None:
    """Two CPUs against one, the projection, and the figures against issue 18's targets."""
    counts = [len(c) for c in cpu_sets]
    io_settings = sorted({r["io_workers"] for r in measured}, key=lambda n: -1 if n is None else n)
    print(f"\nscaling and projection ({cpu_name()})", flush=True)
    if 1 in counts and 2 in counts:
        for route in args.routes:
            for io in io_settings:
                one = best(measured, route=route, cpus=1, io_workers=io, cost_ms=args.cost_ms)
                two = best(measured, route=route, cpus=2, io_workers=io, cost_ms=args.cost_ms)
                assert one is not None and two is not None
                ratio = two["x_realtime"] / one["x_realtime"]
                label = "default" if io is None else str(io)
                rows.add(
                    f"{route:<11} io workers {label:>7}: two CPUs deliver {ratio:.2f}x one "
                    f"({two['x_realtime']:.1f}x vs {one['x_realtime']:.1f}x realtime; target >= 1.7 with a free "
                    "stand-in)",
                    {"table": "scaling", "route": route, "io_workers": io, "cost_ms": args.cost_ms, "ratio": ratio},
                )
    else:
        print(f"no two-CPU against one-CPU ratio: CPU counts measured {counts}", flush=True)
    for route in args.routes:
        fastest = best(measured, route=route, cost_ms=args.cost_ms)
        if fastest is None:
            continue
        cores = fastest["host_ms_per_audio_s"]  # ms per audio-second x 1000 / 1000
        rows.add(
            f"{route:<11} host CPU {fastest['host_ms_per_audio_s']:.2f} ms per audio-second -> {cores:.1f} host CPUs "
            f"per accelerator at 1000x realtime ({1000 / fastest['host_ms_per_audio_s']:.0f}x realtime per CPU)",
            {"table": "projection", "route": route, "cores_per_accelerator_at_1000x": cores},
        )

    print(f"\nagainst issue 18's targets ({cpu_name()}, {args.songs} songs of {args.seconds:g} s)", flush=True)
    for route, target in CPU_TARGETS_MS.items():
        row = best(measured, route=route, cpus=1, cost_ms=args.cost_ms)
        if row is not None:
            verdict = "met" if row["host_ms_per_audio_s"] <= target else "not met"
            figure = f"{row['host_ms_per_audio_s']:.2f} ms/audio-s on one CPU"
            print(f"  host CPU {route}: {figure} (target <= {target:g}): {verdict}")
    if 1 in counts and 2 in counts and args.cost_ms == 0:
        for route in args.routes:
            one = best(measured, route=route, cpus=1, cost_ms=0.0)
            two = best(measured, route=route, cpus=2, cost_ms=0.0)
            assert one is not None and two is not None
            ratio = two["x_realtime"] / one["x_realtime"]
            verdict = "met" if ratio >= 1.7 else "not met"
            print(f"  two CPUs / one, {route}, free stand-in: {ratio:.2f}x (target >= 1.7): {verdict}")
    for route in args.routes:
        feed = best(measured, route=route, cpus=max(counts, default=0), cost_ms=FEED_COST_MS)
        if feed is not None:
            wait = feed["wait_fraction"]
            met = "met" if wait < 0.1 else "not met"
            condition = "" if feed["cpus"] == 2 else f" (measured on {feed['cpus']} CPU, the target is on 2)"
            print(f"  stand-in at 1 ms/audio-s waits, {route}: {wait:.1%} (target < 10 %){condition}: {met}")


def memory_table(rows: Rows, args: argparse.Namespace) -> None:
    """Peak RSS of separating a short and a long WAV to WAV stems with a free stand-in, each in its own child."""
    from modeling_hdemucs_flax.synthetic import write_synth_wav

    print(f"\npeak RSS, WAV -> 4 WAV stems, free stand-in, one child per song ({cpu_name()})", flush=True)
    print(f"{'minutes':>7} {'peak RSS MB':>11} {'before separating':>17} {'x realtime':>10} {'wall s':>7}", flush=True)
    peaks = []
    with tempfile.TemporaryDirectory(prefix="bench_host_memory_") as scratch:
        for minutes in args.memory_minutes:
            song = write_synth_wav(Path(scratch) / f"song_{minutes:g}min.wav", minutes)
            with tempfile.TemporaryDirectory(prefix="bench_host_out_", dir=scratch) as out:
                options = {"paths": [str(song)], "ext": "wav", "out": out, "cost_ms": 0.0, "io_workers": None}
                options.update(output=args.stand_in_output, batch_size=args.batch_size)
                result = run_child({**options, "cpus": sorted(os.sched_getaffinity(0))})
            song.unlink()
            peaks.append(result["peak_rss_mb"])
            rows.add(
                f"{minutes:>7g} {result['peak_rss_mb']:>11.0f} {result['rss_before_mb']:>17.0f} "
                f"{result['x_realtime']:>9.1f}x {result['wall_s']:>7.1f}",
                {"table": "memory", "minutes": minutes, **result},
            )
    ratio = peaks[-1] / peaks[0]
    rows.add(
        f"peak RSS ratio, {args.memory_minutes[1]:g} min / {args.memory_minutes[0]:g} min: {ratio:.2f} (target <= 1.3)",
        {"table": "memory_ratio", "ratio": ratio},
    )


if __name__ == "__main__":
    main()
