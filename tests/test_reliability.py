"""Faults and bad input: kills mid-run, NaN, damaged checkpoints, config errors."""

import json
import os
import shutil
import signal
from pathlib import Path

import jax
import numpy as np
import pytest
from cli_runs import ROOT, interrupt_after_first_progress, resumed_from, run

from configs import lfw_cae
from jax_dae import checkpoint, models, optimizers, steps, validation, workdir_lock

# 64x64 faces, 8 steps per epoch, 3 epochs: a few seconds of training on 2
# cores, in calls of about half a second, so a signal lands mid-run.
EPOCHS, STEPS_PER_EPOCH = 3, 8
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH


def _flags(shared_data, workdir, *extra):
  return [
      "--config=configs/lfw_cae.py:runlocal", f"--workdir={workdir}",
      f"--config.data.dir={shared_data}",
      f"--config.data.cache_dir={ROOT / '.pytest_cache' / 'data'}",
      "--config.data.download=False", "--config.data.resize=64", "--config.data.crop=64",
      "--config.data.split.train=64", "--config.data.split.val=8", "--config.data.split.test=8",
      f"--config.train.num_epochs={EPOCHS}", "--config.train.seconds_per_call=0.5",
      "--config.train.eval_batch_size=8", "--config.train.num_samples=2",
      "--config.mesh.num_devices=1", f"--compilation_cache={ROOT / '.pytest_cache' / 'xla'}",
      *extra,
  ]


def _template():
  config = lfw_cae.get_config("runlocal")
  model = models.from_config(config)
  return steps.init_state(model, optimizers.create(config), (64, 64, 3), jax.random.key(0))


def _restore(workdir, step=None, scratch=None):
  """The newest checkpoint of a run (or, copied to ``scratch``, that of ``step``), on the host."""
  folder = Path(workdir) / "checkpoints"
  if step is not None:
    shutil.copytree(folder / "latest", Path(scratch) / "latest")
    folder = Path(scratch)
    newer = [p for p in (folder / "latest").iterdir() if p.name.isdigit() and int(p.name) > step]
    for path in newer:
      shutil.rmtree(path)
  with checkpoint.Checkpointer(folder) as ckpt:
    assert ckpt.latest_step() == (step if step is not None else ckpt.latest_step())
    return jax.device_get(ckpt.restore_latest(_template()))


def _assert_same_state(a, b):
  assert int(a.step) == int(b.step)
  for x, y in zip(jax.tree.leaves((a.params, a.batch_stats, a.opt_state)),
                  jax.tree.leaves((b.params, b.batch_stats, b.opt_state)), strict=True):
    np.testing.assert_array_equal(x, y)


def _rerun_resumes_like(straight, args, workdir, saved):
  """The same command again resumes from ``saved`` and ends as the uninterrupted run."""
  finished = run(args)
  assert finished.returncode == 0, finished.stderr[-3000:]
  assert resumed_from(finished.stderr) == saved
  _assert_same_state(_restore(straight), _restore(workdir))


@pytest.fixture(scope="module")
def straight(shared_data, tmp_path_factory):
  """An uninterrupted run: its workdir."""
  workdir = tmp_path_factory.mktemp("straight")
  done = run(_flags(shared_data, workdir))
  assert done.returncode == 0, done.stderr[-3000:]
  return workdir


@pytest.mark.slow
def test_sigint_stops_within_seconds_with_a_checkpoint_and_resumes_bit_identically(
    shared_data, straight, tmp_path):
  workdir = tmp_path / "interrupted"
  args = _flags(shared_data, workdir)
  stopped_in, _, saved = interrupt_after_first_progress(args, workdir)
  assert stopped_in < 10, stopped_in
  assert saved is not None and 0 < saved < TOTAL_STEPS, saved  # stopped mid-run, saved
  assert not (workdir / "results.json").exists()

  _rerun_resumes_like(straight, args, workdir, saved)


@pytest.mark.slow
def test_sigint_during_a_long_call_saves_the_state_before_it_without_waiting(
    shared_data, straight, tmp_path):
  """One step takes seconds (as a large model's on a CPU): the stop does not wait for it."""
  workdir = tmp_path / "long"
  args = _flags(shared_data, workdir)
  # The first call (one step, ~9 s) is done when its progress shows; a second
  # later the next one is surely running (and far from done).
  stopped_in, log, saved = interrupt_after_first_progress(args, workdir, fault="slow:1500",
                                                          delay_s=1.0)
  assert stopped_in < 5, stopped_in  # less than the step it abandoned
  assert "did not finish within" in log
  assert saved == 1  # the first call (one step) finished; the second was abandoned
  _rerun_resumes_like(straight, args, workdir, saved)


@pytest.mark.slow
def test_sigkill_during_a_later_save_resumes_from_the_checkpoint_on_disk(
    shared_data, straight, tmp_path):
  workdir = tmp_path / "killed"
  args = _flags(shared_data, workdir)
  # The 1st save (end of epoch 1, step 8) is on disk; killed while epoch 2's is written.
  killed = run(args, fault="save:2")
  assert killed.returncode == -signal.SIGKILL
  assert checkpoint.Checkpointer(workdir / "checkpoints").latest_step() == STEPS_PER_EPOCH
  _rerun_resumes_like(straight, args, workdir, STEPS_PER_EPOCH)
  assert not list(workdir.rglob("*orbax-checkpoint-tmp*"))  # the torn save was cleaned up
  results = [json.loads((d / "results.json").read_text()) for d in (straight, workdir)]
  assert results[0]["test"] == results[1]["test"]


