"""Invariants of the chunk plan, the weights, the statistics and the streamed overlap-add.

The model is replaced by `AffineStandIn` (source i = g_i x + b_i, NaN where its input is padding), so the
separation schedule alone is tested: exact reconstruction, exact output length, no leakage from padding.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modeling_hdemucs_flax.separation.separator import (
    chunk_weight,
    mix_statistics,
    overlap_add_stream,
    plan_chunks,
    resampled_length,
)

from .reference import error_report
from .separation_helpers import AffineStandIn, demucs_triangle, nonzero_signal


def blocks_of(x: np.ndarray, sizes: list[int]):
    """Split (channels, n) into blocks of the given sizes, cycling; copies."""
    i, k = 0, 0
    while i < x.shape[1]:
        size = sizes[k % len(sizes)]
        yield x[:, i : i + size].copy()
        i += size
        k += 1


def run_stream(x, stand_in, *, segment, stride, batch_size, weight, delays, block_sizes):
    out = list(
        overlap_add_stream(
            blocks_of(x, block_sizes),
            x.shape[1],
            stand_in,
            channels=x.shape[0],
            segment=segment,
            stride=stride,
            batch_size=batch_size,
            weight=weight,
            delays=delays,
        )
    )
    return np.concatenate(out, axis=-1)


@settings(max_examples=150, deadline=None)
@given(
    length=st.integers(1, 3000),
    segment=st.integers(1, 400),
    overlap=st.floats(0.0, 0.95),
    batch_size=st.integers(1, 4),
    channels=st.integers(1, 2),
    weighting=st.sampled_from(["triangle", "linear"]),
    transition_power=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
    delays=st.lists(st.integers(0, 500), min_size=1, max_size=3).map(tuple),
    block_sizes=st.lists(st.integers(1, 700), min_size=1, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_overlap_add_reconstructs_identity_like_model(
    length, segment, overlap, batch_size, channels, weighting, transition_power, delays, block_sizes, seed
):
    stride = max(1, int((1 - overlap) * segment))
    weight = chunk_weight(segment, segment - stride, weighting, transition_power)
    x = nonzero_signal(channels, length, seed)
    x_before = x.copy()
    stand_in = AffineStandIn([0.5, -1.0, 2.0], [0.25, 0.0, -3.0], (batch_size, channels, segment))
    got = run_stream(
        x,
        stand_in,
        segment=segment,
        stride=stride,
        batch_size=batch_size,
        weight=weight,
        delays=delays,
        block_sizes=block_sizes,
    )
    want = stand_in.expected(x)
    assert got.shape == want.shape == (3, channels, length)  # output length = input length, exactly
    assert np.isfinite(got).all(), "padding (NaN from the stand-in) leaked into the output"
    max_abs, db = error_report("overlap-add identity", got, want, threshold_db=-120)
    assert max_abs < 2e-6 and db < -120  # float32 rounding of a weighted average of equal values
    np.testing.assert_array_equal(x, x_before)
    assert stand_in.calls == -(-len(plan_chunks(length, segment, stride, delays)) // batch_size)


@settings(max_examples=200, deadline=None)
@given(
    length=st.integers(1, 5000),
    segment=st.integers(1, 600),
    overlap=st.floats(0.0, 0.99),
    delays=st.lists(st.integers(0, 900), min_size=1, max_size=3).map(tuple),
)
def test_chunk_plan_covers_song_once_per_pass(length, segment, overlap, delays):
    stride = max(1, int((1 - overlap) * segment))
    chunks = plan_chunks(length, segment, stride, delays)
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    for shift, delay in enumerate(delays):
        starts = [c.start for c in chunks if c.shift == shift]
        assert starts[0] == -delay and all(b - a == stride for a, b in zip(starts, starts[1:], strict=False))
        assert starts[-1] + segment >= length  # the last chunk reaches the end ...
        assert len(starts) == 1 or starts[-2] + segment < length  # ... and is the first one that does
    if segment >= length:
        assert len(plan_chunks(length, segment, stride)) == 1  # a short song is one forward pass


@pytest.mark.parametrize("segment", [1, 2, 7, 8, 343980])
@pytest.mark.parametrize("power", [1.0, 2.5])
def test_triangle_weight_is_demucs_weight(segment, power):
    got = chunk_weight(segment, segment // 4, "triangle", power)
    max_abs, _ = error_report("triangle weight", got, demucs_triangle(segment, power), threshold_db=-140)
    assert max_abs < 1e-7 and got.min() > 0 and got.max() == 1.0


@pytest.mark.parametrize("segment,overlap_samples", [(100, 25), (100, 0), (10, 9), (7, 6)])
def test_linear_fade_crossfades_sum_to_one(segment, overlap_samples):
    weight = chunk_weight(segment, overlap_samples, "linear")
    stride = segment - overlap_samples
    assert weight.min() > 0 and weight.max() == 1.0
    np.testing.assert_allclose(weight, weight[::-1], atol=1e-7)
    if overlap_samples and 2 * overlap_samples <= segment:  # two chunks overlap: fade-out + fade-in == 1
        crossfade = weight[stride:] + weight[:overlap_samples]
        np.testing.assert_allclose(crossfade, 1.0, atol=1e-6)


@pytest.mark.parametrize("offset", [0.0, 1000.0])
def test_mix_statistics_match_numpy_blockwise(offset):
    rng = np.random.default_rng(3)
    x = (offset + 1e-3 * rng.standard_normal((2, 10007))).astype(np.float32)
    stats = mix_statistics(blocks_of(x, [1, 999, 4096]))
    mono = x.astype(np.float64).mean(axis=0)
    assert stats.frames == 10007
    assert abs(stats.mean - mono.mean()) <= 1e-12 * max(1.0, offset)
    assert abs(stats.std - mono.std(ddof=1)) / mono.std(ddof=1) < 1e-9  # no cancellation under a loud DC offset


def test_mix_statistics_edge_cases():
    assert mix_statistics([np.zeros((2, 5), np.float32)]).std == 0.0  # silence: std 0, scale 1e-8, no NaN
    one = mix_statistics([np.full((1, 1), 0.5, np.float32)])
    assert (one.mean, one.std, one.frames) == (0.5, 0.0, 1)  # one sample: ddof=1 would be NaN; defined as 0
    from modeling_hdemucs_flax import AudioError

    bad = np.ones((2, 10), np.float32)
    bad[1, 7] = np.inf
    with pytest.raises(AudioError, match="<array>: contains NaN or infinite samples \\(first at sample 7\\)"):
        mix_statistics([bad])


@pytest.mark.parametrize("rates", [(44100, 48000), (48000, 44100), (22050, 44100), (11025, 48000)])
def test_resampled_length_matches_soxr(rates):
    import soxr

    for n in (1, 2, 3, 999, 44101):
        got = soxr.resample(np.zeros((n, 1), np.float32), rates[0], rates[1]).shape[0]
        assert resampled_length(n, *rates) == got


def test_stream_memory_does_not_grow_with_length():
    """Peak traced allocation of the streamed overlap-add for 10x the length stays within 1.3x (the stand-in is
    free, so this is the schedule's own memory: input window, accumulators, batches)."""
    segment, stride, batch = 4096, 3072, 2
    weight = chunk_weight(segment, segment - stride)

    def peak(length: int) -> int:
        stand_in = AffineStandIn([1.0, 1.0], [0.0, 0.0], (batch, 2, segment))
        blocks = (nonzero_signal(2, min(65536, length - i), i) for i in range(0, length, 65536))
        tracemalloc.start()
        done = 0
        for out in overlap_add_stream(
            blocks, length, stand_in, channels=2, segment=segment, stride=stride, batch_size=batch, weight=weight
        ):
            done += out.shape[-1]
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert done == length
        return top

    short, long = peak(200_000), peak(2_000_000)
    print(f"[memory] overlap-add stream peak: {short / 1e6:.2f} MB for 200k samples, {long / 1e6:.2f} MB for 2M")
    assert long < 1.3 * short
