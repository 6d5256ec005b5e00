"""Hostile and broken model files, crafted in the test without torch.save: the torch-free checkpoint reader checks
every tensor against its storage before touching memory and turns every failure into one `CheckpointError`
line; the converter (`hdemucs-flax convert`) and `load_model` answer with one line; a config.json or
model.safetensors with absurd contents is a one-line `ModelLoadError`; a model whose output is NaN stops the
run with an error naming it instead of writing full-scale DC."""

from __future__ import annotations

import json
import os
import pickle
import time
import zipfile

import numpy as np
import pytest
import torch
import torchaudio

from modeling_hdemucs_flax import CheckpointError, FlaxHDemucs, ModelLoadError, load_model
from modeling_hdemucs_flax.apps.cli import main
from modeling_hdemucs_flax.weights.torch_checkpoint import load_torch_state_dict

from .audio_files import write_song
from .conftest import SEGMENT, SEGMENT_SECONDS, SOURCES
from .flows import REPO_ROOT, run_script
from .hostile_checkpoints import state_dict_pickle, tensor, write_checkpoint, write_copy_amplifier

FLOATS = np.arange(16, dtype=np.float32)


def test_the_crafting_helper_writes_what_torch_reads(tmp_path):
    """The crafted files are real checkpoints: torch.load and the reader agree, views and shared storages too."""
    entries = [tensor("w", "0", (4, 4)), tensor("wt", "0", (4, 4), (1, 4)), tensor("b", "1", (3,), offset=1)]
    path = write_checkpoint(
        tmp_path / "ok.pt", state_dict_pickle(entries), {"0": FLOATS.tobytes(), "1": FLOATS[:4].tobytes()}
    )
    ours = load_torch_state_dict(path)
    theirs = torch.load(path, weights_only=True)
    assert list(ours) == list(theirs) == ["w", "wt", "b"]
    for name in ours:
        np.testing.assert_array_equal(ours[name], theirs[name].numpy())
    np.testing.assert_array_equal(ours["wt"], FLOATS.reshape(4, 4).T)


def test_a_repeated_member_resolves_to_the_first_as_in_torch(tmp_path):
    first, second = FLOATS, -FLOATS
    path = write_checkpoint(
        tmp_path / "dup.pt",
        state_dict_pickle([tensor("w", "0", (16,))]),
        {"0": first.tobytes()},
        extra_members=[("archive/data/0", second.tobytes())],
    )
    theirs = torch.load(path, weights_only=True)["w"].numpy()
    np.testing.assert_array_equal(theirs, first)
    np.testing.assert_array_equal(load_torch_state_dict(path)["w"], theirs)


def nested_key_pickle(levels: int = 60) -> bytes:
    """{k: 0} where k is a tuple nested `levels` deep, each level holding the one below twice (shared through the
    memo): tiny on disk, 2**levels elements when printed."""
    out = [pickle.PROTO + bytes([2]), pickle.EMPTY_DICT, pickle.EMPTY_TUPLE, pickle.BINPUT + bytes([0])]
    for level in range(1, levels):
        out += [pickle.POP, pickle.BINGET + bytes([level - 1]), pickle.BINGET + bytes([level - 1]), pickle.TUPLE2]
        out += [pickle.BINPUT + bytes([level])]
    out += [pickle.BININT1 + bytes([0]), pickle.SETITEM, pickle.STOP]
    return b"".join(out)


