"""Where the package keeps its files, and the process-wide JAX setup an application opts into.

Nothing here runs on import. Building a model or a `Separator` configures nothing global; applications (the
command line, the Space, a server, a dataset worker) call `configure_xla()` first (before anything starts
JAX) and `configure_compilation_cache()` once at start-up.

One cache root, `cache_dir()`: `$HDEMUCS_FLAX_CACHE`, else `$XDG_CACHE_HOME/hdemucs-flax`, else
`~/.cache/hdemucs-flax`. It holds converted models (`converted/`), torchaudio downloads (`torchaudio/`) and,
unless `$HDEMUCS_FLAX_COMPILATION_CACHE` says otherwise, JAX's persistent compilation cache
(`jax-compilation-cache/`).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import OptionError

ENV_CACHE = "HDEMUCS_FLAX_CACHE"
ENV_COMPILATION_CACHE = "HDEMUCS_FLAX_COMPILATION_CACHE"  # a folder, or "0"/"off"/"false"/"no" to disable
_DISABLED = ("", "0", "off", "false", "no")


def cache_dir() -> Path:
    """The package's cache folder (read from the environment at each call)."""
    explicit = os.environ.get(ENV_CACHE)
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "hdemucs-flax"


def compilation_cache_dir() -> Path | None:
    """The default folder of the persistent compilation cache, or None when the environment disables it:
    `$HDEMUCS_FLAX_COMPILATION_CACHE`, else a folder the user already gave JAX (`jax_compilation_cache_dir`,
    e.g. through `JAX_COMPILATION_CACHE_DIR`), else `cache_dir() / "jax-compilation-cache"`."""
    env = os.environ.get(ENV_COMPILATION_CACHE)
    if env is not None:
        return None if env.strip().lower() in _DISABLED else Path(env).expanduser()
    import jax

    given = jax.config.jax_compilation_cache_dir  # pyright: ignore[reportAttributeAccessIssue] (a dynamic flag)
    return Path(given or cache_dir() / "jax-compilation-cache").expanduser()


def available_cores() -> int:
    """The CPU cores this process may use: its CPU affinity (`taskset`, a Ray worker's or a container's cpuset),
    capped by a cgroup CPU quota (`docker run --cpus`, Kubernetes limits); at least 1. (A Ray actor's CPU
    reservation binds nothing: the dataset engine passes `--cpus-per-worker` to its workers itself.)"""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, int(quota)))
    return max(1, cores)


def _cgroup_cpu_quota() -> float | None:
    """CPUs allowed by the cgroup v2 `cpu.max` (or v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`); None: no limit."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


# XLA:CPU flags that make this model faster without changing what is computed (no fast-math, no approximation):
# 512-bit vectors on AVX-512 machines (XLA's default prefers 256). Ignored by other backends.
XLA_CPU_FLAGS = ("--xla_cpu_prefer_vector_width=512",)


def configure_xla(flags: tuple[str, ...] = XLA_CPU_FLAGS) -> bool:
    """Add `flags` to `$XLA_FLAGS` (a flag the user already set there wins), for this process and its children.

    XLA reads `XLA_FLAGS` once, when JAX first starts a backend, so this must run before the first JAX
    computation. Returns True if the flags will apply; False if a backend had already started (nothing is
    changed then). Process-wide: only applications call it, like `configure_compilation_cache()`.

    One more setting helps and cannot be made from inside a process: `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`
    (transparent huge pages for malloc; glibc reads it at process start) removes the ~100k page faults with
    which XLA:CPU touches its fresh scratch buffer in every forward pass. Set it in the environment that
    starts the process (see docs/performance.md).
    """
    if backends_started():
        return False
    current = os.environ.get("XLA_FLAGS", "").split()
    names = {flag.split("=", 1)[0] for flag in current}
    added = [flag for flag in flags if flag.split("=", 1)[0] not in names]
    if added:
        os.environ["XLA_FLAGS"] = " ".join(current + added)
    return True


def backends_started() -> bool:
    """Whether JAX has started its backends in this process (after which the environment variables and flags
    it reads at start no longer apply). Imports nothing that is not already imported."""
    import sys

    if "jax" not in sys.modules:
        return False
    try:
        from jax._src import xla_bridge  # no public test for "already initialised" in jax 0.10

        return xla_bridge.backends_are_initialized()
    except (ImportError, AttributeError):  # a later JAX without it: assume started, and change nothing
        return True


# jaxlib 0.10 caps its GPU memory pool from XLA_CLIENT_MEM_FRACTION; XLA_PYTHON_CLIENT_MEM_FRACTION is the old
# name, and a process with both set fails when JAX starts its GPU backend (`generate_pjrt_gpu_plugin_options`).
MEMORY_FRACTION, OLD_MEMORY_FRACTION = "XLA_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_MEM_FRACTION"
PREALLOCATE = "XLA_PYTHON_CLIENT_PREALLOCATE"


def gpu_memory_settings(fraction: float) -> dict[str, str | None]:
    """The environment (name -> value; None: unset) with which JAX takes at most `fraction` of each GPU's memory,
    as it needs it instead of 75 % at start: for processes that share a GPU. The fraction bounds XLA's memory
    pool only; the process's CUDA context and cuDNN/cuBLAS workspaces come on top."""
    return {MEMORY_FRACTION: f"{fraction:.4g}", OLD_MEMORY_FRACTION: None, PREALLOCATE: "false"}


