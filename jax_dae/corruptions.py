"""Image corruptions as pure, composable JAX ops chosen by config string.

Every op is a pure function ``op(key, image, **params) -> image`` on one image
(``[H, W, C]`` float in [0, 1], any channel count) registered under a name.
A spec string composes ops the way big_vision composes preprocessing::

    "gaussian_blur(kernel=9,sigma=4)|pixelate(block=8)"

``parse(spec)`` turns the string into a batched function
``corrupt(keys, images) -> images`` with one key per example, so a train step
draws fresh noise for every example and every step, and evaluation can fold an
example's index into its key and get the same corruption at any batch size.
Everything is traced JAX code: inside a jitted ``lax.scan`` the corruption
compiles into the same executable as the model step, with no host round trip.

Spec syntax (a Python expression, read with ``ast``; nothing is evaluated):

* ``name(arg=value, ...)`` or a bare ``name``: one op with keyword arguments;
  values are literals (numbers, strings, ``True``/``False``/``None``).
* ``a | b | c``: apply ``a``, then ``b``, then ``c`` (each with its own key).
* ``gaussian_noise(sigma=(0.05, 0.2))``: a two-number tuple for a parameter
  that accepts ranges draws it per image, uniformly in ``[low, high]`` for a
  float parameter, as an integer in ``[low, high]`` (both included) for an
  int parameter. ``ranged_params()`` lists which parameters accept ranges.
* ``choice(op1, op2, ..., weights=(w1, w2, ...))``: per image, apply one of
  the ops, picked with probabilities proportional to ``weights`` (default:
  uniform). Each argument may itself be a sequence or a combinator.
* ``maybe(op, p=0.5)``: per image, apply ``op`` with probability ``p``,
  otherwise leave the image unchanged.

Combinators nest: ``"maybe(choice(gaussian_noise(sigma=(0.05, 0.2)), speckle()),
p=0.8)|coarse_dropout(n=3, size=12)"``. Under ``vmap`` (as in ``parse``), the
branches of ``choice`` and ``maybe`` are all computed and the chosen result is
selected, so their cost is the sum of the branches' costs.

Ops (defaults in brackets; output range with the default settings):

* ``identity``: unchanged.
* ``gaussian_blur(kernel=9, sigma=4, padding="reflect")``: [0, 1].
* ``pixelate(block=n | grid=n)``: [0, 1].
* ``gaussian_noise(sigma | var [0.1 | 0.01], mean=0, clip=True)``:
  ``x + mean + sigma * N(0, 1)``, clipped to [0, 1] unless ``clip=False``.
* ``poisson(peak=None, clip=True)``: ``Poisson(x * peak) / peak`` with
  skimage's ``peak``: the number of distinct values in the image rounded up to
  a power of two. Clipped to [0, 1] unless ``clip=False`` (then >= 0).
* ``speckle(sigma | var [0.02], mean=0, clip=True)``: ``x + x * n`` with
  ``n ~ N(mean, var)``; clipped to [0, 1] unless ``clip=False``.
* ``salt_pepper(amount=0.05, salt_vs_pepper=0.5, channelwise=True,
  exact=False)``: selected values set to 1 (salt) or 0 (pepper): [0, 1].
* ``random_impulse(amount=0.05, channelwise=False, exact=False)``: selected
  pixels replaced by uniform random values in [0, 1]: [0, 1].
* ``masking_noise(amount=0.05, channelwise=False, exact=False)``: selected
  pixels set to 0: [0, 1].
* ``coarse_dropout(n=3, size=12, fill=0)``: ``n`` squares of ``size`` pixels
  set to ``fill``, each entirely inside the image, possibly overlapping: [0, 1].

``docs/corruptions.md`` has the full reference and the seed each op follows.
"""

from __future__ import annotations

import ast
import functools
import inspect
import math
import types
import typing
from collections.abc import Callable, Sequence

import dm_pix as pix
import jax
import jax.numpy as jnp

Op = Callable[..., jax.Array]
PerImage = Callable[[jax.Array, jax.Array], jax.Array]
BatchCorruption = Callable[[jax.Array, jax.Array], jax.Array]

# Names the parser handles itself; they take ops as positional arguments.
COMBINATORS = ("choice", "maybe")

_REGISTRY: dict[str, Op] = {}
_RANGED: dict[str, tuple[str, ...]] = {}


