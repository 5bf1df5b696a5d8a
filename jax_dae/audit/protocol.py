"""Gallery/probe protocol and the identity-leakage metrics, with bootstrap intervals.

Protocol (``build``), after the LFW closed-set identification protocol of
Best-Rowden et al. (2014): one clean photo per person in the gallery, probes
from a held-out set.

* Probes are images of the run's test split whose person has at least two
  photos in LFW. People with a single photo are never probes: they can only
  be distractors.
* The gallery holds exactly one photo ("mate") of every probe person, never a
  probe image: a photo outside the test split when the person has one (drawn
  with the seed), else one of the person's test images, which then is not a
  probe. The rest of the gallery are distractors: one photo each of other
  people (single-photo people and people without test images), drawn with
  the seed, up to ``gallery_size`` entries in all (0: every LFW person).
* ``max_probes`` keeps a seeded subset of the probes; the gallery stays the same.

Metrics (``score``), on Euclidean distances between embeddings:

* identification: the rank of the probe's mate among all gallery entries,
  ties counted against the probe (rank = 1 + the number of other entries at
  a distance <= the mate's); rank-k accuracy is the share of probes with
  rank <= k;
* verification: each probe with its mate is a genuine pair, with every other
  gallery entry an impostor pair. ROC AUC is the probability that a genuine
  pair is closer than an impostor pair (ties count one half; the
  Mann-Whitney statistic). TAR@FAR: pairs closer than a threshold are
  accepted; the threshold is the largest whose share of accepted impostor
  pairs is at most ``far``, and TAR is the share of genuine pairs accepted
  there. With a fixed decision threshold (dlib's 0.6) the accept rates of
  genuine and impostor pairs are reported too;
* 95% intervals: percentile bootstrap over probes (each probe with all its
  pairs is resampled; the gallery is fixed, so the intervals do not cover
  the choice of gallery).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class Protocol:
  """Who is probed against whom.

  Attributes:
    probe_rows: rows (into the list of all photos) of the probes.
    probe_test_index: each probe's index in the test split (its corruption key).
    probe_mates: each probe's mate, an index into the gallery.
    gallery_rows: rows of the gallery photos.
    gallery_identities: the person of each gallery photo.
    num_mated: gallery entries that are some probe person's mate (the first
      ``num_mated`` entries); the rest are distractors.
    num_probe_candidates: probes before ``max_probes`` subsampling.
    seed: seed of the draws.
  """

  probe_rows: np.ndarray
  probe_test_index: np.ndarray
  probe_mates: np.ndarray
  gallery_rows: np.ndarray
  gallery_identities: tuple[str, ...]
  num_mated: int
  num_probe_candidates: int
  seed: int

  @property
  def num_probes(self) -> int:
    return len(self.probe_rows)

  @property
  def gallery_size(self) -> int:
    return len(self.gallery_rows)

  @property
  def num_probe_people(self) -> int:
    return len(set(self.probe_mates.tolist()))

  def describe(self) -> dict:
    """The protocol's numbers, for the report."""
    return {
        "probes": self.num_probes,
        "probe_people": self.num_probe_people,
        "probe_candidates": self.num_probe_candidates,
        "gallery_size": self.gallery_size,
        "gallery_mates": self.num_mated,
        "gallery_distractors": self.gallery_size - self.num_mated,
        "genuine_pairs": self.num_probes,
        "impostor_pairs": self.num_probes * (self.gallery_size - 1),
        "seed": self.seed,
    }


