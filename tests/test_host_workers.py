"""Host workers around the network (`io_workers`): the stems are the same bit for bit whatever their number; the
next file is decoded and the last one's stems encoded while the network runs on this one (shown by the order of
logged events, not by timings); what is read ahead is bounded; a compressed file is decoded once, its samples
kept within a memory limit and the rest in a temporary file that nothing outlives; a signal with workers busy
leaves no partial file."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from modeling_hdemucs_flax import OutputOptions, Separator, read_audio, write_audio
from modeling_hdemucs_flax.io.audio_io import StemWriter
from modeling_hdemucs_flax.io.decoded_cache import DecodedOnce
from modeling_hdemucs_flax.separation import file_output as file_output_module
from modeling_hdemucs_flax.separation.file_output import separate_files
from modeling_hdemucs_flax.separation.separator import READ_AHEAD_BLOCKS

from .audio_files import write_song
from .conftest import SEGMENT_SECONDS, SOURCES
from .flows import REPO_ROOT
from .reference import music_like
from .separation_helpers import AffineStandIn, EventLog


def stand_in(model_separator: Separator) -> AffineStandIn:
    """A network whose output depends on its input (source i = (i + 1) x + i / 10): any change in what reaches it
    or in how its output is blended changes the stems."""
    gains, offsets = [1.0 + i for i in range(len(SOURCES))], [i / 10 for i in range(len(SOURCES))]
    return AffineStandIn(gains, offsets, model_separator.input_shape, poison=False)


def separator_for(tiny_pair, **options) -> Separator:
    plain = Separator(tiny_pair[2], segment=SEGMENT_SECONDS, **options)
    return Separator(tiny_pair[2], segment=SEGMENT_SECONDS, forward=stand_in(plain), **options)


def corpus(folder: Path) -> list[Path]:
    """Formats, rates, channel counts and lengths, and one file that fails partway through decoding."""
    songs = [
        write_song(folder / "a.wav", 7.0, 44100, 2, subtype="PCM_16"),
        write_song(folder / "b.flac", 3.3, 22050, 1, subtype="PCM_24"),
        write_song(folder / "short.wav", 0.2, 48000, 2, subtype="FLOAT"),
    ]
    mp3 = folder / "c.mp3"
    write_audio(mp3, 0.5 * music_like(int(5.5 * 48000), 2, seed=3, sample_rate=48000), 48000)
    broken = write_song(folder / "broken.flac", 12.0, 44100, 2)
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2])  # decodes for about 6 s, then fails
    return [songs[0], mp3, broken, songs[1], songs[2]]


def digests(results, out: Path) -> dict[str, str | None]:
    """{input name: sha256 of its stems' decoded samples, or None if it failed}; and nothing else under `out` but
    stems. (Samples, not bytes: libsndfile stamps a float WAV's PEAK chunk with the time it was written.)"""
    found = {}
    for result in results:
        if result.error is not None:
            found[result.path.name] = None
            continue
        joined = hashlib.sha256()
        for stem in sorted(result.stems):
            samples, rate = read_audio(result.stems[stem])
            joined.update(np.ascontiguousarray(samples).tobytes() + str(rate).encode())
        found[result.path.name] = joined.hexdigest()
    leftovers = [p for p in out.rglob("*") if p.is_file() and (p.name.startswith(".") or p.suffix == ".partial")]
    assert not leftovers, leftovers
    return found


@pytest.mark.parametrize(
    "options",
    [
        OutputOptions(ext="flac"),
        OutputOptions(ext="mp3"),
        OutputOptions(ext="wav", two_stems="vocals", other_method="minus"),
    ],
    ids=["flac", "mp3", "minus"],
)
def test_stems_are_bit_identical_with_1_2_and_4_host_workers(tiny_pair, tmp_path, options):
    songs = corpus(tmp_path / "in")
    separator = separator_for(tiny_pair, batch_size=2)
    runs = {}
    for workers in (1, 2, 4):
        out = tmp_path / f"out{workers}"
        runs[workers] = digests(list(separate_files(separator, songs, out, options, io_workers=workers)), out)
    assert runs[1] == runs[2] == runs[4], runs
    failed = sorted(name for name, digest in runs[1].items() if digest is None)
    assert failed == ["broken.flac"], runs[1]
    assert not (tmp_path / "out4" / "broken").exists()


def test_a_compressed_file_is_decoded_once_and_a_wav_read_twice(tiny_pair, tmp_path, monkeypatch):
    """The mix statistics and the separation read a file twice: an MP3 is decoded once (its samples replayed),
    a WAV read again (a copy, cheaper than keeping it)."""
    decodes: list[str] = []
    real = file_output_module.iter_audio_blocks

    def counting(info, *args, **kwargs):
        decodes.append(info.path.name)
        return real(info, *args, **kwargs)

    monkeypatch.setattr(file_output_module, "iter_audio_blocks", counting)
    songs = corpus(tmp_path / "in")
    plain = [s for s in songs if s.name != "broken.flac"]
    list(separate_files(separator_for(tiny_pair), plain, tmp_path / "out", OutputOptions(), io_workers=2))
    assert {name: decodes.count(name) for name in decodes} == {"a.wav": 2, "c.mp3": 1, "b.flac": 1, "short.wav": 2}


def test_decoded_samples_past_the_memory_limit_go_to_a_temporary_file_that_nothing_outlives(tmp_path):
    rng = np.random.default_rng(0)
    blocks = [rng.standard_normal((2, n)).astype(np.float32) for n in (1000, 700, 1000, 3)]
    spill = tmp_path / "spill"
    spill.mkdir()
    decoded = DecodedOnce(lambda: iter(blocks), memory_limit=10_000, spill_dir=spill)
    first = [b.copy() for b in decoded()]
    replay, second = decoded(), decoded()  # two readers at once (the separation and a "minus" stem's mix)
    for expected, a, b in zip(blocks, replay, second, strict=True):
        np.testing.assert_array_equal(a, expected)
        np.testing.assert_array_equal(b, expected)
        assert not a.flags.writeable
    assert [b.shape for b in first] == [b.shape for b in blocks]
    assert decoded.spilled_bytes == 4 * 2 * (700 + 1000 + 3)  # the first block fits in 10,000 bytes
    assert list(spill.iterdir()) == []  # unlinked at creation: no name to leave behind
    decoded.close()


def test_a_first_pass_that_stops_early_keeps_nothing(tmp_path):
    calls = []

    def decode():
        calls.append(1)
        yield np.ones((1, 4), np.float32)
        yield np.ones((1, 4), np.float32)

    decoded = DecodedOnce(decode)
    next(decoded())  # abandoned after one block
    assert [b.shape for b in decoded()] == [(1, 4), (1, 4)] and len(calls) == 2
    assert [b.shape for b in decoded()] == [(1, 4), (1, 4)] and len(calls) == 2


def test_the_next_file_is_decoded_and_the_last_one_encoded_while_the_network_runs(tiny_pair, tmp_path, monkeypatch):
    """Three files, two host workers: file 2's decoding (its mix statistics pass) and the encoding of file 0's
    stems both start before the network has computed the third batch of file 1, and each holds on until it has
    (or the log's 3 s wait passes): so the network goes on while they run. Without host workers both run on the thread
    that feeds the network: file 2 is decoded only once file 1 is done, and while file 0's stems are encoded the
    network gets no new batch, so neither can wait out the third batch."""
    log = EventLog()
    paths = [write_song(tmp_path / "in" / f"{i}.wav", 4.0, 44100, 2, subtype="PCM_16") for i in range(3)]
    separator = separator_for(tiny_pair)
    per_file = separator.chunks_total(4 * 44100, 44100)
    third_of_file_1 = ("network end", (1, per_file + 2))
    network = separator.forward
    calls = []

    def forward(batch):
        k = len(calls)
        calls.append(k)
        log.add("network start", (k // per_file, k))
        output = network(batch)
        log.add("network end", (k // per_file, k))
        return output

    real_read = file_output_module.iter_audio_blocks
    opened: set[str] = set()

    def logged_read(info, *args, **kwargs):
        first = info.path.name not in opened  # the first pass: the mix statistics, when the file is opened
        opened.add(info.path.name)
        if first and info.path.name == "2.wav":
            log.add("decode start", "2.wav")
            log.wait_for(third_of_file_1)
        yield from real_read(info, *args, **kwargs)
        if first:
            log.add("decoded", info.path.name)

    real_close = StemWriter.close

    def logged_close(self):
        if self.path.parent.name == "0":
            log.add("encode start", self.path.name)
            log.wait_for(third_of_file_1)
        real_close(self)
        log.add("encode end", self.path.name)

    monkeypatch.setattr(file_output_module, "iter_audio_blocks", logged_read)
    monkeypatch.setattr(StemWriter, "close", logged_close)
    separator.forward = forward
    results = list(separate_files(separator, paths, tmp_path / "out", OutputOptions(), io_workers=2))
    assert all(r.error is None for r in results) and len(calls) == 3 * per_file
    third = log.position(third_of_file_1)
    assert log.position(("decode start", "2.wav")) < third < log.position(("decoded", "2.wav")), log.events
    assert log.position(("encode start", "drums.wav")) < third < log.position(("encode end", "drums.wav")), log.events


def test_what_is_read_ahead_is_bounded_however_many_workers(tiny_pair, tmp_path, monkeypatch):
    """Eight host workers, six long files, a network that stalls on its first batch: the files opened ahead and
    the blocks decoded ahead stop at their bounds (one file opened past the one in the network; READ_AHEAD_BLOCKS
    blocks plus the one being made), whatever the wait."""
    paths = [write_song(tmp_path / "in" / f"{i}.wav", 30.0, 44100, 2, subtype="PCM_16") for i in range(6)]
    separator = separator_for(tiny_pair)
    network = separator.forward
    blocks_read: dict[str, int] = {}
    real_read = file_output_module.iter_audio_blocks

    def counted_read(info, *args, **kwargs):
        name = info.path.name
        passes = blocks_read.setdefault(name, 0)
        for block in real_read(info, *args, **kwargs):
            blocks_read[name] += 1
            yield block
        del passes

    snapshot = {}

    def forward(batch):
        if not snapshot:
            time.sleep(1.5)  # long enough for every reader to fill its queue
            snapshot.update(blocks_read)
        return network(batch)

    monkeypatch.setattr(file_output_module, "iter_audio_blocks", counted_read)
    separator.forward = forward
    list(separate_files(separator, paths, tmp_path / "out", OutputOptions(), io_workers=8))
    opened = sorted(snapshot)
    assert opened == ["0.wav", "1.wav"], snapshot
    blocks_per_pass = -(-30 * 44100 // 65536)
    # file 0: its statistics pass whole, then the separation pass at most the read-ahead (+1 in the making, +2
    # for the schedule's first chunk) blocks in
    assert snapshot["0.wav"] <= blocks_per_pass + READ_AHEAD_BLOCKS + 3, snapshot


def test_a_signal_with_host_workers_busy_leaves_no_partial_file(tiny_checkpoint_dir, jax_cache, tmp_path):
    """`separate` of four files with four host workers, stopped by SIGTERM once the first file's stems are being
    written: exit 143, no temporary left, and every stem that exists belongs to a complete set of four."""
    songs = [write_song(tmp_path / "in" / f"{i}.wav", 20.0, 44100, 2, subtype="PCM_16") for i in range(4)]
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu"}
    command = [
        sys.executable, "-m", "modeling_hdemucs_flax", "separate", *map(str, songs), "-o", str(out), "-q",
        "--model", str(tiny_checkpoint_dir), "--segment", str(SEGMENT_SECONDS), "--compilation-cache",
        str(jax_cache), "--io-workers", "4", "--flac",
    ]  # fmt: skip
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        if out.exists() and any(".partial" in p.name or p.name.startswith(".") for p in out.rglob("*")):
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, stderr.decode()[-2000:]
    files = [p for p in out.rglob("*") if p.is_file()] if out.exists() else []
    assert not [p for p in files if p.suffix != ".flac" or p.name.startswith(".")], files
    for folder in {p.parent for p in files}:
        stems = sorted(p.stem for p in folder.iterdir())
        assert stems == sorted(SOURCES), (folder, stems)
        assert all(sf.info(folder / f"{s}.flac").frames == 20 * 44100 for s in stems)
