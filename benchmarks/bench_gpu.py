"""Accelerator figures on the user's path, against demucs + torchaudio on the same device (a benchmark that prints a
table; `--smoke` is the seconds-long run CI makes so that it cannot rot).

Ours is what `hdemucs-flax separate` runs: a `save_pretrained` folder (`--model`, or random weights of the high
preset saved to a temporary folder) loaded by `load_model` (`FlaxHDemucs.from_pretrained`) into a `Separator`, on
JAX's default device. For each dtype and batch size: the compile time (`warmup`), one warm forward pass (median of
`--repeats`, waited for) and one `separate` of a `--seconds`-long `synth_song`, as x realtime (audio-seconds per
second). When torch and torchaudio import, the same weights run in torchaudio's HDemucs on the same device (CUDA
when JAX computes on a GPU and torch sees one, else the CPU): a forward pass per batch size, and when demucs
imports (`pip install ".[bench]"`), demucs's `apply_model` (shifts 0, split, overlap 0.25) on the same song. The
float32 rows of both run with TF32 off (torch's `allow_tf32` flags; our model's own float32 matmul precision),
tensorfloat32 rows are float32 with TF32 allowed on both sides (`--matmul-precision tensorfloat32`; on a CPU it is
float32), bfloat16 is JAX's bfloat16 model and torch's bfloat16 autocast.

`--architecture htdemucs` does the same for demucs's HTDemucs (the released htdemucs configuration, or a tiny one
with `--config tiny`): the random weights are drawn in demucs's own model (when demucs imports) and converted, and
that model is the reference (forward passes and `apply_model`, at its training segment); a `--model` folder of an
HTDemucs has no torch reference (we convert demucs's weights to ours, not back).

Last, the float32 parity row: one forward pass of a music-like chunk, ours against the reference, both with TF32
off, as the relative error in dB (the model's claim: <= -100 dB).

A row that runs out of memory (JAX's RESOURCE_EXHAUSTED, torch's OutOfMemoryError) says so and the run goes on.
Rows are printed as they are measured, and appended as JSON lines to `--jsonl` when given, so a run cut short keeps
what it measured. Each new (dtype, batch size) compiles the network once (tens of seconds on a GPU).

    python benchmarks/bench_gpu.py [--batch-sizes 1 2 4 8 16 32] [--dtypes float32 bfloat16] [--seconds 240]
                                   [--model DIR_OR_ID] [--jsonl rows.jsonl]
    python benchmarks/bench_gpu.py --architecture htdemucs [--dtypes float32 bfloat16 ...]
    python benchmarks/bench_gpu.py --smoke [--architecture htdemucs]   # tiny config, on the CPU, in seconds
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

# --smoke: 2.5 s, not 3 s: demucs cuts a chunk at every multiple of the stride below the song's length, and the
# last one of a 3 s song would be 4 samples, which torchaudio's model refuses
SMOKE = {"config": "tiny", "batch_sizes": [1, 2], "seconds": 2.5, "segment": 0.5, "repeats": 1}
# the rows' modes: model dtype and matmul precision (tensorfloat32: a float32 model with TF32 products allowed)
MODES = {
    "float32": ("float32", "float32"),
    "tensorfloat32": ("float32", "tensorfloat32"),
    "bfloat16": ("bfloat16", "float32"),
}


def out_of_memory(error: BaseException) -> bool:
    """Whether `error` is a device running out of memory: XLA's RESOURCE_EXHAUSTED (a `jax.errors.JaxRuntimeError`)
    or torch's `OutOfMemoryError` (both RuntimeErrors)."""
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "RESOURCE_EXHAUSTED" in text or type(error).__name__ == "OutOfMemoryError" or "out of memory" in text.lower()
    )