def register(name: str, *, ranged: Sequence[str] = ()) -> Callable[[Op], Op]:
  """Registers a per-image corruption op under ``name``.

  Args:
    name: the name used in spec strings.
    ranged: parameters that accept a ``(low, high)`` range drawn per image;
      the op must then work when that parameter is a traced scalar (validate
      it with ``_check``, which skips traced values).

  Returns:
    A decorator that registers the op and returns it unchanged.
  """

  def decorator(fn: Op) -> Op:
    if name in _REGISTRY or name in COMBINATORS:
      raise ValueError(f"Corruption {name!r} is registered twice.")
    params = inspect.signature(fn).parameters
    missing = [p for p in ranged if p not in params]
    if missing:
      raise ValueError(f"Corruption {name!r}: ranged parameters {missing} are not arguments.")
    _REGISTRY[name] = fn
    _RANGED[name] = tuple(ranged)
    return fn

  return decorator


def available() -> list[str]:
  """Names of all registered corruption ops (the combinators are in ``COMBINATORS``)."""
  return sorted(_REGISTRY)


def ranged_params(name: str) -> tuple[str, ...]:
  """Parameters of op ``name`` that accept a ``(low, high)`` range per image."""
  if name not in _REGISTRY:
    raise ValueError(f"Unknown corruption {name!r}; available: {', '.join(available())}.")
  return _RANGED[name]


# ---------------------------------------------------------------------------
# Helpers shared by the ops.
# ---------------------------------------------------------------------------


def _check(op: str, arg: str, value, ok: Callable[[typing.Any], bool], allowed: str) -> None:
  """Raises ValueError unless ``ok(value)``; traced values (drawn per image) pass."""
  if not isinstance(value, jax.Array) and not ok(value):
    raise ValueError(f"{op}: {arg} must be {allowed}, got {value!r}.")


def _noise_std(op: str, sigma, var, default_var: float):
  """Standard deviation from exactly one of ``sigma`` / ``var`` (or the default)."""
  if sigma is not None and var is not None:
    raise ValueError(f"{op}: give sigma (standard deviation) or var (variance), not both.")
  if sigma is not None:
    _check(op, "sigma", sigma, lambda v: v >= 0, ">= 0")
    return sigma
  if var is None:
    var = default_var
  _check(op, "var", var, lambda v: v >= 0, ">= 0")
  return jnp.sqrt(var) if isinstance(var, jax.Array) else math.sqrt(var)


def _flat(sample: Callable[..., jax.Array], key: jax.Array, shape: tuple[int, ...], *args,
          **kwargs) -> jax.Array:
  """Draws ``sample(key, *args, shape=(prod(shape),))`` and reshapes it to ``shape``.

  Same distribution as drawing ``shape`` directly; with JAX's partitionable
  threefry, multi-dimensional draws take several times longer to compile on
  CPU than a flat draw, and the train step compiles these inside its scan.
  """
  return sample(key, *args, shape=(math.prod(shape),), **kwargs).reshape(shape)


def _finish(out: jax.Array, dtype, clip: bool) -> jax.Array:
  if clip:
    out = jnp.clip(out, 0.0, 1.0)
  return out.astype(dtype)


def _selection_shape(image: jax.Array, channelwise: bool) -> tuple[int, ...]:
  """Shape of a selection mask: one entry per value, or one per pixel (all channels)."""
  return image.shape if channelwise else (*image.shape[:2], 1)


def _select(key: jax.Array, shape: tuple[int, ...], amount, exact: bool) -> jax.Array:
  """Boolean mask selecting a fraction ``amount`` of the entries of ``shape``.

  ``exact=False``: each entry independently with probability ``amount``
  (skimage's ``random_noise``). ``exact=True``: exactly ``round(amount * N)``
  of the ``N`` entries, a uniformly random subset (seed 004's "a predefined
  number of pixels").
  """
  if not exact:
    return _flat(jax.random.bernoulli, key, shape, amount)
  size = math.prod(shape)
  count = jnp.round(jnp.asarray(amount, jnp.float32) * size).astype(jnp.int32)
  order = jax.random.permutation(key, size)
  mask = jnp.zeros(size, bool).at[order].set(jnp.arange(size) < count)
  return mask.reshape(shape)


def _fraction(op: str, arg: str, value) -> None:
  _check(op, arg, value, lambda v: 0 <= v <= 1, "in [0, 1]")


# ---------------------------------------------------------------------------
# Deterministic ops.
# ---------------------------------------------------------------------------


@register("identity")
def identity(key: jax.Array, image: jax.Array) -> jax.Array:
  """Returns the image unchanged (the clean-input baseline)."""
  del key
  return image


