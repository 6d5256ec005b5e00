"""Where the network runs and at what precision: what a first GPU or TPU run depends on, proved on the CPU.

Devices are simulated with forced host devices (`--xla_force_host_platform_device_count=2`) in subprocesses
(this process's JAX has started with one), and "the default device is not the first one" with
`jax_default_device` set to device 1. The precision is read from the lowered program: every convolution and
matrix product must carry the precision the model claims, whatever JAX's own default.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

import httpx
import jax
import numpy as np
import pytest
import soundfile as sf

from modeling_hdemucs_flax import FlaxHDemucs, OptionError, Separator, relative_error_db
from modeling_hdemucs_flax.apps.cli import main

from .audio_files import write_song
from .conftest import SEGMENT_SECONDS, SOURCES
from .dataset_helpers import usage_message
from .flows import run_script
from .reference import music_like
from .serve_helpers import ServeProcess, read_zip, upload, wait_ready

# ---------------------------------------------------------------------------------------------------------
# Placement: the network runs on the default device, or on the devices it is given


@pytest.fixture(scope="module")
def placement(tiny_checkpoint_dir, two_devices) -> dict:
    """`scripts/device_placement.py`'s report (default device: device 1 of two)."""
    result = run_script("device_placement", two_devices, str(tiny_checkpoint_dir), str(SEGMENT_SECONDS), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


WAYS = [
    "FlaxHDemucs.from_pretrained",
    "load_model",
    "Separator.from_pretrained",
    "the command line (load_separator)",
    "FlaxHDemucs.from_torchaudio",
    "FlaxHDemucs(config) (random weights)",
]


@pytest.mark.parametrize("way", WAYS)
def test_every_way_of_loading_a_model_computes_on_the_default_device(placement, way):
    """With JAX's default device set to device 1 (as `--device gpu` sets it to the first GPU), a model however
    loaded keeps its parameters there and every forward pass of a separation runs and ends there; the Separator
    says so. transformers' loader used to leave the parameters committed to the host CPU (device 0 here), which
    pulled every forward pass there."""
    assert placement["default device"] == ["cpu:1"]
    got = placement["ways"][way]
    assert "error" not in got and got["calls"] >= 2, got  # a song of several batches
    assert (got["parameters"], got["outputs"], got["Separator.device"]) == (["cpu:1"], ["cpu:1"], "cpu:1"), got


@pytest.mark.parametrize("device", ["cpu:1", "cpu:0"])
def test_one_separator_per_device_runs_there_and_equals_the_default(placement, device):
    """`Separator(model, devices=[d])` (one Separator per GPU) runs on `d`, parameters and outputs, for the
    default device and for another one, with the same stems as the default device's (it used to fail on its
    first batch: "Received incompatible devices for jitted computation")."""
    got = placement["one device"][device]
    assert "error" not in got, got
    assert (got["parameters"], got["outputs"], got["Separator.device"]) == ([device], [device], device), got
    assert got["equal to the default device's stems"], got


def test_weights_are_prepared_once_per_model_not_per_batch(placement):
    """Weight preparation (LSTM stacks, transposed-convolution matrices) runs once per model: not again for each
    batch split over two devices (the replicated copy is placed once), nor for a second Separator on one device."""
    got = placement["preparations"]
    batches = (got["batches split over both devices"], got["batches on device 1"])  # or the error it ended with
    assert all(isinstance(n, int) and n >= 3 for n in batches), got
    assert (got["Separator.device (split)"], got["outputs (split)"]) == ("2 x cpu (cpu:0, cpu:1)", ["cpu:0", "cpu:1"])
    assert (got["numpy"], got["jitted"]) == (1, 0), got


# ---------------------------------------------------------------------------------------------------------
# Precision: float32 means float32 on an accelerator too


def precisions(model: FlaxHDemucs, samples: int = 8192) -> Counter:
    """How many convolutions and dot products of the lowered forward pass (the weight preparation included) carry
    each precision: {(lhs, rhs): count}, ("unset",) when the op leaves it to the platform's default."""
    x = np.zeros((1, model.config.audio_channels, samples), np.float32)
    text = jax.jit(lambda p, w: model(w, params=p).sources).lower(model.params, x).as_text()
    ops = [line for line in text.splitlines() if re.search(r"stablehlo\.(convolution|dot_general)\b", line)]
    return Counter(tuple(re.findall(r"\b(DEFAULT|HIGHEST|HIGH)\b", line)) or ("unset",) for line in ops)


def test_float32_computes_every_product_in_float32_whatever_jax_default(tiny_pair, tiny_checkpoint_dir):
    """Every convolution and matrix product of a float32 model is lowered with precision HIGHEST (float32 on GPU
    and TPU, where JAX's default is TF32 or one bfloat16 pass), also when the process lowers JAX's default to
    bfloat16; `matmul_precision` names the faster modes, which show as HIGH and DEFAULT."""
    _, _, model = tiny_pair
    loaded = FlaxHDemucs.from_pretrained(tiny_checkpoint_dir)
    for candidate in (model, loaded):
        found = precisions(candidate)
        assert sum(found.values()) > 50 and set(found) == {("HIGHEST", "HIGHEST")}, found
    before = jax.config.jax_default_matmul_precision  # pyright: ignore[reportAttributeAccessIssue]
    jax.config.update("jax_default_matmul_precision", "bfloat16")
    try:
        assert set(precisions(loaded)) == {("HIGHEST", "HIGHEST")}
    finally:
        jax.config.update("jax_default_matmul_precision", before)
    tf32 = FlaxHDemucs.from_pretrained(tiny_checkpoint_dir, matmul_precision="tensorfloat32")
    assert set(precisions(tf32)) == {("HIGH", "HIGH")}
    fastest = FlaxHDemucs.from_torchaudio(model.to_torchaudio(), model.config, matmul_precision="bfloat16")
    assert set(precisions(fastest)) == {("DEFAULT", "DEFAULT")}
    x = music_like(20000, seed=1)[None]  # the CPU computes float32 whatever the setting
    np.testing.assert_array_equal(np.asarray(tf32(x).sources), np.asarray(loaded(x).sources))


def test_the_precision_reaches_the_model_from_every_front_door(tiny_checkpoint_dir, jax_cache, tmp_path):
    """`Separator.from_pretrained(matmul_precision=...)` and the command line's --matmul-precision build a model at
    that precision; an unknown one is refused in one line before anything is loaded."""
    separator = Separator.from_pretrained(tiny_checkpoint_dir, segment=SEGMENT_SECONDS, matmul_precision="bfloat16")
    assert separator.model.matmul_precision == "bfloat16"
    assert set(precisions(separator.model)) == {("DEFAULT", "DEFAULT")}
    assert Separator.from_pretrained(tiny_checkpoint_dir).model.matmul_precision == "float32"
    with pytest.raises(OptionError, match=r"^matmul_precision='fp32': must be one of float32, tensorfloat32, bf"):
        Separator.from_pretrained(tmp_path / "not-loaded", matmul_precision="fp32")

    from modeling_hdemucs_flax.apps.arguments import options_from
    from modeling_hdemucs_flax.apps.cli import build_parser, load_separator

    argv = ["separate", "song.wav", "--model", str(tiny_checkpoint_dir), "--segment", str(SEGMENT_SECONDS)]
    argv += ["--compilation-cache", str(jax_cache), "-q", "--matmul-precision", "tensorfloat32"]
    args = build_parser().parse_args(argv)
    separator = load_separator(args, *options_from(args))
    assert isinstance(separator, Separator) and separator.model.matmul_precision == "tensorfloat32"


def test_separate_dataset_records_a_precision_other_than_float32(tiny_checkpoint_dir, jax_cache, tmp_path, capsys):
    """separate-dataset's completion markers certify the matmul precision when it is not float32, so a float32
    run's markers keep their hash (those written before the option existed stay valid): a tensorfloat32 run over
    float32 outputs is refused naming the change, and with --overwrite it is recorded. The manifest names the
    device the network ran on."""
    songs = tmp_path / "in"
    write_song(songs / "song.wav", 0.25, 44100, 2, subtype="PCM_16")
    out = tmp_path / "out"
    common = ["separate-dataset", str(songs), "-o", str(out), "--model", str(tiny_checkpoint_dir)]
    common += ["--segment", str(SEGMENT_SECONDS), "--compilation-cache", str(jax_cache)]

    def markers() -> dict[str, dict]:
        return {p.name: json.loads(p.read_text()) for p in (out / "_hdemucs" / "markers").glob("*.done.json")}

    assert main(common) == 0
    [(name, marker)] = markers().items()
    assert "matmul_precision" not in marker["options"] and marker["device"] == "cpu:0"
    capsys.readouterr()
    assert main([*common, "--matmul-precision", "float32"]) == 0  # the same options: skipped
    assert ", 1 skipped, 0 failed;" in capsys.readouterr().out
    assert main([*common, "--matmul-precision", "tensorfloat32"]) == 2
    assert "matmul_precision None -> 'tensorfloat32'" in usage_message(capsys.readouterr().err)
    assert main([*common, "--matmul-precision", "tensorfloat32", "--overwrite"]) == 0
    [(other, marker)] = markers().items()
    assert other != name and marker["options"]["matmul_precision"] == "tensorfloat32"
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [row["device"] for row in rows if row.get("status") == "ok"] == ["cpu:0"]


# ---------------------------------------------------------------------------------------------------------
# The command line and the server use the devices they are given


def test_separate_splits_batches_over_the_devices_asked_for(tiny_checkpoint_dir, jax_cache, two_devices, tmp_path):
    """`separate --devices N`: both CPU devices of two give the stems one device gives, with a batch of one chunk
    per device by default and the devices named in the summary; a batch size they cannot split is a usage error
    before JAX starts; more devices than there are is a usage error naming how many there are; one device tells
    JAX to open one GPU only (no memory preallocated on the others)."""
    song = write_song(tmp_path / "song.wav", 1.0, 44100, 2, subtype="PCM_16")
    args = [str(tiny_checkpoint_dir), str(SEGMENT_SECONDS), str(song), str(tmp_path / "out"), str(jax_cache)]
    result = run_script("cli_devices", two_devices, *args, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])

    odd = report["--devices 2 --batch-size 3"]
    assert odd["status"] == 2 and not odd["jax imported"], odd
    assert odd["errors"] == [
        "hdemucs-flax separate: error: --batch-size 3: must be a multiple of the 2 devices a batch is split over"
    ]
    one, two = report["--devices 1"], report["--device cpu --devices 2"]
    assert one["status"] == 0 and one["summary"].endswith("x real time on cpu:0"), one
    assert one["jax_cuda_visible_devices"] == "0"
    assert two["status"] == 0 and two["summary"].endswith("x real time on 2 x cpu (cpu:0, cpu:1)"), two
    for stem in SOURCES:
        alone, _ = sf.read(tmp_path / "out" / "one" / "song" / f"{stem}.wav", dtype="float32")
        split, _ = sf.read(tmp_path / "out" / "two" / "song" / f"{stem}.wav", dtype="float32")
        assert relative_error_db(split, alone) < -120, stem  # measured: identical
    three = report["--device cpu --devices 3"]
    assert three["status"] == 2 and three["errors"] == [
        "hdemucs-flax separate: error: --devices 3: JAX finds only 2 CPU devices here"
    ], three
    assert not (tmp_path / "out" / "three").exists() and not (tmp_path / "out" / "odd").exists()


