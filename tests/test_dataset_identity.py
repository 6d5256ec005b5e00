"""Which model a dataset job's completion markers certify (`model_identity`), through `separate-dataset`: a folder by
the digests of its files however its path is typed, a Hub repo by the commit its revision resolved to (against
the local Hub server), the default model by what its chain loads; markers written before identities existed;
the digest cache that spares hashing a large weights file on every run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from modeling_hdemucs_flax.apps.cli import main
from modeling_hdemucs_flax.zoo.pretrained import DEFAULT_BUNDLE, DEFAULT_MODEL

from .audio_files import write_song
from .conftest import SEGMENT_SECONDS
from .dataset_helpers import usage_message
from .flows import flow_env, run_script
from .hub_server import HubServer

MARKERS = Path("_hdemucs") / "markers"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def markers(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / MARKERS).rglob("*.json"))]


def new_weights(folder: Path) -> bytes:
    """Write other weights into `folder`'s model.safetensors (one tensor changed), as a new conversion would."""
    tensors = load_file(folder / "model.safetensors")
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + np.float32(0.001)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "flax"})
    return (folder / "model.safetensors").read_bytes()


def as_earlier_version(out: Path, model: str | None, revision: str | None = None) -> None:
    """Rewrite `out`'s markers as hdemucs-flax wrote them before model identities: the model and revision as
    typed, the segment as given (None for the default), the hash over those options (that version's formula)."""
    for path in sorted((out / MARKERS).rglob("*.json")):
        marker = json.loads(path.read_text())
        options = {k: v for k, v in marker["options"].items() if k != "model"}
        options.update(model=model, revision=revision)
        if options["separation"]["segment"] == 7.8:
            options["separation"] = {**options["separation"], "segment": None}
        digest = hashlib.sha256(json.dumps(options, sort_keys=True).encode()).hexdigest()[:16]
        marker.update(options=options, options_hash=digest)
        kind = path.name.rsplit(".", 2)[-2]
        path.unlink()
        (out / MARKERS / f"{marker['key']}.{digest}.{kind}.json").write_text(json.dumps(marker))


def test_a_folder_is_one_model_however_it_is_typed_and_new_weights_are_another(
    tiny_checkpoint_dir, jax_cache, tmp_path, monkeypatch, capsys
):
    """The same model folder as an absolute path, a relative path and a relative path from another directory: the
    later runs skip the finished input. New weights converted into the folder: a usage error naming the model
    and the file that changed (the stems would otherwise pass for the new model's)."""
    folder = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_checkpoint_dir, folder)
    write_song(tmp_path / "songs" / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    out = tmp_path / "out"

    def run(model: str) -> int:
        argv = ["separate-dataset", str(tmp_path / "songs"), "-o", str(out), "--model", model, "-q"]
        return main([*argv, "--segment", str(SEGMENT_SECONDS), "--compilation-cache", str(jax_cache)])

    assert run(str(folder)) == 0
    assert capsys.readouterr().out.startswith(f"{out}: 1 separated, 0 skipped, 0 failed;")
    (marker,) = markers(out)
    files = {name: sha256(folder / name) for name in ("config.json", "model.safetensors")}
    assert marker["options"]["model"] == {"kind": "folder", "files": files}
    assert marker["model"] == os.path.realpath(folder)  # the folder workers load, however it was typed
    for cwd, typed in ((tmp_path / "models", "tiny"), (tmp_path / "songs", "../models/tiny")):
        monkeypatch.chdir(cwd)
        assert run(typed) == 0, typed
        assert capsys.readouterr().out.startswith(f"{out}: 0 separated, 1 skipped, 0 failed;"), typed

    before = sha256(folder / "model.safetensors")
    after = hashlib.sha256(new_weights(folder)).hexdigest()
    assert run("../models/tiny") == 2
    assert usage_message(capsys.readouterr().err) == (
        f"1 input(s) were separated into {out} with other options (e.g. song: model {os.path.realpath(folder)}: "
        "other files "
        f"(model.safetensors {before[:12]} -> {after[:12]})); pass --overwrite to separate them again with these "
        "options, or choose another output"
    )


def test_markers_of_the_previous_version_are_recognised(tiny_checkpoint_dir, jax_cache, tmp_path, monkeypatch, capsys):
    """Markers hdemucs-flax wrote before model identities hashed the model as typed. Those whose typed value names
    this folder (resolved from the current directory) count as this run's: skipped, not redone. A relative path
    typed in another directory cannot be resolved: a usage error saying what the marker recorded."""
    folder = tmp_path / "models" / "tiny"
    shutil.copytree(tiny_checkpoint_dir, folder)
    write_song(tmp_path / "songs" / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    out = tmp_path / "out"
    flags = ["--segment", str(SEGMENT_SECONDS), "--compilation-cache", str(jax_cache), "-q"]
    argv = ["separate-dataset", str(tmp_path / "songs"), "-o", str(out), *flags, "--model"]
    assert main([*argv, str(folder)]) == 0
    as_earlier_version(out, "tiny")  # typed in tmp_path/models
    capsys.readouterr()

    monkeypatch.chdir(tmp_path / "models")
    assert main([*argv, str(folder)]) == 0
    assert capsys.readouterr().out.startswith(f"{out}: 0 separated, 1 skipped, 0 failed;")
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "models/tiny"]) == 2
    assert usage_message(capsys.readouterr().err).startswith(
        f"1 input(s) were separated into {out} with other options (e.g. song: model 'tiny' (as an earlier "
        f"version recorded it, typed) -> {os.path.realpath(folder)}); pass --overwrite"
    )


