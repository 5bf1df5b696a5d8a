"""Command line: the privacy audit of trained runs.

  python -m jax_dae.audit --workdir=runs/lfw_cae --data_dir=../shared/data
  python -m jax_dae.audit --workdir=runs/lfw_cae --workdir=runs/lfw_rescae \\
      --corrupt="pixelate(block=8)" --sweep --out_dir=runs/audit_s0

Exit status: 0 when the report was written; 2 when nothing was done (bad
flags, workdir or data, or the audit extra is missing: one line naming
``pip install -e '.[audit]'``); 1 for errors of the run itself. The logic
lives in ``jax_dae.audit.runner``; docs/privacy.md describes the protocol.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence

from absl import flags, logging

from jax_dae import cli
from jax_dae.audit import embedders

FLAGS = flags.FLAGS
flags.DEFINE_multi_string("workdir", None, "Trained run folder; repeat for several runs that "
                          "share a test split.")
flags.DEFINE_string("out_dir", None, "Report folder (default: <workdir>/audit for one run; "
                    "required for several).")
flags.DEFINE_multi_string("corrupt", [], "More corruption specs to score (repeatable), e.g. "
                          "'pixelate(block=8)'; each run's training corruption is always scored.")
flags.DEFINE_enum("checkpoint", "best", ["best", "latest"], "Which checkpoint of each run.")
flags.DEFINE_integer("replica", None, "For runs of several seeds: the replica to use (default: "
                     "the best by validation PSNR).")
flags.DEFINE_string("data_dir", None, "Folder with the LFW files (default: the run's "
                    "config.data.dir, relative to where it was trained).")
flags.DEFINE_string("cache_dir", None, "Preprocessed-split cache (default: the run's).")
flags.DEFINE_integer("gallery_size", 0, "Gallery entries, one photo per person: the probe "
                     "people's mates plus distractors (0: every LFW person).")
flags.DEFINE_integer("max_probes", 0, "Use a seeded subset of at most this many probes (0: all).")
flags.DEFINE_enum("align", "landmarks", list(embedders.ALIGNS), "How crops become dlib's "
                  "150x150 input: 5-point landmark alignment, or a resize of the crop.")
flags.DEFINE_float("far", 1e-3, "False-accept rate of TAR@FAR.")
flags.DEFINE_float("threshold", 0.6, "Also report accept rates at this distance (dlib's 0.6); "
                   "negative: none.")
flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples of the probes for the 95% intervals.")
flags.DEFINE_integer("seed", 0, "Seed of the gallery/probe draws, corruption noise, bootstrap.")
flags.DEFINE_bool("sweep", False, "Also score the blur and pixelation strength ladders.")
flags.DEFINE_integer("workers", 0, "Embedding processes (0: one per CPU core).")
flags.DEFINE_integer("batch_size", 64, "Images per model call of the restorers.")
flags.DEFINE_integer("examples", 6, "Probes shown in examples.png (0: none).")
flags.DEFINE_string("compilation_cache", "~/.cache/jax_dae/xla",
                    "Persistent XLA compilation cache folder ('' to disable).")

USAGE = """\
Privacy audit: does restoring an obfuscated face give its identity back?

usage: python -m jax_dae.audit --workdir=RUN [--workdir=RUN2 ...] [flags]

  --workdir=RUN     a trained LFW run (python -m jax_dae.main's --workdir); repeatable.
  --data_dir=DIR    folder with lfw-deepfunneled.tgz (default: the run's config.data.dir).
  --out_dir=DIR     report folder: audit.json, audit.md, audit.png, examples.png
                    (default for one run: RUN/audit).
  --corrupt=SPEC    also score this obfuscation, e.g. --corrupt="pixelate(block=8)".
  --sweep           also score ladders of blur sigma and pixelation block (sweep.png).
  --gallery_size=N  gallery entries (default 0: one photo of every LFW person).
  --max_probes=N    a seeded subset of the probes (default 0: all).
  --align           landmarks (default) or resize: how crops become dlib's input.
  --verbose         on an error, also print its full traceback.
  --helpfull        every flag (FAR, bootstrap, seed, workers, logging).

Needs the audit extra: pip install -e '.[audit]'. docs/privacy.md explains the protocol.
"""


def main(argv: Sequence[str]) -> None:
  """Runs the audit; exits 1 or 2 on failure (module docstring)."""
  cli.quiet_libraries()
  if len(argv) > 1:
    cli.fail(f"unexpected arguments {' '.join(argv[1:])} (--help for usage).")
  workdirs = FLAGS.workdir or []
  if not workdirs:
    cli.fail("--workdir is required (--help for usage).")
  out_dir = FLAGS.out_dir
  if not out_dir:
    if len(workdirs) > 1:
      cli.fail("--out_dir is required with several --workdir.")
    out_dir = os.path.join(workdirs[0], "audit")
  for name in ("bootstrap", "gallery_size", "max_probes", "workers", "examples"):
    if FLAGS[name].value < 0:
      cli.fail(f"--{name}={FLAGS[name].value} must be >= 0.")
  if not 0 < FLAGS.far < 1:
    cli.fail(f"--far={FLAGS.far} must be in (0, 1).")
  if FLAGS.compilation_cache:
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(FLAGS.compilation_cache))
  from jax_dae.audit import runner
  from jax_dae.data import DataMissingError

  command = shlex.join(["python", "-m", "jax_dae.audit", *sys.argv[1:]])
  with (cli.one_line_errors((RuntimeError, OSError), status=1),
        cli.one_line_errors((ValueError, FileNotFoundError, DataMissingError,
                             embedders.MissingExtraError), status=2)):
    report = runner.run(
        workdirs, out_dir=out_dir, corrupt=FLAGS.corrupt, checkpoint=FLAGS.checkpoint,
        replica=FLAGS.replica, data_dir=FLAGS.data_dir, cache_dir=FLAGS.cache_dir,
        gallery_size=FLAGS.gallery_size, max_probes=FLAGS.max_probes, align=FLAGS.align,
        far=FLAGS.far, threshold=FLAGS.threshold if FLAGS.threshold >= 0 else None,
        bootstrap=FLAGS.bootstrap, seed=FLAGS.seed, sweep=FLAGS.sweep, workers=FLAGS.workers,
        batch_size=FLAGS.batch_size, examples=FLAGS.examples, command=command)
  clean = report["rows"][0]["rank1"]["value"]
  logging.info("Wrote %s/audit.md (%d rows, clean rank-1 %.3f) in %.0f s.", out_dir,
               len(report["rows"]), clean, report["seconds"])


if __name__ == "__main__":
  cli.run(main, usage=USAGE)
