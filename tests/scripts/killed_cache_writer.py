"""Runs `hdemucs-flax` (argv[2:]) as the console script does, in a process the kernel kills (SIGXFSZ) the moment
it writes a file past argv[1] bytes: a stand-in for a process killed while it writes a persistent compilation
cache entry (the out-of-memory killer, a Ray actor's SIGKILL), at a point that does not depend on timing."""

import resource
import signal
import sys

signal.signal(signal.SIGXFSZ, signal.SIG_DFL)  # Python ignores SIGXFSZ; the kernel's default action kills
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[1]), resource.RLIM_INFINITY))

from modeling_hdemucs_flax.apps.cli import entry_point  # noqa: E402  (after the limit: the whole run is under it)

sys.exit(entry_point(sys.argv[2:]))
