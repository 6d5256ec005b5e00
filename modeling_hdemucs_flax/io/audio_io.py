"""Reading and writing audio files: the only module that touches them.

Arrays are float32 (channels, samples) with samples in [-1, 1] for integer formats. Reading is streamed in
blocks so a song is never held whole unless asked for (`read_audio`). Writing is atomic: data goes to a
temporary name in the destination folder and is renamed over the final name only when complete, so a
failure never leaves a partial file under the final name.

Decoders: libsndfile (soundfile) for what it reads (WAV, FLAC, Ogg Vorbis/Opus, MP3, AIFF, ...), and FFmpeg's
libraries through PyAV for everything else (m4a/AAC, WMA, WebM, video containers' audio), block by block like
the rest. MP3 is written through PyAV's LAME encoder (bitrate and LAME preset); WAV, FLAC and Ogg through
libsndfile.

Every problem with a file is an `AudioError` whose message is one line: the file, a colon, the problem.
Stems are written by `StemWriter`, which also applies a clip mode (demucs's `prevent_clip`) on the way.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..errors import AudioError, AudioFormatError, AudioTooLongError, OptionError, one_line
from ..io import tempfiles

# Extensions taken from a folder given on the command line (lower case, with the dot): what libsndfile reads,
# then what FFmpeg (PyAV) reads when libsndfile cannot: AAC/ALAC in MP4, WMA, WebM/Matroska, video containers.
SNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".caf", ".w64")
PYAV_EXTENSIONS = (".m4a", ".m4b", ".mp4", ".aac", ".alac", ".wma", ".asf", ".webm", ".weba", ".mka", ".mkv", ".mov")
PYAV_EXTENSIONS += (".avi", ".ac3", ".eac3", ".dts", ".wv", ".ape", ".amr", ".3gp", ".mp2", ".mpc", ".tta", ".ra")
AUDIO_EXTENSIONS = SNDFILE_EXTENSIONS + PYAV_EXTENSIONS

PARTIAL_SUFFIX = ".partial"  # the suffix of the writers' temporary files (see `sweep_partial_files`)

# Output formats: extension -> (libsndfile format, subtypes it can hold, subtype used for compressed input).
OUTPUT_FORMATS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "wav": ("WAV", ("PCM_16", "PCM_24", "PCM_32", "FLOAT"), "PCM_16"),
    "flac": ("FLAC", ("PCM_16", "PCM_24"), "PCM_16"),
    "mp3": ("MP3", ("MPEG_LAYER_III",), "MPEG_LAYER_III"),
    "ogg": ("OGG", ("VORBIS",), "VORBIS"),
}

# What users call the formats and libsndfile's sample formats (messages use these words, not libsndfile's).
FORMAT_NAMES = {"wav": "WAV", "flac": "FLAC", "mp3": "MP3", "ogg": "Ogg Vorbis"}
SAMPLE_FORMAT_NAMES = {
    "PCM_16": "16-bit integer",
    "PCM_24": "24-bit integer",
    "PCM_32": "32-bit integer",
    "FLOAT": "32-bit float",
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
    """What a file's header says. `frames` is samples per channel; `subtype` is libsndfile's (e.g. PCM_16) or,
    for files FFmpeg decodes, the codec's name (e.g. AAC). `decoder` is "libsndfile" or "pyav"; for "pyav"
    `frames` is the container's estimate (decoders may drop or add a few priming samples)."""

    path: Path
    frames: int
    sample_rate: int
    channels: int
    format: str
    subtype: str
    decoder: str = "libsndfile"

    @property
    def duration(self) -> float:
        """Seconds."""
        return self.frames / self.sample_rate


def _libsndfile_problem(error: BaseException) -> str:
    # libsndfile prefixes "Error opening '<path>': "; the caller names the file already.
    return re.sub(r"^Error opening '.*?':\s*", "", one_line(error)) or type(error).__name__


def _ffmpeg_problem(error: BaseException) -> str:
    # PyAV appends ": '<path>'" to FFmpeg's message, and an errno in brackets before it.
    text = re.sub(r"^\[Errno -?\d+\]\s*", "", one_line(error))
    return re.sub(r":\s*'[^']*'$", "", text) or type(error).__name__


def _looks_like_mp3(path: Path) -> bool:
    with open(path, "rb") as handle:
        head = handle.read(3)
    return head == b"ID3" or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