def build(identities: Sequence[str], test_rows: Sequence[int], *, gallery_size: int = 0,
          max_probes: int = 0, seed: int = 0) -> Protocol:
  """Builds the gallery and probes (module docstring).

  Args:
    identities: the person of every photo (all of LFW), by row.
    test_rows: rows of the test split, in its order.
    gallery_size: entries in the gallery; 0: one photo of every person.
    max_probes: keep at most this many probes (seeded); 0: all.
    seed: seed of every draw.

  Returns:
    A checked ``Protocol``.

  Raises:
    ValueError: no test image has a second photo of its person, or
      ``gallery_size`` is smaller than the number of probe people.
  """
  rng = np.random.default_rng(seed)
  rows_of: dict[str, list[int]] = {}
  for row, person in enumerate(identities):
    rows_of.setdefault(person, []).append(row)
  test_rows = [int(r) for r in test_rows]
  in_test = set(test_rows)
  probe_people = sorted({identities[r] for r in test_rows if len(rows_of[identities[r]]) >= 2})
  if not probe_people:
    raise ValueError("no test image has another photo of its person in the data: nothing to "
                     "identify.")
  if gallery_size and gallery_size < len(probe_people):
    raise ValueError(f"gallery_size={gallery_size} is smaller than the {len(probe_people)} people "
                     "with probes (each needs its mate in the gallery); give at least that, or 0 "
                     "for every person.")
  mates: dict[str, int] = {}
  for person in probe_people:
    outside = [r for r in rows_of[person] if r not in in_test]
    candidates = outside or [r for r in rows_of[person] if r in in_test]
    mates[person] = int(rng.choice(candidates))
  others = sorted(set(rows_of) - set(probe_people))
  order = rng.permutation(len(others))
  wanted = (gallery_size - len(probe_people)) if gallery_size else len(others)
  distractors = [others[i] for i in order[:wanted]]
  gallery_people = list(probe_people) + distractors
  gallery_rows = [mates[p] for p in probe_people] + [
      int(rng.choice(rows_of[p])) for p in distractors]
  if gallery_size and len(gallery_rows) < gallery_size:
    raise ValueError(f"gallery_size={gallery_size} exceeds the {len(gallery_rows)} people in the "
                     "data (one photo each).")
  index_of = {p: i for i, p in enumerate(probe_people)}
  gallery_set = set(gallery_rows)
  candidates = [(i, r) for i, r in enumerate(test_rows)
                if identities[r] in index_of and r not in gallery_set]
  num_candidates = len(candidates)
  if max_probes and len(candidates) > max_probes:
    keep = np.sort(rng.choice(len(candidates), max_probes, replace=False))
    candidates = [candidates[k] for k in keep]
  protocol = Protocol(
      probe_rows=np.asarray([r for _, r in candidates], np.int64),
      probe_test_index=np.asarray([i for i, _ in candidates], np.int64),
      probe_mates=np.asarray([index_of[identities[r]] for _, r in candidates], np.int64),
      gallery_rows=np.asarray(gallery_rows, np.int64),
      gallery_identities=tuple(gallery_people),
      num_mated=len(probe_people),
      num_probe_candidates=num_candidates,
      seed=seed,
  )
  check(protocol, identities)
  return protocol


def check(protocol: Protocol, identities: Sequence[str]) -> None:
  """Asserts the protocol's rules; raises ``ValueError`` naming the first one broken."""
  gallery = protocol.gallery_rows.tolist()
  if len(set(gallery)) != len(gallery):
    raise ValueError("a photo is in the gallery twice.")
  if len(set(protocol.gallery_identities)) != len(gallery):
    raise ValueError("a person has more than one gallery photo.")
  if set(protocol.probe_rows.tolist()) & set(gallery):
    raise ValueError("a probe image is in the gallery.")
  for g, person in zip(gallery, protocol.gallery_identities, strict=True):
    if identities[g] != person:
      raise ValueError(f"gallery photo {g} is not of {person}.")
  counts: dict[str, int] = {}
  for person in identities:
    counts[person] = counts.get(person, 0) + 1
  for row, mate in zip(protocol.probe_rows.tolist(), protocol.probe_mates.tolist(), strict=True):
    if identities[row] != protocol.gallery_identities[mate]:
      raise ValueError(f"probe {row}'s mate is not of its person.")
    if counts[identities[row]] < 2:
      raise ValueError(f"probe {row} is of a person with a single photo.")


# ---------------------------------------------------------------------------
# Metrics.
# ---------------------------------------------------------------------------


