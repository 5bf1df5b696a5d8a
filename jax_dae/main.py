"""Command line: train and evaluate a denoising autoencoder.

  python -m jax_dae.main --config=configs/lfw_cae.py --workdir=runs/lfw_cae

This file is kept short on purpose; the logic lives in ``jax_dae.train``
(the run), ``jax_dae.validation`` (the config's checks) and ``jax_dae.cli``
(usage and one-line errors).
"""

import os
import sys

import jax
from absl import flags, logging
from ml_collections import config_flags

from jax_dae import cli, distributed, stopping, train, validation

USAGE = f"""\
Train and evaluate a denoising autoencoder; a run in an existing workdir resumes.

usage: python -m jax_dae.main --config=FILE[:ARG] --workdir=DIR [--config.FIELD=VALUE ...]

  --config=FILE[:ARG]   the experiment, e.g. configs/lfw_cae.py; ARG picks a variant,
                        e.g. configs/lfw_cae.py:runlocal (a one-minute smoke run).
  --workdir=DIR         output folder: checkpoints, metrics, pictures, results.json.
  --config.FIELD=VALUE  change one field, e.g. --config.train.batch_size=64
  --list_fields         print the config's fields and values, then exit:
                          python -m jax_dae.main --config=configs/lfw_cae.py --list_fields
  --verbose             on an error, also print its full traceback.
  --helpfull            every flag (multi-process, compilation cache, logging).

{cli.configs_paragraph()}

Exit status: 0 done; 1 the run failed; 2 bad flags or config (nothing was run).
"""

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:arg]).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Output folder; a run there resumes.")
flags.DEFINE_bool("list_fields", False, "Print the config's fields and values, then exit.")
flags.DEFINE_string("compilation_cache", "~/.cache/jax_dae/xla",
                    "Persistent XLA compilation cache folder ('' to disable).")
flags.DEFINE_string("coordinator_address", None,
                    "Multi-process: host:port of process 0 (else detected from SLURM or "
                    "JAX_COORDINATOR_ADDRESS, or single process).")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: index of this process.")
flags.DEFINE_list("local_device_ids", None, "Multi-process: devices this process drives.")

# Errors of the run that carry a message saying what to change: bad data,
# divergence, and the checkpoint and workdir errors (ValueError, RuntimeError
# and OSError subclasses). Others are bugs and keep their traceback.
RUN_ERRORS = (ValueError, FloatingPointError, RuntimeError, OSError)


def main(argv):
  cli.quiet_libraries()
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {' '.join(argv[1:])} (flags are written --name=value).")
  if FLAGS.config is None:
    cli.fail("--config is required, e.g. --config=configs/lfw_cae.py (--help for usage).")
  if FLAGS.list_fields:
    for name, value in validation.fields(FLAGS.config).items():
      print(f"{name} = {value!r}")
    return
  if FLAGS.workdir is None:
    cli.fail("--workdir is required: the output folder (an existing run there resumes).")
  with cli.one_line_errors((ValueError,), status=2):
    validation.validate_config(FLAGS.config)

  if FLAGS.compilation_cache:
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(FLAGS.compilation_cache))
  with cli.one_line_errors(RUN_ERRORS, status=1):
    distributed.initialize(
        coordinator_address=FLAGS.coordinator_address, num_processes=FLAGS.num_processes,
        process_id=FLAGS.process_id,
        local_device_ids=[int(i) for i in FLAGS.local_device_ids] if FLAGS.local_device_ids
        else None)
    logging.info("JAX %s, process %d of %d, devices: %s", jax.__version__, jax.process_index(),
                 jax.process_count(), jax.devices())
    try:
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except stopping.Interrupted as e:
      # A clean stop on SIGINT or SIGTERM, not an error: say where it stopped
      # and exit as the signal would have.
      print(e, file=sys.stderr)
      if e.abandoned:
        # A compiled call is still running on the devices: the interpreter's
        # exit would wait for it, though its result is not wanted.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + e.signum)
      sys.exit(128 + e.signum)


if __name__ == "__main__":
  cli.run(main, usage=USAGE, config_flag="config")
