"""The HTTP API (`hdemucs-flax serve`), tested against a real uvicorn server on 127.0.0.1 with the tiny
random-weight model: in a thread of this process (`create_app` around a Separator, so a test can hold the
network between chunks) and as the command in a subprocess (token, real signals, temporary files).

Every response is checked by `clean`: an error is exactly `{"error": "<one line>"}`, and no body holds a server
path or a traceback.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import re
import signal
import socket
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from urllib.parse import unquote

import httpx
import numpy as np
import pytest
import soundfile as sf

import modeling_hdemucs_flax
from modeling_hdemucs_flax import Separator, __version__, separate_file
from modeling_hdemucs_flax.apps.cli import main
from modeling_hdemucs_flax.apps.serve import ServeLimits, create_app
from modeling_hdemucs_flax.io.audio_io import StemWriter

from .audio_files import bad_files, tones, write_song, write_understated_matroska
from .conftest import SEGMENT_SECONDS, SOURCES
from .flows import REPO_ROOT, run_script
from .serve_helpers import ServeProcess, ThreadedServer, files_in, read_zip, upload, wait_job, wait_ready


class Gate:
    """A forward pass that runs the real network only when allowed: open by default (the warm-up passes), then
    `close()` holds every batch until `step(n)` lets n through or `open()` lets all through."""

    def __init__(self, forward):
        self.forward, self.calls = forward, 0
        self._open, self._tokens = True, threading.Semaphore(0)

    def __call__(self, batch):
        if not self._open:
            assert self._tokens.acquire(timeout=60), "the test never let this batch through"
        self.calls += 1
        # finished before it is handed back, as the batch the gate let through: the schedule waits for the next
        # batch's dispatch before it converts an output still computing, and a gate holds that dispatch
        return np.asarray(self.forward(batch))

    def close(self) -> None:
        self._open = False

    def step(self, n: int = 1) -> None:
        for _ in range(n):
            self._tokens.release()

    def open(self) -> None:
        self._open = True
        self._tokens.release()


@pytest.fixture(scope="module")
def tiny_separator(tiny_pair):
    _, _, model = tiny_pair
    separator = Separator(model, segment=SEGMENT_SECONDS)
    separator.warmup()
    return separator


def gated(separator: Separator) -> tuple[Separator, Gate]:
    gate = Gate(separator.forward)
    return Separator(separator.model, segment=SEGMENT_SECONDS, forward=gate), gate


def clean(response, *paths: Path) -> dict:
    """The JSON body (or {} for a zip), after checking it leaks no server path or traceback."""
    text = response.content.decode("latin-1")
    for path in (*paths, REPO_ROOT):
        assert str(path) not in text, f"a server path in the response: {text[:300]}"
    assert "Traceback" not in text and 'File "' not in text
    if response.headers["content-type"] == "application/zip":
        return {}
    body = response.json()
    if response.status_code >= 400:
        assert set(body) == {"error"} and "\n" not in body["error"] and body["error"], body
    return body


def serving(separator, tmp_path: Path, token: str | None = None, allowed_hosts=(), **limits) -> ThreadedServer:
    app = create_app(
        separator,
        ServeLimits(**limits),
        token=token,
        allowed_hosts=allowed_hosts,
        workdir=tmp_path / "work",
        model_id="tiny",
    )
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return ThreadedServer(app, headers=headers)


def wait_for(condition, what: str, timeout: float = 60):
    """Poll `condition()` until it returns something true, which is returned."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


# ---------------------------------------------------------------------------------------------------------
# Separating


def test_wav_and_mp3_come_back_as_zips_of_the_stems_separate_file_writes(tiny_separator, tmp_path):
    """A WAV (all four stems) and an MP3 (two stems, as FLAC): the zip holds `track/stem.ext` like the command
    line, each stem at the input's length, rate and channel count, equal to what `separate_file` writes."""
    wav = write_song(tmp_path / "in" / "song.wav", 0.4, 44100, 2, subtype="PCM_16")
    mp3 = write_song(tmp_path / "in" / "tune.mp3", 0.5, 32000, 1, format="MP3")
    cases = [
        (wav, {}, "wav", SOURCES),
        (mp3, {"two_stems": "vocals", "format": "flac"}, "flac", ["vocals", "no_vocals"]),
    ]
    with serving(tiny_separator, tmp_path) as server:
        wait_ready(server.client)
        for path, fields, ext, stems in cases:
            response = server.client.post("/v1/separate", **upload(path, **fields))
            assert response.status_code == 200, response.text
            clean(response, server.service.workdir)
            assert response.headers["content-type"] == "application/zip"
            assert f'filename="{path.stem}.zip"' in response.headers["content-disposition"]
            got = read_zip(response.content, tmp_path / "got" / path.stem)
            assert sorted(got) == sorted(f"{path.stem}/{stem}.{ext}" for stem in stems)

            expected = separate_file(
                tiny_separator, path, tmp_path / "want", two_stems=fields.get("two_stems"), ext=ext
            )
            info = sf.info(path)
            for stem, want_path in expected.items():
                audio, rate = got[f"{path.stem}/{stem}.{ext}"]
                want, want_rate = sf.read(want_path, dtype="float32", always_2d=True)
                assert (
                    (rate, audio.shape) == (want_rate, want.T.shape) == (info.samplerate, (info.channels, info.frames))
                )
                np.testing.assert_array_equal(audio, want.T)
        assert files_in(server.service.workdir) == []  # a direct answer's files go once it is sent