@register("gaussian_blur", ranged=("sigma",))
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
    sigma: standard deviation in pixels (seed 000: 4); accepts a range.
    padding: ``"reflect"`` mirrors the border without repeating the edge pixel
      (OpenCV's default border, torchvision's GaussianBlur), ``"zeros"`` pads
      with black as dm-pix's ``SAME`` does.

  Returns:
    The blurred image, same shape and dtype, in [0, 1] (a weighted mean).
  """
  del key
  _check("gaussian_blur", "kernel", kernel, lambda v: v >= 1 and v % 2 == 1,
         "a positive odd integer")
  _check("gaussian_blur", "sigma", sigma, lambda v: v > 0, "> 0")
  radius = kernel // 2
  x = image.astype(jnp.float32)
  if padding == "reflect":
    padded = jnp.pad(x, ((radius, radius), (radius, radius), (0, 0)), mode="reflect")
    out = pix.gaussian_blur(padded, sigma, kernel, padding="VALID")
  elif padding == "zeros":
    out = pix.gaussian_blur(x, sigma, kernel, padding="SAME")
  else:
    raise ValueError(f"gaussian_blur: padding must be 'reflect' or 'zeros', got {padding!r}.")
  return out.astype(image.dtype)


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
  Exactly one must be given. Where the size is not a multiple of ``grid``,
  row (column) ``i`` belongs to square ``floor(i * grid / size)``, so squares
  differ in size by at most one pixel.

  Args:
    key: unused (the mosaic is deterministic).
    image: ``[H, W, C]`` in [0, 1].
    block: side of a square in pixels; must divide the image size.
    grid: number of squares along each side.

  Returns:
    The pixelated image, same shape and dtype, in [0, 1].
  """
  del key
  if (block is None) == (grid is None):
    raise ValueError("pixelate: give exactly one of block=<pixels> or grid=<count>.")
  height, width = image.shape[0], image.shape[1]
  if block is not None:
    _check("pixelate", "block", block, lambda v: v >= 1, ">= 1")
    if height % block or width % block:
      raise ValueError(
          f"pixelate: block={block} does not divide the image size {height}x{width}; "
          "use grid=<count> for uneven squares."
      )
    rows, cols = height // block, width // block
  else:
    _check("pixelate", "grid", grid, lambda v: v >= 1, ">= 1")
    rows, cols = min(grid, height), min(grid, width)
  mean_h = _group_means_matrix(height, rows)
  mean_w = _group_means_matrix(width, cols)
  out = jnp.einsum("hi,iwc->hwc", mean_h, image.astype(jnp.float32), precision="highest")
  out = jnp.einsum("wj,hjc->hwc", mean_w, out, precision="highest")
  return out.astype(image.dtype)


# ---------------------------------------------------------------------------
# Additive and signal-dependent noise.
# ---------------------------------------------------------------------------


@register("gaussian_noise", ranged=("sigma", "var", "mean"))
def gaussian_noise(
    key: jax.Array,
    image: jax.Array,
    *,
    sigma: float | None = None,
    var: float | None = None,
    mean: float = 0.0,
    clip: bool = True,
) -> jax.Array:
  """Additive Gaussian noise ``x + mean + sigma * N(0, 1)``, independent per value.

  Seed 003 is ``gaussian_noise(sigma=0.5)`` (``x + 0.5 N(0, 1)`` clipped to
  [0, 1]); skimage's ``random_noise(mode="gaussian")`` is ``var=0.01``, the
  default here.

  Args:
    key: PRNG key.
    image: ``[H, W, C]`` in [0, 1].
    sigma: standard deviation; accepts a range.
    var: variance, instead of ``sigma``; accepts a range.
    mean: mean of the noise; accepts a range.
    clip: clip the result to [0, 1].

  Returns:
    The noisy image, same shape and dtype; in [0, 1] when ``clip``.
  """
  std = _noise_std("gaussian_noise", sigma, var, default_var=0.01)
  noise = _flat(jax.random.normal, key, image.shape, dtype=jnp.float32)
  return _finish(image.astype(jnp.float32) + mean + std * noise, image.dtype, clip)