def hostile_files(folder):
    """{file name: (path, words the one-line error must contain)}."""
    cases = {}

    def add(name, words, pkl, storages=None, **kwargs):
        cases[name] = (write_checkpoint(folder / name, pkl, storages or {}, **kwargs), words)

    floats = FLOATS.tobytes()
    add(
        "outside.pt",
        "reaches element 65535 of a storage of 16",
        state_dict_pickle([tensor("w", "0", (65536,), numel=16)]),
        {"0": floats},
    )
    add(
        "numel_lie.pt",
        "holds 64 bytes, its tensor declares 262144",
        state_dict_pickle([tensor("w", "0", (65536,))]),
        {"0": floats},
    )
    add(
        "huge_stride.pt",
        "reaches element",
        state_dict_pickle([tensor("w", "0", (2, 2), (2**62, 1), numel=16)]),
        {"0": floats},
    )
    add(
        "negative.pt",
        "negative size, stride or offset",
        state_dict_pickle([tensor("w", "0", (4,), (-1,), offset=3, numel=16)]),
        {"0": floats},
    )
    add(
        "offset.pt",
        "reaches element",
        state_dict_pickle([tensor("w", "0", (4,), offset=2**40, numel=16)]),
        {"0": floats},
    )
    add(
        "stride0.pt",
        "more than its storage's 1",
        state_dict_pickle([tensor("w", "0", (2**28,), (0,), numel=1)]),
        {"0": floats[:4]},
    )
    bomb = np.zeros(16 << 20, np.float32)  # 64 MiB of zeros deflate to about 64 kB
    add(
        "bomb.pt",
        "is too large",
        state_dict_pickle([tensor("w", "0", bomb.shape)]),
        {"0": bomb.tobytes()},
        compress=True,
    )
    add("code.pt", "unsupported object os.system", b"\x80\x02cos\nsystem\n(X\x02\x00\x00\x00lst\x81R.")
    add("nested_key.pt", "a dict key is a tuple, not a string", nested_key_pickle())
    add("a_list.pt", "it holds a list", b"\x80\x02]q\x00.")
    add("garbage_pickle.pt", "not a readable torch checkpoint (malformed pickle data)", b"\x80\x02\xff\xfe garbage")
    add("missing_storage.pt", "member archive/data/7 is missing", state_dict_pickle([tensor("w", "7", (2,))]))
    add("bad_pid.pt", "unsupported persistent id", b"\x80\x02X\x03\x00\x00\x00abcQ.")
    add(
        "bad_size.pt",
        "not a tuple of at most 16 integers",
        state_dict_pickle([tensor("w", "0", (1,) * 17, numel=16)]),
        {"0": floats},
    )
    cases["copies.pt"] = (write_copy_amplifier(folder / "copies.pt"), "its tensors would copy out more than")
    data = (folder / "outside.pt").read_bytes()
    (folder / "cut.pt").write_bytes(data[: len(data) // 2])  # an interrupted download: a zip without its end
    cases["cut.pt"] = (folder / "cut.pt", "truncated or damaged torch checkpoint")
    (folder / "legacy.pt").write_bytes(pickle.dumps({"w": 1}))
    cases["legacy.pt"] = (folder / "legacy.pt", "not a torch checkpoint in zip format")
    crc = bytearray(data)
    crc[data.find(floats) + 3] ^= 0xFF  # a storage byte: the member's CRC no longer matches
    (folder / "crc.pt").write_bytes(bytes(crc))
    cases["crc.pt"] = (folder / "crc.pt", "truncated or damaged torch checkpoint (BadZipFile: Bad CRC-32")
    return cases


def test_hostile_checkpoints_are_one_line_errors(tmp_path):
    for name, (path, words) in hostile_files(tmp_path).items():
        started = time.monotonic()
        with pytest.raises(CheckpointError) as caught:
            load_torch_state_dict(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and words in message and "\n" not in message, (name, message)
        assert time.monotonic() - started < 5, name  # no exponential message, no gigabytes materialised


def test_a_cut_file_is_called_truncated_and_another_file_not_a_checkpoint(tmp_path, capsys):
    """`hdemucs-flax convert` on a checkpoint whose download was cut off says so (and to fetch it again); a file
    that is no zip at all is still "not a torch checkpoint"."""
    whole = write_checkpoint(
        tmp_path / "whole.pt", state_dict_pickle([tensor("w", "0", (16,))]), {"0": FLOATS.tobytes()}
    )
    data = whole.read_bytes()
    for cut in (len(data) - 1, len(data) - 30, len(data) // 2, 100):
        (tmp_path / "cut.pt").write_bytes(data[:cut])
        assert main(["convert", str(tmp_path / "cut.pt"), "-o", str(tmp_path / "out")]) == 1
        err = capsys.readouterr().err
        assert err == (
            f"error: {tmp_path / 'cut.pt'}: truncated or damaged torch checkpoint (a zip archive whose end is missing "
            "or unreadable); download or copy it again\n"
        ), (cut, err)
    (tmp_path / "notes.pt").write_text("my notes, not weights")
    assert main(["convert", str(tmp_path / "notes.pt"), "-o", str(tmp_path / "out")]) == 1
    assert "not a torch checkpoint in zip format" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_torchaudios_full_size_checkpoint_loads_within_the_copy_budget(tmp_path):
    """The real layout (torchaudio's hdemucs_high: 397 tensors of 83.6 M parameters, each its own storage, 335 MB)
    copies each storage exactly once: well inside the budget that refuses copy amplification."""
    state = torchaudio.models.hdemucs_high(SOURCES).state_dict()
    path = tmp_path / "high.pt"
    torch.save(state, path)
    loaded = load_torch_state_dict(path)
    assert list(loaded) == list(state) and len(loaded) == 397
    assert sum(a.size for a in loaded.values()) == 83_639_368
    for key, value in state.items():
        np.testing.assert_array_equal(loaded[key], value.numpy())


def test_the_converter_answers_hostile_files_in_one_line(tmp_path, capsys):
    cases = hostile_files(tmp_path)
    for name in (
        "outside.pt",
        "huge_stride.pt",
        "stride0.pt",
        "bomb.pt",
        "code.pt",
        "cut.pt",
        "copies.pt",
        "legacy.pt",
    ):
        path, words = cases[name]
        assert main(["convert", str(path), "-o", str(tmp_path / f"out_{name}")]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"error: {path}: ") and words in err, err
        assert not (tmp_path / f"out_{name}").exists()


def test_convert_makes_a_model_folder_without_torch(tmp_path, tiny_pair, jax_cache):
    """`hdemucs-flax convert` in a process that never imports torch; the folder is the same model as
    `from_torchaudio`, and `separate --model` uses it."""
    config, reference, model = tiny_pair
    checkpoint = tmp_path / "tiny.pt"
    torch.save(reference.state_dict(), checkpoint)
    config.to_json_file(tmp_path / "config.json")
    env = {k: v for k, v in os.environ.items() if k != "USE_TORCH"} | {"PYTHONPATH": str(REPO_ROOT)}
    out = tmp_path / "converted"
    result = run_script(
        "cli_modules", env, "convert", str(checkpoint), "-o", str(out), "--config", str(tmp_path / "config.json")
    )
    assert "exit status: 0" in result.stdout and "loaded torch: False" in result.stdout, result.stderr[-2000:]
    assert f"-> {out}: " in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    loaded = FlaxHDemucs.from_pretrained(out)
    x = np.random.default_rng(0).uniform(-0.5, 0.5, (1, 2, SEGMENT)).astype(np.float32)  # a compiled shape
    np.testing.assert_array_equal(np.asarray(loaded(x).sources), np.asarray(model(x).sources))
    # an existing, non-empty folder is never replaced
    assert main(["convert", str(checkpoint), "-o", str(out), "--config", str(tmp_path / "config.json")]) == 1
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    argv = [
        "separate",
        str(song),
        "--model",
        str(out),
        "-o",
        str(tmp_path / "stems"),
        "--segment",
        str(SEGMENT_SECONDS),
    ]
    assert main([*argv, "--compilation-cache", str(jax_cache)]) == 0


BAD_CONFIGS = {
    "depth": ({"depth": 1100}, "HDemucsConfig.depth=1100: must be an int in [1, 16]"),
    "growth": ({"growth": 1e300}, "HDemucsConfig.growth=1e+300"),
    "sources": ({"sources": None}, "HDemucsConfig.sources=None: must be a list"),
    "rate": ({"sampling_rate": 10**12}, "HDemucsConfig.sampling_rate=1000000000000"),
    "emb_scale": ({"emb_scale": float("inf")}, "HDemucsConfig.emb_scale=inf"),
}


def test_bad_model_folders_are_one_line_model_load_errors(tmp_path, tiny_checkpoint_dir):
    good = json.loads((tiny_checkpoint_dir / "config.json").read_text())
    weights = (tiny_checkpoint_dir / "model.safetensors").read_bytes()
    folders = {}
    for name, (change, words) in BAD_CONFIGS.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({**good, **change}))
        (folder / "model.safetensors").write_bytes(weights)
        folders[name] = (folder, words)
    for name, content, words in [
        ("list", b"[1, 2, 3]", "cannot load model"),
        ("not_json", b"{depth: six", "cannot load model"),
    ]:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_bytes(content)
        folders[name] = (folder, words)
    garbage = tmp_path / "garbage_weights"
    garbage.mkdir()
    (garbage / "config.json").write_text(json.dumps(good))
    (garbage / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(3000))
    folders["garbage_weights"] = (garbage, "cannot load model")
    for name, (folder, words) in folders.items():
        with pytest.raises(ModelLoadError) as caught:
            load_model(folder)
        message = str(caught.value)
        assert words in message and "\n" not in message, (name, message)


def test_a_model_that_outputs_nan_stops_the_run_naming_it(tmp_path, tiny_pair, jax_cache, capsys):
    """NaN weights: an error naming the model, no stem files (not four files of full-scale DC), and the other
    files are not tried (the model would fail them all)."""
    config, _, model = tiny_pair
    import jax

    params = jax.tree.map(lambda a: np.full(a.shape, np.nan, np.float32), model.params)
    folder = tmp_path / "nan_model"
    FlaxHDemucs(config, params=params).save_pretrained(folder, safe_serialization=True)
    songs = [write_song(tmp_path / f"{n}.wav", 0.2, 44100, 2, subtype="PCM_16") for n in ("one", "two")]
    argv = ["separate", *map(str, songs), "--model", str(folder), "-o", str(tmp_path / "out")]
    assert main([*argv, "--segment", str(SEGMENT_SECONDS), "--compilation-cache", str(jax_cache)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"the model {folder} produced NaN or infinite output" in err
    assert not (tmp_path / "out").exists() or not any(p.is_file() for p in (tmp_path / "out").rglob("*"))


def test_the_zip_reader_is_not_fooled_by_member_sizes(tmp_path):
    """A storage whose zip header declares fewer bytes than its tensor needs is refused before reading."""
    path = write_checkpoint(
        tmp_path / "short.pt", state_dict_pickle([tensor("w", "0", (16,))]), {"0": FLOATS[:8].tobytes()}
    )
    with zipfile.ZipFile(path) as archive:
        assert archive.getinfo("archive/data/0").file_size == 32
    with pytest.raises(CheckpointError, match="holds 32 bytes, its tensor declares 64"):
        load_torch_state_dict(path)
