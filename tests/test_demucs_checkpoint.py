"""demucs's own checkpoints read as data (`weights/demucs_checkpoint.py`), and the registry of its released models.

Real files first: tiny random demucs 4.1.0 models (HTDemucs, HDemucs, the v2 Demucs) written exactly as demucs
writes them (`serialize_model(model, training_args, half=...)`, then `save_with_checksum`), read back and compared
with the model itself and with what demucs's own `load_model` makes of the same file. Then hostile files, built with
torch.save around payload objects or opcode by opcode (`hostile_checkpoints`): each must be one `CheckpointError`
line naming the problem, with nothing executed (the canary file a payload would create stays absent) and nothing
written. The Hub layout is written as demucs 4.1.0's `tools/export_hf.py` writes it and checked against demucs's
own loader (`demucs.hf.load_safetensors_model`); bag yamls are demucs's own plus hostile ones.

`serialize_model` imports omegaconf, which is no test dependency: where it is missing, a stand-in module whose
`OmegaConf.to_container` returns the plain dict takes its place (conftest's `make_config`). That is what the real one
returns for a config of plain values (checked with omegaconf 2.3.0: the pickle of a real `serialize_model` output
holds no global in its training_args).
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pickle
import subprocess
import sys
import time
from fractions import Fraction
from importlib.metadata import metadata

import numpy as np
import pytest
import torch
from demucs.hdemucs import HDemucs
from demucs.htdemucs import HTDemucs
from demucs.states import load_model, serialize_model

from modeling_hdemucs_flax.errors import CheckpointError, DownloadError, ModelLoadError
from modeling_hdemucs_flax.weights.demucs_checkpoint import (
    BagSpec,
    expected_class,
    is_demucs_package,
    read_bag_yaml,
    read_demucs_hub_model,
    read_demucs_package,
    read_demucs_safetensors,
)
from modeling_hdemucs_flax.zoo.demucs_registry import (
    DEMUCS_MODELS,
    FOUR_SOURCES,
    ROOT_URL,
    check_sha_prefix,
    demucs_model,
    split_checkpoint_name,
)

from .conftest import SOURCES
from .demucs_files import TRAINING, tiny_model, write_package
from .flows import REPO_ROOT
from .hostile_checkpoints import (
    Call,
    deep_lists,
    package_pickle,
    pickled,
    pickled_call,
    pickled_dict,
    pickled_global,
    shared_lists,
    write_checkpoint,
)


def assert_same_state(package_state: dict, state: dict, half: bool, ordered: bool = True) -> None:
    """Same names (in the same order, except from safetensors, which sorts them) and the same values."""
    assert list(package_state) == list(state) if ordered else sorted(package_state) == sorted(state)
    for key, value in state.items():
        want = (value.half() if half else value).float().numpy()
        assert package_state[key].dtype == np.float32, key
        np.testing.assert_array_equal(package_state[key], want, err_msg=key)


@pytest.mark.parametrize("kind, half", [("htdemucs", True), ("hdemucs", True), ("hdemucs", False)])
def test_a_package_written_by_demucs_reads_as_data(tmp_path, make_config, kind, half):
    model = tiny_model(kind)
    path = write_package(model, tmp_path / "out", make_config, half=half)
    package = read_demucs_package(path)

    assert package.klass == f"demucs.{kind}.{type(model).__name__}"
    args, kwargs = model._init_args_kwargs
    assert package.args == tuple(args) and package.kwargs == kwargs
    if kind == "htdemucs":
        assert type(package.kwargs["segment"]) is Fraction and package.kwargs["segment"] == Fraction(39, 5)
    assert package.sources == tuple(SOURCES) and expected_class(package) == kind
    assert_same_state(package.state, model.state_dict(), half)
    assert package.training_args == TRAINING

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert package.sha256 == digest
    signature, prefix = split_checkpoint_name(path.name)
    assert (signature, prefix) == ("model", digest[:8])
    assert check_sha_prefix(path, prefix) == digest

    reference = load_model(path)  # demucs's own loader builds the same model from the same file
    assert_same_state(package.state, reference.state_dict(), half=False)


def test_the_v2_demucs_class_reads_but_does_not_convert(tmp_path, make_config):
    package = read_demucs_package(write_package(tiny_model("demucs"), tmp_path, make_config))
    assert package.klass == "demucs.demucs.Demucs" and package.kwargs == {"channels": 4, "depth": 2, "lstm_layers": 0}
    with pytest.raises(CheckpointError) as caught:
        expected_class(package)
    assert str(caught.value) == (
        "the demucs model class demucs.demucs.Demucs, the waveform-only Demucs (v1/v2, still shipped by demucs 4), "
        "has no architecture in hdemucs-flax (only demucs.htdemucs.HTDemucs and demucs.hdemucs.HDemucs convert)"
    )


def test_a_package_is_told_from_a_state_dict_by_its_content(tmp_path, make_config):
    """`is_demucs_package` follows the pickle's opcodes to its top-level object: a plain dict holding one of
    serialize_model's keys, in any pickle protocol (keys written once and fetched from the memo included), is a
    package whatever the file's name; a state dict (an OrderedDict, or a plain dict of parameter names), anything
    else and anything unreadable is not."""
    model = tiny_model("hdemucs")
    torch.save(serialize_model(model, make_config(TRAINING)), tmp_path / "package.pt")
    torch.save(model.state_dict(), tmp_path / "state.th")
    torch.save(dict(model.state_dict()), tmp_path / "plain_state.th")
    torch.save({"klass": os.system}, tmp_path / "klass_only.th")  # refused later by the package reader
    assert is_demucs_package(tmp_path / "package.pt") and is_demucs_package(tmp_path / "klass_only.th")
    assert not is_demucs_package(tmp_path / "state.th") and not is_demucs_package(tmp_path / "plain_state.th")
    # {"x": "state", "state": {}}, its key "state" fetched from the memo, where its value put it
    memo = pickle.PROTO + b"\x02" + pickle.EMPTY_DICT + pickle.MARK + pickled("x") + pickled("state")
    memo += pickle.BINGET + b"\x00" + pickled({}) + pickle.SETITEMS + pickle.STOP
    assert pickle.loads(memo) == {"x": "state", "state": {}}
    assert is_demucs_package(write_checkpoint(tmp_path / "memo.th", memo, {}))
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for value, expected in (({"x": 1, "state": {}}, True), ({"x": {"klass": 1}}, False), ([{"klass": 1}], False)):
            path = write_checkpoint(tmp_path / f"p{protocol}.th", pickle.dumps(value, protocol=protocol), {})
            assert is_demucs_package(path) is expected, (protocol, value)
    for name, data in (("garbage", b"\x80\x02\xff\xfe"), ("truncated", pickle.dumps({"klass": 1})[:-1])):
        assert not is_demucs_package(write_checkpoint(tmp_path / f"{name}.th", data, {}))
    (tmp_path / "notes.th").write_text("not a zip")
    assert not is_demucs_package(tmp_path / "notes.th") and not is_demucs_package(tmp_path / "missing.th")


def test_the_reader_runs_without_torch(tmp_path, make_config):
    path = write_package(tiny_model("htdemucs"), tmp_path, make_config)
    code = (
        "import sys\n"
        "from modeling_hdemucs_flax.weights.demucs_checkpoint import read_demucs_package\n"
        "package = read_demucs_package(sys.argv[1])\n"
        "print(package.klass, package.kwargs['segment'], len(package.state), 'torch' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    tensors = len(tiny_model("htdemucs").state_dict())
    assert result.stdout.split() == ["demucs.htdemucs.HTDemucs", "39/5", str(tensors), "False"]


def test_odd_or_missing_training_args_are_dropped(tmp_path):
    """Also a state saved as `model.state_dict()` (an OrderedDict with `_metadata`, which pickles through BUILD)."""
    model = tiny_model("hdemucs")
    args, kwargs = model._init_args_kwargs
    base = {"klass": HDemucs, "args": args, "kwargs": kwargs, "state": model.state_dict()}
    torch.save({**base, "training_args": {"lr": 0.1, "mean": torch.zeros(2)}}, tmp_path / "tensor.th")
    torch.save(base, tmp_path / "none.th")
    assert read_demucs_package(tmp_path / "tensor.th").training_args is None
    package = read_demucs_package(tmp_path / "none.th")
    assert package.training_args is None
    assert_same_state(package.state, model.state_dict(), half=False)


# --- hostile .th files -----------------------------------------------------------------------------------------


def hostile_saved(folder, canary):
    """{name: (path, words)}: a real tiny package with a payload put in one place, written by torch.save."""
    model = tiny_model("htdemucs")
    args, kwargs = model._init_args_kwargs
    base = {"klass": HTDemucs, "args": args, "kwargs": kwargs, "state": model.state_dict(), "training_args": {}}
    touch = f"touch {canary}"
    cases = {
        "klass_system": ({"klass": os.system}, f"refers to {os.system.__module__}.system, which is not allowed"),
        "kwargs_eval": ({"kwargs": {**kwargs, "segment": Call(eval, f"open({str(canary)!r}, 'w')")}}, "builtins.eval"),
        "kwargs_popen": ({"kwargs": {**kwargs, "sources": Call(subprocess.Popen, touch.split())}}, "subprocess.Popen"),
        "state_system": ({"state": {"w": Call(os.system, touch)}}, f"refers to {os.system.__module__}.system"),
        "training_exec": ({"training_args": {"x": Call(exec, f"open({str(canary)!r}, 'w')")}}, "builtins.exec"),
        "other_class": ({"klass": collections.Counter}, "refers to collections.Counter, which is not allowed"),
    }
    out = {}
    for name, (change, words) in cases.items():
        torch.save({**base, **change}, folder / f"{name}.th")
        out[name] = (folder / f"{name}.th", words)
    return out


def hostile_crafted(folder):
    """{name: (path, words)}: packages written opcode by opcode, each with one lie or trick."""
    base = {
        "klass": pickled_global("demucs.htdemucs", "HTDemucs"),
        "args": pickled((SOURCES,)),
        "kwargs": pickled({"channels": 4}),
        "state": pickled({}),
        "training_args": pickled({}),
    }
    fraction = "a fractions.Fraction in the demucs checkpoint is built from"
    cases = {
        "os_system": ({"klass": pickled_global("os", "system")}, "refers to os.system, which is not allowed: only"),
        "wdemucs": ({"klass": pickled_global("demucs.wdemucs", "WDemucs")}, "refers to demucs.wdemucs.WDemucs"),
        "foo_bar": ({"klass": pickled_global("foo", "Bar")}, "refers to foo.Bar, which is not allowed"),
        "fraction_exponent": (
            {"kwargs": pickled_dict_of(segment=pickled_call("fractions", "Fraction", pickled("1e999999999")))},
            f"{fraction} ('1e999999999')",
        ),
        "fraction_list": (
            {"kwargs": pickled_dict_of(segment=pickled_call("fractions", "Fraction", pickled([39, 5])))},
            f"{fraction} (list)",
        ),
        "fraction_huge": (
            {"kwargs": pickled_dict_of(segment=pickled_call("fractions", "Fraction", pickled(2**200), pickled(1)))},
            f"{fraction} (int, int)",
        ),
        "fraction_zero": (
            {"kwargs": pickled_dict_of(segment=pickled_call("fractions", "Fraction", pickled(1), pickled(0)))},
            "has a zero denominator",
        ),
        "calls_the_class": (
            {"kwargs": pickled_dict_of(model=pickled_call("demucs.htdemucs", "HTDemucs", pickled(SOURCES)))},
            "calls demucs.htdemucs.HTDemucs while it is read, which is not allowed",
        ),
        "newobj": (
            {"klass": pickled_global("demucs.htdemucs", "HTDemucs") + b")\x81"},  # EMPTY_TUPLE, NEWOBJ
            "builds an object from a class (NEWOBJ)",
        ),
        "build": ({"kwargs": pickled({}) + pickled({"a": 1}) + b"b"}, "sets the state of a dict (BUILD), which is"),
        "ordered_dict_pairs": (
            {"kwargs": pickled_call("collections", "OrderedDict", pickled([("a", 1)]))},
            "an OrderedDict in the demucs checkpoint is built from arguments",
        ),
        "shared_lists": ({"kwargs": pickled_dict_of(sources=shared_lists())}, "kwargs holds more than 100000 values"),
        "deep_lists": ({"args": deep_lists()}, "args is nested too deeply"),
        "klass_text": ({"klass": pickled("foo.Bar")}, "klass names foo.Bar, which is not allowed"),
        "klass_number": ({"klass": pickled(3)}, "klass is of type int, not a demucs model class"),
        "quantized": ({"state": pickled({"__quantized": True})}, "state is diffq-quantized"),
        "state_value": ({"state": pickled({"w": 1.0})}, "state entry 'w' is a float, not a tensor"),
    }
    out = {}
    for name, (change, words) in cases.items():
        items = {**base, **change}
        out[name] = (write_checkpoint(folder / f"{name}.th", package_pickle(items), {}), words)
    no_state = {k: v for k, v in base.items() if k != "state"}
    out["no_state"] = (write_checkpoint(folder / "no_state.th", package_pickle(no_state), {}), "lacks state")
    a_list = pickled([1, 2])
    out["a_list"] = (write_checkpoint(folder / "a_list.th", b"\x80\x02" + a_list + b".", {}), "it holds a list")
    return out


def pickled_dict_of(**items: bytes) -> bytes:
    return pickled_dict(items)


def test_hostile_packages_are_one_line_errors_and_run_nothing(tmp_path):
    canary = tmp_path / "canary"
    folder = tmp_path / "files"
    folder.mkdir()
    cases = {**hostile_saved(folder, canary), **hostile_crafted(folder)}
    before = sorted(tmp_path.rglob("*"))
    for name, (path, words) in cases.items():
        started = time.monotonic()
        with pytest.raises(CheckpointError) as caught:
            read_demucs_package(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and words in message and "\n" not in message, (name, message)
        assert time.monotonic() - started < 5, name
    assert not canary.exists()
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_the_payloads_are_live(tmp_path):
    """The control: torch.load (what demucs's load_model calls) runs the payload of the same kind of file."""
    canary = tmp_path / "canary"
    path = hostile_saved(tmp_path, canary)["kwargs_eval"][0]
    torch.load(path, weights_only=False)
    assert canary.exists()


# --- demucs 4.1.0's Hub layout -----------------------------------------------------------------------------------


def _json_default(value):
    if isinstance(value, Fraction):
        return {"_type": "fraction", "numerator": value.numerator, "denominator": value.denominator}
    return str(value)


def write_hub_member(model, folder, signature: str, **metadata_changes) -> None:
    """`<signature>.safetensors` + `<signature>.json` as tools/export_hf.py writes them from a half package."""
    from safetensors.torch import save_file

    args, kwargs = model._init_args_kwargs
    klass = type(model)
    metadata = {
        "klass": f"{klass.__module__}.{klass.__qualname__}",
        "args": json.dumps(args, default=_json_default),
        "kwargs": json.dumps(kwargs, default=_json_default),
        **metadata_changes,
    }
    metadata = {k: v for k, v in metadata.items() if v is not None}
    state = {key: value.half().contiguous() for key, value in model.state_dict().items()}
    save_file(state, folder / f"{signature}.safetensors", metadata=metadata)
    (folder / f"{signature}.json").write_text(json.dumps({**metadata, "training_args": TRAINING}))


def write_hub_folder(folder, models, name="tiny_ft", weights=None, **metadata_changes):
    folder.mkdir(exist_ok=True)
    signatures = [f"a1b2c3d{i}" for i in range(len(models))]
    for signature, model in zip(signatures, models, strict=True):
        write_hub_member(model, folder, signature, **metadata_changes)
    text = f"models: {signatures}\n" + (f"weights: {weights}\n" if weights else "")
    (folder / f"{name}.yaml").write_text(text)
    return signatures


def test_the_hub_layout_reads_as_data(tmp_path):
    from demucs.hf import load_safetensors_model

    models = [tiny_model("htdemucs", seed=1), tiny_model("htdemucs", seed=2)]
    weights = [[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
    signatures = write_hub_folder(tmp_path, models, weights=weights)
    hub = read_demucs_hub_model(tmp_path)
    assert hub.name == "tiny_ft"
    assert hub.bag == BagSpec(models=tuple(signatures), weights=tuple(map(tuple, weights)), segment=None)
    for signature, model, member in zip(signatures, models, hub.members, strict=True):
        args, kwargs = model._init_args_kwargs
        assert member.klass == "demucs.htdemucs.HTDemucs" and expected_class(member) == "htdemucs"
        assert member.args == tuple(args) and member.kwargs == kwargs and type(member.kwargs["segment"]) is Fraction
        assert member.training_args == TRAINING
        assert member.sha256 == hashlib.sha256((tmp_path / f"{signature}.safetensors").read_bytes()).hexdigest()
        assert_same_state(member.state, model.state_dict(), half=True, ordered=False)
        reference = load_safetensors_model(tmp_path / f"{signature}.safetensors")  # demucs reads the same files
        assert_same_state(member.state, reference.state_dict(), half=False, ordered=False)


def test_hostile_hub_files_are_refused_by_name_and_import_nothing(tmp_path, monkeypatch):
    """A class name in the metadata is checked, never imported: a module that would create the canary when imported
    stays unimported (demucs's own loader imports it: the control at the end)."""
    canary = tmp_path / "canary"
    modules = tmp_path / "modules"
    modules.mkdir()
    (modules / "evil_module.py").write_text(f"open({str(canary)!r}, 'w').close()\nModel = None\n")
    monkeypatch.syspath_prepend(str(modules))
    monkeypatch.delitem(sys.modules, "evil_module", raising=False)
    model = tiny_model("htdemucs")
    bad_fraction = json.dumps({"segment": {"_type": "fraction", "numerator": "1e999999", "denominator": 1}})
    cases = {
        "system": ({"klass": "os.system"}, "klass names os.system, which is not allowed: only the demucs model"),
        "evil": ({"klass": "evil_module.Model"}, "klass names evil_module.Model, which is not allowed"),
        "wdemucs": ({"klass": "demucs.wdemucs.WDemucs"}, "klass names demucs.wdemucs.WDemucs"),
        "quantized": ({"structure": "{}"}, "is diffq-quantized"),
        "fraction": ({"kwargs": bad_fraction}, "is built from ('1e999999', int)"),
        "no_metadata": ({"klass": None, "args": None}, "its metadata lacks klass, args (demucs writes"),
        "kwargs_list": ({"kwargs": "[1, 2]"}, "kwargs is a list, not a dict"),
    }
    for name, (change, words) in cases.items():
        folder = tmp_path / name
        write_hub_folder(folder, [model], **change)
        before = sorted(tmp_path.rglob("*"))
        with pytest.raises(CheckpointError) as caught:
            read_demucs_hub_model(folder)
        message = str(caught.value)
        assert message.startswith(f"{folder / 'a1b2c3d0.safetensors'}: ") and words in message, (name, message)
        assert "\n" not in message and sorted(tmp_path.rglob("*")) == before
    assert not canary.exists() and "evil_module" not in sys.modules

    (tmp_path / "garbage.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match=r"garbage.safetensors: not a readable demucs safetensors file \("):
        read_demucs_safetensors(tmp_path / "garbage.safetensors")

    folder = tmp_path / "missing"
    write_hub_folder(folder, [model])
    (folder / "a1b2c3d0.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"the bag tiny_ft.yaml lists a1b2c3d0, but a1b2c3d0.safetensors is "):
        read_demucs_hub_model(folder)
    folder = tmp_path / "mismatch"
    write_hub_folder(folder, [model], weights=[[1.0, 1.0, 1.0]])
    with pytest.raises(CheckpointError, match="tiny_ft.yaml has 3 weights per model, its models 4 sources"):
        read_demucs_hub_model(folder)
    (folder / "other.yaml").write_text("models: [a1b2c3d0]\n")
    with pytest.raises(CheckpointError, match="expected one bag yaml .* found 2"):
        read_demucs_hub_model(folder)

    from demucs.hf import load_safetensors_model

    try:
        with pytest.raises(TypeError):  # its Model is None; the import has run by then
            load_safetensors_model(tmp_path / "evil" / "a1b2c3d0.safetensors")
        assert canary.exists()
    finally:
        sys.modules.pop("evil_module", None)


# --- bag yamls -------------------------------------------------------------------------------------------------


def test_demucs_own_bag_yamls_read():
    import yaml
    from demucs.pretrained import REMOTE_ROOT

    yamls = sorted(REMOTE_ROOT.glob("*.yaml"))
    assert len(yamls) >= 11
    for path in yamls:
        raw = yaml.safe_load(path.read_text())
        bag = read_bag_yaml(path)
        assert bag.models == tuple(raw["models"]), path
        assert bag.weights == (tuple(map(tuple, raw["weights"])) if "weights" in raw else None), path
        assert bag.segment == raw.get("segment"), path


BAD_YAMLS = {
    "object": ("models: !!python/object/apply:os.system ['touch {canary}']\n", "python/object/apply:os.system"),
    "name": ("models: [a]\nsegment: !!python/name:os.system\n", "tag:yaml.org,2002:python/name:os.system"),
    "path": ("models: ['../../etc/passwd']\n", "'models' holds '../../etc/passwd', not a signature"),
    "no_models": ("weights: [[1]]\n", "'models' is not a list of 1 to 64 signatures"),
    "rows": ("models: [a, b]\nweights: [[1, 0]]\n", "'weights' is not a list of 2 rows, one per model"),
    "ragged": ("models: [a, b]\nweights: [[1, 0], [1]]\n", "the rows of 'weights' differ in length"),
    "nan": ("models: [a]\nweights: [[.nan]]\n", "'weights' holds a value that is not a finite number"),
    "bool": ("models: [a]\nweights: [[true]]\n", "not a finite number"),
    "segment": ("models: [a]\nsegment: -1\n", "'segment' is -1, not a positive number of seconds"),
    "unknown": ("models: [a]\nklass: os.system\n", "unknown key 'klass' in a demucs bag yaml"),
    "a_list": ("- a\n- b\n", "this holds a list"),
    "broken": ("models: [a\n", "not a demucs bag yaml: expected ',' or ']'"),
    "large": ("models: [a]\n" + "#" * (1 << 20), "bytes; this reader stops at 1048576"),
}


def test_bad_and_hostile_bag_yamls_are_one_line_errors(tmp_path):
    canary = tmp_path / "canary"
    for name, (text, words) in BAD_YAMLS.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text.format(canary=canary))
        with pytest.raises(CheckpointError) as caught:
            read_bag_yaml(path)
        message = str(caught.value)
        assert message.startswith(f"{path}: ") and words in message and "\n" not in message, (name, message)
    assert not canary.exists()


# --- the registry ----------------------------------------------------------------------------------------------


def test_the_registry_matches_demucs_4_1_0():
    import demucs.pretrained
    from demucs.hf import DEFAULT_NAMESPACE, hf_repo_name

    urls = demucs.pretrained._parse_remote_files(demucs.pretrained.REMOTE_ROOT / "files.txt")
    assert ROOT_URL == demucs.pretrained.ROOT_URL and FOUR_SOURCES == tuple(demucs.pretrained.SOURCES)
    assert list(DEMUCS_MODELS) == ["htdemucs", "htdemucs_ft", "htdemucs_6s", "hdemucs_mmi"]
    for name, info in DEMUCS_MODELS.items():
        bag = read_bag_yaml(demucs.pretrained.REMOTE_ROOT / f"{name}.yaml")
        assert bag == BagSpec(tuple(m.signature for m in info.members), info.weights, info.segment), name
        for member in info.members:
            assert urls[member.signature] == member.url, name
            assert split_checkpoint_name(member.file_name) == (member.signature, member.sha256_prefix)
        assert info.hub_repo == f"{DEFAULT_NAMESPACE}/{hf_repo_name(name)}"
        assert info.weights is None or all(len(row) == len(info.sources) for row in info.weights)
        assert info.licence == "MIT" and (info.sdr_db is None) == info.sdr_source.startswith("not stated")
    assert metadata("demucs")["License"] == "MIT License"
    assert [m.url for m in demucs_model("htdemucs").members] == [
        "https://dl.fbaipublicfiles.com/demucs/hybrid_transformer/955717e8-8726e21a.th"
    ]
    assert demucs_model("htdemucs_ft").sdr_db == 9.0 and demucs_model("hdemucs_mmi").architecture == "hdemucs"
    with pytest.raises(ModelLoadError, match="unknown demucs model 'mdx'; choose one of htdemucs, htdemucs_ft"):
        demucs_model("mdx")


def test_check_sha_prefix(tmp_path):
    path = tmp_path / "x.th"
    path.write_bytes(b"demucs")
    digest = hashlib.sha256(b"demucs").hexdigest()
    assert check_sha_prefix(path, digest[:8].upper()) == digest == check_sha_prefix(path, digest)
    wrong = format(int(digest[:8], 16) ^ 1, "08x")
    with pytest.raises(DownloadError) as caught:
        check_sha_prefix(path, wrong)
    assert str(caught.value) == (
        f"{path}: sha256 {digest[:8]}... does not start with {wrong}, the prefix its name promises; the file is "
        "damaged or not the published one"
    )
    for prefix in ("", "abc", "xyz12345", digest + "0"):
        with pytest.raises(ValueError, match="not 8 to 64 hexadecimal digits"):
            check_sha_prefix(path, prefix)
    for name in ("955717e8.th", "955717e8-8726e21a.pt", "../x-8726e21a.th", "a-8726E21A.th"):
        with pytest.raises(ValueError, match="is not a demucs checkpoint name"):
            split_checkpoint_name(name)
