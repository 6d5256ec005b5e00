"""Local HTTP servers for offline tests of the Hub and download flows (stdlib only, 127.0.0.1).

`HubServer` speaks the part of the Hugging Face Hub protocol that `huggingface_hub` 0.36 and transformers 4.57
use to download (`hf_hub_download`, `snapshot_download`, `from_pretrained`) and to publish (`create_repo`,
`create_branch`, `upload_folder`): repos live in memory as a chain of commits per branch. `FileServer` serves
a dict of static files (torchaudio's asset server). Both log every request so tests can prove that an
offline step made none. A network that is not there is played by `closed_port_url` (connection refused) and
`SilentServer` (accepts connections and never answers: a dead endpoint, or a proxy that swallows requests).

Hub behaviour reproduced (the codes `huggingface_hub.utils.hf_raise_for_status` maps to exceptions):
- `HEAD|GET /{repo}/resolve/{revision}/{path}`: 200 with `X-Repo-Commit`, `ETag` (the file's git blob sha1)
  and `Content-Length`; 404 + `X-Error-Code: RepoNotFound | RevisionNotFound | EntryNotFound`.
- `GET /api/models/{repo}[/revision/{revision}]`: `{"id", "sha", "siblings": [{"rfilename"}], "private"}`.
- `POST /api/repos/create` (409 when the repo exists), `POST /api/models/{repo}/branch/{branch}` (409 when it
  exists), `POST /api/validate-yaml`.
- `POST /api/models/{repo}/preupload/{revision}`: every file `uploadMode: "regular"`, `shouldIgnore: false`,
  and `oid` = the git blob sha1 of the file already at that path, which lets the client skip unchanged files.
- `POST /api/models/{repo}/commit/{revision}`: NDJSON `header`, `file` (base64) and `deletedFile` lines; a new
  commit on the branch, answered with `commitOid` and `commitUrl`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a file, which the Hub uses as a regular file's ETag and oid."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class Commit:
    sha: str
    files: dict[str, bytes]
    message: str


@dataclass
class Repo:
    private: bool = False
    branches: dict[str, list[Commit]] = field(default_factory=dict)

    def resolve(self, revision: str) -> Commit | None:
        if revision in self.branches:
            return self.branches[revision][-1]
        for history in self.branches.values():
            for commit in history:
                if commit.sha == revision:
                    return commit
        return None


def _commit_sha(parent: str, files: dict[str, bytes], message: str) -> str:
    digest = hashlib.sha1(parent.encode() + message.encode())
    for path in sorted(files):
        digest.update(path.encode() + git_blob_sha1(files[path]).encode())
    return digest.hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Base:
    """Start/stop in a thread; a request log; use as a context manager."""

    handler: type[BaseHTTPRequestHandler]

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._server = _Server(("127.0.0.1", 0), self._make_handler())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def _make_handler(self):
        owner = self

        class Handler(self.handler):
            server_owner = owner

        return Handler

    def log(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_owner: _Base

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def reply(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, *, head: bool = False
    ) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def reply_json(self, status: int, payload, headers: dict[str, str] | None = None) -> None:
        self.reply(status, json.dumps(payload).encode(), {"Content-Type": "application/json", **(headers or {})})

    def error(self, status: int, code: str, message: str, *, head: bool = False) -> None:
        body = json.dumps({"error": message}).encode()
        self.reply(
            status,
            body,
            {"Content-Type": "application/json", "X-Error-Code": code, "X-Error-Message": message},
            head=head,
        )

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""


class HubServer(_Base):
    """A Hugging Face Hub stand-in: `HF_ENDPOINT=server.url`."""

    class handler(_Handler):  # noqa: N801 - the attribute `_Base` expects
        def do_HEAD(self) -> None:
            self._get(head=True)

        def do_GET(self) -> None:
            self._get(head=False)

        def do_POST(self) -> None:
            hub: HubServer = self.server_owner
            path = unquote(urlsplit(self.path).path)
            hub.log("POST", path)
            payload = self.body()
            parts = path.strip("/").split("/")
            if path == "/api/repos/create":
                request = json.loads(payload or b"{}")
                repo_id = "/".join(p for p in (request.get("organization"), request["name"]) if p)
                with hub._lock:
                    if repo_id in hub.repos:  # the Hub's 409 names the existing repo; clients read its url
                        body = {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"}
                        return self.reply_json(409, body, {"X-Error-Message": body["error"]})
                    hub.create(repo_id, private=bool(request.get("private")))
                return self.reply_json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
            if path == "/api/validate-yaml":
                return self.reply_json(200, {"errors": [], "warnings": []})
            if len(parts) >= 6 and parts[:2] == ["api", "models"]:
                repo_id, action, revision = "/".join(parts[2:4]), parts[4], "/".join(parts[5:])
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self.error(404, "RepoNotFound", f"Repository {repo_id} not found")
                if action == "branch":
                    with hub._lock:
                        if revision in repo.branches:
                            return self.error(409, "BranchExists", f"Branch {revision} already exists")
                        repo.branches[revision] = [repo.branches["main"][-1]]
                    return self.reply_json(200, {})
                if revision not in repo.branches:
                    return self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
                if action == "preupload":
                    current = repo.branches[revision][-1].files
                    files = [
                        {
                            "path": f["path"],
                            "uploadMode": "regular",
                            "shouldIgnore": False,
                            "oid": git_blob_sha1(current[f["path"]]) if f["path"] in current else None,
                        }
                        for f in json.loads(payload)["files"]
                    ]
                    return self.reply_json(200, {"files": files, "commitOid": repo.branches[revision][-1].sha})
                if action == "commit":
                    commit = hub.commit(repo_id, revision, payload)
                    return self.reply_json(
                        200,
                        {
                            "commitOid": commit.sha,
                            "commitUrl": f"{hub.url}/{repo_id}/commit/{commit.sha}",
                            "pullRequestUrl": None,
                        },
                    )
            return self.error(404, "NotFound", f"no route for POST {path}")

        def _get(self, *, head: bool) -> None:
            hub: HubServer = self.server_owner
            path = unquote(urlsplit(self.path).path)
            hub.log("HEAD" if head else "GET", path)
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id = "/".join(parts[2:4])
                revision = "/".join(parts[5:]) if len(parts) > 5 and parts[4] == "revision" else "main"
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self.error(404, "RepoNotFound", f"Repository {repo_id} not found", head=head)
                commit = repo.resolve(revision)
                if commit is None:
                    return self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
                info = {
                    "id": repo_id,
                    "modelId": repo_id,
                    "sha": commit.sha,
                    "private": repo.private,
                    "siblings": [{"rfilename": name} for name in sorted(commit.files)],
                }
                return self.reply_json(200, info)
            if len(parts) >= 5 and parts[2] == "resolve":
                repo_id, revision, file_path = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self.error(404, "RepoNotFound", f"Repository {repo_id} not found", head=head)
                commit = repo.resolve(revision)
                if commit is None:
                    return self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head=head)
                if file_path not in commit.files:
                    return self.error(404, "EntryNotFound", f"{file_path} does not exist at {revision}", head=head)
                content = commit.files[file_path]
                headers = {
                    "X-Repo-Commit": commit.sha,
                    "ETag": f'"{git_blob_sha1(content)}"',
                    "Content-Type": "application/octet-stream",
                }
                return self.reply(200, content, headers, head=head)
            return self.error(404, "NotFound", f"no route for GET {path}", head=head)

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        super().__init__()

    def create(self, repo_id: str, *, private: bool = False, files: dict[str, bytes] | None = None) -> Repo:
        """A repo whose first commit holds `.gitattributes` (as on the Hub) plus `files`."""
        initial = {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n", **(files or {})}
        repo = Repo(private=private)
        repo.branches["main"] = [Commit(_commit_sha("", initial, "initial commit"), initial, "initial commit")]
        self.repos[repo_id] = repo
        return repo

    def commit(self, repo_id: str, branch: str, ndjson: bytes) -> Commit:
        with self._lock:
            history = self.repos[repo_id].branches[branch]
            files = dict(history[-1].files)
            message = ""
            for line in ndjson.splitlines():
                if not line.strip():
                    continue
                item = json.loads(line)
                value = item["value"]
                if item["key"] == "header":
                    message = value.get("summary", "")
                elif item["key"] == "file":
                    assert value.get("encoding", "base64") == "base64", value
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "deletedFile":
                    files.pop(value["path"], None)
                else:
                    raise ValueError(f"unsupported commit operation {item['key']!r} in this test server")
            commit = Commit(_commit_sha(history[-1].sha, files, message), files, message)
            history.append(commit)
            return commit

    def head(self, repo_id: str, branch: str = "main") -> Commit:
        return self.repos[repo_id].branches[branch][-1]


class FileServer(_Base):
    """Static files at `{url}/{path}` (e.g. torchaudio's `models/hdemucs_high_trained.pt`). A value may also be
    a responder (one of the misbehaviours below, or any callable taking the request handler) that writes the
    whole response itself."""

    class handler(_Handler):  # noqa: N801
        def do_GET(self) -> None:
            owner: FileServer = self.server_owner
            path = unquote(urlsplit(self.path).path).lstrip("/")
            owner.log("GET", path)
            if path not in owner.files:
                return self.reply(404, b"not found")
            content = owner.files[path]
            if callable(content):
                self.close_connection = True
                try:
                    return content(self)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up: what a test wants
                    return None
            return self.reply(200, content, {"Content-Type": "application/octet-stream"})

    def __init__(self, files: dict[str, bytes | Callable[[BaseHTTPRequestHandler], None]] | None = None) -> None:
        self.files = dict(files or {})
        super().__init__()


def closed_port_url() -> str:
    """`http://127.0.0.1:PORT` where nothing listens (the port was just free): every connection is refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


class SilentServer:
    """Accepts TCP connections on 127.0.0.1 and never sends a byte (nor closes them while it runs): `url` as an
    endpoint, or as `HTTPS_PROXY`, is a server that never answers."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        self._held: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:  # closed by __exit__
                return
            self._held.append(connection)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._socket.close()
        for connection in self._held:
            connection.close()


# Misbehaving responses for FileServer: each returns a responder serving `content` wrongly.


def unannounced(content: bytes):
    """All of `content` in chunked transfer encoding, so the client learns no length in advance."""

    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for start in range(0, len(content), 1 << 16):
            piece = content[start : start + (1 << 16)]
            handler.wfile.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
        handler.wfile.write(b"0\r\n\r\n")
        handler.wfile.flush()

    return respond


def cut_mid_chunk(content: bytes):
    """Chunked transfer encoding, cut inside the second chunk (the client sees IncompleteRead)."""

    def respond(handler: BaseHTTPRequestHandler) -> None:
        half = len(content) // 2
        handler.send_response(200)
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        handler.wfile.write(b"%x\r\n" % half + content[:half] + b"\r\n")
        rest = content[half:]
        handler.wfile.write(b"%x\r\n" % len(rest) + rest[: len(rest) // 2])  # then the connection closes
        handler.wfile.flush()

    return respond


def content_length(content: bytes, header: str):
    """`content` under a `Content-Length: header` that lies (malformed, too large, ...); then the connection
    closes."""

    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", header)
        handler.end_headers()
        handler.wfile.write(content)
        handler.wfile.flush()

    return respond


def trickle(content: bytes, interval: float, limit: float = 60.0, length: int | None = None):
    """A header announcing `length` bytes (default: the content's), then one byte every `interval` seconds
    (never timing out a single read), for at most `limit` seconds."""

    def respond(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(content) if length is None else length))
        handler.end_headers()
        deadline = time.monotonic() + limit
        for i in range(len(content)):
            if time.monotonic() > deadline:
                return
            handler.wfile.write(content[i : i + 1])
            handler.wfile.flush()
            time.sleep(interval)

    return respond