@register("speckle", ranged=("sigma", "var", "mean"))
def speckle(
    key: jax.Array,
    image: jax.Array,
    *,
    sigma: float | None = None,
    var: float | None = None,
    mean: float = 0.0,
    clip: bool = True,
) -> jax.Array:
  """Multiplicative noise ``x + x * n`` with ``n ~ N(mean, var)`` per value.

  As skimage's ``random_noise(mode="speckle")``; the default ``var=0.02`` is
  seed 002's (skimage's default is 0.01).

  Args:
    key: PRNG key.
    image: ``[H, W, C]`` in [0, 1].
    sigma: standard deviation of ``n``; accepts a range.
    var: variance of ``n``, instead of ``sigma``; accepts a range.
    mean: mean of ``n``; accepts a range.
    clip: clip the result to [0, 1].

  Returns:
    The noisy image, same shape and dtype; in [0, 1] when ``clip``.
  """
  std = _noise_std("speckle", sigma, var, default_var=0.02)
  x = image.astype(jnp.float32)
  n = mean + std * _flat(jax.random.normal, key, image.shape, dtype=jnp.float32)
  return _finish(x + x * n, image.dtype, clip)


def _poisson_peak(image: jax.Array) -> jax.Array:
  """skimage's Poisson scale: distinct values in the image, up to a power of two.

  ``2 ** ceil(log2(len(np.unique(image))))`` computed with a sort (static
  shapes, so it compiles) and integer bit arithmetic (exact).
  """
  flat = jnp.sort(image.reshape(-1))
  distinct = 1 + jnp.sum(flat[1:] != flat[:-1], dtype=jnp.int32)
  bits = 32 - jax.lax.clz(distinct - 1)
  return jnp.left_shift(jnp.int32(1), bits).astype(jnp.float32)


@register("poisson", ranged=("peak",))
def poisson(
    key: jax.Array, image: jax.Array, *, peak: float | None = None, clip: bool = True
) -> jax.Array:
  """Signal-dependent shot noise ``Poisson(x * peak) / peak``.

  Mean ``x`` and variance ``x / peak``: a larger ``peak`` (more photons at
  full intensity) means less noise. With ``peak=None`` this is skimage's
  ``random_noise(mode="poisson")`` (seed 002): ``peak`` is the number of
  distinct values in the image (all channels) rounded up to a power of two,
  e.g. 256 for an 8-bit image with 129 to 256 distinct levels. Values below 0
  are treated as 0 (skimage would switch to its signed-image mode instead).

  Args:
    key: PRNG key.
    image: ``[H, W, C]`` in [0, 1].
    peak: photon count at intensity 1, or ``None`` for skimage's rule;
      accepts a range.
    clip: clip the result to [0, 1]; without it the result is in ``[0, inf)``.

  Returns:
    The noisy image, same shape and dtype.
  """
  x = jnp.maximum(image.astype(jnp.float32), 0.0)
  if peak is None:
    scale = _poisson_peak(x)
  else:
    _check("poisson", "peak", peak, lambda v: v > 0, "> 0")
    scale = jnp.asarray(peak, jnp.float32)
  counts = _flat(jax.random.poisson, key, x.shape, (x * scale).reshape(-1), dtype=jnp.int32)
  return _finish(counts.astype(jnp.float32) / scale, image.dtype, clip)


# ---------------------------------------------------------------------------
# Impulse noise: a random selection of values replaced.
# ---------------------------------------------------------------------------


@register("salt_pepper", ranged=("amount", "salt_vs_pepper"))
def salt_pepper(
    key: jax.Array,
    image: jax.Array,
    *,
    amount: float = 0.05,
    salt_vs_pepper: float = 0.5,
    channelwise: bool = True,
    exact: bool = False,
) -> jax.Array:
  """Salt-and-pepper noise: selected values become 1 (salt) or 0 (pepper).

  With the defaults this is skimage's ``random_noise(mode="s&p")``, which
  selects every value (every channel of every pixel) independently: seed
  001's "channel-wise salt and pepper", seed 002's impulse noise
  (``amount=0.3``). ``channelwise=False`` selects whole pixels, which turn
  white or black.

  Args:
    key: PRNG key.
    image: ``[H, W, C]`` in [0, 1].
    amount: fraction of values (pixels) replaced; accepts a range.
    salt_vs_pepper: probability that a replaced value is salt; accepts a range.
    channelwise: select each channel independently (else whole pixels).
    exact: replace exactly ``round(amount * N)`` of the ``N`` values (pixels)
      instead of each with probability ``amount``.

  Returns:
    The noisy image, same shape and dtype, in [0, 1].
  """
  _fraction("salt_pepper", "amount", amount)
  _fraction("salt_pepper", "salt_vs_pepper", salt_vs_pepper)
  select_key, salt_key = jax.random.split(key)
  shape = _selection_shape(image, channelwise)
  selected = _select(select_key, shape, amount, exact)
  salt = _flat(jax.random.bernoulli, salt_key, shape, salt_vs_pepper)
  return jnp.where(selected, salt.astype(image.dtype), image)


