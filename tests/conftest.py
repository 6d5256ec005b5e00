"""Fixtures and constants shared by the test modules. Nothing is configured at import time.

The tiny model (`reference.tiny_config`) is the default tier: random torchaudio weights converted by the real
conversion code, small enough that every test can compile and run it, and built so it reaches every path of
the network. All in-process separations compile one forward shape (`SEGMENT` samples) into one persistent
compilation cache per session, which subprocess flows share through `HDEMUCS_FLAX_COMPILATION_CACHE`.
"""

from __future__ import annotations

import pytest
import torch

from modeling_hdemucs_flax import FlaxHDemucs, configure_compilation_cache

from .flows import probe
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