def test_job_round_trip_reports_progress_then_expires(tiny_separator, tmp_path):
    """POST /v1/jobs -> 202 queued; status reports the chunks done while it runs (result 409 until then); the zip
    comes from /result; after the time to live the job is gone (404) and so are its files."""
    separator, gate = gated(tiny_separator)
    song = write_song(tmp_path / "long.wav", 1.5, 44100, 2, subtype="PCM_16")
    with serving(separator, tmp_path, job_ttl=1.0) as server:
        client = server.client
        wait_ready(client)
        gate.close()
        response = client.post("/v1/jobs", **upload(song))
        job = clean(response, server.service.workdir)
        assert response.status_code == 202 and job["status"] in ("queued", "running"), job
        assert response.headers["location"] == f"/v1/jobs/{job['id']}"

        gate.step(3)
        deadline = time.monotonic() + 60
        while (status := client.get(f"/v1/jobs/{job['id']}").json())["chunks_done"] < 3:
            assert time.monotonic() < deadline, status
            time.sleep(0.02)
        assert status["status"] == "running" and status["stage"] == "separating" and status["chunks_total"] > 3
        # each chunk is a step, and finishing (the stems written and zipped) one more
        assert 0 < status["progress"] < 1 and status["progress"] == round(3 / (status["chunks_total"] + 1), 4)
        early = client.get(f"/v1/jobs/{job['id']}/result")
        assert early.status_code == 409 and "running" in clean(early)["error"]

        gate.open()
        done = wait_job(client, job["id"])
        assert done["status"] == done["stage"] == "done" and done["progress"] == 1.0, done
        assert done["expires_in_seconds"] <= 1.0, done
        result = client.get(done["result"])
        assert result.status_code == 200 and result.headers["content-type"] == "application/zip"
        stems = read_zip(result.content, tmp_path / "result")
        assert sorted(stems) == sorted(f"long/{s}.wav" for s in SOURCES)
        assert all(audio.shape == (2, int(1.5 * 44100)) for audio, _ in stems.values())

        time.sleep(1.6)
        for url in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/result"):
            gone = client.get(url)
            assert gone.status_code == 404 and "expired" in clean(gone)["error"]
        assert files_in(server.service.workdir) == []


def test_progress_stays_below_one_until_the_stems_are_written(tiny_separator, tmp_path, monkeypatch):
    """Once every chunk is through the network the stems are still to be completed and encoded (for the default
    clip mode, a second pass over each; MP3 encoding took 22 s of a 59 s job): the job says it is "finishing"
    and its progress stays below 1.0 until the result is ready."""
    entered, release = threading.Event(), threading.Event()
    close = StemWriter.close

    def slow_close(writer):  # a slow encoder: held until the test has looked
        entered.set()
        assert release.wait(60), "the test never released the encoder"
        close(writer)

    monkeypatch.setattr(StemWriter, "close", slow_close)
    song = write_song(tmp_path / "song.wav", 1.0, 44100, 2, subtype="PCM_16")
    with serving(tiny_separator, tmp_path) as server:
        wait_ready(server.client)
        job = server.client.post("/v1/jobs", **upload(song, format="mp3")).json()
        assert entered.wait(60), "the stems were never completed"
        status = clean(server.client.get(f"/v1/jobs/{job['id']}"))
        release.set()
        assert status["status"] == "running" and status["stage"] == "finishing", status
        assert status["chunks_done"] == status["chunks_total"] > 0 and status["progress"] < 1.0, status
        done = wait_job(server.client, job["id"])
        assert (done["status"], done["stage"], done["progress"]) == ("done", "done", 1.0), done


def test_a_job_can_be_cancelled_and_its_files_removed(tiny_separator, tmp_path):
    """DELETE /v1/jobs/{id} answers "cancelled" for a queued or a running job (a running one stops at its next
    chunk) and "deleted" for a finished one, and removes the job's files."""
    separator, gate = gated(tiny_separator)
    song = write_song(tmp_path / "song.wav", 1.0, 44100, 2, subtype="PCM_16")
    with serving(separator, tmp_path) as server:
        wait_ready(server.client)
        gate.close()
        job = server.client.post("/v1/jobs", **upload(song)).json()
        gate.step(1)
        wait_job(server.client, job["id"], statuses=("running",))
        queued = server.client.post("/v1/jobs", **upload(song)).json()
        assert queued["status"] == "queued", queued
        for which in (queued, job):
            deleted = server.client.delete(f"/v1/jobs/{which['id']}")
            assert deleted.status_code == 200 and clean(deleted) == {"id": which["id"], "status": "cancelled"}
        gate.open()
        assert server.client.get(f"/v1/jobs/{job['id']}").status_code == 404
        wait_for(lambda: not files_in(server.service.workdir), "the cancelled jobs' files to go", timeout=30)

        finished = server.client.post("/v1/jobs", **upload(song)).json()
        assert wait_job(server.client, finished["id"])["status"] == "done"
        deleted = server.client.delete(f"/v1/jobs/{finished['id']}")
        assert clean(deleted) == {"id": finished["id"], "status": "deleted"}
        assert files_in(server.service.workdir) == []


