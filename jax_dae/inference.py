"""Inference with a trained run: restore a checkpoint and denoise images of any size.

    denoiser = inference.load("runs/lfw_cae")          # config.json + best checkpoint
    restored = denoiser.denoise(images)                 # float [N, H, W, C] in [0, 1]

A ``Denoiser`` knows the image shape the model was trained on (``image_shape``,
from ``config.json``: ``data.crop`` and ``data.mode``, or 28x28x1 for MNIST)
and finds out, by tracing the restored model at a few sizes (no compute),
which other sizes it accepts. That decides how an image of any size is run:

* Fully convolutional models (``multiple`` is set): the model maps any size
  ``base + k * multiple`` to itself (``base`` is the training size; for the
  CAE family, 3 stride-2 levels, the multiple is 8). An image is
  reflect-padded at the bottom and right to the next such size, run whole,
  and cropped back. Images whose padded side exceeds ``max_side`` are cut
  into overlapping tiles of the largest accepted size <= ``max_side`` along
  that side, so memory stays bounded on large photos.
* Fixed-size models (dense bottlenecks, e.g. ``GrazAE``; ``multiple`` is
  ``None``): overlapping tiles of exactly the training size cover the image
  (reflect-padded first where the image is smaller than a tile).

Neighbouring tiles share at least ``overlap`` (a fraction of the tile side)
of their pixels. On fully convolutional models each tile's output is used
only from ``halo`` pixels (half the overlap) inside its inner edges: the
pixels nearer an inner edge were computed from the model's padding of the
tile instead of the neighbouring image, so their weight is exactly zero. The
tiles lie on the model's ``multiple`` grid of the same reflect-padded image
as the untiled run, so tiling is exact (to float rounding) for any model
whose output next to a cut of its input on that grid changes over at most
``halo`` pixels (its reach: 27 for the CAE; docs/denoise.md lists others).
Between the halos, weights cross-fade linearly. Fixed-size models are not
translation-equivariant: their tiles have no halo and cross-fade over the
whole shared strip. An image that fits in one tile is computed exactly as
the model computes it. The model runs under ``jax.jit`` on batches of tiles
(at most ``batch_size`` tiles and about ``max_pixels`` pixels per call;
batch sizes are rounded up to a power of two so that few shapes compile).
Padding, tiling and blending are cheap host-side NumPy.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jax_dae import checkpoint as checkpoint_lib
from jax_dae import corruptions, models, optimizers, steps, writers
from jax_dae import replicas as replicas_lib

CHECKPOINTS = ("best", "latest")
# Strides tried, smallest first, when probing which sizes a model accepts.
_MULTIPLES = (1, 2, 4, 8, 16, 32, 64)
# How far a too-small padded size is grown (in multiples) before falling back to tiles.
_MAX_GROW = 16


def training_image_shape(config: ml_collections.ConfigDict) -> tuple[int | None, int | None, int]:
  """``(height, width, channels)`` of the training images, from a run's config.

  Channels: 1 for ``data.mode == "L"`` and for MNIST, else 3. The size is
  ``data.crop`` square (28x28 for MNIST); ``None`` when the config does not
  fix it (no crop), in which case only fully convolutional models can be
  loaded.
  """
  data = config.data
  if data.name == "mnist":
    return 28, 28, 1
  channels = 1 if data.get("mode", "RGB") == "L" else 3
  crop = int(data.get("crop", 0) or 0)
  if crop:
    return crop, crop, channels
  return None, None, channels


@dataclasses.dataclass(frozen=True)
class TilePlan:
  """How images of one size are run.

  Attributes:
    size: ``(height, width)`` of the images.
    padded: size after reflect padding at the bottom and right (>= ``size``).
    tile: ``(height, width)`` of each model input.
    ys: top rows of the tiles in the padded image.
    xs: left columns of the tiles in the padded image.
    overlap: ``(rows, columns)`` that neighbouring tiles share at least.
    halo: ``(rows, columns)`` next to a tile's inner edges whose outputs get
      zero weight (the tile's edges on the padded image's border are used).
  """

  size: tuple[int, int]
  padded: tuple[int, int]
  tile: tuple[int, int]
  ys: tuple[int, ...]
  xs: tuple[int, ...]
  overlap: tuple[int, int]
  halo: tuple[int, int] = (0, 0)

  @property
  def num_tiles(self) -> int:
    return len(self.ys) * len(self.xs)


def _positions(length: int, tile: int, overlap: int, step: int = 1) -> tuple[int, ...]:
  """Evenly spaced tile offsets covering ``length`` with at least ``overlap`` shared pixels.

  Offsets are multiples of ``step`` (``length - tile`` must be one): a model
  with stride-``step`` downsampling computes the same function on a tile only
  at those offsets. If ``tile - overlap < step``, neighbours are ``step`` apart
  and share less.
  """
  if length <= tile:
    return (0,)
  units = (length - tile) // step
  count = math.ceil(units / max(1, (tile - overlap) // step)) + 1
  return tuple(step * round(i * units / (count - 1)) for i in range(count))


def _blend_weights(offsets: Sequence[int], tile: int, halo: int) -> np.ndarray:
  """Blending weights of the tiles along one side, ``[len(offsets), tile]``.

  Within ``halo`` pixels of an inner edge (one shared with a neighbour) the
  weight is 0; across the rest of the shared strip it rises linearly to 1,
  so that the two neighbours' weights sum to 1 there. Edges on the image's
  border keep weight 1: the untiled run pads them the same way.
  """
  weights = np.ones((len(offsets), tile), np.float64)
  d = np.arange(tile)
  for i, x in enumerate(offsets):
    if i > 0:
      fade = offsets[i - 1] + tile - x - 2 * halo + 1
      weights[i] = np.minimum(weights[i], np.clip((d - halo + 1) / fade, 0.0, 1.0))
    if i < len(offsets) - 1:
      fade = x + tile - offsets[i + 1] - 2 * halo + 1
      weights[i] = np.minimum(weights[i], np.clip((tile - d - halo) / fade, 0.0, 1.0))
  return weights.astype(np.float32)


@dataclasses.dataclass(frozen=True)
class ModuleApply:
  """``module.apply`` as a value: equal modules give equal (hashable) functions.

  ``Denoiser`` compiles ``apply_fn`` as a static argument of one jitted
  function, so runs loaded twice (or equal models) share compiled code.
  """

  module: nn.Module

  def __call__(self, variables, images, *, train: bool):
    return self.module.apply(variables, images, train=train)


@functools.partial(jax.jit, static_argnums=0)
def _apply(apply_fn: Callable, variables: Mapping[str, Any], images: jax.Array) -> jax.Array:
  return apply_fn(variables, images, train=False)


def _reflect_pad(images: np.ndarray, height: int, width: int) -> np.ndarray:
  """Pads ``[N, H, W, C]`` at the bottom and right to ``height x width`` by reflection."""
  pad_h, pad_w = height - images.shape[1], width - images.shape[2]
  if not pad_h and not pad_w:
    return images
  # Reflection needs 2 pixels; a 1-pixel side repeats instead.
  mode = "reflect" if min(images.shape[1:3]) > 1 else "symmetric"
  return np.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode=mode)


class Denoiser:
  """A restored model that denoises images of any size.

  Args:
    apply_fn: ``apply_fn(variables, images, train=False) -> images``, as a
      Flax module's ``apply``; hashable (a function, or ``ModuleApply``).
    variables: ``{"params": ..., "batch_stats": ...}``.
    image_shape: ``(height, width, channels)`` of the training images; height
      and width may be ``None`` when unknown (fully convolutional models only).
    batch_size: most tiles (or whole images) per model call.
    max_side: largest tile side for fully convolutional models.
    overlap: overlap of neighbouring tiles, as a fraction of the tile side
      (0 to 0.5).
    max_pixels: about the most pixels per model call (bounds memory).
    step: the training step of the restored checkpoint (for reports).
    name: the model's name (for reports).

  Raises:
    ValueError: the model does not map images of ``image_shape`` to themselves,
      or an argument is out of range.
  """

  def __init__(self, apply_fn: Callable, variables: Mapping[str, Any], *,
               image_shape: tuple[int | None, int | None, int], batch_size: int = 16,
               max_side: int = 1024, overlap: float = 0.25, max_pixels: int = 1 << 22,
               step: int = 0, name: str = "model"):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if max_side < 1:
      raise ValueError(f"max_side must be >= 1, got {max_side}.")
    if not 0 <= overlap <= 0.5:
      raise ValueError(f"overlap must be a fraction in [0, 0.5], got {overlap}.")
    self.batch_size = batch_size
    self.max_side = max_side
    self.overlap = overlap
    self.max_pixels = max_pixels
    self.step = step
    self.name = name
    self._variables = variables
    self._apply_fn = apply_fn
    self._apply = functools.partial(_apply, apply_fn)
    self._fits_cache: dict[tuple[int, int], bool] = {}
    self._plans: dict[tuple[int, int], TilePlan] = {}
    height, width, channels = image_shape
    self.channels = channels
    if height is None or width is None:
      height, width = self._find_base()
    elif not self.fits(height, width):
      raise ValueError(
          f"{name} does not map images of the training shape {(height, width, channels)} to "
          "themselves; config.json and the checkpoint do not describe the same model.")
    self.image_shape = (height, width, channels)
    self.multiple = self._find_multiple()

  @property
  def variables(self) -> Mapping[str, Any]:
    """The model's variables (``params`` and ``batch_stats``)."""
    return self._variables

  @property
  def mode(self) -> str:
    """PIL mode of the model's images: "L" (1 channel) or "RGB" (3)."""
    return "L" if self.channels == 1 else "RGB"

  def fits(self, height: int, width: int) -> bool:
    """Whether the model maps ``height x width`` images to the same size (traced, not run)."""
    key = (height, width)
    if key not in self._fits_cache:
      spec = jax.ShapeDtypeStruct((1, height, width, self.channels), jnp.float32)
      try:
        out = jax.eval_shape(functools.partial(self._apply_fn, train=False), self._variables,
                             spec)
        ok = getattr(out, "shape", None) == spec.shape
      except Exception:  # Shape errors surface as many exception types.
        ok = False
      self._fits_cache[key] = ok
    return self._fits_cache[key]

  def _find_base(self) -> tuple[int, int]:
    for side in (64, 32, 128, 112, 100, 28, 256):
      if self.fits(side, side):
        return side, side
    raise ValueError(
        f"config.json does not give the training image size (data.crop is 0) and {self.name} "
        "accepts none of the usual sizes; it needs images of one fixed size.")

  def _find_multiple(self) -> int | None:
    height, width, _ = self.image_shape
    for m in _MULTIPLES:
      if self.fits(height + m, width + 2 * m) and self.fits(height + 3 * m, width + m):
        return m
    return None

  def describe(self) -> str:
    """One line on how this model takes images of other sizes."""
    h, w, c = self.image_shape
    if self.multiple is None:
      return (f"{self.name} ({c} channels) takes only {h}x{w} images: other sizes are run as "
              f"overlapping {h}x{w} tiles, blended.")
    return (f"{self.name} ({c} channels) is fully convolutional: images are reflect-padded to "
            f"{h}+{self.multiple}k x {w}+{self.multiple}k and run whole (tiles of at most "
            f"{self.max_side} px for larger ones).")

  # -------------------------------------------------------------------------
  # Size policy.
  # -------------------------------------------------------------------------

  def _round_up(self, n: int, base: int) -> int:
    """Smallest accepted side ``base + k * multiple`` that is >= ``n`` (and >= 1)."""
    m = self.multiple
    size = base + m * math.ceil((n - base) / m)
    while size < 1:
      size += m
    return size

  def _round_down(self, n: int, base: int) -> int:
    """Largest accepted side <= ``n`` (the smallest positive one if none is)."""
    m = self.multiple
    size = base + m * math.floor((n - base) / m)
    while size < 1:
      size += m
    return size

  def plan(self, height: int, width: int) -> TilePlan:
    """The padding and tiling used for ``height x width`` images (see the module docstring)."""
    key = (height, width)
    if key not in self._plans:
      self._plans[key] = self._make_plan(height, width)
    return self._plans[key]

  def _tiles(self, size: tuple[int, int], padded: tuple[int, int], tile: tuple[int, int], *,
             step: int | None = None) -> TilePlan:
    """Tiles of ``tile`` over ``padded``; ``step``: the model's multiple (halo tiles)."""
    positions, overlaps, halos = [], [], []
    for p, t in zip(padded, tile, strict=True):
      overlap = min(round(self.overlap * t), t - 1) if p > t else 0
      offsets = _positions(p, t, overlap, step or 1)
      # What neighbours do share: less than asked for only when the step is too coarse.
      shared = min((t - (b - a) for a, b in itertools.pairwise(offsets)), default=overlap)
      overlap = min(overlap, shared)
      positions.append(offsets)
      overlaps.append(overlap)
      # Half the overlap on each side of a seam, so that the halos of two
      # neighbours fit in what they share. Fixed-size models (step None) are
      # not translation-equivariant, so no halo makes them exact: cross-fade.
      halos.append(overlap // 2 if step else 0)
    return TilePlan(size=size, padded=padded, tile=tile, ys=positions[0], xs=positions[1],
                    overlap=tuple(overlaps), halo=tuple(halos))

  def _make_plan(self, height: int, width: int) -> TilePlan:
    if height < 1 or width < 1:
      raise ValueError(f"Cannot denoise an image of size {height}x{width}.")
    base_h, base_w, _ = self.image_shape
    if self.multiple is not None:
      m = self.multiple
      tile, padded = [], []
      for n, base in ((height, base_h), (width, base_w)):
        whole = self._round_up(n, base)
        if whole <= self.max_side:
          tile.append(whole)
          padded.append(whole)
        else:
          # Tiles along this side, over the image padded as the untiled run
          # pads it: tiles at multiples of m on it compute what the whole run
          # computes there, borders included.
          tile.append(self._round_down(self.max_side, base))
          padded.append(whole)
      th, tw = tile
      for _ in range(_MAX_GROW):
        if self.fits(th, tw):
          padded = [max(p, t) for p, t in zip(padded, (th, tw), strict=True)]
          return self._tiles((height, width), tuple(padded), (th, tw), step=m)
        if th >= base_h and tw >= base_w:
          break
        # Sizes below the training size may be too small for the model: grow them.
        th, tw = th + m * (th < base_h), tw + m * (tw < base_w)
    # Fixed size: tiles of the training size.
    padded = (max(height, base_h), max(width, base_w))
    return self._tiles((height, width), padded, (base_h, base_w))

  # -------------------------------------------------------------------------
  # Running.
  # -------------------------------------------------------------------------

  def _run_tiles(self, tiles: np.ndarray) -> np.ndarray:
    """The model on ``[T, h, w, C]`` tiles, in jitted batches."""
    pixels = tiles.shape[1] * tiles.shape[2]
    per_call = max(1, min(self.batch_size, self.max_pixels // pixels))
    out = []
    for start in range(0, len(tiles), per_call):
      chunk = tiles[start:start + per_call]
      # Round the batch up to a power of two (at most per_call) so that few shapes compile.
      size = min(per_call, 1 << (len(chunk) - 1).bit_length())
      if size > len(chunk):
        chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]),
                                                chunk.dtype)])
      result = self._apply(self._variables, jnp.asarray(chunk))
      out.append(np.asarray(result, np.float32)[:min(per_call, len(tiles) - start)])
    return np.concatenate(out)

  def denoise(self, images: np.ndarray | jax.Array) -> np.ndarray:
    """Denoises a batch of images of one size.

    Args:
      images: ``[N, H, W, C]`` float in [0, 1] (or uint8), any ``H`` and ``W``;
        ``C`` must be the model's channel count.

    Returns:
      ``[N, H, W, C]`` float32 in [0, 1].

    Raises:
      ValueError: the images do not have 4 axes or have the wrong channel count.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != self.channels:
      raise ValueError(f"Expected images [N, H, W, {self.channels}], got shape {images.shape}.")
    if images.dtype == np.uint8:
      images = images.astype(np.float32) / 255.0
    images = images.astype(np.float32, copy=False)
    n, height, width, channels = images.shape
    if n == 0:
      return images.copy()
    plan = self.plan(height, width)
    padded = _reflect_pad(images, *plan.padded)
    th, tw = plan.tile
    offsets = [(y, x) for y in plan.ys for x in plan.xs]
    tiles = np.stack([padded[:, y:y + th, x:x + tw] for y, x in offsets])  # [T, N, th, tw, C]
    out_tiles = self._run_tiles(tiles.reshape(-1, th, tw, channels))
    out_tiles = out_tiles.reshape(len(offsets), n, th, tw, channels)
    if len(offsets) == 1:
      out = out_tiles[0]
    else:
      weight_y = _blend_weights(plan.ys, th, plan.halo[0])
      weight_x = _blend_weights(plan.xs, tw, plan.halo[1])
      total = np.zeros((n, *plan.padded, channels), np.float32)
      norm = np.zeros(plan.padded, np.float32)
      for k, ((y, x), tile) in enumerate(zip(offsets, out_tiles, strict=True)):
        i, j = divmod(k, len(plan.xs))  # offsets run over ys, then xs.
        weight = weight_y[i][:, None] * weight_x[j][None, :]
        total[:, y:y + th, x:x + tw] += tile * weight[None, :, :, None]
        norm[y:y + th, x:x + tw] += weight
      # The weights sum to 1 where neighbours' zones do not meet; dividing
      # keeps the mean exact where they do (tiles narrower than two strips).
      out = total / norm[None, :, :, None]
    return np.clip(out[:, :height, :width], 0.0, 1.0)


def load(workdir: str | Path, *, checkpoint: str = "best", replica: int | None = None,
         batch_size: int = 16, max_side: int = 1024, overlap: float = 0.25) -> Denoiser:
  """Restores a trained run for inference.

  Args:
    workdir: a run folder written by ``python -m jax_dae.main`` (``config.json``
      and ``checkpoints/``).
    checkpoint: ``"best"`` (highest validation PSNR; the newest if no best was
      recorded) or ``"latest"`` (the newest readable one).
    replica: for a run of several seeds (``config.train.num_seeds``), the
      replica to load (replica ``k`` is seed ``config.seed + k``); ``None``:
      the one with the best validation PSNR at that checkpoint.
    batch_size, max_side, overlap: see ``Denoiser``.

  Returns:
    A ``Denoiser`` holding only the model's variables (no optimizer state).

  Raises:
    FileNotFoundError: ``config.json`` or the checkpoints are missing.
    ValueError: no checkpoint can be restored into the model ``config.json``
      describes, or an argument is out of range.
  """
  if checkpoint not in CHECKPOINTS:
    raise ValueError(f"checkpoint={checkpoint!r} is unknown; allowed: {', '.join(CHECKPOINTS)}.")
  workdir = Path(workdir).expanduser()
  config_path = workdir / "config.json"
  if not config_path.is_file():
    raise FileNotFoundError(f"{config_path} not found: the workdir must be a run folder written "
                            "by python -m jax_dae.main.")
  ckpt_dir = workdir / "checkpoints"
  if not ckpt_dir.is_dir():
    raise FileNotFoundError(f"{ckpt_dir} not found: the run in {workdir} has no checkpoints.")
  config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
  height, width, channels = training_image_shape(config)
  model = models.from_config(config, out_channels=channels)
  tx = optimizers.create(config)
  # An abstract state (shapes only): nothing is initialised, and a failed
  # restore cannot silently hand back random weights.
  init_shape = (height or 64, width or 64, channels)
  replicas = replicas_lib.Replicas(config.seed, config.train.get("num_seeds", 1),
                                    config.train.get("seeds_form", "vmap"))
  if replica is not None and not 0 <= replica < replicas.num:
    raise ValueError(f"replica={replica}: the run in {workdir} has {replicas.num} replica(s) "
                     f"(0..{replicas.num - 1}).")
  abstract = jax.eval_shape(
      replicas.map(functools.partial(steps.init_state, model, tx, init_shape,
                                     ema=config.train.get("ema_decay", 0.0) > 0)),
      replicas.keys()[0])
  ckpt = checkpoint_lib.Checkpointer(ckpt_dir)
  try:
    if ckpt.latest_step() is None and ckpt.best_step() is None:
      raise FileNotFoundError(f"No checkpoints in {ckpt_dir}: train the run first.")
    restore = ckpt.restore_best if checkpoint == "best" else ckpt.restore_latest
    state = restore(abstract)
  finally:
    ckpt.close()
  if any(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(state.params)):
    mode = config.data.get("mode", "RGB")
    raise ValueError(
        f"No checkpoint in {ckpt_dir} could be restored into the model config.json describes "
        f"({config.model.name}, {channels} channel(s), data.mode={mode!r}); see the warnings "
        "above.")
  step, name = replicas_lib.step_of(state), config.model.name
  if replicas.stacked:
    if replica is None:
      rows = writers.read_jsonl(workdir / "metrics.jsonl", missing_ok=True)
      replica = replicas_lib.best_replica(rows, step, replicas.num)
    state = replicas.take(state, replica)
    name = f"{name}, replica {replica} (seed {replicas.seeds[replica]})"
  state = state.for_evaluation()  # the EMA of the weights where the run kept one
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  return Denoiser(ModuleApply(model), variables, image_shape=(height, width, channels),
                  batch_size=batch_size, max_side=max_side, overlap=overlap,
                  step=step, name=name)


def make_corrupter(spec: str, *, seed: int = 0) -> Callable[[np.ndarray, Sequence[int]],
                                                               np.ndarray]:
  """A jitted corruption for before/after demonstrations.

  Args:
    spec: a corruption spec, as ``config.corruption`` (``corruptions.parse``).
    seed: root of the noise; image ``i`` uses ``fold_in(key(seed), i)``, so an
      image's corruption does not depend on what it is batched with.

  Returns:
    ``corrupt(images [N, H, W, C] float in [0, 1], indices [N]) -> images``.

  Raises:
    ValueError: the spec does not parse (at once), or an op does not apply to
      the images' size (when called, e.g. ``pixelate(block=8)`` on 37x53).
  """
  batched = corruptions.parse(spec)
  run = jax.jit(lambda images, keys: batched(keys, images))
  root = jax.random.key(seed)

  def corrupt(images: np.ndarray, indices: Sequence[int]) -> np.ndarray:
    keys = corruptions.example_keys(root, jnp.asarray(indices, jnp.int32))
    return np.asarray(run(jnp.asarray(images, jnp.float32), keys), np.float32)

  return corrupt
