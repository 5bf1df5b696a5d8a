"""Image corruptions as pure, composable JAX ops chosen by config string.

Every op is a pure function ``op(key, image, **params) -> image`` on one image
(``[H, W, C]`` float in [0, 1], any channel count) registered under a name.
A spec string composes ops the way big_vision composes preprocessing::

    "gaussian_blur(kernel=9,sigma=4)|pixelate(block=8)"

``parse(spec)`` turns the string into a batched function
``corrupt(keys, images) -> images`` with one key per example, so a train step
draws fresh noise for every example and every step, and evaluation can fold an
example's index into its key and get the same corruption at any batch size.
"""

from __future__ import annotations

import ast
import functools
import inspect
from collections.abc import Callable

import dm_pix as pix
import jax
import jax.numpy as jnp

Op = Callable[..., jax.Array]
BatchCorruption = Callable[[jax.Array, jax.Array], jax.Array]

_REGISTRY: dict[str, Op] = {}


def register(name: str) -> Callable[[Op], Op]:
  """Registers a per-image corruption op under ``name``."""

  def decorator(fn: Op) -> Op:
    if name in _REGISTRY:
      raise ValueError(f"Corruption {name!r} is registered twice.")
    _REGISTRY[name] = fn
    return fn

  return decorator


def available() -> list[str]:
  """Names of all registered corruption ops."""
  return sorted(_REGISTRY)


# ---------------------------------------------------------------------------
# Ops.
# ---------------------------------------------------------------------------


@register("identity")
def identity(key: jax.Array, image: jax.Array) -> jax.Array:
  """Returns the image unchanged (the clean-input baseline)."""
  del key
  return image


@register("gaussian_blur")
def gaussian_blur(
    key: jax.Array,
    image: jax.Array,
    *,
    kernel: int = 9,
    sigma: float = 4.0,
    padding: str = "reflect",
) -> jax.Array:
  """Separable Gaussian blur with a normalised ``kernel``-tap kernel (dm-pix).

  Args:
    key: unused (the blur is deterministic).
    image: ``[H, W, C]`` in [0, 1].
    kernel: odd kernel size in pixels (seed 000: 9).
    sigma: standard deviation in pixels (seed 000: 4).
    padding: ``"reflect"`` mirrors the border without repeating the edge pixel
      (OpenCV's default border, torchvision's GaussianBlur), ``"zeros"`` pads
      with black as dm-pix's ``SAME`` does.

  Returns:
    The blurred image, same shape and dtype.
  """
  del key
  if kernel < 1 or kernel % 2 == 0:
    raise ValueError(f"gaussian_blur: kernel must be a positive odd integer, got {kernel}.")
  if sigma <= 0:
    raise ValueError(f"gaussian_blur: sigma must be > 0, got {sigma}.")
  radius = kernel // 2
  if padding == "reflect":
    padded = jnp.pad(image, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    return pix.gaussian_blur(padded, sigma, kernel, padding="VALID")
  if padding == "zeros":
    return pix.gaussian_blur(image, sigma, kernel, padding="SAME")
  raise ValueError(f"gaussian_blur: padding must be 'reflect' or 'zeros', got {padding!r}.")


def _group_means_matrix(size: int, groups: int) -> jax.Array:
  """``[size, size]`` matrix that replaces each entry by its group's mean.

  Pixel ``i`` belongs to group ``floor(i * groups / size)``: equal groups when
  ``groups`` divides ``size``, otherwise groups that differ by one pixel.
  """
  group = (jnp.arange(size) * groups) // size
  same = (group[:, None] == group[None, :]).astype(jnp.float32)
  return same / same.sum(axis=1, keepdims=True)


@register("pixelate")
def pixelate(
    key: jax.Array, image: jax.Array, *, block: int | None = None, grid: int | None = None
) -> jax.Array:
  """Mosaic: paints each square with the mean colour of its pixels.

  Seed 000's "n x n squares with n = 8" has two readings, named distinctly:
  ``block=n`` uses squares of n x n pixels (112 px -> 14 x 14 squares), and
  ``grid=n`` divides the image into n x n squares (112 px -> 14-pixel squares).
  Exactly one must be given. Where the size is not a multiple, the squares
  differ in size by at most one pixel.

  Args:
    key: unused (the mosaic is deterministic).
    image: ``[H, W, C]`` in [0, 1].
    block: side of a square in pixels.
    grid: number of squares along each side.

  Returns:
    The pixelated image, same shape and dtype.
  """
  del key
  if (block is None) == (grid is None):
    raise ValueError("pixelate: give exactly one of block=<pixels> or grid=<count>.")
  height, width = image.shape[0], image.shape[1]
  if block is not None:
    if block < 1:
      raise ValueError(f"pixelate: block must be >= 1, got {block}.")
    rows, cols = -(-height // block), -(-width // block)
  else:
    if grid < 1:
      raise ValueError(f"pixelate: grid must be >= 1, got {grid}.")
    rows, cols = min(grid, height), min(grid, width)
  if block is not None and (height % block or width % block):
    raise ValueError(
        f"pixelate: block={block} does not divide the image size {height}x{width}; "
        "use grid=<count> for uneven squares."
    )
  mean_h = _group_means_matrix(height, rows)
  mean_w = _group_means_matrix(width, cols)
  out = jnp.einsum("hi,iwc->hwc", mean_h, image.astype(jnp.float32), precision="highest")
  out = jnp.einsum("wj,hjc->hwc", mean_w, out, precision="highest")
  return out.astype(image.dtype)


# ---------------------------------------------------------------------------
# Parsing and composition.
# ---------------------------------------------------------------------------


def _parse_call(text: str) -> tuple[str, dict]:
  """Parses ``name(k=v, ...)`` (or a bare ``name``) into (name, kwargs)."""
  try:
    node = ast.parse(text.strip(), mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"Cannot parse corruption {text!r}: {e.msg}.") from None
  if isinstance(node, ast.Name):
    return node.id, {}
  if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)) or node.args:
    raise ValueError(
        f"Cannot parse corruption {text!r}: expected name(arg=value, ...) with keyword "
        "arguments only."
    )
  kwargs = {}
  for kw in node.keywords:
    try:
      kwargs[kw.arg] = ast.literal_eval(kw.value)
    except ValueError:
      raise ValueError(
          f"Corruption {text!r}: the value of {kw.arg!r} must be a literal "
          "(number, string, tuple)."
      ) from None
  return node.func.id, kwargs


