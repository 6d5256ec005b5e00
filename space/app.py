"""Hybrid Demucs in the browser: a Gradio app (the project's Hugging Face Space) that splits a song into
drums, bass, other and vocals — or vocals and accompaniment — with `modeling_hdemucs_flax.Separator`.

    python space/app.py                         # the default model, http://127.0.0.1:7860
    HDEMUCS_MODEL=path/or/repo-id python space/app.py

`build_demo(separator)` builds the page and is importable (tests, notebooks); the server starts only when
this file runs as a script, after loading the model once and compiling its forward pass (warm-up), so the
first visitor does not wait for compilation.

Environment (all optional):
    HDEMUCS_MODEL                 Hub repo id or local `save_pretrained` folder (default: the default model)
    HDEMUCS_SPACE_MAX_DURATION    longest accepted input, seconds, counted in decoded audio (default 600)
    HDEMUCS_SPACE_MAX_FILE_SIZE   largest accepted upload, e.g. "100mb" (default 100mb; larger uploads get 413)
    HDEMUCS_SPACE_QUEUE_SIZE      requests waiting at most; one runs at a time (default 16)
    HDEMUCS_SPACE_SEGMENT         chunk length in seconds (default: the Separator's 7.8)
    GRADIO_SERVER_NAME / _PORT    where to listen (default 127.0.0.1:7860; Spaces set 0.0.0.0)
"""

from __future__ import annotations

import os

# Before gradio is imported: with analytics on, gradio looks up remote hosts at import and launch.
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from modeling_hdemucs_flax import configure_xla, hide_torch_from_transformers  # noqa: E402 (the face is light)

hide_torch_from_transformers()  # before transformers is imported: a Space process runs nothing else
configure_xla()  # before JAX starts a backend

import atexit  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import gradio as gr  # noqa: E402

from modeling_hdemucs_flax import (  # noqa: E402
    AudioError,
    AudioTooLongError,
    OptionError,
    Separator,
    inspect_audio,
    separate_file,
)
from modeling_hdemucs_flax.zoo.model_names import model_label  # noqa: E402

logger = logging.getLogger("hdemucs_space")