# fd 2 is process-wide: concurrent MP3 reads share one redirection (the first in saves and redirects, the last
# out restores), all under this lock, so no reader can ever save /dev/null as "the real stderr".
_QUIET_LOCK = threading.Lock()
_quiet_users = 0
_saved_stderr: int | None = None


@contextlib.contextmanager
def _quiet_c_stderr(enabled: bool):
    """Silence the C-level stderr for the duration (libmpg123 prints warnings about damaged MP3 files there,
    e.g. "Xing stream size off by more than 1%", on top of the error libsndfile returns). Only wraps single
    open/read calls, so Python's own output is hardly ever hidden; safe from any number of threads."""
    global _quiet_users, _saved_stderr
    if not enabled:
        yield
        return
    with _QUIET_LOCK:
        if _quiet_users == 0:
            sys.stderr.flush()
            saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.close(devnull)
            _saved_stderr = saved
        _quiet_users += 1
    try:
        yield
    finally:
        with _QUIET_LOCK:
            _quiet_users -= 1
            if _quiet_users == 0 and _saved_stderr is not None:
                os.dup2(_saved_stderr, 2)
                os.close(_saved_stderr)
                _saved_stderr = None


# A streamed WAV (`ffmpeg ... -f wav pipe:`) cannot seek back to fill in its sizes and leaves 0xFFFFFFFF:
# "unknown, read to the end". libsndfile does exactly that; it is not a truncated file.
_UNKNOWN_SIZE = 0xFFFFFFFF

# A stream decoded by FFmpeg may end a little before the container's duration estimate (encoder padding, the
# last frame of WMA/AAC): this much shortfall is not called truncation.
_PYAV_SLACK_FRAMES, _PYAV_SLACK_FRACTION = 8192, 0.02


def inspect_audio(path: str | os.PathLike) -> AudioInfo:
    """Open `path`'s header and check it describes usable audio (exists, a file, not empty, a format
    libsndfile or FFmpeg reads, at least one frame, no data chunk promising more bytes than the file holds)."""
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
        info = _inspect_with_pyav(path)
        if info is None:
            raise AudioFormatError(f"{path}: not a readable audio file ({_libsndfile_problem(error)})") from None
        log = ""
    if info.subtype == "OPUS":
        # libsndfile 1.2.2 decodes Ogg Opus wrongly: samples depend on the read size (errors of 0.7 after the
        # first block of a 5,000-frame read) and the encoder's pre-skip is not removed. FFmpeg's is right.
        info = _inspect_with_pyav(path) or info
    for match in _SHORT_CHUNK.finditer(log):
        declared, present = int(match.group(2)), int(match.group(3))
        if present < declared and declared != _UNKNOWN_SIZE:
            raise AudioError(f"{path}: truncated file (header declares {declared} data bytes, file holds {present})")
    if info.frames <= 0:
        raise AudioError(f"{path}: no audio samples (0 frames)")
    if info.channels <= 0:
        raise AudioError(f"{path}: no audio channels")
    if info.sample_rate <= 0:
        raise AudioError(f"{path}: invalid sample rate {info.sample_rate} Hz")
    return info


# FFmpeg demuxers that read one file holding its own streams: everything `PYAV_EXTENSIONS` names (mov covers
# mp4/m4a/3gp, matroska covers webm/mka/mkv) plus the formats libsndfile usually takes first. FFmpeg probes the
# content, not the name, and some of its demuxers open other files or URLs: hls and dash (the playlist's
# segments: `file:///etc/...` or `../`), concat (`ffconcat version 1.0` in a file named `x.wav` pulls in its
# siblings; one naming itself recurses until the process runs out of files or stack), image2 (file patterns),
# the tee/rtsp/rtp/sdp family. Only the demuxers below are ever used, and only the plain-file protocol.
_PYAV_DEMUXERS = (
    "mov", "matroska", "ogg", "mp3", "aac", "wav", "w64", "flac", "aiff", "caf", "au", "asf", "avi", "mpegts",
    "mpeg", "flv", "ac3", "eac3", "dts", "wv", "ape", "amr", "mpc", "mpc8", "tta", "rm",
)  # fmt: skip
_PYAV_OPEN_OPTIONS = {
    "format_whitelist": ",".join(_PYAV_DEMUXERS),  # refused after probing, before the demuxer reads a header
    "protocol_whitelist": "file",  # no nested opens of http:, tcp:, pipe:, concat:, subfile: ...
    "enable_drefs": "0",  # mov: never follow an mp4's data references to other files (FFmpeg's default, pinned)
}


