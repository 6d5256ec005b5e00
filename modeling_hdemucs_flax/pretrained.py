"""Where model weights come from: a local folder, a Hugging Face Hub repo id, or — for the default model —
torchaudio's official checkpoint converted on first use.

`load_model` is the one entry point the Separator, the CLI and the Space use to turn a user's `--model`
value into a `FlaxHDemucs`. Errors are `ModelLoadError` with a one-line message saying what is missing and
how to provide it.

The default model (`model=None`) is found by trying, in order:
1. the local cache: a converted copy in `cache_dir()/converted/<bundle>` or `DEFAULT_MODEL` in the Hugging
   Face cache;
2. the converted Flax checkpoint `DEFAULT_MODEL` on the Hub;
3. torchaudio's official HDEMUCS_HIGH_MUSDB_PLUS file (sha256-verified), converted here without torch and
   saved into `cache_dir()/converted/<bundle>` for next time.
With `HF_HUB_OFFLINE=1` only step 1 runs. Download locations follow `HF_ENDPOINT` (the Hub),
`HDEMUCS_FLAX_TORCHAUDIO_URL` (torchaudio's asset server) and `HDEMUCS_FLAX_CACHE` (see `runtime.cache_dir`).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax.numpy as jnp
from huggingface_hub import constants as hf_constants

from .downloads import BUNDLES, TorchaudioBundle, fetch_torchaudio_checkpoint, replace_directory
from .errors import DownloadError, ModelLoadError, one_line
from .layers import Dtype
from .modeling_flax_hdemucs import FlaxHDemucs
from .runtime import cache_dir

# The converted HDEMUCS_HIGH_MUSDB_PLUS checkpoint on the Hub (see conversion/README.md).
DEFAULT_MODEL = "hdemucs-flax/hdemucs-high-musdb-plus"
DEFAULT_BUNDLE = BUNDLES["HDEMUCS_HIGH_MUSDB_PLUS"]

logger = logging.getLogger(__name__)


def _offline() -> bool:
    return bool(hf_constants.HF_HUB_OFFLINE)


def _looks_like_path(spec: str) -> bool:
    """A value that cannot be a Hub repo id ("name" or "namespace/name") is meant as a folder."""
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec or os.path.exists(spec)


def _load_folder(path: Path, dtype) -> FlaxHDemucs:
    if not path.is_dir():
        raise ModelLoadError(f"{path}: no such model folder; pass a folder written by save_pretrained or a Hub repo id")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{path}: not a model folder (no config.json); pass a folder written by save_pretrained")
    try:
        return FlaxHDemucs.from_pretrained(path, dtype=dtype)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot load model {str(path)!r}: {one_line(error)}") from error


def _load_repo(repo_id: str, dtype, revision: str | None, *, local_files_only: bool = False) -> FlaxHDemucs:
    """`FlaxHDemucs.from_pretrained(repo_id)`; transformers' multi-line errors become one line."""
    try:
        return FlaxHDemucs.from_pretrained(
            repo_id, dtype=dtype, revision=revision or "main", local_files_only=local_files_only
        )
    except (OSError, ValueError) as error:
        if local_files_only or _offline():
            raise ModelLoadError(
                f"model {repo_id!r} is not in the Hugging Face cache and offline mode (HF_HUB_OFFLINE=1) forbids "
                "downloading it; run once online or pass a local model folder"
            ) from error
        text = str(error)
        if "is not a local folder and is not a valid model identifier" in text or "Repository Not Found" in text:
            raise ModelLoadError(
                f"model {repo_id!r}: no such repository on {hf_constants.ENDPOINT} (or it is private and no token "
                "grants access); check the name or pass a local model folder"
            ) from error
        raise ModelLoadError(f"cannot load model {repo_id!r}: {one_line(error)}") from error


