"""The default-model chain of `modeling_hdemucs_flax.zoo.pretrained`: local cache -> the Hub's converted copy ->
torchaudio's official file (sha256-checked, converted without torch, cached) — against local servers.

The chain takes its bundle and repo id as parameters; the tests give it the tiny random-weight model in both
places, served from 127.0.0.1 through the same environment variables users would set.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import torch

from modeling_hdemucs_flax.zoo.pretrained import DEFAULT_MODEL

from .flows import error_lines, flow_env, probe, run_script, tiny_bundle
from .hub_server import FileServer, HubServer
from .reference import error_report

GATE_DB = -80.0  # same bound as the converter's float32 gate (measured: about -130 dB on this model)


def test_default_model_chain(tmp_path, tiny_pair, tiny_checkpoint_dir, reference_sources):
    _, reference, _ = tiny_pair
    checkpoint = tmp_path / "tiny.pt"
    torch.save(reference.state_dict(), checkpoint)
    good_bytes = checkpoint.read_bytes()
    digest = hashlib.sha256(good_bytes).hexdigest()
    tampered_bytes = bytearray(good_bytes)
    tampered_bytes[len(tampered_bytes) // 3] ^= 0x01
    good = tiny_bundle(digest, name="TINY_GOOD")
    tampered = dataclasses.replace(good, name="TINY_TAMPERED", key="models/tiny_tampered.pt")
    spec = json.dumps({b: dataclasses.asdict(v) for b, v in {"good": good, "tampered": tampered}.items()})
    np.save(tmp_path / "probe.npy", probe())
    caches = [str(tmp_path / f"cache{i}") for i in range(4)]
    args = (spec, str(tmp_path / "probe.npy"), str(tmp_path), *caches)

    hub_files = {name: (tiny_checkpoint_dir / name).read_bytes() for name in ("config.json", "model.safetensors")}
    with HubServer() as hub, FileServer({good.key: good_bytes, tampered.key: bytes(tampered_bytes)}) as files:
        hub.create(DEFAULT_MODEL, files=hub_files)
        env = flow_env(tmp_path, HF_ENDPOINT=hub.url, HDEMUCS_FLAX_TORCHAUDIO_URL=files.url)

        # transformers 4.57 imports torch whenever it is installed (as here) unless USE_TORCH=0; with that set,
        # nothing but the conversion itself could import it, and "torch imported: False" proves it does not.
        result = run_script("default_model_online", {**env, "USE_TORCH": "0"}, *args)
        assert result.returncode == 0
        # 1. from the Hub: torchaudio's server was not asked (its two requests are steps 2 and 3)
        assert files.requests == [("GET", tampered.key), ("GET", good.key)]
        for name in ("hub", "converted"):
            _, db = error_report(
                f"default chain ({name}) vs torchaudio", np.load(tmp_path / f"{name}.npy"), reference_sources, GATE_DB
            )
            assert db <= GATE_DB
        # 2. the tampered file: one line, nothing kept
        [line] = error_lines(result.stderr)
        assert "sha256 mismatch" in line and digest in line, line
        assert [p for p in (tmp_path / "cache1").rglob("*") if p.is_file()] == []
        # 3. converted without torch and cached as a save_pretrained folder; the downloaded file is dropped
        assert "torch imported: False" in result.stdout
        cached = tmp_path / "cache2" / "converted" / "tiny_good"
        assert sorted(p.name for p in cached.iterdir()) == ["config.json", "model.safetensors"]
        assert [p for p in (tmp_path / "cache2" / "torchaudio").rglob("*") if p.is_file()] == []

        hub.requests.clear()
        files.requests.clear()
        result = run_script("default_model_offline", {**env, "HF_HUB_OFFLINE": "1"}, *args)
        assert result.returncode == 0
        assert hub.requests == [] and files.requests == []
    np.testing.assert_array_equal(np.load(tmp_path / "offline_hub.npy"), np.load(tmp_path / "hub.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "offline_converted.npy"), np.load(tmp_path / "converted.npy"))
    [line] = error_lines(result.stderr)
    assert "default model (TINY_GOOD) is not cached" in line and "HF_HUB_OFFLINE=1" in line and "--model" in line
