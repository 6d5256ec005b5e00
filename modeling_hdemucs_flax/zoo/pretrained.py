"""Where model weights come from: a local folder, a Hugging Face Hub repo id, a demucs model's name
(`htdemucs`, `htdemucs_ft`, ...: see `demucs_models`), or — for the default model — torchaudio's official
checkpoint converted on first use.

`load_model` is the one entry point the Separator, the CLI and the Space use to turn a user's `--model` value into
a model of the family (`FlaxHDemucs`, `FlaxHTDemucs`, a bag). Errors are `ModelLoadError` with a one-line message
saying what is missing and how to provide it.

The default model (`model=None`) is found by trying, in order:
1. the local cache: a converted copy in `cache_dir()/converted/<bundle>` or `DEFAULT_MODEL` in the Hugging
   Face cache;
2. torchaudio's file already on this machine, in `cache_dir()/torchaudio/models/` (a copy brought from
   another machine goes there), sha256-verified and converted without torch. A file there that is not the
   expected one stops the chain with an error saying so; it is never deleted, nor the file kept after its
   conversion (only a file this chain downloaded itself is removed once converted);
3. the converted Flax checkpoint `DEFAULT_MODEL` on the Hub;
4. torchaudio's official HDEMUCS_HIGH_MUSDB_PLUS file (sha256-verified), downloaded, converted here without
   torch and saved into `cache_dir()/converted/<bundle>` for next time.
With `HF_HUB_OFFLINE=1` only steps 1 and 2 run. Steps 3 and 4 each start with a short probe of their server
(`network.unreachable`), so an unreachable network fails in seconds; the final error then gives the same
recipe as the offline one (where the file goes, how to convert one). Download locations follow `HF_ENDPOINT`
(the Hub), `HDEMUCS_FLAX_TORCHAUDIO_URL` (torchaudio's asset server) and `HDEMUCS_FLAX_CACHE` (see
`runtime.cache_dir`).

Progress (which source is tried, what is converted) is logged at INFO on this module's logger
(`modeling_hdemucs_flax.zoo.pretrained`); the command line shows those records as status lines on a terminal.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import jax.numpy as jnp

from ..errors import DownloadError, HDemucsFlaxError, ModelLoadError, describe
from ..models.auto import load_family_model
from ..models.bag import FlaxDemucsBag
from ..models.common.layers import Dtype
from ..models.family import FlaxSeparationModel, SeparationModel
from ..models.hdemucs.modeling_flax_hdemucs import FlaxHDemucs
from ..options import DEFAULT_MATMUL_PRECISION, check_matmul_precision
from ..weights import hub
from ..weights.downloads import check_file, replace_directory
from ..weights.locations import looks_like_path
from .demucs_models import is_demucs_name, load_demucs_model
from .demucs_registry import DEMUCS_MODELS, DemucsModelInfo
from .model_identity import check_model_folder
from .torchaudio_bundles import (
    BUNDLES,
    DEFAULT_BUNDLE,
    TorchaudioBundle,
    converted_model_dir,
    fetch_torchaudio_checkpoint,
    torchaudio_checkpoint_path,
    torchaudio_url,
)

# The converted HDEMUCS_HIGH_MUSDB_PLUS checkpoint on the Hub (see conversion/README.md).
DEFAULT_MODEL: str = DEFAULT_BUNDLE.hub_repo or ""
assert DEFAULT_MODEL, "the default bundle names its Hub repo"

logger = logging.getLogger(__name__)


def _load_folder(path: Path, dtype, option: str, matmul_precision: str) -> SeparationModel:
    check_model_folder(path, option)
    try:
        return load_family_model(path, dtype=dtype, matmul_precision=matmul_precision)
    except ModelLoadError:
        raise
    except HDemucsFlaxError as error:  # the config's or the checkpoint's own error (absurd values, missing keys)
        raise ModelLoadError(f"cannot load model {str(path)!r}: {describe(error)}") from error


def _load_repo(
    repo_id: str,
    dtype,
    revision: str | None,
    *,
    local_files_only: bool = False,
    matmul_precision: str = DEFAULT_MATMUL_PRECISION,
) -> SeparationModel:
    """`load_family_model(repo_id)`: the Hub probed first, every failure a one-line ModelLoadError."""
    try:
        return load_family_model(
            repo_id,
            dtype=dtype,
            revision=revision or "main",
            local_files_only=local_files_only,
            matmul_precision=matmul_precision,
        )
    except ModelLoadError:
        raise
    except HDemucsFlaxError as error:
        raise ModelLoadError(f"cannot load model {repo_id!r}: {describe(error)}") from error


def load_model(
    model: str | os.PathLike | None = None,
    *,
    dtype: Dtype = jnp.float32,
    revision: str | None = None,
    option: str = "--model",
    matmul_precision: str = DEFAULT_MATMUL_PRECISION,
) -> SeparationModel:
    """Load `model`: a `save_pretrained` folder (a single network's, or a bag's: `FlaxDemucsBag`), a Hub repo id
    (downloaded once, then read from the Hugging Face cache, also offline), a demucs model's name
    (`demucs_models.load_demucs_model`), or None for the default
    HDEMUCS_HIGH_MUSDB_PLUS model (see the module doc).

    `revision` (branch, tag or commit) applies to Hub repos. `option` is how the application lets its user
    choose a model (the command line's `--model`, the Space's `HDEMUCS_MODEL`), named in error messages.
    `dtype` and `matmul_precision` are the model's (see `FlaxHDemucs`). Raises `ModelLoadError` with a one-line
    message, or `OptionError` for an unknown `matmul_precision` (before anything is loaded).
    """
    check_matmul_precision(matmul_precision)
    if model is None:
        return load_default_model(dtype=dtype, revision=revision, option=option, matmul_precision=matmul_precision)
    spec = str(model)
    path = Path(spec).expanduser()
    if is_demucs_name(model):
        return load_named_model(spec, dtype=dtype, revision=revision, option=option, matmul_precision=matmul_precision)
    if isinstance(model, os.PathLike) or looks_like_path(spec):
        return _load_folder(path, dtype, option, matmul_precision)
    return _load_repo(spec, dtype, revision, matmul_precision=matmul_precision)


def load_named_model(
    name: str,
    *,
    dtype: Dtype = jnp.float32,
    revision: str | None = None,
    option: str = "--model",
    matmul_precision: str = DEFAULT_MATMUL_PRECISION,
    info: DemucsModelInfo | None = None,
    progress: bool = True,
) -> FlaxSeparationModel:
    """A demucs model by its registry name, through `demucs_models.load_demucs_model`'s chain; `info` replaces
    the registry's entry (tests point it at tiny files). Raises `ModelLoadError` with a one-line message."""
    return load_demucs_model(
        name,
        load_options={"dtype": jnp.dtype(dtype), "matmul_precision": matmul_precision},
        load_folder=lambda folder: _load_folder(folder, dtype, option, matmul_precision),
        load_repo=lambda repo, local_files_only: _load_repo(
            repo, dtype, revision, local_files_only=local_files_only, matmul_precision=matmul_precision
        ),
        save=save_pretrained_atomic,
        option=option,
        progress=progress,
        info=info,
    )