@register("random_impulse", ranged=("amount",))
def random_impulse(
    key: jax.Array,
    image: jax.Array,
    *,
    amount: float = 0.05,
    channelwise: bool = False,
    exact: bool = False,
) -> jax.Array:
  """Random-valued impulse noise: selected pixels get uniform values in [0, 1].

  Seed 004's "salt and pepper noise: select at random a predefined number of
  pixels, replace with random selection of [0, 1]" (use ``exact=True`` for a
  fixed count). Every channel of a selected pixel gets its own value.

  Args:
    key: PRNG key.
    image: ``[H, W, C]`` in [0, 1].
    amount: fraction of pixels (values) replaced; accepts a range.
    channelwise: select each channel independently (else whole pixels).
    exact: replace exactly ``round(amount * N)`` pixels (values).

  Returns:
    The noisy image, same shape and dtype, in [0, 1].
  """
  _fraction("random_impulse", "amount", amount)
  select_key, value_key = jax.random.split(key)
  selected = _select(select_key, _selection_shape(image, channelwise), amount, exact)
  values = _flat(jax.random.uniform, value_key, image.shape, dtype=jnp.float32)
  return jnp.where(selected, values.astype(image.dtype), image)


@register("masking_noise", ranged=("amount",))
def masking_noise(
    key: jax.Array,
    image: jax.Array,
    *,
    amount: float = 0.05,
    channelwise: bool = False,
    exact: bool = False,
) -> jax.Array:
  """Masking noise: selected pixels set to 0 (seed 004; Vincent et al. 2010).

  Args:
    key: PRNG key.
    image: ``[H, W, C]`` in [0, 1].
    amount: fraction of pixels (values) set to 0; accepts a range.
    channelwise: select each channel independently (else whole pixels).
    exact: zero exactly ``round(amount * N)`` pixels (values).

  Returns:
    The masked image, same shape and dtype, in [0, 1].
  """
  _fraction("masking_noise", "amount", amount)
  selected = _select(key, _selection_shape(image, channelwise), amount, exact)
  return jnp.where(selected, jnp.zeros((), image.dtype), image)


@register("coarse_dropout", ranged=("size", "fill"))
def coarse_dropout(
    key: jax.Array,
    image: jax.Array,
    *,
    n: int = 3,
    size: int = 12,
    fill: float = 0.0,
) -> jax.Array:
  """Cutout: ``n`` squares of ``size`` x ``size`` pixels set to ``fill``.

  Seed 001's "three 12x12 black squares" (Albumentations' CoarseDropout) and
  seed 004's masking blocks. Each square lies entirely inside the image (its
  top-left corner is uniform over the ``(H - size + 1) x (W - size + 1)``
  valid positions, independently per square), so it is never cut by the
  border; squares may overlap, so the covered area is at most
  ``n * size**2``. All channels are covered.

  Args:
    key: PRNG key.
    image: ``[H, W, C]`` in [0, 1].
    n: number of squares (>= 0).
    size: side of each square in pixels, at most the image's shorter side;
      accepts a range (one size per image, shared by its squares).
    fill: value written in the squares, in [0, 1]; accepts a range.

  Returns:
    The image with the squares filled, same shape and dtype, in [0, 1].
  """
  height, width = image.shape[0], image.shape[1]
  _check("coarse_dropout", "n", n, lambda v: v >= 0, ">= 0")
  _check("coarse_dropout", "size", size, lambda v: 1 <= v <= min(height, width),
         f"in [1, {min(height, width)}] for a {height}x{width} image")
  _fraction("coarse_dropout", "fill", fill)
  top_key, left_key = jax.random.split(key)
  tops = _flat(jax.random.randint, top_key, (n, 1), minval=0, maxval=height - size + 1)
  lefts = _flat(jax.random.randint, left_key, (n, 1), minval=0, maxval=width - size + 1)
  rows, cols = jnp.arange(height)[None, :], jnp.arange(width)[None, :]
  in_rows = (rows >= tops) & (rows < tops + size)  # [n, H]
  in_cols = (cols >= lefts) & (cols < lefts + size)  # [n, W]
  covered = jnp.any(in_rows[:, :, None] & in_cols[:, None, :], axis=0)
  return jnp.where(covered[:, :, None], jnp.asarray(fill, image.dtype), image)


# ---------------------------------------------------------------------------
# Parsing and composition.
# ---------------------------------------------------------------------------


