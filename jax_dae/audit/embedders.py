"""Identity embedders: face images to vectors whose distance says "same person".

The audit needs one thing from a face recogniser: an embedding per image such
that photos of one person lie closer (Euclidean distance) than photos of two
people. ``IdentityEmbedder`` is that interface; ``DlibEmbedder`` implements it
with dlib's face recognition ResNet (``dlib_face_recognition_resnet_model_v1``,
99.38% on the LFW verification benchmark), shipped with its 5-point landmark
model by the PyPI package ``face-recognition-models``; dlib itself comes from
``dlib-bin``. Both are the optional extra ``pip install -e '.[audit]'``.

dlib's network takes a 150x150 RGB face chip. ``DlibEmbedder`` brings a
pipeline crop (112x112 for seed 000, any square or not) to it in one of two
ways (``align``):

* ``"landmarks"`` (the default): dlib's own alignment. The crop is resized to 150x150, the
  5-point landmark model is run inside a fixed face box (``FACE_BOX``, the
  median box of dlib's HOG face detector on clean seed-000 crops; a fixed box
  because the detector finds no face in most blurred or pixelated images), and
  ``dlib.get_face_chip`` cuts the aligned 150x150 chip (padding 0.25).
* ``"resize"``: the whole crop is resized to 150x150 (bicubic). Seed 000's
  crop is face-centred but tighter than dlib's chips (chin and forehead cut).

docs/privacy.md compares both on the seed-000 test split: with landmark
alignment clean rank-1 is 0.88 against 0.54 (gallery of 2,000), ROC AUC
0.9985 against 0.9835, so ``landmarks`` is the default.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image

EXTRA_HINT = "pip install -e '.[audit]'"
ALIGNS = ("landmarks", "resize")
# dlib's input: a 150x150 RGB chip.
CHIP = 150
# The face box given to the landmark model, as fractions (left, top, right,
# bottom) of the crop: the median box of dlib.get_frontal_face_detector() on
# 200 clean seed-000 test crops resized to 150x150 (it found a face in 197).
FACE_BOX = (20 / 150, 32 / 150, 127 / 150, 140 / 150)
_RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
_LANDMARK_MODEL = "shape_predictor_5_face_landmarks.dat"


class MissingExtraError(ImportError):
  """The recogniser's packages are not installed; the message names the extra."""


@runtime_checkable
class IdentityEmbedder(Protocol):
  """Maps face images to identity embeddings compared by Euclidean distance.

  Attributes:
    name: a short description for reports (model and preprocessing).
    dim: the embedding size.
  """

  name: str
  dim: int

  def embed(self, images: np.ndarray) -> np.ndarray:
    """Embeds a batch of faces.

    Args:
      images: ``[N, H, W, C]`` float in [0, 1] or uint8, ``C`` 1 or 3.

    Returns:
      ``[N, dim]`` float32; a smaller distance means more likely the same person.
    """
    ...


def to_uint8_rgb(images: np.ndarray) -> np.ndarray:
  """``[N, H, W, C]`` float in [0, 1] (or uint8), C in {1, 3}, as uint8 RGB."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"Expected face images [N, H, W, 1 or 3], got shape {images.shape}.")
  if images.dtype != np.uint8:
    images = np.round(np.clip(images.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, axis=-1)
  return images


def _import_dlib():
  try:
    import dlib
  except ImportError:
    raise MissingExtraError(
        f"the privacy audit needs dlib, which is not installed: {EXTRA_HINT} (installs dlib-bin "
        "and face-recognition-models).") from None
  return dlib


def model_dir() -> Path:
  """The folder of dlib's model files from the ``face-recognition-models`` package.

  The package is located without importing it (its ``__init__`` needs the
  deprecated ``pkg_resources``).

  Raises:
    MissingExtraError: the package (or one of the two model files) is missing.
  """
  try:
    spec = importlib.util.find_spec("face_recognition_models")
  except (ImportError, ValueError):  # A broken install, or blocked in sys.modules.
    spec = None
  if spec is None or spec.origin is None:
    raise MissingExtraError(
        "the privacy audit needs dlib's face models, which are not installed: "
        f"{EXTRA_HINT} (installs face-recognition-models, about 100 MB).")
  folder = Path(spec.origin).parent / "models"
  for name in (_RECOGNITION_MODEL, _LANDMARK_MODEL):
    if not (folder / name).is_file():
      raise MissingExtraError(f"{folder / name} is missing: reinstall the extra ({EXTRA_HINT}).")
  return folder


class _DlibWorker:
  """The models, loaded once per process (dlib objects do not pickle)."""

  def __init__(self, align: str, jitters: int):
    dlib = _import_dlib()
    folder = model_dir()
    self.dlib = dlib
    self.align = align
    self.jitters = jitters
    self.recogniser = dlib.face_recognition_model_v1(str(folder / _RECOGNITION_MODEL))
    self.landmarks = dlib.shape_predictor(str(folder / _LANDMARK_MODEL))
    left, top, right, bottom = (round(f * CHIP) for f in FACE_BOX)
    self.box = dlib.rectangle(left, top, right, bottom)

  def chip(self, image: np.ndarray) -> np.ndarray:
    """One uint8 RGB crop as dlib's aligned 150x150 chip."""
    if image.shape[:2] != (CHIP, CHIP):
      image = np.asarray(Image.fromarray(image).resize((CHIP, CHIP), Image.BICUBIC))
    if self.align == "resize":
      return np.ascontiguousarray(image)
    shape = self.landmarks(image, self.box)
    return np.asarray(self.dlib.get_face_chip(image, shape, size=CHIP, padding=0.25))

  def embed(self, images: np.ndarray) -> np.ndarray:
    chips = [self.chip(image) for image in images]
    if not chips:
      return np.zeros((0, 128), np.float32)
    out = self.recogniser.compute_face_descriptor(chips, num_jitters=self.jitters)
    return np.asarray([np.asarray(v) for v in out], np.float32)


