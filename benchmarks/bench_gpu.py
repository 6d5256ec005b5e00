"""Accelerator figures: forward pass and `Separator.separate` per batch size and dtype, on JAX's default device.

For a machine with a GPU (`pip install ".[cuda]"`); runs on CPU too (slowly), which is how it is checked.
For each dtype and batch size: one warm forward pass of (batch, 2, 7.8 s) (median of `--repeats`), and one
`separate` of a `--seconds`-long song (`synth_song`) after the warm-up, both as seconds per audio-second and
as x realtime (audio-seconds per second). Weights are random (high preset). Rows are printed as they are
measured, and appended as JSON lines to `--jsonl` when given, so a run cut short keeps what it measured.
Each new (dtype, batch size) compiles the network once (tens of seconds on a GPU): order the arguments by
priority.

    python benchmarks/bench_gpu.py [--batch-sizes 1 2 4 8 16 32] [--dtypes float32 bfloat16] [--seconds 240]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"), default=["float32", "bfloat16"])
    parser.add_argument("--seconds", type=float, default=240.0, help="song length for separate (default: 240)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--config", choices=("high", "tiny"), default="high", help="tiny: a seconds-long check")
    parser.add_argument("--jsonl", default=None, help="append each row to this file as JSON")
    args = parser.parse_args()

    from modeling_hdemucs_flax import configure_xla

    configure_xla()
    import jax
    import jax.numpy as jnp
    import numpy as np

    from modeling_hdemucs_flax import FlaxHDemucs, HDemucsConfig, Separator, synth_song

    device = jax.devices()[0]
    if args.config == "high":
        config = HDemucsConfig()
    else:
        config = HDemucsConfig.from_preset("low", channels=4, norm_starts=2, dconv_lstm=3, dconv_attn=3)
    rate = config.sampling_rate
    song = synth_song(int(args.seconds * rate), rate, 2)
    print(f"device: {device.platform} {device.device_kind} (jax {jax.__version__}), {args.config} model")
    print(
        f"{'dtype':<9} {'batch':>5} {'compile s':>10} {'fwd s/audio-s':>14} {'fwd x rt':>9} {'sep s/audio-s':>14} "
        f"{'sep x rt':>9}"
    )
    base = FlaxHDemucs(config, seed=0)
    for dtype in args.dtypes:
        model = FlaxHDemucs(config, dtype=getattr(jnp, dtype), params=base.params)
        for batch_size in args.batch_sizes:
            separator = Separator(model, batch_size=batch_size)
            batch = np.zeros(separator.input_shape, np.float32)
            start = time.perf_counter()
            separator.warmup()
            compile_s = time.perf_counter() - start
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                separator.forward(batch)
                times.append(time.perf_counter() - start)
            forward = statistics.median(times) / (batch_size * separator.segment_samples / rate)
            start = time.perf_counter()
            separator.separate(song, rate)
            separate = (time.perf_counter() - start) / args.seconds
            row = {
                "device": device.device_kind,
                "dtype": dtype,
                "batch_size": batch_size,
                "compile_s": compile_s,
                "forward_s_per_audio_s": forward,
                "separate_s_per_audio_s": separate,
            }
            print(
                f"{dtype:<9} {batch_size:>5} {compile_s:>10.1f} {forward:>14.4f} {1 / forward:>8.1f}x "
                f"{separate:>14.4f} {1 / separate:>8.1f}x",
                flush=True,
            )
            if args.jsonl:
                with open(args.jsonl, "a") as handle:
                    handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
