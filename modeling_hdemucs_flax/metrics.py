"""How closely two signals agree: the figures every parity check in the project reports. Numpy only."""

from __future__ import annotations

import math

import numpy as np


def relative_error_db(got: np.ndarray, want: np.ndarray) -> float:
    """20 * log10(||got - want|| / ||want||): the relative L2 error in dB (-120 dB is one part in a million).
    Both norms are floored at 1e-30, so identical silent signals give -600 dB rather than NaN; non-finite
    values in `got` give +inf."""
    kind = np.complex128 if np.iscomplexobj(got) or np.iscomplexobj(want) else np.float64
    got, want = np.asarray(got, kind), np.asarray(want, kind)
    if got.shape != want.shape:
        raise ValueError(f"relative_error_db: shapes differ, {got.shape} vs {want.shape}")
    if not np.isfinite(got).all():
        return math.inf
    difference = max(float(np.linalg.norm(got - want)), 1e-30)
    return 20 * math.log10(difference / max(float(np.linalg.norm(want)), 1e-30))


def max_abs_error(got: np.ndarray, want: np.ndarray) -> float:
    """The largest absolute difference (0.0 for empty arrays)."""
    difference = np.abs(np.asarray(got, np.complex128 if np.iscomplexobj(got) else np.float64) - want)
    return float(difference.max()) if difference.size else 0.0