def test_a_client_that_disconnects_from_separate_cancels_its_job(tiny_separator, tmp_path):
    """A /v1/separate client that goes away while its song is separated stops the work at the next chunk, and
    the job's upload and partial stems are removed."""
    separator, gate = gated(tiny_separator)
    song = write_song(tmp_path / "song.wav", 1.5, 44100, 2, subtype="PCM_16")
    request = httpx.Request("POST", "http://127.0.0.1/v1/separate", files={"file": ("song.wav", song.read_bytes())})
    body = request.read()
    with serving(separator, tmp_path) as server:
        wait_ready(server.client)
        gate.close()
        head = (
            f"POST /v1/separate HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: {request.headers['content-type']}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        client = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        client.sendall(head.encode() + body)
        uploaded = wait_for(lambda: files_in(server.service.workdir), "the upload to arrive")
        job_id = uploaded[0].split("/")[0]  # the job's folder is named by its id
        gate.step(1)
        status = wait_for(
            lambda: (now := server.client.get(f"/v1/jobs/{job_id}").json()).get("chunks_done") and now,
            "the first chunk",
        )
        assert status["status"] == "running" and status["chunks_total"] > 3, status
        calls = gate.calls
        client.close()
        wait_for(lambda: server.client.get(f"/v1/jobs/{job_id}").status_code == 404, "the job to be cancelled", 20)
        gate.open()
        wait_for(lambda: not files_in(server.service.workdir), "the job's files to go", timeout=30)
        # at most the batch already handed to the network and the one whose progress report saw the cancel
        assert gate.calls - calls <= 2 < status["chunks_total"] - status["chunks_done"], (gate.calls - calls, status)


# ---------------------------------------------------------------------------------------------------------
# Warm-up, token, limits, errors


def test_health_is_503_while_warming_then_200(tiny_separator, tmp_path):
    """The server listens at once; until the model is loaded and compiled, health and every separation answer 503."""
    go = threading.Event()

    def load():
        assert go.wait(60)
        tiny_separator.warmup()
        return tiny_separator

    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    with serving(load, tmp_path) as server:
        requests = [("GET", "/v1/health", {}), ("GET", "/v1/models", {})]
        requests += [("POST", "/v1/separate", upload(song)), ("POST", "/v1/jobs", upload(song))]
        for method, url, kwargs in requests:
            response = server.client.request(method, url, **kwargs)
            assert response.status_code == 503 and "warming up" in clean(response)["error"], (url, response.text)
        go.set()
        statuses = wait_ready(server.client)
        assert statuses[-1] == 200
        health = server.client.get("/v1/health").json()
        assert health == {"status": "ok", "model": "tiny", "device": "cpu:0", "version": __version__}
        models = clean(server.client.get("/v1/models"))
        assert models["models"][0]["sources"] == SOURCES and models["models"][0]["sample_rate"] == 44100
        assert server.client.post("/v1/separate", **upload(song)).status_code == 200


def test_token_is_required_everywhere_but_health(tiny_separator, tmp_path):
    """With a token, every route but /v1/health answers 401 (with WWW-Authenticate) without the right bearer
    token, before reading a body or telling whether a job exists."""
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    with serving(tiny_separator, tmp_path, token="s3cret") as server:
        wait_ready(server.client)
        anonymous = {"Authorization": ""}
        for headers in (anonymous, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}):
            for method, url, kwargs in [("GET", "/v1/models", {}), ("POST", "/v1/separate", upload(song)),
                                        ("POST", "/v1/jobs", upload(song)), ("GET", "/v1/jobs/abc", {}),
                                        ("DELETE", "/v1/jobs/abc", {}), ("GET", "/v1/openapi.json", {})]:  # fmt: skip
                response = server.client.request(method, url, headers=headers, **kwargs)
                assert response.status_code == 401, (headers, url, response.status_code)
                assert response.headers["www-authenticate"] == "Bearer"
                assert "token" in clean(response)["error"]
        assert server.client.get("/v1/health", headers=anonymous).status_code == 200
        assert server.client.get("/v1/models").status_code == 200
        assert server.client.get("/v1/models", headers={"Authorization": "bearer s3cret"}).status_code == 200
        assert server.client.post("/v1/separate", **upload(song)).status_code == 200
        assert server.client.get("/v1/jobs/abc").status_code == 404


def raw_request(url: str, head: str, body: bytes | None) -> tuple[bytes, bytes]:
    """Send `head` (request line and headers) over a plain socket, then `body` unless it is None; returns the
    response's (status line and headers, body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode() + b"\r\n")
        if body is not None:
            sock.sendall(body)
        return read_response(sock)


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """(status line and headers, body) of the response that arrives on `sock`."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        assert piece, f"the connection closed before a response: {data!r}"
        data += piece
    answer, content = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: *(\d+)", answer, re.IGNORECASE).group(1))
    while len(content) < length:
        content += sock.recv(65536)
    return answer, content


def test_oversized_uploads_are_413_before_the_body_is_stored(tiny_separator, tmp_path):
    """A declared Content-Length over the limit is refused before any body byte is asked for (a client that
    waits for `100 Continue` never sends the file); a chunked body that grows past the limit is cut off; a song
    longer than the limit is refused from its header. Nothing stays in the work folder."""
    with serving(tiny_separator, tmp_path, max_upload_bytes=100_000, max_duration=1.0) as server:
        wait_ready(server.client)
        boundary = "b0undary"
        head = (
            "POST /v1/separate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
            "Content-Length: 50000000\r\nExpect: 100-continue\r\n"
        )
        answer, content = raw_request(server.url, head, None)  # the client waits for "100 Continue"
        assert answer.startswith(b"HTTP/1.1 413"), answer
        assert json.loads(content) == {"error": "upload larger than the limit of 100000 bytes"}

        part = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.wav"\r\n\r\n'
        ).encode() + b"\0" * 200_000
        chunked = b"".join(
            b"%x\r\n%s\r\n" % (len(part[i : i + 8192]), part[i : i + 8192]) for i in range(0, len(part), 8192)
        )
        head = (
            "POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nTransfer-Encoding: chunked\r\n"
        )
        answer, content = raw_request(server.url, head, chunked + b"0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 413") and b"limit of 100000 bytes" in content, answer

        long_song = write_song(tmp_path / "long.wav", 2.0, 8000, 1, subtype="PCM_16")  # 32 kB, 2 s
        response = server.client.post("/v1/separate", **upload(long_song))
        assert response.status_code == 413
        assert (
            clean(response, server.service.workdir)["error"] == "long.wav: 2.0 s long; this server separates up to 1 s"
        )
        assert files_in(server.service.workdir) == []


