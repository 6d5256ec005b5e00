"""Runs space/app.py (argv[1]) as `__main__`, as a Space starts it, under an audit hook that prints every DNS
look-up of, or connection to, a host other than the loopback one (lines starting OUTSIDE-NETWORK)."""

import runpy
import sys

LOCAL = {"127.0.0.1", "::1", "localhost", "0.0.0.0", "::", None}


def hook(event, args):
    if event == "socket.getaddrinfo":
        host = args[0].decode() if isinstance(args[0], bytes) else args[0]
        if host not in LOCAL:
            print(f"OUTSIDE-NETWORK lookup {host}", file=sys.stderr, flush=True)
    elif event == "socket.connect" and isinstance(args[1], tuple) and args[1][0] not in LOCAL:
        print(f"OUTSIDE-NETWORK connect {args[1]}", file=sys.stderr, flush=True)


sys.addaudithook(hook)
app = sys.argv[1]
sys.argv = [app]
sys.path.insert(0, app.rsplit("/", 1)[0])
runpy.run_path(app, run_name="__main__")