def load_model(
    model: str | os.PathLike | None = None, *, dtype: Dtype = jnp.float32, revision: str | None = None
) -> FlaxHDemucs:
    """Load `model`: a `save_pretrained` folder, a Hub repo id (downloaded once, then read from the Hugging
    Face cache, also offline), or None for the default HDEMUCS_HIGH_MUSDB_PLUS model (see the module doc).

    `revision` (branch, tag or commit) applies to Hub repos. Raises `ModelLoadError` with a one-line message.
    """
    if model is None:
        return load_default_model(dtype=dtype, revision=revision)
    spec = str(model)
    path = Path(spec).expanduser()
    if isinstance(model, os.PathLike) or _looks_like_path(spec):
        return _load_folder(path, dtype)
    return _load_repo(spec, dtype, revision)


def converted_model_dir(bundle: TorchaudioBundle = DEFAULT_BUNDLE) -> Path:
    """Where the default chain keeps its own conversion of `bundle`'s torchaudio checkpoint."""
    return cache_dir() / "converted" / bundle.name.lower()


def load_default_model(
    *,
    dtype: Dtype = jnp.float32,
    revision: str | None = None,
    repo_id: str = DEFAULT_MODEL,
    bundle: TorchaudioBundle = DEFAULT_BUNDLE,
    progress: bool = True,
) -> FlaxHDemucs:
    """The default model: local cache, else the Hub repo `repo_id`, else `bundle`'s torchaudio checkpoint
    converted and cached. `repo_id` and `bundle` are parameters so tests can point the chain at tiny models.
    Raises `ModelLoadError` with a one-line message."""
    converted = converted_model_dir(bundle)
    if (converted / "config.json").is_file():
        try:
            return FlaxHDemucs.from_pretrained(converted, dtype=dtype)
        except (OSError, ValueError) as error:
            raise ModelLoadError(
                f"cached model {converted} is unreadable ({one_line(error)}); delete that folder to rebuild it"
            ) from error
    try:
        return _load_repo(repo_id, dtype, revision, local_files_only=True)
    except ModelLoadError:
        pass
    if _offline():
        raise ModelLoadError(
            f"the default model ({bundle.name}) is not cached and offline mode (HF_HUB_OFFLINE=1) forbids "
            f"downloading it; run once online, or pass --model with a folder made by "
            f"conversion/convert_torchaudio_hdemucs.py or a cached Hub repo id"
        )
    try:
        return _load_repo(repo_id, dtype, revision)
    except ModelLoadError as error:
        hub_problem = str(error)
    logger.warning("%s; converting torchaudio's %s checkpoint instead (once)", hub_problem, bundle.name)
    try:
        checkpoint, _ = fetch_torchaudio_checkpoint(bundle, progress=progress)
    except DownloadError as error:
        raise ModelLoadError(
            f"cannot get the default model: the Hub copy failed ({hub_problem}) and so did torchaudio's "
            f"checkpoint ({error}); check the network or pass --model with a local model folder"
        ) from error
    try:
        model = FlaxHDemucs.from_torchaudio(checkpoint, bundle.config(), dtype=dtype)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot convert {checkpoint}: {one_line(error)}") from error
    save_pretrained_atomic(model, converted)
    checkpoint.unlink(missing_ok=True)  # the converted copy replaces it; it is re-verified if ever fetched again
    return model


def save_pretrained_atomic(
    model: FlaxHDemucs, destination: str | os.PathLike, finish: Callable[[Path], None] | None = None
) -> Path:
    """`model.save_pretrained(destination, safe_serialization=True)` so that `destination` is only ever absent,
    the previous folder, or the complete new one: the files are written into a staging folder beside it,
    `finish(staging)` may add files or check them (raising stops everything), and the folder then replaces
    `destination` in one rename. Nothing is left behind on failure. Returns `destination`.
    """
    destination = Path(destination).resolve()
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        # First: save_pretrained deletes files whose names start with "model" before writing the weights.
        model.save_pretrained(staging, safe_serialization=True)
        if finish is not None:
            finish(staging)
        replace_directory(staging, destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination
