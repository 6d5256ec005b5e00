"""Reading and writing audio files: the only module that touches them.

Arrays are float32 (channels, samples) with samples in [-1, 1] for integer formats. Reading is streamed in
blocks so a song is never held whole unless asked for (`read_audio`). Writing is atomic: data goes to a
temporary name in the destination folder and is renamed over the final name only when complete, so a
failure never leaves a partial file under the final name.

Every problem with a file is an `AudioError` whose message is one line: the file, a colon, the problem.
Stems are written by `StemWriter`, which also applies a clip mode (demucs's `prevent_clip`) on the way.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from .errors import AudioError, AudioFormatError, OptionError, one_line

# Extensions taken from a folder given on the command line (lower case, with the dot).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff")

# Output formats: extension -> (libsndfile format, subtypes it can hold, subtype used for compressed input).
OUTPUT_FORMATS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "wav": ("WAV", ("PCM_16", "PCM_24", "PCM_32", "FLOAT"), "PCM_16"),
    "flac": ("FLAC", ("PCM_16", "PCM_24"), "PCM_16"),
    "mp3": ("MP3", ("MPEG_LAYER_III",), "MPEG_LAYER_III"),
    "ogg": ("OGG", ("VORBIS",), "VORBIS"),
}

# MPEG-1/2/2.5 layer III can only carry these rates (libsndfile refuses others when the file is opened).
MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)

# A decoded MP3 may hold slightly fewer samples than the frame count libsndfile estimates from its header
# (encoder delay, last-frame padding): up to two MPEG frames of 1,152 samples is not called truncation.
_MP3_FRAME_SLACK = 2 * 1152

# libsndfile's header log reports a chunk whose declared size exceeds the file as "data : 176400 (should be 88178)".
_SHORT_CHUNK = re.compile(r"^\s*(data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says. `frames` is samples per channel; `subtype` is libsndfile's (e.g. PCM_16)."""

    path: Path
    frames: int
    sample_rate: int
    channels: int
    format: str
    subtype: str

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.frames / self.sample_rate


def _libsndfile_problem(error: BaseException) -> str:
    # libsndfile prefixes "Error opening '<path>': "; the caller names the file already.
    return re.sub(r"^Error opening '.*?':\s*", "", one_line(error)) or type(error).__name__