def _accepts(hint, value) -> bool:
  """Whether ``value`` is a literal of the annotated type (float accepts int)."""
  options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
  for t in options:
    if t is type(None) and value is None:
      return True
    if t is bool and isinstance(value, bool):
      return True
    if t is int and isinstance(value, int) and not isinstance(value, bool):
      return True
    if t is float and isinstance(value, int | float) and not isinstance(value, bool):
      return True
    if t is str and isinstance(value, str):
      return True
  return False


def _type_name(hint) -> str:
  options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
  return " or ".join("None" if t is type(None) else t.__name__ for t in options)


def _bind(name: str, kwargs: dict) -> PerImage:
  """Checks ``kwargs`` against op ``name`` and returns ``fn(key, image)``."""
  if name not in _REGISTRY:
    raise ValueError(
        f"Unknown corruption {name!r}; available ops: {', '.join(available())}; "
        f"combinators: {', '.join(COMBINATORS)}."
    )
  op = _REGISTRY[name]
  hints = typing.get_type_hints(op)
  allowed = [p for p in inspect.signature(op).parameters if p not in ("key", "image")]
  unknown = sorted(set(kwargs) - set(allowed))
  if unknown:
    raise ValueError(
        f"Corruption {name!r} has no argument {', '.join(map(repr, unknown))}; "
        f"allowed: {', '.join(allowed) or '(none)'}."
    )
  static, ranges = {}, {}
  for arg, value in kwargs.items():
    hint = hints.get(arg, typing.Any)
    if hint is typing.Any:  # An unannotated op: no type check, ranges are floats.
      hint = float if isinstance(value, tuple | list) else type(value)
    if isinstance(value, tuple | list):
      if arg not in _RANGED[name]:
        raise ValueError(
            f"Corruption {name!r}: {arg}={value!r} is a range, but {arg!r} takes one "
            f"{_type_name(hint)}; arguments that take a (low, high) range: "
            f"{', '.join(_RANGED[name]) or '(none)'}."
        )
      scalar = int if _accepts(hint, 1) and not _accepts(hint, 0.5) else float
      if len(value) != 2 or not all(_accepts(scalar, v) for v in value):
        raise ValueError(
            f"Corruption {name!r}: a range for {arg!r} must be ({scalar.__name__} low, "
            f"{scalar.__name__} high), got {value!r}."
        )
      if value[0] > value[1]:
        raise ValueError(f"Corruption {name!r}: range {arg}={value!r} has low > high.")
      ranges[arg] = (scalar, *value)
    elif not _accepts(hint, value):
      raise ValueError(
          f"Corruption {name!r}: {arg} must be {_type_name(hint)}, got {value!r}."
      )
    else:
      static[arg] = value
  if not ranges:
    return functools.partial(op, **static)

  def apply(key: jax.Array, image: jax.Array) -> jax.Array:
    # Validate both ends of every range with the real image shape (the drawn
    # values are traced, so the op cannot check them itself).
    structs = (jax.ShapeDtypeStruct(key.shape, key.dtype),
               jax.ShapeDtypeStruct(image.shape, image.dtype))
    for end in (1, 2):
      bound = {arg: r[end] for arg, r in ranges.items()}
      jax.eval_shape(functools.partial(op, **static, **bound), *structs)
    *draw_keys, op_key = jax.random.split(key, len(ranges) + 1)
    drawn = {}
    for draw_key, (arg, (scalar, low, high)) in zip(draw_keys, ranges.items(), strict=True):
      if scalar is int:
        drawn[arg] = jax.random.randint(draw_key, (), low, high + 1)
      else:
        drawn[arg] = jax.random.uniform(draw_key, (), jnp.float32, low, high)
    return op(op_key, image, **static, **drawn)

  return apply


def _sequence(fns: list[PerImage]) -> PerImage:
  """Applies ``fns`` left to right, each with its own key split from ``key``."""

  def apply(key: jax.Array, image: jax.Array) -> jax.Array:
    keys = jax.random.split(key, len(fns))
    for op_key, fn in zip(keys, fns, strict=True):
      image = fn(op_key, image)
    return image

  return apply


def _choice(branches: list[PerImage], weights) -> PerImage:
  """Per image, applies one of ``branches`` picked with probabilities ``weights``."""
  probs = None
  if weights is not None:
    probs = jnp.asarray(weights, jnp.float32) / sum(weights)

  def apply(key: jax.Array, image: jax.Array) -> jax.Array:
    pick_key, op_key = jax.random.split(key)
    index = jax.random.choice(pick_key, len(branches), p=probs)
    return jax.lax.switch(index, branches, op_key, image)

  return apply


