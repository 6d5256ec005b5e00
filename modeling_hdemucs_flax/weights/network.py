"""Is a server reachable? One short request, before a client that retries for minutes is let loose on it.

huggingface_hub retries a failed request five times with 1 + 2 + 4 + 8 + 8 s of back-off, each try allowed
10 s, so without a network the first run sat silent for 25 s, and 147 s behind a proxy that never answers.
`unreachable(url)` sends one HEAD request for the root of `url`'s server (through the proxy the environment
names for it, as requests and urllib both do) and waits at most `PROBE_TIMEOUT` seconds, the host-name lookup
included. It reports only
what surely means "no use trying": a name that does not resolve, a refused connection, an unreachable
network, no answer in time. Anything else, an HTTP error status or a TLS failure, is the real client's to
judge, so a probe never stops a download that would have worked.

Standard library only.
"""

from __future__ import annotations

import errno
import socket
import threading
import urllib.error
import urllib.request
from urllib.parse import urlsplit

PROBE_TIMEOUT = 5.0  # seconds; a TLS handshake over a slow link (600 ms round trips) takes about 2.5 s

_UNREACHABLE_ERRNOS = {errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN}


def proxy_for(url: str) -> str | None:
    """The proxy the environment (`HTTPS_PROXY`, `HTTP_PROXY`, `NO_PROXY`, ...) sends `url` through, or None."""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


def unreachable(url: str, timeout: float = PROBE_TIMEOUT) -> str | None:
    """None when `url`'s server (or its proxy) answers, with any status, a HEAD request for its root within
    `timeout` seconds (the root, not the file: urllib would follow a redirect of the file with a GET); otherwise
    why not, as a phrase: "127.0.0.1:9 refused the connection", "host name nonexistent.invalid not resolved",
    "no answer from the proxy http://10.0.0.1:3128 (HTTPS_PROXY) within 5 s"."""
    parts = urlsplit(url)
    proxy = proxy_for(url)
    where = f"the proxy {proxy} ({parts.scheme.upper()}_PROXY)" if proxy else (parts.netloc or url)
    outcome: list[BaseException | None] = []

    def attempt() -> None:
        try:
            root = f"{parts.scheme}://{parts.netloc}/"
            urllib.request.urlopen(urllib.request.Request(root, method="HEAD"), timeout=timeout).close()
        except urllib.error.HTTPError as answer:  # a status line came back: the server is there
            answer.close()
        except BaseException as error:  # noqa: BLE001 - classified by the caller's thread below
            outcome.append(error)
            return
        outcome.append(None)

    # In a thread so that the host-name lookup, which socket timeouts do not cover, is bounded too; a lookup
    # still hanging after `timeout` is left to finish on its own (daemon thread, nothing to clean up).
    worker = threading.Thread(target=attempt, name="hdemucs-flax-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    if not outcome:
        return f"no answer from {where} within {timeout:g} s"
    error = outcome[0]
    if error is None:
        return None
    cause = error.reason if isinstance(error, urllib.error.URLError) else error
    if isinstance(cause, socket.gaierror):
        host = urlsplit(proxy).hostname if proxy else parts.hostname
        return f"host name {host} not resolved" + (f" (for {where})" if proxy else "")
    if isinstance(cause, ConnectionRefusedError):
        return f"{where} refused the connection"
    if isinstance(cause, TimeoutError):
        return f"no answer from {where} within {timeout:g} s"
    if isinstance(cause, OSError) and cause.errno in _UNREACHABLE_ERRNOS:
        return f"{where}: {cause.strerror or 'network unreachable'}"
    return None
