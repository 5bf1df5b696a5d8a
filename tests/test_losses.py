"""Losses (pixel, BCE, perceptual, mixed, weighted, KL) and the LPIPS metric."""

import dm_pix
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from skimage import data as skdata

from jax_dae import losses, metrics, models, steps
from jax_dae.models import vgg


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
  """The package's checkpoint converted into a temporary .npz (the user cache stays untouched)."""
  out = tmp_path_factory.mktemp("vgg") / "vgg16_lpips.npz"
  return str(vgg.export_weights(out, source=str(vgg.package_checkpoint_path())))


@pytest.fixture(scope="module")
def weights(weights_file):
  return vgg.load_weights(weights_file)


@pytest.fixture(scope="module")
def faces():
  """Two 32x32 natural images in [0, 1]: the astronaut's face and a shifted crop."""
  image = skdata.astronaut().astype(np.float32) / 255.0
  face = image[:256, 96:352]  # 256 x 256 around the head
  small = face.reshape(32, 8, 32, 8, 3).mean(axis=(1, 3))
  other = image[256:512, 256:512].reshape(32, 8, 32, 8, 3).mean(axis=(1, 3))
  return np.stack([small, other])


def _config(**fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(fields)


# ---------------------------------------------------------------------------
# Pixel losses against hand-computed values.
# ---------------------------------------------------------------------------


def test_mse_hand_computed():
  a = jnp.array([0.0, 0.5, 1.0, 0.25]).reshape(1, 2, 2, 1)
  b = jnp.array([0.5, 0.5, 0.0, 0.75]).reshape(1, 2, 2, 1)
  # (0.25 + 0 + 1 + 0.25) / 4
  np.testing.assert_allclose(losses.mse(a, b), 0.375, rtol=1e-6)
  value, terms = losses.create(_config(name="mse"))(a, b, {})
  np.testing.assert_allclose(value, 0.375, rtol=1e-6)
  assert set(terms) == {"mse"}


def test_bce_hand_computed_on_probabilities():
  p = jnp.array([0.25, 0.5, 0.9, 0.5]).reshape(1, 2, 2, 1)
  t = jnp.array([0.0, 1.0, 1.0, 0.5]).reshape(1, 2, 2, 1)
  expected = -(np.log(0.75) + np.log(0.5) + np.log(0.9) + 0.5 * np.log(0.5) * 2) / 4
  np.testing.assert_allclose(losses.bce(p, t), expected, rtol=1e-6)
  value, terms = losses.create(_config(name="bce"))(p, t, {})
  np.testing.assert_allclose(value, expected, rtol=1e-6)
  assert set(terms) == {"bce"}


def test_bce_clips_saturated_probabilities():
  p = jnp.array([0.0, 1.0]).reshape(1, 1, 2, 1)
  t = jnp.array([1.0, 1.0]).reshape(1, 1, 2, 1)
  value = losses.bce(p, t, eps=1e-7)
  # log(1e-7) for the wrong saturated pixel, about 0 for the right one.
  np.testing.assert_allclose(value, -np.log(1e-7) / 2, rtol=1e-4)
  assert np.isfinite(jax.grad(lambda q: losses.bce(q, t))(p)).all()


def test_kl_term_is_added_when_sown():
  a = jnp.zeros((1, 2, 2, 1))
  b = jnp.full((1, 2, 2, 1), 0.5)
  loss = losses.create(_config(name="mse", kl_weight=0.5))
  value, terms = loss(a, b, {"kl": jnp.float32(3.0)})
  np.testing.assert_allclose(value, 0.25 + 0.5 * 3.0, rtol=1e-6)
  np.testing.assert_allclose(terms["kl"], 3.0)
  value, terms = loss(a, b, {})
  assert "kl" not in terms
  np.testing.assert_allclose(value, 0.25, rtol=1e-6)


# ---------------------------------------------------------------------------
# Perceptual losses.
# ---------------------------------------------------------------------------


def _upsample2_by_hand(x: np.ndarray) -> np.ndarray:
  """x2 bilinear with half-pixel centres, edge-clamped (torch align_corners=False)."""
  def along(a, axis):
    a = np.moveaxis(a, axis, 0)
    prev = np.concatenate([a[:1], a[:-1]])
    nxt = np.concatenate([a[1:], a[-1:]])
    out = np.empty((2 * a.shape[0], *a.shape[1:]), a.dtype)
    out[0::2] = 0.75 * a + 0.25 * prev
    out[1::2] = 0.75 * a + 0.25 * nxt
    return np.moveaxis(out, 0, axis)

  return along(along(x, 1), 2)


def test_perceptual_hand_computed(weights, faces):
  """Two layers with weights, x2 upsampling, ||.||^2 / (C H W), batch mean."""
  layers, layer_weights = ("relu1_2", "relu2_2"), (0.3, 2.0)
  rec, clean = faces, faces[::-1]
  loss = losses.make_perceptual(layers=layers, layer_weights=layer_weights, upsample=2,
                                weights=weights)
  value, terms = loss(jnp.asarray(rec), jnp.asarray(clean))

  net = vgg.VGG16Features(layers=layers)
  params = {"params": vgg.vgg_params(weights, layers)}
  fr = net.apply(params, _upsample2_by_hand(rec))
  fc = net.apply(params, _upsample2_by_hand(clean))
  expected = 0.0
  for layer, w in zip(layers, layer_weights, strict=True):
    diff = np.asarray(fr[layer], np.float64) - np.asarray(fc[layer], np.float64)
    _, h, wd, c = diff.shape
    per_image = np.sum(diff**2, axis=(1, 2, 3)) / (c * h * wd)
    np.testing.assert_allclose(terms[f"perceptual_{layer}"], per_image.mean(), rtol=1e-4)
    expected += w * per_image.mean()
  np.testing.assert_allclose(value, expected, rtol=1e-4)


def test_perceptual_zero_on_identical_and_grows_with_blur(weights, faces):
  loss = jax.jit(losses.make_perceptual(weights=weights))  # seed 000: relu3_3, x2
  images = jnp.asarray(faces)
  value, _ = loss(images, images)
  assert float(value) == 0.0
  values = [float(loss(dm_pix.gaussian_blur(images, s, 9), images)[0])
            for s in (0.5, 1.0, 2.0, 4.0)]
  assert values[0] > 0
  assert all(a < b for a, b in zip(values, values[1:], strict=False)), values


def test_mixed_and_weighted_combine_terms(weights_file, faces):
  rec = jnp.asarray(faces)
  clean = jnp.asarray(faces[::-1])
  base = {"layers": ("relu2_2",), "upsample": 1, "vgg_weights": weights_file}
  _, p_terms = losses.create(_config(name="perceptual", **base))(rec, clean, {})
  p, m = float(p_terms["perceptual"]), float(losses.mse(rec, clean))
  np.testing.assert_allclose(p_terms["mse"], m, rtol=1e-6)  # logged, not added
  np.testing.assert_allclose(losses.create(_config(name="perceptual", **base))(rec, clean, {})[0],
                             p, rtol=1e-6)
  mixed, terms = losses.create(_config(name="mixed", rho=0.5, **base))(rec, clean, {})
  np.testing.assert_allclose(mixed, 0.5 * m + p, rtol=1e-5)
  assert {"perceptual", "mse", "perceptual_relu2_2"} <= set(terms)
  weighted, _ = losses.create(
      _config(name="weighted", perceptual_weight=2.0, pixel_weight=3.0, **base))(rec, clean, {})
  np.testing.assert_allclose(weighted, 2.0 * p + 3.0 * m, rtol=1e-5)


def test_perceptual_accepts_grayscale(weights):
  gray = jnp.linspace(0, 1, 2 * 16 * 16).reshape(2, 16, 16, 1)
  loss = losses.make_perceptual(layers=("relu1_2",), upsample=1, weights=weights)
  value, _ = loss(gray, gray[::-1])
  rgb_value, _ = loss(jnp.repeat(gray, 3, -1), jnp.repeat(gray[::-1], 3, -1))
  np.testing.assert_allclose(value, rgb_value, rtol=1e-6)


def test_perceptual_train_step_updates_the_model_not_vgg(weights_file):
  """One jitted step of TinyCAE with the mixed loss: finite, VGG outside the state.

  relu1_2 at 16x16 keeps the compile short; the full seed setting compiles the same graph.
  """
  config = _config(name="mixed", rho=1.0, layers="relu1_2", upsample=1, vgg_weights=weights_file)
  model = models.create("TinyCAE")
  tx = optax.adam(1e-3)
  # "rbg" keys: threefry's initialisers take far longer to compile on CPU.
  init = jax.jit(lambda key: steps.init_state(model, tx, (16, 16, 3), key))
  state = init(jax.random.key(0, impl="rbg"))
  step = jax.jit(steps.make_train_step(loss_fn=losses.create(config), corrupt=lambda k, x: x))
  images = np.random.default_rng(1).uniform(size=(4, 16, 16, 3)).astype(np.float32)
  new_state, out = step(state, images, jax.random.key(2, impl="rbg"))
  assert np.isfinite(float(out["loss"]))
  np.testing.assert_allclose(out["loss"], out["mse"] + out["perceptual"], rtol=1e-5)
  assert not any("conv1_1" in str(path) for path, _ in
                 jax.tree_util.tree_flatten_with_path(new_state.params)[0])
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params, new_state.params)
  assert any(jax.tree.leaves(changed))


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"name": "nope"}, "config.loss.name"),
        ({"name": "perceptual", "layers": ("relu2_1",)}, "config.loss.layers"),
        ({"name": "perceptual", "layers": ("relu1_2", "relu2_2"), "layer_weights": (1.0,)},
         "config.loss.layer_weights"),
        ({"name": "perceptual", "upsample": 0}, "config.loss.upsample"),
        ({"name": "perceptual", "vgg_dtype": "float16"}, "config.loss.vgg_dtype"),
        ({"name": "mixed", "rho": -1.0}, "config.loss.rho"),
        ({"name": "mse", "kl_weight": -1.0}, "config.loss.kl_weight"),
        ({"name": "bce", "eps": 0.0}, "config.loss.eps"),
    ],
)
def test_bad_config_values_name_the_field(weights_file, fields, match):
  with pytest.raises(ValueError, match=match):
    losses.create(_config(vgg_weights=weights_file, **fields))