def test_stalled_uploads_hold_no_queue_place_and_time_out(tiny_separator, tmp_path):
    """Clients that send headers and a few hundred bytes of the body and then go silent (or trickle) hold no
    place in the queue: with queue_size=1 and four of them, another client still separates a song. Each of
    them gets a one-line 408 after the idle or total upload time, and its partial file is removed."""
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    idle, total = 3.0, 5.0
    limits = {"queue_size": 1, "upload_idle_timeout": idle, "upload_timeout": total}
    boundary = "b0undary"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.wav"\r\n\r\n'.encode()
    with serving(tiny_separator, tmp_path, **limits) as server:
        wait_ready(server.client)
        head = (
            f"POST /v1/separate HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n"
        ).encode()
        started = time.monotonic()
        slow = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(4)]
        for sock in slow:
            sock.sendall(head + part + b"\0" * (300 - len(part)))  # 300 bytes of a 100000-byte body
        trickling = threading.Event()

        def trickle(sock: socket.socket) -> None:  # 10 bytes every 0.5 s: never idle, never done
            while not trickling.wait(0.5):
                with contextlib.suppress(OSError):
                    sock.sendall(b"\0" * 10)

        threading.Thread(target=trickle, args=(slow[-1],), daemon=True).start()
        wait_for(lambda: len(files_in(server.service.workdir)) == 4, "the four partial uploads")

        response = server.client.post("/v1/separate", **upload(song))
        assert response.status_code == 200, response.text
        answers = [read_response(sock) for sock in slow]
        elapsed = time.monotonic() - started
        trickling.set()
        for sock in slow:
            sock.close()
        stalled = f"upload stalled: nothing received for {idle:g} s; send it again"
        too_slow = f"upload too slow: not complete after {total:g} s; send it faster"
        for (answer, content), message in zip(answers, [stalled] * 3 + [too_slow], strict=True):
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert json.loads(content) == {"error": message}
        assert elapsed >= total
        assert files_in(server.service.workdir) == []


def test_uploads_in_flight_are_bounded(tiny_separator, tmp_path):
    """Uploads hold no queue place, but at most `max_uploads` may arrive at once (they take disk, and stalled ones
    hold their place until a timeout): a third client gets 429 while two stall, and a place again once they are
    refused."""
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    boundary = "b0undary"
    part = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="slow.wav"\r\n\r\n'.encode()
    with serving(tiny_separator, tmp_path, max_uploads=2, upload_idle_timeout=2.0) as server:
        wait_ready(server.client)
        head = (
            f"POST /v1/separate HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: 100000\r\n\r\n"
        ).encode()
        slow = [socket.create_connection(("127.0.0.1", server.port), timeout=30) for _ in range(2)]
        for sock in slow:
            sock.sendall(head + part)
        wait_for(lambda: len(files_in(server.service.workdir)) == 2, "the two partial uploads")
        response = server.client.post("/v1/separate", **upload(song))
        assert response.status_code == 429 and clean(response)["error"] == (
            "too many uploads in progress (2); retry later"
        )
        answers = [read_response(sock) for sock in slow]  # both stall past the idle timeout: 408
        for sock in slow:
            sock.close()
        assert all(answer.startswith(b"HTTP/1.1 408") for answer, _ in answers)
        response = server.client.post("/v1/separate", **upload(song))
        assert response.status_code == 200, response.text


def test_a_header_that_understates_the_duration_is_caught_while_decoding(tiny_separator, tmp_path):
    """A Matroska file whose header says 0.5 s but which holds 3 s, against a 1 s limit: 413 with a one-line
    message like the header check's, from /v1/separate and from a job, before any chunk reaches the network
    (the decoded samples are counted in the first pass, the mix statistics); no file is left."""
    mkv = write_understated_matroska(tmp_path / "short.mkv", seconds=3.0, header_seconds=0.5)
    separator, gate = gated(tiny_separator)
    message = "short.mkv: more than 1 s of audio (its header says 0.5 s); this server separates up to 1 s"
    with serving(separator, tmp_path, max_duration=1.0) as server:
        wait_ready(server.client)
        calls = gate.calls
        response = server.client.post("/v1/separate", **upload(mkv))
        assert response.status_code == 413 and clean(response, server.service.workdir)["error"] == message
        job = server.client.post("/v1/jobs", **upload(mkv)).json()
        assert wait_job(server.client, job["id"])["error"] == message
        result = server.client.get(f"/v1/jobs/{job['id']}/result")
        assert result.status_code == 413 and clean(result)["error"] == message
        assert gate.calls == calls, "the network ran on audio past the limit"
        server.client.delete(f"/v1/jobs/{job['id']}")
        assert files_in(server.service.workdir) == []


def test_long_utf8_file_names_are_cut_to_fit_every_file_the_job_makes(tiny_separator, tmp_path):
    """A name of 200 two-byte characters, and one of 255 bytes whose zip would be 256: the server cuts the name
    (in bytes, at a character, keeping the extension) so that its copy, the stems' folder and the zip all fit
    the 255 bytes a file name may have; the zip's members and its download name are that cut name."""
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    au = write_song(tmp_path / "song.au", 0.2, 44100, 2, format="AU", subtype="PCM_16")
    names = {"é" * 200 + ".wav": song, "あ" * 84 + ".au": au}
    assert len(("あ" * 84 + ".au").encode()) == 255
    with serving(tiny_separator, tmp_path) as server:
        wait_ready(server.client)
        for name, path in names.items():
            response = server.client.post("/v1/separate", files={"file": (name, path.read_bytes())})
            assert response.status_code == 200, (name, response.text)
            disposition = response.headers["content-disposition"]
            zip_name = unquote(disposition.split("filename*=utf-8''")[1])
            track = zip_name.removesuffix(".zip")
            assert len(zip_name.encode()) <= 255 and track and name.startswith(track), zip_name
            stems = read_zip(response.content, tmp_path / "got" / str(len(name)))
            assert sorted(stems) == sorted(f"{track}/{stem}.wav" for stem in SOURCES)

            job = server.client.post("/v1/jobs", files={"file": (name, path.read_bytes())}).json()
            assert job["file"] == track + Path(name).suffix and len(job["file"].encode()) <= 200, job
            assert wait_job(server.client, job["id"])["status"] == "done"
        assert all(len(part.encode()) <= 255 for file in files_in(server.service.workdir) for part in file.split("/"))


