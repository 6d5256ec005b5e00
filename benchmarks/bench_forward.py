"""Forward-pass speed: the reference in torch eager vs ours (jitted, warm) on the same input, in one run.

`--architecture hdemucs` (default): torchaudio's HDemucs vs FlaxHDemucs, high preset. `--architecture htdemucs`:
demucs 4.1.0's HTDemucs vs FlaxHTDemucs, the released htdemucs configuration, at its training segment only (7.8 s:
the model refuses longer inputs) and without the mixed mode (FlaxHTDemucs has no `dot_dtype`).

Prints seconds of compute per second of audio for each framework at 7.8 s / 10 s / 30 s segments, and the
ratio torch / flax (> 1 means Flax is faster): median of `--repeats` warm runs, torch and Flax interleaved.
Modes: float32 (both); bfloat16 (torch: CPU autocast; Flax: `dtype=jnp.bfloat16`, everything in bf16);
mixed (torch: CPU autocast again; Flax: `dot_dtype=jnp.bfloat16`, bf16 inputs to the LSTMs, transposed and
1x1 convolutions with float32 accumulation, all else float32). It also prints each mode's speed-up over
Flax float32, and each mode's error in dB against torch float32 and against torch's bf16 autocast on one
7.8 s synthetic song (random weights: a figure of rounding, not of separation quality). The whole table is
measured twice, each time in a fresh process: with glibc's default allocator, and "tuned":
`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736` (torch's best CPU setting: no page faulting of
gigabytes per forward) plus `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (XLA's: no page faulting of its scratch
buffer). Flax runs with the package's XLA flags (`configure_xla()`, as the command line does);
`--no-xla-flags` leaves them out. Weights are random (high preset); speed does not depend on their values.

    python benchmarks/bench_forward.py [--architecture htdemucs] [--segments 7.8 10 30] [--repeats 3] [--threads 2]
        [--dtypes float32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

MODES = ("float32", "bfloat16", "mixed")
TUNED_MALLOC = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",
}


def _interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, after one warm-up call each (jit compilation, allocator warm-up)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _flax_kwargs(mode: str) -> dict:
    import jax.numpy as jnp

    return {"float32": {}, "bfloat16": {"dtype": jnp.bfloat16}, "mixed": {"dot_dtype": jnp.bfloat16}}[mode]


def quality(reference, models: dict, config) -> list[dict]:
    """dB of each Flax mode (and of torch bf16 autocast) against torch float32 and torch bf16 autocast."""
    import numpy as np
    import torch

    from modeling_hdemucs_flax import relative_error_db, synth_song

    song = synth_song(int(7.8 * config.sampling_rate), config.sampling_rate, 2)[None]
    with torch.inference_mode():
        torch32 = reference(torch.from_numpy(song)).numpy()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch16 = reference(torch.from_numpy(song)).float().numpy()
    rows = [{"mode": "torch bf16 autocast", "vs_torch32": relative_error_db(torch16, torch32), "vs_torch16": None}]
    for mode, model in models.items():
        got = np.asarray(model(song).sources)
        rows.append(
            {
                "mode": f"flax {mode}",
                "vs_torch32": relative_error_db(got, torch32),
                "vs_torch16": relative_error_db(got, torch16),
            }
        )
    return rows


def reference_and_maker(architecture: str):
    """(torch reference model in eval mode, our config, dtype mode -> our model with the same weights)."""
    import torch

    torch.manual_seed(0)
    if architecture == "htdemucs":
        from demucs.htdemucs import HTDemucs

        from modeling_hdemucs_flax import FlaxHTDemucs, HTDemucsConfig

        config = HTDemucsConfig.from_preset("htdemucs")
        reference = HTDemucs(**config.demucs_kwargs()).eval()
        return (
            reference,
            config,
            lambda mode: FlaxHTDemucs.from_demucs(reference.state_dict(), config, **_flax_kwargs(mode)),
        )
    import torchaudio

    from modeling_hdemucs_flax import FlaxHDemucs, HDemucsConfig

    config = HDemucsConfig()
    reference = torchaudio.models.HDemucs(**config.torchaudio_kwargs()).eval()
    return (
        reference,
        config,
        lambda mode: FlaxHDemucs.from_torchaudio(reference.state_dict(), config, **_flax_kwargs(mode)),
    )


def measure(
    architecture: str, segments: list[float], repeats: int, threads: int, dtypes: list[str], xla_flags: bool
) -> dict:
    if xla_flags:
        from modeling_hdemucs_flax import configure_xla

        configure_xla()  # before JAX starts
    import jax
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    reference, config, make = reference_and_maker(architecture)
    rows, models = [], {}
    for dtype in dtypes:
        model = make(dtype)
        models[dtype] = model
        for seconds in segments:
            samples = int(round(seconds * config.sampling_rate))
            x = np.random.default_rng(0).standard_normal((1, 2, samples)).astype(np.float32) * 0.1
            xt = torch.from_numpy(x)

            def run_torch(xt=xt, dtype=dtype):
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype != "float32"):
                    return reference(xt)

            def run_flax(model=model, x=x):
                return jax.block_until_ready(model(x).sources)

            t = _interleaved({"torch": run_torch, "flax": run_flax}, repeats)
            rows.append(
                {
                    "dtype": dtype,
                    "segment": seconds,
                    "torch": t["torch"] / seconds,
                    "flax": t["flax"] / seconds,
                    "ratio": t["torch"] / t["flax"],
                    "load": os.getloadavg()[0],
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"speed": rows, "quality": quality(reference, models, config)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", choices=("hdemucs", "htdemucs"), default="hdemucs")
    parser.add_argument("--segments", type=float, nargs="+", default=None, help="default: 7.8 10 30 (HTDemucs: 7.8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--dtypes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--no-xla-flags", action="store_true", help="run Flax without configure_xla()'s flags")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    htdemucs = args.architecture == "htdemucs"
    if args.segments is None:
        args.segments = [7.8] if htdemucs else [7.8, 10.0, 30.0]
    if htdemucs and "mixed" in args.dtypes:
        args.dtypes.remove("mixed")
    if args.child:
        settings = (args.segments, args.repeats, args.threads, args.dtypes, not args.no_xla_flags)
        print(json.dumps(measure(args.architecture, *settings)))
        return
    title = "HTDemucs (demucs 4.1.0 vs FlaxHTDemucs), htdemucs release" if htdemucs else "HDemucs high"
    print(
        f"{title}, batch 1, {args.threads} threads, median of {args.repeats} interleaved warm runs, XLA flags "
        f"{'off' if args.no_xla_flags else 'on'}; s = seconds per audio-second; load = 1-min load average"
    )
    print(
        f"{'allocator':<10} {'dtype':<9} {'segment':>8} {'torch s':>8} {'flax s':>8} {'torch/flax':>11} "
        f"{'vs flax f32':>12} {'load':>5}"
    )
    qualities = []
    for name, extra in (("default", {}), ("tuned", TUNED_MALLOC)):
        env = {k: v for k, v in os.environ.items() if k not in TUNED_MALLOC} | extra
        env.setdefault("OMP_NUM_THREADS", str(args.threads))
        cmd = [sys.executable, __file__, "--child", "--repeats", str(args.repeats), "--threads", str(args.threads)]
        cmd += ["--architecture", args.architecture]
        cmd += ["--segments", *map(str, args.segments), "--dtypes", *args.dtypes]
        cmd += ["--no-xla-flags"] if args.no_xla_flags else []
        result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
        measured = json.loads(result.stdout.strip().splitlines()[-1])
        flax32 = {row["segment"]: row["flax"] for row in measured["speed"] if row["dtype"] == "float32"}
        for row in measured["speed"]:
            speedup = f"{flax32[row['segment']] / row['flax']:.2f}x" if row["segment"] in flax32 else "-"
            print(
                f"{name:<10} {row['dtype']:<9} {row['segment']:>7.1f}s {row['torch']:>8.3f} {row['flax']:>8.3f} "
                f"{row['ratio']:>10.2f}x {speedup:>12} {row['load']:>5.1f}"
            )
        qualities.append(measured["quality"])
    print("\nerror on a 7.8 s synthetic song, relative L2 in dB (random weights; the tuned run's figures)")
    print(f"{'mode':<22} {'vs torch float32':>17} {'vs torch bf16 autocast':>23}")
    for row in qualities[-1]:
        vs16 = "-" if row["vs_torch16"] is None else f"{row['vs_torch16']:.1f}"
        print(f"{row['mode']:<22} {row['vs_torch32']:>17.1f} {vs16:>23}")


if __name__ == "__main__":
    main()
