"""Command line: train and evaluate a denoising autoencoder.

  python -m jax_dae.main --config=configs/lfw_cae.py --workdir=runs/lfw_cae

This file is kept short on purpose; the logic lives in ``jax_dae.train``.
"""

import logging as logging_std
import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from jax_dae import distributed, train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Output folder; a run there resumes.")
flags.DEFINE_string("compilation_cache", "~/.cache/jax_dae/xla",
                    "Persistent XLA compilation cache folder ('' to disable).")
flags.DEFINE_string("coordinator_address", None,
                    "Multi-process: host:port of process 0 (else detected from SLURM or "
                    "JAX_COORDINATOR_ADDRESS, or single process).")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: index of this process.")
flags.DEFINE_list("local_device_ids", None, "Multi-process: devices this process drives.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(logging_std.Filter):
  """Drops the INFO chatter of Orbax's internals; warnings still show."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno >= logging_std.WARNING or "/orbax/" not in record.pathname


def main(argv):
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(FLAGS.compilation_cache))
  distributed.initialize(
      coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
      process_id=FLAGS.process_id,
      local_device_ids=[int(i) for i in FLAGS.local_device_ids] if FLAGS.local_device_ids
      else None)
  logging.info("JAX %s, process %d of %d, devices: %s", jax.__version__, jax.process_index(),
               jax.process_count(), jax.devices())
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, FloatingPointError) as e:
    # Configuration, data and divergence errors carry a message that says what
    # to change; a traceback would only bury it.
    logging.error("%s: %s", type(e).__name__, e)
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
