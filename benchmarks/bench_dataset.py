"""Throughput of `hdemucs-flax separate-dataset`: the local engine vs Ray with 1 and 2 workers on this machine
(a benchmark that prints a table, not a test).

    python benchmarks/bench_dataset.py                          # full-size HDemucs (random weights), 6 x 20 s
    python benchmarks/bench_dataset.py --tracks 12 --seconds 30
    python benchmarks/bench_dataset.py --config tiny            # a quick smoke run of the same script

Every run is the command itself in a fresh process over the same library of generated 44.1 kHz stereo WAVs,
written as FLAC stems into a fresh output, with a compilation cache filled beforehand by an untimed run (so
each worker loads the compiled network instead of compiling it). The Ray runs start their own local cluster
(`ray.init()` with every CPU), as a user without `--ray-address` gets. Reported: wall time from launch to
exit, tracks and audio-hours per hour of that wall time, the workers' start-up (model load + compile, the
slowest worker), and Ray's overhead over the local engine (wall time ratio - 1).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def write_library(folder: Path, tracks: int, seconds: float, rate: int = 44100) -> None:
    import soundfile as sf

    from modeling_hdemucs_flax import synth_song

    for index in range(tracks):
        album = folder / f"album{index % 3}"
        album.mkdir(parents=True, exist_ok=True)
        sf.write(album / f"track{index:03d}.wav", synth_song(int(seconds * rate), rate, 2, seed=index).T, rate)


def save_model(folder: Path, config_name: str) -> None:
    from modeling_hdemucs_flax import FlaxHDemucs, HDemucsConfig

    if config_name == "high":
        config = HDemucsConfig()
    else:
        config = HDemucsConfig.from_preset("low", channels=4, norm_starts=2, dconv_lstm=3, dconv_attn=3)
    FlaxHDemucs(config, seed=0).save_pretrained(folder, safe_serialization=True)


def run(library: Path, out: Path, model: Path, cache: Path, *flags: str) -> dict:
    env = dict(
        os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    command = [sys.executable, "-m", "modeling_hdemucs_flax", "separate-dataset", str(library), "-o", str(out)]
    command += ["--model", str(model), "--compilation-cache", str(cache), "-q", *flags]
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"run failed ({' '.join(flags)}):\n{done.stderr[-4000:]}")
    summary = json.loads((out / "summary.json").read_text())
    workers = summary["workers"].values()
    return {
        "wall_s": wall,
        "tracks": summary["counts"]["ok"],
        "audio_s": summary["audio_hours"] * 3600,
        "startup_s": max(w["model_load_s"] + w["compile_s"] for w in workers),
        "workers": len(summary["workers"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("high", "tiny"), default="high", help="random-weight model size")
    parser.add_argument("--tracks", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each track")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        model, cache, library = scratch / "model", scratch / "cache", scratch / "library"
        save_model(model, args.config)
        write_library(library, args.tracks, args.seconds)
        warm = scratch / "warm"
        write_library(warm, 1, 1.0)
        run(warm, scratch / "warm-out", model, cache)  # fills the compilation cache (untimed)
        rows = [
            ("local", run(library, scratch / "out-local", model, cache)),
            ("ray, 1 worker", run(library, scratch / "out-ray1", model, cache, "--engine", "ray", "--workers", "1")),
            ("ray, 2 workers", run(library, scratch / "out-ray2", model, cache, "--engine", "ray", "--workers", "2")),
        ]

    print(
        f"model: {args.config} (random weights), {args.tracks} tracks x {args.seconds:g} s, FLAC stems, "
        f"{os.cpu_count()} CPUs"
    )
    print(f"{'engine':16} {'wall s':>7} {'start-up s':>10} {'tracks/h':>9} {'audio-h/h':>10} {'x local wall':>13}")
    local_wall = rows[0][1]["wall_s"]
    for name, r in rows:
        per_hour = 3600 / r["wall_s"]
        print(
            f"{name:16} {r['wall_s']:7.1f} {r['startup_s']:10.1f} {r['tracks'] * per_hour:9.0f} "
            f"{r['audio_s'] / r['wall_s']:10.3f} {r['wall_s'] / local_wall:12.2f}x"
        )


if __name__ == "__main__":
    main()
