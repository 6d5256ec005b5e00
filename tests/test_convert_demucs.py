"""`hdemucs-flax convert FILE.th -o FOLDER` on demucs's own checkpoints, through the command line.

Real files first: tiny demucs 4.1.0 models (HTDemucs v4, HDemucs v3) with every parameter re-drawn, written as
demucs writes a release (`serialize_model(model, training_args, quantizer=None, half=True)`, then `torch.save`:
float16 weights, a `Fraction` segment, the training configuration beside them), converted by `main(["convert",
...])`, loaded back (`load_family_model`, transformers' `FlaxAutoModel`), compared with what demucs itself builds
from the same file (its `load_model`: the float16-rounded weights) and used by `separate --model`. Then the kind
of file told by content rather than name, and hostile or mismatched `.th` files: each is one `error:` line, exit
status 1, with nothing executed (the canary a payload would create stays absent) and nothing written.
"""

from __future__ import annotations

import collections
import inspect
import json
import os
import subprocess
from fractions import Fraction
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from demucs.hdemucs import HDemucs
from demucs.htdemucs import HTDemucs
from demucs.states import load_model, serialize_model
from flax.traverse_util import flatten_dict
from safetensors.numpy import load_file
from transformers import FlaxAutoModel

from modeling_hdemucs_flax.apps.cli import main
from modeling_hdemucs_flax.models.auto import load_family_model
from modeling_hdemucs_flax.models.hdemucs.convert_demucs import DEMUCS_HDEMUCS_DEFAULTS, HDEMUCS_MMI_KWARGS
from modeling_hdemucs_flax.models.hdemucs.modeling_flax_hdemucs import FlaxHDemucs
from modeling_hdemucs_flax.models.htdemucs.configuration_htdemucs import DEMUCS_ARGUMENTS, HTDemucsConfig
from modeling_hdemucs_flax.models.htdemucs.modeling_flax_htdemucs import FlaxHTDemucs

from .audio_files import write_song
from .conftest import SOURCES
from .demucs_files import tiny_model
from .flows import REPO_ROOT, run_script
from .hostile_checkpoints import Call, package_pickle, pickled, pickled_global, write_checkpoint
from .reference import error_report, music_like, redraw_all_, redraw_htdemucs_

THRESHOLD_DB = -100  # required, as in the other parity tests; measured -134 dB (HTDemucs) and -139 dB (HDemucs)

# A training configuration as `OmegaConf.to_container` returns one (plain values).
TRAINING = {"dset": {"sources": SOURCES, "segment": 11}, "epochs": 360, "optim": {"lr": 3e-4}, "seed": 42}

# htdemucs's structure (nfft 4096, depth 4, dconv_mode 3, a channel up/downsampler around a pre-norm transformer
# with LayerScale) at 8 base channels, one self and one cross transformer layer, and a 1.95 s training segment.
HT_CONFIG = HTDemucsConfig.from_preset("htdemucs", channels=8, bottom_channels=48, t_layers=2, segment=Fraction(39, 20))
# hdemucs_mmi's kwargs at 4 channels on the low structure (nfft 1024, depth 5: the branches merge, an empty time
# layer, BLSTM and LocalState in layers 3 and 4), `segment` 40 s as the release's.
H_KWARGS = {**HDEMUCS_MMI_KWARGS, "channels": 4, "nfft": 1024, "depth": 5, "norm_starts": 2, "dconv_lstm": 3,
            "dconv_attn": 3}  # fmt: skip
PARITY_SAMPLES = 44_100


def demucs_reference(kind: str) -> torch.nn.Module:
    """A re-drawn demucs model, built as demucs's training builds it (HTDemucs with its sources positional, HDemucs
    with them as a keyword: a checkpoint's `args` and `kwargs` hold them so)."""
    torch.manual_seed(0)
    if kind == "htdemucs":
        kwargs = HT_CONFIG.demucs_kwargs()
        return redraw_htdemucs_(HTDemucs(kwargs.pop("sources"), **kwargs).eval(), 1)
    return redraw_all_(HDemucs(**H_KWARGS).eval(), 1)


