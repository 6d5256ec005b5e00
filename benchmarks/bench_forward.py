"""Forward-pass speed: torchaudio eager vs FlaxHDemucs (jitted, warm) on the same input, in one run.

Prints seconds of compute per second of audio for each framework, float32 and bfloat16 (torch: CPU
autocast; Flax: `dtype=jnp.bfloat16`), at 7.8 s / 10 s / 30 s segments, and the ratio torch / flax
(> 1 means Flax is faster). The whole table is measured twice, each time in a fresh process: with glibc's
default allocator, and with `MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736` (torch's best CPU
setting here: no page faulting of gigabytes per forward). Weights are random (high preset); speed does not
depend on their values.

    python benchmarks/bench_forward.py [--segments 7.8 10 30] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

TUNED_MALLOC = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736"}


def _best_of(fn, repeats: int) -> float:
    fn()  # warm-up (jit compilation for Flax, allocator warm-up for torch)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(segments: list[float], repeats: int, threads: int) -> list[dict]:
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
    for dtype in ("float32", "bfloat16"):
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

            t_torch = _best_of(run_torch, repeats)
            t_flax = _best_of(run_flax, repeats)
            rows.append(
                {
                    "dtype": dtype,
                    "segment": seconds,
                    "torch": t_torch / seconds,
                    "flax": t_flax / seconds,
                    "ratio": t_torch / t_flax,
                }
            )
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--segments", type=float, nargs="+", default=[7.8, 10.0, 30.0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.segments, args.repeats, args.threads)))
        return
    print(
        f"HDemucs high, batch 1, {args.threads} threads, best of {args.repeats} warm runs; s = seconds per audio-second"
    )
    print(f"{'allocator':<10} {'dtype':<9} {'segment':>8} {'torch s':>8} {'flax s':>8} {'torch/flax':>11}")
    for name, extra in (("default", {}), ("tuned", TUNED_MALLOC)):
        env = {k: v for k, v in os.environ.items() if k not in TUNED_MALLOC} | extra
        env.setdefault("OMP_NUM_THREADS", str(args.threads))
        cmd = [
            sys.executable,
            __file__,
            "--child",
            "--repeats",
            str(args.repeats),
            "--threads",
            str(args.threads),
            "--segments",
            *map(str, args.segments),
        ]
        result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
        for row in json.loads(result.stdout.strip().splitlines()[-1]):
            print(
                f"{name:<10} {row['dtype']:<9} {row['segment']:>7.1f}s "
                f"{row['torch']:>8.3f} {row['flax']:>8.3f} {row['ratio']:>10.2f}x"
            )


if __name__ == "__main__":
    main()
