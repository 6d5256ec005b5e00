"""Convert a torchaudio HDemucs checkpoint into a Hub-ready Flax folder, check it, and optionally publish it.

    python -m conversion.convert_torchaudio_hdemucs --bundle HDEMUCS_HIGH_MUSDB_PLUS \
        --output-dir out/hdemucs-high-musdb-plus --push-to-hub hdemucs-flax/hdemucs-high-musdb-plus

Steps, in order; any failure stops with one line on stderr, a non-zero exit and nothing written:
1. Source: `--bundle NAME` downloads torchaudio's official file into the cache (`HDEMUCS_FLAX_CACHE`, base URL
   `HDEMUCS_FLAX_TORCHAUDIO_URL`) and verifies its sha256; `--checkpoint PATH` takes a local state-dict file
   with `--preset` or `--config` for its architecture (`--sha256` verifies it too).
2. Conversion with the package's torch-free reader and converter (the path users' machines take).
3. Parity gate: torchaudio (reading the file with `torch.load`) and the converted Flax model — with its
   weights in the stored dtype — separate the same music-like probe; the relative error in dB must be at or
   below the threshold. The error is printed either way.
4. Output: config.json, model.safetensors (flax format) and README.md (the model card), staged in a
   temporary folder beside `--output-dir`, re-read and compared with what passed the gate, then moved into
   place. Exactly those three files.
5. `--push-to-hub REPO_ID`: `create_repo(exist_ok=True)` and `upload_folder`. Unchanged files make no new
   commit, so re-running is harmless. The token comes from the usual Hugging Face sources (`HF_TOKEN`,
   `huggingface-cli login`).

Needs torch and torchaudio (`pip install hdemucs-flax[convert]`); the runtime package never imports them.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import string
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open

from modeling_hdemucs_flax import FlaxHDemucs, HDemucsConfig
from modeling_hdemucs_flax.errors import DownloadError, HDemucsFlaxError, one_line
from modeling_hdemucs_flax.metrics import max_abs_error, relative_error_db
from modeling_hdemucs_flax.models.hdemucs.configuration_hdemucs import PRESETS
from modeling_hdemucs_flax.models.hdemucs.convert_torchaudio import convert_torchaudio_state_dict
from modeling_hdemucs_flax.synthetic import synth_song
from modeling_hdemucs_flax.weights.downloads import sha256_file
from modeling_hdemucs_flax.weights.torch_checkpoint import load_torch_state_dict
from modeling_hdemucs_flax.zoo.pretrained import save_pretrained_atomic
from modeling_hdemucs_flax.zoo.torchaudio_bundles import (
    BUNDLES,
    TorchaudioBundle,
    fetch_torchaudio_checkpoint,
    torchaudio_url,
)

OUTPUT_FILES = ("README.md", "config.json", "model.safetensors")

# Relative error 20·log10(‖flax − torch‖ / ‖torch‖) allowed on the probe, in dB. Measured with every
# parameter re-drawn (tests/reference.py): float32 weights -130 dB on the tiny test model (1.2 s probe) and
# -116.9 dB on the full-size high preset (6 s probe); bfloat16-rounded weights -52.9 dB (tiny) and -39.9 dB
# (full size). One flipped transposed-conv kernel measures -37 dB on the tiny model, so mapping errors are
# judged by the float32 gate only; the bfloat16 gate is a rounding budget checked in addition to it.
THRESHOLDS_DB = {"float32": -80.0, "bfloat16": -30.0}

CODE_URL = "https://huggingface.co/hdemucs-flax"  # the project's homepage (pyproject.toml)
CARD_TEMPLATE = Path(__file__).with_name("model_card.md")  # string.Template: $name fields filled by make_card


class ConversionError(HDemucsFlaxError):
    """A user-facing failure; the message is one line."""


@dataclass
class Source:
    """What is being converted: the checkpoint file, its architecture and where it came from."""

    checkpoint: Path
    config: HDemucsConfig
    sha256: str
    sha256_verified: bool
    bundle: TorchaudioBundle | None = None
    url: str | None = None


@dataclass
class ParityResult:
    """Flax vs torchaudio on the probe: max-abs error and relative L2 error 20·log10(‖a−b‖/‖b‖) in dB."""

    max_abs: float
    relative_db: float
    threshold_db: float
    probe_seconds: float
    weights_dtype: str
    details: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return math.isfinite(self.relative_db) and self.relative_db <= self.threshold_db

    def describe(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"parity vs torchaudio ({self.weights_dtype} weights, {self.probe_seconds:g} s music-like probe): "
            f"max-abs {self.max_abs:.3e}, relative {self.relative_db:.1f} dB "
            f"(gate: <= {self.threshold_db:g} dB) - {verdict}"
        )


def build_parser(bundles: Mapping[str, TorchaudioBundle] = BUNDLES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m conversion.convert_torchaudio_hdemucs",
        description="Convert torchaudio HDemucs weights to a Flax safetensors folder (config, weights, model card), "
        "verified against torchaudio before anything is written; optionally push it to the Hugging Face Hub.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", choices=sorted(bundles), help="download torchaudio's official checkpoint")
    source.add_argument("--checkpoint", type=Path, help="a local torchaudio HDemucs state-dict file (torch.save)")
    arch = parser.add_mutually_exclusive_group()
    arch.add_argument("--preset", choices=sorted(PRESETS), help="architecture of --checkpoint (default: high)")
    arch.add_argument("--config", type=Path, help="config.json with the architecture of --checkpoint")
    parser.add_argument("--sha256", help="expected sha256 of the checkpoint file (checked before conversion)")
    parser.add_argument(
        "--allow-unverified",
        action="store_true",
        help="convert a bundle for which no sha256 is published without --sha256 (the card says so)",
    )
    parser.add_argument("--output-dir", type=Path, required=True, help="folder to write (new, or a previous output)")
    parser.add_argument("--dtype", choices=sorted(THRESHOLDS_DB), default="float32", help="dtype of the stored weights")
    parser.add_argument(
        "--threshold-db", type=float, help=f"float32 parity gate in dB (default {THRESHOLDS_DB['float32']:g})"
    )
    parser.add_argument(
        "--bf16-threshold-db",
        type=float,
        help=f"extra gate for --dtype bfloat16 weights in dB (default {THRESHOLDS_DB['bfloat16']:g})",
    )
    parser.add_argument("--probe-seconds", type=float, default=6.0, help="length of the parity probe (default: 6)")
    parser.add_argument("--push-to-hub", metavar="REPO_ID", help="upload the folder to this Hub model repo")
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--revision", default="main", help="branch to push to (created if missing; default: main)")
    parser.add_argument("--commit-message", help="commit message for the upload")
    parser.add_argument("--no-progress", action="store_true", help="no download progress bar")
    return parser


# ---------------------------------------------------------------------------------------------- source


def resolve_source(args: argparse.Namespace, bundles: Mapping[str, TorchaudioBundle]) -> Source:
    """Download/verify the checkpoint and settle its architecture. Raises ConversionError."""
    if args.sha256 is not None and not _is_sha256(args.sha256):
        raise ConversionError(f"--sha256 {args.sha256!r}: expected 64 hexadecimal digits")
    if args.bundle is not None:
        if args.preset or args.config:
            raise ConversionError("--preset/--config apply to --checkpoint; a bundle fixes its own architecture")
        if args.bundle not in bundles:
            raise ConversionError(f"--bundle {args.bundle}: unknown bundle; choose one of {sorted(bundles)}")
        bundle = bundles[args.bundle]
        want = args.sha256 or bundle.sha256
        if want is None and not args.allow_unverified:
            raise ConversionError(
                f"{bundle.name}: torchaudio publishes no sha256 for {bundle.key}; pass --sha256 HEX to verify the "
                "download, or --allow-unverified to convert it unverified (the model card will say so)"
            )
        try:
            path, digest = fetch_torchaudio_checkpoint(bundle, sha256=want, progress=not args.no_progress)
        except DownloadError as error:
            raise ConversionError(str(error)) from None
        if want is None:
            print(f"WARNING: {path.name} is UNVERIFIED (no published sha256); its sha256 is {digest}", file=sys.stderr)
        return Source(path, bundle.config(), digest, want is not None, bundle, torchaudio_url(bundle.key))

    path = args.checkpoint
    if not path.is_file():
        raise ConversionError(f"{path}: no such checkpoint file")
    digest = sha256_file(path)
    if args.sha256 is not None and digest != args.sha256.lower():
        raise ConversionError(
            f"{path}: sha256 mismatch (got {digest}, expected {args.sha256.lower()}); nothing written"
        )
    if args.config is not None:
        try:
            config = HDemucsConfig.from_json_file(args.config)
        except (OSError, ValueError) as error:
            raise ConversionError(f"{args.config}: cannot read the config ({one_line(error)})") from None
    else:
        config = HDemucsConfig.from_preset(args.preset or "high")
    return Source(path, config, digest, args.sha256 is not None)


def _is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


# ------------------------------------------------------------------------------------ conversion + gate


def convert_state_dict(state_dict: Mapping[str, Any], config: HDemucsConfig) -> dict:
    """torchaudio state dict -> Flax params (the package's converter; one seam, so tests can break it)."""
    return convert_torchaudio_state_dict(state_dict, config)


def cast_params(params: dict, dtype: str) -> dict:
    """Params in the stored dtype (numpy float32 or bfloat16)."""
    import jax
    import ml_dtypes

    target = np.float32 if dtype == "float32" else ml_dtypes.bfloat16
    return jax.tree.map(lambda a: np.asarray(a).astype(target), params)


def probe_audio(seconds: float, sample_rate: int, channels: int, seed: int = 0) -> np.ndarray:
    """The gate's deterministic probe, float32 (channels, samples): a synthetic song with drums, bass, chords and
    a voice-like melody, so every source the model separates has something to separate."""
    return synth_song(max(int(round(seconds * sample_rate)), 1), sample_rate, channels, seed=seed)


def torchaudio_reference(checkpoint: Path, config: HDemucsConfig, probe: np.ndarray) -> np.ndarray:
    """torchaudio's output for `probe` (channels, samples), reading `checkpoint` with `torch.load` (an
    independent reader, so the gate also checks the package's torch-free one): (sources, channels, samples)."""
    import torch
    import torchaudio

    reference = torchaudio.models.HDemucs(**config.torchaudio_kwargs())
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    try:
        reference.load_state_dict(state)
    except RuntimeError as error:
        raise ConversionError(f"{checkpoint}: torchaudio cannot load it for this config ({one_line(error)})") from None
    reference.eval()
    with torch.no_grad():
        return reference(torch.from_numpy(probe)[None]).numpy()[0].astype(np.float64)


def compare(
    config: HDemucsConfig,
    params: dict,
    probe: np.ndarray,
    want: np.ndarray,
    weights_dtype: str,
    threshold_db: float,
    probe_seconds: float,
) -> ParityResult:
    """Run the Flax model with `params` (as stored) on `probe` and measure its error against `want`."""
    model = FlaxHDemucs(config, params=params)
    got = np.asarray(model(probe[None]).sources, np.float64)[0]
    details = {name: relative_error_db(got[i], want[i]) for i, name in enumerate(config.sources)}
    return ParityResult(
        max_abs_error(got, want), relative_error_db(got, want), threshold_db, probe_seconds, weights_dtype, details
    )


def parity_gate(
    checkpoint: Path,
    config: HDemucsConfig,
    params: dict,
    dtype: str,
    probe_seconds: float,
    thresholds: Mapping[str, float],
) -> list[ParityResult]:
    """The float32 conversion against torchaudio (catches any mapping or layout error), then, for bfloat16
    storage, the rounded weights too (a rounding budget: it alone would miss subtle mapping errors, which
    can measure near -37 dB)."""
    probe = probe_audio(probe_seconds, config.sampling_rate, config.audio_channels)
    want = torchaudio_reference(checkpoint, config, probe)
    results = [compare(config, params, probe, want, "float32", thresholds["float32"], probe_seconds)]
    if dtype != "float32" and results[0].passed:
        stored = cast_params(params, dtype)
        results.append(compare(config, stored, probe, want, dtype, thresholds[dtype], probe_seconds))
    return results


# --------------------------------------------------------------------------------------------- card


def _figures(result: ParityResult) -> dict[str, Any]:
    return {
        "max_abs_error": float(f"{result.max_abs:.3e}"),
        "relative_error_db": round(result.relative_db, 1),
        "threshold_db": result.threshold_db,
        "probe_seconds": result.probe_seconds,
        "weights_dtype": result.weights_dtype,
    }


def make_card(source: Source, results: list[ParityResult], repo_id: str | None):
    """The README.md model card: metadata the Hub indexes, then provenance, caveats, parity and usage.
    `results[-1]` measures the weights as stored; a bfloat16 card also carries the float32 conversion check."""
    from huggingface_hub import ModelCard, ModelCardData

    result = results[-1]
    config = source.config
    name = source.bundle.name if source.bundle else source.checkpoint.name
    model_ref = repo_id or "path/to/this/folder"
    provenance = {
        "torchaudio_bundle": source.bundle.name if source.bundle else None,
        "file": source.bundle.key if source.bundle else source.checkpoint.name,
        "url": source.url,
        "sha256": source.sha256,
        "sha256_verified": source.sha256_verified,
    }
    extra = {"parity_float32_conversion": _figures(results[0])} if len(results) > 1 else {}
    data = ModelCardData(
        license="cc-by-nc-sa-4.0",
        pipeline_tag="audio-to-audio",
        tags=["music-source-separation", "audio", "music", "demucs", "hybrid-demucs", "jax", "flax", "hdemucs-flax"],
        sources=list(config.sources),
        sample_rate=config.sampling_rate,
        audio_channels=config.audio_channels,
        provenance=provenance,
        parity=_figures(result),
        **extra,
    )
    if source.sha256_verified:
        digest_note = f"sha256 `{source.sha256}` (verified before conversion)"
    else:
        digest_note = (
            f"sha256 `{source.sha256}` (computed at conversion; **unverified**: no published digest was available "
            "to check it against)"
        )
    if source.bundle:
        origin = (
            f"torchaudio's `torchaudio.pipelines.{source.bundle.name}` checkpoint, file `{source.bundle.key}` "
            f"({source.url}), {digest_note}."
        )
        training = source.bundle.training_data
    else:
        origin = f"the torchaudio HDemucs state-dict file `{source.checkpoint.name}`, {digest_note}."
        training = "Not stated by the converter: this folder was made from a local checkpoint."
    source_table = "\n".join(
        f"| {i} | {s} | {result.details.get(s, float('nan')):.1f} dB |" for i, s in enumerate(config.sources)
    )
    text = string.Template(CARD_TEMPLATE.read_text()).substitute(
        metadata=data.to_yaml(),
        name=name,
        sample_rate=config.sampling_rate,
        audio_channels=config.audio_channels,
        source_list=", ".join(config.sources),
        code_url=CODE_URL,
        source_table=source_table,
        model_ref=model_ref,
        training=training,
        origin=origin,
        nfft=config.nfft,
        depth=config.depth,
        channels=config.channels,
        weights_dtype=result.weights_dtype,
        probe_seconds=f"{result.probe_seconds:g}",
        parity=". ".join(_sentence(r) for r in results),
    )
    return ModelCard(text)


def _sentence(result: ParityResult) -> str:
    return (
        f"With {result.weights_dtype} weights: max-abs error {result.max_abs:.3e}, relative error "
        f"{result.relative_db:.1f} dB (gate: at most {result.threshold_db:g} dB)"
    )


# ------------------------------------------------------------------------------------------ output


def check_output_dir(path: Path) -> None:
    """`path` must be new, empty, or a previous output of this script (only files it writes)."""
    if path.exists():
        if not path.is_dir():
            raise ConversionError(f"--output-dir {path}: exists and is not a folder")
        extra = sorted(p.name for p in path.iterdir() if p.name not in OUTPUT_FILES)
        if extra:
            raise ConversionError(
                f"--output-dir {path}: holds other files ({', '.join(extra)}); choose a new or empty folder"
            )


def write_folder(model: FlaxHDemucs, card, output_dir: Path) -> list[str]:
    """Write config.json + model.safetensors + README.md into `output_dir` atomically (`save_pretrained_atomic`),
    after re-reading the staged weights and comparing them with `model.params`. Nothing is left on failure."""
    from flax.traverse_util import flatten_dict

    def finish(staging: Path) -> None:
        card.save(staging / "README.md")
        written = sorted(p.name for p in staging.iterdir())
        if written != sorted(OUTPUT_FILES):
            raise ConversionError(f"internal error: wrote {written}, expected {sorted(OUTPUT_FILES)}")
        with _quiet_transformers():  # bfloat16 weights make transformers list every key in a warning
            reloaded = flatten_dict(dict(FlaxHDemucs.from_pretrained(staging, dtype=model.dtype).params))
        gated = flatten_dict(dict(model.params))
        # from_pretrained hands back float32 parameters (bfloat16 -> float32 is exact), so values are compared
        # in float32 and the stored dtypes are read from the file itself.
        with safe_open(staging / "model.safetensors", framework="flax") as stored:
            stored_dtypes = {tuple(k.split(".")): stored.get_tensor(k).dtype for k in stored.keys()}
        if reloaded.keys() != gated.keys() or any(
            stored_dtypes.get(k) != np.asarray(gated[k]).dtype
            or not np.array_equal(np.asarray(reloaded[k]), np.asarray(gated[k], np.float32))
            for k in gated
        ):
            raise ConversionError("internal error: the saved weights differ from the ones that passed the gate")

    save_pretrained_atomic(model, output_dir, finish)
    return sorted(OUTPUT_FILES)


@contextlib.contextmanager
def _quiet_transformers():
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def push_folder(folder: Path, repo_id: str, *, private: bool, revision: str, commit_message: str | None) -> str:
    """create_repo(exist_ok) + upload_folder; returns a one-line summary. Unchanged files make no commit."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        before = _head(api, repo_id, revision)
        if revision != "main" and before is None:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id,
            repo_type="model",
            folder_path=str(folder),
            revision=revision,
            commit_message=commit_message or f"Upload {folder.name} (converted from torchaudio)",
            allow_patterns=list(OUTPUT_FILES),
        )
    except (HfHubHTTPError, OSError, ValueError, KeyError, TypeError) as error:  # network or a malformed answer
        reason = one_line(error) if not isinstance(error, KeyError) else f"unexpected answer from the Hub ({error})"
        raise ConversionError(f"push to {repo_id} failed: {reason} (the folder {folder} is complete)") from None
    if before is not None and info.oid == before:
        return f"{repo_id}@{revision}: already up to date (commit {before[:12]}), nothing pushed"
    return f"pushed to {repo_id}@{revision}: commit {info.oid[:12]} ({info.commit_url})"


def _head(api, repo_id: str, revision: str) -> str | None:
    from huggingface_hub.utils import RevisionNotFoundError

    try:
        return api.repo_info(repo_id, revision=revision).sha
    except RevisionNotFoundError:
        return None


# -------------------------------------------------------------------------------------------- main


def run(args: argparse.Namespace, bundles: Mapping[str, TorchaudioBundle]) -> int:
    if args.probe_seconds <= 0:
        raise ConversionError("--probe-seconds: must be > 0")
    if args.push_to_hub:
        from huggingface_hub import get_token

        if get_token() is None:
            raise ConversionError(
                "--push-to-hub needs a Hugging Face token: set HF_TOKEN or run `huggingface-cli login`"
            )
    check_output_dir(args.output_dir)
    source = resolve_source(args, bundles)
    status = "verified" if source.sha256_verified else "UNVERIFIED"
    print(f"source: {source.checkpoint} (sha256 {source.sha256}, {status})")

    try:
        state_dict = load_torch_state_dict(source.checkpoint)
        params = cast_params(convert_state_dict(state_dict, source.config), "float32")
    except (OSError, ValueError) as error:
        raise ConversionError(f"{source.checkpoint}: {one_line(error)}") from None
    thresholds = dict(THRESHOLDS_DB)
    if args.threshold_db is not None:
        thresholds["float32"] = args.threshold_db
    if args.bf16_threshold_db is not None:
        thresholds["bfloat16"] = args.bf16_threshold_db
    results = parity_gate(source.checkpoint, source.config, params, args.dtype, args.probe_seconds, thresholds)
    for result in results:
        print(result.describe())
        print("  per source: " + ", ".join(f"{k} {v:.1f} dB" for k, v in result.details.items()))
    if not all(r.passed for r in results):
        print(
            f"error: parity gate failed; nothing written to {args.output_dir}"
            + (", nothing pushed" if args.push_to_hub else ""),
            file=sys.stderr,
        )
        return 1

    params = cast_params(params, args.dtype)
    model = FlaxHDemucs(source.config, params=params)
    card = make_card(source, results, args.push_to_hub)
    written = write_folder(model, card, args.output_dir)
    print(f"wrote {args.output_dir}: {', '.join(written)}")
    if args.push_to_hub:
        print(
            push_folder(
                args.output_dir,
                args.push_to_hub,
                private=args.private,
                revision=args.revision,
                commit_message=args.commit_message,
            )
        )
    return 0


def main(argv: list[str] | None = None, *, bundles: Mapping[str, TorchaudioBundle] | None = None) -> int:
    """Command-line entry point; `bundles` replaces the table of torchaudio bundles (tests use tiny ones)."""
    bundles = BUNDLES if bundles is None else bundles
    args = build_parser(bundles).parse_args(argv)
    try:
        return run(args, bundles)
    except ConversionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
