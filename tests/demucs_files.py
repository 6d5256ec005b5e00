"""Tiny demucs models written as demucs writes its releases (`serialize_model`, then `save_with_checksum`), for
the tests of the checkpoint reader, the converters and the fetch chain.

`serialize_model` imports omegaconf, which is no test dependency: where it is missing, the `make_config`
fixture (conftest.py) puts a stand-in module in its place whose `OmegaConf.to_container` returns the plain dict
(what the real one returns for a config of plain values)."""

from __future__ import annotations

from fractions import Fraction

import torch
from demucs.demucs import Demucs
from demucs.hdemucs import HDemucs
from demucs.htdemucs import HTDemucs
from demucs.states import save_with_checksum, serialize_model

from .conftest import SOURCES

# A training configuration shaped like demucs's (nested sections, lists, None, floats).
TRAINING = {
    "dset": {"sources": SOURCES, "musdb": "/data/musdb18hq", "segment": 11, "channels": 2},
    "epochs": 360,
    "optim": {"lr": 3e-4, "beta2": 0.999, "weight_decay": 0},
    "misc": {"num_workers": None, "verbose": False},
    "weights": [1.0, 1.0, 1.0, 1.0],
}


def tiny_model(kind: str, seed: int = 0) -> torch.nn.Module:
    """A small random demucs model of each class (sources positional or as a keyword, as demucs builds them)."""
    torch.manual_seed(seed)
    if kind == "htdemucs":
        return HTDemucs(
            SOURCES, channels=4, depth=2, t_layers=1, t_heads=1, nfft=512, dconv_comp=2, segment=Fraction(39, 5)
        )
    if kind == "hdemucs":
        return HDemucs(sources=SOURCES, channels=4, depth=2, nfft=512, dconv_comp=2, segment=44)
    return Demucs(SOURCES, channels=4, depth=2, lstm_layers=0)


def write_package(model: torch.nn.Module, folder, make_config, *, half: bool = True):
    """The model saved as demucs saves a release: serialize_model + save_with_checksum (`model-<sha8>.th`)."""
    folder.mkdir(exist_ok=True)
    save_with_checksum(serialize_model(model, make_config(TRAINING), half=half), folder / "model.th")
    (path,) = folder.glob("model-*.th")
    return path