def test_a_finished_job_keeps_no_chunk_sized_arrays(tiny_separator, tmp_path):
    """Finished jobs wait (up to job_ttl) for their clients; each must stay small. Measured with tracemalloc
    over eight finished jobs: what they keep alive is less, per job, than one chunk's weight array (which a
    Separator variant carries: 1.3 MiB at the default 7.8 s segment, 32 KiB here)."""
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    chunk_weight = tiny_separator.weight.nbytes
    with serving(tiny_separator, tmp_path) as server:
        wait_ready(server.client)
        for _ in range(2):  # what the first requests allocate once (caches, the worker's state)
            wait_job(server.client, server.client.post("/v1/jobs", **upload(song)).json()["id"])
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            ids = []
            for _ in range(8):
                ids.append(server.client.post("/v1/jobs", **upload(song)).json()["id"])
                assert wait_job(server.client, ids[-1])["status"] == "done"
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        per_job = sum(stat.size_diff for stat in after.compare_to(before, "filename")) / len(ids)
        print(f"[serve] kept per finished job: {per_job / 1024:.1f} KiB; a chunk weight: {chunk_weight / 1024:.0f} KiB")
        assert per_job < chunk_weight, (per_job, chunk_weight)
        assert all(server.client.get(f"/v1/jobs/{i}").json()["status"] == "done" for i in ids)  # all still kept


def test_without_a_token_browser_requests_are_checked(tiny_separator, tmp_path):
    """No token: a Host header naming another domain (DNS rebinding) is 421, on every route; addresses,
    localhost and --allowed-host names pass. A POST or DELETE from a page of another origin (a cross-site form
    post) is 403; programs, which send no Origin, and same-origin pages pass. With a token neither check applies
    (the token is the defence). Nothing is stored for a refused request."""
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    with serving(tiny_separator, tmp_path, allowed_hosts=["studio.example"]) as server:
        wait_ready(server.client)
        here = f"127.0.0.1:{server.port}"
        for host in ("evil.example", f"evil.example:{server.port}", "127.0.0.1.evil.example"):
            requests = [("GET", "/v1/health", {}), ("GET", "/v1/models", {}), ("POST", "/v1/separate", upload(song)),
                        ("DELETE", "/v1/jobs/abc", {})]  # fmt: skip
            for method, url, kwargs in requests:
                response = server.client.request(method, url, headers={"Host": host}, **kwargs)
                assert response.status_code == 421, (host, url, response.status_code)
                assert f"Host {host!r} is not a name of this server" in clean(response)["error"]
        for host in (here, f"localhost:{server.port}", f"[::1]:{server.port}", "STUDIO.example:80", "10.1.2.3"):
            assert server.client.get("/v1/models", headers={"Host": host}).status_code == 200, host

        for headers in [{"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site"},
                        {"Sec-Fetch-Site": "same-site"}, {"Origin": "null"},
                        {"Origin": f"http://localhost:{server.port}"}]:  # fmt: skip
            for method, url, kwargs in [("POST", "/v1/separate", upload(song)), ("POST", "/v1/jobs", upload(song)),
                                        ("DELETE", "/v1/jobs/abc", {})]:  # fmt: skip
                response = server.client.request(method, url, headers=headers, **kwargs)
                assert response.status_code == 403, (headers, url, response.status_code)
                assert f"cross-site {method} refused" in clean(response)["error"]
            assert server.client.get("/v1/models", headers=headers).status_code == 200  # reading is not refused
        assert files_in(server.service.workdir) == []
        same_origin = {"Origin": f"http://{here}", "Sec-Fetch-Site": "same-origin"}
        assert server.client.post("/v1/separate", headers=same_origin, **upload(song)).status_code == 200

    with serving(tiny_separator, tmp_path, token="s3cret") as server:
        wait_ready(server.client)
        foreign = {"Host": "evil.example", "Origin": "http://evil.example", "Sec-Fetch-Site": "cross-site"}
        assert server.client.post("/v1/separate", headers=foreign, **upload(song)).status_code == 200


def test_non_audio_is_415_and_broken_audio_is_400_named_by_the_client_file(tiny_separator, tmp_path):
    """Not audio (or not multipart) -> 415; empty, truncated, NaN-holding, 3-channel audio or no file -> 400;
    every message names the uploaded file as the client called it, never the server's copy."""
    broken = bad_files(tmp_path / "bad")
    sf.write(tmp_path / "bad" / "six.wav", tones(3, 4000, 44100).T, 44100)
    expected = {
        "text.wav": (415, "text.wav: not a readable audio file"),
        "empty.wav": (400, "empty.wav: empty file (0 bytes)"),
        "trunc_wav.wav": (400, "trunc_wav.wav: truncated file"),
        "trunc_flac.flac": (400, "trunc_flac.flac: cannot decode audio"),
        "nan.wav": (400, "nan.wav: contains NaN or infinite samples"),
        "six.wav": (400, "six.wav: 3 channels is not supported"),
    }
    assert set(expected) - {"six.wav"} <= set(broken)
    with serving(tiny_separator, tmp_path) as server:
        wait_ready(server.client)
        for name, (status, message) in expected.items():
            for url in ("/v1/separate", "/v1/jobs"):
                response = server.client.post(url, **upload(tmp_path / "bad" / name))
                if url == "/v1/jobs" and response.status_code == 202:  # decoding errors surface while it runs
                    body = wait_job(server.client, response.json()["id"])
                    assert body["status"] == "failed", body
                    got_status, error = server.client.get(f"/v1/jobs/{body['id']}/result").status_code, body["error"]
                else:
                    got_status, error = response.status_code, clean(response, server.service.workdir)["error"]
                assert got_status == status and error.startswith(message), (name, url, got_status, error)
                assert str(tmp_path) not in error
        not_multipart = server.client.post("/v1/separate", json={"file": "song.wav"})
        assert not_multipart.status_code == 415 and "multipart/form-data" in clean(not_multipart)["error"]
        no_file = server.client.post("/v1/separate", data={"shifts": "1"}, files={"other": ("x", b"")})
        assert no_file.status_code == 422 and "unknown form field 'other'" in clean(no_file)["error"]
        only_fields = server.client.post("/v1/separate", files={"shifts": (None, "1")})
        assert only_fields.status_code == 400 and "no file" in clean(only_fields)["error"]