HERE = Path(__file__).resolve().parent
EXAMPLES_DIR = HERE / "examples"
KARAOKE_STEM = "vocals"
OUTPUT_FORMATS = ("wav", "flac", "mp3")
# The Advanced options' sliders: (lowest, highest, step). Requests are held to them (gradio accepts values off
# the step through its API), so at most 16 x 6 schedule variants exist; `StemSeparator` keeps a few.
OVERLAP_RANGE = (0.0, 0.75, 0.05)
SHIFTS_RANGE = (0, 5, 1)
# System fonts only: a gr.themes.GoogleFont would make every visitor's browser fetch fonts.googleapis.com.
THEME = gr.themes.Soft(
    primary_hue="indigo",
    secondary_hue="sky",
    font=["Inter", "ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
)
CSS = """
#hdemucs-title { text-align: center; margin-bottom: 0; }
#hdemucs-subtitle { text-align: center; color: var(--body-text-color-subdued); }
#hdemucs-status { min-height: 2.5em; }
"""


@dataclass(frozen=True)
class Limits:
    """What one request may ask for. `max_file_size` is gradio's (bytes, or a string like "100mb")."""

    max_duration: float = 600.0
    max_file_size: str | int = "100mb"
    queue_size: int = 16

    @classmethod
    def from_env(cls, env=os.environ) -> Limits:
        size = env.get("HDEMUCS_SPACE_MAX_FILE_SIZE", cls.max_file_size).strip()
        return cls(
            max_duration=float(env.get("HDEMUCS_SPACE_MAX_DURATION", cls.max_duration)),
            max_file_size=int(size) if size.isdigit() else size,  # gradio takes bytes or "100mb", not "100"
            queue_size=int(env.get("HDEMUCS_SPACE_QUEUE_SIZE", cls.queue_size)),
        )


@dataclass(frozen=True)
class Separated:
    """One request's result: {stem: file} in page order, the zip of them all, and a one-line summary."""

    stems: dict[str, Path]
    archive: Path
    summary: str


def format_seconds(seconds: float) -> str:
    """ "42 s", "3 min 05 s", "10 min"."""
    if seconds < 9.95:  # short clips to a tenth: "2.5 s", "8 s"
        return f"{max(0.0, seconds):.1f}".removesuffix(".0") + " s"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    return f"{seconds // 60} min" + (f" {seconds % 60:02d} s" if seconds % 60 else "")


def chunk_progress(report: Callable[..., object], clock: Callable[[], float] = time.monotonic):
    """A Separator progress callback `(done, total)` that calls `report((done, total), desc=..., unit=...)`
    (gr.Progress's signature) after every chunk, with the time left extrapolated from the chunks so far."""
    start = None

    def progress(done: int, total: int) -> None:
        nonlocal start
        if start is None or done == 0:
            start = clock()
            report((0, total), desc="Separating", unit="chunks")
            return
        left = (clock() - start) / done * (total - done)
        report((done, total), desc=f"Separating, about {format_seconds(left)} left", unit="chunks")

    return progress


class StemSeparator:
    """The work behind the page, free of UI code: checks an upload, separates it into per-request files
    and zips them. One instance serves every request (the queue runs one at a time).

    `max_duration` (seconds) is checked against the file's header before anything is decoded, and against the
    decoded samples while reading (a header may understate the length). Each request writes into its own folder
    under `workdir`; gradio copies returned files into its own cache, so only the `keep` most recent request
    folders are kept and the rest are deleted. A `workdir` made here (None given) is removed when the process
    exits. Overlap and shifts are held to the sliders' ranges and steps; the `variants` most recently used
    schedules are kept.
    """

    def __init__(
        self,
        separator: Separator,
        *,
        max_duration: float,
        workdir: str | os.PathLike | None = None,
        keep: int = 4,
        variants: int = 8,
    ):
        self.separator = separator
        self.max_duration = float(max_duration)
        if workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix="hdemucs-space-"))
            atexit.register(shutil.rmtree, self.workdir, ignore_errors=True)
        else:
            self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.keep = keep
        self.max_variants = variants
        self._variants: dict[tuple[float, int], Separator] = {}

    @property
    def karaoke_available(self) -> bool:
        return KARAOKE_STEM in self.separator.sources

    def stem_names(self) -> list[str]:
        """Every stem the page can show: the model's sources, then the accompaniment of karaoke mode."""
        extra = [f"no_{KARAOKE_STEM}"] if self.karaoke_available else []
        return [*self.separator.sources, *extra]

    def _variant(self, overlap: float, shifts: int) -> Separator:
        """The separator for these slider values, snapped to the sliders' steps (an `OptionError` outside
        their ranges); shares the compiled forward pass, so nothing is compiled again."""
        key = (_on_slider("overlap", overlap, *OVERLAP_RANGE), int(_on_slider("shifts", shifts, *SHIFTS_RANGE)))
        variant = self._variants.pop(key, None)
        if variant is None:
            variant = self.separator.with_options(overlap=key[0], shifts=key[1])
        self._variants[key] = variant  # most recently used last
        while len(self._variants) > self.max_variants:
            self._variants.pop(next(iter(self._variants)))
        return variant

    def _public(self, message: str, upload: Path) -> str:
        """`message` naming files as the visitor knows them: the upload by its name, stems by theirs, never a
        folder of this server."""
        message = message.replace(str(upload), upload.name)
        return re.sub(re.escape(str(self.workdir)) + r"[^\s:]*/", "", message)

    def _too_long(self, path: Path, length: str) -> AudioError:
        return AudioError(
            f"{path}: {length} long; this Space separates up to {format_seconds(self.max_duration)} "
            "(trim the file, or run hdemucs-flax locally)"
        )

    def _request_dir(self) -> Path:
        folders = sorted((p for p in self.workdir.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for old in folders[: max(0, len(folders) - self.keep + 1)]:
            shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix="request-", dir=self.workdir))

    def __call__(
        self,
        audio_path: str | os.PathLike | None,
        mode: str = "all",
        *,
        shifts: int = 0,
        overlap: float = 0.25,
        ext: str = "wav",
        progress: Callable[[int, int], None] | None = None,
    ) -> Separated:
        """Separate the file at `audio_path`; mode "all" (every source) or "karaoke" (vocals and no_vocals).
        Raises `AudioError` with a one-line message naming the file (not its server path) for anything
        wrong with the input."""
        if not audio_path:
            raise AudioError("No audio: upload a file or record something first")
        path = Path(audio_path)
        name = path.name
        try:
            info = inspect_audio(path)
            if info.duration > self.max_duration:  # refused before anything is decoded
                raise self._too_long(path, format_seconds(info.duration))
            if mode not in ("all", "karaoke") or (mode == "karaoke" and not self.karaoke_available):
                raise AudioError(f"{path}: unknown mode {mode!r}")
            if ext not in OUTPUT_FORMATS:
                raise AudioError(f"{path}: unknown output format {ext!r}")
            started = time.monotonic()
            folder = self._request_dir()
            try:
                stems = separate_file(
                    self._variant(overlap, shifts),
                    path,
                    folder,
                    filename="{track}_{stem}.{ext}",
                    ext=ext,
                    two_stems=KARAOKE_STEM if mode == "karaoke" else None,
                    progress=progress,
                    max_seconds=self.max_duration,
                )
            except AudioTooLongError:
                # A header may understate the length (a Matroska file claiming 1 s may hold minutes): decoding
                # stopped once the samples passed the limit, so the true length is not known.
                raise self._too_long(path, f"more than {format_seconds(self.max_duration)}") from None
        except (AudioError, OptionError) as error:
            raise AudioError(self._public(str(error), path)) from None
        track = name[: -len(path.suffix)] if path.suffix else name
        archive = folder / f"{track}_stems.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED if ext != "wav" else zipfile.ZIP_DEFLATED) as bundle:
            for stem_path in stems.values():
                bundle.write(stem_path, stem_path.name)
        channels = {1: "mono", 2: "stereo"}.get(info.channels, f"{info.channels}-channel")
        # The stems hold exactly the decoded audio: their length, not the header's estimate, is the song's.
        seconds = inspect_audio(next(iter(stems.values()))).duration
        summary = (
            f"**{name}** ({format_seconds(seconds)}, {info.sample_rate / 1000:g} kHz {channels}) → "
            f"{len(stems)} stems in {format_seconds(time.monotonic() - started)}"
        )
        return Separated(stems, archive, summary)


