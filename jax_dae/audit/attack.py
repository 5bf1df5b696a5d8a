"""The attack: obfuscate the probes, restore them with trained runs, and try to recognise them.

For one data configuration (``faces.RunFaces``) and protocol
(``protocol.build``), ``Attack`` embeds the clean gallery once and then scores
probe sets ("rows"):

* ``clean``: the probes as the run's pipeline gives them;
* ``corrupted``: the probes obfuscated by a corruption spec (probe ``i`` of
  the test split is corrupted with ``fold_in(key(seed), i)``, as
  ``inference.make_corrupter`` does; blur and pixelation draw no noise);
* ``restored``: those obfuscated probes run through a trained restorer
  (anything with ``denoise(images) -> images``, e.g. ``inference.Denoiser``).

The gallery stays clean: it stands for the attacker's reference photos.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Protocol as TypingProtocol

import numpy as np
from absl import logging

from jax_dae import corruptions, inference
from jax_dae.audit import embedders as embedders_lib
from jax_dae.audit import protocol as protocol_lib

# Probes corrupted per jitted call (one compiled shape, the last call padded).
_CORRUPT_CHUNK = 256


class Restorer(TypingProtocol):
  """A trained model that restores obfuscated images (``inference.Denoiser``)."""

  def denoise(self, images: np.ndarray) -> np.ndarray:
    """``[N, H, W, C]`` float in [0, 1] -> restored, same shape, float in [0, 1]."""
    ...


@dataclasses.dataclass
class Row:
  """One scored probe set.

  Attributes:
    kind: "clean", "corrupted" or "restored".
    corruption: the corruption spec ("" for clean).
    model: the restoring run's label ("" unless restored).
    metrics: ``protocol.score``'s result.
    seconds: wall time of this row (corrupt, restore, embed and score).
  """

  kind: str
  corruption: str
  model: str
  metrics: dict
  seconds: float

  @property
  def label(self) -> str:
    if self.kind == "clean":
      return "clean"
    if self.kind == "corrupted":
      return f"corrupted: {self.corruption}"
    return f"restored by {self.model}: {self.corruption}"

  def to_json(self) -> dict:
    return {"kind": self.kind, "corruption": self.corruption, "model": self.model,
            "label": self.label, "seconds": round(self.seconds, 2), **self.metrics}


def make_corrupter(spec: str, image_shape: tuple[int, int, int], *, seed: int
                   ) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
  """``corrupt(images [N, H, W, C] uint8, test_indices [N]) -> float images`` in fixed-size chunks.

  Raises:
    ValueError: the spec does not parse or does not apply to ``image_shape``.
  """
  corruptions.parse(spec, image_shape)  # Fails now, with the op's message.
  corrupt = inference.make_corrupter(spec, seed=seed)

  def run(images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    out = []
    for start in range(0, len(images), _CORRUPT_CHUNK):
      chunk = images[start:start + _CORRUPT_CHUNK].astype(np.float32) / 255.0
      idx = np.asarray(indices[start:start + _CORRUPT_CHUNK])
      n = len(chunk)
      if 0 < n < _CORRUPT_CHUNK and len(images) > _CORRUPT_CHUNK:
        chunk = np.concatenate([chunk, np.zeros((_CORRUPT_CHUNK - n, *chunk.shape[1:]),
                                                chunk.dtype)])
        idx = np.concatenate([idx, np.zeros(_CORRUPT_CHUNK - n, idx.dtype)])
      out.append(corrupt(chunk, idx)[:n])
    return np.concatenate(out) if out else images.astype(np.float32) / 255.0

  return run


class Attack:
  """Scores probe sets against one clean gallery.

  Args:
    probes: the clean probe images, ``[P, H, W, C]`` uint8 (in protocol order).
    gallery: the clean gallery photos, ``[G, H, W, C]`` uint8.
    protocol: the ``protocol.Protocol`` they come from.
    embedder: an ``IdentityEmbedder``.
    far: the false-accept rate of TAR@FAR.
    threshold: a fixed decision distance to report accept rates at (or None).
    bootstrap: bootstrap resamples for the intervals.
    seed: seed of the corruption noise and of the bootstrap.
  """

  def __init__(self, probes: np.ndarray, gallery: np.ndarray,
               protocol: protocol_lib.Protocol, embedder: embedders_lib.IdentityEmbedder, *,
               far: float = 1e-3, threshold: float | None = None, bootstrap: int = 1000,
               seed: int = 0):
    if len(probes) != protocol.num_probes or len(gallery) != protocol.gallery_size:
      raise ValueError(f"{len(probes)} probes and {len(gallery)} gallery photos do not match the "
                       f"protocol's {protocol.num_probes} and {protocol.gallery_size}.")
    self.probes = np.asarray(probes)
    self.protocol = protocol
    self.embedder = embedder
    self.far = far
    self.threshold = threshold
    self.bootstrap = bootstrap
    self.seed = seed
    self.image_shape = tuple(self.probes.shape[1:])
    self.timings: dict[str, float] = {}
    start = time.perf_counter()
    self.gallery_embeddings = embedder.embed(gallery)
    self._add_time("embed gallery", start)
    # Only the latest spec's corrupted probes are kept (a full split is hundreds of MB).
    self._corrupted: dict[str, np.ndarray] = {}

  def _add_time(self, what: str, start: float) -> float:
    seconds = time.perf_counter() - start
    self.timings[what] = self.timings.get(what, 0.0) + seconds
    return seconds

  def _score(self, images: np.ndarray) -> dict:
    start = time.perf_counter()
    embeddings = self.embedder.embed(images)
    self._add_time("embed probes", start)
    start = time.perf_counter()
    metrics = protocol_lib.score(embeddings, self.gallery_embeddings, self.protocol.probe_mates,
                                 far=self.far, threshold=self.threshold,
                                 bootstrap=self.bootstrap, seed=self.seed)
    self._add_time("metrics", start)
    return metrics

  def corrupted(self, spec: str) -> np.ndarray:
    """The probes obfuscated by ``spec``, float in [0, 1] (computed once per spec)."""
    if spec not in self._corrupted:
      start = time.perf_counter()
      corrupt = make_corrupter(spec, self.image_shape, seed=self.seed)
      self._corrupted = {spec: corrupt(self.probes, self.protocol.probe_test_index)}
      self._add_time("corrupt", start)
    return self._corrupted[spec]

  def clean(self) -> Row:
    start = time.perf_counter()
    metrics = self._score(self.probes)
    return Row("clean", "", "", metrics, time.perf_counter() - start)

  def corrupt(self, spec: str) -> Row:
    start = time.perf_counter()
    metrics = self._score(self.corrupted(spec))
    return Row("corrupted", spec, "", metrics, time.perf_counter() - start)

  def restore(self, spec: str, restorer: Restorer, model: str) -> Row:
    start = time.perf_counter()
    corrupted = self.corrupted(spec)
    t = time.perf_counter()
    restored = restorer.denoise(corrupted)
    self._add_time("restore", t)
    metrics = self._score(restored)
    return Row("restored", spec, model, metrics, time.perf_counter() - start)


def log_row(row: Row) -> None:
  m = row.metrics
  logging.info("%-60s rank-1 %.3f  rank-5 %.3f  AUC %.4f  TAR@FAR=%g %.3f  (%.1f s)", row.label,
               m["rank1"]["value"], m["rank5"]["value"], m["auc"]["value"], m["far"],
               m["tar_at_far"]["value"], row.seconds)


def run_rows(attack: Attack, specs: Sequence[str],
             restorers: Sequence[tuple[str, Restorer, Sequence[str]]]) -> list[Row]:
  """Clean, each spec corrupted, and each restorer on the specs it is given.

  Args:
    attack: the ``Attack``.
    specs: corruption specs to score corrupted.
    restorers: ``(label, restorer, specs it restores)``.
  """
  rows = [attack.clean()]
  log_row(rows[-1])
  for spec in specs:
    rows.append(attack.corrupt(spec))
    log_row(rows[-1])
    for label, restorer, theirs in restorers:
      if spec in theirs:
        rows.append(attack.restore(spec, restorer, label))
        log_row(rows[-1])
  return rows
