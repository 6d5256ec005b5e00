"""Run real Hub/download flows in fresh Python processes.

`HF_ENDPOINT`, `HF_HOME` and `HF_HUB_OFFLINE` are read when huggingface_hub/transformers are imported, so each
flow runs in a new interpreter with its environment set up front (never by mocking huggingface_hub). The
flows themselves are scripts in `tests/scripts/`.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import numpy as np

from modeling_hdemucs_flax.zoo.torchaudio_bundles import TorchaudioBundle

from .reference import music_like, tiny_config

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = Path(__file__).resolve().parent / "scripts"

# Variables of the outer environment that would make a flow talk to the real Hub or reuse real caches.
_SCRUBBED = (
    "HF_ENDPOINT",
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HDEMUCS_FLAX_CACHE",
    "HDEMUCS_FLAX_TORCHAUDIO_URL",
    "XDG_CACHE_HOME",
)

# The input every flow separates, and its length: over 51,200 samples so the tiny model's BLSTM frames.
PROBE_SAMPLES = 53_000


def probe() -> np.ndarray:
    return music_like(PROBE_SAMPLES, 2, seed=3)


def tiny_bundle(sha256: str | None, name: str = "TINY_TEST_BUNDLE") -> TorchaudioBundle:
    """A torchaudio-bundle entry for the tiny test model (same shape of table entry as the real ones)."""
    config = tiny_config()
    overrides = {k: getattr(config, k) for k in ("channels", "norm_starts", "dconv_lstm", "dconv_attn")}
    return TorchaudioBundle(
        name=name,
        key="models/tiny_test_hdemucs.pt",
        sha256=sha256,
        training_data="Random weights drawn by the test suite.",
        preset="low",
        overrides=overrides,
    )


def flow_env(base: Path, **overrides: str | None) -> dict[str, str]:
    """A clean environment: caches under `base`, a dummy token, CPU JAX with a shared compilation cache."""
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        HF_HOME=str(base / "hf_home"),
        HDEMUCS_FLAX_CACHE=str(base / "hdemucs_cache"),
        XDG_CACHE_HOME=str(base / "xdg_cache"),
        HF_TOKEN="hf_local_test_token",
        HF_HUB_DISABLE_TELEMETRY="1",
        JAX_PLATFORMS="cpu",
        # Only compile time: reusing compiled tiny forwards across the flows' processes.
        JAX_COMPILATION_CACHE_DIR=str(base.parent / "jax_compilation_cache"),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    )
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


# Runs the rest of its argv with SIGINT back at its default action (see `with_ctrl_c`).
_CTRL_C_LAUNCHER = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)


def with_ctrl_c(command: list[str]) -> list[str]:
    """`command` for tests that press Ctrl-C (SIGINT) on it, with SIGINT back at its default action. A shell starts
    background jobs with SIGINT ignored (`cmd &`, `nohup`); a child inherits that, and Python then leaves it
    ignored (as the command line respects it). The test stands for a user at a terminal. A launcher rather than
    `preexec_fn`, which would fork this multithreaded (JAX) process."""
    return [sys.executable, "-c", _CTRL_C_LAUNCHER, *command]


def run_script(name: str, env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `tests/scripts/<name>.py` with `args` in a fresh interpreter (cwd: the repo root)."""
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / f"{name}.py"), *args],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    print(f"--- {name} stdout ---\n{result.stdout}\n--- {name} stderr (tail) ---\n{result.stderr[-3000:]}")
    return result


def converter(*argv: str) -> list[str]:
    """The command line that runs the conversion script as users do."""
    return [sys.executable, "-m", "conversion.convert_torchaudio_hdemucs", *argv]


def run_converter(env: dict[str, str], *argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(converter(*argv), cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    print(f"--- converter stdout ---\n{result.stdout}\n--- converter stderr (tail) ---\n{result.stderr[-3000:]}")
    return result


def run_on_terminal(
    command: list[str], env: dict[str, str], timeout: float = 300, columns: int | None = None
) -> tuple[int, str]:
    """Run `command` (cwd: the repo root) with its stderr on a pseudo-terminal, as a user at a terminal sees it
    (status lines are shown only there); stdout is captured apart. Returns (exit status, what stderr showed).
    `columns`: the terminal's width (a new pseudo-terminal has none, and tqdm then draws its bars 0 wide)."""
    controller, terminal = pty.openpty()
    if columns is not None:
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=terminal)
    os.close(terminal)
    shown = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while True:
            ready, _, _ = select.select([controller], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                process.kill()
                raise subprocess.TimeoutExpired(command, timeout)
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: every holder of the terminal closed it
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        process.communicate(timeout=60)
    text = shown.decode(errors="replace").replace("\r\n", "\n")
    print(f"--- terminal ---\n{text[-3000:]}")
    return process.returncode, text


def error_lines(stderr: str) -> list[str]:
    """Lines a user sees as errors (our own one-line messages), ignoring library warnings."""
    return [line for line in stderr.splitlines() if line.startswith(("error:", "ModelLoadError:"))]
