"""Many seeds in one program: replica k is the run of seed + k, resumes, reports its spread.

Also BatchNorm statistics recomputed under the current weights
(``config.train.bn_stats="recomputed"``), which the replica runs here use.
"""

import json
import statistics

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_runs import interrupt_after_first_progress, resumed_from, run

from configs import lfw_cae
from jax_dae import (
  checkpoint,
  corruptions,
  evaluation,
  inference,
  losses,
  models,
  optimizers,
  replicas,
  steps,
  train,
)
from jax_dae.models import layers

SEED = 5


def _config(shared_data, tmp_path, seed, num_seeds):
  config = lfw_cae.get_config("runlocal")
  config.model.name = "TinyCAE"
  # The forms the GPU uses (layers.AUTO_FORMS). The CPU's matmul forms sum in
  # another order under vmap, and Adam scales that rounding up in parameters
  # whose gradients are near zero (up to 1e-4 here after 8 steps).
  config.model.update(layers.AUTO_FORMS["gpu"])
  config.data.dir = str(shared_data)
  config.data.cache_dir = str(tmp_path / "cache")
  config.data.split = {"test": 16, "val": 8, "train": 32}
  config.data.resize, config.data.crop = 64, 32
  config.data.download = False
  config.train.num_epochs = 2
  config.train.eval_batch_size = 8
  config.train.num_samples = 4
  config.train.bn_stats = "recomputed"
  config.train.bn_stats_images = 16
  config.train.ema_decay = 0.9
  config.mesh.num_devices = 1
  config.seed, config.train.num_seeds = seed, num_seeds
  return config


def _state(config, workdir, num_seeds=1):
  """The newest checkpoint of a run, on the host."""
  reps = replicas.Replicas(config.seed, num_seeds)
  template = jax.eval_shape(reps.map(lambda k: steps.init_state(
      models.from_config(config), optimizers.create(config), (32, 32, 3), k,
      ema=config.train.ema_decay > 0)), reps.keys()[0])
  with checkpoint.Checkpointer(workdir / "checkpoints") as ckpt:
    return jax.device_get(ckpt.restore_latest(template))


@pytest.fixture(scope="module")
def runs(shared_data, tmp_path_factory):
  """A 2-replica run from SEED and the separate runs of SEED and SEED + 1."""
  tmp = tmp_path_factory.mktemp("replicas")
  out = {}
  for name, seed, num in (("two", SEED, 2), ("first", SEED, 1), ("second", SEED + 1, 1)):
    config = _config(shared_data, tmp, seed, num)
    out[name] = (config, tmp / name, train.train_and_evaluate(config, str(tmp / name)))
  return out


def _before_batchnorm(path) -> bool:
  """A TinyCAE convolution's bias that a BatchNorm follows (every one but the output's)."""
  names = [getattr(p, "key", None) for p in path]
  return names[-1] == "bias" and any(
      str(n).startswith("Conv") and n != "Conv_4" for n in names if n is not None)


@pytest.mark.slow
def test_two_replicas_train_as_the_two_separate_runs_of_their_seeds(runs):
  config, workdir, results = runs["two"]
  two = _state(config, workdir, num_seeds=2)
  assert two.step.shape == (2,)
  for k, name in enumerate(("first", "second")):
    one_config, one_workdir, one_results = runs[name]
    one = _state(one_config, one_workdir)
    mine = jax.tree.map(lambda x, k=k: x[k], two)
    assert isinstance(one, steps.EMATrainState)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path((one.params, one.ema_params, one.opt_state)),
        jax.tree.leaves((mine.params, mine.ema_params, mine.opt_state)), strict=True):
      if _before_batchnorm(path):
        # No effect on the output, and a zero gradient in exact arithmetic:
        # Adam scales the rounding noise of that zero up to steps of ~lr, so
        # two float orders of the same sums give different noise (which the
        # next BatchNorm's mean absorbs; the outputs are compared below).
        assert np.abs(a).max() < 1e-3 and np.abs(b).max() < 1e-3
        continue
      np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5, err_msg=jax.tree_util.keystr(path))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(one.batch_stats),
                            jax.tree.leaves(mine.batch_stats), strict=True):
      if path[-1].key == "var":
        np.testing.assert_allclose(b, a, rtol=1e-4)
    model = models.from_config(config)
    images = np.random.default_rng(k).uniform(size=(4, 32, 32, 3)).astype(np.float32)
    # The model evaluation uses: the weights' average with the statistics recomputed for it.
    np.testing.assert_allclose(model.apply(mine.for_evaluation().variables, images),
                               model.apply(one.for_evaluation().variables, images), atol=1e-5)
    replica = results["replicas"][k]
    assert replica["seed"] == SEED + k
    for part in ("test", "test_input", "test_at_best_val"):
      for metric, value in one_results[part].items():
        assert replica[part][metric] == pytest.approx(value, rel=1e-4, abs=1e-5)
  # The aggregate: mean, sample std, min and max over the replicas.
  psnrs = [r["test"]["psnr"] for r in results["replicas"]]
  assert psnrs[0] != psnrs[1]  # different seeds, different models
  assert results["test"]["psnr"] == pytest.approx(statistics.mean(psnrs))
  assert results["spread"]["test"]["psnr"] == pytest.approx(
      {"mean": statistics.mean(psnrs), "std": statistics.stdev(psnrs), "min": min(psnrs),
       "max": max(psnrs), "n": 2})
  assert results["seeds"] == [SEED, SEED + 1] and results["num_seeds"] == 2
  assert results["num_params"] == runs["first"][2]["num_params"]
  saved = json.loads((workdir / "results.json").read_text())
  assert saved["replicas"] == results["replicas"]