class Table:
    """Prints each row as it is measured (and appends it to `jsonl`)."""

    COLUMNS = f"{'pipeline':<20} {'dtype':<9} {'batch':>5} {'compile s':>10} {'forward x rt':>13} {'separate x rt':>14}"

    def __init__(self, jsonl: str | None):
        self.jsonl = jsonl
        print(self.COLUMNS, flush=True)

    def row(self, pipeline: str, dtype: str, batch: int | None, measure: Callable[[], dict[str, float]]) -> dict:
        """Run `measure` (-> compile_s, forward_x_rt, separate_x_rt, any of them) and print its row; out of memory
        is a row that says so."""
        row: dict[str, Any] = {"pipeline": pipeline, "dtype": dtype, "batch_size": batch}
        try:
            row.update(measure())
        except RuntimeError as error:
            if not out_of_memory(error):
                raise
            row["error"] = "out of memory"
            _release_torch_memory()

        def cell(name: str, width: int, unit: str = "") -> str:
            value = row.get(name)
            return f"{'-' if value is None else f'{value:.1f}{unit}':>{width}}"

        batch_cell = "-" if batch is None else str(batch)
        line = f"{pipeline:<20} {dtype:<9} {batch_cell:>5} {cell('compile_s', 10)} {cell('forward_x_rt', 13, 'x')} "
        line += cell("separate_x_rt", 14, "x")
        print(line + (f"  {row['error']}" if "error" in row else ""), flush=True)
        if self.jsonl:
            with open(self.jsonl, "a") as handle:
                handle.write(json.dumps(row) + "\n")
        return row


def _release_torch_memory() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _torch_reference() -> tuple[Any, Any] | None:
    """(torch, torchaudio), or None when they do not import."""
    try:
        import torch
        import torchaudio
    except ImportError:
        return None
    return torch, torchaudio


def _median_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    parser.add_argument("--dtypes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--seconds", type=float, default=240.0, help="song length for separate (default: 240)")
    parser.add_argument("--segment", type=float, default=None, help="chunk length in seconds (default: 7.8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--model", default=None, help="a saved model folder or Hub id (default: random weights)")
    parser.add_argument("--architecture", choices=("hdemucs", "htdemucs"), default="hdemucs")
    parser.add_argument("--config", choices=("high", "tiny"), default="high", help="random weights: release or tiny")
    parser.add_argument("--jsonl", default=None, help="append each row to this file as JSON")
    parser.add_argument("--smoke", action="store_true", help="tiny config on the CPU, in seconds (what CI runs)")
    args = parser.parse_args(argv)
    if args.smoke:
        for name, value in SMOKE.items():
            setattr(args, name, value)

    from modeling_hdemucs_flax import configure_compilation_cache, configure_xla

    configure_xla()
    if args.smoke:
        from modeling_hdemucs_flax.runtime import select_platform

        select_platform("cpu")
    configure_compilation_cache()
    import jax

    from modeling_hdemucs_flax import Separator, load_model, synth_song
    from modeling_hdemucs_flax.metrics import relative_error_db

    reference = _torch_reference()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.model
        if folder is None:  # random weights, saved and loaded back as a user's folder is
            folder = str(Path(scratch) / "model")
            demucs_model = _random_model(args.architecture, args.config, folder)
            if reference is not None:
                reference = (*reference, demucs_model)
        elif reference is not None:
            reference = (*reference, None)
        models = {
            mode: load_model(folder, dtype=jax.numpy.dtype(MODES[mode][0]), matmul_precision=MODES[mode][1])
            for mode in args.dtypes
        }
        config = next(iter(models.values())).config
        rate = int(config.sampling_rate)
        song = synth_song(int(args.seconds * rate), rate, int(config.audio_channels))
        torch_device = "cpu"
        if reference is not None and jax.default_backend() == "gpu" and reference[0].cuda.is_available():
            torch_device = "cuda"
        first = Separator(next(iter(models.values())), segment=args.segment)
        # where the weights live is where the network runs: it should be JAX's default device
        print(
            f"jax {jax.__version__}, default device {jax.devices()[0].device_kind}; network on {first.device}; torch "
            f"on {torch_device if reference else '(not installed)'}; model {args.model or args.config + ' (random)'}; "
            f"{args.seconds:g} s song, segment {first.options.segment_seconds:g} s",
            flush=True,
        )
        table = Table(args.jsonl)
        for dtype, model in models.items():
            for batch_size in args.batch_sizes:
                measure = functools.partial(_flax_row, model, batch_size, song, args)
                table.row("flax Separator", dtype, batch_size, measure)
        if reference is not None:
            _torch_rows(table, reference, first, song, args, torch_device)
            parity = _parity_db(reference, models, first, torch_device, relative_error_db)
            if parity is not None:
                print(
                    f"parity, float32 forward vs the torch reference on {torch_device}, TF32 off on both sides: "
                    f"{parity:.1f} dB (target <= -100 dB)",
                    flush=True,
                )
                if args.jsonl:
                    with open(args.jsonl, "a") as handle:
                        handle.write(json.dumps({"pipeline": "parity", "dtype": "float32", "db": parity}) + "\n")
        else:
            print("torch/torchaudio not installed: no reference rows (pip install '.[bench]')", flush=True)