def test_serve_reports_and_uses_every_device_it_holds(tiny_checkpoint_dir, jax_cache, two_devices, tmp_path):
    """`serve --devices 2`: /v1/health names both devices the network runs on (not the first device JAX lists), and
    a separation split over them answers with the stems."""
    args = ["--model", str(tiny_checkpoint_dir), "--segment", str(SEGMENT_SECONDS), "--device", "cpu", "-q"]
    args += ["--devices", "2"]
    env = {key: two_devices[key] for key in ("XLA_FLAGS", "JAX_PLATFORMS", "HDEMUCS_FLAX_COMPILATION_CACHE")}
    song = write_song(tmp_path / "song.wav", 0.5, 44100, 2, subtype="PCM_16")
    with ServeProcess(tmp_path, args, {**env, "HDEMUCS_API_TOKEN": None}) as server:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            wait_ready(client)
            assert client.get("/v1/health").json()["device"] == "2 x cpu (cpu:0, cpu:1)"
            response = client.post("/v1/separate", **upload(song))
            assert response.status_code == 200, response.text
            assert sorted(read_zip(response.content, tmp_path / "stems")) == [f"song/{s}.wav" for s in sorted(SOURCES)]


# ---------------------------------------------------------------------------------------------------------
# Choosing devices on an accelerator host (no accelerator here: JAX's device list is replaced)