def test_available_names():
  assert losses.available() == ["bce", "mixed", "mse", "perceptual", "weighted"]


# ---------------------------------------------------------------------------
# LPIPS.
# ---------------------------------------------------------------------------


def test_lpips_zero_for_self_symmetric_and_grows_with_blur(weights, faces):
  images = jnp.asarray(faces)
  np.testing.assert_allclose(metrics.lpips(images, images, weights=weights), 0.0, atol=1e-6)
  ab = metrics.lpips(images, images[::-1], weights=weights)
  ba = metrics.lpips(images[::-1], images, weights=weights)
  np.testing.assert_allclose(ab, ba, rtol=1e-5)
  values = [np.asarray(metrics.lpips(dm_pix.gaussian_blur(images, s, 9), images, weights=weights))
            for s in (0.5, 1.0, 2.0)]
  assert np.all(values[0] > 0) and np.all(values[0] < values[1]) and np.all(values[1] < values[2])


# ---------------------------------------------------------------------------
# The S0 configs build and their losses construct.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "module, arg, loss_name",
    [
        ("lfw_cae_perceptual", None, "perceptual"),
        ("lfw_cae_perceptual", "runlocal", "perceptual"),
        ("lfw_cae_mixed", "rho=0.5", "mixed"),
        ("lfw_cae_mixed", "rho=1,runlocal", "mixed"),
        ("lfw_cae_pixelate", None, "mse"),
        ("lfw_cae_pixelate", "grid,mpl1,runlocal", "mixed"),
        ("lfw_rescae", "runlocal", "mse"),
    ],
)
def test_s0_configs_build(weights_file, module, arg, loss_name):
  import importlib

  config = importlib.import_module(f"configs.{module}").get_config(arg)
  assert config.loss.name == loss_name
  if module == "lfw_cae_mixed":
    assert config.loss.rho == float(arg.split(",")[0].split("=")[1])
  if module == "lfw_cae_pixelate":
    assert config.corruption == ("pixelate(grid=8)" if arg and "grid" in arg
                                 else "pixelate(block=8)")
  if arg and "runlocal" in arg:
    assert config.model.name.startswith(("Tiny", "Small"))
  loss_config = ml_collections.ConfigDict(config.loss.to_dict())
  if "vgg_weights" in loss_config:
    loss_config.vgg_weights = weights_file
  losses.create(loss_config)
  models.create(config.model.name)