def write_th(model: torch.nn.Module, path, make_config):
    """`model` saved exactly as demucs saves a release (demucs/states.py): serialize_model with half=True (float16
    state) and no quantizer, then torch.save."""
    torch.save(serialize_model(model, make_config(TRAINING), quantizer=None, half=True), path)
    return path


def convert(path, out, capsys) -> tuple[int, str, str]:
    """`hdemucs-flax convert path -o out`: (exit status, stdout, stderr)."""
    status = main(["convert", str(path), "-o", str(out)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.mark.parametrize("kind", ["htdemucs", "hdemucs"])
def test_a_demucs_release_file_converts_and_separates(tmp_path, make_config, capsys, jax_cache, kind):
    reference = demucs_reference(kind)
    path = write_th(reference, tmp_path / f"tiny-{kind}.th", make_config)
    out = tmp_path / "converted"
    status, stdout, stderr = convert(path, out, capsys)
    assert status == 0, stderr
    klass = f"demucs.{kind}.{type(reference).__name__}"
    assert f"demucs's {klass}) -> {out}: {len(reference.state_dict())} tensors" in stdout
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == kind and config["sources"] == SOURCES
    if kind == "htdemucs":  # the Fraction(39, 20) as a JSON number
        assert type(config["segment"]) is float and config["segment"] == 1.95
    else:
        assert config["segment"] == 40
    weights = load_file(out / "model.safetensors")
    assert weights and {w.dtype for w in weights.values()} == {np.dtype(np.float32)}

    model = load_family_model(out)
    again = FlaxAutoModel.from_pretrained(out)
    cls = FlaxHTDemucs if kind == "htdemucs" else FlaxHDemucs
    assert type(model) is cls and type(again) is cls
    for key, leaf in flatten_dict(again.params).items():
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flatten_dict(model.params)[key]), err_msg=key)

    song = write_song(tmp_path / "song.wav", 0.5, 44100, 2, subtype="PCM_16")
    argv = ["separate", str(song), "--model", str(out), "-o", str(tmp_path / "stems"), "-q", "--batch-size", "1"]
    if kind == "hdemucs":  # its default segment is the release's 40 s; one second keeps the test quick
        argv += ["--segment", str(PARITY_SAMPLES / 44100)]
    assert main([*argv, "--compilation-cache", str(jax_cache)]) == 0
    stems = sorted(p.relative_to(tmp_path / "stems").as_posix() for p in (tmp_path / "stems").rglob("*.wav"))
    assert stems == [f"song/{source}.wav" for source in sorted(SOURCES)]

    # demucs's own loader builds the model from the same file: its float16 weights, widened to float32. The converted
    # model runs as `separate` ran it (parameters placed on the device, one chunk of the same shape: HTDemucs pads
    # every input to its training segment), so the program comes from the persistent compilation cache.
    demucs_loaded = load_model(path).eval()
    x = music_like(PARITY_SAMPLES, seed=7)[None]
    with torch.no_grad():
        want = demucs_loaded(torch.from_numpy(x)).numpy()
    device = jax.devices()[0]
    params, prepared = model.placed_params(device)
    got = np.asarray(model(jax.device_put(x, device), params=params, prepared=prepared).sources)
    _, db = error_report(f"converted {kind} .th vs demucs load_model", got, want, THRESHOLD_DB)
    assert db < THRESHOLD_DB


def test_positional_arguments_bind_in_demucs_order():
    """A checkpoint's `args` are named by position, so the argument lists must be demucs's constructors' own."""
    assert list(inspect.signature(HTDemucs.__init__).parameters)[1:] == DEMUCS_ARGUMENTS
    assert list(inspect.signature(HDemucs.__init__).parameters)[1:] == ["sources", *DEMUCS_HDEMUCS_DEFAULTS]


# --- small models for the cases below: converted without running a forward pass ----------------------------------