def _open_with_pyav(path: Path, demuxer: str | None = None):
    """`av.open` for reading `path` through an allow-listed demuxer and the file protocol only (see
    `_PYAV_DEMUXERS`). `demuxer` (the name `_inspect_with_pyav` recorded) skips the probe: the file is decoded
    by the demuxer it was inspected with. The path is made absolute, so that a name like `http:x.mp3` or
    `concat:a|b` is a file name, never a protocol."""
    import av

    return av.open(os.path.abspath(path), format=demuxer, options=dict(_PYAV_OPEN_OPTIONS))


def _inspect_with_pyav(path: Path) -> AudioInfo | None:
    """The first audio stream of a file FFmpeg can open with an allow-listed demuxer, or None when it cannot
    (the caller then reports libsndfile's reason). A stream without a duration estimate is counted by decoding
    it once."""
    import av
    from av.error import FFmpegError

    try:
        with _open_with_pyav(path) as container:
            if not container.streams.audio:
                raise AudioFormatError(f"{path}: no audio stream in this {container.format.name} file")
            stream = container.streams.audio[0]
            context = stream.codec_context
            rate, channels = int(context.sample_rate or 0), int(context.layout.nb_channels if context.layout else 0)
            if stream.duration is not None and stream.time_base is not None:
                frames = int(round(float(stream.duration * stream.time_base) * rate))
            elif container.duration is not None:
                frames = int(round(container.duration / av.time_base * rate))
            else:
                frames = sum(frame.samples for frame in container.decode(stream))
            demuxer = container.format.name.split(",")[0]
            return AudioInfo(path, frames, rate, channels, demuxer.upper(), context.name.upper(), decoder="pyav")
    except AudioError:
        raise
    except (FFmpegError, OSError, ValueError, UnicodeDecodeError):
        return None


def iter_audio_blocks(
    info: AudioInfo, blocksize: int = 65536, *, max_seconds: float | None = None
) -> Iterator[np.ndarray]:
    """Yield the file's samples as float32 blocks of shape (channels, <= blocksize), in order.

    Raises `AudioError` when decoding fails or the file ends before the frame count in its header
    (a truncated file). A fresh call starts again from the first sample. `max_seconds` caps the audio read:
    `AudioTooLongError` when the header says more (before anything is decoded) or when the decoded samples
    pass it (a container's header may understate its length), so no more than the cap is ever yielded.
    """
    blocks = _iter_pyav_blocks(info, blocksize) if info.decoder == "pyav" else _iter_sndfile_blocks(info, blocksize)
    if max_seconds is None:
        yield from blocks
        return
    check_duration(info, max_seconds)
    limit, read = int(max_seconds * info.sample_rate), 0
    with contextlib.closing(blocks):  # stops the decoder as soon as the cap is passed
        for block in blocks:
            read += block.shape[-1]
            if read > limit:
                raise AudioTooLongError(
                    f"{info.path}: more than {max_seconds:g} s of audio (its header says {info.duration:.1f} s); "
                    f"the limit is {max_seconds:g} s"
                )
            yield block


def costly_to_decode(info: AudioInfo) -> bool:
    """Whether reading `info`'s file again costs a decode (MP3, AAC, Vorbis, Opus, FLAC, ...), rather than a copy
    of PCM or float samples that libsndfile reads straight from the file."""
    samples = info.subtype.startswith("PCM_") or info.subtype in ("FLOAT", "DOUBLE")  # FLAC's subtype too
    return info.decoder != "libsndfile" or info.format in ("FLAC", "OGG", "MP3") or not samples


def check_duration(info: AudioInfo, max_seconds: float) -> None:
    """`AudioTooLongError` when the header's duration is over `max_seconds` (decoding checks it again)."""
    if info.duration > max_seconds:
        raise AudioTooLongError(f"{info.path}: {info.duration:.1f} s long; the limit is {max_seconds:g} s")


def _iter_sndfile_blocks(info: AudioInfo, blocksize: int) -> Generator[np.ndarray, None, None]:
    """`iter_audio_blocks` through libsndfile."""
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


