"""Forward-pass speed: torchaudio eager vs FlaxHDemucs (jitted, warm) on the same input, in one run.

Prints seconds of compute per second of audio for each framework, float32 and bfloat16 (torch: CPU
autocast; Flax: `dtype=jnp.bfloat16`), at 7.8 s / 10 s / 30 s segments, and the ratio torch / flax
(> 1 means Flax is faster): median of `--repeats` warm runs, torch and Flax interleaved. The whole table is
measured twice, each time in a fresh process: with glibc's default allocator, and "tuned":
`MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736` (torch's best CPU setting: no page faulting of
gigabytes per forward) plus `GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (XLA's: no page faulting of its scratch
buffer). Flax runs with the package's XLA flags (`configure_xla()`, as the command line does);
`--no-xla-flags` leaves them out. Weights are random (high preset); speed does not depend on their values.

    python benchmarks/bench_forward.py [--segments 7.8 10 30] [--repeats 3] [--threads 2] [--dtypes float32]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

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


def measure(segments: list[float], repeats: int, threads: int, dtypes: list[str], xla_flags: bool) -> list[dict]:
    if xla_flags:
        from modeling_hdemucs_flax import configure_xla

        configure_xla()  # before JAX starts
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import torchaudio

    from modeling_hdemucs_flax import FlaxHDemucs, HDemucsConfig

    torch.set_num_threads(threads)
    config = HDemucsConfig()
    torch.manual_seed(0)
    reference = torchaudio.models.HDemucs(**config.torchaudio_kwargs()).eval()
    rows = []
    for dtype in dtypes:
        model = FlaxHDemucs.from_torchaudio(reference.state_dict(), config, dtype=getattr(jnp, dtype))
        for seconds in segments:
            samples = int(round(seconds * config.sampling_rate))
            x = np.random.default_rng(0).standard_normal((1, 2, samples)).astype(np.float32) * 0.1
            xt = torch.from_numpy(x)

            def run_torch(xt=xt, dtype=dtype):
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
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
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=float, nargs="+", default=[7.8, 10.0, 30.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"), default=["float32", "bfloat16"])
    parser.add_argument("--no-xla-flags", action="store_true", help="run Flax without configure_xla()'s flags")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.segments, args.repeats, args.threads, args.dtypes, not args.no_xla_flags)))
        return
    print(
        f"HDemucs high, batch 1, {args.threads} threads, median of {args.repeats} interleaved warm runs, XLA flags "
        f"{'off' if args.no_xla_flags else 'on'}; s = seconds per audio-second; load = 1-min load average"
    )
    print(f"{'allocator':<10} {'dtype':<9} {'segment':>8} {'torch s':>8} {'flax s':>8} {'torch/flax':>11} {'load':>5}")
    for name, extra in (("default", {}), ("tuned", TUNED_MALLOC)):
        env = {k: v for k, v in os.environ.items() if k not in TUNED_MALLOC} | extra
        env.setdefault("OMP_NUM_THREADS", str(args.threads))
        cmd = [sys.executable, __file__, "--child", "--repeats", str(args.repeats), "--threads", str(args.threads)]
        cmd += ["--segments", *map(str, args.segments), "--dtypes", *args.dtypes]
        cmd += ["--no-xla-flags"] if args.no_xla_flags else []
        result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
        for row in json.loads(result.stdout.strip().splitlines()[-1]):
            print(
                f"{name:<10} {row['dtype']:<9} {row['segment']:>7.1f}s "
                f"{row['torch']:>8.3f} {row['flax']:>8.3f} {row['ratio']:>10.2f}x {row['load']:>5.1f}"
            )


if __name__ == "__main__":
    main()