def package(kind: str, **changes) -> dict:
    """serialize_model's dict for `tiny_model(kind)` (float16 state), with `changes` applied."""
    model = tiny_model(kind)
    args, kwargs = model._init_args_kwargs
    state = {key: value.half() for key, value in model.state_dict().items()}
    klass = type(model)
    return {"klass": klass, "args": args, "kwargs": kwargs, "state": state, "training_args": TRAINING, **changes}


def test_the_kind_of_file_is_told_by_content_not_name(tmp_path, capsys, tiny_pair):
    """A demucs package named .pt converts as one; a torchaudio state dict named .th as a state dict; --config
    belongs to torchaudio files only."""
    torch.save(package("htdemucs"), tmp_path / "package.pt")
    status, stdout, stderr = convert(tmp_path / "package.pt", tmp_path / "a", capsys)
    assert status == 0 and "demucs's demucs.htdemucs.HTDemucs" in stdout, stderr
    assert json.loads((tmp_path / "a" / "config.json").read_text())["model_type"] == "htdemucs"

    config, reference, _ = tiny_pair
    torch.save(reference.state_dict(), tmp_path / "state.th")
    config.to_json_file(tmp_path / "config.json")
    argv = ["convert", str(tmp_path / "state.th"), "-o", str(tmp_path / "b"), "--config", str(tmp_path / "config.json")]
    assert main(argv) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "b" / "config.json").read_text())["model_type"] == "hdemucs"

    argv = [
        "convert",
        str(tmp_path / "package.pt"),
        "-o",
        str(tmp_path / "c"),
        "--config",
        str(tmp_path / "config.json"),
    ]
    assert main(argv) == 1
    assert capsys.readouterr().err == (
        f"error: {tmp_path / 'package.pt'}: a demucs checkpoint carries its architecture; --config is for torchaudio "
        "files\n"
    )
    assert not (tmp_path / "c").exists()


def test_a_th_file_converts_in_a_process_without_torch(tmp_path):
    """The command reads, converts and writes a demucs package with torch installed but never imported."""
    torch.save(package("hdemucs"), tmp_path / "model.th")
    env = {k: v for k, v in os.environ.items() if k != "USE_TORCH"} | {"PYTHONPATH": str(REPO_ROOT)}
    result = run_script("cli_modules", env, "convert", str(tmp_path / "model.th"), "-o", str(tmp_path / "out"))
    assert "exit status: 0" in result.stdout and "loaded torch: False" in result.stdout, result.stderr[-2000:]
    assert type(load_family_model(tmp_path / "out")) is FlaxHDemucs


# --- hostile and mismatched files ------------------------------------------------------------------------------