def set_environment(settings: Mapping[str, str | None]) -> None:
    """Set each variable of `settings` in this process's environment (and its children's); None unsets it."""
    for name, value in settings.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def limit_gpu_memory(fraction: float, option: str = "gpu_memory_fraction") -> None:
    """Let JAX in this process take at most `fraction` (0 < fraction <= 1) of each GPU's memory, as it needs it
    (`gpu_memory_settings`): for a process sharing a GPU with others, such as a server beside another job.
    Process-wide, and only before JAX starts its backends. Raises `OptionError` (named `option`) for a fraction
    out of range or a JAX already started."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise OptionError(option, fraction, "must be a fraction of each GPU's memory in (0, 1], e.g. 0.5")
    if backends_started():
        raise OptionError(option, fraction, "JAX has already started in this process: set it before JAX runs")
    set_environment(gpu_memory_settings(fraction))


def hide_torch_from_transformers() -> None:
    """Keep transformers from importing torch in this process (`USE_TORCH=0`, unless the user set it).

    transformers 4.57 imports torch whenever it is installed (as it is beside the `convert`/`test` extras),
    although FlaxHDemucs never uses it: seconds of start-up and hundreds of MB. Only a process that runs
    hdemucs-flax alone may call this (the command line, the Space), before transformers is first imported;
    a library must not, since the user's own torch models would then be hidden from transformers.
    """
    os.environ.setdefault("USE_TORCH", "0")


def configure_compilation_cache(folder: str | os.PathLike | bool | None = True) -> Path | None:
    """Point JAX's persistent compilation cache at a folder, so a later process loads the compiled forward
    pass instead of compiling it again (tens of seconds for the full model on CPU).

    `True`: `compilation_cache_dir()`. A path: that folder. `False`/`None`: leave JAX's configuration alone.
    Returns the folder in use, or None. An unusable folder is not an error (separation then compiles in
    every process); the return value says so.

    This is process-wide JAX configuration. Compiles of any duration are persisted
    (`jax_persistent_cache_min_compile_time_secs = 0`): JAX's default of 1 s would skip small models. Entries
    are written atomically, and one that fails to load is replaced by the process that compiles it again
    (`persistent_cache`): the folder may be shared by processes that are killed (Ray actors, servers).
    """
    if folder is None or folder is False:
        return None
    path = compilation_cache_dir() if folder is True else Path(folder).expanduser()
    if path is None:
        return None
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    import jax
    from jax.experimental.compilation_cache import compilation_cache

    if jax.config.jax_compilation_cache_dir != str(path):  # pyright: ignore[reportAttributeAccessIssue]
        compilation_cache.set_cache_dir(str(path))
        # JAX decides once per process whether the cache is in use (at its first compile); start over so the
        # folder applies even if something was compiled before this call.
        compilation_cache.reset_cache()
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    from .persistent_cache import install

    install(path)
    return path


class Terminated(KeyboardInterrupt):
    """A termination signal (SIGTERM from `timeout`, `docker stop`, systemd; SIGHUP from a closed terminal) turned
    into an interrupt by `interrupt_on_termination`, so the clean-up that runs for Ctrl-C (temporaries removed,
    nothing half-written kept) runs for it too. `signum` is the signal."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def interrupt_on_termination(signals: Sequence[int] = (signal.SIGTERM, signal.SIGHUP)) -> None:
    """Raise `Terminated` in the main thread when one of `signals` arrives (instead of dying at once, which
    skips every `finally`). Process-wide: for entry points only (the command line, the Space); call it from
    the main thread."""

    def handler(signum: int, frame: Any) -> None:
        raise Terminated(signum)

    for number in signals:
        if signal.getsignal(number) is signal.SIG_IGN:  # ignored on purpose (`nohup`): leave it so
            continue
        signal.signal(number, handler)