@pytest.mark.slow
def test_replica_metrics_curves_and_the_best_replica_for_inference(runs):
  config, workdir, results = runs["two"]
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  val = [r for r in rows if "val/psnr" in r]
  assert len(val) == 2
  for row in val:
    per = [row["val/psnr/r0"], row["val/psnr/r1"]]
    assert row["val/psnr"] == pytest.approx(np.mean(per))
  at_best = next(r for r in val if r["step"] == results["best_val_step"])
  best = int(np.argmax([at_best["val/psnr/r0"], at_best["val/psnr/r1"]]))
  assert results["best_replica"] == best
  # inference.load: the best replica by default, or the one asked for; each
  # is that replica's model (the separate run of its seed), with the average
  # of its weights (config.train.ema_decay) and their recomputed statistics.
  two = _state(config, workdir, num_seeds=2)
  images = np.random.default_rng(0).uniform(size=(2, 32, 32, 3)).astype(np.float32)
  for k in (0, 1):
    loaded = inference.load(workdir, checkpoint="latest", replica=k)
    assert f"seed {SEED + k}" in loaded.name
    mine = replicas.Replicas(SEED, 2).take(two, k)
    expected = models.from_config(config).apply(mine.for_evaluation().variables, images)
    np.testing.assert_allclose(loaded.denoise(images), np.clip(expected, 0, 1), atol=1e-5)
  assert f"replica {best} " in inference.load(workdir).name
  with pytest.raises(ValueError, match=r"replica=2: .* has 2 replica\(s\)"):
    inference.load(workdir, replica=2)
  assert (workdir / "curves.png").stat().st_size > 0


def _flags(shared_data, workdir):
  return [
      "--config=configs/lfw_cae.py:runlocal", f"--workdir={workdir}",
      f"--config.data.dir={shared_data}", "--config.data.download=False",
      "--config.model.name=TinyCAE", "--config.data.resize=64", "--config.data.crop=32",
      "--config.data.split.train=64", "--config.data.split.val=8", "--config.data.split.test=8",
      "--config.train.num_epochs=2", "--config.train.seconds_per_call=0.3",
      "--config.train.num_seeds=2", "--config.train.eval_batch_size=8",
      "--config.train.bn_stats=recomputed", "--config.train.ema_decay=0.9",
      "--config.train.num_samples=2", "--config.mesh.num_devices=1",
  ]


@pytest.mark.slow
def test_two_replicas_resume_after_sigint_as_if_uninterrupted(shared_data, tmp_path):
  straight = run(_flags(shared_data, tmp_path / "straight"))
  assert straight.returncode == 0, straight.stderr[-3000:]
  args = _flags(shared_data, tmp_path / "stopped")
  _, _, saved = interrupt_after_first_progress(args, tmp_path / "stopped")
  assert saved is not None and 0 < saved < 16
  finished = run(args)
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert resumed_from(finished.stderr) == saved
  config = lfw_cae.get_config("runlocal")
  config.model.name = "TinyCAE"
  config.train.ema_decay = 0.9
  a, b = (_state(config, tmp_path / d, num_seeds=2) for d in ("straight", "stopped"))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  results = [json.loads((tmp_path / d / "results.json").read_text())
             for d in ("straight", "stopped")]
  assert results[0]["replicas"] == results[1]["replicas"]


# ---------------------------------------------------------------------------
# The parts.
# ---------------------------------------------------------------------------