def _looks_like_mp3(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(3)
    return head == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


@contextlib.contextmanager
def _quiet_c_stderr(enabled: bool):
    """Silence the C-level stderr for the duration (libmpg123 prints warnings about damaged MP3 files there,
    e.g. "Xing stream size off by more than 1%", on top of the error libsndfile returns). Only wraps single
    open/read calls, so Python's own output is never hidden."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def inspect_audio(path: str | os.PathLike) -> AudioInfo:
    """Open `path`'s header and check it describes usable audio (exists, a file, not empty, a format
    libsndfile reads, at least one frame, no data chunk promising more bytes than the file holds)."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if not path.is_file():
        raise AudioError(f"{path}: not a regular file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        with _quiet_c_stderr(_looks_like_mp3(path)), sf.SoundFile(path) as handle:
            info = AudioInfo(path, handle.frames, handle.samplerate, handle.channels, handle.format, handle.subtype)
            log = handle.extra_info
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        raise AudioFormatError(f"{path}: not a readable audio file ({_libsndfile_problem(error)})") from None
    for match in _SHORT_CHUNK.finditer(log):
        declared, present = int(match.group(2)), int(match.group(3))
        if present < declared:
            raise AudioError(f"{path}: truncated file (header declares {declared} data bytes, file holds {present})")
    if info.frames <= 0:
        raise AudioError(f"{path}: no audio samples (0 frames)")
    if info.channels <= 0:
        raise AudioError(f"{path}: no audio channels")
    return info


def iter_audio_blocks(info: AudioInfo, blocksize: int = 65536) -> Iterator[np.ndarray]:
    """Yield the file's samples as float32 blocks of shape (channels, <= blocksize), in order.

    Raises `AudioError` when decoding fails or the file ends before the frame count in its header
    (a truncated file). A fresh call starts again from the first sample.
    """
    read = 0
    quiet = info.format == "MP3"
    try:
        with _quiet_c_stderr(quiet):
            handle = sf.SoundFile(info.path)
        with handle:
            while True:
                with _quiet_c_stderr(quiet):
                    block = handle.read(blocksize, dtype="float32", always_2d=True)
                if block.shape[0] == 0:
                    break
                read += block.shape[0]
                yield np.ascontiguousarray(block.T)  # file layout (samples, channels) -> (channels, samples)
    except sf.LibsndfileError as error:
        raise AudioError(
            f"{info.path}: cannot decode audio after {read} of {info.frames} frames "
            f"(truncated or corrupt: {_libsndfile_problem(error)})"
        ) from None
    slack = _MP3_FRAME_SLACK if info.format == "MP3" else 0
    if read < info.frames - slack:
        raise AudioError(f"{info.path}: truncated file (header promises {info.frames} frames, file holds {read})")


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """The whole file: (float32 (channels, samples), sample rate in Hz). Non-finite samples are an error."""
    info = inspect_audio(path)
    audio = np.concatenate(list(iter_audio_blocks(info)), axis=1)
    if not np.isfinite(audio).all():
        raise AudioError(f"{info.path}: contains NaN or infinite samples")
    return audio, info.sample_rate


def output_subtype(ext: str, input_subtype: str | None = None, requested: str | None = None) -> str:
    """The libsndfile subtype for a stem written as `ext`.

    `requested` (e.g. "PCM_24", "FLOAT") wins and must fit the format. Otherwise the input's bit depth is
    kept where the format can hold it (float input written as FLAC becomes 24-bit), and compressed or exotic
    input gets the format's default.
    """
    if ext not in OUTPUT_FORMATS:
        raise OptionError("ext", ext, f"unknown output format; choose one of {', '.join(OUTPUT_FORMATS)}")
    _, subtypes, default = OUTPUT_FORMATS[ext]
    if requested is not None:
        if requested not in subtypes:
            raise OptionError("subtype", requested, f"{ext} files cannot hold it (possible: {', '.join(subtypes)})")
        return requested
    if input_subtype in subtypes:
        return input_subtype
    if input_subtype in ("FLOAT", "DOUBLE", "PCM_32") and "PCM_24" in subtypes:
        return "FLOAT" if "FLOAT" in subtypes else "PCM_24"
    return default


def check_output_format(path: str | os.PathLike, ext: str, subtype: str, sample_rate: int, channels: int) -> None:
    """Raise `AudioError` (naming `path`) if a file of this format cannot be written."""
    fmt = OUTPUT_FORMATS[ext][0]
    if fmt == "MP3" and sample_rate not in MP3_SAMPLE_RATES:
        raise AudioError(
            f"{path}: MP3 cannot store {sample_rate} Hz audio (possible rates: "
            f"{', '.join(map(str, MP3_SAMPLE_RATES))}); choose another output format"
        )
    if not sf.check_format(fmt, subtype):
        raise AudioError(f"{path}: this libsndfile cannot write {fmt} {subtype}")
    if channels not in (1, 2) and fmt in ("MP3",):
        raise AudioError(f"{path}: MP3 holds 1 or 2 channels, not {channels}")


class AtomicAudioWriter:
    """Stream blocks into `path` through a temporary file in the same folder; `commit()` renames it into
    place, `abort()` (or leaving a `with` block by an exception) deletes it.

    Parent folders are created. Blocks are float (channels, samples); integer subtypes clip at ±1 (libsndfile).
    """

    def __init__(self, path: str | os.PathLike, sample_rate: int, channels: int, subtype: str, ext: str | None = None):
        self.path = Path(path)
        ext = ext or self.path.suffix.lstrip(".").lower()
        if ext not in OUTPUT_FORMATS:
            raise AudioError(f"{self.path}: unknown output format {ext!r}")
        fmt = OUTPUT_FORMATS[ext][0]
        check_output_format(self.path, ext, subtype, sample_rate, channels)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".partial", dir=self.path.parent)
            os.close(handle)
        except OSError as error:
            raise AudioError(f"{self.path.parent}: cannot write to output folder ({error.strerror or error})") from None
        self.temp_path = Path(temp)
        self.frames = 0
        try:
            self._file = sf.SoundFile(
                self.temp_path, "w", samplerate=sample_rate, channels=channels, format=fmt, subtype=subtype
            )
        except (sf.LibsndfileError, RuntimeError) as error:
            self.temp_path.unlink(missing_ok=True)
            raise AudioError(
                f"{self.path}: cannot write {fmt} {subtype} at {sample_rate} Hz ({_libsndfile_problem(error)})"
            ) from None

    def write(self, block: np.ndarray) -> None:
        """Append float (channels, samples)."""
        try:
            self._file.write(np.ascontiguousarray(np.asarray(block, np.float32).T))
        except (sf.LibsndfileError, RuntimeError, OSError) as error:
            raise AudioError(f"{self.path}: write failed ({_libsndfile_problem(error)})") from None
        self.frames += block.shape[-1]

    def close(self) -> Path:
        """Finish the file under its temporary name (it can be read back there); `commit()` or `abort()` follow.
        Returns the temporary path."""
        if not self._file.closed:
            try:
                self._file.close()
            except (sf.LibsndfileError, RuntimeError, OSError) as error:
                raise AudioError(f"{self.path}: cannot finish writing ({_libsndfile_problem(error)})") from None
        return self.temp_path

    def commit(self) -> Path:
        """Close the temporary file and rename it to `path`. Returns `path`."""
        try:
            self.close()
            os.replace(self.temp_path, self.path)
        except (AudioError, OSError) as error:
            self.abort()
            if isinstance(error, AudioError):
                raise
            raise AudioError(f"{self.path}: cannot finish writing ({error.strerror or error})") from None
        return self.path

    def abort(self) -> None:
        """Discard the temporary file (idempotent)."""
        if not self._file.closed:
            try:
                self._file.close()
            except (sf.LibsndfileError, RuntimeError, OSError):
                pass
        self.temp_path.unlink(missing_ok=True)

    def __enter__(self) -> AtomicAudioWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is not None:
            self.abort()


