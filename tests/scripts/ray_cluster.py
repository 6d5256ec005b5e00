"""Holds a local Ray cluster for the test session: starts it (2 CPUs, 2 GPUs that exist for Ray's scheduler only,
no dashboard), prints `RAY_ADDRESS <gcs address>` on stdout, and shuts it down, with every process it started,
when its stdin closes.

A cluster of its own process, started before any JAX exists in it, that every test's driver joins with
`--ray-address`; the actors are fresh processes."""

import sys

import ray

ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, object_store_memory=200_000_000, log_to_driver=False)
print(f"RAY_ADDRESS {ray.get_runtime_context().gcs_address}", flush=True)
sys.stdin.read()  # until the test session closes the pipe
ray.shutdown()
