"""Compiles one small function with the package's persistent compilation cache in argv[1]
(`configure_compilation_cache`), and prints a JSON line: the warnings raised, and JAX's cache events
(`cache_hits`, `cache_misses`: a miss is a compile written to the cache)."""

import json
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax._src import monitoring

from modeling_hdemucs_flax import configure_compilation_cache

configure_compilation_cache(sys.argv[1])
events: list[str] = []
monitoring.register_event_listener(lambda event, **_: events.append(event.rsplit("/", 1)[-1]))
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = np.asarray(jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0) * 3.0)(np.ones((64, 64), np.float32)))
    assert (out == 192.0).all(), out  # tanh(64) is 1.0 in float32: 64 rows of 1, times 3
print(json.dumps({"warnings": [str(w.message) for w in caught], "events": events}))
