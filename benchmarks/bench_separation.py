"""Peak memory and start-up time of `Separator.separate_file` (a benchmark that prints a table, not a test).

    python benchmarks/bench_separation.py                    # full-size HDemucs (random weights), float32
    python benchmarks/bench_separation.py --model DIR_OR_ID  # a saved model instead
    python benchmarks/bench_separation.py --config tiny      # a seconds-long smoke run of the same script

Every measurement runs in a fresh child process, so peak RSS (`ru_maxrss`) is that run's alone:
  cold start   empty compilation cache: import + model load + compile of the one forward shape
  warm start   the same with the cache the cold run filled (what a second `hdemucs-flax` run pays)
  1 min, 10 min  separating a generated 44.1 kHz stereo 16-bit WAV of that length to WAV stems
                 (warm cache; default options: 7.8 s segments, overlap 0.25, batch 1, clip mode rescale)
Streaming should keep the 10-minute peak within 1.3x of the 1-minute one.
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

CHILD = Path(__file__).with_name("separation_child.py")  # one measurement, in its own process


def run_child(options: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    started = time.perf_counter()
    done = subprocess.run([sys.executable, str(CHILD), json.dumps(options)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"benchmark child failed:\n{done.stderr[-4000:]}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    result["wall_s"] = time.perf_counter() - started
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("high", "tiny"), default="high", help="random-weight model size")
    parser.add_argument("--model", default=None, help="a saved model folder or Hub id instead of random weights")
    parser.add_argument("--minutes", type=float, nargs="+", default=[1.0, 10.0])
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args()

    from modeling_hdemucs_flax.synthetic import write_synth_wav

    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        base = {
            "model": args.model,
            "config": args.config,
            "cache": str(scratch / "cache"),
            "batch_size": args.batch_size,
            "song": None,
            "out": str(scratch / "out"),
        }
        rows = [("cold start (empty cache)", run_child(base)), ("warm start (cache filled)", run_child(base))]
        for minutes in args.minutes:
            song = write_synth_wav(scratch / f"song_{minutes:g}min.wav", minutes)
            result = run_child({**base, "song": str(song)})
            result["rtf"] = result["separate_s"] / (minutes * 60)
            rows.append((f"separate {minutes:g} min file", result))
            song.unlink()

    print(
        f"model: {args.model or args.config + ' (random weights)'}, batch size {args.batch_size}, "
        f"jax {__import__('jax').__version__} on {__import__('jax').default_backend()}, {os.cpu_count()} CPUs"
    )
    print(
        f"{'run':28} {'import s':>9} {'load s':>8} {'compile s':>10} {'separate s':>11} {'s/audio s':>11} "
        f"{'peak RSS MB':>12} {'wall s':>8}"
    )
    for name, r in rows:
        separate = f"{r['separate_s']:.1f}" if "separate_s" in r else "-"
        rtf = f"{r['rtf']:.3f}" if "rtf" in r else "-"
        print(
            f"{name:28} {r['import_s']:9.1f} {r['load_s']:8.1f} {r['compile_s']:10.1f} {separate:>11} {rtf:>11} "
            f"{r['peak_rss_mb']:12.0f} {r['wall_s']:8.1f}"
        )
    songs = [r for name, r in rows if name.startswith("separate")]
    if len(songs) >= 2:
        print(
            f"peak RSS ratio, longest / shortest file: {songs[-1]['peak_rss_mb'] / songs[0]['peak_rss_mb']:.2f} "
            "(target <= 1.3)"
        )


if __name__ == "__main__":
    main()
