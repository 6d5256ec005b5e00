"""conversion/convert_torchaudio_hdemucs.py: checkpoint -> gated Hub folder -> push -> load from the Hub.

Real flows against local servers (tests/hub_server.py); huggingface_hub and transformers run unmodified.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors import safe_open

from conversion import convert_torchaudio_hdemucs as convert
from modeling_hdemucs_flax import FlaxHDemucs
from modeling_hdemucs_flax.zoo.torchaudio_bundles import fetch_torchaudio_checkpoint

from .flows import error_lines, flow_env, probe, run_converter, run_script, tiny_bundle
from .hub_server import FileServer, HubServer
from .reference import error_report, tiny_config

THREE_FILES = ["README.md", "config.json", "model.safetensors"]
GATE_DB = convert.THRESHOLDS_DB["float32"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_pair):
    """The tiny random-weight torchaudio checkpoint as users have it: a torch.save file, its config, sha256."""
    config, reference, _ = tiny_pair
    folder = tmp_path_factory.mktemp("torchaudio_checkpoint")
    path = folder / "tiny_hdemucs.pt"
    torch.save(reference.state_dict(), path)
    config.to_json_file(folder / "config.json")
    return path, folder / "config.json", hashlib.sha256(path.read_bytes()).hexdigest()


def card_of(folder: Path) -> ModelCard:
    return ModelCard.load(folder / "README.md")


def test_checkpoint_conversion_writes_exactly_the_hub_folder(tmp_path, checkpoint, reference_sources, capsys):
    path, config_json, digest = checkpoint
    out = tmp_path / "converted"
    argv = ["--checkpoint", str(path), "--config", str(config_json), "--output-dir", str(out), "--probe-seconds", "1.2"]
    argv += ["--sha256", digest]
    assert convert.main(argv) == 0
    printed = capsys.readouterr().out
    assert "passed" in printed and "relative" in printed and "max-abs" in printed

    assert sorted(p.name for p in out.iterdir()) == THREE_FILES
    with safe_open(out / "model.safetensors", framework="flax") as weights:
        assert weights.metadata() == {"format": "flax"}
    assert json.loads((out / "config.json").read_text())["model_type"] == "hdemucs"

    card = card_of(out)
    data = card.data.to_dict()
    assert data["license"] == "cc-by-nc-sa-4.0"
    assert data["pipeline_tag"] == "audio-to-audio"
    assert {"music-source-separation", "flax"} <= set(data["tags"])
    assert data["sources"] == ["drums", "bass", "other", "vocals"] and data["sample_rate"] == 44100
    assert data["provenance"]["sha256"] == digest and data["provenance"]["sha256_verified"] is True
    parity = data["parity"]
    assert parity["threshold_db"] == GATE_DB and parity["relative_error_db"] <= GATE_DB
    assert parity["max_abs_error"] > 0  # a measured figure, not a placeholder
    assert f"{parity['relative_error_db']:.1f} dB" in printed and f"{parity['relative_error_db']:.1f} dB" in card.text
    assert "MIT" in card.text and "CC BY-NC-SA 4.0" in card.text
    assert "hdemucs-flax separate" in card.text and "FlaxHDemucs.from_pretrained" in card.text

    # The written folder is the model that passed the gate.
    model = FlaxHDemucs.from_pretrained(out)
    got = np.asarray(model(probe()[None]).sources)[0]
    _, db = error_report("written folder vs torchaudio", got, reference_sources, GATE_DB)
    assert db <= GATE_DB
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_bundle_is_downloaded_verified_cached_and_recorded(tmp_path, monkeypatch, checkpoint, capsys):
    path, _, digest = checkpoint
    bundle = tiny_bundle(digest)
    monkeypatch.setenv("HDEMUCS_FLAX_CACHE", str(tmp_path / "cache"))
    with FileServer({bundle.key: path.read_bytes()}) as server:
        monkeypatch.setenv("HDEMUCS_FLAX_TORCHAUDIO_URL", server.url + "/")
        out = tmp_path / "from_bundle"
        out.mkdir()  # a previous output of the script is replaced as a whole
        (out / "README.md").write_text("stale card")
        argv = ["--bundle", bundle.name, "--output-dir", str(out), "--probe-seconds", "1.2", "--no-progress"]
        argv += ["--dtype", "bfloat16"]  # half-size weights: gated twice (float32 conversion, then rounding)
        assert convert.main(argv, bundles={bundle.name: bundle}) == 0
        assert sorted(p.name for p in out.iterdir()) == THREE_FILES
        with safe_open(out / "model.safetensors", framework="flax") as weights:
            assert {str(weights.get_tensor(k).dtype) for k in weights.keys()} == {"bfloat16"}
        assert server.requests == [("GET", bundle.key)]
        assert (tmp_path / "cache" / "torchaudio" / bundle.key).read_bytes() == path.read_bytes()

        card = card_of(out)
        provenance = card.data.to_dict()["provenance"]
        assert provenance == {
            "torchaudio_bundle": bundle.name,
            "file": bundle.key,
            "url": f"{server.url}/{bundle.key}",
            "sha256": digest,
            "sha256_verified": True,
        }
        assert bundle.training_data in card.text
        data = card.data.to_dict()
        assert data["parity"]["weights_dtype"] == "bfloat16"
        assert data["parity"]["relative_error_db"] <= convert.THRESHOLDS_DB["bfloat16"]
        assert data["parity_float32_conversion"]["relative_error_db"] <= GATE_DB
        printed = capsys.readouterr().out
        assert "float32 weights" in printed and "bfloat16 weights" in printed
        written, want = FlaxHDemucs.from_pretrained(out).config, tiny_config()
        assert written.torchaudio_kwargs() == want.torchaudio_kwargs() and written.sampling_rate == want.sampling_rate

        # The next run reuses the cached file after re-hashing it.
        cached, cached_digest = fetch_torchaudio_checkpoint(bundle, progress=False)
        assert cached_digest == digest and len(server.requests) == 1
    capsys.readouterr()


def test_sha256_mismatch_is_rejected_and_nothing_is_written(tmp_path, monkeypatch, checkpoint, capsys):
    path, _, digest = checkpoint
    bundle = tiny_bundle(digest)
    tampered = bytearray(path.read_bytes())
    tampered[len(tampered) // 2] ^= 0xFF
    monkeypatch.setenv("HDEMUCS_FLAX_CACHE", str(tmp_path / "cache"))
    with FileServer({bundle.key: bytes(tampered)}) as server:
        monkeypatch.setenv("HDEMUCS_FLAX_TORCHAUDIO_URL", server.url)
        out = tmp_path / "out"
        argv = ["--bundle", bundle.name, "--output-dir", str(out), "--no-progress"]
        assert convert.main(argv, bundles={bundle.name: bundle}) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sha256 mismatch" in err[0] and digest in err[0], err
    assert not out.exists()
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []  # no partial download kept


def test_user_mistakes_get_one_line_and_touch_nothing(tmp_path, monkeypatch, checkpoint, capsys):
    path, config_json, _ = checkpoint
    monkeypatch.setenv("HDEMUCS_FLAX_CACHE", str(tmp_path / "cache"))
    crowded = tmp_path / "crowded"
    crowded.mkdir()
    (crowded / "notes.txt").write_text("mine")
    with FileServer() as server:
        monkeypatch.setenv("HDEMUCS_FLAX_TORCHAUDIO_URL", server.url)
        cases = {
            "no such checkpoint file": [
                "--checkpoint",
                str(tmp_path / "missing.pt"),
                "--output-dir",
                str(tmp_path / "o"),
            ],
            "holds other files": [
                "--checkpoint",
                str(path),
                "--config",
                str(config_json),
                "--output-dir",
                str(crowded),
            ],
            "expected 64 hexadecimal digits": [
                "--checkpoint",
                str(path),
                "--sha256",
                "abc",
                "--output-dir",
                str(tmp_path / "o"),
            ],
            # torchaudio publishes no digest for the MUSDB-only file: converting it needs an explicit choice.
            "publishes no sha256": ["--bundle", "HDEMUCS_HIGH_MUSDB", "--output-dir", str(tmp_path / "o")],
        }
        for expected, argv in cases.items():
            assert convert.main(argv) == 1, expected
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and expected in err[0], (expected, err)
        assert server.requests == []
    assert not (tmp_path / "o").exists()
    assert sorted(p.name for p in crowded.iterdir()) == ["notes.txt"]


def break_one_tensor(real):
    """`convert_state_dict` with one tensor's conversion broken: the transposed-convolution kernel of the
    first time-decoder layer flipped along its kernel axis (a layout slip that keeps every shape valid)."""

    def broken(state_dict, config):
        params = real(state_dict, config)
        layer = params["time_decoder_0"]["conv_tr"]
        layer["kernel"] = layer["kernel"][::-1].copy()
        return params

    return broken


def test_parity_gate_refuses_to_write_or_push_a_broken_conversion(tmp_path, monkeypatch, checkpoint, capsys):
    path, config_json, _ = checkpoint
    out = tmp_path / "out"
    pushes = []
    monkeypatch.setattr(convert, "convert_state_dict", break_one_tensor(convert.convert_state_dict))
    monkeypatch.setattr(convert, "push_folder", lambda *args, **kwargs: pushes.append(args))
    monkeypatch.setenv("HF_TOKEN", "hf_local_test_token")
    argv = ["--checkpoint", str(path), "--config", str(config_json), "--output-dir", str(out)]
    argv += ["--probe-seconds", "1.2", "--push-to-hub", "acme/broken"]
    assert convert.main(argv) == 1
    captured = capsys.readouterr()
    assert "FAILED" in captured.out  # the measured error is shown
    relative_db = float(captured.out.split("relative ")[1].split(" dB")[0])
    print(f"broken conversion measured {relative_db:.1f} dB (gate {GATE_DB} dB)")
    assert relative_db > GATE_DB
    assert captured.err.strip().splitlines() == [f"error: parity gate failed; nothing written to {out}, nothing pushed"]
    assert pushes == []
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_push_load_repush_and_offline_reload(tmp_path, checkpoint, reference_sources):
    path, config_json, _ = checkpoint
    repo_id = "acme/tiny-hdemucs"
    out = tmp_path / "out"
    probe_path = str(tmp_path / "probe.npy")
    np.save(probe_path, probe())
    convert_argv = ["--checkpoint", str(path), "--config", str(config_json), "--output-dir", str(out)]
    convert_argv += ["--probe-seconds", "1.2", "--push-to-hub", repo_id, "--commit-message", "Tiny test model"]
    with HubServer() as hub:
        env = flow_env(tmp_path, HF_ENDPOINT=hub.url)

        # 1. convert + push, as users run it
        result = run_converter(env, *convert_argv)
        assert result.returncode == 0
        assert f"pushed to {repo_id}@main" in result.stdout
        pushed = hub.head(repo_id)
        assert pushed.message == "Tiny test model"
        assert sorted(pushed.files) == [".gitattributes", *THREE_FILES]
        assert all(pushed.files[name] == (out / name).read_bytes() for name in THREE_FILES)

        # 2. a fresh process downloads it and separates; an unknown repo is one clear line; re-running the
        #    conversion and push changes nothing; --revision pushes to a new branch
        commits = len(hub.repos[repo_id].branches["main"])
        result = run_script("hub_after_push", env, repo_id, probe_path, str(tmp_path / "online.npy"), *convert_argv)
        assert result.returncode == 0
        online = np.load(tmp_path / "online.npy")
        _, db = error_report("Hub download vs torchaudio", online, reference_sources, GATE_DB)
        assert db <= GATE_DB
        [line] = error_lines(result.stderr)
        assert "'acme/no-such-model': no such repository" in line
        assert "already up to date" in result.stdout and "rerun exit code 0" in result.stdout
        assert len(hub.repos[repo_id].branches["main"]) == commits and hub.head(repo_id).sha == pushed.sha
        assert f"pushed to {repo_id}@v1" in result.stdout
        assert hub.head(repo_id, "v1").files == pushed.files

        # 3. offline: the cached copy loads with no request at all; an uncached repo is one clear line
        hub.requests.clear()
        result = run_script(
            "hub_offline_reload", {**env, "HF_HUB_OFFLINE": "1"}, repo_id, probe_path, str(tmp_path / "offline.npy")
        )
        assert result.returncode == 0
        assert hub.requests == []
        np.testing.assert_array_equal(np.load(tmp_path / "offline.npy"), online)
        [line] = error_lines(result.stderr)
        assert "'acme/never-downloaded' is not in the Hugging Face cache" in line and "HF_HUB_OFFLINE=1" in line