def _on_slider(name: str, value: float, low: float, high: float, step: float) -> float:
    """`value` snapped to the slider's step; outside [low, high] an `OptionError` naming the slider."""
    value = float(value)
    if not low <= value <= high:
        raise OptionError(name, value, f"must be between {low:g} and {high:g}")
    return round(low + round((value - low) / step) * step, 6)


def stem_label(stem: str) -> str:
    if stem.startswith("no_"):
        return f"Accompaniment (no {stem[3:]})"
    return stem.capitalize()


def build_demo(
    separator: Separator,
    *,
    max_duration: float = Limits.max_duration,
    queue_size: int = Limits.queue_size,
    examples: list[Path] | None = None,
    workdir: str | os.PathLike | None = None,
    model_name: str | None = None,
    licence: str | None = None,
) -> gr.Blocks:
    """The page: upload or record a song, pick all stems or karaoke, get one player per stem and a zip.

    `separator` is used as built (warm it up first); per-request overlap and shifts share its compiled forward
    pass. `examples`: audio files offered as examples (default: space/examples/*), separated and cached the
    first time each is clicked. The queue runs one request at a time and holds at most `queue_size` waiting.
    `model_name` (default: the separator's model as it was loaded) and `licence` (the weights' licence; default
    "not stated") are shown in the footer, the model as `model_label` names it: a local folder by its name only.
    """
    work = StemSeparator(separator, max_duration=max_duration, workdir=workdir)
    stems = work.stem_names()
    examples = sorted(EXAMPLES_DIR.glob("*.ogg")) if examples is None else examples
    sources = ", ".join(separator.sources)
    modes = [(f"All {len(separator.sources)} stems ({sources})", "all")]
    if work.karaoke_available:
        modes.append(("Karaoke: vocals / accompaniment", "karaoke"))

    def separate(audio, mode, shifts, overlap, ext, progress=gr.Progress()):  # noqa: B008 (gradio's idiom)
        progress(0, desc="Reading the file")
        try:
            result = work(
                audio, mode, shifts=int(shifts), overlap=float(overlap), ext=ext, progress=chunk_progress(progress)
            )
        except AudioError as error:
            # 30 s on screen (closable): long enough to read, gone before the next result
            raise gr.Error(str(error), duration=30, print_exception=False) from None
        except Exception as error:  # never a stack trace in the page; the log keeps it
            logger.exception("separation failed")
            raise gr.Error(
                f"Separation failed unexpectedly ({type(error).__name__}); please try again or another file",
                duration=30,
            ) from None
        # Plain values, no gr.update: gradio 6.17 cannot cache example outputs that carry updates. Which
        # players show follows the mode radio (`shown`), not this result.
        players = [str(result.stems[s]) if s in result.stems else None for s in stems]
        return (*players, str(result.archive), result.summary)

    def shown(mode):
        """Player visibility for `mode`. visible="hidden" (in the page, not shown), never False: gradio 6.17
        does not show a component again that received visible=False while already invisible."""
        wanted = {KARAOKE_STEM, f"no_{KARAOKE_STEM}"} if mode == "karaoke" else set(separator.sources)
        return [gr.update(visible=True if s in wanted else "hidden") for s in stems]

    def separate_example(audio, mode, progress=gr.Progress()):  # noqa: B008
        # Examples set mode "all" and fill only the source players: gradio 6.17 cannot read a cached None back
        # for an Audio output (the hidden accompaniment player).
        *players, archive_path, summary = separate(audio, mode, 0, separator.overlap, "wav", progress)
        return (*players[: len(separator.sources)], archive_path, summary)

    with gr.Blocks(title="Hybrid Demucs · stem separation", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown("# Hybrid Demucs: split a song into stems", elem_id="hdemucs-title")
        gr.Markdown(
            f"Upload or record a song; get {sources} as separate tracks, or a karaoke version. "
            "Runs [hdemucs-flax](https://huggingface.co/hdemucs-flax), torchaudio's Hybrid Demucs in JAX/Flax. "
            f"Up to {format_seconds(max_duration)} of audio per file.",
            elem_id="hdemucs-subtitle",
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=5):
                audio_in = gr.Audio(
                    label="Song", sources=["upload", "microphone"], type="filepath", elem_id="song-input"
                )
                mode = gr.Radio(modes, value="all", label="Separate into", elem_id="mode")
                with gr.Accordion("Advanced options", open=False):
                    shifts = gr.Slider(
                        SHIFTS_RANGE[0],
                        SHIFTS_RANGE[1],
                        value=separator.shifts,
                        step=SHIFTS_RANGE[2],
                        label="Shifts",
                        info="Average this many randomly shifted passes: slightly better, that many times slower",
                    )
                    overlap = gr.Slider(
                        OVERLAP_RANGE[0],
                        OVERLAP_RANGE[1],
                        value=separator.overlap,
                        step=OVERLAP_RANGE[2],
                        label="Overlap",
                        info="Fraction shared by neighbouring chunks: more is smoother and slower",
                    )
                    ext = gr.Radio(list(OUTPUT_FORMATS), value="wav", label="Output format")
                button = gr.Button("Separate", variant="primary", elem_id="separate-button")
            with gr.Column(scale=7):
                status = gr.Markdown("Stems will appear here.", elem_id="hdemucs-status")
                # Two columns: vocals beside the accompaniment in karaoke mode, a 2 x 2 grid for four stems.
                order = sorted(separator.sources, key=lambda s: s != KARAOKE_STEM)
                columns = (order[0::2], [s for s in stems if s not in separator.sources] + order[1::2])
                player = {}
                with gr.Row(equal_height=False):
                    for column in columns:
                        with gr.Column(min_width=280):
                            for s in column:
                                player[s] = gr.Audio(
                                    label=stem_label(s),
                                    type="filepath",
                                    interactive=False,
                                    buttons=["download"],
                                    visible="hidden" if s.startswith("no_") else True,
                                    elem_id=f"stem-{s}",
                                )
                players = [player[s] for s in stems]
                archive = gr.File(label="All stems (.zip)", interactive=False, height=100, elem_id="stems-zip")
        outputs = [*players, archive, status]
        button.click(
            separate, [audio_in, mode, shifts, overlap, ext], outputs, api_name="separate", concurrency_limit=1
        )
        # .change also fires when an example sets the mode; UI only, outside the queue's single worker. Page
        # events are api_visibility="private" (not in the API, refused by clients): gradio 6 takes
        # `api_name=False` as the name "False".
        mode.change(shown, mode, players, api_visibility="private", queue=False, show_progress="hidden")
        if examples:
            gr.Examples(
                [[str(p), "all"] for p in examples],
                [audio_in, mode],
                [*players[: len(separator.sources)], archive, status],
                fn=separate_example,
                cache_examples=True,
                cache_mode="lazy",
                label="Examples (synthetic 8-second songs)",
                api_visibility="private",
            )
        terms = f"licensed {licence}" if licence else "under a licence its card does not state"
        if licence and "nc" in licence.lower().replace(" ", "-").split("-"):
            terms += ": non-commercial use"
        gr.Markdown(
            f"Model: {model_label(model_name or separator.model_name)}, its weights {terms}. Uploads and results "
            "older than an hour are deleted from the server every hour.",
            elem_id="hdemucs-footer",
        )
    demo.queue(default_concurrency_limit=1, max_size=queue_size)
    return demo


def load_separator(env=os.environ) -> Separator:
    """The Separator for `HDEMUCS_MODEL` (None: the default model), compiled and ready. The compiled program
    is kept in the persistent compilation cache, so a restarted Space loads it instead of compiling again.
    Raises `ModelLoadError` worded for this app (it names HDEMUCS_MODEL)."""
    from modeling_hdemucs_flax import configure_compilation_cache, load_model

    configure_compilation_cache()
    segment = env.get("HDEMUCS_SPACE_SEGMENT")
    model = load_model(env.get("HDEMUCS_MODEL") or None, option="HDEMUCS_MODEL")
    separator = Separator(model, segment=float(segment) if segment else None)
    separator.warmup()
    return separator


def main() -> int:
    """Load and warm up the model, then serve the page until the process is stopped. Returns the exit status:
    1 when the model cannot be loaded, 128 + the signal after a clean stop (SIGTERM 143, Ctrl-C 130), the
    command line's rule for every command."""
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logger.setLevel(logging.INFO)
    limits = Limits.from_env()
    from modeling_hdemucs_flax.runtime import interrupt_on_termination

    # A Space is stopped with SIGTERM: raised as an interrupt (`runtime.Terminated`), it closes the server and
    # lets the exit handlers remove the working folder (the default action would skip them).
    interrupt_on_termination()
    try:
        return _load_and_serve(limits)
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM/SIGHUP as Terminated; while loading too
        signum = getattr(stop, "signum", signal.SIGINT)
        logger.info("stopped (%s)", signal.Signals(signum).name)
        return 128 + signum


def _load_and_serve(limits: Limits) -> int:
    from modeling_hdemucs_flax import ModelLoadError
    from modeling_hdemucs_flax.zoo.pretrained import model_licence

    started = time.monotonic()
    spec = os.environ.get("HDEMUCS_MODEL") or None
    try:
        separator = load_separator()
    except ModelLoadError as error:
        logger.error("cannot load the model: %s", error)
        return 1
    logger.info(
        "model %s ready (sources %s, on %s, compiled) in %.1f s",
        spec or "(default)",
        ", ".join(separator.sources),
        separator.device,
        time.monotonic() - started,
    )
    demo = build_demo(
        separator,
        max_duration=limits.max_duration,
        queue_size=limits.queue_size,
        model_name=spec or f"{model_label(None)} (the default model)",
        licence=model_licence(spec),
    )
    demo.launch(
        # Spaces set GRADIO_SERVER_NAME=0.0.0.0; anywhere else stay on the loopback interface.
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        max_file_size=limits.max_file_size,
        allowed_paths=[str(EXAMPLES_DIR)],  # the example clips, whatever the working directory
        ssr_mode=False,
        theme=THEME,
        css=CSS,
        footer_links=["api"],
        # Waiting here, not in gradio: its wait swallows the interrupt, and with it the exit status.
        prevent_thread_lock=True,
    )
    try:
        while demo.is_running:
            time.sleep(0.1)
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
