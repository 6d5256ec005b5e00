"""`hdemucs-flax separate-dataset`: a whole library, resumable, on this machine or a Ray cluster.

    hdemucs-flax separate-dataset music/ catalogue.parquet s3://bucket/more/ -o s3://bucket/stems
    hdemucs-flax separate-dataset music/ -o stems --engine ray --ray-address auto --workers 8 --gpus-per-worker 1

The work is `dataset.separate_dataset`'s; this module only parses arguments (registered by `cli.COMMANDS`,
imported at parser-build time, so it imports nothing heavy) and words results and errors for a terminal.
Exit status: 0 every input separated or skipped, 1 any input or the model failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def _memory(text: str) -> int:
    """Bytes from `8G`, `512MiB`, `1.5g` or a plain number."""
    match = _SIZE.match(text)
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 8G, 512M, or bytes)")
    scale = 1024 ** " kmgt".index((match.group(2) or " ").lower())
    return int(float(match.group(1)) * scale)


def _storage_option(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def register(commands: argparse._SubParsersAction) -> None:
    from .arguments import add_io_workers_argument, add_model_arguments, add_output_arguments, add_separation_arguments

    sub = commands.add_parser(
        "separate-dataset",
        help="separate a whole library (folders, globs, URLs, list/CSV/parquet files), resumably",
        description="Separate every input into OUTPUT_URI (a folder or an fsspec URL such as s3://bucket/stems). "
        "A track's key is its path relative to its input folder without extension; its stems go to "
        "OUTPUT_URI/<key's folder>/<--filename>. Finished tracks get a completion marker and are skipped by later "
        "runs; manifest.jsonl (one row per input) and summary.json are written beside them.",
    )
    sub.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="audio files, folders (recursive), globs, fsspec URLs, or .txt/.lst/.csv/.parquet lists of paths "
        "(CSV and parquet: a 'path' column, optionally a 'key' column)",
    )
    sub.add_argument("-o", "--out", required=True, metavar="OUTPUT_URI", help="output folder or fsspec URL")
    run = sub.add_argument_group("engine")
    run.add_argument("--engine", choices=("local", "ray"), default="local", help="where to run (default: local)")
    run.add_argument(
        "--ray-address",
        default=None,
        metavar="A",
        help="join this Ray cluster (default: $RAY_ADDRESS, else start a local one for this command)",
    )
    run.add_argument(
        "--workers",
        type=int,
        default=1,
        help="Ray actors, one Separator each, computing on every device it holds: its GPUs, its TPU chips, else "
        "the CPU (--device defaults to them) (default: 1)",
    )
    run.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        metavar="G",
        help="GPUs per worker: whole GPUs (1, 2), or a share of one (0.5: its JAX takes at most 90%% of that share "
        "of the GPU's memory). A worker without GPUs sees none",
    )
    run.add_argument("--cpus-per-worker", type=float, default=1.0, metavar="C", help="CPUs per worker (default: 1)")
    run.add_argument("--memory-per-worker", type=_memory, default=None, metavar="M", help="memory per worker (8G)")
    run.add_argument("--tpus-per-worker", type=int, default=0, metavar="T", help="TPU chips per worker (1, 2, 4 or 8)")
    job = sub.add_argument_group("resuming and failures")
    job.add_argument(
        "--overwrite", action="store_true", help="re-separate inputs finished with other options (replacing them)"
    )
    job.add_argument(
        "--retry-failed", action="store_true", help="separate only the inputs recorded as failed (skipped by default)"
    )
    job.add_argument(
        "--max-attempts",
        type=int,
        default=3,
        metavar="K",
        help="worker deaths an input may cause before it is recorded as failed (default: %(default)s)",
    )
    job.add_argument("--limit", type=int, default=None, metavar="N", help="separate at most N inputs in this run")
    job.add_argument(
        "--storage-option",
        type=_storage_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an fsspec option for URLs (repeatable; VALUE is JSON or a string), e.g. endpoint_url=http://...",
    )
    job.add_argument("--scratch-dir", default=None, metavar="DIR", help="local folder for downloads and staging")
    add_model_arguments(sub)
    add_output_arguments(sub, default_ext="flac")
    add_separation_arguments(sub)
    add_io_workers_argument(sub, "the local process's CPU cores; a Ray worker's --cpus-per-worker")
    sub.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    sub.set_defaults(handler=command, command_parser=sub)


def _auto_batch_size(args: argparse.Namespace) -> int:
    """`--batch-size auto` for the workers, unmeasured (every worker must use the batch size its completion markers
    name): the platform's default per device (`default_batch_size`: --device, else what the workers reserve) times
    the devices a Ray worker holds; on CPU the default batch (one chunk) is one chunk per device a worker has."""
    from ..options import default_batch_size

    platform = args.device or ("tpu" if args.tpus_per_worker else "gpu" if args.gpus_per_worker else "cpu")
    held = (args.tpus_per_worker or int(args.gpus_per_worker)) if args.engine == "ray" else 0
    return default_batch_size(platform) * max(1, held)


def command(args: argparse.Namespace) -> int:
    from .arguments import EXIT_FAILED, as_usage, auto_batch_size, options_from, print_error, usage_error

    schedule, output = options_from(args)
    if auto_batch_size(args):
        schedule = schedule.replace(batch_size=_auto_batch_size(args))
    from tqdm import tqdm

    from .. import DatasetError, ModelLoadError, OptionError
    from .dataset import WorkerResources, separate_dataset

    def report_failure(row: dict) -> None:
        if row["status"] == "failed":
            tqdm.write(f"error: {row['error']}", file=sys.stderr)

    try:
        resources = WorkerResources(
            workers=args.workers,
            gpus_per_worker=args.gpus_per_worker,
            cpus_per_worker=args.cpus_per_worker,
            memory_per_worker=args.memory_per_worker,
            tpus_per_worker=args.tpus_per_worker,
            ray_address=args.ray_address,
        )
        report = separate_dataset(
            args.inputs,
            args.out,
            model=args.model,
            revision=args.revision,
            dtype=args.dtype,
            matmul_precision=args.matmul_precision,
            schedule=schedule,
            output_options=output,
            engine=args.engine,
            resources=resources,
            overwrite=args.overwrite,
            retry_failed=args.retry_failed,
            max_attempts=args.max_attempts,
            limit=args.limit,
            compilation_cache=False if args.no_compilation_cache else (args.compilation_cache or True),
            storage_options=dict(args.storage_option) or None,
            scratch_dir=args.scratch_dir,
            device=args.device,
            io_workers=args.io_workers,
            progress=False if args.quiet else None,
            on_row=report_failure,
        )
    except OptionError as error:  # usage errors look like argparse's own, as for every command
        return usage_error(args.command_parser, as_usage(error))
    except DatasetError as error:
        return usage_error(args.command_parser, str(error))
    except ModelLoadError as error:
        print_error(error)
        return EXIT_FAILED
    summary = report.summary
    if report.failed_before:
        print(
            f"note: {report.failed_before} input(s) that failed in an earlier run were skipped "
            "(--retry-failed retries them)",
            file=sys.stderr,
        )
    print(
        f"{report.output}: {report.ok} separated, {report.skipped} skipped, {report.failed} failed; "
        f"{summary['audio_hours']:.3f} audio hours in {summary['wall_s']:.1f} s; manifest {report.manifest}"
    )
    return report.exit_status
