"""What the commands share: their common arguments (model, schedule, output, host workers), reading them into
validated options, the exit statuses, and error lines worded as argparse words its own.

Light: argparse and the standard library at import; the option classes load inside the functions that use them,
so `--help` and usage errors never wait for JAX or transformers.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .. import OptionError, OutputOptions, SeparationOptions

# What LAME costs at the quality default, measured (benchmarks/bench_host.py, 2-core Xeon, music stems): about 60 ms
# of CPU per stem per audio-second, 25x what FLAC costs.
MP3_COST = "; LAME at 320 kbps, preset 2 costs about 0.25 s of CPU per second of audio for 4 stems, 25x FLAC"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _count(text: str) -> int:
    """A positive integer argument (--devices)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 1")
    return value


def add_model_arguments(parser: argparse.ArgumentParser, *, devices: bool = False) -> None:
    """The model and how it runs: --model, --revision, --device, --devices (if `devices`: for commands whose one
    process runs the network), --dtype, --matmul-precision, --compilation-cache, --no-compilation-cache."""
    from ..options import DEFAULT_MATMUL_PRECISION, MATMUL_PRECISIONS  # light: standard library only

    parser.add_argument(
        "-n",
        "--model",
        default=None,
        metavar="ID_OR_DIR",
        help="a local model folder or Hugging Face Hub repo id (default: HDEMUCS_HIGH_MUSDB_PLUS)",
    )
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")
    parser.add_argument(
        "-d",
        "--device",
        choices=("cpu", "gpu", "tpu"),
        default=None,
        help="where the network runs (JAX platform; default: JAX's choice, a GPU or TPU when one is usable)",
    )
    if devices:
        parser.add_argument(
            "--devices",
            type=_count,
            default=None,
            metavar="N",
            help="how many of the platform's devices run the network, each batch split evenly over them (default: "
            "every GPU or TPU of this machine, one CPU device). With N below the GPU count JAX opens only the "
            "first N GPUs (no memory preallocated on the others); on a TPU host the process holds every chip",
        )
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="network compute precision (default: %(default)s). On CPU keep float32: bfloat16 runs slower there "
        "(XLA:CPU converts bf16 convolutions to float32 and back); it pays on GPUs",
    )
    parser.add_argument(
        "--matmul-precision",
        choices=MATMUL_PRECISIONS,
        default=DEFAULT_MATMUL_PRECISION,
        help="how a GPU or TPU computes convolutions and matrix products of float32 values (CPUs: always "
        "float32): float32 computes them in float32, the precision the parity with torchaudio is measured at; "
        "tensorfloat32 is faster and coarser (TF32 on NVIDIA GPUs from Ampere on, 3 bfloat16 passes on TPU); "
        "bfloat16 is JAX's own default (TF32 on those GPUs, one bfloat16 pass on TPU: the fastest, the "
        "coarsest) (default: %(default)s)",
    )
    parser.add_argument(
        "--compilation-cache",
        default=None,
        metavar="DIR",
        help="folder of JAX's persistent compilation cache (default: $HDEMUCS_FLAX_COMPILATION_CACHE or "
        "~/.cache/hdemucs-flax/jax-compilation-cache)",
    )
    parser.add_argument("--no-compilation-cache", action="store_true", help="compile in every run")


def add_separation_arguments(parser: argparse.ArgumentParser, *, per_device: bool = False) -> None:
    """The schedule (`SeparationOptions`): --segment, --overlap, --shifts, --seed, --batch-size (N or auto, the
    default, settled by `load_separator` for the devices; `per_device`: for commands with --devices, which split
    each batch over them)."""
    parser.add_argument(
        "--segment", type=float, default=None, metavar="SECONDS", help="chunk length in seconds (default: 7.8)"
    )
    parser.add_argument(
        "--overlap", type=float, default=0.25, help="overlap between chunks, in [0, 1) (default: %(default)s)"
    )
    parser.add_argument(
        "--shifts",
        type=int,
        default=0,
        help="random-shift passes averaged (better, N times slower; default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random shifts (default: %(default)s)")
    split = "split evenly over the devices used (a multiple of their number); " if per_device else ""
    parser.add_argument(
        "--batch-size",
        default="auto",
        metavar="N|auto",
        help=f"chunks per forward pass, {split}default auto: 1 per device on CPU, where larger batches are no "
        "faster; on a GPU or TPU the fastest for the device, model, segment, dtype and precision, measured on first "
        "use (a few compilations) and kept in the cache folder's batch-size/"
        + ("" if per_device else "; separate-dataset takes 1 per CPU, 8 per GPU or TPU, unmeasured"),
    )


def add_io_workers_argument(parser: argparse.ArgumentParser, default: str) -> None:
    """--io-workers: host threads decoding, resampling and encoding around the network."""
    parser.add_argument(
        "--io-workers",
        type=int,
        default=None,
        metavar="N",
        help="host threads that decode and resample the next songs and encode the finished stems while the network "
        f"runs; 1: all on one thread (the stems are the same either way; default: {default})",
    )


