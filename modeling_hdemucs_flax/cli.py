"""The `hdemucs-flax` command (also `python -m modeling_hdemucs_flax`), modelled on `demucs`.

    hdemucs-flax separate song.mp3 more_songs/ -o separated --two-stems vocals --mp3

Exit status: 0 when every file was separated, 1 when any input, output or the model failed (each problem
is one line on stderr naming the file; the other files are still processed), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import OptionError, OutputOptions, SeparationOptions, Separator

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and how it runs: --model, --revision, --dtype, --compilation-cache, --no-compilation-cache."""
    parser.add_argument(
        "-n",
        "--model",
        default=None,
        metavar="ID_OR_DIR",
        help="a local model folder or Hugging Face Hub repo id (default: HDEMUCS_HIGH_MUSDB_PLUS)",
    )
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) of --model")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="network compute precision (default: %(default)s). On CPU keep float32: bfloat16 runs slower there "
        "(XLA:CPU converts bf16 convolutions to float32 and back); it pays on GPUs",
    )
    parser.add_argument(
        "--compilation-cache",
        default=None,
        metavar="DIR",
        help="folder of JAX's persistent compilation cache (default: $HDEMUCS_FLAX_COMPILATION_CACHE or "
        "~/.cache/hdemucs-flax/jax-compilation-cache)",
    )
    parser.add_argument("--no-compilation-cache", action="store_true", help="compile in every run")


def add_separation_arguments(parser: argparse.ArgumentParser) -> None:
    """The schedule (`SeparationOptions`): --segment, --overlap, --shifts, --seed, --batch-size."""
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
    parser.add_argument("--batch-size", type=int, default=1, help="chunks per forward pass (default: %(default)s)")


def add_output_arguments(parser: argparse.ArgumentParser, default_ext: str = "wav") -> None:
    """The stem files (`OutputOptions`): --filename, --two-stems, --other-method, the format and sample-format
    flags, --clip-mode."""
    parser.add_argument(
        "--filename",
        default="{track}/{stem}.{ext}",
        help="output path inside --out; variables {track}, {trackext}, {stem}, {ext} (default: %(default)s)",
    )
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
        fmt.add_argument(f"--{ext}", dest="ext", action="store_const", const=ext, help=f"write {name}{default}")
    depth = parser.add_mutually_exclusive_group()
    depth.add_argument("--int16", dest="subtype", action="store_const", const="PCM_16", help="16-bit integer samples")
    depth.add_argument("--int24", dest="subtype", action="store_const", const="PCM_24", help="24-bit integer samples")
    depth.add_argument(
        "--float32", dest="subtype", action="store_const", const="FLOAT", help="32-bit float samples (WAV only)"
    )
    parser.add_argument(
        "--clip-mode",
        choices=("rescale", "clamp", "none"),
        default="rescale",
        help="avoid clipping by scaling a stem down when it peaks above 1 (rescale), clipping to ±0.99 "
        "(clamp) or not at all (none) (default: %(default)s)",
    )
    parser.set_defaults(ext=default_ext, subtype=None)


def _add_separate_command(commands: argparse._SubParsersAction) -> None:
    sep = commands.add_parser(
        "separate",
        help="separate audio files into stems (drums, bass, other, vocals)",
        description="Separate audio files into stems. Stems keep the input's sample rate, channel count and (by "
        "default) bit depth; they appear only when complete.",
    )
    sep.add_argument(
        "inputs",
        nargs="+",
        metavar="FILES_OR_DIRS",
        help="audio files (WAV, FLAC, OGG, MP3, AIFF) or folders searched recursively for them",
    )
    sep.add_argument("-o", "--out", default="separated", type=Path, help="output folder (default: %(default)s)")
    add_model_arguments(sep)
    add_output_arguments(sep)
    add_separation_arguments(sep)
    sep.add_argument("-q", "--quiet", action="store_true", help="no progress bars or status lines")
    sep.set_defaults(handler=separate_command, command_parser=sep)


def _add_separate_dataset_command(commands: argparse._SubParsersAction) -> None:
    from .dataset_cli import register  # argparse only; the work is imported by its handler

    register(commands)


