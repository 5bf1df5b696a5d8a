"""The audit of one or more trained runs, from workdirs to a written report (no flags here).

``run(workdirs, ...)`` is what ``python -m jax_dae.audit`` does:

1. loads the recogniser first (a missing extra fails before any work);
2. reads each run's ``config.json``; all runs must share their test split
   (LFW variant, resize, crop, mode, split sizes and seed), since they are
   scored against one gallery;
3. rebuilds the test split with identities (``faces.RunFaces``) and the
   gallery/probe protocol (``protocol.build``);
4. restores each run (``inference.load``; see ``load_restorer``);
5. scores clean probes, probes under every corruption (each run's training
   corruption and the extra ``corrupt`` specs), and each run's restorations
   of its own training corruption and of the extra specs;
6. with ``sweep``, the ladders of ``sweep.py``;
7. writes ``audit.json``, ``audit.md`` and plots to ``out_dir``.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import logging

from jax_dae import inference
from jax_dae.audit import attack as attack_lib
from jax_dae.audit import embedders as embedders_lib
from jax_dae.audit import faces as faces_lib
from jax_dae.audit import protocol as protocol_lib
from jax_dae.audit import report as report_lib
from jax_dae.audit import sweep as sweep_lib


def load_restorer(workdir: str | Path, *, checkpoint: str = "best", replica: int | None = None,
                  batch_size: int = 64) -> inference.Denoiser:
  """``inference.load`` with the arguments the audit uses.

  The one place the audit calls into ``inference``: if ``load``'s signature
  changes, only this adapter changes.
  """
  return inference.load(workdir, checkpoint=checkpoint, replica=replica, batch_size=batch_size)


def _labels(workdirs: Sequence[Path]) -> list[str]:
  """Short, distinct names for the runs: the folder names, or more of the path on clashes."""
  for depth in range(1, 8):
    labels = ["/".join(w.resolve().parts[-depth:]) for w in workdirs]
    if len(set(labels)) == len(labels):
      return labels
  return [str(w) for w in workdirs]


def run(workdirs: Sequence[str | os.PathLike], *, out_dir: str | os.PathLike,
        corrupt: Sequence[str] = (), checkpoint: str = "best", replica: int | None = None,
        data_dir: str | None = None, cache_dir: str | None = None, gallery_size: int = 0,
        max_probes: int = 0, align: str = "landmarks", far: float = 1e-3,
        threshold: float | None = 0.6, bootstrap: int = 1000, seed: int = 0,
        sweep: bool = False, workers: int = 0, batch_size: int = 64, examples: int = 6,
        embedder: embedders_lib.IdentityEmbedder | None = None,
        command: str = "") -> dict:
  """Audits ``workdirs`` and writes the report (module docstring).

  Args:
    workdirs: trained run folders sharing one test split.
    out_dir: where the report goes.
    corrupt: more corruption specs, each scored corrupted and restored by every run.
    checkpoint, replica: which weights of each run (``inference.load``).
    data_dir: the folder with the LFW files (default: each run's ``config.data.dir``).
    cache_dir: the preprocessed-split cache (default: the run's setting).
    gallery_size, max_probes: see ``protocol.build``.
    align: ``DlibEmbedder``'s ``align``.
    far, threshold, bootstrap: see ``protocol.score``.
    seed: seed of the protocol's draws, the corruption noise and the bootstrap.
    sweep: also run the obfuscation ladders.
    workers: embedding processes (0: one per core).
    batch_size: images per model call of the restorers.
    examples: probes shown in ``examples.png`` (0: none).
    embedder: use this ``IdentityEmbedder`` instead of dlib's.
    command: the command line, for the report.

  Returns:
    The report (as written to ``audit.json``).

  Raises:
    embedders.MissingExtraError: dlib or its models are missing.
    ValueError, FileNotFoundError: bad runs, flags or data.
  """
  start = time.perf_counter()
  load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
  if not workdirs:
    raise ValueError("give at least one --workdir.")
  if embedder is None:
    embedder = embedders_lib.DlibEmbedder(align=align, workers=workers)
  paths = [Path(w).expanduser() for w in workdirs]
  configs = [faces_lib.read_config(p) for p in paths]
  signatures = {faces_lib.data_signature(c) for c in configs}
  if len(signatures) > 1:
    raise ValueError("these runs do not share one test split (config.data: name, variant, "
                     "resize, crop, mode, split, split_seed differ): audit them separately.")
  labels = _labels(paths)
  timings: dict[str, float] = {}

  t = time.perf_counter()
  faces = faces_lib.RunFaces(configs[0], data_dir=data_dir, cache_dir=cache_dir)
  proto = protocol_lib.build(faces.identities, faces.test_rows, gallery_size=gallery_size,
                             max_probes=max_probes, seed=seed)
  probes = faces.test_images()[proto.probe_test_index]
  gallery = faces.images(proto.gallery_rows)
  timings["data"] = time.perf_counter() - t
  logging.info("Protocol: %s", proto.describe())

  t = time.perf_counter()
  restorers = [load_restorer(p, checkpoint=checkpoint, replica=replica, batch_size=batch_size)
               for p in paths]
  timings["load runs"] = time.perf_counter() - t
  for restorer in restorers:
    if restorer.image_shape != tuple(probes.shape[1:]):
      raise ValueError(f"{restorer.name} takes {restorer.image_shape} images but the test split "
                       f"has {tuple(probes.shape[1:])}.")
  own = [c.corruption for c in configs]
  specs = list(dict.fromkeys([*own, *corrupt]))

  attack = attack_lib.Attack(probes, gallery, proto, embedder, far=far, threshold=threshold,
                             bootstrap=bootstrap, seed=seed)
  triples = [(label, r, list(dict.fromkeys([spec, *corrupt])))
             for label, r, spec in zip(labels, restorers, own, strict=True)]
  rows = attack_lib.run_rows(attack, specs, triples)
  sweep_rows = []
  if sweep:
    sweep_rows = sweep_lib.run(attack, probes.shape[1], [
        (label, r, spec) for label, r, spec in zip(labels, restorers, own, strict=True)])

  d = faces.config
  report = {
      "command": command,
      "runs": [{"label": label, "workdir": str(p), "model": r.name, "step": r.step,
                "checkpoint": checkpoint, "corruption": c.corruption}
               for label, p, r, c in zip(labels, paths, restorers, configs, strict=True)],
      "data": {"name": d.name, "variant": d.variant, "resize": d.resize, "crop": d.crop,
               "mode": faces.mode, "split": dict(d.split), "split_seed": d.split_seed,
               "test_images": len(faces.test_rows)},
      "embedder": embedder.name,
      "align": align,
      "protocol": proto.describe(),
      "bootstrap": bootstrap,
      "rows": report_lib.rows_json(rows),
      "sweep": sweep_rows,
  }
  if examples and isinstance(embedder, embedders_lib.DlibEmbedder):
    t = time.perf_counter()
    _examples(attack, embedder, specs, triples, examples, Path(out_dir) / "examples.png")
    timings["examples"] = time.perf_counter() - t
  timings |= {k: v for k, v in attack.timings.items()}
  report["timings"] = {k: round(v, 1) for k, v in timings.items()}
  report["seconds"] = round(time.perf_counter() - start, 1)
  report["machine"] = f"{platform.machine()} with {os.cpu_count()} CPU cores"
  if load_before is not None:
    # Timings on a shared machine mean little without its load (1-minute average).
    report["machine"] += (f" (load average {load_before:.1f} at the start, "
                          f"{os.getloadavg()[0]:.1f} at the end)")
  report_lib.write(report, out_dir)
  return report


def _examples(attack: attack_lib.Attack, embedder: embedders_lib.DlibEmbedder,
              specs: Sequence[str], triples, num: int, path: Path) -> None:
  """Writes the chips of the first ``num`` probes: clean, corrupted, restored."""
  num = min(num, attack.protocol.num_probes)
  idx = np.arange(num)
  panels = [("clean", embedder.chips(attack.probes[:num]))]
  for spec in specs:
    corrupt = attack_lib.make_corrupter(spec, attack.image_shape, seed=attack.seed)
    corrupted = corrupt(attack.probes[:num], attack.protocol.probe_test_index[idx])
    panels.append((spec, embedder.chips(corrupted)))
    for label, restorer, theirs in triples:
      if spec in theirs:
        panels.append((f"{label}: {spec}", embedder.chips(restorer.denoise(corrupted))))
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  report_lib.plot_examples(panels, path)
