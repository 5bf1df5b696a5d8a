"""Faults and bad input: kills mid-run, NaN, damaged checkpoints, config errors."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import lfw_cae
from jax_dae import checkpoint, train

ROOT = Path(__file__).resolve().parents[1]


def _flags(shared_data, tmp_path, workdir):
  return [
      "--config=configs/lfw_cae.py:runlocal", f"--workdir={workdir}",
      f"--config.data.dir={shared_data}", f"--config.data.cache_dir={tmp_path / 'cache'}",
      "--config.data.download=False", "--config.data.resize=64", "--config.data.crop=32",
      "--config.data.split.train=32", "--config.data.split.val=8", "--config.data.split.test=8",
      "--config.train.num_epochs=3", "--config.train.steps_per_call=2",
      "--config.train.eval_batch_size=8", "--config.train.num_samples=2",
      "--config.mesh.num_devices=1", f"--compilation_cache={ROOT / '.pytest_cache' / 'xla'}",
  ]


def _run(args, fault=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONPATH=str(ROOT))
  if fault:
    env["JAX_DAE_FAULT"] = fault
    cmd = [sys.executable, str(ROOT / "tests" / "fault_runner.py"), *args]
  else:
    cmd = [sys.executable, "-m", "jax_dae.main", *args]
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _final_params(workdir):
  config = lfw_cae.get_config("runlocal")
  model = train.create_model(config)
  state = train.init_state(model, train.create_optimizer(config), (32, 32, 3),
                           jax.random.key(0))
  return jax.device_get(checkpoint.Checkpointer(Path(workdir) / "checkpoints")
                        .restore_latest(state))


@pytest.mark.slow
def test_sigkill_mid_epoch_and_mid_checkpoint_then_rerun_is_bit_identical(shared_data, tmp_path):
  straight = tmp_path / "straight"
  done = _run(_flags(shared_data, tmp_path, straight))
  assert done.returncode == 0, done.stderr[-2000:]

  faulty = tmp_path / "faulty"
  args = _flags(shared_data, tmp_path, faulty)
  # 4 steps per epoch, 2 per compiled call: the 3rd metrics write is mid-epoch 2.
  killed = _run(args, fault="write:3")
  assert killed.returncode == -signal.SIGKILL
  assert not (faulty / "results.json").exists()
  # Killed right after the 2nd checkpoint save was handed to the writer thread:
  # epoch 2's write is torn or not begun.
  killed = _run(args, fault="save:1")  # resumes at step 4; its first save is epoch 2's
  assert killed.returncode == -signal.SIGKILL
  finished = _run(args)
  assert finished.returncode == 0, finished.stderr[-2000:]

  a, b = _final_params(straight), _final_params(faulty)
  assert int(a.step) == int(b.step) == 12
  for x, y in zip(jax.tree.leaves((a.params, a.batch_stats, a.opt_state)),
                  jax.tree.leaves((b.params, b.batch_stats, b.opt_state)), strict=True):
    np.testing.assert_array_equal(x, y)
  results = [json.loads((d / "results.json").read_text()) for d in (straight, faulty)]
  assert results[0]["test"] == results[1]["test"]


def test_damaged_checkpoint_is_skipped_for_the_previous_one(tmp_path, caplog):
  config = lfw_cae.get_config("runlocal")
  model = train.create_model(config)
  state = train.init_state(model, train.create_optimizer(config), (16, 16, 3),
                           jax.random.key(0))
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  ckpt.save(1, state.replace(step=1))
  ckpt.save(2, state.replace(step=2))
  ckpt.wait()
  # Damage step 2 on disk: delete its array data.
  for path in (tmp_path / "ckpt" / "latest" / "2").rglob("*"):
    if path.is_dir() and path.name in ("d", "ocdbt.process_0"):
      shutil.rmtree(path)
  with caplog.at_level("WARNING"):
    restored = checkpoint.Checkpointer(tmp_path / "ckpt").restore_latest(state)
  assert int(restored.step) == 1
  assert any("2" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)


def test_nan_loss_stops_with_step_and_quantity_and_keeps_last_checkpoint(shared_data, tmp_path):
  args = _flags(shared_data, tmp_path, tmp_path / "nan")
  # A huge learning rate blows the parameters up within the second epoch.
  result = _run([*args, "--config.optimizer.learning_rate=1e12"])
  assert result.returncode == 1
  err = result.stderr
  assert "became nan" in err or "became inf" in err
  assert "at step" in err
  latest = checkpoint.Checkpointer(tmp_path / "nan" / "checkpoints").latest_step()
  assert latest is None or latest % 4 == 0  # only completed epochs were saved
  assert not (tmp_path / "nan" / "results.json").exists()


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("model.name", "Nope", "config.model.name='Nope' is unknown; available: "),
        ("model.dtype", "float16", "config.model.dtype='float16' is unknown; allowed: "),
        ("loss.name", "l3", "config.loss.name='l3' is unknown; available: "),
        ("data.name", "imagenet", "config.data.name='imagenet' is unknown; available: "),
        ("corruption", "gaussian_blurr(sigma=1)", "Unknown corruption 'gaussian_blurr'"),
        ("corruption", "gaussian_blur(radius=1)", "has no argument 'radius'"),
        ("optimizer.name", "sgdd", "config.optimizer.name='sgdd' is unknown; allowed: "),
        ("optimizer.learning_rate", -1.0, "config.optimizer.learning_rate must be > 0"),
        ("train.batch_size", 0, "config.train.batch_size=0 must be an integer >= 1"),
        ("train.num_epochs", 0, "config.train.num_epochs=0 must be an integer >= 1"),
        ("mesh.num_devices", -2, "config.mesh.num_devices=-2 must be >= 0"),
    ],
)
def test_config_errors_name_the_field_and_the_allowed_values(field, value, message):
  config = lfw_cae.get_config()
  parent, _, leaf = field.rpartition(".")
  setattr(config.get(parent) if parent else config, leaf, value)
  with pytest.raises(ValueError) as info:
    train.validate_config(config)
  assert message in str(info.value)
  assert "\n" not in str(info.value)


def test_model_incompatible_with_data_shape_is_one_line():
  config = lfw_cae.get_config()
  config.model.name = "MnistDAE"
  model = train.create_model(config, out_channels=3)
  with pytest.raises(ValueError) as info:
    train.check_model_fits_data(model, "MnistDAE", (112, 112, 3))
  assert "config.model.name='MnistDAE'" in str(info.value)
  assert "\n" not in str(info.value)


def test_cli_reports_config_error_in_one_line_without_traceback(tmp_path):
  result = _run(["--config=configs/lfw_cae.py", f"--workdir={tmp_path}",
                 "--config.model.name=Nope"])
  assert result.returncode == 1
  assert "Traceback" not in result.stderr
  assert "error: config.model.name='Nope' is unknown" in result.stderr


def test_background_save_survives_the_callers_buffers_being_donated(tmp_path):
  """save() returns before writing; the train loop then donates (frees) the state's buffers."""
  config = lfw_cae.get_config("runlocal")
  model = train.create_model(config)
  state = train.init_state(model, train.create_optimizer(config), (16, 16, 3),
                           jax.random.key(0)).replace(step=jax.numpy.asarray(3))
  want = jax.device_get(state)
  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  ckpt.save(3, state, metrics={"psnr": 20.0})
  assert ckpt.best_step() == 3  # The bookkeeping is done when save() returns.
  for leaf in jax.tree.leaves(state):
    leaf.delete()  # What donation does to the caller's buffers.
  ckpt.wait()
  ckpt.close()
  template = jax.tree.map(jax.numpy.asarray, want)
  for which in ("restore_latest", "restore_best"):
    got = getattr(checkpoint.Checkpointer(tmp_path / "ckpt"), which)(template)
    for x, y in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_array_equal(x, y)