def test_replica_keys_are_the_run_keys_of_each_seed():
  reps = replicas.Replicas(seed=3, num=3)
  assert reps.seeds == [3, 4, 5]
  for stacked, k in zip(reps.keys(), range(4), strict=True):
    for i, seed in enumerate(reps.seeds):
      np.testing.assert_array_equal(jax.random.key_data(stacked[i]),
                                    jax.random.key_data(replicas.run_keys(seed)[k]))
  one = replicas.Replicas(seed=3)
  assert not one.stacked and one.map(len) is len
  with pytest.raises(ValueError, match="positive integer"):
    replicas.Replicas(seed=0, num=0)
  with pytest.raises(IndexError, match="replica 3 of a run with 3"):
    reps.take({"w": np.zeros((3, 2))}, 3)


def test_best_replica_reads_the_last_evaluation_at_or_before_the_step():
  rows = [{"step": 4, "val/psnr/r0": 20.0, "val/psnr/r1": 21.0},
          {"step": 6, "train/loss/r0": 0.1, "train/loss/r1": 0.2},
          {"step": 8, "val/psnr/r0": 23.0, "val/psnr/r1": 22.0}]
  assert replicas.best_replica(rows, 8, 2) == 0
  assert replicas.best_replica(rows, 6, 2) == 1  # a mid-epoch checkpoint: epoch 1's evaluation
  assert replicas.best_replica(rows, 2, 2) == 0  # nothing evaluated yet
  assert replicas.best_replica(rows, 8, 1) == 0


class _BNNet(nn.Module):
  """Two BatchNorms, the second after a convolution of the first's output."""

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.99)(x)
    return nn.Conv(3, (1, 1))(nn.relu(x))


def test_recomputed_batch_statistics_are_the_population_statistics_of_the_layer_inputs():
  corrupt = corruptions.parse("gaussian_noise(sigma=0.1)")
  images = np.random.default_rng(0).integers(0, 256, (12, 8, 8, 3), np.uint8)
  state = steps.init_state(_BNNet(), optimizers.create(lfw_cae.get_config()), (8, 8, 3),
                           jax.random.key(0))
  # Non-trivial weights and running averages: a few training steps.
  step = jax.jit(steps.make_train_step(loss_fn=losses.create(lfw_cae.get_config().loss),
                                       corrupt=corrupt))
  for i in range(3):
    state, _ = step(state, images[:4], jax.random.key(i))
  key = jax.random.key(7)
  recompute = evaluation.make_recompute_batch_stats(
      steps.make_batch_statistics(corrupt=corrupt), batch_size=4)
  new = state.replace(batch_stats=recompute(state, images, key))

  # The reference: each BatchNorm's inputs, captured per group of 4 images in
  # train mode, pooled in float64.
  corrupt_key, _ = jax.random.split(key)
  noisy = corrupt(corruptions.example_keys(corrupt_key, jnp.arange(12)), images / 255.0)
  inputs = {}

  def capture(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.BatchNorm):
      inputs.setdefault(context.module.name, []).append(np.asarray(args[0], np.float64))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(capture):
    for g in range(3):
      state.apply_fn(state.variables, noisy[4 * g:4 * g + 4], train=True,
                     mutable=["batch_stats"])
  for name, groups in inputs.items():
    x = np.concatenate(groups).reshape(-1, groups[0].shape[-1])
    np.testing.assert_allclose(new.batch_stats[name]["mean"], x.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(new.batch_stats[name]["var"], x.var(0), rtol=1e-3, atol=1e-5)
    assert not np.allclose(state.batch_stats[name]["var"], x.var(0), rtol=1e-2)
  for a, b in zip(jax.tree.leaves((state.params, state.opt_state, state.step)),
                  jax.tree.leaves((new.params, new.opt_state, new.step)), strict=True):
    np.testing.assert_array_equal(a, b)  # only the statistics change


def test_unrolled_replicas_compute_what_vmapped_replicas_compute():
  model = models.create("TinyCAE")
  images = np.random.default_rng(0).uniform(size=(2, 8, 16, 16, 3)).astype(np.float32)

  def grads(key, x):
    variables = model.init(key, x[:1])
    return jax.grad(lambda p: jnp.mean(model.apply(
        {"params": p, "batch_stats": variables["batch_stats"]}, x, train=True,
        mutable=["batch_stats"])[0] ** 2))(variables["params"])

  keys = jax.random.split(jax.random.key(0), 2)
  vmapped, unrolled = (jax.jit(replicas.Replicas(0, 2, form).map(grads))(keys, images)
                       for form in ("vmap", "unrolled"))
  for a, b in zip(jax.tree.leaves(vmapped), jax.tree.leaves(unrolled), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  with pytest.raises(ValueError, match="seeds_form='loop' is unknown"):
    replicas.Replicas(0, 2, "loop")