def _bind(name: str, kwargs: dict) -> Callable[[jax.Array, jax.Array], jax.Array]:
  if name not in _REGISTRY:
    raise ValueError(f"Unknown corruption {name!r}; available: {', '.join(available())}.")
  op = _REGISTRY[name]
  allowed = [p for p in inspect.signature(op).parameters if p not in ("key", "image")]
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(
        f"Corruption {name!r} has no argument {', '.join(map(repr, unknown))}; "
        f"allowed: {', '.join(allowed) or '(none)'}."
    )
  return functools.partial(op, **kwargs)


def parse(spec: str, image_shape: tuple[int, int, int] | None = None) -> BatchCorruption:
  """Builds a batched corruption from a spec such as ``"gaussian_blur(sigma=4)"``.

  Args:
    spec: ops separated by ``|``, applied left to right; ``""`` or
      ``"identity"`` leaves images unchanged.
    image_shape: if given, ``(H, W, C)`` of the images to corrupt; the ops are
      traced on it now so that a bad value (``pixelate(block=0)``) fails here,
      before anything is compiled.

  Returns:
    ``corrupt(keys, images)``: ``keys`` has one PRNG key per image, ``images``
    is ``[B, H, W, C]`` float in [0, 1]; returns images of the same shape.

  Raises:
    ValueError: naming the op or argument that is wrong and what is allowed.
  """
  parts = [p for p in spec.split("|") if p.strip()] or ["identity"]
  ops = [_bind(*_parse_call(p)) for p in parts]

  def corrupt_one(key: jax.Array, image: jax.Array) -> jax.Array:
    keys = jax.random.split(key, len(ops))
    for op_key, op in zip(keys, ops, strict=True):
      image = op(op_key, image)
    return image

  if image_shape is not None:
    jax.eval_shape(corrupt_one, jax.random.key(0), jax.ShapeDtypeStruct(image_shape, jnp.float32))
  return jax.vmap(corrupt_one)


def example_keys(key: jax.Array, indices: jax.Array) -> jax.Array:
  """One key per example by folding each example's index into ``key``."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)