def test_the_default_model_is_identified_and_the_segment_used_recorded(
    tiny_checkpoint_dir, jax_cache, tmp_path, monkeypatch, capsys
):
    """Without --model, markers and summary.json name what the default chain loads (here its own conversion of
    torchaudio's checkpoint, cached) and the segment used (7.8 s when not given), not None; the rerun skips, and so
    does a rerun over markers an earlier version wrote for the default model."""
    monkeypatch.setenv("HDEMUCS_FLAX_CACHE", str(tmp_path / "cache"))
    shutil.copytree(tiny_checkpoint_dir, tmp_path / "cache" / "converted" / "hdemucs_high_musdb_plus")
    write_song(tmp_path / "songs" / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    out = tmp_path / "out"
    argv = ["separate-dataset", str(tmp_path / "songs"), "-o", str(out), "--compilation-cache", str(jax_cache), "-q"]
    assert main(argv) == 0
    identity = {"kind": "torchaudio", "bundle": "HDEMUCS_HIGH_MUSDB_PLUS", "sha256": DEFAULT_BUNDLE.sha256}
    (marker,) = markers(out)
    summary = json.loads((out / "summary.json").read_text())
    for options in (marker["options"], summary["options"]):
        assert options["model"] == identity
        assert options["separation"]["segment"] == 7.8
    assert summary["model"] == "the default model (HDEMUCS_HIGH_MUSDB_PLUS, converted from torchaudio's checkpoint)"

    as_earlier_version(out, None)
    capsys.readouterr()
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith(f"{out}: 0 separated, 1 skipped, 0 failed;")


def test_a_hub_model_is_identified_by_its_commit(tiny_checkpoint_dir, jax_cache, tmp_path):
    """A real `separate-dataset` against the local Hub server: markers hold the commit the revision resolved to;
    the rerun skips; after a new commit with other weights the rerun is a usage error naming the repo and both
    commits. The default model, resolved to its Hub copy, is the same model as that repo named with --model."""
    names = ("config.json", "model.safetensors")
    files = {name: (tiny_checkpoint_dir / name).read_bytes() for name in names}
    write_song(tmp_path / "songs" / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    weights = tmp_path / "other"
    shutil.copytree(tiny_checkpoint_dir, weights)
    other = new_weights(weights)

    with HubServer() as hub:
        hub.create("acme/tiny", files=files)
        hub.create(DEFAULT_MODEL, files=files)
        env = flow_env(tmp_path, HF_ENDPOINT=hub.url)

        def run(out: Path, *flags: str):
            argv = ["separate-dataset", str(tmp_path / "songs"), "-o", str(out), "-q", "--compilation-cache"]
            result = run_script("dataset_cli", env, *argv, str(jax_cache), "--segment", str(SEGMENT_SECONDS), *flags)
            return result.returncode, result

        out = tmp_path / "out"
        status, result = run(out, "--model", "acme/tiny")
        assert status == 0, result.stderr[-3000:]
        commit = hub.head("acme/tiny").sha
        (marker,) = markers(out)
        assert marker["options"]["model"] == {"kind": "hub", "repo": "acme/tiny", "commit": commit}
        status, result = run(out, "--model", "acme/tiny")
        assert status == 0 and f"{out}: 0 separated, 1 skipped, 0 failed;" in result.stdout, result.stderr[-3000:]

        upload = [
            {"key": "header", "value": {"summary": "new weights"}},
            {"key": "file", "value": {"path": "model.safetensors", "content": base64.b64encode(other).decode()}},
        ]
        new = hub.commit("acme/tiny", "main", "\n".join(map(json.dumps, upload)).encode()).sha
        status, result = run(out, "--model", "acme/tiny")
        assert status == 2
        assert usage_message(result.stderr) == (
            f"1 input(s) were separated into {out} with other options (e.g. song: model acme/tiny: commit "
            f"{commit[:12]} -> {new[:12]}); pass --overwrite to separate them again with these options, or choose "
            "another output"
        )

        default = tmp_path / "default"
        status, result = run(default)
        assert status == 0, result.stderr[-3000:]
        (marker,) = markers(default)
        assert marker["options"]["model"] == {
            "kind": "hub",
            "repo": DEFAULT_MODEL,
            "commit": hub.head(DEFAULT_MODEL).sha,
        }
        status, result = run(default, "--model", DEFAULT_MODEL)
        assert status == 0 and f"{default}: 0 separated, 1 skipped, 0 failed;" in result.stdout, result.stderr[-3000:]


def test_a_large_weights_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    """A weights file of `CACHED_DIGEST_BYTES` or more is hashed once; its digest comes from the cache while the
    file is unchanged, and is computed again when the file is rewritten, even with its old size and mtime."""
    from modeling_hdemucs_flax.zoo import model_identity
    from modeling_hdemucs_flax.zoo.model_identity import CACHED_DIGEST_BYTES, identify_model

    monkeypatch.setenv("HDEMUCS_FLAX_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    weights = folder / "model.safetensors"
    data = np.random.default_rng(0).bytes(CACHED_DIGEST_BYTES)
    weights.write_bytes(data)
    hashed = []
    original = model_identity.sha256_file
    monkeypatch.setattr(model_identity, "sha256_file", lambda path: hashed.append(Path(path).name) or original(path))

    first = identify_model(str(folder)).identity
    assert first["files"]["model.safetensors"] == hashlib.sha256(data).hexdigest()
    assert identify_model(os.path.relpath(folder)).identity == first
    assert hashed == ["config.json", "model.safetensors", "config.json"]

    stat = weights.stat()
    weights.write_bytes(data[::-1])
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert identify_model(str(folder)).identity["files"]["model.safetensors"] == hashlib.sha256(data[::-1]).hexdigest()