def _maybe(fn: PerImage, p: float) -> PerImage:
  """Per image, applies ``fn`` with probability ``p`` (else the identity)."""

  def apply(key: jax.Array, image: jax.Array) -> jax.Array:
    coin_key, op_key = jax.random.split(key)
    return jax.lax.cond(
        jax.random.bernoulli(coin_key, p), fn, lambda _, x: x, op_key, image
    )

  return apply


def _literal(where: str, arg: str, node: ast.expr):
  try:
    return ast.literal_eval(node)
  except (ValueError, TypeError, SyntaxError):
    raise ValueError(
        f"{where}: the value of {arg!r} must be a literal (number, string, True/False/None, "
        f"or a (low, high) tuple), got {ast.unparse(node)!r}."
    ) from None


def _flatten(node: ast.expr) -> list[ast.expr]:
  """``a | b | c`` (a left-nested tree of BitOr) as ``[a, b, c]``."""
  if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
    return _flatten(node.left) + _flatten(node.right)
  return [node]


def _keywords(name: str, node: ast.Call, allowed: Sequence[str]) -> dict:
  kwargs = {}
  for kw in node.keywords:
    if kw.arg is None:
      raise ValueError(f"Corruption {name!r}: **kwargs are not supported.")
    if kw.arg not in allowed:
      raise ValueError(
          f"Corruption {name!r} has no argument {kw.arg!r}; allowed: "
          f"{', '.join(allowed) or '(none)'}."
      )
    kwargs[kw.arg] = _literal(f"Corruption {name!r}", kw.arg, kw.value)
  return kwargs


def _build(node: ast.expr) -> PerImage:
  """Turns one parsed spec expression into ``fn(key, image)``."""
  parts = _flatten(node)
  if len(parts) > 1:
    return _sequence([_build(p) for p in parts])
  if isinstance(node, ast.Name):
    if node.id in COMBINATORS:
      raise ValueError(f"Combinator {node.id!r} needs arguments, e.g. {node.id}(op, ...).")
    return _bind(node.id, {})
  if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
    raise ValueError(
        f"Cannot parse corruption {ast.unparse(node)!r}: expected name(arg=value, ...), "
        "a | b, choice(op, ...) or maybe(op, p=...)."
    )
  name = node.func.id
  if name == "choice":
    if not node.args:
      raise ValueError("Combinator 'choice' needs at least one op: choice(op1, op2, ...).")
    weights = _keywords(name, node, ["weights"]).get("weights")
    if weights is not None and (
        not isinstance(weights, tuple | list)
        or len(weights) != len(node.args)
        or not all(_accepts(float, w) and w >= 0 for w in weights)
        or sum(weights) <= 0
    ):
      raise ValueError(
          f"Combinator 'choice': weights must be {len(node.args)} numbers >= 0 (one per op) "
          f"with a positive sum, got {weights!r}."
      )
    return _choice([_build(a) for a in node.args], weights)
  if name == "maybe":
    if len(node.args) != 1:
      raise ValueError(
          f"Combinator 'maybe' takes exactly one op, got {len(node.args)}: maybe(op, p=0.5)."
      )
    p = _keywords(name, node, ["p"]).get("p", 0.5)
    if not (_accepts(float, p) and 0 <= p <= 1):
      raise ValueError(f"Combinator 'maybe': p must be a number in [0, 1], got {p!r}.")
    return _maybe(_build(node.args[0]), p)
  if node.args:
    raise ValueError(
        f"Corruption {name!r} takes keyword arguments only, e.g. {name}(arg=value); "
        f"got {ast.unparse(node)!r}."
    )
  if name not in _REGISTRY:
    return _bind(name, {})  # Raises the unknown-op error.
  allowed = [p for p in inspect.signature(_REGISTRY[name]).parameters if p not in ("key", "image")]
  return _bind(name, _keywords(name, node, allowed))


