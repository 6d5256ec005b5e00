"""Fixtures and constants shared by the test modules. Nothing is configured at import time.

The tiny model (`reference.tiny_config`) is the default tier: random torchaudio weights converted by the real
conversion code, small enough that every test can compile and run it, and built so it reaches every path of
the network. All in-process separations compile one forward shape (`SEGMENT` samples) into one persistent
compilation cache per session, which subprocess flows share through `HDEMUCS_FLAX_COMPILATION_CACHE`.
"""

from __future__ import annotations

import copy
import os
import sys
import types

import pytest
import torch

from modeling_hdemucs_flax import FlaxHDemucs, configure_compilation_cache

from .flows import REPO_ROOT, probe
from .reference import tiny_config, torch_model

SR = 44100  # the tiny model's sample rate (torchaudio's HDemucs rate)
SEGMENT = 8192  # samples: the one chunk length the separation, CLI and Space tests compile
SEGMENT_SECONDS = SEGMENT / SR
SOURCES = ["drums", "bass", "other", "vocals"]


@pytest.fixture(scope="session", autouse=True)
def jax_cache(tmp_path_factory):
    """The session's persistent compilation cache folder, configured for this process (as the command line and
    the Space configure theirs) and handed to subprocesses."""
    folder = tmp_path_factory.getbasetemp() / "jax-compilation-cache"
    assert configure_compilation_cache(folder) == folder
    return folder


@pytest.fixture(scope="session")
def tiny_pair():
    """(config, torchaudio model with re-drawn weights, FlaxHDemucs converted from it) for the tiny config."""
    config = tiny_config()
    reference = torch_model(config, seed=0)
    return config, reference, FlaxHDemucs.from_torchaudio(reference.state_dict(), config)


@pytest.fixture(scope="session")
def tiny_checkpoint_dir(tmp_path_factory, tiny_pair):
    """A `save_pretrained` folder (config.json + model.safetensors) of the tiny converted model."""
    _, _, model = tiny_pair
    path = tmp_path_factory.mktemp("tiny_checkpoint")
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture(scope="session")
def reference_sources(tiny_pair):
    """torchaudio's output for the probe the subprocess flows separate: (sources, channels, samples)."""
    _, reference, _ = tiny_pair
    with torch.no_grad():
        return reference(torch.from_numpy(probe())[None]).numpy()[0]


@pytest.fixture
def make_config(monkeypatch):
    """What demucs's training passes to `serialize_model`: an OmegaConf config (or, without omegaconf, the dict
    itself, with a stand-in `OmegaConf.to_container`)."""
    try:
        from omegaconf import OmegaConf
    except ImportError:
        stand_in = types.ModuleType("omegaconf")
        stand_in.OmegaConf = types.SimpleNamespace(to_container=lambda config, resolve=False: copy.deepcopy(config))
        monkeypatch.setitem(sys.modules, "omegaconf", stand_in)
        return copy.deepcopy
    return OmegaConf.create


@pytest.fixture(scope="session")
def s3_endpoint():
    """An S3 server (moto's, in a thread of this process) on 127.0.0.1: its URL. Clients reach it through
    fsspec/s3fs with `dataset_helpers.s3_options(endpoint)`."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    """The session's one local Ray cluster (2 CPUs, 2 GPUs for Ray's scheduler only: nothing computes on them; no
    dashboard, auth disabled), held by its own process
    (`scripts/ray_cluster.py`) that started before any JAX existed in it; tests' drivers join it with
    `--ray-address`. Returns (address, environment for drivers)."""
    import subprocess
    import sys

    from .flows import REPO_ROOT, SCRIPTS

    env = dict(os.environ, RAY_AUTH_MODE="disabled", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO_ROOT))
    holder = subprocess.Popen(
        [sys.executable, str(SCRIPTS / "ray_cluster.py")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
        text=True,
    )
    line = holder.stdout.readline()
    assert line.startswith("RAY_ADDRESS "), f"the Ray cluster did not start: {line!r}"
    yield line.split()[1], env
    holder.stdin.close()  # the holder shuts its cluster down
    holder.wait(timeout=60)


TWO_DEVICES = "--xla_force_host_platform_device_count=2"


@pytest.fixture(scope="session")
def two_devices(jax_cache) -> dict[str, str]:
    """The environment of a subprocess whose JAX has two CPU devices and shares the session's compilation cache."""
    return {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "XLA_FLAGS": TWO_DEVICES,
        "JAX_PLATFORMS": "cpu",
        "HDEMUCS_FLAX_COMPILATION_CACHE": str(jax_cache),
    }
