"""Reconstruction losses, chosen by name from the config.

A loss is ``loss(reconstruction, clean, aux) -> (scalar, {name: scalar})`` on
``[B, H, W, C]`` images in [0, 1]; ``aux`` carries model side outputs (for
instance a variational model's KL term). The dictionary holds the terms that
make up the scalar, for logging.

Registered names (``config.loss.name``) and the fields of ``config.loss`` they
read (all optional, defaults in brackets):

  mse         pixel mean squared error (seed 000's pixel loss).
  bce         binary cross-entropy of probabilities (seed 002's sigmoid
              models): ``eps`` [1e-7].
  perceptual  VGG16 feature reconstruction loss (seed 000, Johnson et al.):
              ``layers`` [("relu3_3",)], ``layer_weights`` [1 per layer],
              ``upsample`` [2], ``vgg_weights`` [""], ``vgg_dtype``
              ["float32"].
  mixed       ``rho * mse + perceptual`` (seed 000's mixed loss): ``rho``
              [1.0] plus the perceptual fields.
  weighted    ``perceptual_weight * perceptual + pixel_weight * mse`` (seed
              004's general loss, lambda1 and lambda2; its pixel term
              ``||D - I||^2`` is taken as the mean, not the sum, of squares,
              so lambda2 is per value): ``perceptual_weight`` [1.0],
              ``pixel_weight`` [1.0] plus the perceptual fields.

Auxiliary terms a model sows into its ``"aux"`` collection (``VCAE``'s
``kl``) are added with explicit weights only: ``aux_weights`` [{}], a
mapping from term name to weight, and ``kl_weight`` [unset], the same as
``aux_weights={"kl": kl_weight}`` (``configs/lfw_vcae.py`` sets it). Each
weighted term is reported under its name. A sown term without a weight is an
error, not a silent weight of 1: set its weight, 0 to only log it.

Inputs are checked when traced (static dtypes and shapes only, nothing at run
time): both images float (uint8 must be scaled to [0, 1] first) and of the
same shape.

Scale: with torchvision-normalised inputs the relu3_3 term is about 10^3 times
the pixel MSE of the same pair (blurred vs clean LFW crops, kernel 9, sigma 4:
3.25 vs 0.0025), so in ``mixed`` with rho = 0.5 or 1 the pixel term is a small
part of the value; seed 000 does not say how its two terms were scaled.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from jax_dae.models import vgg

Loss = Callable[[jax.Array, jax.Array, Mapping[str, jax.Array]], tuple[jax.Array, dict]]

# Seed 000's reading of "relu2_2": its 56x56x256 features (after upsampling
# 112 -> 224) are relu3_3's; see SPEC.md.
DEFAULT_LAYERS = ("relu3_3",)
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def check_pair(where: str, reconstruction: jax.Array, clean: jax.Array) -> None:
  """Raises a one-line ValueError unless both are float arrays of one shape.

  Static dtypes and shapes only (at trace time under ``jit``): uint8 images
  would be compared on a 0..255 scale, and different shapes would broadcast.
  """
  for name, x in (("reconstruction", reconstruction), ("clean", clean)):
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
      raise ValueError(f"{where}: {name} images must be float in [0, 1], got "
                       f"{jnp.result_type(x)}; convert uint8 with jax_dae.steps.to_float.")
  if jnp.shape(reconstruction) != jnp.shape(clean):
    raise ValueError(f"{where}: reconstruction and clean shapes differ, "
                     f"{jnp.shape(reconstruction)} vs {jnp.shape(clean)}.")


def mse(reconstruction: jax.Array, clean: jax.Array) -> jax.Array:
  """Mean squared error over all pixels and channels (seed 000's pixel loss)."""
  check_pair("mse", reconstruction, clean)
  return jnp.mean(jnp.square(reconstruction.astype(jnp.float32) - clean.astype(jnp.float32)))


def bce(probabilities: jax.Array, targets: jax.Array, *, eps: float = 1e-7) -> jax.Array:
  """Binary cross-entropy, mean over all pixels and channels.

  Takes *probabilities* (a sigmoid model's output in [0, 1], which is what
  models return), not logits. As Keras' ``binary_crossentropy`` does (seed
  002), they are clipped to ``[eps, 1 - eps]`` before the logarithm, so the
  value stays finite and a saturated output gets no gradient. The minimum over
  ``probabilities`` is at ``probabilities == targets`` and equals the targets'
  binary entropy, which is not 0 for grey values.

  Args:
    probabilities: ``[B, H, W, C]`` predictions in [0, 1].
    targets: ``[B, H, W, C]`` clean images in [0, 1].
    eps: clipping margin (Keras' default epsilon).

  Returns:
    The scalar mean.
  """
  check_pair("bce", probabilities, targets)
  p = jnp.clip(probabilities.astype(jnp.float32), eps, 1.0 - eps)
  t = targets.astype(jnp.float32)
  return -jnp.mean(t * jnp.log(p) + (1.0 - t) * jnp.log1p(-p))


def _as_rgb(images: jax.Array) -> jax.Array:
  if images.shape[-1] == 1:
    return jnp.repeat(images, 3, axis=-1)
  if images.shape[-1] != 3:
    raise ValueError(f"VGG16 needs 1- or 3-channel images; got shape {images.shape}.")
  return images


def make_perceptual(*, layers: Sequence[str] = DEFAULT_LAYERS,
                    layer_weights: Sequence[float] | None = None, upsample: float = 2,
                    weights_path: str | None = None, dtype=jnp.float32, precision=None,
                    weights: Mapping | None = None) -> Callable:
  """Builds the VGG16 perceptual loss ``fn(reconstruction, clean) -> (value, terms)``.

  ``value = sum_i w_i * ||phi_i(x) - phi_i(y)||^2 / (C_i H_i W_i)`` averaged
  over the batch, where ``phi_i`` is the VGG16 activation at ``layers[i]``
  after resizing the images by ``upsample`` (bilinear, half-pixel centres;
  seed 000 doubles 112 -> 224 to match VGG's training resolution). One-channel
  images are repeated to RGB. The VGG weights are loaded here, once, and
  closed over: under ``jit`` they are constants, not parameters, so nothing
  trains them; gradients flow through VGG into ``reconstruction`` only.

  Args:
    layers: taps of ``jax_dae.models.vgg.LAYERS``.
    layer_weights: one weight per layer (all 1 if ``None``).
    upsample: resize factor before VGG (1: none).
    weights_path: weights file for ``vgg.load_weights`` (default resolution if
      ``None``).
    dtype: VGG computation dtype.
    precision: VGG convolution precision (see ``vgg.VGG16Features``).
    weights: already loaded ``vgg.load_weights()`` output (overrides
      ``weights_path``).

  Returns:
    ``fn`` giving the scalar loss and ``{"perceptual_<layer>": unweighted term}``.
  """
  layers = vgg.check_layers(layers, "config.loss.layers")
  if layer_weights is None:
    layer_weights = (1.0,) * len(layers)
  layer_weights = tuple(float(w) for w in layer_weights)
  if len(layer_weights) != len(layers):
    raise ValueError(
        f"config.loss.layer_weights has {len(layer_weights)} entries for {len(layers)} layers "
        f"{list(layers)}; give one weight per layer."
    )
  if not upsample > 0:
    raise ValueError(f"config.loss.upsample must be > 0 (1: no resizing), got {upsample}.")
  if weights is None:
    weights = vgg.load_weights(weights_path)
  params = jax.tree.map(jnp.asarray, vgg.vgg_params(weights, layers))
  network = vgg.VGG16Features(layers=layers, dtype=dtype, precision=precision)

  def features_of(images: jax.Array) -> dict[str, jax.Array]:
    x = _as_rgb(images.astype(jnp.float32))
    if upsample != 1:
      b, h, w, c = x.shape
      size = (b, round(h * upsample), round(w * upsample), c)
      x = jax.image.resize(x, size, method="bilinear", antialias=False)
    return network.apply({"params": params}, x)

  def perceptual(reconstruction: jax.Array, clean: jax.Array):
    check_pair("perceptual", reconstruction, clean)
    # Two VGG passes rather than one over the concatenated pair: the backward
    # pass then runs over the reconstructions only, not over the targets too.
    ours = features_of(reconstruction)
    target = jax.lax.stop_gradient(features_of(clean))
    terms = {}
    total = jnp.zeros((), jnp.float32)
    for layer, weight in zip(layers, layer_weights, strict=True):
      f, g = ours[layer].astype(jnp.float32), target[layer].astype(jnp.float32)
      # Mean over batch, H, W and C = per-image ||.||^2 / (C H W), batch-averaged.
      term = jnp.mean(jnp.square(f - g))
      terms[f"perceptual_{layer}"] = term
      total = total + weight * term
    return total, terms

  return perceptual


# ---------------------------------------------------------------------------
# Registry: builders from a config block.
# ---------------------------------------------------------------------------


def _field(config, name: str, default):
  value = config.get(name, default) if hasattr(config, "get") else getattr(config, name, default)
  return default if value is None else value


def _layers(config) -> tuple[str, ...]:
  layers = _field(config, "layers", DEFAULT_LAYERS)
  if isinstance(layers, str):
    layers = tuple(s.strip() for s in layers.split(",") if s.strip())
  return tuple(layers)


def _perceptual_from_config(config) -> Callable:
  dtype_name = _field(config, "vgg_dtype", "float32")
  if dtype_name not in _DTYPES:
    raise ValueError(
        f"config.loss.vgg_dtype={dtype_name!r} is unknown; allowed: {', '.join(_DTYPES)}."
    )
  layer_weights = _field(config, "layer_weights", ())
  return make_perceptual(
      layers=_layers(config),
      layer_weights=tuple(layer_weights) or None,
      upsample=_field(config, "upsample", 2),
      weights_path=_field(config, "vgg_weights", "") or None,
      dtype=_DTYPES[dtype_name],
  )


def _pixel_mse(config) -> Loss:
  del config

  def loss(reconstruction, clean, aux):
    del aux
    value = mse(reconstruction, clean)
    return value, {"mse": value}

  return loss


def _pixel_bce(config) -> Loss:
  eps = float(_field(config, "eps", 1e-7))
  if not 0 < eps < 0.5:
    raise ValueError(f"config.loss.eps must be in (0, 0.5), got {eps}.")

  def loss(reconstruction, clean, aux):
    del aux
    value = bce(reconstruction, clean, eps=eps)
    return value, {"bce": value}

  return loss


def _combined(perceptual_weight: float, pixel_weight: float, config) -> Loss:
  """``perceptual_weight * perceptual + pixel_weight * mse``; both terms logged."""
  perceptual = _perceptual_from_config(config)

  def loss(reconstruction, clean, aux):
    del aux
    p_value, terms = perceptual(reconstruction, clean)
    m_value = mse(reconstruction, clean)
    total = perceptual_weight * p_value
    if pixel_weight:
      total = total + pixel_weight * m_value
    return total, {"perceptual": p_value, "mse": m_value, **terms}

  return loss


def _perceptual(config) -> Loss:
  return _combined(1.0, 0.0, config)


def _mixed(config) -> Loss:
  rho = float(_field(config, "rho", 1.0))
  if rho < 0:
    raise ValueError(f"config.loss.rho must be >= 0, got {rho}.")
  return _combined(1.0, rho, config)


def _weighted(config) -> Loss:
  lam1 = float(_field(config, "perceptual_weight", 1.0))
  lam2 = float(_field(config, "pixel_weight", 1.0))
  if lam1 < 0 or lam2 < 0:
    raise ValueError(
        f"config.loss.perceptual_weight={lam1} and pixel_weight={lam2} must be >= 0."
    )
  return _combined(lam1, lam2, config)


def weight_aux(loss: Loss, weights: Mapping[str, float], *, strict: bool = True) -> Loss:
  """Adds named, weighted auxiliary terms to ``loss``.

  ``loss(reconstruction, clean, aux)`` becomes ``value + sum_k weights[k] *
  aux[k]`` over the names ``k`` in both ``weights`` and ``aux`` (a term the
  model did not sow is skipped); each added term is logged under its name.

  Args:
    loss: the loss to extend; it gets the terms not in ``weights``.
    weights: ``{name: weight}``.
    strict: a sown term without a weight raises (``losses.create``); with
      ``False`` it is passed on to ``loss`` instead (``steps.make_loss_fn``'s
      ``aux_weights``, ahead of a loss that may weight it).

  Returns:
    The wrapped loss.
  """
  weights = {str(k): float(v) for k, v in weights.items()}

  def wrapped(reconstruction, clean, aux):
    rest = {k: v for k, v in aux.items() if k not in weights}
    if strict and rest:
      name = sorted(rest)[0]
      raise ValueError(
          f"The model sowed the auxiliary loss term {name!r} but the loss has no weight for it; "
          f"set config.loss.aux_weights={{{name!r}: w}}"
          + (" (or config.loss.kl_weight)" if name == "kl" else "") + ", 0 to only log it.")
    value, terms = loss(reconstruction, clean, rest)
    for name, weight in weights.items():
      if name in aux:
        term = jnp.asarray(aux[name], jnp.float32)
        value = value + weight * term
        terms = {**terms, name: term}
    return value, terms

  return wrapped


def _aux_weights(config) -> dict[str, float]:
  """``config.loss.aux_weights`` plus ``kl_weight`` as the weight of ``kl``."""
  weights = _field(config, "aux_weights", {})
  weights = {str(k): float(v) for k, v in dict(weights).items()}
  kl_weight = _field(config, "kl_weight", None)
  if kl_weight is not None:
    if "kl" in weights:
      raise ValueError("config.loss.kl_weight and config.loss.aux_weights['kl'] are both set; "
                       "keep one.")
    weights["kl"] = float(kl_weight)
  for name, weight in weights.items():
    if weight < 0:
      field = "kl_weight" if name == "kl" and kl_weight is not None else f"aux_weights[{name!r}]"
      raise ValueError(f"config.loss.{field} must be >= 0, got {weight}.")
  return weights


_REGISTRY: dict[str, Callable[..., Loss]] = {
    "mse": _pixel_mse,
    "bce": _pixel_bce,
    "perceptual": _perceptual,
    "mixed": _mixed,
    "weighted": _weighted,
}


def available() -> list[str]:
  """Names accepted by ``config.loss.name``."""
  return sorted(_REGISTRY)


def create(config: ml_collections.ConfigDict | str, **fields) -> Loss:
  """Builds the loss named by ``config.name`` from its config block.

  ``create("mse")`` or ``create("mixed", rho=0.5)`` build one from plain
  arguments instead of a config block.

  Heavy state (the VGG16 weights of the perceptual losses) is loaded here,
  once, and closed over by the returned function.

  Raises:
    ValueError: for an unknown name, listing the available ones, or a bad
      field value, naming the field.
  """
  if isinstance(config, str):
    config = ml_collections.ConfigDict({"name": config, **fields})
  if config.name not in _REGISTRY:
    raise ValueError(
        f"config.loss.name={config.name!r} is unknown; available: {', '.join(available())}."
    )
  return weight_aux(_REGISTRY[config.name](config), _aux_weights(config))
