"""Fixtures shared by the test tiers. Nothing is configured at import time beyond what pytest needs."""

from __future__ import annotations

import pytest

from modeling_hdemucs_flax import FlaxHDemucs

from .reference import tiny_config, torch_model


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
