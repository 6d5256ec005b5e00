"""Which model a `--model` value names, told by its content rather than by how it was typed.

A dataset job's completion markers certify the model they were made with (`dataset.job_options`), so the
identity must not depend on the spelling of the path, and must change when the weights do:

    a local folder     {"kind": "folder", "files": {"config.json": sha256, "model.safetensors": sha256}}
                       the same folder typed as an absolute path, a relative path or from another directory is
                       one model; new weights converted into it are another. A bag folder's files are its
                       bag.json and its members' ("vocals/config.json", ...)
    a Hub repo         {"kind": "hub", "repo": "org/name", "commit": 40 hex}: the revision resolved once, here
                       (huggingface_hub's snapshot of config.json); workers then load that commit
    the default model  what `pretrained.load_default_model` will load: its Hub copy at the resolved commit (as
                       above), or torchaudio's checkpoint converted on this machine, which is the sha256-verified
                       file run through this version's converter:
                       {"kind": "torchaudio", "bundle": NAME, "sha256": the file's published digest}
    a demucs model     {"kind": "demucs", "name": "htdemucs_ft", "files": [member file names]}: what
                       `demucs_models` loads is those official files (their names carry their sha256's first
                       digits, checked on download), converted by this version, or our Hub copy of them
    a ready Separator  {"kind": "params", "config": sha256, "params": sha256} of the model in memory

Everything but the last is computed without JAX or transformers (a Ray driver never starts JAX): the file
system and huggingface_hub only. A weights file's digest is cached by the file's identity (path, size, mtime,
ctime, inode) in `cache_dir()/digests/`, so a 335 MB file is hashed once (about 0.3 s from the page cache here,
seconds from a cold disk), not on every run.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ModelLoadError, one_line
from ..io import tempfiles
from ..models.bag_manifest import BAG_FILE
from ..runtime import cache_dir
from ..weights.downloads import sha256_file
from ..weights.locations import looks_like_path
from .demucs_models import is_demucs_name
from .demucs_registry import DEMUCS_MODELS
from .torchaudio_bundles import DEFAULT_BUNDLE, converted_model_dir, torchaudio_checkpoint_path

if TYPE_CHECKING:
    from ..models.family import SeparationModel

# The files of a model folder that decide what it computes: the config, and the weights in any of the layouts
# transformers loads (one file or shards with their index, safetensors or msgpack). A model card is not one.
CONFIG_NAME = "config.json"
WEIGHT_SUFFIXES = (".safetensors", ".msgpack", ".index.json")
# Files smaller than this are hashed on every call: caching them would cost about as much as hashing them.
CACHED_DIGEST_BYTES = 16 << 20


def check_model_folder(path: Path, option: str) -> None:
    """Raise `ModelLoadError` unless `path` is a folder holding a config.json (`save_pretrained`'s layout) or a
    bag.json (a bag's)."""
    if path.is_file():
        if path.suffix.lower() in (".pt", ".pth", ".ckpt", ".th", ".bin"):
            raise ModelLoadError(
                f"{path} is a torch checkpoint file, not a model folder; convert it once with "
                f"`hdemucs-flax convert {path} -o FOLDER` and pass FOLDER as {option}"
            )
        raise ModelLoadError(f"{path} is a file, not a model folder; pass a folder written by save_pretrained")
    if not path.is_dir():
        raise ModelLoadError(f"{path}: no such model folder; pass a folder written by save_pretrained or a Hub repo id")
    if not (path / CONFIG_NAME).is_file() and not (path / BAG_FILE).is_file():
        raise ModelLoadError(f"{path}: not a model folder (no config.json); pass a folder written by save_pretrained")


@dataclass(frozen=True)
class ModelSource:
    """A model as a dataset job uses it.

    identity: what completion markers certify (see the module doc). load, revision: what each worker passes to
    `load_model` (an absolute folder, a repo id, or None for the default chain; a resolved Hub commit). label:
    the model for people. typed, typed_revision: the values as given, which markers written before identities
    existed hashed instead (see `named_by`).
    """

    identity: dict[str, Any]
    load: str | None
    revision: str | None
    label: str
    typed: str | None = None
    typed_revision: str | None = None
    folder: str | None = field(default=None, repr=False)  # the resolved folder, for a folder model

    def named_by(self, model: str | None, revision: str | None) -> bool:
        """Whether a marker of an earlier version, which recorded the model as typed (`model`, `revision`), named
        this model: the same folder (a relative path resolved from the current directory), the same repo id and
        revision, or the default model. Such markers cannot prove the weights; the earlier version trusted the
        name, and so does this one, once."""
        kind = self.identity["kind"]
        if kind == "folder":
            return model is not None and os.path.realpath(os.path.expanduser(model)) == self.folder
        if kind == "params":
            return model == self.typed
        return model == self.typed and revision == self.typed_revision


def identify_model(
    model: str | os.PathLike | None, revision: str | None = None, option: str = "--model"
) -> ModelSource:
    """The `ModelSource` of a `load_model` argument. Raises `ModelLoadError` (one line) when the folder is not a
    model folder or the Hub repo or revision cannot be resolved."""
    if model is None:
        return _default_model(revision)
    spec = os.fspath(model)
    if is_demucs_name(model):
        info = DEMUCS_MODELS[spec]
        files = [member.file_name for member in info.members]  # each names its sha256's first digits
        return ModelSource({"kind": "demucs", "name": spec, "files": files}, spec, None, spec, spec, revision)
    if isinstance(model, os.PathLike) or looks_like_path(spec):
        folder = Path(os.path.realpath(Path(spec).expanduser()))
        check_model_folder(folder, option)
        return ModelSource(_folder_identity(folder), str(folder), None, str(folder), spec, revision, str(folder))
    commit = _resolve_hub(spec, revision, option)
    return ModelSource(_hub_identity(spec, commit), spec, commit, f"{spec}@{commit[:12]}", spec, revision)


def loaded_model_source(model: SeparationModel) -> ModelSource:
    """The `ModelSource` of a model in memory (a ready `Separator`'s): digests of its config and of its parameters
    (the names, dtypes, shapes and bytes of every array), whatever it was loaded from."""
    import numpy as np
    from flax.traverse_util import flatten_dict

    config = {
        key: value
        for key, value in model.config.to_dict().items()
        if not key.startswith("_") and key != "transformers_version"  # where it was loaded from, not what it is
    }
    params = hashlib.sha256()
    for path, leaf in sorted(flatten_dict(model.params).items()):
        array = np.ascontiguousarray(np.asarray(leaf))
        params.update(f"{'/'.join(map(str, path))} {array.dtype} {array.shape}\n".encode())
        params.update(array.tobytes())
    identity = {
        "kind": "params",
        "config": hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest(),
        "params": params.hexdigest(),
    }
    name = str(getattr(model, "name_or_path", None) or "<Separator>")
    return ModelSource(identity, None, None, f"the Separator's model ({name})", name)


def describe_change(old: dict[str, Any], new: ModelSource) -> str:
    """What differs between a marker's model identity `old` and `new`, in a few words naming the model."""
    if old.get("kind") == new.identity["kind"] == "folder":
        before, after = old.get("files", {}), new.identity["files"]
        changed = [name for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]
        parts = [f"{name} {_short(before.get(name))} -> {_short(after.get(name))}" for name in changed]
        return f"model {new.label}: other files ({'; '.join(parts)})"
    if old.get("kind") == new.identity["kind"] == "hub" and old.get("repo") == new.identity["repo"]:
        return f"model {new.identity['repo']}: commit {_short(old.get('commit'))} -> {_short(new.identity['commit'])}"
    return f"model {_describe(old)} -> {new.label}"


def _short(digest: object) -> str:
    return str(digest)[:12] if digest else "(none)"


def _describe(identity: dict[str, Any]) -> str:
    kind = identity.get("kind")
    if kind == "hub":
        return f"{identity.get('repo')}@{_short(identity.get('commit'))}"
    if kind == "torchaudio":
        return f"the default model ({identity.get('bundle')}, converted from torchaudio's checkpoint)"
    if kind == "demucs":
        return f"demucs's {identity.get('name')}"
    if kind == "folder":
        files = identity.get("files", {})
        return "a model folder (" + ", ".join(f"{name} {_short(files[name])}" for name in sorted(files)) + ")"
    return f"another model ({kind})"


# ---------------------------------------------------------------------------------------------------------
# Local folders


def _model_files(folder: Path) -> list[str]:
    return sorted(
        entry.name
        for entry in os.scandir(folder)
        if entry.is_file()
        and not entry.name.startswith(".")  # temporaries of a conversion in progress
        and (entry.name in (CONFIG_NAME, BAG_FILE) or entry.name.endswith(WEIGHT_SUFFIXES))
    )


def _folder_identity(folder: Path) -> dict[str, Any]:
    names = _model_files(folder)
    if BAG_FILE in names:  # a bag: its manifest and every member folder's files (which bag.json lists)
        members = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
        names += [f"{member}/{name}" for member in members for name in _model_files(folder / member)]
    return {"kind": "folder", "files": {name: file_sha256(folder / name) for name in names}}


def file_sha256(path: Path) -> str:
    """The sha256 of `path`, from the digest cache when the file is unchanged since it was hashed (same path,
    size, modification and change times, inode and device: a file written anew, even with its old mtime
    restored, gets a new ctime). An unusable cache only costs the hashing."""
    before = path.stat()
    if before.st_size < CACHED_DIGEST_BYTES:
        return sha256_file(path)
    real = os.path.realpath(path)
    stamp = [real, before.st_size, before.st_mtime_ns, before.st_ctime_ns, before.st_ino, before.st_dev]
    entry = cache_dir() / "digests" / f"{hashlib.sha1(real.encode()).hexdigest()}.json"
    try:
        cached = json.loads(entry.read_text())
        if cached["stamp"] == stamp:
            return cached["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    digest = sha256_file(path)
    after = path.stat()
    if [after.st_size, after.st_mtime_ns, after.st_ctime_ns] == stamp[1:4]:  # not written to while being hashed
        _write_cache_entry(entry, {"stamp": stamp, "sha256": digest})
    return digest


def _write_cache_entry(entry: Path, content: dict) -> None:
    temp = tempfiles.new_name(entry, ".partial")
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(tempfiles.create(temp), "w") as out:
            json.dump(content, out)
        tempfiles.finish(temp, entry)
    except OSError:
        temp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------
# The Hugging Face Hub


def _hub_identity(repo: str, commit: str) -> dict[str, Any]:
    return {"kind": "hub", "repo": repo, "commit": commit}


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _resolve_hub(repo: str, revision: str | None, option: str) -> str:
    """The commit `revision` (default: main) of `repo` names now: config.json fetched into the Hugging Face cache
    (or found there when offline or the Hub is unreachable), whose snapshot folder is named by the commit."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = hf_hub_download(repo, CONFIG_NAME, revision=revision)
    except LocalEntryNotFoundError as error:  # offline, or the Hub unreachable, and nothing cached
        if _offline():
            raise ModelLoadError(
                f"model {repo!r} is not in the Hugging Face cache and offline mode (HF_HUB_OFFLINE=1) forbids "
                f"downloading it; run once online or pass a local model folder as {option}"
            ) from None
        raise ModelLoadError(
            f"model {repo!r}: cannot reach {constants.ENDPOINT} and it is not in the Hugging Face cache "
            f"({one_line(error)}); check the network or pass a local model folder as {option}"
        ) from None
    except RepositoryNotFoundError:
        raise ModelLoadError(
            f"model {repo!r}: no such repository on {constants.ENDPOINT} (or it is private and no token grants "
            f"access); check the name or pass a local model folder as {option}"
        ) from None
    except RevisionNotFoundError:
        raise ModelLoadError(f"model {repo!r} has no revision {revision!r}; check --revision") from None
    except EntryNotFoundError:
        raise ModelLoadError(f"model {repo!r} has no config.json: it is not a model repository") from None
    except HFValidationError:
        raise ModelLoadError(
            f"{repo!r} is neither a model folder nor a Hub repo id ('name' or 'namespace/name')"
        ) from None
    except Exception as error:  # an HTTP error of the Hub, a broken cache: still one line
        raise ModelLoadError(f"cannot resolve model {repo!r}: {type(error).__name__}: {one_line(error)}") from None
    return Path(path).parent.name


def _cached_commit(repo: str, revision: str | None, names: tuple[str, ...]) -> str | None:
    """The commit of `repo` at `revision` whose `names` are all in the Hugging Face cache, or None."""
    from huggingface_hub import try_to_load_from_cache

    paths = [try_to_load_from_cache(repo, name, revision=revision) for name in names]
    if not all(isinstance(p, str) for p in paths):
        return None
    commits = {Path(str(p)).parent.name for p in paths}
    return commits.pop() if len(commits) == 1 else None


# ---------------------------------------------------------------------------------------------------------
# The default model


def _default_model(revision: str | None) -> ModelSource:
    """What `load_default_model` will load, step by step in its own order: the chain's conversion of torchaudio's
    file (cached, or to be made from the file here or downloaded), or the Hub copy (cached, or resolved now)."""
    bundle = DEFAULT_BUNDLE
    assert bundle.hub_repo and bundle.sha256, "the default bundle has a Hub copy and a published digest"
    converted = ModelSource(
        {"kind": "torchaudio", "bundle": bundle.name, "sha256": bundle.sha256},
        None,
        revision,
        f"the default model ({bundle.name}, converted from torchaudio's checkpoint)",
        None,
        revision,
    )
    if (converted_model_dir(bundle) / CONFIG_NAME).is_file():
        return converted
    commit = _cached_commit(bundle.hub_repo, revision, (CONFIG_NAME, "model.safetensors"))
    if commit is None and not torchaudio_checkpoint_path(bundle).is_file() and not _offline():
        try:
            commit = _resolve_hub(bundle.hub_repo, revision, "--model")
        except ModelLoadError:  # the chain falls back to torchaudio's file too
            commit = None
    if commit is None:
        return converted
    label = f"the default model ({bundle.hub_repo}@{commit[:12]})"
    return ModelSource(_hub_identity(bundle.hub_repo, commit), None, commit, label, None, revision)