def _iter_pyav_blocks(info: AudioInfo, blocksize: int) -> Generator[np.ndarray, None, None]:
    """`iter_audio_blocks` through FFmpeg: decoded frames converted to float32 planar, regrouped in blocks."""
    import av
    from av.error import FFmpegError

    read, pending, have = 0, [], 0
    try:
        with _open_with_pyav(info.path, info.format.lower()) as container:
            stream = container.streams.audio[0]
            convert = av.AudioResampler(format="fltp", layout=stream.codec_context.layout, rate=info.sample_rate)
            for frame in container.decode(stream):
                for converted in convert.resample(frame):
                    samples = converted.to_ndarray().astype(np.float32, copy=False)  # (channels, n)
                    pending.append(samples)
                    have += samples.shape[1]
                    while have >= blocksize:
                        joined = np.concatenate(pending, axis=1)
                        pending, have = [joined[:, blocksize:]], have - blocksize
                        read += blocksize
                        yield np.ascontiguousarray(joined[:, :blocksize])
            for converted in convert.resample(None):
                pending.append(converted.to_ndarray().astype(np.float32, copy=False))
    except FFmpegError as error:
        raise AudioError(
            f"{info.path}: cannot decode audio after {read} of about {info.frames} frames "
            f"(truncated or corrupt: {_ffmpeg_problem(error)})"
        ) from None
    if pending:
        rest = np.concatenate(pending, axis=1)
        if rest.shape[1]:
            read += rest.shape[1]
            yield np.ascontiguousarray(rest)
    if read < info.frames - max(_PYAV_SLACK_FRAMES, _PYAV_SLACK_FRACTION * info.frames):
        raise AudioError(
            f"{info.path}: truncated file (its container promises about {info.frames} frames, it holds {read})"
        )


