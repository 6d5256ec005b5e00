"""demucs's released models by name (`--model htdemucs_ft`, `-n htdemucs`), fetched the way the default model is.

The chain for a registry name (`demucs_registry.DEMUCS_MODELS`), first that works:
1. this machine's own conversion, `cache_dir()/converted/<name>/` (written by step 4 or 5 once);
2. our converted Hub repository (`hdemucs-flax/<name>`), from the Hugging Face cache;
3. demucs's official member files already in `cache_dir()/demucs/` (copied there by hand: the offline recipe),
   each checked against the sha256 prefix its file name carries, then converted;
4. our converted Hub repository, online;
5. the official files downloaded from demucs's server (`HDEMUCS_FLAX_DEMUCS_URL` overrides its base URL), each
   checked as demucs checks it (the first 8 hex digits of its sha256 are in its name), converted without torch
   (`models.from_demucs`: the file is read as data, nothing in it runs) and cached by step 1's folder; the
   downloaded files are then deleted.
Every failure is a one-line `ModelLoadError` saying what was tried and how to get the model offline.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import DownloadError, HDemucsFlaxError, ModelLoadError, describe
from ..runtime import cache_dir
from ..weights import hub
from ..weights.downloads import download_file
from ..weights.network import unreachable
from .demucs_registry import DEMUCS_MODELS, ROOT_URL, DemucsCheckpointFile, DemucsModelInfo, check_sha_prefix

ENV_DEMUCS_URL = "HDEMUCS_FLAX_DEMUCS_URL"  # the official server's base URL (tests: a local file server)
HUB_NAMESPACE = "hdemucs-flax"  # where our converted copies are published

logger = logging.getLogger(__name__)


def is_demucs_name(model: str | os.PathLike | None) -> bool:
    """Whether `model` is a registry name (and not a folder of that name in the working directory)."""
    return isinstance(model, str) and model in DEMUCS_MODELS and not os.path.exists(model)


def hub_repo(info: DemucsModelInfo) -> str:
    """Our converted copy's Hub repository: `hdemucs-flax/htdemucs-ft` for htdemucs_ft."""
    return f"{HUB_NAMESPACE}/{info.name.replace('_', '-')}"


def converted_dir(info: DemucsModelInfo) -> Path:
    """Where the chain keeps its own conversion of `info`'s official files."""
    return cache_dir() / "converted" / info.name


def official_dir() -> Path:
    """Where the chain looks for (and downloads) demucs's official files: copy them here to work offline."""
    return cache_dir() / "demucs"


def member_url(member: DemucsCheckpointFile) -> str:
    base = os.environ.get(ENV_DEMUCS_URL)
    if not base:
        return member.url
    return base.rstrip("/") + "/" + member.url[len(ROOT_URL) :]


def cached_copies(info: DemucsModelInfo) -> list[str]:
    """Where this machine has `info`'s model offline: "converted", "hub cache", "official files"."""
    from huggingface_hub import try_to_load_from_cache

    places = []
    if any((converted_dir(info) / name).is_file() for name in ("config.json", "bag.json")):
        places.append("converted")
    try:
        cached = try_to_load_from_cache(hub_repo(info), "config.json")
    except Exception:  # not a usable repo id here
        cached = None
    if isinstance(cached, str):
        places.append("hub cache")
    if all((official_dir() / member.file_name).is_file() for member in info.members):
        places.append("official files")
    return places


def _recipe(info: DemucsModelInfo, option: str) -> str:
    files = ", ".join(member_url(member) for member in info.members)
    return f"copy {files} into {official_dir()}, or pass a converted model folder as {option}"


def _convert(info: DemucsModelInfo, files: list[Path], load_options: dict[str, Any], save: Callable[..., Any]) -> Any:
    """The official files read as data, converted, assembled (one model, or a bag) and saved for next time."""
    from ..models.from_demucs import model_from_demucs
    from ..weights.demucs_checkpoint import read_demucs_package

    members = [model_from_demucs(read_demucs_package(path), segment=info.segment, **load_options) for path in files]
    if len(members) == 1:
        model = members[0]
    else:
        from ..models.bag import FlaxDemucsBag

        names = [member.signature for member in info.members]
        model = FlaxDemucsBag(members, info.weights, segment=info.segment, names=names, name_or_path=info.name)
    logger.info("converting %s into %s (once) ...", info.name, converted_dir(info))
    save(model, converted_dir(info), lambda staging: (staging / "README.md").write_text(model_card(info)))
    return model


