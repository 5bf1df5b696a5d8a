"""Multi-process (multi-host) support on JAX's own distributed runtime.

One process per host (or per GPU) runs the same command. ``initialize`` starts
``jax.distributed`` from flags or from the cluster's environment; afterwards
``jax.devices()`` lists every process's devices, the training mesh spans them
all, and each process feeds only its own devices.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from absl import logging

# The mesh axis that data parallelism splits batches over.
DATA_AXIS = "data"


def _cluster_asks_for_it() -> bool:
  """True when the environment describes a multi-process job JAX can join."""
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return True
  return int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ


def initialize(*, coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, local_device_ids: list[int] | None = None) -> None:
  """Starts ``jax.distributed`` when flags or the environment ask for it.

  Args:
    coordinator_address: ``host:port`` of process 0; given explicitly, the
      other arguments must be too (except ``local_device_ids``).
    num_processes: processes in the job.
    process_id: this process's index.
    local_device_ids: devices this process drives (e.g. one GPU per process).

  With no coordinator address, a SLURM job with several tasks or the
  ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``
  variables let JAX detect the cluster itself; otherwise nothing happens
  (single process).
  """
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id.")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               local_device_ids=local_device_ids)
  elif _cluster_asks_for_it():
    jax.distributed.initialize(local_device_ids=local_device_ids)
  else:
    return
  logging.info("Process %d of %d: %d local of %d devices.", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def is_main_process() -> bool:
  """True in the process that writes files and logs (process 0)."""
  return jax.process_index() == 0


def replicate(value: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """Places a host array that every process holds in full as a global array.

  Each process fills only the shards on its own devices, so this works with
  one process or many (``jax.device_put`` of a NumPy array does not, across
  processes).
  """
  value = np.asarray(value)
  return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def to_host(tree: Any) -> Any:
  """NumPy copies of (replicated or fully addressable) arrays, in any process."""

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(jax.device_get(x))

  return jax.tree.map(get, tree)


def make_mesh(num_devices: int = 0) -> jax.sharding.Mesh:
  """1-D data-parallel mesh over the first ``num_devices`` devices (0 = all)."""
  devices = jax.devices()
  if num_devices:
    if num_devices > len(devices):
      raise ValueError(
          f"config.mesh.num_devices={num_devices} but only {len(devices)} devices are visible."
      )
    devices = devices[:num_devices]
  return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))