def _random_model(architecture: str, size: str, folder: str) -> Any:
    """Random weights of `architecture` (release or tiny `size`) saved to `folder`. For HTDemucs they are drawn in
    demucs's own model when demucs imports (returned, as the reference), else in ours (None returned)."""
    if architecture == "hdemucs":
        from modeling_hdemucs_flax import FlaxHDemucs, HDemucsConfig

        if size == "high":
            config = HDemucsConfig()
        else:
            config = HDemucsConfig.from_preset("low", channels=4, norm_starts=2, dconv_lstm=3, dconv_attn=3)
        FlaxHDemucs(config, seed=0).save_pretrained(folder, safe_serialization=True)
        return None
    from fractions import Fraction

    from modeling_hdemucs_flax import FlaxHTDemucs, HTDemucsConfig

    tiny = {"channels": 8, "t_layers": 1, "segment": Fraction(1, 2)} if size == "tiny" else {}
    config = HTDemucsConfig.from_preset("htdemucs", **tiny)
    try:
        import torch
        from demucs.htdemucs import HTDemucs
    except ImportError:
        FlaxHTDemucs(config, seed=0).save_pretrained(folder, safe_serialization=True)
        return None
    torch.manual_seed(0)
    demucs_model = HTDemucs(**config.demucs_kwargs()).eval()
    FlaxHTDemucs.from_demucs(demucs_model.state_dict(), config).save_pretrained(folder, safe_serialization=True)
    return demucs_model


def _flax_row(model: Any, batch_size: int, song: Any, args: argparse.Namespace) -> dict[str, float]:
    import numpy as np

    from modeling_hdemucs_flax import Separator

    separator = Separator(model, segment=args.segment, batch_size=batch_size)
    rate = separator.sample_rate
    start = time.perf_counter()
    separator.warmup()
    compile_s = time.perf_counter() - start
    batch = np.zeros(separator.input_shape, np.float32)
    forward = _median_seconds(lambda: np.asarray(separator.forward(batch)), args.repeats)
    start = time.perf_counter()
    separator.separate(song, rate)
    separate = time.perf_counter() - start
    audio = batch_size * separator.segment_samples / rate
    return {"compile_s": compile_s, "forward_x_rt": audio / forward, "separate_x_rt": args.seconds / separate}


def _torch_model(reference: tuple, flax_model: Any, device: str) -> Any:
    """The torch model holding the Flax model's weights, on `device`, in eval mode: demucs's HTDemucs the weights
    were drawn in, or torchaudio's HDemucs with the Flax HDemucs's weights; None when there is none."""
    torch, torchaudio, demucs_model = reference
    if flax_model.config.model_type == "htdemucs":
        return None if demucs_model is None else demucs_model.to(device)
    config = flax_model.config
    model = torchaudio.models.HDemucs(**config.torchaudio_kwargs()).eval()
    model.load_state_dict({name: torch.from_numpy(value) for name, value in flax_model.to_torchaudio().items()})
    return model.to(device)