def load_default_model(
    *,
    dtype: Dtype = jnp.float32,
    revision: str | None = None,
    repo_id: str = DEFAULT_MODEL,
    bundle: TorchaudioBundle = DEFAULT_BUNDLE,
    progress: bool = True,
    option: str = "--model",
    matmul_precision: str = DEFAULT_MATMUL_PRECISION,
) -> SeparationModel:
    """The default model: local cache, else torchaudio's file already on this machine, else the Hub repo
    `repo_id`, else `bundle`'s torchaudio checkpoint downloaded; converted ones are cached. `repo_id` and
    `bundle` are parameters so tests can point the chain at tiny models; `option`, `dtype` and `matmul_precision`
    are as in `load_model`. Raises `ModelLoadError` with a one-line message."""
    converted = converted_model_dir(bundle)
    if (converted / "config.json").is_file():
        try:
            return load_family_model(converted, dtype=dtype, matmul_precision=matmul_precision)
        except Exception as error:
            raise ModelLoadError(
                f"cached model {converted} is unreadable ({describe(error)}); delete that folder to rebuild it"
            ) from error
    try:
        return _load_repo(repo_id, dtype, revision, local_files_only=True, matmul_precision=matmul_precision)
    except ModelLoadError:
        pass
    local = torchaudio_checkpoint_path(bundle)
    url = torchaudio_url(bundle.key)
    recipe = (
        f"copy {bundle.filename} (from {url}) to {local}, or convert it with "
        f"`hdemucs-flax convert {bundle.filename} -o FOLDER` and pass FOLDER as {option}"
    )
    if local.is_file():  # placed by hand (or left by an earlier run): used when it is the right file, kept
        _, mismatch = check_file(local, bundle.sha256, bundle.size)
        if mismatch is not None:
            download = "" if hub.offline() else ", or delete it and run again to download it"
            raise ModelLoadError(
                f"{local} is not torchaudio's {bundle.filename} ({mismatch}); it was left in place",
                f"replace it with the file from {url}{download}",
            )
        logger.info("converting %s into %s (once) ...", local, converted)
        return _convert(local, bundle, dtype, converted, matmul_precision)
    if hub.offline():
        raise ModelLoadError(
            f"the default model ({bundle.name}) is not cached and offline mode (HF_HUB_OFFLINE=1) forbids "
            "downloading it",
            recipe,
        )
    logger.info("fetching the default model %s from the Hub (%s) ...", repo_id, hub.endpoint())
    try:
        return _load_repo(repo_id, dtype, revision, matmul_precision=matmul_precision)
    except ModelLoadError as error:
        hub_problem = error.problem
    host = urlsplit(url).netloc or url
    logger.info("%s; fetching torchaudio's %s from %s instead ...", hub_problem, bundle.filename, host)
    try:
        checkpoint, _ = fetch_torchaudio_checkpoint(bundle, progress=progress)
    except DownloadError as error:
        raise ModelLoadError(
            f"cannot get the default model: {hub_problem}, and {error}",
            f"check the network and proxy settings, or {recipe}",
        ) from None
    logger.info("converting %s into %s (once) ...", checkpoint.name, converted)
    model = _convert(checkpoint, bundle, dtype, converted, matmul_precision)
    checkpoint.unlink(missing_ok=True)  # downloaded by this call: the converted copy replaces it
    return model