def test_bad_options_are_422_worded_by_the_one_validation(tiny_separator, tmp_path):
    """Form values are checked by SeparationOptions / OutputOptions (the package's one validation), named by
    their form field."""
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    cases = {
        "shifts=-1": ({"shifts": -1}, "shifts=-1: must be an integer in [0, 100]"),
        "shifts=two": ({"shifts": "two"}, "shifts='two': must be an integer in [0, 100]"),
        "overlap=1.5": ({"overlap": 1.5}, "overlap=1.5: must be in [0, 1)"),
        "overlap=nan": ({"overlap": "nan"}, "overlap=nan: must be in [0, 1)"),
        "format=aac": ({"format": "aac"}, "format='aac': unknown output format; choose one of wav, flac, mp3, ogg"),
        "two_stems=piano": ({"two_stems": "piano"}, "two_stems='piano': the model has no such stem"),
        "segment=3": ({"segment": 3}, "unknown form field 'segment'"),
    }
    with serving(tiny_separator, tmp_path) as server:
        wait_ready(server.client)
        for label, (fields, message) in cases.items():
            for url in ("/v1/separate", "/v1/jobs"):
                response = server.client.post(url, **upload(song, **fields))
                assert response.status_code == 422, (label, url, response.text)
                assert clean(response)["error"].startswith(message), (label, response.text)
        assert files_in(server.service.workdir) == []


def test_a_full_queue_is_429_and_one_separation_runs_at_a_time(tiny_separator, tmp_path):
    """queue_size=1: one job runs, one waits, the next request (job or direct) gets 429 before its upload is
    stored; when the queue drains, requests are accepted again. The network never runs two batches at once."""
    separator, gate = gated(tiny_separator)
    running, most = [0], [0]
    inner = gate.forward

    def counting(batch):
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            return inner(batch)
        finally:
            running[0] -= 1

    gate.forward = counting
    song = write_song(tmp_path / "song.wav", 0.5, 44100, 2, subtype="PCM_16")
    with serving(separator, tmp_path, queue_size=1) as server:
        client = server.client
        wait_ready(client)
        gate.close()
        first = client.post("/v1/jobs", **upload(song)).json()
        wait_job(client, first["id"], statuses=("running",))
        second = client.post("/v1/jobs", **upload(song))
        assert second.status_code == 202 and second.json()["status"] == "queued"
        for url in ("/v1/jobs", "/v1/separate"):
            full = client.post(url, **upload(song))
            assert full.status_code == 429 and "queue is full" in clean(full)["error"], full.text
        gate.open()
        for job_id in (first["id"], second.json()["id"]):
            assert wait_job(client, job_id)["status"] == "done"
        assert client.post("/v1/separate", **upload(song)).status_code == 200
        assert most[0] == 1


def test_internal_errors_are_500_without_details(tiny_separator, tmp_path):
    """An unexpected failure inside the network answers 500 with the error's type only: no message (it may hold
    paths), no traceback; the server keeps serving."""
    calls = []

    def failing(batch):
        calls.append(1)
        if len(calls) > 1:  # the warm-up pass succeeds
            raise RuntimeError(f"device lost at {tmp_path}/secret")
        return tiny_separator.forward(batch)

    separator = Separator(tiny_separator.model, segment=SEGMENT_SECONDS, forward=failing)
    song = write_song(tmp_path / "song.wav", 0.2, 44100, 2, subtype="PCM_16")
    with serving(separator, tmp_path) as server:
        wait_ready(server.client)
        response = server.client.post("/v1/separate", **upload(song))
        assert response.status_code == 500
        assert clean(response, tmp_path)["error"] == "internal error (RuntimeError); the server log has details"
        missing = server.client.get("/v1/nowhere")
        assert missing.status_code == 404 and clean(missing) == {"error": "Not Found"}
        assert server.client.get("/v1/health").status_code == 200


# ---------------------------------------------------------------------------------------------------------
# The command


def test_serve_command_options_are_checked_like_the_other_commands(tiny_checkpoint_dir, tmp_path, capsys):
    """Bad limits are usage errors (exit 2) naming the flag or the variable; `--preload` loads and exits; `--help`
    loads no heavy library."""
    for args, message in [
        (["--queue-size", "0"], "--queue-size 0: must be an integer > 0"),
        (["--max-upload", "lots"], "--max-upload lots: must be a size in bytes (e.g. 200mb)"),
        (["--overlap", "1"], "--overlap 1.0: must be in [0, 1)"),
        (["--upload-idle-timeout", "0"], "--upload-idle-timeout 0.0: must be a number > 0"),
        (["--allowed-host", "http://studio.example"], "--allowed-host http://studio.example: must be a host name"),
        (["--gpu-memory-fraction", "0"], "--gpu-memory-fraction 0.0: must be a fraction of each GPU's memory in (0,"),
        (["--gpu-memory-fraction", "1.5"], "--gpu-memory-fraction 1.5: must be a fraction of each GPU's memory"),
        # this process's JAX has started: the setting could no longer apply
        (["--gpu-memory-fraction", "0.5"], "--gpu-memory-fraction 0.5: JAX has already started in this process"),
    ]:
        with pytest.raises(SystemExit) as stop:
            main(["serve", *args])
        assert stop.value.code == 2 and message in capsys.readouterr().err
    for name, value, message in [
        ("HDEMUCS_API_JOB_TTL", "soon", "HDEMUCS_API_JOB_TTL='soon': must be float"),
        ("HDEMUCS_API_GPU_MEMORY_FRACTION", "lots", "HDEMUCS_API_GPU_MEMORY_FRACTION='lots': must be a number"),
    ]:
        os.environ[name] = value
        try:
            with pytest.raises(SystemExit) as stop:
                main(["serve"])
        finally:
            del os.environ[name]
        assert stop.value.code == 2 and message in capsys.readouterr().err
    assert main(["serve", "--preload", "--model", str(tiny_checkpoint_dir)]) == 0
    assert main(["serve", "--preload", "--model", str(tmp_path / "nothing")]) == 1
    assert "nothing: no such model folder" in capsys.readouterr().err

    result = run_script("cli_modules", {**os.environ, "PYTHONPATH": str(REPO_ROOT)}, "serve", "--help")
    assert "exit status: 0" in result.stdout
    for name in ("torch", "transformers", "jax", "flax"):
        assert f"loaded {name}: False" in result.stdout, name


