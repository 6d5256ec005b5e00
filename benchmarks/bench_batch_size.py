"""Which batch size, and how much the pipeline costs beyond the network (a benchmark that prints a table).

For each batch size, in one process with the same weights and song: `Separator.separate` on a synthetic song
(seconds per audio-second) and the network alone (`Separator.forward` on the same number of batches, warm),
interleaved over the repeats, medians. Efficiency = separate time / network time (1.00 means reading,
resampling, blending and writing are entirely hidden behind the network).

    python benchmarks/bench_batch_size.py [--seconds 60] [--batch-sizes 1 2 4] [--repeats 3] [--config high|tiny]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0, help="song length (default: 60)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", choices=("high", "tiny"), default="high", help="random-weight model size")
    args = parser.parse_args()

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
                separator.forward(inputs)
            times[batch]["network"].append(time.perf_counter() - start)

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"{args.config} model, {args.seconds:g} s song, {os.cpu_count()} CPUs ({cpu}), medians of {args.repeats}")
    print(f"{'batch':>5} {'separate s/audio s':>19} {'network s/audio s':>18} {'efficiency':>11}")
    for batch in separators:
        separate = statistics.median(times[batch]["separate"])
        network = statistics.median(times[batch]["network"])
        per_second = f"{separate / args.seconds:>19.3f} {network / args.seconds:>18.3f}"
        print(f"{batch:>5} {per_second} {separate / network:>10.3f}x")


if __name__ == "__main__":
    main()
