"""End to end, one 60 s song: our `Separator.separate` vs the published demucs pipeline, in one run.

The reference is PyPI demucs 4.1.0's `demucs.apply.apply_model` (shifts 0, split, overlap 0.25, segment 7.8 s)
with the normalisation of its `separate.py` (mono mean, std), driving torchaudio's `hdemucs_high` (`--architecture
hdemucs`, the default) or demucs's own `HTDemucs` in the released htdemucs configuration (`--architecture
htdemucs`); ours is `Separator(model).separate` with its defaults, the same weights (random; speed does not depend
on their values) and the same song (`synth_song`). The two run interleaved, median of `--repeats` warm runs, in a
fresh process per allocator setting: glibc's default, and "tuned" (`MALLOC_MMAP_MAX_=0
MALLOC_TRIM_THRESHOLD_=68719476736`, torch's best, plus `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, XLA's).

Printed: seconds for each, torch/flax (> 1: ours is faster), and our pipeline efficiency = separate time /
network time, where network time = the number of forward passes `separate` runs x one warm forward pass of
the same shape (1.00 would be a pipeline that costs nothing beyond the network).

    pip install ".[bench]"
    python benchmarks/bench_end_to_end.py [--architecture htdemucs] [--seconds 60] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

TITLES = {"hdemucs": "HDemucs high", "htdemucs": "HTDemucs (htdemucs release)"}
TUNED = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "68719476736", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def models(architecture: str):
    """(the torch reference as demucs's apply_model reads it, our Separator with the same weights, sample rate)."""
    import torch

    from modeling_hdemucs_flax import Separator

    torch.manual_seed(0)
    if architecture == "htdemucs":
        from demucs.htdemucs import HTDemucs

        from modeling_hdemucs_flax import FlaxHTDemucs, HTDemucsConfig

        config = HTDemucsConfig.from_preset("htdemucs")
        reference = HTDemucs(**config.demucs_kwargs()).eval()  # carries samplerate, segment, sources itself
        return reference, Separator(FlaxHTDemucs.from_demucs(reference.state_dict(), config)), config.samplerate
    import torchaudio

    from modeling_hdemucs_flax import FlaxHDemucs, HDemucsConfig

    config = HDemucsConfig()
    reference = torchaudio.models.hdemucs_high(list(config.sources)).eval()
    # What demucs's apply_model reads from a model object.
    reference.samplerate, reference.segment = config.sampling_rate, 7.8
    reference.sources, reference.audio_channels = list(config.sources), config.audio_channels
    return reference, Separator(FlaxHDemucs.from_torchaudio(reference.state_dict(), config)), config.sampling_rate


def measure(architecture: str, seconds: float, repeats: int, threads: int) -> dict:
    from modeling_hdemucs_flax import configure_xla

    configure_xla()  # before JAX starts, as the package's entry points do
    import numpy as np
    import torch
    from demucs.apply import apply_model

    from modeling_hdemucs_flax import synth_song

    torch.set_num_threads(threads)
    reference, separator, rate = models(architecture)
    song = synth_song(int(seconds * rate), rate, 2)

    def run_demucs() -> np.ndarray:
        wav = torch.from_numpy(song)
        ref = wav.mean(0)  # demucs/separate.py
        wav = (wav - ref.mean()) / ref.std()
        with torch.inference_mode():
            out = apply_model(reference, wav[None], shifts=0, split=True, overlap=0.25, segment=reference.segment)[0]
        return (out * ref.std() + ref.mean()).numpy()

    def run_flax() -> dict:
        return separator.separate(song, rate)

    batch = np.zeros(separator.input_shape, np.float32)
    passes = math.ceil(separator.chunks_total(song.shape[1], rate) / separator.batch_size)
    separator.warmup()
    run_demucs(), run_flax()  # warm-up: compilation, allocator
    times: dict[str, list[float]] = {"demucs": [], "flax": [], "forward": []}

    def run_forward() -> np.ndarray:
        return np.asarray(separator.forward(batch))  # the forward pass returns before the device is done

    for _ in range(repeats):
        for name, fn in (("demucs", run_demucs), ("flax", run_flax), ("forward", run_forward)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "demucs": median["demucs"],
        "flax": median["flax"],
        "forward": median["forward"],
        "passes": passes,
        "batch_size": separator.batch_size,
        "load": os.getloadavg()[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--architecture", choices=("hdemucs", "htdemucs"), default="hdemucs")
    parser.add_argument("--seconds", type=float, default=60.0, help="song length (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.architecture, args.seconds, args.repeats, args.threads)))
        return
    print(
        f"{args.seconds:g} s song, {TITLES[args.architecture]} (random weights), {args.threads} threads, "
        f"median of {args.repeats} interleaved warm runs"
    )
    header = (
        f"{'allocator':<10} {'demucs s':>9} {'flax s':>8} {'torch/flax':>11} {'passes':>7} {'forward s':>10} "
        f"{'efficiency':>11} {'load':>5}"
    )
    print(header)
    for name, extra in (("default", {}), ("tuned", TUNED)):
        env = {k: v for k, v in os.environ.items() if k not in TUNED} | extra
        env.setdefault("OMP_NUM_THREADS", str(args.threads))
        cmd = [sys.executable, __file__, "--child", "--seconds", str(args.seconds), "--repeats", str(args.repeats)]
        cmd += ["--threads", str(args.threads), "--architecture", args.architecture]
        result = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
        r = json.loads(result.stdout.strip().splitlines()[-1])
        efficiency = r["flax"] / (r["passes"] * r["forward"])
        print(
            f"{name:<10} {r['demucs']:>9.2f} {r['flax']:>8.2f} {r['demucs'] / r['flax']:>10.2f}x "
            f"{r['passes']:>7d} {r['forward']:>10.3f} {efficiency:>11.2f} {r['load']:>5.1f}"
        )
    print("efficiency = separate s / (passes x one warm forward s), batch size", r["batch_size"])


if __name__ == "__main__":
    main()