def _add_serve_command(commands: argparse._SubParsersAction) -> None:
    srv = commands.add_parser(
        "serve",
        help="separate over HTTP: an API server (needs the [serve] extra)",
        description="Serve separation over HTTP (FastAPI + uvicorn). The model is loaded and compiled once; "
        "/v1/health answers 503 until then. Set HDEMUCS_API_TOKEN to require 'Authorization: Bearer <token>'. "
        "The model, schedule and output options below are the defaults of every request; a request may set "
        "two_stems, format, shifts and overlap.",
    )
    add_model_arguments(srv)
    add_output_arguments(srv)
    add_separation_arguments(srv)
    server = srv.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    server.add_argument("--port", type=int, default=8000, help="port to listen on (default: %(default)s)")
    server.add_argument(
        "--max-upload",
        default=None,
        metavar="SIZE",
        help="largest upload, in bytes or like 200mb (default: $HDEMUCS_API_MAX_UPLOAD or 200mb)",
    )
    server.add_argument(
        "--max-duration",
        type=float,
        default=None,
        metavar="SECONDS",
        help="longest song (default: $HDEMUCS_API_MAX_DURATION or 600)",
    )
    server.add_argument(
        "--queue-size",
        type=int,
        default=None,
        metavar="N",
        help="requests waiting while one runs; more get 429 (default: $HDEMUCS_API_QUEUE_SIZE or 8)",
    )
    server.add_argument(
        "--job-ttl",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long a finished job's result is kept (default: $HDEMUCS_API_JOB_TTL or 3600)",
    )
    server.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="folder under which uploads and results are kept while needed (default: the system temp folder)",
    )
    server.add_argument(
        "--preload",
        action="store_true",
        help="only load (download and cache) the model, then exit: for building a container image",
    )
    srv.add_argument("-q", "--quiet", action="store_true", help="no status lines or access log")
    srv.set_defaults(handler=serve_command, command_parser=srv)


# Each subcommand registers its parser with `handler` (args -> exit status) and `command_parser` (for usage
# errors) as defaults. Subcommands with their own module import it inside their handler, keeping --help light.
COMMANDS = (_add_separate_command, _add_separate_dataset_command, _add_serve_command)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `hdemucs-flax` and its subcommands."""
    parser = argparse.ArgumentParser(
        prog="hdemucs-flax", description="Hybrid Demucs music source separation in JAX/Flax."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add_command in COMMANDS:
        add_command(commands)
    return parser


def find_audio(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """(files to separate, one-line problems). Folders contribute their audio files, recursively, sorted."""
    from . import AUDIO_EXTENSIONS

    files, problems = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS)
            if not found:
                problems.append(f"{path}: no audio files in this folder ({', '.join(AUDIO_EXTENSIONS)})")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            problems.append(f"{path}: no such file or directory")
    return files, problems


def _status(quiet: bool, message: str) -> None:
    if not quiet and sys.stderr.isatty():
        print(message, file=sys.stderr, flush=True)


def _error(message: object) -> None:
    from . import one_line

    print(f"error: {one_line(str(message))}", file=sys.stderr, flush=True)


def _follow(bar):
    """A Separator progress callback that moves the tqdm `bar`."""

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return progress


_SUBTYPE_FLAGS = {"PCM_16": "--int16", "PCM_24": "--int24", "FLOAT": "--float32"}


def _as_usage(error: OptionError) -> str:
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
    error (exit 2) worded with its flag."""
    from . import OptionError, OutputOptions, SeparationOptions  # light: no JAX, no transformers

    try:
        schedule = SeparationOptions(
            segment=args.segment,
            overlap=args.overlap,
            shifts=args.shifts,
            seed=args.seed,
            batch_size=args.batch_size,
        )
        output = OutputOptions(
            filename=args.filename,
            ext=args.ext,
            subtype=args.subtype,
            two_stems=args.two_stems,
            other_method=args.other_method,
            clip_mode=args.clip_mode,
        )
    except OptionError as error:
        args.command_parser.error(_as_usage(error))
    return schedule, output


def load_separator(args: argparse.Namespace, schedule: SeparationOptions, output: OutputOptions) -> Separator | int:
    """The Separator of `add_model_arguments`' options with `schedule`, compiled and ready; or the exit status
    after a one-line error (the model cannot be loaded: 1; an option this model cannot honour: 2)."""
    from . import ModelLoadError, OptionError, Separator, configure_compilation_cache

    configure_compilation_cache(False if args.no_compilation_cache else (args.compilation_cache or True))
    _status(args.quiet, f"loading model {args.model or '(default)'} ...")
    try:
        separator = Separator.from_pretrained(
            args.model, revision=args.revision, dtype=args.dtype, **dataclasses.asdict(schedule)
        )
        output.stem_names(separator.sources)  # --two-stems must name one of this model's sources
    except ModelLoadError as error:
        _error(error)
        return EXIT_FAILED
    except OptionError as error:
        _error(_as_usage(error))
        return EXIT_USAGE
    _status(args.quiet, "compiling the model (cached for later runs) ...")
    separator.warmup()
    return separator