def _tf32(torch: Any, allowed: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = allowed
    torch.backends.cudnn.allow_tf32 = allowed


def _torch_rows(table: Table, reference: tuple, first: Any, song: Any, args: argparse.Namespace, device: str) -> None:
    """The reference's forward pass per dtype and batch size, and demucs's apply_model per dtype when demucs
    imports."""
    torch = reference[0]
    model = _torch_model(reference, first.model, device)
    if model is None:
        print("no torch reference for a loaded HTDemucs folder (random weights have one)", flush=True)
        return
    label = "demucs forward" if first.model.config.model_type == "htdemucs" else "torchaudio forward"
    segment, rate = first.segment_samples, first.sample_rate
    try:
        from demucs.apply import apply_model
    except ImportError:
        apply_model = None
        print("demucs not installed: no apply_model rows (pip install '.[bench]')", flush=True)
    if label == "torchaudio forward":  # what demucs's apply_model reads from a model object (demucs's own has it)
        model.samplerate, model.segment = rate, first.options.segment_seconds
        model.sources, model.audio_channels = list(first.sources), first.audio_channels

    def synchronize() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def autocast(dtype: str) -> Any:
        _tf32(torch, dtype == "tensorfloat32")  # float32 rows compute in float32; bfloat16 rows autocast
        return torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=dtype == "bfloat16")

    def forward_row(dtype: str, batch_size: int) -> dict[str, float]:
        batch = torch.zeros((batch_size, first.audio_channels, segment), device=device)

        def run() -> None:
            with torch.inference_mode(), autocast(dtype):
                model(batch)
            synchronize()

        run()  # warm-up: cuDNN's algorithm choice, the allocator
        return {"forward_x_rt": batch_size * segment / rate / _median_seconds(run, args.repeats)}

    def demucs_row(dtype: str) -> dict[str, Any]:
        assert apply_model is not None
        last = song.shape[-1] % int((1 - 0.25) * int(rate * model.segment))  # demucs's last chunk, if any
        if label == "torchaudio forward" and 0 < last < 4096:
            return {"error": f"demucs's last chunk ({last} samples) is too short for torchaudio; change --seconds"}
        wav = torch.from_numpy(song).to(device)
        ref = wav.mean(0)  # demucs/separate.py's normalisation
        wav = (wav - ref.mean()) / ref.std()
        start = time.perf_counter()
        with torch.inference_mode(), autocast(dtype):
            out = apply_model(model, wav[None], shifts=0, split=True, overlap=0.25, segment=model.segment)[0]
        (out * ref.std() + ref.mean()).cpu()
        return {"separate_x_rt": args.seconds / (time.perf_counter() - start)}

    for dtype in args.dtypes:
        for batch_size in args.batch_sizes:
            table.row(label, dtype, batch_size, functools.partial(forward_row, dtype, batch_size))
        if apply_model is not None:
            table.row("demucs apply_model", dtype, None, functools.partial(demucs_row, dtype))


def _parity_db(reference: tuple, models: dict, first: Any, device: str, relative_error_db: Callable) -> float | None:
    """Relative error (dB) of our float32 forward pass against torchaudio's, TF32 off on both sides, on one
    music-like chunk of the segment's length; None without a float32 model."""
    import numpy as np

    from modeling_hdemucs_flax import synth_song

    if "float32" not in models:
        return None
    torch = reference[0]
    model = models["float32"]
    reference_model = _torch_model(reference, model, device)
    if reference_model is None:
        return None
    chunk = synth_song(first.segment_samples, first.sample_rate, first.audio_channels, seed=1)[None]
    ours = np.asarray(model(chunk).sources)  # the model's own precision: float32, whatever JAX's default is
    _tf32(torch, False)
    with torch.inference_mode():
        theirs = reference_model(torch.from_numpy(chunk).to(device)).cpu().numpy()
    return relative_error_db(ours, theirs)


if __name__ == "__main__":
    main()