def hostile_files(folder: Path, canary: Path) -> dict[str, tuple[Path, str]]:
    """{name: (path, words its one error line must hold)}: real small packages with one change each, written by
    torch.save (so torch.load opens them), and a few crafted opcode by opcode."""
    touch = f"touch {canary}"
    ht_state = package("htdemucs")["state"]
    dropped = next(key for key in ht_state if key.endswith("conv_tr.weight"))
    ht_kwargs = package("htdemucs")["kwargs"]
    h_state = package("hdemucs")["state"]
    system = f"{os.system.__module__}.system"
    saved = {
        # the class is os.system, and the kwargs hide a call of it: neither may run
        "klass_system": (
            package("htdemucs", klass=os.system, kwargs={**ht_kwargs, "segment": Call(os.system, touch)}),
            f"the demucs checkpoint refers to {system}, which is not allowed",
        ),
        "kwargs_system": (
            package("htdemucs", kwargs={**ht_kwargs, "channels": Call(os.system, touch)}),
            f"refers to {system}",
        ),
        "kwargs_eval": (
            package("htdemucs", kwargs={**ht_kwargs, "segment": Call(eval, f"open({str(canary)!r}, 'w')")}),
            "refers to builtins.eval, which is not allowed",
        ),
        "kwargs_popen": (
            package("htdemucs", kwargs={**ht_kwargs, "sources": Call(subprocess.Popen, touch.split())}),
            "Popen, which is not allowed",
        ),
        "counter": (package("htdemucs", klass=collections.Counter), "refers to collections.Counter, which is not"),
        "v2_demucs": (
            package("demucs"),
            "the demucs model class demucs.demucs.Demucs, the waveform-only Demucs (v1/v2, still shipped by "
            "demucs 4), has no architecture in hdemucs-flax (only demucs.htdemucs.HTDemucs and demucs.hdemucs.HDemucs",
        ),
        "missing_key": (
            package("htdemucs", state={k: v for k, v in ht_state.items() if k != dropped}),
            f"HTDemucs state dict does not match its config: missing {dropped}",
        ),
        "unexpected_key": (
            package("htdemucs", state={**ht_state, "decoder.9.conv.weight": torch.zeros(2, dtype=torch.half)}),
            "HTDemucs state dict does not match its config: unexpected decoder.9.conv.weight",
        ),
        "wrong_shape": (
            package("hdemucs", state={**h_state, "decoder.0.conv_tr.bias": torch.zeros(3, dtype=torch.half)}),
            "decoder.0.conv_tr.bias",
        ),
        "kwargs_mismatch": (  # the state of a 4-channel model, the kwargs of an 8-channel one
            package("htdemucs", kwargs={**ht_kwargs, "channels": 8}),
            "HTDemucs state dict: encoder.0.conv.weight has shape (4, 4, 8, 1), the config needs (8, 4, 8, 1)",
        ),
        "unknown_argument": (
            package("htdemucs", kwargs={**ht_kwargs, "wdemucs_option": 1}),
            "demucs HTDemucs kwargs: 'wdemucs_option' is not an argument of demucs's HTDemucs (v4)",
        ),
        "sources_twice": (
            package("htdemucs", kwargs={**ht_kwargs, "sources": SOURCES}),
            "demucs.htdemucs.HTDemucs: the checkpoint gives 'sources' both in args and in kwargs",
        ),
    }
    out = {}
    for name, (content, words) in saved.items():
        torch.save(content, folder / f"{name}.th")
        out[name] = (folder / f"{name}.th", words)
    crafted_base = {
        "klass": pickled_global("demucs.htdemucs", "HTDemucs"),
        "args": pickled((SOURCES,)),
        "kwargs": pickled({"channels": 4}),
        "state": pickled({}),
        "training_args": pickled({}),
    }
    crafted = {
        "crafted_system": ({"klass": pickled_global("os", "system")}, "refers to os.system, which is not allowed"),
        "wdemucs": ({"klass": pickled_global("demucs.wdemucs", "WDemucs")}, "refers to demucs.wdemucs.WDemucs"),
    }
    for name, (change, words) in crafted.items():
        path = write_checkpoint(folder / f"{name}.th", package_pickle({**crafted_base, **change}), {})
        out[name] = (path, words)
    return out


def test_hostile_or_mismatched_th_files_are_one_error_line(tmp_path, capsys):
    canary = tmp_path / "canary"
    folder = tmp_path / "files"
    folder.mkdir()
    cases = hostile_files(folder, canary)
    before = sorted(tmp_path.rglob("*"))
    for name, (path, words) in cases.items():
        out = tmp_path / f"out_{name}"
        status, stdout, stderr = convert(path, out, capsys)
        assert status == 1, (name, stderr)
        assert stdout == "" and stderr.count("\n") == 1 and stderr.startswith(f"error: {path}: "), (name, stderr)
        assert words in stderr, (name, stderr)
        assert not out.exists(), name
    assert not canary.exists()
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, not even a staging folder

    # The control: what demucs's load_model calls (torch.load, weights_only=False) runs the same files' payloads.
    for name in ("kwargs_system", "kwargs_eval"):
        torch.load(cases[name][0], weights_only=False)
        assert canary.exists(), name
        canary.unlink()