def read_audio(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """The whole file: (float32 (channels, samples), sample rate in Hz). Non-finite samples are an error."""
    info = inspect_audio(path)
    audio = np.concatenate(list(iter_audio_blocks(info)), axis=1)
    if not np.isfinite(audio).all():
        raise AudioError(f"{info.path}: contains NaN or infinite samples")
    return audio, info.sample_rate


def _either(words: list[str]) -> str:
    return " or ".join(words) if len(words) < 3 else f"{', '.join(words[:-1])} or {words[-1]}"


def _unfit_subtype(ext: str, requested: str) -> str:
    """Why `ext` files cannot be written with sample format `requested`, and which format can, in a user's
    words: "MP3 files have no sample format to choose (...); write WAV or FLAC for 24-bit integer samples"."""
    label, subtypes = FORMAT_NAMES[ext], OUTPUT_FORMATS[ext][1]
    wanted = SAMPLE_FORMAT_NAMES.get(requested)
    holders = [FORMAT_NAMES[other] for other, (_, kinds, _) in OUTPUT_FORMATS.items() if requested in kinds]
    fix = f"; write {_either(holders)} for {wanted} samples" if wanted and holders else ""
    held = [SAMPLE_FORMAT_NAMES[kind] for kind in subtypes if kind in SAMPLE_FORMAT_NAMES]
    if not held:  # a lossy codec: its encoder decides the precision, there is nothing to choose
        return f"{label} files have no sample format to choose (their encoder sets the precision){fix}"
    if wanted is None:
        return f"unknown sample format; {label} files hold {_either(held)} samples ({', '.join(subtypes)})"
    return f"{label} files hold {_either(held)} samples, not {wanted}{fix}"


def check_channels(channels: int, model_channels: int, name: str) -> None:
    """Raise `AudioError` naming `name` unless audio with `channels` channels can go through a model that separates
    `model_channels` channels: the same count, or mono (duplicated to the model's channels). There is no implicit
    downmix of more channels."""
    if channels != model_channels and not (channels == 1 and model_channels > 1):
        wanted = "mono or stereo" if model_channels == 2 else f"mono or {model_channels}-channel"
        raise AudioError(f"{name}: {channels} channels is not supported (this model separates {wanted} audio)")


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
            raise OptionError("subtype", requested, _unfit_subtype(ext, requested))
        return requested
    if input_subtype in subtypes:
        return input_subtype
    if input_subtype in ("FLOAT", "DOUBLE", "PCM_32") and "PCM_24" in subtypes:
        return "FLOAT" if "FLOAT" in subtypes else "PCM_24"
    return default


def check_output_format(path: str | os.PathLike, ext: str, subtype: str, sample_rate: int, channels: int) -> None:
    """Raise `AudioError` (naming `path`) if a file of this format cannot be written."""
    fmt = OUTPUT_FORMATS[ext][0]
    if fmt == "MP3":
        if sample_rate not in MP3_SAMPLE_RATES:
            raise AudioError(
                f"{path}: MP3 cannot store {sample_rate} Hz audio (possible rates: "
                f"{', '.join(map(str, MP3_SAMPLE_RATES))}); choose another output format"
            )
        if channels not in (1, 2):
            raise AudioError(f"{path}: MP3 holds 1 or 2 channels, not {channels}")
        return  # written by LAME through PyAV, not libsndfile
    if not sf.check_format(fmt, subtype):
        raise AudioError(f"{path}: this libsndfile cannot write {fmt} {subtype}")


# MP3 encoding (LAME, through PyAV). demucs's defaults: 320 kbps, LAME preset 2 (its best quality).
MP3_BITRATES = (8, 320)  # kbps, the range LAME takes; it rounds to the nearest bitrate the sample rate allows
MP3_PRESETS = (2, 7)  # LAME's algorithm quality (-q): 2 is best, 7 fastest (demucs's --mp3-preset range)
DEFAULT_MP3_BITRATE, DEFAULT_MP3_PRESET = 320, 2


class _Mp3File:
    """The part of `soundfile.SoundFile`'s writing interface `AtomicAudioWriter` uses, encoding MP3 with LAME
    (FFmpeg's libmp3lame in PyAV's wheel) at a constant bitrate with a LAME preset."""

    def __init__(self, path: Path, sample_rate: int, channels: int, bitrate: int, preset: int):
        import av

        self._av = av
        self.closed = False
        self._layout = "mono" if channels == 1 else "stereo"
        self._rate = sample_rate
        self._container = av.open(os.path.abspath(path), "w", format="mp3")  # a file name, never a protocol
        try:
            self._stream = self._container.add_stream(
                "libmp3lame", rate=sample_rate, layout=self._layout, options={"compression_level": str(preset)}
            )
            self._stream.bit_rate = bitrate * 1000
        except BaseException:
            self._container.close()
            raise

    def write(self, samples: np.ndarray) -> None:
        """Append float32 (samples, channels), soundfile's layout."""
        frame = self._av.AudioFrame.from_ndarray(np.ascontiguousarray(samples.T), format="fltp", layout=self._layout)
        frame.sample_rate = self._rate
        for packet in self._stream.encode(frame):
            self._container.mux(packet)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
        finally:
            self._container.close()


def sweep_partial_files(folder: str | os.PathLike, older_than: float) -> list[Path]:
    """Remove the temporary files an earlier, killed run of a writer left in `folder`: only names this module's
    writers make (`.<name>.<pid>-<random>.partial`), last modified before `older_than` (`time.time()`), of
    processes no longer running. Returns the removed paths (see `tempfiles.sweep_stale`)."""
    return tempfiles.sweep_stale(folder, PARTIAL_SUFFIX, older_than)


def missing_folders(folder: str | os.PathLike) -> list[Path]:
    """The folders `make_folders(folder)` would create, outermost first. A caller that removes them again on
    failure (`remove_empty_folders`) takes this list *before* creating them, so that an interrupt during the
    creation cannot leave one it does not know of."""
    folder = Path(folder)
    missing = []
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        missing.append(parent)
    return missing[::-1]


def make_folders(folder: str | os.PathLike) -> list[Path]:
    """`mkdir -p folder`; returns the folders it created, outermost first (`missing_folders`). Raises
    `AudioError` naming the folder when it cannot be created."""
    folder = Path(folder)
    missing = missing_folders(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise AudioError(f"{folder}: cannot write to output folder ({error.strerror or error})") from None
    return missing


def remove_empty_folders(created: list[Path]) -> None:
    """Remove the folders `make_folders` created (or `missing_folders` listed), innermost first, as far as they
    are empty; those never made are passed over."""
    for folder in reversed(created):
        try:
            folder.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return


class AtomicAudioWriter:
    """Stream blocks into `path` through a temporary file in the same folder; `commit()` renames it into
    place (with the mode the umask allows), `abort()` (or leaving a `with` block by an exception) deletes it.

    Parent folders are created. Blocks are float (channels, samples); integer subtypes clip at ±1 (libsndfile).
    MP3 is encoded at `mp3_bitrate` kbps with LAME preset `mp3_preset`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sample_rate: int,
        channels: int,
        subtype: str,
        ext: str | None = None,
        *,
        mp3_bitrate: int = DEFAULT_MP3_BITRATE,
        mp3_preset: int = DEFAULT_MP3_PRESET,
    ):
        self.path = Path(path)
        ext = ext or self.path.suffix.lstrip(".").lower()
        if ext not in OUTPUT_FORMATS:
            raise AudioError(f"{self.path}: unknown output format {ext!r}")
        fmt = OUTPUT_FORMATS[ext][0]
        check_output_format(self.path, ext, subtype, sample_rate, channels)
        make_folders(self.path.parent)
        self.frames = 0
        # The name is kept before the file exists, so whatever stops the constructor (a refusal, or an
        # interrupt between any two steps) leaves no temporary behind.
        self.temp_path = tempfiles.new_name(self.path, PARTIAL_SUFFIX)
        try:
            try:
                os.close(tempfiles.create(self.temp_path))
            except OSError as error:
                raise AudioError(
                    f"{self.path.parent}: cannot write to output folder ({error.strerror or error})"
                ) from None
            try:
                if fmt == "MP3":
                    self._file = _Mp3File(self.temp_path, sample_rate, channels, mp3_bitrate, mp3_preset)
                else:
                    self._file = sf.SoundFile(
                        self.temp_path, "w", samplerate=sample_rate, channels=channels, format=fmt, subtype=subtype
                    )
            except Exception as error:  # libsndfile's or FFmpeg's refusal
                raise AudioError(
                    f"{self.path}: cannot write {fmt} {subtype} at {sample_rate} Hz ({_libsndfile_problem(error)})"
                ) from None
        except BaseException:  # also KeyboardInterrupt and `Terminated`
            self.temp_path.unlink(missing_ok=True)
            raise

    def write(self, block: np.ndarray) -> None:
        """Append float (channels, samples)."""
        try:
            self._file.write(np.ascontiguousarray(np.asarray(block, np.float32).T))
        except Exception as error:  # libsndfile, FFmpeg or the file system (a full disk)
            raise AudioError(f"{self.path}: write failed ({_libsndfile_problem(error)})") from None
        self.frames += block.shape[-1]

    def close(self) -> Path:
        """Finish the file under its temporary name (it can be read back there); `commit()` or `abort()` follow.
        Returns the temporary path."""
        if not self._file.closed:
            try:
                self._file.close()
            except Exception as error:
                raise AudioError(f"{self.path}: cannot finish writing ({_libsndfile_problem(error)})") from None
        return self.temp_path

    def commit(self) -> Path:
        """Close the temporary file and rename it to `path`. Returns `path`."""
        try:
            self.close()
            tempfiles.finish(self.temp_path, self.path)
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
            except Exception:
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
    `mp3_bitrate` and `mp3_preset` apply to MP3 stems (see `AtomicAudioWriter`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        sample_rate: int,
        channels: int,
        subtype: str,
        ext: str | None = None,
        clip_mode: str = "rescale",
        *,
        mp3_bitrate: int = DEFAULT_MP3_BITRATE,
        mp3_preset: int = DEFAULT_MP3_PRESET,
    ):
        if clip_mode not in CLIP_MODES:
            raise OptionError("clip_mode", clip_mode, f"must be one of {', '.join(CLIP_MODES)}")
        self.path, self.clip_mode, self.peak = Path(path), clip_mode, 0.0
        ext = ext or self.path.suffix.lstrip(".").lower()
        self._final_format = (sample_rate, channels, subtype, ext)
        self._mp3 = {"mp3_bitrate": mp3_bitrate, "mp3_preset": mp3_preset}
        self._staging: AtomicAudioWriter | None = None
        self._final: AtomicAudioWriter | None = None
        if clip_mode == "rescale":
            check_output_format(self.path, ext, subtype, sample_rate, channels)  # fail before staging anything
            staging = self.path.with_name(f".{self.path.name}.float.wav")
            self._staging = AtomicAudioWriter(staging, sample_rate, channels, "FLOAT", "wav")
        else:
            self._final = AtomicAudioWriter(self.path, *self._final_format, **self._mp3)

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
            self._final = AtomicAudioWriter(self.path, *self._final_format, **self._mp3)
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