def _convert(
    checkpoint: Path, bundle: TorchaudioBundle, dtype: Dtype, converted: Path, matmul_precision: str
) -> FlaxSeparationModel:
    """`bundle`'s verified torchaudio file converted without torch and saved as `converted` for next time."""
    try:
        model = FlaxHDemucs.from_torchaudio(checkpoint, bundle.config(), dtype=dtype, matmul_precision=matmul_precision)
    except Exception as error:
        raise ModelLoadError(f"cannot convert {checkpoint}: {describe(error)}") from error
    save_pretrained_atomic(model, converted)
    return model


def save_pretrained_atomic(
    model: FlaxSeparationModel | FlaxDemucsBag,
    destination: str | os.PathLike,
    finish: Callable[[Path], None] | None = None,
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


def model_licence(model: str | os.PathLike | None) -> str | None:
    """The weights' licence of `model` (as given to `load_model`; None: the default model), for an application
    to show: known models from the bundle table, others from the `license:` line of their model card's front
    matter (a local folder's README.md, or the Hub repo's cached one). None when nothing says."""
    if model is None:
        return DEFAULT_BUNDLE.licence
    if is_demucs_name(model):
        return DEMUCS_MODELS[str(model)].licence
    spec = str(model)
    for bundle in BUNDLES.values():
        if spec == bundle.hub_repo:
            return bundle.licence
    card: Path | None = Path(spec).expanduser() / "README.md"
    if not card.is_file():
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(spec, "README.md")
        except Exception:  # not a repo id
            cached = None
        card = Path(cached) if isinstance(cached, str) else None
    if card is None:
        return None
    text = card.read_text(errors="replace")
    if not text.startswith("---"):
        return None
    for line in text.split("---", 2)[1].splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "license" and value.strip():
            return value.strip().strip("'\"")
    return None