def test_serve_command_shares_the_gpu_it_is_told_to(tiny_checkpoint_dir, tmp_path):
    """`serve --gpu-memory-fraction 0.4`, or HDEMUCS_API_GPU_MEMORY_FRACTION, is set before JAX starts (the
    command up to its model: --preload): JAX's GPU client would take at most that fraction of each GPU, as it
    needs it, although the host set the old-named variable (jaxlib refuses both names at once); without either,
    the host's own setting stays."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "JAX_PLATFORMS": "cpu", "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.75"}
    cases = [
        ({}, ["--gpu-memory-fraction", "0.4"], {"memory_fraction": 0.4, "preallocate": False}),
        ({"HDEMUCS_API_GPU_MEMORY_FRACTION": "0.3"}, [], {"memory_fraction": 0.3, "preallocate": False}),
        ({}, [], {"memory_fraction": 0.75, "preallocate": None}),
    ]
    for variables, flags, expected in cases:
        argv = ["serve", *flags, "--preload", "--model", str(tiny_checkpoint_dir)]
        result = run_script("gpu_client_options", {**env, **variables}, *argv)
        assert json.loads(result.stdout.splitlines()[-1]) == {"status": 0, **expected}, result.stderr[-3000:]


def test_serve_command_refuses_an_empty_token_and_filename_before_loading_anything(tmp_path):
    """HDEMUCS_API_TOKEN set but empty would turn authentication off without a word: a usage error (exit 2, one
    line), as is --filename (a zip always holds <track>/<stem>.<ext>); neither loads JAX or transformers."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "HDEMUCS_API_TOKEN": "", "TMPDIR": str(tmp_path)}
    for args, message in [
        (["serve", "--host", "0.0.0.0"], "error: HDEMUCS_API_TOKEN is set but empty: set it to a secret, or unset it"),
        (["serve", "--filename", "{stem}.{ext}"], "error: unrecognized arguments: --filename"),
    ]:
        result = run_script("cli_modules", env, *args)
        assert "exit status: 2" in result.stdout
        errors = [line for line in result.stderr.splitlines() if line.startswith("error") or "rror:" in line]
        assert len(errors) == 1 and message in errors[0], result.stderr
        assert "Traceback" not in result.stderr
        for name in ("torch", "transformers", "jax", "flax"):
            assert f"loaded {name}: False" in result.stdout, name
    assert files_in(tmp_path) == []