CLIP_MODES = ("rescale", "clamp", "none")
_CLAMP = 0.99  # demucs's `prevent_clip(mode="clamp")` bound


class StemWriter:
    """An `AtomicAudioWriter` that keeps a stem within full scale with one of demucs's clip modes:

    - "rescale": divide the whole stem by 1.01 x its peak when that exceeds 1 (the peak is known only at the
      end, so samples go to a hidden float32 WAV beside `path` first and are converted on `close()`);
    - "clamp": clip every sample to ±0.99;
    - "none": leave samples alone (integer formats then saturate at full scale).

    `close()` finishes the final file under a temporary name (where a failure can still be undone), `commit()`
    renames it into place, `abort()` removes every temporary. `peak` is the largest |sample| written so far.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sample_rate: int,
        channels: int,
        subtype: str,
        ext: str | None = None,
        clip_mode: str = "rescale",
    ):
        if clip_mode not in CLIP_MODES:
            raise OptionError("clip_mode", clip_mode, f"must be one of {', '.join(CLIP_MODES)}")
        self.path, self.clip_mode, self.peak = Path(path), clip_mode, 0.0
        ext = ext or self.path.suffix.lstrip(".").lower()
        self._final_format = (sample_rate, channels, subtype, ext)
        self._staging: AtomicAudioWriter | None = None
        self._final: AtomicAudioWriter | None = None
        if clip_mode == "rescale":
            check_output_format(self.path, ext, subtype, sample_rate, channels)  # fail before staging anything
            staging = self.path.with_name(f".{self.path.name}.float.wav")
            self._staging = AtomicAudioWriter(staging, sample_rate, channels, "FLOAT", "wav")
        else:
            self._final = AtomicAudioWriter(self.path, *self._final_format)

    def write(self, block: np.ndarray) -> None:
        """Append float (channels, samples)."""
        self.peak = max(self.peak, float(np.abs(block).max(initial=0.0)))
        if self._staging is not None:
            self._staging.write(block)
            return
        assert self._final is not None  # every mode but "rescale" writes the final file directly
        if self.clip_mode == "clamp":
            self._final.write(np.clip(block, -_CLAMP, _CLAMP))
        else:
            self._final.write(block)

    def close(self) -> None:
        """Finish the stem under its temporary name (for "rescale": scale the staged samples into it)."""
        if self._staging is not None and self._final is None:
            staged = inspect_audio(self._staging.close())
            self._final = AtomicAudioWriter(self.path, *self._final_format)
            gain = np.float32(1.0 / max(1.01 * self.peak, 1.0))
            for block in iter_audio_blocks(staged):
                self._final.write(block * gain)
            self._staging.abort()
        assert self._final is not None
        self._final.close()

    def commit(self) -> Path:
        """`close()` if needed, then rename the stem into place. Returns `path`."""
        try:
            self.close()
        except BaseException:
            self.abort()
            raise
        assert self._final is not None
        return self._final.commit()

    def abort(self) -> None:
        """Discard every temporary file (idempotent)."""
        for writer in (self._staging, self._final):
            if writer is not None:
                writer.abort()


def write_audio(path: str | os.PathLike, audio: np.ndarray, sample_rate: int, subtype: str | None = None) -> Path:
    """Write float (channels, samples) to `path` atomically; the format comes from the extension and
    `subtype=None` means the format's default (16-bit for WAV/FLAC)."""
    path = Path(path)
    audio = np.asarray(audio, np.float32)
    if audio.ndim == 1:
        audio = audio[None]
    ext = path.suffix.lstrip(".").lower()
    subtype = output_subtype(ext, requested=subtype) if ext in OUTPUT_FORMATS else subtype
    writer = AtomicAudioWriter(path, sample_rate, audio.shape[0], subtype or "PCM_16", ext)
    with writer:
        writer.write(audio)
    return writer.commit()