def add_output_arguments(parser: argparse.ArgumentParser, default_ext: str = "wav", *, filename: bool = True) -> None:
    """The stem files (`OutputOptions`): --filename (unless `filename` is False: the default layout is then
    fixed), --two-stems, --other-method, the format and sample-format flags, --mp3-bitrate, --mp3-preset,
    --clip-mode."""
    from ..separation.file_output import DEFAULT_FILENAME  # light: numpy and soundfile only

    if filename:
        parser.add_argument(
            "--filename",
            default=DEFAULT_FILENAME,
            help="output path inside --out; variables {track}, {trackext}, {folder} (the file's folder below a "
            "folder given as input), {stem}, {ext} (default: %(default)s)",
        )
    else:
        parser.set_defaults(filename=DEFAULT_FILENAME)
    parser.add_argument(
        "--two-stems",
        default=None,
        metavar="STEM",
        help="write only STEM and no_STEM (e.g. vocals and the accompaniment)",
    )
    parser.add_argument(
        "--other-method",
        choices=("add", "minus", "none"),
        default="add",
        help="no_STEM is the sum of the other stems (add), the mix minus STEM (minus), or not written "
        "(none) (default: %(default)s)",
    )
    fmt = parser.add_mutually_exclusive_group()
    for ext, name in (("wav", "WAV"), ("flac", "FLAC"), ("mp3", "MP3"), ("ogg", "Ogg Vorbis")):
        default = " (the default)" if ext == default_ext else ""
        cost = MP3_COST if ext == "mp3" else ""
        fmt.add_argument(f"--{ext}", dest="ext", action="store_const", const=ext, help=f"write {name}{default}{cost}")
    depth = parser.add_mutually_exclusive_group()
    depth.add_argument("--int16", dest="subtype", action="store_const", const="PCM_16", help="16-bit integer samples")
    depth.add_argument("--int24", dest="subtype", action="store_const", const="PCM_24", help="24-bit integer samples")
    depth.add_argument(
        "--float32", dest="subtype", action="store_const", const="FLOAT", help="32-bit float samples (WAV only)"
    )
    parser.add_argument(
        "--mp3-bitrate", type=int, default=320, metavar="KBPS", help="MP3 bitrate in kbps (default: %(default)s)"
    )
    parser.add_argument(
        "--mp3-preset",
        type=int,
        default=2,
        metavar="2-7",
        help="LAME encoder preset for MP3: 2 is the best quality, 7 the fastest (default: %(default)s)",
    )
    parser.add_argument(
        "--clip-mode",
        choices=("rescale", "clamp", "none"),
        default="rescale",
        help="avoid clipping by scaling a stem down when it peaks above 1 (rescale), clipping to ±0.99 "
        "(clamp) or not at all (none) (default: %(default)s)",
    )
    parser.set_defaults(ext=default_ext, subtype=None)


def print_error(message: object) -> None:
    from .. import one_line

    print(f"error: {one_line(str(message))}", file=sys.stderr, flush=True)


def usage_error(parser: argparse.ArgumentParser, message: str) -> int:
    """Report a usage error found after parsing exactly as argparse reports its own (the command's usage line,
    then `hdemucs-flax separate: error: MESSAGE`) and return `EXIT_USAGE`. Unlike `parser.error` it raises no
    SystemExit, so a model loader may call it from a server's thread."""
    from .. import one_line

    parser.print_usage(sys.stderr)
    print(f"{parser.prog}: error: {one_line(message)}", file=sys.stderr, flush=True)
    return EXIT_USAGE


_SUBTYPE_FLAGS = {"PCM_16": "--int16", "PCM_24": "--int24", "FLOAT": "--float32"}


def as_usage(error: OptionError) -> str:
    """An option's error worded with the flag the user typed: `--overlap 1.0: must be in [0, 1)`."""
    if error.option == "subtype":
        flag = _SUBTYPE_FLAGS.get(str(error.value), f"--subtype {error.value}")
    elif error.option == "ext":
        flag = f"--{error.value}"
    else:
        flag = f"--{error.option.replace('_', '-')} {shlex.quote(str(error.value))}"
    return f"{flag}: {error.rule}"


def options_from(args: argparse.Namespace) -> tuple[SeparationOptions, OutputOptions]:
    """The options of `add_separation_arguments` and `add_output_arguments`, validated; a bad value is a usage
    error (exit 2) worded with its flag. `--batch-size auto` gives the CPU's default batch size here: the command
    settles it once it knows the device (`choose_batch_size`, `dataset_cli`)."""
    from .. import OptionError, OutputOptions, SeparationOptions  # light: no JAX, no transformers
    from ..options import MAX_BATCH_SIZE, check_batch_split, check_io_workers, default_batch_size

    if auto_batch_size(args):
        batch_size = default_batch_size("cpu")
    else:
        try:
            batch_size = int(args.batch_size)
        except ValueError:
            rule = f"must be an integer in [1, {MAX_BATCH_SIZE}] or auto"
            args.command_parser.error(f"--batch-size {shlex.quote(str(args.batch_size))}: {rule}")
    try:
        schedule = SeparationOptions(
            segment=args.segment,
            overlap=args.overlap,
            shifts=args.shifts,
            seed=args.seed,
            batch_size=batch_size,
        )
        if not auto_batch_size(args) and getattr(args, "devices", None) is not None:
            check_batch_split(batch_size, args.devices)
        if getattr(args, "io_workers", None) is not None:
            check_io_workers(args.io_workers)
        output = OutputOptions(
            filename=args.filename,
            ext=args.ext,
            subtype=args.subtype,
            two_stems=args.two_stems,
            other_method=args.other_method,
            clip_mode=args.clip_mode,
            mp3_bitrate=args.mp3_bitrate,
            mp3_preset=args.mp3_preset,
        )
    except OptionError as error:
        args.command_parser.error(as_usage(error))
    return schedule, output


def auto_batch_size(args: argparse.Namespace) -> bool:
    """Whether `--batch-size` is auto (the default): the command chooses it for the device."""
    from ..options import AUTO_BATCH_SIZE

    return str(args.batch_size).strip().lower() == AUTO_BATCH_SIZE