@dataclass(frozen=True)
class FakeDevice:
    platform: str
    id: int
    device_kind: str = "NVIDIA H200"


def test_an_accelerator_host_uses_every_device_unless_told_fewer(monkeypatch):
    """On a host with four GPUs the network runs on all four by default (the default device first), on the first N
    with a count, and a count above four is refused naming how many there are; descriptions name every device."""
    from modeling_hdemucs_flax import runtime
    from modeling_hdemucs_flax.runtime import describe_devices, select_devices

    gpus = [FakeDevice("gpu", i) for i in range(4)]
    monkeypatch.setattr(runtime, "backends_started", lambda: True)  # this process's JAX settings stay as they are
    monkeypatch.setattr(runtime, "default_device", lambda: gpus[2])
    monkeypatch.setattr(jax, "local_devices", lambda backend=None: gpus if backend == "gpu" else [])
    assert select_devices() == [gpus[2], gpus[0], gpus[1], gpus[3]]
    assert select_devices(None, 2) == [gpus[2], gpus[0]]
    with pytest.raises(OptionError, match=r"^devices=5: JAX finds only 4 GPU devices here$"):
        select_devices(None, 5)
    assert describe_devices(gpus[:2]) == "2 x NVIDIA H200 (gpu:0, gpu:1)"
    assert describe_devices(gpus[3:]) == "NVIDIA H200 (gpu:3)"
    assert describe_devices([FakeDevice("cpu", 0, "cpu")]) == "cpu:0"