def model_card(info: DemucsModelInfo) -> str:
    """The converted folder's README.md: where the weights come from and their licence, as the authors published
    them (the `license:` front matter is what applications show, see `pretrained.model_licence`)."""
    files = "\n".join(f"- `{member.file_name}`: {member.url}" for member in info.members)
    sdr = f"{info.sdr_db:.1f} dB ({info.sdr_source})" if info.sdr_db is not None else info.sdr_source
    licence = info.licence.lower()
    return (
        f"---\nlicense: {licence}\nlibrary_name: hdemucs-flax\ntags:\n- audio-source-separation\n---\n\n"
        f"# {info.name}\n\n{info.description}.\n\n"
        f"Sources: {', '.join(info.sources)}. Architecture: {info.architecture}.\n\n"
        f"Converted by hdemucs-flax (without torch, the files read as data) from demucs's official checkpoints, "
        f"each checked against the sha256 prefix in its name:\n\n{files}\n\n"
        f"Licence: {info.licence}, as published by the authors: {info.licence_source}.\n\n"
        f"SDR on the MUSDB-HQ test set, as published: {sdr}.\n"
    )


def load_demucs_model(
    name: str,
    *,
    load_options: dict[str, Any],
    load_folder: Callable[[Path], Any],
    load_repo: Callable[..., Any],
    save: Callable[..., Any],
    option: str = "--model",
    progress: bool = True,
    info: DemucsModelInfo | None = None,
) -> Any:
    """The registry model `name` through the chain in the module doc. `load_folder(path)`, `load_repo(repo_id,
    local_files_only=...)` and `save(model, folder, finish)` are the loader's own (`pretrained`); `load_options` (dtype,
    matmul_precision) go to the converted models. `info` replaces the registry's entry (tests point it at tiny
    files). Raises `ModelLoadError`."""
    info = info or DEMUCS_MODELS[name]
    converted = converted_dir(info)
    if any((converted / marker).is_file() for marker in ("config.json", "bag.json")):
        try:
            return load_folder(converted)
        except HDemucsFlaxError as error:
            raise ModelLoadError(
                f"cached model {converted} is unreadable ({describe(error)}); delete that folder to rebuild it"
            ) from error
    repo = hub_repo(info)
    try:
        return load_repo(repo, local_files_only=True)
    except ModelLoadError:
        pass
    files = [official_dir() / member.file_name for member in info.members]
    placed = [path for path in files if path.is_file()]
    for member, path in zip(info.members, files, strict=True):
        if path.is_file():  # copied by hand, or left by an earlier run: used when it is the published file
            try:
                check_sha_prefix(path, member.sha256_prefix)
            except DownloadError as error:
                raise ModelLoadError(f"{describe(error)}; it was left in place", _recipe(info, option)) from None
    if len(placed) == len(files):
        return _convert_or_explain(info, files, load_options, save)
    if hub.offline():
        raise ModelLoadError(
            f"{info.name} is not cached and offline mode (HF_HUB_OFFLINE=1) forbids downloading it",
            _recipe(info, option),
        )
    logger.info("fetching %s from the Hub (%s) ...", repo, hub.endpoint())
    try:
        return load_repo(repo, local_files_only=False)
    except ModelLoadError as error:
        hub_problem = error.problem
    downloaded = []
    for member, path in zip(info.members, files, strict=True):
        if path.is_file():
            continue
        url = member_url(member)
        logger.info("%s; fetching demucs's %s from %s instead ...", hub_problem, member.file_name, url)
        try:
            reason = unreachable(url)
            if reason is not None:
                raise DownloadError(f"cannot download {url}: {reason}")
            download_file(url, path, progress=progress)
            downloaded.append(path)
            check_sha_prefix(path, member.sha256_prefix)
        except DownloadError as error:
            for done in downloaded:
                done.unlink(missing_ok=True)
            raise ModelLoadError(
                f"cannot get {info.name}: {hub_problem}, and {describe(error)}",
                f"check the network and proxy settings, or {_recipe(info, option)}",
            ) from None
    model = _convert_or_explain(info, files, load_options, save)
    for path in downloaded:  # fetched by this call: the converted copy replaces them
        path.unlink(missing_ok=True)
    return model


def _convert_or_explain(info: DemucsModelInfo, files: list[Path], load_options: dict[str, Any], save) -> Any:
    try:
        return _convert(info, files, load_options, save)
    except HDemucsFlaxError as error:
        raise ModelLoadError(f"cannot convert {info.name}: {describe(error)}") from error