def parse(spec: str, image_shape: tuple[int, int, int] | None = None) -> BatchCorruption:
  """Builds a batched corruption from a spec such as ``"gaussian_blur(sigma=4)"``.

  Args:
    spec: ops separated by ``|``, applied left to right, with the combinators
      ``choice(...)`` and ``maybe(...)`` and per-image ranges ``(low, high)``
      (see the module docstring); ``""`` or ``"identity"`` leaves images
      unchanged.
    image_shape: if given, ``(H, W, C)`` of the images to corrupt; the ops are
      traced on it now so that a bad value (``pixelate(block=0)``) fails here,
      before anything is compiled.

  Returns:
    ``corrupt(keys, images)``: ``keys`` has one PRNG key per image, ``images``
    is ``[B, H, W, C]`` float in [0, 1]; returns images of the same shape and
    dtype. It checks its inputs when traced (``check_inputs``: uint8 images
    and a single key raise a one-line ``ValueError``) and, on Explicit mesh
    axes, splits the keys over the batch as the images are
    (``keys_like_batch``).

  Raises:
    ValueError: naming the op or argument that is wrong and what is allowed.
  """
  text = spec.strip() or "identity"
  try:
    tree = ast.parse(text, mode="eval").body
  except SyntaxError as e:
    raise ValueError(f"Cannot parse corruption spec {spec!r}: {e.msg}.") from None
  corrupt_one = _sequence([_build(part) for part in _flatten(tree)])

  if image_shape is not None:
    jax.eval_shape(corrupt_one, jax.random.key(0), jax.ShapeDtypeStruct(image_shape, jnp.float32))
  batched = jax.vmap(corrupt_one)

  def corrupt(keys: jax.Array, images: jax.Array) -> jax.Array:
    check_inputs(keys, images)
    return batched(keys_like_batch(keys, images), images)

  return corrupt


def _key_shape(keys: jax.Array) -> tuple[int, ...]:
  """Shape of a key array without the key data (raw uint32 keys end in their words)."""
  if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
    return tuple(keys.shape)
  if keys.dtype == jnp.uint32 and keys.ndim >= 1:
    return tuple(keys.shape[:-1])
  raise ValueError(f"corrupt: keys must be PRNG keys (jax.random.key), got {keys.dtype}.")


def check_inputs(keys: jax.Array, images: jax.Array) -> None:
  """Raises a one-line ValueError unless ``images`` and ``keys`` suit a batched corruption.

  ``images``: ``[B, H, W, C]`` float (in [0, 1]); uint8 would come back
  rounded to {0, 1}. ``keys``: one PRNG key per image, ``[B]``. Static
  shapes and dtypes only: under ``jit`` this runs once, at trace time.
  """
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"corrupt: images must be float in [0, 1], got {images.dtype}; convert "
                     "uint8 with jax_dae.steps.to_float (x / 255).")
  if images.ndim != 4:
    raise ValueError(f"corrupt: images must be [B, H, W, C], got shape {tuple(images.shape)}.")
  shape = _key_shape(keys)
  if shape != (images.shape[0],):
    raise ValueError(
        f"corrupt: keys must hold one PRNG key per image, shape ({images.shape[0]},), got "
        f"{shape}; e.g. corruptions.example_keys(key, jnp.arange({images.shape[0]})).")


def keys_like_batch(keys: jax.Array, images: jax.Array) -> jax.Array:
  """``keys`` resharded along the batch axis as ``images`` are, where types carry shardings.

  ``vmap`` over the examples needs the keys and the images split alike. On
  Explicit mesh axes the sharding is part of the type and JAX does not move
  either for you; on Auto axes the types carry no sharding and this does
  nothing (XLA propagates the batch's).
  """
  batch_spec = _batch_spec(images)
  if batch_spec == _batch_spec(keys):
    return keys
  source = images if batch_spec is not None else keys  # The array that is split.
  mesh = jax.typeof(source).sharding.mesh
  if not isinstance(source, jax.core.Tracer):  # Eagerly: the concrete mesh.
    mesh = source.sharding.mesh
  words = keys.ndim - len(_key_shape(keys))  # Raw uint32 keys: their words stay whole.
  target = jax.sharding.PartitionSpec(batch_spec, *(None,) * words)
  return jax.sharding.reshard(keys, jax.sharding.NamedSharding(mesh, target))


def _batch_spec(x: jax.Array):
  """The mesh axes the leading axis of ``x``'s type is split over (None: not split)."""
  spec = getattr(jax.typeof(x).sharding, "spec", None)
  return spec[0] if spec else None


def example_keys(key: jax.Array, indices: jax.Array) -> jax.Array:
  """One key per example by folding each example's index into ``key``.

  Args:
    key: one PRNG key (shape ``()``).
    indices: ``[B]`` integer indices, e.g. ``jnp.arange(B)``.
  """
  if _key_shape(key) != ():
    raise ValueError(f"example_keys: key must be one PRNG key, got a key array of shape "
                     f"{_key_shape(key)}.")
  if jnp.ndim(indices) != 1:
    raise ValueError(f"example_keys: indices must be 1-D, got shape {jnp.shape(indices)}.")
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)
