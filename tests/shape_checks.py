"""A pytest plugin that turns on run-time checking of every jaxtyping annotation in `modeling_hdemucs_flax`.

    python -m pytest -p tests.shape_checks tests/test_separation.py ...

jaxtyping's import hook rewrites each of the package's modules as it is imported, wrapping every function and
dataclass in `jaxtyped(typechecker=beartype)`: argument and return shapes and dtypes are checked on every call,
with the named dimensions ("batch channels samples") bound consistently within it (under `jax.jit` the check runs
while tracing). Users never pay for this: the package itself decorates nothing, so its annotations are plain
strings at run time. `tests/test_types.py` runs selected test files through this plugin in a subprocess.
"""

from __future__ import annotations

import sys

from jaxtyping import install_import_hook

PACKAGE = "modeling_hdemucs_flax"

# The package face (__init__) defines no array function; every submodule must still be unimported so the hook sees it.
_loaded = sorted(name for name in sys.modules if name.startswith(f"{PACKAGE}."))
assert not _loaded, f"loaded before the shape-check hook, so unchecked: {_loaded}"
# PEP 484's numeric tower (an int is a valid `float`), as static checkers read the annotations.
CHECKER = "beartype.beartype(conf=beartype.BeartypeConf(is_pep484_tower=True))"
install_import_hook(PACKAGE, CHECKER)


def pytest_report_header(config: object) -> str:
    return f"shape checks: jaxtyping + beartype on every annotation of {PACKAGE}"
