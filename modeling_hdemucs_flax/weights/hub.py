"""Models from the Hugging Face Hub through transformers' `from_pretrained`: reached quickly, failing in one line.

`FlaxHDemucs.from_pretrained` (and through it `load_model`, the default-model chain and transformers'
`FlaxAutoModel`) runs transformers' loader through `load_pretrained`, which adds two things:
- before a Hub repo id is fetched online, one short probe of the endpoint (`network.unreachable`). When the
  host name does not resolve, the connection is refused or nothing answers within a few seconds, the copy in
  the Hugging Face cache is used if there is one, and otherwise the error comes at once instead of after
  huggingface_hub's 25 s of retries (minutes behind a proxy that never answers);
- every failure becomes a `ModelLoadError` with one line saying what is wrong and what to do (offline and not
  cached, Hub unreachable, no such repository or revision, no weights in it, unreadable files), where
  transformers raises multi-line `OSError`s. The package's own errors (`CheckpointError`, `ConfigError`) pass
  through unchanged.

`HF_ENDPOINT` and `HF_HUB_OFFLINE` are read by huggingface_hub when it is imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from huggingface_hub import constants as hf_constants
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import HDemucsFlaxError, ModelLoadError, describe
from .locations import looks_like_path
from .network import unreachable

Model = TypeVar("Model")

LOCAL_FOLDER = "pass a local model folder"  # the way around every Hub problem


def endpoint() -> str:
    """The Hub's base URL (`HF_ENDPOINT`, default https://huggingface.co)."""
    return hf_constants.ENDPOINT.rstrip("/")


def offline() -> bool:
    """Whether `HF_HUB_OFFLINE=1` forbids every Hub request."""
    return bool(hf_constants.HF_HUB_OFFLINE)


def load_pretrained(load: Callable[..., Model], name: str | os.PathLike, *model_args: Any, **kwargs: Any) -> Model:
    """`load(name, *model_args, **kwargs)` (transformers' `from_pretrained`) with the probe and the one-line
    errors described in the module doc. Raises `ModelLoadError`, or the package's own errors as they are."""
    spec = str(name)
    why_unreachable = None
    hub_id = not isinstance(name, os.PathLike) and not looks_like_path(spec)
    if hub_id and not (kwargs.get("local_files_only") or offline()):
        why_unreachable = unreachable(endpoint())
        if why_unreachable is not None:  # only the cached copy can be had
            kwargs = {**kwargs, "local_files_only": True}
    try:
        return load(name, *model_args, **kwargs)
    except HDemucsFlaxError:
        raise
    except Exception as error:  # transformers' OSErrors, huggingface_hub's, JSON and safetensors errors
        translated = load_error(spec, error, kwargs, unreachable=why_unreachable)
        raise translated from (None if translated.fix else error)


def _causes(error: BaseException) -> list[BaseException]:
    """`error` and the exceptions it was raised from or during, innermost last."""
    chain: list[BaseException] = []
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def load_error(
    spec: str, error: BaseException, kwargs: Mapping[str, Any], *, unreachable: str | None = None
) -> ModelLoadError:
    """The one-line `ModelLoadError` for `error`, raised by transformers' `from_pretrained(spec, **kwargs)`;
    `unreachable` is the probe's finding when the Hub could not be reached. Errors about the Hub say what to do
    (`fix`); errors about the files (a config that is not JSON, a damaged weights file) name the problem."""
    causes = _causes(error)
    label = f"model {spec!r}"
    url = f"{endpoint()}/{spec}"

    def caused_by(kind: type[BaseException]) -> bool:
        return any(isinstance(cause, kind) for cause in causes)

    not_cached = caused_by(LocalEntryNotFoundError) or caused_by(OfflineModeIsEnabled)
    if unreachable is not None and not_cached:
        return ModelLoadError(
            f"{label} is not in the Hugging Face cache and the Hub ({endpoint()}) cannot be reached ({unreachable})",
            f"check the network and proxy settings, or {LOCAL_FOLDER}",
        )
    if offline() and not_cached:
        return ModelLoadError(
            f"{label} is not in the Hugging Face cache and offline mode (HF_HUB_OFFLINE=1) forbids downloading it",
            f"run once online or {LOCAL_FOLDER}",
        )
    if kwargs.get("local_files_only") and not_cached:
        return ModelLoadError(f"{label} is not in the Hugging Face cache (local_files_only=True)", LOCAL_FOLDER)
    if caused_by(GatedRepoError):
        return ModelLoadError(
            f"{label} on {endpoint()} is gated", f"request access at {url} and log in (hf auth login)"
        )
    if caused_by(RepositoryNotFoundError):
        return ModelLoadError(
            f"{label}: no such repository on {endpoint()} (or it is private and no token grants access)",
            f"check the name at {url} or {LOCAL_FOLDER}",
        )
    if caused_by(RevisionNotFoundError):
        revision = kwargs.get("revision") or "main"
        return ModelLoadError(
            f"{label} has no revision {revision!r} on {endpoint()}", f"check its branches and tags at {url}"
        )
    if not_cached:  # online, yet huggingface_hub could not connect after its retries
        return ModelLoadError(
            f"{label} is not in the Hugging Face cache and the Hub ({endpoint()}) could not be reached",
            f"check the network and proxy settings, or {LOCAL_FOLDER}",
        )
    if caused_by(EntryNotFoundError) or "does not appear to have a file named" in str(error):
        where = "" if os.path.isdir(spec) else f" on {endpoint()}"
        return ModelLoadError(
            f"{label}{where} has no weights file (model.safetensors or flax_model.msgpack)",
            "pass a folder written by save_pretrained",
        )
    return ModelLoadError(f"cannot load {label}: {describe(error)}")
