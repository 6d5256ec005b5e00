"""Places the dataset tests read inputs from and write outputs to: a local folder or a prefix of a fresh bucket
on the moto S3 server (conftest's `s3_endpoint`), reached through fsspec/s3fs like any user's bucket."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import soundfile as sf

from .audio_files import write_song
from .flows import REPO_ROOT, SCRIPTS, with_ctrl_c


def s3_options(endpoint: str) -> dict:
    """fsspec storage options for the moto server (it accepts any credentials)."""
    return {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}


class Place:
    """A folder (`kind="local"`) or a fresh S3 bucket (`kind="s3"`) as tests see it."""

    def __init__(self, kind: str, tmp_path: Path, endpoint: str | None = None):
        self.kind = kind
        self.scratch = tmp_path / "place-scratch"
        if kind == "local":
            self.root = str(tmp_path / "place")
            Path(self.root).mkdir()
            self.storage_options = None
            self.fs = None
        else:
            import s3fs

            self.storage_options = s3_options(endpoint)
            self.fs = s3fs.S3FileSystem(**self.storage_options)
            bucket = f"test-{uuid.uuid4().hex[:12]}"
            self.fs.mkdir(bucket)
            self.root = f"s3://{bucket}"

    def url(self, rel: str = "") -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def put(self, rel: str, local: Path) -> str:
        """Copy the local file `local` to `rel`; returns its URL."""
        if self.fs is None:
            target = Path(self.root) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(local.read_bytes())
        else:
            self.fs.put_file(str(local), self.url(rel))
        return self.url(rel)

    def write_bytes(self, rel: str, data: bytes) -> str:
        local = self.scratch / uuid.uuid4().hex
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        return self.put(rel, local)

    def song(self, rel: str, seconds: float = 0.25, rate: int = 44100, channels: int = 2, **kwargs) -> str:
        """Write a synthetic song to `rel` (format from its extension); returns its URL."""
        local = write_song(self.scratch / uuid.uuid4().hex / Path(rel).name, seconds, rate, channels, **kwargs)
        return self.put(rel, local)

    def read(self, rel: str) -> bytes:
        if self.fs is None:
            return (Path(self.root) / rel).read_bytes()
        return self.fs.cat_file(self.url(rel))

    def files(self, rel: str = "") -> dict[str, tuple]:
        """{path relative to `rel`: (size, modification stamp)} of every file below `rel`."""
        if self.fs is None:
            base = Path(self.root) / rel
            return {
                p.relative_to(base).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns)
                for p in base.rglob("*")
                if p.is_file()
            }
        base = self.url(rel).split("://", 1)[1].rstrip("/")
        self.fs.invalidate_cache()
        found = self.fs.find(base, detail=True)
        return {
            path[len(base) + 1 :]: (info["size"], info.get("ETag"), info.get("LastModified"))
            for path, info in found.items()
        }

    def audio_info(self, rel: str) -> sf._SoundFileInfo:
        local = self.scratch / uuid.uuid4().hex / Path(rel).name
        local.parent.mkdir(parents=True)
        local.write_bytes(self.read(rel))
        return sf.info(local)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def start_command(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`hdemucs-flax argv` as a real process (`scripts/dataset_cli.py`, the console script's entry point, which
    turns SIGTERM into the interrupt Ctrl-C is), for tests that signal or kill it."""
    return subprocess.Popen(
        with_ctrl_c([sys.executable, str(SCRIPTS / "dataset_cli.py"), *argv]),
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition: Callable[[], bool], process: subprocess.Popen, what: str, timeout: float = 240) -> None:
    """Poll `condition` until it holds; fail naming `what` if `process` ends first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            stdout, stderr = process.communicate()
            raise AssertionError(f"the command ended before {what}: {stdout[-2000:]}\n{stderr[-3000:]}")
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.1)


def usage_message(err: str) -> str:
    """The message of a usage error printed as argparse prints its own: the command's usage line(s), then one
    `hdemucs-flax separate-dataset: error: MESSAGE` line (asserted here)."""
    assert err.startswith("usage: hdemucs-flax separate-dataset "), err
    lines = err.rstrip("\n").splitlines()
    prefix = "hdemucs-flax separate-dataset: error: "
    assert lines[-1].startswith(prefix) and not any(line.startswith(prefix) for line in lines[:-1]), err
    return lines[-1][len(prefix) :]
