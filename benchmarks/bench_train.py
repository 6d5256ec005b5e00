"""What a training step costs: full-size HDemucs (the high preset) or HTDemucs with random weights, fine-tuned on
synthetic multitrack folders by `Trainer` exactly as `hdemucs-flax train` runs it.

Prints, per (architecture, batch size, segment): the first step (compilation included), the median of the
following steps, seconds of compute per second of training audio, and the fraction of step time spent waiting
for the data loader (reading, cutting, augmenting in worker threads). `--smoke` runs the tiny test config for a
few steps (the test suite runs that, so the script cannot rot).

    python benchmarks/bench_train.py [--architecture htdemucs] [--batch-size 4] [--segment 7.8] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def make_model(architecture: str, smoke: bool):
    from modeling_hdemucs_flax import FlaxHDemucs, FlaxHTDemucs, HDemucsConfig, HTDemucsConfig

    if smoke:
        return FlaxHDemucs(HDemucsConfig.from_preset("low", channels=4, norm_starts=2, dconv_lstm=3, dconv_attn=3))
    if architecture == "htdemucs":
        return FlaxHTDemucs(HTDemucsConfig.from_preset("htdemucs"))
    return FlaxHDemucs(HDemucsConfig())


def measure(architecture: str, batch_size: int, segment: float, steps: int, smoke: bool) -> dict:
    import jax

    from modeling_hdemucs_flax import Trainer, TrainOptions, configure_compilation_cache, find_multitracks
    from modeling_hdemucs_flax.synthetic import STEM_NAMES

    configure_compilation_cache(True)  # as the command line: $HDEMUCS_FLAX_COMPILATION_CACHE, else the user's cache

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from multitrack_helpers import write_multitracks

    model = make_model(architecture, smoke)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        seconds = segment + 3
        write_multitracks(root / "train", 4, seconds)
        write_multitracks(root / "valid", 1, min(seconds, 4), first=10)
        options = TrainOptions(
            steps=steps,
            batch_size=batch_size,
            segment=segment,
            valid_every=10**6,
            checkpoint_every=10**6,
            remix_group=4 if batch_size % 4 == 0 else batch_size,
        )
        trainer = Trainer(
            model,
            find_multitracks(root / "train", STEM_NAMES),
            find_multitracks(root / "valid", STEM_NAMES),
            root / "run",
            options,
        )
        times: list[float] = []
        waits: list[float] = []

        def progress(step: int, figures: dict[str, float]) -> None:
            times.append(figures["step_seconds"])
            waits.append(figures["data_wait_seconds"])

        started = time.perf_counter()
        result = trainer.fit(progress=progress)
        wall = time.perf_counter() - started
    steady = times[1:] or times
    median = statistics.median(steady)
    audio = batch_size * segment
    return {
        "architecture": "tiny" if smoke else architecture,
        "cpu": cpu_name(),
        "devices": str(jax.devices()[0].platform),
        "batch_size": batch_size,
        "segment_s": segment,
        "first_step_s": round(times[0], 2),
        "median_step_s": round(median, 3),
        "s_per_audio_s": round(median / audio, 4),
        "data_wait": round(sum(waits[1:]) / max(sum(steady) + sum(waits[1:]), 1e-9), 4),
        "wall_s": round(wall, 1),
        "steps": result.step,
    }


def measure_loader(batch_size: int, segment: float, workers: int, batches: int, dataset_rate: int = 44100) -> dict:
    """The data loader alone (reading WAV segments, cutting, augmenting in `workers` threads; resampling each
    example too for a `dataset_rate` other than the model's 44.1 kHz): examples per second it makes, what an
    accelerator's step may take at least for the loader to keep up."""
    from modeling_hdemucs_flax import find_multitracks
    from modeling_hdemucs_flax.synthetic import STEM_NAMES
    from modeling_hdemucs_flax.training.data import BatchLoader, TrainingSet

    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from multitrack_helpers import write_multitracks

    with tempfile.TemporaryDirectory() as folder:
        write_multitracks(Path(folder), 8, 30.0, dataset_rate, subtype="PCM_16")  # MUSDB18-HQ's WAVs are 16-bit
        rate = 44100
        data = TrainingSet(
            find_multitracks(folder, STEM_NAMES), STEM_NAMES, rate, 2, round(segment * rate), rate, rate, workers
        )
        loader = BatchLoader(
            data, batch_size, seed=0, group_size=4 if batch_size % 4 == 0 else batch_size, workers=workers
        )
        next(loader)  # the pool started, the first batches under way
        started = time.perf_counter()
        for _ in range(batches):
            next(loader)
        seconds = time.perf_counter() - started
        loader.close()
    per_second = batches * batch_size / seconds
    return {
        "loader_workers": workers,
        "dataset_rate": dataset_rate,
        "cpu": cpu_name(),
        "batch_size": batch_size,
        "segment_s": segment,
        "examples_per_s": round(per_second, 1),
        "min_step_s": round(batch_size / per_second, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", choices=("hdemucs", "htdemucs"), default="hdemucs")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--segment", type=float, default=None, help="seconds (default: 7.8, HTDemucs 7.8)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--smoke", action="store_true", help="the tiny test config, a few steps")
    parser.add_argument("--jsonl", type=Path, default=None, help="also append the row to this file")
    parser.add_argument(
        "--loader", type=int, nargs="*", default=None, metavar="WORKERS", help="time the data loader alone instead"
    )
    parser.add_argument(
        "--dataset-rate",
        type=int,
        default=44100,
        metavar="HZ",
        help="the loader's tracks' sample rate (default: 44100)",
    )
    args = parser.parse_args(argv)
    segment = args.segment or (8192 / 44100 if args.smoke else 7.8)
    if args.loader is not None:
        for workers in args.loader or [1, 2]:
            row = measure_loader(args.batch_size, segment, workers, 3 if args.smoke else 20, args.dataset_rate)
            print(json.dumps(row))
            print(
                f"loader, {workers} thread(s), tracks at {args.dataset_rate} Hz on {row['cpu']}: "
                f"{row['examples_per_s']} examples of {segment:.2f} s per "
                f"second: a step of {args.batch_size} may take {row['min_step_s']} s or more without waiting for data"
            )
        return 0
    row = measure(args.architecture, args.batch_size, segment, args.steps, args.smoke)
    print(json.dumps(row))
    print(
        f"{row['architecture']}, batch {row['batch_size']} x {row['segment_s']:.2f} s on {row['cpu']}: first step "
        f"{row['first_step_s']} s (compiling), then {row['median_step_s']} s per step = {row['s_per_audio_s']} s "
        f"per second of training audio; waiting for data {100 * row['data_wait']:.1f} % of step time"
    )
    if args.jsonl:
        with open(args.jsonl, "a") as handle:
            handle.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