def test_serve_command_without_the_extra_says_how_to_install_it_from_a_checkout(monkeypatch, capsys):
    """Without FastAPI the command says to install the [serve] extra from the checkout (the package is not on
    PyPI, so `pip install 'hdemucs-flax[serve]'` would name an unclaimed project)."""
    monkeypatch.delitem(sys.modules, "modeling_hdemucs_flax.apps.serve", raising=False)
    monkeypatch.delattr(modeling_hdemucs_flax, "serve", raising=False)
    monkeypatch.delattr(modeling_hdemucs_flax.apps, "serve", raising=False)  # `from . import serve` looks here first
    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` raises ModuleNotFoundError
    assert main(["serve"]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 1 and "install it from your checkout: pip install '.[serve]'" in errors[0], errors
    assert "hdemucs-flax[" not in errors[0]


def test_serve_command_output_options_are_every_requests_defaults(tiny_checkpoint_dir, jax_cache, tmp_path):
    """`serve --flac --int24 --two-stems vocals --other-method minus`: a request without fields gets 24-bit FLAC
    vocals and no_vocals (the mix minus the vocals); `format` and `two_stems` override one default each and keep
    the others (a format that cannot hold 24-bit samples gets its own sample format); /v1/models says what the
    defaults are."""
    args = ["--model", str(tiny_checkpoint_dir), "--segment", str(SEGMENT_SECONDS), "-q"]
    args += ["--flac", "--int24", "--two-stems", "vocals", "--other-method", "minus"]
    env = {"HDEMUCS_FLAX_COMPILATION_CACHE": str(jax_cache), "JAX_PLATFORMS": "cpu", "HDEMUCS_API_TOKEN": None}
    song = write_song(tmp_path / "in" / "song.wav", 0.3, 44100, 2, subtype="PCM_16")
    cases = [
        ({}, {"song/vocals.flac": "PCM_24", "song/no_vocals.flac": "PCM_24"}),
        ({"format": "wav"}, {"song/vocals.wav": "PCM_24", "song/no_vocals.wav": "PCM_24"}),
        ({"two_stems": "drums"}, {"song/drums.flac": "PCM_24", "song/no_drums.flac": "PCM_24"}),
        ({"format": "mp3"}, {"song/vocals.mp3": "MPEG_LAYER_III", "song/no_vocals.mp3": "MPEG_LAYER_III"}),
    ]
    with ServeProcess(tmp_path, args, env) as server:
        client = httpx.Client(base_url=server.url, timeout=120)
        wait_ready(client)
        models = clean(client.get("/v1/models"))
        assert models["models"][0]["defaults"] == {"format": "flac", "two_stems": "vocals"}, models
        for fields, expected in cases:
            response = client.post("/v1/separate", **upload(song, **fields))
            assert response.status_code == 200, (fields, response.text)
            folder = tmp_path / "out" / "-".join(map(str, fields.values()))
            stems = read_zip(response.content, folder)
            assert {name: sf.info(folder / name).subtype for name in stems} == expected, fields
            mix, _ = sf.read(song, dtype="float32", always_2d=True)
            (vocals, _), (rest, _) = (stems[name] for name in expected)
            if fields.get("format") != "mp3":  # minus: the two stems add up to the mix (to 24-bit rounding)
                np.testing.assert_allclose(vocals + rest, mix.T, atol=1e-6)
        client.close()
        server.terminate()


def test_serve_command_removes_what_a_killed_server_left_and_nothing_else(tiny_checkpoint_dir, jax_cache, tmp_path):
    """A server killed with SIGKILL mid-job leaves its work folder (the upload, partial stems); the next server
    started on the same --workdir removes it, and keeps a folder named after a process that is still running."""
    work = tmp_path / "work"
    args = ["--model", str(tiny_checkpoint_dir), "--segment", str(SEGMENT_SECONDS), "--workdir", str(work), "-q"]
    env = {"HDEMUCS_FLAX_COMPILATION_CACHE": str(jax_cache), "JAX_PLATFORMS": "cpu", "HDEMUCS_API_TOKEN": None}
    long_song = write_song(tmp_path / "in" / "long.wav", 60.0, 44100, 2, subtype="PCM_16")
    with ServeProcess(tmp_path, args, env) as first:
        client = httpx.Client(base_url=first.url, timeout=120)
        wait_ready(client)
        job = client.post("/v1/jobs", **upload(long_song)).json()
        wait_for(lambda: client.get(f"/v1/jobs/{job['id']}").json()["chunks_done"] >= 1, "the first chunk")
        client.close()
        assert first.process is not None
        first.process.kill()
        first.process.wait(60)
    left = files_in(work)
    assert any(name.endswith("/in/long.wav") for name in left), left
    [killed] = {work / name.split("/")[0] for name in left}

    live = work / f".hdemucs-serve.{os.getpid()}-abcdefgh.work"  # this test's process is running
    (live / "job").mkdir(parents=True)
    (live / "job" / "keep.wav").write_bytes(b"")
    os.utime(live, (time.time() - 3600, time.time() - 3600))
    with ServeProcess(tmp_path, args, env) as second:
        client = httpx.Client(base_url=second.url, timeout=120)
        wait_ready(client)
        client.close()
        assert not killed.exists()
        assert files_in(work) == [f"{live.name}/job/keep.wav"]
        assert second.terminate() == 128 + signal.SIGTERM
    assert files_in(work) == [f"{live.name}/job/keep.wav"]


def test_serve_command_with_a_token_separates_and_shuts_down_cleanly_on_sigterm(
    tiny_checkpoint_dir, jax_cache, tmp_path
):
    """`hdemucs-flax serve` in its own process: 127.0.0.1 by default, the model named by its folder (no path),
    the token enforced, a WAV and an MP3 separated; SIGTERM during a long job cancels it, the process exits by
    the signal once it has cleaned up, and neither its work folder nor its temp folder keeps a file."""
    temp, work = tmp_path / "tmp", tmp_path / "work"
    temp.mkdir()
    env = {
        "HDEMUCS_API_TOKEN": "t0ken",
        "HDEMUCS_FLAX_COMPILATION_CACHE": str(jax_cache),
        "TMPDIR": str(temp),
        "JAX_PLATFORMS": "cpu",
    }
    args = ["--model", str(tiny_checkpoint_dir), "--segment", str(SEGMENT_SECONDS), "--workdir", str(work)]
    wav = write_song(tmp_path / "in" / "song.wav", 0.3, 44100, 2, subtype="PCM_16")
    mp3 = write_song(tmp_path / "in" / "song48.mp3", 0.3, 48000, 2, format="MP3")
    long_song = write_song(tmp_path / "in" / "long.wav", 60.0, 44100, 2, subtype="PCM_16")
    with ServeProcess(tmp_path, args, env) as server:
        client = httpx.Client(base_url=server.url, timeout=120)
        wait_ready(client)
        assert client.get("/v1/health").json()["model"] == tiny_checkpoint_dir.name
        assert client.post("/v1/separate", **upload(wav)).status_code == 401
        client.headers["Authorization"] = "Bearer t0ken"
        for path in (wav, mp3):
            response = client.post("/v1/separate", **upload(path))
            assert response.status_code == 200, response.text
            clean(response, tmp_path, tiny_checkpoint_dir)
            stems = read_zip(response.content, tmp_path / "out" / path.name)
            info = sf.info(path)
            assert sorted(stems) == sorted(f"{path.stem}/{s}.wav" for s in SOURCES)
            assert {(a.shape, r) for a, r in stems.values()} == {((2, info.frames), info.samplerate)}

        job = client.post("/v1/jobs", **upload(long_song)).json()
        deadline = time.monotonic() + 60
        while (status := client.get(f"/v1/jobs/{job['id']}").json())["chunks_done"] < 1:
            assert time.monotonic() < deadline and status["status"] in ("queued", "running"), status
            time.sleep(0.05)
        assert status["status"] == "running" and status["chunks_done"] < status["chunks_total"]
        started = time.monotonic()
        # uvicorn finishes its shutdown, then re-raises the signal: the command's rule, 128 + the signal
        assert server.terminate() == 128 + signal.SIGTERM, server.log_text()[-3000:]
        stopped = time.monotonic() - started
        client.close()
    log = server.log_text()
    print(f"[serve] SIGTERM during a job: exited in {stopped:.1f} s")
    assert "Traceback" not in log and "error:" not in log and "ready on http://127.0.0.1:" in log, log[-3000:]
    assert files_in(temp) == [] and files_in(work) == [], (files_in(temp), files_in(work))


def test_serve_command_exits_1_with_one_line_when_the_model_cannot_load(tmp_path):
    """A model that cannot be loaded ends the server (it would never become healthy): one `error:` line, exit 1,
    no traceback, no temporary file left."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {"TMPDIR": str(temp), "JAX_PLATFORMS": "cpu"}
    with ServeProcess(tmp_path, ["--model", str(tmp_path / "no-model"), "-q"], env) as server:
        assert server.process is not None
        assert server.process.wait(300) == 1
    errors = [line for line in server.log_text().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "no-model: no such model folder" in errors[0], server.log_text()[-2000:]
    assert "Traceback" not in server.log_text() and files_in(temp) == []
