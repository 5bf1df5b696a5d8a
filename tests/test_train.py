"""Training: the step learns, data parallelism is exact, end to end with resume."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct, traverse_util
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from configs import lfw_cae
from jax_dae import (
  checkpoint,
  corruptions,
  distributed,
  loops,
  losses,
  models,
  optimizers,
  steps,
  train,
)


def _tiny_config():
  config = lfw_cae.get_config("runlocal")
  config.model.name = "TinyCAE"
  return config


def _images(n, size=16, seed=0):
  rng = np.random.default_rng(seed)
  # Smooth random images: upsampled noise, so blur removes real detail.
  small = rng.uniform(0, 255, (n, size // 4, size // 4, 3))
  return np.kron(small, np.ones((1, 4, 4, 1))).astype(np.uint8)


@pytest.fixture(scope="module")
def setup():
  config = _tiny_config()
  config.optimizer.learning_rate = 3e-3  # a few steps must show learning
  model = models.from_config(config)
  tx = optimizers.create(config)
  corrupt = corruptions.parse("gaussian_blur(kernel=3,sigma=1)")
  step = steps.make_train_step(loss_fn=losses.create(config.loss), corrupt=corrupt)
  state = steps.init_state(model, tx, (16, 16, 3), jax.random.key(0))
  return config, model, tx, corrupt, step, state


def test_cae_parameter_count_matches_layer_arithmetic():
  def conv(k, cin, cout):
    return k * k * cin * cout + cout

  expected = (conv(9, 3, 64) + conv(4, 64, 64) + conv(4, 64, 128) + conv(4, 128, 256)
              + conv(4, 256, 256) + conv(4, 256, 128) + conv(4, 128, 64) + conv(9, 64, 3)
              + 2 * (64 + 64 + 128 + 256 + 256 + 128 + 64))  # BatchNorm scale + bias
  variables = jax.eval_shape(
      lambda: models.create("CAE").init(jax.random.key(0), jnp.zeros((1, 112, 112, 3))))
  assert sum(x.size for x in jax.tree.leaves(variables["params"])) == expected == 2_458_819
  out = jax.eval_shape(lambda v: models.create("CAE").apply(v, jnp.zeros((2, 112, 112, 3))),
                       variables)
  assert out.shape == (2, 112, 112, 3)
  # The encoder's last stride-2 conv reaches the 14x14x256 bottleneck.
  _, inter = jax.eval_shape(
      lambda v: models.create("CAE").apply(v, jnp.zeros((1, 112, 112, 3)),
                                           capture_intermediates=True, mutable=["intermediates"]),
      variables)
  assert inter["intermediates"]["Conv_3"]["__call__"][0].shape == (1, 14, 14, 256)


def test_train_steps_lower_the_loss_on_a_fixed_batch(setup):
  _, _, _, _, step, state = setup
  batch = _images(8)
  run = jax.jit(lambda s, k: step(s, batch, k))
  losses_seen = []
  for i in range(30):
    state, metrics = run(state, jax.random.key(i))
    losses_seen.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses_seen))
  assert np.mean(losses_seen[-5:]) < 0.5 * np.mean(losses_seen[:3])
  assert int(state.step) == 30
  # BatchNorm running means moved away from their initial zeros (the variances
  # start at 1, so they would pass this check unmoved).
  flat = traverse_util.flatten_dict(state.batch_stats)
  means = [v for path, v in flat.items() if path[-1] == "mean"]
  assert means and all(float(jnp.abs(m).max()) > 1e-3 for m in means)


def test_one_and_eight_devices_give_the_same_update(setup):
  assert jax.device_count() == 8, "tests/conftest.py sets 8 host devices"
  # SGD, not Adam: Adam divides by the gradient's magnitude, which turns the
  # rounding noise in the (BatchNorm-cancelled, ~0) conv-bias gradients into
  # full-size updates that differ with the reduction order of any two runs.
  _, model, _, _, step, _ = setup
  state = steps.init_state(model, optax.sgd(0.05), (16, 16, 3), jax.random.key(0))
  images = _images(16, seed=1)
  perm = jnp.arange(16)
  results = []
  for n in (1, 8):
    mesh = distributed.make_mesh(n)
    loop = loops.make_train_loop(step, batch_size=8, steps_per_epoch=2, steps_per_call=2,
                                 batch_sharding=NamedSharding(mesh, P(distributed.DATA_AXIS)))
    replicated = NamedSharding(mesh, P())
    s = jax.device_put(jax.tree.map(jnp.copy, state), replicated)  # the loop donates it
    out, _ = loop(s, jax.device_put(images, replicated), perm, jax.random.key(3))
    results.append(jax.device_get(out))
  for a, b in zip(jax.tree.leaves(results[0].params), jax.tree.leaves(results[1].params),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
  for a, b in zip(jax.tree.leaves(results[0].batch_stats),
                  jax.tree.leaves(results[1].batch_stats), strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_scan_draws_batches_by_permutation_and_fresh_noise_per_step():
  # The loop feeds step s the rows perm[s*B:(s+1)*B] and key fold_in(key, s).
  def spy(state, batch, rng):
    return state.replace(step=state.step + 1), {
        "loss": jnp.zeros(()), "first": batch[:, 0, 0, 0].astype(jnp.float32),
        "key": jax.random.key_data(rng)}

  images = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
  @struct.dataclass
  class S:  # any pytree with a step counter will do for the spy
    step: jax.Array

  loop = loops.make_train_loop(spy, batch_size=2, steps_per_epoch=3, steps_per_call=3)
  perm = jnp.array([5, 0, 3, 1, 4, 2])
  final, metrics = loop(S(jnp.array(0)), images, perm, jax.random.key(7))
  np.testing.assert_array_equal(metrics["first"], [[5, 0], [3, 1], [4, 2]])
  keys = np.asarray(metrics["key"])
  assert len({tuple(k) for k in keys}) == 3
  np.testing.assert_array_equal(
      keys[1], np.asarray(jax.random.key_data(jax.random.fold_in(jax.random.key(7), 1))))
  assert int(final.step) == 3


def _run(workdir, shared_data, tmp_path, epochs, **data_overrides):
  config = _tiny_config()
  config.data.dir = str(shared_data)
  config.data.cache_dir = str(tmp_path / "cache")
  config.data.split = {"test": 16, "val": 8, "train": 32}
  config.data.resize, config.data.crop = 64, 32  # small faces keep CPU compiles short
  config.data.download = False
  config.train.num_epochs = epochs
  config.train.eval_batch_size = 8
  config.train.num_samples = 4
  config.mesh.num_devices = 1
  config.data.update(data_overrides)
  return train.train_and_evaluate(config, str(workdir))


@pytest.mark.slow
def test_end_to_end_on_real_lfw_writes_outputs_and_resumes(shared_data, tmp_path):
  workdir = tmp_path / "run"
  first = _run(workdir, shared_data, tmp_path, epochs=2)
  assert first["step"] == 8  # 32 images / batch 8 = 4 steps per epoch
  assert (workdir / "results.json").is_file() and (workdir / "curves.png").is_file()
  assert sorted(p.name for p in (workdir / "samples").glob("*.png")) == [
      "epoch_001.png", "epoch_002.png", "test.png"]
  # The first test faces, corrupted as the evaluation corrupts them, through the final model.
  faces = np.load(workdir / "test_samples.npz")
  assert faces["clean"].shape == faces["reconstructed"].shape == (4, 32, 32, 3)
  assert 15 < _psnr(faces["corrupted"], faces["clean"]) < 35
  saved = json.loads((workdir / "results.json").read_text())
  for key in ("psnr", "ssim"):
    assert np.isfinite(saved["test"][key]) and np.isfinite(saved["test_input"][key])
  assert 15 < saved["test_input"]["psnr"] < 35  # a blurred real face, neither clean nor noise
  assert checkpoint.Checkpointer(workdir / "checkpoints").latest_step() == 8
  # Where the wall time went: every phase that ran, adding up to the wall time.
  phases = saved["phase_s"]
  assert set(phases) == {"data", "init", "compile", "train", "validation", "checkpoint",
                         "samples", "test", "other"}
  assert all(v > 0 for k, v in phases.items() if k != "other") and phases["other"] >= 0
  assert sum(phases.values()) == pytest.approx(saved["wall_s"])
  assert phases["train"] == saved["train_s"] and phases["compile"] == saved["compile_s"]

  # Same command, one more epoch: resumes at step 8 instead of restarting...
  resumed = _run(workdir, shared_data, tmp_path, epochs=3)
  assert resumed["step"] == 12
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  epochs = [r["epoch"] for r in rows if "epoch" in r]
  assert epochs == [1, 2, 3]
  # ...and ends exactly where an uninterrupted 3-epoch run ends.
  straight = _run(tmp_path / "straight", shared_data, tmp_path, epochs=3)
  assert straight["test"] == resumed["test"]


def _psnr(a, b):
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2, axis=(1, 2, 3))
  return float(np.mean(10 * np.log10(255.0**2 / mse)))


@pytest.mark.slow
def test_early_stopping_per_epoch_tests_and_named_test_corruptions(shared_data, tmp_path):
  from configs import mnist_dae

  config = mnist_dae.get_config("runlocal")
  config.data.dir = str(shared_data)
  config.data.cache_dir = str(tmp_path / "cache")
  config.mesh.num_devices = 1
  # Steps of 1e-30 leave every float32 output as it was: validation never improves.
  config.optimizer.learning_rate = 1e-30
  config.train.num_epochs = 4
  config.train.patience = 1
  config.train.test_epochs = (1, 2, 4)
  config.test_corruptions = {"same": config.corruption, "blur": "gaussian_blur(kernel=5,sigma=2)"}
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  # Best at epoch 1, no better epoch 2: stopped before epoch 3 (Keras' patience rule).
  assert results["epochs"] == 2 and results["best_val_step"] == results["step"] // 2
  # Epoch 4 never ran; the model did not change, so every test evaluation agrees.
  assert sorted(results["test_by_epoch"]) == ["1", "2"]
  for metrics in results["test_by_epoch"].values():
    assert metrics["psnr"] == results["test"]["psnr"]
  same, blur = results["test_by_corruption"]["same"], results["test_by_corruption"]["blur"]
  assert same["test"] == results["test"] and same["test_input"] == results["test_input"]
  assert blur["test_input"]["psnr"] != pytest.approx(results["test_input"]["psnr"], abs=0.5)


@pytest.mark.slow
def test_streaming_from_host_trains_exactly_like_device_resident_data(shared_data, tmp_path):
  device = _run(tmp_path / "device", shared_data, tmp_path, epochs=2, placement="device")
  # A memory budget the split cannot fit: "auto" must choose host streaming.
  host = _run(tmp_path / "host", shared_data, tmp_path, epochs=2, placement="auto",
              device_memory_fraction=1e-12)
  assert (device["placement"], host["placement"]) == ("device", "host")
  assert host["step"] == device["step"] == 8
  # Same batches, same noise: the same model. (The means may differ in the
  # last float32 bits: the host evaluator adds per-batch sums in another order.)
  assert host["test"] == pytest.approx(device["test"], rel=1e-5)
  states = [checkpoint.Checkpointer(tmp_path / d / "checkpoints").restore_latest(
      steps.init_state(models.from_config(_tiny_config()), optimizers.create(_tiny_config()),
                       (32, 32, 3), jax.random.key(0))) for d in ("device", "host")]
  for a, b in zip(jax.tree.leaves(states[0].params), jax.tree.leaves(states[1].params),
                  strict=True):
    np.testing.assert_array_equal(a, b)


def test_call_sizer_ramps_to_the_target_and_an_epoch_end_does_not_restart_it():
  sizer = loops.CallSizer(seconds=1.0, maximum=200)
  counts = []
  for _ in range(5):  # 1 ms a step: the target is 1000 steps, capped at 200
    counts.append(sizer.next(limit=10_000))
    sizer.record(counts[-1], counts[-1] * 1e-3)
  assert counts == [1, 4, 16, 64, 200]
  sizer.record(3, 3e-3)  # 3 steps left in the epoch
  assert sizer.next(limit=10_000) == 200
  sizer.record(200, 20.0)  # 100 ms a step now: 10 steps a second
  assert sizer.next(limit=10_000) == 10
  assert sizer.next(limit=4) == 4