PLATFORMS = ("cpu", "gpu", "tpu")
# JAX's settings that limit which GPUs its CUDA / ROCm clients open: a device left out gets no memory preallocated.
_VISIBLE_GPU_SETTINGS = ("jax_cuda_visible_devices", "jax_rocm_visible_devices")


def select_platform(platform: str) -> list[Any]:
    """Run JAX on `platform` ("cpu", "gpu" or "tpu") in this process: set before JAX initialises its backends
    when it has not yet (so `cpu` never touches a GPU, which JAX would otherwise claim 75 % of), and make the
    platform's first device the default (unless the default already is one of its devices). Returns the
    platform's devices. Raises `OptionError` (option "device") with the reason in one line when JAX has no such
    device here."""
    if platform not in PLATFORMS:
        raise OptionError("device", platform, f"must be one of {', '.join(PLATFORMS)}")
    import jax

    if not backends_started():
        # cpu: only the CPU backend. gpu/tpu: JAX's own discovery (plugins that fail stay quiet), which also
        # overrides a JAX_PLATFORMS=cpu left in the environment.
        jax.config.update("jax_platforms", "cpu" if platform == "cpu" else "")
    try:
        devices = jax.devices(platform)
    except RuntimeError as error:
        found = sorted({d.platform for d in jax.devices()})
        hint = " (install JAX's CUDA wheels: pip install 'hdemucs-flax[cuda]')" if platform == "gpu" else ""
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise OptionError(
            "device", platform, f"JAX finds no {platform.upper()} here{hint}; it has {', '.join(found)} ({first})"
        ) from None
    if default_device() not in devices:
        jax.config.update("jax_default_device", devices[0])
    return devices


def default_device() -> Any:
    """The device JAX computes on when no argument is committed elsewhere: `jax_default_device` (a device or a
    platform name) if set, else the default backend's first device."""
    import jax

    chosen = jax.config.jax_default_device  # pyright: ignore[reportAttributeAccessIssue] (a dynamic flag)
    if isinstance(chosen, str):
        return jax.local_devices(backend=chosen)[0]
    return chosen if chosen is not None else jax.local_devices()[0]


def select_devices(platform: str | None = None, count: int | None = None) -> list[Any]:
    """The devices this process's network runs on: `count` devices of `platform` (None: JAX's choice), or by
    default every local GPU or TPU, or one CPU device. The default device comes first (`jax_default_device`
    honoured) and stays the default.

    With a `count` and JAX's backends not yet started, JAX is told to open only the first `count` GPUs
    (`jax_cuda_visible_devices` / `jax_rocm_visible_devices`, within what the user already allowed), so the
    others get no memory preallocated; a TPU host's chips are all held by the process whatever `count` is.
    Raises `OptionError` ("device": no such platform here; "devices": fewer devices than `count`).
    """
    import jax

    if count is not None and platform != "cpu" and not backends_started():
        for setting in _VISIBLE_GPU_SETTINGS:
            allowed = str(jax.config._read(setting))  # a flag, not an attribute, in jax 0.10
            ids = [str(i) for i in range(count)] if allowed == "all" else allowed.split(",")[:count]
            jax.config.update(setting, ",".join(ids))
    if platform is not None:
        select_platform(platform)
    default = default_device()
    available = [default, *(d for d in jax.local_devices(backend=default.platform) if d != default)]
    if count is None:
        count = len(available) if default.platform in ("gpu", "tpu") else 1
    if count > len(available):
        kind = default.platform.upper() if default.platform != "cpu" else "CPU"
        found = f"{len(available)} {kind} device{'s' if len(available) != 1 else ''}"
        raise OptionError("devices", count, f"JAX finds only {found} here")
    return available[:count]


def describe_devices(devices: Sequence[Any]) -> str:
    """A short description of JAX devices: "cpu:0", "NVIDIA H200 (gpu:0)", "2 x TPU v5 lite (tpu:0, tpu:1)",
    "2 x cpu (cpu:0, cpu:1)"."""
    devices = sorted(devices, key=lambda d: (d.platform, d.id))
    if not devices:
        return "no device"
    names = ", ".join(f"{d.platform}:{d.id}" for d in devices)
    if len(devices) == 1 and devices[0].platform == "cpu":
        return names
    kinds = " / ".join(sorted({d.device_kind for d in devices}))
    count = f"{len(devices)} x " if len(devices) > 1 else ""
    return f"{count}{kinds} ({names})"