def distances(probes: np.ndarray, gallery: np.ndarray) -> np.ndarray:
  """Euclidean distances ``[P, G]`` between probe and gallery embeddings (float64)."""
  p = np.asarray(probes, np.float64)
  g = np.asarray(gallery, np.float64)
  sq = (p * p).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2.0 * p @ g.T
  return np.sqrt(np.maximum(sq, 0.0))


def split_pairs(dist: np.ndarray, mates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Genuine distances ``[P]`` and impostor distances ``[P, G - 1]`` (mate column removed)."""
  dist = np.asarray(dist, np.float64)
  num_probes, num_gallery = dist.shape
  genuine = dist[np.arange(num_probes), mates]
  keep = np.ones_like(dist, bool)
  keep[np.arange(num_probes), mates] = False
  return genuine, dist[keep].reshape(num_probes, num_gallery - 1)


def ranks(genuine: np.ndarray, impostor: np.ndarray) -> np.ndarray:
  """Rank of each probe's mate: 1 + the impostors at a distance <= the mate's."""
  return 1 + (impostor <= genuine[:, None]).sum(1)


def roc_auc(genuine: np.ndarray, impostor: np.ndarray) -> float:
  """P(genuine distance < impostor distance) + P(equal) / 2, over all pairs."""
  genuine = np.ravel(genuine)
  impostor = np.sort(np.ravel(impostor))
  below = np.searchsorted(impostor, genuine, side="left")
  above = len(impostor) - np.searchsorted(impostor, genuine, side="right")
  ties = len(impostor) - below - above
  return float((above + 0.5 * ties).sum() / (len(genuine) * len(impostor)))


def _threshold(impostor_sorted: np.ndarray, weights: np.ndarray, total: float,
               far: float) -> float:
  """Largest threshold t with (weight of impostors < t) <= far * total."""
  cumulative = np.cumsum(weights)
  over = np.flatnonzero(cumulative > far * total * (1 + 1e-12))
  return float(impostor_sorted[over[0]]) if len(over) else math.inf


def tar_at_far(genuine: np.ndarray, impostor: np.ndarray, far: float) -> tuple[float, float]:
  """``(TAR, threshold)``: pairs closer than the threshold are accepted (module docstring)."""
  imp = np.sort(np.ravel(impostor))
  t = _threshold(imp, np.ones(len(imp)), len(imp), far)
  return float(np.mean(np.ravel(genuine) < t)), t


def _weighted_auc_matrix(genuine: np.ndarray, impostor: np.ndarray) -> np.ndarray:
  """``M[i, j]``: impostors of probe j farther than probe i's mate, ties one half."""
  num = len(genuine)
  out = np.empty((num, num), np.float32)
  for j in range(num):
    row = np.sort(impostor[j])
    below = np.searchsorted(row, genuine, side="left")
    above = len(row) - np.searchsorted(row, genuine, side="right")
    out[:, j] = above + 0.5 * (len(row) - below - above)
  return out


def _percentile_ci(values: np.ndarray) -> list[float]:
  lo, hi = np.percentile(values, [2.5, 97.5])
  return [float(lo), float(hi)]


def resampled(genuine: np.ndarray, impostor: np.ndarray, weights: np.ndarray, *, far: float,
              threshold: float | None = None, ks: Sequence[int] = (1, 5)) -> dict[str, np.ndarray]:
  """The metrics of weighted probe sets: row b counts probe i ``weights[b, i]`` times.

  A bootstrap resample is the weights of its counts; the result equals the
  metrics of the probes listed that many times (tests/test_audit.py checks it).

  Args:
    genuine: ``[P]`` genuine distances.
    impostor: ``[P, G - 1]`` impostor distances.
    weights: ``[B, P]`` non-negative counts.
    far, threshold, ks: as in ``score``.

  Returns:
    ``{metric: [B] values}``.
  """
  num, per = impostor.shape
  weights = np.asarray(weights, np.float64)
  totals = weights.sum(1)
  rank = ranks(genuine, impostor)
  samples: dict[str, np.ndarray] = {}
  for k in ks:
    samples[f"rank{k}"] = weights @ (rank <= k) / totals
  m = _weighted_auc_matrix(genuine, impostor).astype(np.float64)
  samples["auc"] = ((weights @ m) * weights).sum(1) / (totals * totals * per)
  # TAR@FAR: only the closest impostor pairs can set the threshold; keep a
  # generous margin of them and fall back to all pairs when a resample needs more.
  flat = impostor.ravel()
  owner = np.repeat(np.arange(num), per)
  keep = min(len(flat), int(far * len(flat) * 8) + 4096)
  nearest = np.argpartition(flat, keep - 1)[:keep] if keep < len(flat) else np.arange(len(flat))
  nearest = nearest[np.argsort(flat[nearest], kind="stable")]
  near_d, near_owner = flat[nearest], owner[nearest]
  full_order = None
  tars = np.empty(len(weights))
  for b, w in enumerate(weights):
    total = w.sum() * per
    t = _threshold(near_d, w[near_owner], total, far)
    if math.isinf(t) and keep < len(flat):
      if full_order is None:
        full_order = np.argsort(flat, kind="stable")
      t = _threshold(flat[full_order], w[owner[full_order]], total, far)
    tars[b] = w @ (genuine < t) / w.sum()
  samples["tar_at_far"] = tars
  if threshold is not None:
    samples["tar_at_threshold"] = weights @ (genuine < threshold) / totals
    samples["far_at_threshold"] = weights @ (impostor < threshold).mean(1) / totals
  return samples


def score(probe_embeddings: np.ndarray, gallery_embeddings: np.ndarray, mates: np.ndarray, *,
          far: float = 1e-3, threshold: float | None = None, bootstrap: int = 1000,
          seed: int = 0, ks: Sequence[int] = (1, 5)) -> dict:
  """Identification and verification of probes against the gallery, with 95% intervals.

  Args:
    probe_embeddings: ``[P, D]``.
    gallery_embeddings: ``[G, D]``.
    mates: ``[P]`` index of each probe's mate in the gallery.
    far: the false-accept rate of TAR@FAR.
    threshold: also report accept rates at this fixed distance (e.g. dlib's 0.6).
    bootstrap: bootstrap resamples of the probes (0: no intervals).
    seed: seed of the resampling.
    ks: ranks of the identification accuracies.

  Returns:
    ``{metric: {"value": v, "ci": [lo, hi]}}`` for ``rank1``, ``rank5``
    (per ``ks``), ``auc``, ``tar_at_far``, and ``tar_at_threshold`` /
    ``far_at_threshold`` when ``threshold`` is given; plus ``far``,
    ``threshold_at_far`` and ``threshold``.
  """
  mates = np.asarray(mates)
  genuine, impostor = split_pairs(distances(probe_embeddings, gallery_embeddings), mates)
  rank = ranks(genuine, impostor)
  hits = {k: (rank <= k).astype(np.float64) for k in ks}
  tar, t_far = tar_at_far(genuine, impostor, far)
  values = {f"rank{k}": float(hits[k].mean()) for k in ks}
  values["auc"] = roc_auc(genuine, impostor)
  values["tar_at_far"] = tar
  if threshold is not None:
    values["tar_at_threshold"] = float(np.mean(genuine < threshold))
    values["far_at_threshold"] = float(np.mean(impostor < threshold))
  out: dict = {k: {"value": v, "ci": None} for k, v in values.items()}
  out |= {"far": far, "threshold_at_far": t_far if math.isfinite(t_far) else None,
          "threshold": threshold}
  if not bootstrap:
    return out

  num = len(genuine)
  rng = np.random.default_rng(seed)
  weights = np.stack([np.bincount(rng.integers(0, num, num), minlength=num)
                      for _ in range(bootstrap)]).astype(np.float64)  # [B, P]
  samples = resampled(genuine, impostor, weights, far=far, threshold=threshold, ks=ks)
  for key, s in samples.items():
    out[key]["ci"] = _percentile_ci(s)
  out["bootstrap"] = bootstrap
  return out
