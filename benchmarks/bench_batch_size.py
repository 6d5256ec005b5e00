"""Which batch size, and how much the pipeline costs beyond the network (a benchmark that prints a table).

For each batch size, in one process with the same weights and song: `Separator.separate` on a synthetic song
(seconds per audio-second) and the network alone (`Separator.forward` on the same number of batches, warm),
interleaved over the repeats, medians. Efficiency = separate time / network time (1.00 means reading,
resampling, blending and writing are entirely hidden behind the network).

`--stand-in` measures the host side alone: the network is replaced by one that returns zeros at once (only the
model's shape matters then: 4 sources, stereo, 44.1 kHz, 7.8 s chunks), so the figure is how fast the schedule
itself (normalising, chunking, overlap-add, denormalising) can feed a device, in x realtime per batch size. It
should not fall as the batch grows.

    python benchmarks/bench_batch_size.py [--seconds 60] [--batch-sizes 1 2 4] [--repeats 3] [--config high|tiny]
    python benchmarks/bench_batch_size.py --stand-in [--seconds 300] [--batch-sizes 1 4 16]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def cpu_name() -> str:
    return next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")


def stand_in_table(args: argparse.Namespace) -> None:
    """x realtime of `separate` with a network that costs nothing, per batch size (best of the repeats)."""
    import numpy as np

    from modeling_hdemucs_flax import FlaxHDemucs, HDemucsConfig, Separator, synth_song

    config = HDemucsConfig.from_preset("low", channels=4, norm_starts=2, dconv_lstm=3, dconv_attn=3)
    model = FlaxHDemucs(config, seed=0)
    rate = config.sampling_rate
    song = synth_song(int(args.seconds * rate), rate, 2)

    def zeros(batch: np.ndarray) -> np.ndarray:
        return np.zeros((batch.shape[0], len(config.sources), *batch.shape[1:]), np.float32)

    separators = {b: Separator(model, batch_size=b, forward=zeros) for b in args.batch_sizes}
    wall: dict[int, list[float]] = {b: [] for b in separators}
    cpu: dict[int, list[float]] = {b: [] for b in separators}
    for _ in range(args.repeats):
        for batch, separator in separators.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            separator.separate(song, rate)
            wall[batch].append(time.perf_counter() - start)
            cpu[batch].append(time.process_time() - start_cpu)
    print(
        f"stand-in network (zeros at once), {args.seconds:g} s song, {os.cpu_count()} CPUs ({cpu_name()}), "
        f"best of {args.repeats}"
    )
    print(f"{'batch':>5} {'x realtime':>11} {'x realtime per CPU-second':>26}")
    for batch in separators:
        print(f"{batch:>5} {args.seconds / min(wall[batch]):>10.1f}x {args.seconds / min(cpu[batch]):>25.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=None, help="song length (default: 60; 300 with --stand-in)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 2 4 (1 4 16 stand-in)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", choices=("high", "tiny"), default="high", help="random-weight model size")
    parser.add_argument("--stand-in", action="store_true", help="the host side alone: a network that costs nothing")
    args = parser.parse_args()
    if args.stand_in:
        args.seconds = args.seconds or 300.0
        args.batch_sizes = args.batch_sizes or [1, 4, 16]
        stand_in_table(args)
        return
    args.seconds = args.seconds or 60.0
    args.batch_sizes = args.batch_sizes or [1, 2, 4]

    import numpy as np

    from modeling_hdemucs_flax import FlaxHDemucs, HDemucsConfig, Separator, configure_compilation_cache, synth_song

    configure_compilation_cache()
    if args.config == "high":
        config = HDemucsConfig()
    else:
        config = HDemucsConfig.from_preset("low", channels=4, norm_starts=2, dconv_lstm=3, dconv_attn=3)
    model = FlaxHDemucs(config, seed=0)
    rate = config.sampling_rate
    song = synth_song(int(args.seconds * rate), rate, 2)
    separators = {b: Separator(model, batch_size=b) for b in args.batch_sizes}
    for separator in separators.values():
        separator.warmup()
    times: dict[int, dict[str, list[float]]] = {b: {"separate": [], "network": []} for b in separators}
    for _ in range(args.repeats):
        for batch, separator in separators.items():
            start = time.perf_counter()
            separator.separate(song, rate)
            times[batch]["separate"].append(time.perf_counter() - start)
            batches = -(-separator.chunks_total(song.shape[-1], rate) // batch)
            inputs = np.zeros(separator.input_shape, np.float32)
            start = time.perf_counter()
            for _ in range(batches):
                np.asarray(separator.forward(inputs))  # the forward pass returns before the device is done
            times[batch]["network"].append(time.perf_counter() - start)

    machine = f"{os.cpu_count()} CPUs ({cpu_name()})"
    print(f"{args.config} model, {args.seconds:g} s song, {machine}, medians of {args.repeats}")
    print(f"{'batch':>5} {'separate s/audio s':>19} {'network s/audio s':>18} {'efficiency':>11}")
    for batch in separators:
        separate = statistics.median(times[batch]["separate"])
        network = statistics.median(times[batch]["network"])
        per_second = f"{separate / args.seconds:>19.3f} {network / args.seconds:>18.3f}"
        print(f"{batch:>5} {per_second} {separate / network:>10.3f}x")


if __name__ == "__main__":
    main()
