"""The Separator equals demucs's schedule on torchaudio's model, compiles one forward shape for any song length,
and handles channels, rates, edge-case audio and files (through `file_output.separate_file`).

Compiled shapes are few and shared through the session's persistent compilation cache (conftest), since each
compile of even the tiny model takes seconds on CPU.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf
import torch

from modeling_hdemucs_flax import AudioError, FlaxHDemucs, Separator, read_audio, separate_file, write_audio
from modeling_hdemucs_flax.separation.separator import draw_shift_delays, network_forward

from .conftest import SEGMENT, SEGMENT_SECONDS, SR
from .reference import error_report, music_like, tiny_config
from .separation_helpers import AffineStandIn, CompileCounter, demucs_reference


def make(model, **options) -> Separator:
    options.setdefault("segment", SEGMENT_SECONDS)
    return Separator(model, **options)


def with_stand_in(model, gains, **options) -> Separator:
    """A Separator whose network is an `AffineStandIn` (source i = gains[i] * x), padding not poisoned."""
    shape = make(model, **options).input_shape
    return make(model, forward=AffineStandIn(gains, [0] * len(gains), shape, poison=False), **options)


def normalised(mix: np.ndarray):
    ref = mix.astype(np.float64).mean(axis=0)
    mean, scale = ref.mean(), ref.std(ddof=1) + 1e-8
    return (mix - mean) / scale, mean, scale


@torch.no_grad()
def torch_forward(model, x: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(np.asarray(x, np.float32)[None]))[0].double().numpy()


def stack(stems: dict, sources) -> np.ndarray:
    return np.stack([stems[name] for name in sources])


def test_song_of_one_segment_equals_normalised_forward_pass(tiny_pair):
    config, reference, model = tiny_pair
    mix = music_like(SEGMENT, 2, seed=1)
    mix_before = mix.copy()
    mix.setflags(write=False)  # the Separator must never write to the caller's array
    stems = make(model).separate(mix, SR)
    x, mean, scale = normalised(mix)
    want = torch_forward(reference, x) * scale + mean
    max_abs, db = error_report("separator, segment = song length", stack(stems, config.sources), want, -100)
    assert db < -100  # measured about -130 dB: the -120 dB forward-pass parity plus float32 overlap-add
    np.testing.assert_array_equal(mix, mix_before)


def test_song_shorter_than_segment_is_zero_padded_to_it(tiny_pair):
    config, reference, model = tiny_pair
    mix = music_like(5000, 2, seed=2)
    stems = make(model).separate(mix, SR)
    x, mean, scale = normalised(mix)
    padded = np.concatenate([x, np.zeros((2, SEGMENT - 5000))], axis=1)
    want = torch_forward(reference, padded)[..., :5000] * scale + mean
    _, db = error_report("separator, song shorter than segment", stack(stems, config.sources), want, -100)
    assert db < -100


@pytest.mark.parametrize("shifts,power", [(0, 1.0), (2, 2.0)])
def test_chunked_separation_matches_demucs_reference(tiny_pair, shifts, power):
    config, reference, model = tiny_pair
    mix = music_like(30000, 2, seed=3)
    separator = make(model, overlap=0.25, batch_size=2, shifts=shifts, seed=7, transition_power=power)
    stems = separator.separate(mix, SR)
    delays = draw_shift_delays(shifts, SR // 2, 7)
    want = demucs_reference(reference, mix, segment=SEGMENT, overlap=0.25, delays=delays, transition_power=power)
    _, db = error_report(f"separator vs demucs reference, shifts={shifts}", stack(stems, config.sources), want, -100)
    assert db < -100


def test_five_minute_song_compiles_once(tiny_pair):
    """One executable for a 5-minute song, none more for a 30-second one, and every batch the network sees has
    the same shape. The tiny model's weights under a 4 kHz config keep 5 minutes cheap (1.2 M samples); the
    chunk count (195) is that of any 5-minute song with this segment in seconds."""
    _, _, model = tiny_pair
    slow_rate = FlaxHDemucs(tiny_config(sampling_rate=4000), params=model.params)
    network, shapes = network_forward(slow_rate), set()

    def recording(batch):
        shapes.add(batch.shape)
        return network(batch)

    separator = Separator(slow_rate, segment=SEGMENT / 4000, batch_size=2, forward=recording)
    chunks = []
    with CompileCounter() as counter:
        long = separator.separate(
            music_like(300 * 4000, 2, seed=4, sample_rate=4000),
            4000,
            progress=lambda done, total: chunks.append((done, total)),
        )
        after_long = counter.compiles
        short = separator.separate(music_like(30 * 4000, 2, seed=5, sample_rate=4000), 4000)
    print(f"[compile] executables for the 5-minute song: {after_long}; after the 30-second song: {counter.compiles}")
    assert after_long == 1 and counter.compiles == 1
    assert shapes == {(2, 2, SEGMENT)}  # one input shape ever reached the network
    assert chunks[0] == (0, 195) and chunks[-1] == (195, 195)  # 1 + ceil((1.2M - 8192) / 6144)
    assert long["vocals"].shape == (2, 1_200_000) and short["vocals"].shape == (2, 120_000)


def test_mono_and_other_rates_through_stand_in(tiny_pair):
    """With the network replaced by an elementwise stand-in, the pipeline's channel handling, resampling
    (soxr to 44.1 kHz and back) and normalisation are visible: stem i must be g_i (x - mean) + mean."""
    _, _, model = tiny_pair
    gains = [0.5, -1.0, 2.0, 0.25]
    separator = with_stand_in(model, gains, batch_size=2)
    for rate in (22050, 44100, 48000):
        t = np.arange(int(0.7 * rate)) / rate
        tones = np.stack([0.3 * np.sin(2 * np.pi * 220 * t) + 0.1, 0.2 * np.sin(2 * np.pi * 330 * t + 1) + 0.1])
        for mix in (tones.astype(np.float32), tones[:1].astype(np.float32), tones[0].astype(np.float32)):
            stems = separator.separate(mix, rate)
            mean = mix.astype(np.float64).mean(axis=0).mean() if mix.ndim == 2 else mix.mean()
            for gain, name in zip(gains, separator.sources, strict=True):
                assert stems[name].shape == mix.shape and stems[name].dtype == np.float32
                want = gain * (mix - mean) + mean
                # The tones start and stop abruptly: the resampler rings for a few ms at both ends (-60 dB if
                # included), which is the signal's fault, not the pipeline's; compare the rest.
                core = (..., slice(200, -200))
                _, db = error_report(
                    f"stand-in {name} at {rate} Hz, shape {mix.shape}", stems[name][core], want[core], -110
                )
                assert db < (-110 if rate != SR else -130)  # measured -129 dB through soxr and back, -144 without


def test_edge_case_audio_is_separated(tiny_pair):
    _, _, model = tiny_pair
    separator = make(model)
    rng = np.random.default_rng(0)
    cases = {
        "silence": np.zeros((2, 3000), np.float32),
        "dc": np.full((2, 3000), 0.3, np.float32),
        "clipped": np.clip(5 * music_like(3000, 2, seed=6), -1, 1),
        "one sample": rng.uniform(-1, 1, (2, 1)).astype(np.float32),
        "one mono sample": np.array([0.5], np.float32),
    }
    for name, mix in cases.items():
        stems = separator.separate(mix, SR)
        for stem in stems.values():
            assert stem.shape == mix.shape and np.isfinite(stem).all(), name
    silence = separator.separate(cases["silence"], SR)
    assert max(np.abs(s).max() for s in silence.values()) < 1e-6  # silence in, (numerically) silence out
    dc = separator.separate(cases["dc"], SR)  # normalised to zeros; demucs adds the mix's mean to every stem
    for stem in dc.values():
        np.testing.assert_allclose(stem, 0.3, atol=1e-6)


@pytest.mark.parametrize(
    "mix,message",
    [
        (np.full((2, 10), np.nan, np.float32), "<array>: contains NaN or infinite samples"),
        (np.zeros((3, 100), np.float32), "<array>: 3 channels is not supported \\(this model separates mono or stereo"),
        (np.zeros((2, 0), np.float32), "<array>: no audio samples"),
        (np.zeros((1, 2, 3), np.float32), "<array>: expected \\(channels, samples\\)"),
    ],
)
def test_bad_arrays_raise_one_line_audio_errors(tiny_pair, mix, message):
    _, _, model = tiny_pair
    with pytest.raises(AudioError, match=message) as info:
        make(model).separate(mix, SR)
    assert "\n" not in str(info.value)


def test_bfloat16_stays_close_to_float32(tiny_pair):
    config, _, model = tiny_pair
    mix = music_like(SEGMENT, 2, seed=8)
    full = make(model).separate(mix, SR)
    half = make(FlaxHDemucs(config, dtype=jnp.bfloat16, params=model.params))
    assert half.dtype == jnp.bfloat16  # the compute dtype is the model's
    _, db = error_report(
        "bfloat16 vs float32 separator", stack(half.separate(mix, SR), config.sources), stack(full, config.sources), -40
    )
    assert db < -40  # measured -51 dB: bfloat16 keeps 8 bits of mantissa


def test_separate_file_streams_the_same_result(tiny_pair, tmp_path):
    """separate_file (streamed from and to disk, float32 stems, no clipping) equals separate() on the array,
    and --two-stems' add / minus complements are what they say."""
    config, _, model = tiny_pair
    separator = make(model, batch_size=2)
    mix = music_like(70000, 2, seed=9, sample_rate=48000)
    song = write_audio(tmp_path / "song.wav", mix, 48000, subtype="FLOAT")
    in_memory = separator.separate(read_audio(song)[0], 48000)
    paths = separate_file(separator, song, tmp_path / "out", subtype="FLOAT", clip_mode="none")
    assert sorted(paths) == sorted(config.sources)
    for name, path in paths.items():
        assert path == tmp_path / "out" / "song" / f"{name}.wav"
        stem, rate = read_audio(path)
        assert rate == 48000
        np.testing.assert_array_equal(stem, in_memory[name])
    add = separate_file(separator, song, tmp_path / "add", two_stems="vocals", subtype="FLOAT", clip_mode="none")
    no_vocals = read_audio(add["no_vocals"])[0]
    others = sum(in_memory[n] for n in config.sources if n != "vocals")
    error_report("no_vocals (add)", no_vocals, others, -120)
    np.testing.assert_allclose(no_vocals, others, atol=1e-6)
    minus = separate_file(
        separator, song, tmp_path / "minus", two_stems="vocals", other_method="minus", subtype="FLOAT", clip_mode="none"
    )
    np.testing.assert_allclose(read_audio(minus["no_vocals"])[0], mix - in_memory["vocals"], atol=1e-6)
    none = separate_file(separator, song, tmp_path / "none", two_stems="vocals", other_method="none")
    assert list(none) == ["vocals"]


