"""The figures music separation papers report, in numpy float64: the MDX challenge's SDR (`new_sdr`, what demucs's
`evaluate.py` calls nSDR) and BSS-Eval v4 (`bss_eval_v4`: SDR, ISR, SIR, SAR per 1 s frame, as SiSEC 2018 and
the `museval` package publish them).

BSS-Eval v4 (Liutkus, Stöter and Ito, "The 2018 Signal Separation Evaluation Campaign", LVA/ICA 2018) is
museval's `bss_eval(..., compute_permutation=False, filters_len=512, framewise_filters=False,
bsseval_sources_version=False)`, the call of `museval.evaluate` and of demucs's `eval_track`:

1. Distortion filters, once over the whole track: each estimate channel is projected (least squares) on the
   span of every reference channel delayed by 0..511 samples (`filters_all`), and on the span of its own
   source's reference channels alone (`filters_own`). The normal equations' matrix is the Gram matrix of the
   delayed references, built from their cross-correlations at lags -511..511.
2. Per frame (window = hop = 1 s of samples in museval.evaluate), the frame of the references is filtered with
   those filters (restarting at the frame's start, output 511 samples longer than the frame) and
       SDR = 10 log10(Σ s² / Σ (ŝ − s)²)              s: the source's reference, ŝ: its estimate
       ISR = 10 log10(Σ s² / Σ (P_own − s)²)          P_own: ŝ's projection on its own reference
       SIR = 10 log10(Σ P_own² / Σ (P_all − P_own)²)  P_all: ŝ's projection on every reference
       SAR = 10 log10(Σ P_all² / Σ (ŝ − P_all)²)
   summed over channels and samples, +inf where the denominator is 0. A frame in which any reference or any
   estimate is silent (its channels sum to 0 at every sample, museval's test) is NaN for every source.
3. A track's figure is the median over its frames, NaN frames left out (`np.nanmedian`).

museval computes the same with one complex FFT per pair of whole signals and one `fftconvolve` per source,
channel and frame; here the correlations come from one pass of short real FFTs over the track (blocks of
2**15 samples, every pair at once), the normal equations are solved once for every estimate, and each batch of
frames is filtered with one real FFT per signal. Same equations, float64 throughout; the tests hold every frame's
figures to museval's within 0.01 dB.

Where museval's figures have no stable value: references whose delayed channels are linearly dependent to within
rounding (a part panned into stereo and stored as float, its channels proportional to 1e-8) make museval's normal
equations singular to working precision, and its ISR, SIR and SAR follow rounding noise. `_solve` adds a relative
term of 1e-12 that makes them stable (a change of the references by one part in 1e12 moves museval's figures by
up to 9 dB, ours by 4e-7 dB) and leaves the figures of other tracks within 1e-4 dB of museval's. SDR does not use
the filters.

One difference, by design: museval raises ValueError for a reference or an estimate that is silent over the
whole track. Every frame of such a track holds a silent source, so `bss_eval_v4` returns NaN for every frame and
source instead, as museval's own rule for a silent frame gives; the caller decides what to say (see
`silent_sources`). `new_sdr` has no such case: its 1e-7 terms keep it finite.

Shapes follow the package's audio layout: (sources, channels, samples), not museval's (sources, samples,
channels). Numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FILTERS_LEN = 512  # samples of delay the distortion filters span (museval's `filters_len`, SiSEC's setting)
MDX_DELTA = 1e-7  # added to both energies of the MDX SDR (its definition: a silent source scores finite)
METRICS = ("sdr", "isr", "sir", "sar")  # museval's order
_EPS = np.finfo(np.float64).eps  # museval's regularisation of the normal equations: G + eps·I (see `_solve`)
_BLOCK = 2**15  # samples per block of the correlation pass: FFTs of 32k points, 97% of each one useful
_PASS_BYTES = 2**26  # about the size of each large array of one pass (64 MB), so a 10-minute track fits anywhere


def new_sdr(references: np.ndarray, estimates: np.ndarray) -> np.ndarray:
    """The MDX challenge's SDR per source in dB: 10·log10((Σ s² + 1e-7) / (Σ (s − ŝ)² + 1e-7)) over the whole
    track, summed over channels and samples, in float64 (demucs's `new_sdr`).

    references, estimates: (sources, channels, samples), any float dtype. Returns float64 (sources,)."""
    _check_pair(references, estimates)
    scores = np.empty(len(references))
    for source, (reference, estimate) in enumerate(zip(references, estimates, strict=True)):  # one in float64 at a time
        reference, estimate = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
        num = np.sum(np.square(reference)) + MDX_DELTA
        den = np.sum(np.square(reference - estimate)) + MDX_DELTA
        scores[source] = 10 * np.log10(num / den)
    return scores


@dataclass(frozen=True)
class BSSEvalScores:
    """BSS-Eval v4 figures in dB, each float64 (sources, frames); NaN for a frame holding a silent source, +inf
    where a ratio's denominator is 0."""

    sdr: np.ndarray
    isr: np.ndarray
    sir: np.ndarray
    sar: np.ndarray

    @property
    def frames(self) -> int:
        return self.sdr.shape[1]

    def medians(self) -> dict[str, np.ndarray]:
        """{metric: float64 (sources,)}: the median over frames, NaN frames left out (NaN where all are)."""
        out = {}
        for name in METRICS:
            values = getattr(self, name)
            finite_or_inf = ~np.isnan(values)
            medians = np.full(values.shape[0], np.nan)
            for source in range(values.shape[0]):  # np.nanmedian warns on an all-NaN row; such a row stays NaN
                if finite_or_inf[source].any():
                    medians[source] = np.median(values[source, finite_or_inf[source]])
            out[name] = medians
        return out


def frame_bounds(length: int, window: int, hop: int) -> np.ndarray:
    """int64 (frames, 2): each frame's [start, stop) in samples, as museval frames a track: frames of `window`
    samples every `hop` samples that fit whole (a shorter tail is not scored), or one frame of the whole track
    when it is not longer than `window`."""
    if window <= 0 or hop <= 0:
        raise ValueError(f"window and hop must be positive, got {window} and {hop}")
    if window < length:
        starts = np.arange((length - window + hop) // hop) * hop
        return np.stack([starts, starts + window], axis=1)
    return np.array([[0, length]])


def silent_sources(audio: np.ndarray) -> np.ndarray:
    """bool (sources,): whether each source of `audio` (sources, channels, samples) is silent by museval's test,
    its channels summing to 0 at every sample."""
    return ~np.any(np.sum(audio, axis=1) != 0, axis=-1)  # exact in float32 too: L + R is 0 only for L = −R


def _silent_frames(audio: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """bool (sources, frames): museval's silence test on each frame of `audio` (sources, channels, samples)."""
    sounding = np.sum(audio, axis=1) != 0
    counts = np.zeros((audio.shape[0], audio.shape[2] + 1), np.int64)
    np.cumsum(sounding, axis=1, out=counts[:, 1:])  # sounding samples before each index: a frame's count by subtraction
    return counts[:, bounds[:, 1]] == counts[:, bounds[:, 0]]


def bss_eval_v4(
    references: np.ndarray,
    estimates: np.ndarray,
    *,
    window: int,
    hop: int | None = None,
    filters_len: int = FILTERS_LEN,
) -> BSSEvalScores:
    """BSS-Eval v4 (images version, filters over the whole track) of `estimates` against `references`, both
    (sources, channels, samples) of any float dtype (computed in float64), estimate i scored against reference i.

    window, hop: frame length and step in samples (museval.evaluate: one second of samples each; `hop`
    defaults to `window`). Returns every frame's figures (`BSSEvalScores`; `.medians()` gives the track's)."""
    _check_pair(references, estimates)
    sources, channels, length = references.shape
    bounds = frame_bounds(length, window, window if hop is None else hop)
    skipped = _silent_frames(references, bounds).any(axis=0) | _silent_frames(estimates, bounds).any(axis=0)
    scores = np.full((len(METRICS), sources, len(bounds)), np.nan)
    if skipped.all():  # includes a source silent throughout, which museval refuses (see the module's docstring)
        return BSSEvalScores(*scores)
    filters_all, filters_own = _distortion_filters(references, estimates, filters_len)
    todo = bounds[~skipped]
    frame_length = int(todo[0, 1] - todo[0, 0])  # every frame has the window's length, or the track's
    fft_size = _fast_length(frame_length + filters_len - 1)
    # The filters' spectra laid out for batched matrix products over the bins (a third of einsum's time here).
    spectra_all = np.ascontiguousarray(np.fft.rfft(filters_all, n=fft_size).transpose(2, 0, 1))  # (bins, P, Q)
    spectra_own = np.ascontiguousarray(np.fft.rfft(filters_own, n=fft_size).transpose(0, 3, 1, 2))  # (S, bins, C, C)
    per_pass = max(1, _PASS_BYTES // (8 * fft_size * sources * channels))
    results = []
    for first in range(0, len(todo), per_pass):
        results.append(
            _frame_scores(
                references, estimates, todo[first : first + per_pass], spectra_all, spectra_own, fft_size, filters_len
            )
        )
    scores[:, :, ~skipped] = np.concatenate(results, axis=-1)
    return BSSEvalScores(*scores)


def _check_pair(references: np.ndarray, estimates: np.ndarray) -> None:
    """Raise ValueError unless both are float (sources, channels, samples) arrays of one shape, not empty. They
    are not copied: each step takes what it needs in float64 (float32 tracks stay float32 in memory)."""
    for array in (references, estimates):
        if not (isinstance(array, np.ndarray) and np.issubdtype(array.dtype, np.floating)):
            raise ValueError(f"references and estimates must be float numpy arrays, got {type(array).__name__}")
    if references.ndim != 3 or references.shape != estimates.shape:
        raise ValueError(
            f"references and estimates must share one (sources, channels, samples) shape, got {references.shape} "
            f"and {estimates.shape}"
        )
    if references.shape[-1] == 0:
        raise ValueError("references and estimates hold no samples")


def _fast_length(n: int) -> int:
    """The smallest 2^a·3^b·5^c >= n: a length numpy's FFT handles at full speed."""
    best = 1 << max(0, (n - 1).bit_length())
    power5 = 1
    while power5 < best:
        power35 = power5
        while power35 < best:
            candidate = power35 << max(0, (-(-n // power35) - 1).bit_length())  # power35·2^a >= n, a smallest
            best = min(best, candidate)
            power35 *= 3
        power5 *= 5
    return best


def _cross_correlations(x: np.ndarray, ys: tuple[np.ndarray, ...], max_lag: int) -> np.ndarray:
    """float64 (P, Q, 2·max_lag + 1): r[p, q, max_lag + k] = Σ_n x[p, n]·y[q, n + k] for |k| <= max_lag (samples
    outside the signals count as 0), from x (P, n) and y (Q, n), the rows of the arrays `ys` one after another.

    One pass of short FFTs: x in blocks of `_BLOCK` samples, y in the same blocks widened by max_lag samples on
    each side, so every product a lag needs falls inside one block's circular correlation, which wraps nowhere.
    The cross-spectra of all blocks are summed before the one inverse FFT per pair."""
    signals_x, length = x.shape
    signals_y = sum(y.shape[0] for y in ys)
    block = min(length, _BLOCK)
    size = _fast_length(block + 2 * max_lag)
    bins = size // 2 + 1
    blocks = -(-length // block)
    per_pass = max(1, min(blocks, _PASS_BYTES // (8 * size * (signals_x + signals_y))))
    # One pass's blocks in float64, copied into buffers reused by every pass: a padded float64 copy of the whole
    # track would cost more (memory, and its page faults) than the FFTs themselves.
    x_blocks = np.zeros((signals_x, per_pass, block))
    y_blocks = np.zeros((signals_y, per_pass, block + 2 * max_lag))
    total = np.zeros((bins, signals_x, signals_y), np.complex128)
    for first in range(0, blocks, per_pass):
        count = min(per_pass, blocks - first)
        for i in range(count):
            start = (first + i) * block
            piece = x[:, start : start + block]
            x_blocks[:, i, : piece.shape[1]] = piece
            x_blocks[:, i, piece.shape[1] :] = 0
            low, high = max(0, start - max_lag), min(length, start + block + max_lag)
            offset = low - (start - max_lag)  # the window starts max_lag samples before the block
            y_blocks[:, i] = 0
            row = 0
            for y in ys:
                y_blocks[row : row + y.shape[0], i, offset : offset + high - low] = y[:, low:high]
                row += y.shape[0]
        x_spectra = np.fft.rfft(x_blocks[:, :count], n=size)  # (P, blocks, bins)
        y_spectra = np.fft.rfft(y_blocks[:, :count], n=size)  # (Q, blocks, bins)
        # Σ over blocks of conj(X)·Y for every (p, q) at once: a batch of small matrix products, one per bin.
        total += np.matmul(x_spectra.conj().transpose(2, 0, 1), y_spectra.transpose(2, 1, 0))
    return np.fft.irfft(total.transpose(1, 2, 0), n=size)[..., : 2 * max_lag + 1]


def _solve(gram: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The filters C of the normal equations (G + R) C = D, R diagonal: museval's eps (2.2e-16) plus 1e-12 of each
    delayed reference's energy (G's diagonal).

    museval adds eps·I alone, which is below the rounding of G's diagonal (energies of order 1 to 1e5) and so
    regularises nothing. Where the delayed references are linearly dependent to within rounding (a part panned
    into stereo and stored as float: channels proportional to 1e-8), its solution, and so its ISR and SIR, follow
    rounding noise: on synthetic stems, 6 to 43 dB away from the solutions with a relative term of 1e-13 to 1e-11,
    which agree with one another within 0.003 dB. The 1e-12 term damps only directions more than 120 dB below a
    reference's energy, which cannot carry a measurable part of an estimate: elsewhere the figures stay within
    1e-4 dB of museval's (4e-7 dB over tests/test_evaluate.py's cases). It also keeps G invertible for
    bit-identical channels, where museval falls back to a least-squares solve through an SVD (about a minute for 4
    stereo sources here). museval's eps still covers a channel that is all zeros (its diagonal is 0)."""
    regularised = gram.copy()
    regularised[np.diag_indices_from(regularised)] += 1e-12 * np.diag(gram) + _EPS
    return np.linalg.solve(regularised, right)


def _distortion_filters(
    references: np.ndarray, estimates: np.ndarray, filters_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """The least-squares filters that best make each estimate channel out of delayed reference channels, over the
    whole track: `filters_all` float64 (S·C, S·C, L) maps reference channel p to estimate channel q
    (index source·channels + channel); `filters_own` (S, C, C, L) maps source s's reference channels to its own
    estimate's channels. S sources, C channels, L = filters_len taps."""
    sources, channels, length = references.shape
    signals, taps = sources * channels, filters_len
    flat_refs = references.reshape(signals, length)
    flat_ests = estimates.reshape(signals, length)
    lag0 = taps - 1
    corr = _cross_correlations(flat_refs, (flat_refs, flat_ests), lag0)
    # Gram matrix of the delayed references: <s_p delayed by a, s_q delayed by b> = r_pq[a − b]; rows and columns
    # ordered (source, channel, delay) as museval orders them.
    delays = np.arange(taps)
    gram = corr[:, :signals][:, :, lag0 + delays[:, None] - delays[None, :]]  # (p, q, a, b)
    gram = gram.transpose(0, 2, 1, 3).reshape(signals * taps, signals * taps)
    # Right-hand sides: <s_p delayed by a, ŝ_q> = r_pq[a].
    right = corr[:, signals:][:, :, lag0 + delays]  # (p, q, a)
    right = right.transpose(0, 2, 1).reshape(signals * taps, signals)
    filters_all = _solve(gram, right).reshape(signals, taps, signals).transpose(0, 2, 1)
    filters_own = np.empty((sources, channels, channels, taps))
    for source in range(sources):
        rows = slice(source * channels * taps, (source + 1) * channels * taps)
        own = slice(source * channels, (source + 1) * channels)
        solved = _solve(gram[rows, rows], right[rows, own])  # ((channel, delay), estimate channel)
        filters_own[source] = solved.reshape(channels, taps, channels).transpose(0, 2, 1)
    return filters_all, filters_own


def _db(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """10·log10(num / den), +inf where den is 0 (museval's `_safe_db`)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den == 0, np.inf, 10 * np.log10(num / np.where(den == 0, 1.0, den)))


def _energy(signals: np.ndarray) -> np.ndarray:
    """Σ x² over channels and samples of (sources, channels, frames, n): float64 (sources, frames)."""
    return np.einsum("sctn,sctn->st", signals, signals)  # a dot product each: no squared copy


def _frame_scores(
    references: np.ndarray,
    estimates: np.ndarray,
    bounds: np.ndarray,
    spectra_all: np.ndarray,
    spectra_own: np.ndarray,
    fft_size: int,
    filters_len: int,
) -> np.ndarray:
    """float64 (4, sources, frames): SDR, ISR, SIR, SAR of the frames `bounds` (all of one length W), from the
    spectra of the filters (L = `filters_len` taps) at `fft_size` >= W + L − 1 points."""
    sources, channels, _ = references.shape
    width = int(bounds[0, 1] - bounds[0, 0])
    index = bounds[:, :1] + np.arange(width)  # (frames, W)
    refs = np.asarray(references[:, :, index], np.float64)  # (S, C, frames, W)
    ests = np.asarray(estimates[:, :, index], np.float64)
    ref_spectra = np.fft.rfft(refs, n=fft_size)  # (S, C, frames, bins)
    # Each source's reference channels through its own filters: the estimate's projection on its own reference.
    own_spectra = np.matmul(ref_spectra.transpose(0, 3, 2, 1), spectra_own)  # (S, bins, frames, C)
    own = np.fft.irfft(own_spectra.transpose(0, 3, 2, 1), n=fft_size)
    if sources == 1:  # the same filters (museval solves the same system twice): SIR is +inf, as museval's
        every = own
    else:  # every reference channel through every filter, summed: the projection on all references
        flat = ref_spectra.reshape(sources * channels, *ref_spectra.shape[2:])  # (P, frames, bins)
        every_spectra = np.matmul(flat.transpose(2, 1, 0), spectra_all)  # (bins, frames, Q)
        every = np.fft.irfft(every_spectra.transpose(2, 1, 0), n=fft_size)
        every = every.reshape(sources, channels, *every.shape[1:])
    full = width + filters_len - 1  # the projections' length: a frame convolved with L taps
    own, every = own[..., :full], every[..., :full]
    energy = _energy(refs)  # Σ s²
    sdr = _db(energy, _energy(ests - refs))
    # s and ŝ count as zero-padded to the projections' length: beyond W the differences are the projections.
    isr = _db(energy, _energy(own[..., :width] - refs) + _energy(own[..., width:]))
    sir = _db(_energy(own), _energy(every - own))
    sar = _db(_energy(every), _energy(ests - every[..., :width]) + _energy(every[..., width:]))
    return np.stack([sdr, isr, sir, sar])
