"""Running the Space (space/app.py) for tests: as a real server in a subprocess, or imported in-process.

`SpaceServer` starts `space/app.py` as `__main__` (the way the Space starts it) on a free 127.0.0.1 port, through
`scripts/space_boot.py`, whose audit hook logs every DNS look-up or connection to a host other than the
loopback one: the app must make none (offline-safe). The log is kept for the test to read.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .flows import SCRIPTS

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "space" / "app.py"
OUTSIDE = "OUTSIDE-NETWORK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_app_module():
    """space/app.py imported as a module (it launches nothing on import)."""
    spec = importlib.util.spec_from_file_location("hdemucs_space_app", APP)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


class SpaceServer:
    """`python space/app.py` with `env` added, on a free port; `url`, `log` (a file: stdout and stderr)."""

    def __init__(self, workdir: Path, env: dict[str, str], startup_timeout: float = 180.0):
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "space-server.log"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "GRADIO_SERVER_PORT": str(self.port),
            "GRADIO_TEMP_DIR": str(workdir / "gradio-cache"),
            "GRADIO_EXAMPLES_CACHE": str(workdir / "examples-cache"),
            "TMPDIR": str(workdir / "tmp"),
            **env,
        }
        self.env.pop("GRADIO_SERVER_NAME", None)  # the app's own default (127.0.0.1) is under test
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> SpaceServer:
        (self.workdir / "tmp").mkdir(parents=True, exist_ok=True)
        self._log_handle = open(self.log, "wb")
        self.process = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "space_boot.py"), str(APP)],
            cwd=self.workdir,
            env=self.env,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"space/app.py exited with {self.process.returncode}:\n{self.log_text()[-4000:]}")
            try:
                with urllib.request.urlopen(self.url + "/", timeout=2) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"space/app.py not serving after {self.startup_timeout} s:\n{self.log_text()[-4000:]}")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_handle.close()