@pytest.mark.parametrize("mode", ["rescale", "clamp", "none"])
def test_clip_modes(tiny_pair, tmp_path, mode):
    _, _, model = tiny_pair
    separator = with_stand_in(model, [3.0, 1.0, 0.1, 0.0])
    # music_like peaks near 0.5: the input near 0.6, the stand-in's "drums" (3 x) near 1.8, beyond full scale
    song = write_audio(tmp_path / "loud.wav", 1.2 * music_like(20000, 2, seed=10), SR, subtype="PCM_16")
    paths = separate_file(separator, song, tmp_path, filename="{stem}.{ext}", clip_mode=mode)
    loud, quiet = read_audio(paths["drums"])[0], read_audio(paths["other"])[0]
    peak = np.abs(loud).max()
    if mode == "rescale":  # demucs: divide by max(1.01 * peak, 1)
        assert 0.985 < peak <= 1 / 1.01 + 1e-6
        assert np.abs(quiet).max() < 0.1  # a stem within range is left alone
    elif mode == "clamp":
        assert abs(peak - 0.99) < 1e-4
    else:  # integer samples saturate at full scale
        assert peak > 0.999
    assert sf.info(paths["drums"]).subtype == "PCM_16"  # the input's bit depth
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bass.wav",
        "drums.wav",
        "loud.wav",
        "other.wav",
        "vocals.wav",
    ]