def separate_command(args: argparse.Namespace) -> int:
    schedule, output = options_from(args)
    files, problems = find_audio(args.inputs)
    for problem in problems:
        _error(problem)
    if not files:
        return EXIT_FAILED

    # Heavy imports only once there is work: `--help` and usage errors stay fast.
    from tqdm import tqdm

    from . import HDemucsFlaxError, separate_file

    separator = load_separator(args, schedule, output)
    if isinstance(separator, int):
        return separator

    failed = len(problems)
    disable = True if args.quiet else None  # tqdm: None = bars only on a terminal
    with tqdm(total=len(files), desc="files", unit="file", position=0, disable=disable) as overall:
        for path in files:
            with tqdm(desc=path.name, unit="chunk", position=1, leave=False, disable=disable) as bar:
                try:
                    written = separate_file(separator, path, args.out, output, progress=_follow(bar))
                except HDemucsFlaxError as error:
                    failed += 1
                    message = str(error)
                    _error(message if message.startswith(str(path)) else f"{path}: {message}")
                except (OSError, ValueError, RuntimeError) as error:  # anything unforeseen: still one line
                    failed += 1
                    _error(f"{path}: {type(error).__name__}: {error}")
                else:
                    folder = os.path.commonpath([str(p.parent) for p in written.values()])
                    tqdm.write(f"{path}: {len(written)} stems in {folder}", file=sys.stdout)
            overall.update(1)
    return EXIT_OK if failed == 0 else EXIT_FAILED


_LIMIT_FLAGS = {
    "max_upload_bytes": "--max-upload",
    "max_duration": "--max-duration",
    "queue_size": "--queue-size",
    "job_ttl": "--job-ttl",
}


def serve_command(args: argparse.Namespace) -> int:
    schedule, output = options_from(args)
    args.model = args.model or os.environ.get("HDEMUCS_MODEL") or None  # the container's build argument
    if args.preload:
        from . import ModelLoadError, load_model

        try:
            load_model(args.model, revision=args.revision)
        except ModelLoadError as error:
            _error(error)
            return EXIT_FAILED
        return EXIT_OK
    try:
        from . import serve
    except ModuleNotFoundError as error:
        _error(f"hdemucs-flax serve needs the [serve] extra: pip install 'hdemucs-flax[serve]' ({error})")
        return EXIT_FAILED
    from . import OptionError

    try:
        limits = serve.ServeLimits.from_env(
            max_upload_bytes=args.max_upload,
            max_duration=args.max_duration,
            queue_size=args.queue_size,
            job_ttl=args.job_ttl,
        )
    except OptionError as error:
        flag = _LIMIT_FLAGS.get(error.option)
        where = f"{flag} {shlex.quote(str(error.value))}" if flag else f"{error.option}={error.value!r}"
        args.command_parser.error(f"{where}: {error.rule}")
    token = os.environ.get(serve.ENV_TOKEN) or None
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print(
            f"warning: listening on {args.host} without {serve.ENV_TOKEN}: anyone who reaches the port can use it",
            file=sys.stderr,
            flush=True,
        )
    return serve.serve(
        lambda: load_separator(args, schedule, output),
        host=args.host,
        port=args.port,
        limits=limits,
        token=token,
        workdir=args.workdir,
        model_id=serve.model_label(args.model, args.revision),
        quiet=args.quiet,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line `argv` (default: `sys.argv[1:]`); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    # huggingface_hub logs a warning per retry of an unreachable Hub; the model loader's own one-line
    # error says what failed, so the CLI keeps only errors from that logger.
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        _error("interrupted (no partial stem files were kept)")
        return EXIT_INTERRUPTED


def entry_point(argv: Sequence[str] | None = None) -> int:
    """The `hdemucs-flax` program (console script and `python -m modeling_hdemucs_flax`): `main` in a process
    that runs nothing else, so it may also keep transformers from importing torch (see
    `hide_torch_from_transformers`) and add the package's XLA flags (`configure_xla`). Library callers use
    `main`, which changes no process-wide setting."""
    from . import configure_xla, hide_torch_from_transformers

    hide_torch_from_transformers()
    configure_xla()
    return main(argv)


if __name__ == "__main__":
    sys.exit(entry_point())