@pytest.mark.slow
def test_nan_after_a_checkpoint_stops_and_keeps_that_checkpoint(shared_data, straight, tmp_path):
  workdir = tmp_path / "nan"
  nan_step = STEPS_PER_EPOCH + 3  # mid epoch 2, after epoch 1's checkpoint
  result = run(_flags(shared_data, workdir), fault=f"nan:{nan_step}")
  assert result.returncode == 1
  assert f"loss became nan at step {nan_step}" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (workdir / "results.json").exists()
  kept = checkpoint.Checkpointer(workdir / "checkpoints").latest_step()
  assert kept == STEPS_PER_EPOCH
  _assert_same_state(_restore(straight, STEPS_PER_EPOCH, tmp_path / "at8"), _restore(workdir))


@pytest.mark.slow
def test_rerun_with_another_batch_size_or_model_is_refused_and_more_epochs_continue(
    shared_data, straight, tmp_path):
  workdir = tmp_path / "rerun"
  shutil.copytree(straight, workdir)
  before = sorted(p.name for p in (workdir / "checkpoints" / "latest").iterdir())

  refused = run(_flags(shared_data, workdir, "--config.train.batch_size=16",
                        f"--config.train.num_epochs={2 * EPOCHS}"))
  assert refused.returncode != 0
  assert "config.train.batch_size was 8, now 16" in refused.stderr
  assert "--config.train.restart=True" in refused.stderr

  # Allowed past the config check, a model with other parameters still cannot
  # restore: the checkpoint's tree is named, not called damaged.
  mismatch = run(_flags(shared_data, workdir, "--config.model.name=TinyResCAE",
                         "--config.train.allow_config_change=True"))
  assert mismatch.returncode != 0
  assert "damaged" not in mismatch.stderr
  assert "params" in mismatch.stderr.splitlines()[-1]
  assert sorted(p.name for p in (workdir / "checkpoints" / "latest").iterdir()) == before

  longer = run(_flags(shared_data, workdir, f"--config.train.num_epochs={EPOCHS + 1}"))
  assert longer.returncode == 0, longer.stderr[-3000:]
  assert resumed_from(longer.stderr) == TOTAL_STEPS
  assert json.loads((workdir / "results.json").read_text())["step"] == TOTAL_STEPS + STEPS_PER_EPOCH


def test_a_second_run_on_a_busy_workdir_is_refused(tmp_path):
  with workdir_lock.hold(tmp_path):
    result = run(["--config=configs/lfw_cae.py:runlocal", f"--workdir={tmp_path}"])
  assert result.returncode != 0
  assert f"pid {os.getpid()}" in result.stderr
  assert "Traceback" not in result.stderr


def test_damaged_checkpoint_is_skipped_for_the_previous_one(tmp_path, caplog):
  config = lfw_cae.get_config("runlocal")
  model = models.from_config(config)
  state = steps.init_state(model, optimizers.create(config), (16, 16, 3),
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
    validation.validate_config(config)
  assert message in str(info.value)
  assert "\n" not in str(info.value)


def test_model_incompatible_with_data_shape_is_one_line():
  config = lfw_cae.get_config()
  config.model.name = "MnistDAE"
  model = models.from_config(config, out_channels=3)
  with pytest.raises(ValueError) as info:
    models.check_fits(model, "MnistDAE", (112, 112, 3))
  assert "config.model.name='MnistDAE'" in str(info.value)
  assert "\n" not in str(info.value)


def test_cli_reports_config_error_in_one_line_without_traceback(tmp_path):
  result = run(["--config=configs/lfw_cae.py", f"--workdir={tmp_path}",
                 "--config.model.name=Nope"])
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert "error: config.model.name='Nope' is unknown" in result.stderr


def test_background_save_survives_the_callers_buffers_being_donated(tmp_path):
  """save() returns before writing; the train loop then donates (frees) the state's buffers."""
  config = lfw_cae.get_config("runlocal")
  model = models.from_config(config)
  state = steps.init_state(model, optimizers.create(config), (16, 16, 3),
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


@pytest.mark.slow
def test_checkpoints_are_also_written_by_time_mid_epoch(shared_data, tmp_path):
  workdir = tmp_path / "timed"
  done = run(_flags(shared_data, workdir, "--config.train.num_epochs=1",
                     "--config.train.checkpoint_every_s=1e-3",
                     "--config.train.max_checkpoints=20"))
  assert done.returncode == 0, done.stderr[-3000:]
  saved = sorted(int(p.name) for p in (workdir / "checkpoints" / "latest").iterdir()
                 if p.name.isdigit())
  assert saved[-1] == STEPS_PER_EPOCH
  assert [s for s in saved if s % STEPS_PER_EPOCH], saved  # some between epoch ends
