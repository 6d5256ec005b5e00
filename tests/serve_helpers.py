"""Running the HTTP API (`modeling_hdemucs_flax.apps.serve`) for tests: a real uvicorn server on 127.0.0.1, either in a
thread of the test process (`ThreadedServer`, around any `create_app` app) or as the `hdemucs-flax serve` command in
a subprocess (`ServeProcess`). Both pick a free port; every request in these tests goes to 127.0.0.1 only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf
import uvicorn

from .flows import REPO_ROOT
from .space_helpers import free_port


class ThreadedServer:
    """uvicorn serving `app` in a background thread on a free 127.0.0.1 port (lifespan included, so the app's
    service starts and stops with it); `url`, `client` (an httpx.Client with `headers`)."""

    def __init__(self, app, headers: dict[str, str] | None = None):
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.client = httpx.Client(base_url=self.url, headers=headers or {}, timeout=120)

    @property
    def service(self):
        return self.app.state.service

    def __enter__(self) -> ThreadedServer:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.service.begin_shutdown()  # what SIGTERM does in the command
        self.server.should_exit = True
        self.thread.join(60)
        self.client.close()


def wait_ready(client: httpx.Client, timeout: float = 180) -> list[int]:
    """Poll /v1/health until 200; returns every status seen (503s while warming, then 200)."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = client.get("/v1/health").status_code
        except httpx.TransportError:
            time.sleep(0.2)
            continue
        seen.append(status)
        if status == 200:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"server not ready after {timeout} s (statuses {seen[-5:]})")


def wait_job(client: httpx.Client, job_id: str, statuses=("done", "failed", "cancelled"), timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/v1/jobs/{job_id}").json()
        if body["status"] in statuses:
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {statuses}: {body}")


def upload(path: Path, **fields: object) -> dict:
    """httpx keyword arguments for a multipart request with `path` as `file` and `fields` as form fields."""
    return {"files": {"file": (path.name, path.read_bytes())}, "data": {k: str(v) for k, v in fields.items()}}


def read_zip(data: bytes, folder: Path) -> dict[str, tuple[np.ndarray, int]]:
    """{name inside the zip: (float32 (channels, samples), rate)} of a stems zip, extracted under `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    archive = folder / "stems.zip"
    archive.write_bytes(data)
    out = {}
    with zipfile.ZipFile(archive) as bundle:
        for name in bundle.namelist():
            bundle.extract(name, folder)
            audio, rate = sf.read(folder / name, dtype="float32", always_2d=True)
            out[name] = (audio.T, rate)
    return out


def files_in(folder: Path) -> list[str]:
    """Every file under `folder` (the server's work and temp folders must end up empty)."""
    # os.walk passes over a folder removed while it walks (the server deletes a job's folders as it goes)
    return sorted(str((Path(root) / name).relative_to(folder)) for root, _, names in os.walk(folder) for name in names)


class ServeProcess:
    """`python -m modeling_hdemucs_flax serve ARGS` (or `command`) on a free port, stdout+stderr to `log`."""

    def __init__(self, workdir: Path, args: list[str], env: dict[str, str | None], command: list[str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "serve.log"
        self.command = [
            *(command or [sys.executable, "-m", "modeling_hdemucs_flax"]),
            "serve",
            "--port",
            str(self.port),
        ]
        self.command += args
        merged = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **env}
        self.env = {key: value for key, value in merged.items() if value is not None}  # None: unset it
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> ServeProcess:
        self._log = open(self.log, "wb")
        self.process = subprocess.Popen(
            self.command, cwd=self.workdir, env=self.env, stdout=self._log, stderr=subprocess.STDOUT
        )
        return self

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def terminate(self, timeout: float = 60) -> int:
        """SIGTERM, then the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()
