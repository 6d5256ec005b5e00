"""`hdemucs-flax evaluate DATASET`: score a model (or stems on disk) on a dataset in MUSDB18-HQ's layout.

    hdemucs-flax evaluate musdb18hq --subset test --model htdemucs --json scores.json --plot scores.png
    hdemucs-flax evaluate musdb18hq --subset test --estimates separated/

Prints a Markdown table of the summary on stdout; `--json` keeps every track's figures too. The run is
`evaluation.evaluate`'s, the JSON, table and plot `evaluation.report`'s; this module parses arguments (it is
imported when the parser is built, so it imports nothing heavy) and words results and errors for a terminal.

Exit status: 0 when every track was scored, 1 when a track, the model or an output failed (one line naming it;
nothing is written), 2 for a usage error.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .arguments import (
    EXIT_FAILED,
    EXIT_OK,
    add_model_arguments,
    add_separation_arguments,
    options_from,
    print_error,
    usage_error,
)

LAYOUT = (
    "DATASET holds one folder per track with mixture.wav and one file per source (drums.wav, bass.wav, other.wav, "
    "vocals.wav; any audio format we read), or MUSDB's train/ and test/ folders of them (test/ unless --subset)"
)


def register(commands: argparse._SubParsersAction) -> None:
    """Add the `evaluate` subcommand to `commands` (see `cli.COMMANDS`)."""
    parser = commands.add_parser(
        "evaluate",
        help="score a model or separated stems on a MUSDB18-HQ-style dataset (SDR, SIR, ISR, SAR)",
        description="Score separations against a dataset's reference stems: each track's mixture separated by "
        "--model (every separate option applies; the stems stay in memory), or stems already on disk "
        "(--estimates). Per track and source: the MDX challenge's SDR over the whole track (sdr, as demucs "
        "reports it) and the medians over 1 s frames of BSS-Eval v4's SDR, SIR, ISR and SAR (bss_sdr, sir, isr, "
        "sar; the museval package's figures, as SiSEC 2018 publishes them). Prints a Markdown table of the median "
        f"and mean over tracks. {LAYOUT}.",
    )
    parser.add_argument("dataset", type=Path, metavar="DATASET", help="the dataset folder (MUSDB18-HQ layout)")
    what = parser.add_argument_group("what is scored")
    what.add_argument(
        "--estimates",
        type=Path,
        default=None,
        metavar="DIR",
        help="score stems on disk instead of running a model: DIR/<track>/<source>.<ext> (any format we read), "
        "<track> being the track's folder name in DATASET; other folders of DIR are left alone. `hdemucs-flax "
        "separate-dataset 'DATASET/test/*/mixture.wav' -o DIR --filename '{folder}/{stem}.{ext}'` writes that "
        "layout ({folder} is the track's folder), and so does evaluate's --out; `separate DATASET` does not (it "
        "separates every file of a track folder, stems included, each into a folder named after the file)",
    )
    what.add_argument("--subset", choices=("train", "test"), default=None, help="score DATASET/train or DATASET/test")
    what.add_argument(
        "--sources",
        nargs="+",
        default=None,
        metavar="SOURCE",
        help="the sources to score (default: the model's; drums bass other vocals with --estimates)",
    )
    what.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --model: also keep the estimates, as float32 WAV in DIR/<track>/<source>.wav (the --estimates "
        "layout: a later --estimates DIR run scores the very same samples)",
    )
    results = parser.add_argument_group("results")
    results.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="FILE",
        help="write every track's figures and the summary (median and mean over tracks) as JSON; NaN as null",
    )
    results.add_argument(
        "--plot",
        type=Path,
        default=None,
        metavar="FILE.png",
        help="draw a box plot per figure of the tracks' values per source, as PNG, PDF or SVG by the file's "
        "extension (needs matplotlib: pip install '.[evaluate]')",
    )
    add_model_arguments(parser, devices=True)
    add_separation_arguments(parser, per_device=True)
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar or status lines")
    # `options_from` reads the file-output options too; evaluate writes no stems through them (see --out).
    parser.set_defaults(
        handler=evaluate_command,
        command_parser=parser,
        filename="{track}/{stem}.{ext}",
        ext="wav",
        subtype=None,
        two_stems=None,
        other_method="add",
        clip_mode="rescale",
        mp3_bitrate=320,
        mp3_preset=2,
    )


def _check_usage(args: argparse.Namespace) -> str | None:
    """The usage error of this combination of options, if any."""
    if args.estimates is not None and args.model is not None:
        return "give --model (separate each mixture) or --estimates (score stems on disk), not both"
    if args.out is not None and args.estimates is not None:
        return "--out keeps the estimates of --model; with --estimates they are on disk already"
    for flag, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None and path.is_dir():
            return f"{flag} {path}: is a folder; give a file name"
    if args.plot is not None:
        from ..evaluation.report import PLOT_FORMATS, plot_format  # numpy, no more: after --help

        if plot_format(args.plot) is None:
            named = ", ".join(f".{f}" for f in PLOT_FORMATS)
            return f"--plot {args.plot}: name the file {named} (the format it is written in)"
    if args.sources is not None and len(set(args.sources)) != len(args.sources):
        return f"--sources {' '.join(args.sources)}: a source is named twice"
    return None


def _unknown_sources(sources: Sequence[str], model_sources: Sequence[str]) -> str:
    """The usage line for `--sources` naming sources the model lacks; "" when it has them all."""
    unknown = [name for name in sources if name not in model_sources]
    if not unknown:
        return ""
    return f"--sources: the model has no {', '.join(unknown)} (it separates {', '.join(model_sources)})"


def evaluate_command(args: argparse.Namespace) -> int:
    started = time.time()
    parser: argparse.ArgumentParser = args.command_parser
    problem = _check_usage(args)
    if problem is not None:
        return usage_error(parser, problem)
    separating = args.estimates is None
    schedule, output = options_from(args) if separating else (None, None)  # a bad --segment etc.: exit 2
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ModuleNotFoundError:
            print_error("--plot needs matplotlib, the [evaluate] extra: pip install '.[evaluate]'")
            return EXIT_FAILED

    from ..errors import AudioError, DatasetError, ModelOutputError
    from ..evaluation.evaluate import (
        MUSDB_SOURCES,
        WINDOW_SECONDS,
        check_out_folder,
        check_separable,
        plan_evaluation,
    )
    from .model_loading import _model_facts, _status

    # Everything the dataset's headers and the model's config.json tell is checked before the model loads.
    sources = args.sources
    model_sources = None
    if separating:
        facts = _model_facts(args)
        if isinstance(facts, int):
            return facts
        if facts is not None:
            model_sources = tuple(facts.sources)
            sources = sources or model_sources
    else:
        sources = sources or MUSDB_SOURCES
    problem = _unknown_sources(sources, model_sources) if sources is not None and model_sources is not None else ""
    if problem:
        return usage_error(parser, problem)
    try:
        plan = (
            plan_evaluation(args.dataset, sources, estimates=args.estimates, subset=args.subset)
            if sources is not None
            else None
        )
        if plan is not None and args.out is not None:
            check_out_folder(args.out, plan.folder)
    except DatasetError as error:
        print_error(error)
        return EXIT_FAILED

    separator = None
    if separating:
        from .model_loading import load_separator

        assert schedule is not None and output is not None
        loaded = load_separator(args, schedule, output)
        if isinstance(loaded, int):
            return loaded
        separator = loaded
        if sources is None:  # a model whose config.json could not be read before loading it
            sources = args.sources or tuple(separator.sources)
            problem = _unknown_sources(sources, separator.sources)
            if problem:
                return usage_error(parser, problem)
        try:
            if plan is None:
                plan = plan_evaluation(args.dataset, sources, subset=args.subset)
                if args.out is not None:
                    check_out_folder(args.out, plan.folder)
            check_separable(plan, separator)
        except DatasetError as error:
            print_error(error)
            return EXIT_FAILED
    assert plan is not None

    from tqdm import tqdm

    from ..evaluation.evaluate import run_evaluation
    from ..evaluation.report import evaluation_json, markdown_table, plot_format, render_plot, write_atomically

    def warn(line: str) -> None:
        print(f"warning: {line}", file=sys.stderr, flush=True)

    bar_format = "{l_bar}{bar}| {n:.1f}/{total_fmt} tracks [{elapsed}<{remaining}{postfix}]"  # n is fractional
    disable = True if args.quiet else None  # tqdm: None = a bar only on a terminal
    with tqdm(total=len(plan.references), desc="evaluating", bar_format=bar_format, disable=disable) as bar:

        def progress(done: float, total: int, track: str | None) -> None:
            bar.n = done
            bar.set_postfix_str(track or "", refresh=False)
            bar.refresh()

        try:
            evaluation = run_evaluation(plan, separator=separator, out=args.out, progress=progress, warn=warn)
        except (DatasetError, AudioError, ModelOutputError) as error:
            bar.close()
            print_error(error)
            return EXIT_FAILED

    about = {
        "dataset": str(plan.folder),
        "estimates": str(args.estimates) if args.estimates is not None else None,
        "model": None,
        "window_seconds": WINDOW_SECONDS,
    }
    if separator is not None:
        from ..zoo.model_names import model_label

        about |= {
            "model": model_label(args.model, args.revision),
            "segment": separator.segment_samples / separator.sample_rate,
            "overlap": separator.overlap,
            "shifts": separator.shifts,
            "seed": separator.seed,
            "dtype": str(separator.dtype),
        }
    # Both files are made in memory first (the plot is the likelier to fail), then written.
    outputs = []
    if args.json is not None:
        document = evaluation_json(evaluation, **about)
        outputs.append((args.json, (json.dumps(document, indent=2, allow_nan=False) + "\n").encode()))
    if args.plot is not None:
        label = about["model"] or f"estimates {args.estimates}"
        title = f"{label} on {plan.folder.name}"
        outputs.append((args.plot, render_plot(evaluation, title, plot_format(args.plot) or "png")))
    for path, data in outputs:
        try:
            write_atomically(path, data)
        except OSError as error:
            print_error(f"{path}: cannot write ({error.strerror or error})")
            return EXIT_FAILED
    print(markdown_table(evaluation), flush=True)
    tracks = len(evaluation.tracks)
    _status(args.quiet, f"{tracks} track{'s' if tracks != 1 else ''} scored in {time.time() - started:.1f} s")
    return EXIT_OK
