"""The package's exceptions and its one rule for error messages: one line, saying what is wrong and what to do.

Every error hdemucs-flax raises for a user's input, option, file, model or download is an `HDemucsFlaxError`,
so an application can catch them all in one place. Each subclass also derives from the built-in exception a
caller would expect (`ValueError` for bad values, `RuntimeError` for failed operations; `ModelLoadError` also
`OSError`, as transformers' loading errors are), so existing `except ValueError` code keeps working. This
module imports nothing heavy: the command line and the package face use it before JAX or transformers are
loaded.
"""

from __future__ import annotations


class HDemucsFlaxError(Exception):
    """Base class of every error the package raises for a user; the message is one line."""


class ConfigError(HDemucsFlaxError, ValueError):
    """An `HDemucsConfig` that describes no runnable HDemucs; the message names the field and the rule."""


class OptionError(HDemucsFlaxError, ValueError):
    """A separation or output option with an unusable value. `option` and `value` name it; the message is
    `option=value: rule`, and `rule` alone is kept so the command line can name its own flag instead."""

    def __init__(self, option: str, value: object, rule: str):
        self.option, self.value, self.rule = option, value, rule
        super().__init__(f"{option}={value!r}: {rule}")


class AudioError(HDemucsFlaxError, ValueError):
    """An audio file or array that cannot be used; the message is one line: `name: problem`."""


class AudioFormatError(AudioError):
    """A file that no audio reader recognises (not audio, or a format libsndfile cannot read), as opposed to
    audio that is damaged; a server answers it with 415 Unsupported Media Type instead of 400."""


class AudioTooLongError(AudioError):
    """Audio longer than a caller's limit (a server's `max_duration`), found from the header or, when the header
    understates it, by counting decoded samples; a server answers it with 413 Content Too Large."""


class CheckpointError(HDemucsFlaxError, ValueError):
    """Weights that cannot be read or do not match the architecture; the message names the keys or the file."""


class ModelLoadError(HDemucsFlaxError, RuntimeError, OSError):
    """The requested model could not be found or loaded; the message says what is missing and how to provide it.

    `problem` is what went wrong and `fix` (when given apart) what to do; the message is `problem; fix`, so a
    caller that explains several failed attempts in one line can quote the problems alone. Also an `OSError`:
    `FlaxHDemucs.from_pretrained` raises it where transformers' own `from_pretrained` raises `OSError`, so code
    written for transformers (`except OSError`) keeps working."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}; {fix}" if fix else problem)


class ModelOutputError(HDemucsFlaxError, RuntimeError):
    """The network produced NaN or infinite samples: its weights or config are broken, so every input would fail
    the same way. The message names the model."""


class DownloadError(HDemucsFlaxError, RuntimeError):
    """A download failed or its content did not match the expected sha256."""


class DatasetError(HDemucsFlaxError, ValueError):
    """A dataset job that cannot start as asked (an input that yields nothing, two inputs with one key, outputs
    made with other options); the message names the inputs or outputs and the fix. A usage error."""


def one_line(error: BaseException | str) -> str:
    """`error`'s message as one line for a user: its first non-empty line with runs of whitespace collapsed
    (transformers and huggingface_hub append help paragraphs after the line that matters), or the exception's
    type name when it has no message."""
    text = str(error)
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__ if isinstance(error, BaseException) else ""
    return " ".join(lines[0].split())


def describe(error: BaseException) -> str:
    """One line for a failure while reading a model's files: the package's own and OS-level messages (including
    transformers', which are `OSError`s) as they are, anything else (a TypeError from a config.json holding a
    list, safetensors' errors) with its type."""
    if isinstance(error, (HDemucsFlaxError, OSError)):
        return one_line(error)
    return f"{type(error).__name__}: {one_line(error)}"