_WORKER: _DlibWorker | None = None


def _init_worker(align: str, jitters: int) -> None:
  global _WORKER
  _WORKER = _DlibWorker(align, jitters)


def _embed_in_worker(images: np.ndarray) -> np.ndarray:
  return _WORKER.embed(images)


class DlibEmbedder:
  """dlib's face recognition ResNet (128-d; same person below distance 0.6).

  Args:
    align: ``"resize"`` or ``"landmarks"`` (module docstring).
    jitters: dlib's ``num_jitters`` (0: embed the chip once).
    workers: processes that embed in parallel (dlib's CPU network uses one
      core and holds the GIL); 0: one per CPU core; 1: in this process. The
      processes are spawned: a script that uses several must guard its entry
      point with ``if __name__ == "__main__":``, as any multiprocessing code.
    chunk: images per task sent to a worker.

  Raises:
    MissingExtraError: dlib or its models are not installed (names the extra).
    ValueError: ``align`` is unknown.
  """

  dim = 128

  def __init__(self, *, align: str = "landmarks", jitters: int = 0, workers: int = 1,
               chunk: int = 32):
    if align not in ALIGNS:
      raise ValueError(f"align={align!r} is unknown; allowed: {', '.join(ALIGNS)}.")
    self.align = align
    self.jitters = jitters
    self.chunk = chunk
    self.workers = workers or os.cpu_count() or 1
    self._local = _DlibWorker(align, jitters)  # Fails here, at once, if the extra is missing.
    self._pool: concurrent.futures.ProcessPoolExecutor | None = None
    self.name = (f"dlib face_recognition_resnet_model_v1 (dlib {self._local.dlib.__version__}), "
                 f"{'crop resized' if align == 'resize' else '5-point alignment'} to "
                 f"{CHIP}x{CHIP}" + (f", {jitters} jitters" if jitters else ""))

  def embed(self, images: np.ndarray) -> np.ndarray:
    """See ``IdentityEmbedder.embed``."""
    images = to_uint8_rgb(images)
    if self.workers <= 1 or len(images) <= self.chunk:
      return self._local.embed(images)
    if self._pool is None:
      import multiprocessing

      # "spawn": the caller has JAX's threads running, which fork does not copy safely.
      self._pool = concurrent.futures.ProcessPoolExecutor(
          self.workers, mp_context=multiprocessing.get_context("spawn"),
          initializer=_init_worker, initargs=(self.align, self.jitters))
    parts = [images[i:i + self.chunk] for i in range(0, len(images), self.chunk)]
    return np.concatenate(list(self._pool.map(_embed_in_worker, parts)))

  def chips(self, images: np.ndarray) -> np.ndarray:
    """The 150x150 chips the network sees (for figures and checks)."""
    return np.stack([self._local.chip(image) for image in to_uint8_rgb(images)])

  def close(self) -> None:
    """Stops the worker processes."""
    if self._pool is not None:
      self._pool.shutdown()
      self._pool = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
