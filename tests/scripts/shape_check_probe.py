"""Imports the package under the shape-check hook (tests/shape_checks.py) and shows the checks are live: a
well-shaped call passes, a wrong dtype and a wrong rank are refused. Prints one `PROBE name: outcome` line each."""

import numpy as np
from jaxtyping import TypeCheckError

import tests.shape_checks  # noqa: F401 (installs the import hook before the package's modules load)
from modeling_hdemucs_flax import FlaxHDemucs
from modeling_hdemucs_flax.models.common.spectral import stft
from tests.reference import tiny_config


def outcome(call) -> str:
    try:
        call()
    except TypeCheckError as error:
        return "refused: " + str(error).splitlines()[0]
    return "passed"


model = FlaxHDemucs(tiny_config())
print("PROBE stft float32:", outcome(lambda: stft(np.zeros((2, 1000), np.float32), 256, 64)))
print("PROBE stft int32:", outcome(lambda: stft(np.zeros((2, 1000), np.int32), 256, 64)))
print("PROBE model (batch, channels, samples):", outcome(lambda: model(np.zeros((1, 2, 3000), np.float32))))
print("PROBE model (channels, samples):", outcome(lambda: model(np.zeros((2, 3000), np.float32))))
