"""Checkpoints are never silently lost or misread; one run per workdir.

A tiny state (two Dense layers and an optax state) keeps each test fast; the
behaviour under test is the Checkpointer's, not the model's.
"""

import errno
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from flax.training import train_state

from jax_dae import checkpoint, workdir_lock

ROOT = Path(__file__).resolve().parents[1]


class _Mlp(nn.Module):
  hidden: int = 4

  @nn.compact
  def __call__(self, x):
    return nn.Dense(2)(nn.relu(nn.Dense(self.hidden)(x)))


def _state(*, hidden=4, tx=None, step=0, seed=0):
  model = _Mlp(hidden)
  params = model.init(jax.random.key(seed), jnp.zeros((1, 2)))["params"]
  state = train_state.TrainState.create(apply_fn=model.apply, params=params,
                                        tx=tx or optax.adam(1e-3))
  return state.replace(step=jnp.asarray(step))


def _files(folder):
  """Every file under ``folder`` with its size and modification time."""
  return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in Path(folder).rglob("*")
          if p.is_file()}


def _damage(step_folder, what):
  """Deletes a checkpoint's array data: all of it, or only the chunks.

  With only the chunks gone the metadata still reads, so the damage shows
  while restoring (where Orbax is noisiest); with all of it, already while
  reading the tree to compare.
  """
  for path in list(Path(step_folder).rglob("*")):
    if what == "all" and path.is_dir() and path.name in ("d", "ocdbt.process_0"):
      shutil.rmtree(path, ignore_errors=True)
    elif what == "chunks" and path.is_file() and path.parent.parent.name == "ocdbt.process_0":
      path.unlink()


def _assert_same(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _run_python(code, *args, **kwargs):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          cwd=ROOT, env=env, text=True, **kwargs)


# ---------------------------------------------------------------------------
# Restoring into another model or optimizer.
# ---------------------------------------------------------------------------


def test_model_change_raises_mismatch_naming_the_path_and_leaves_checkpoints(tmp_path):
  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    ckpt.save(1, _state(step=1))
    ckpt.save(2, _state(step=2))
  before = _files(tmp_path / "ckpt")

  ckpt = checkpoint.Checkpointer(tmp_path / "ckpt")
  with pytest.raises(checkpoint.MismatchError) as info:
    ckpt.restore_latest(_state(hidden=8))
  message = str(info.value)
  assert "\n" not in message
  assert "latest/2" in message  # The newest, not skipped as damaged.
  assert "params/Dense_0/kernel: checkpoint (4,2) float32, run (8,2) float32" in message
  assert "--config.train.restart=True" in message and "--workdir" in message
  assert isinstance(info.value, ValueError)  # The CLI reports ValueErrors in one line.
  with pytest.raises(checkpoint.MismatchError):
    ckpt.restore_best(_state(hidden=8))
  ckpt.close()
  assert _files(tmp_path / "ckpt") == before  # Nothing skipped, deleted or rewritten.
  assert int(checkpoint.Checkpointer(tmp_path / "ckpt").restore_latest(_state()).step) == 2


def test_optimizer_chain_change_raises_mismatch(tmp_path):
  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    ckpt.save(1, _state(step=1, tx=optax.adam(1e-3)))
  chained = optax.chain(optax.clip_by_global_norm(1.0), optax.add_decayed_weights(1e-4),
                        optax.adam(1e-3))
  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    with pytest.raises(checkpoint.MismatchError) as info:
      ckpt.restore_latest(_state(tx=chained))
  message = str(info.value)
  assert "\n" not in message
  assert "opt_state: checkpoint has 2 entries, run has 3" in message


def test_differences_name_missing_keys_and_dtypes():
  stored = {"params": {"a": jax.ShapeDtypeStruct((3,), jnp.float32),
                       "b": jax.ShapeDtypeStruct((3,), jnp.float32)},
            "step": jax.ShapeDtypeStruct((), jnp.int64)}
  run = {"params": {"a": jax.ShapeDtypeStruct((3,), jnp.bfloat16),
                    "c": jax.ShapeDtypeStruct((3,), jnp.float32)},
         "step": np.int32(0)}  # A step counter's integer width does not matter.
  assert list(checkpoint.differences(stored, run)) == [
      "params/a: checkpoint (3,) float32, run (3,) bfloat16",
      "params/c: only in the run",
      "params/b: only in the checkpoint",
  ]


# ---------------------------------------------------------------------------
# Damaged checkpoints.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["all", "chunks"])
@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")
def test_damaged_newest_falls_back_then_the_same_step_is_saved_again(tmp_path, caplog, what):
  # Arrays of 2 KB: OCDBT keeps smaller ones inline, beside the metadata.
  state = functools.partial(_state, hidden=256)
  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    ckpt.save(1, state(step=1, seed=1), metrics={"psnr": 10.0})
    ckpt.save(2, state(step=2, seed=2), metrics={"psnr": 11.0})
  _damage(tmp_path / "ckpt" / "latest" / "2", what)
  _damage(tmp_path / "ckpt" / "best" / "2", what)

  with caplog.at_level("INFO"), checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    caplog.clear()
    restored = ckpt.restore_latest(state())
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert int(restored.step) == 1
    _assert_same(restored.params, state(seed=1).params)
    assert len(warnings) == 1 and "latest/2 is damaged" in warnings[0], warnings
    assert "\n" not in warnings[0] and len(warnings[0]) < 500
    # Orbax's own lines about the attempt (thousands for a large model) are dropped.
    assert not [r for r in caplog.records
                if "/orbax/" in r.pathname and "latest/2" in r.getMessage()]
    # The rerun retrains step 2 (here: other values) and saves it again.
    ckpt.save(2, state(step=2, seed=3), metrics={"psnr": 11.0})

  caplog.clear()
  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    assert ckpt.latest_step() == 2 and ckpt.best_step() == 2
    for restore in (ckpt.restore_latest, ckpt.restore_best):
      restored = restore(state())
      assert int(restored.step) == 2
      _assert_same(restored.params, state(seed=3).params)
  # Both were rewritten: neither was skipped as damaged.
  assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
  assert [p.name for p in (tmp_path / "ckpt" / "best").iterdir()] == ["2"]


# ---------------------------------------------------------------------------
# Pending saves: exit, context manager.
# ---------------------------------------------------------------------------


def test_save_then_exit_without_close_leaves_a_readable_checkpoint(tmp_path):
  proc = _run_python("""
      import sys
      import jax.numpy as jnp
      from jax_dae import checkpoint
      ckpt = checkpoint.Checkpointer(sys.argv[1])
      ckpt.save(5, {"w": jnp.arange(6.0), "step": jnp.asarray(5)}, metrics={"psnr": 3.0})
      # No wait(), no close(): the interpreter exits with the save pending.
      """, tmp_path / "ckpt", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  template = {"w": jnp.zeros(6), "step": jnp.asarray(0)}
  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    for restore in (ckpt.restore_latest, ckpt.restore_best):
      restored = restore(template)
      assert int(restored["step"]) == 5
      np.testing.assert_array_equal(restored["w"], np.arange(6.0))


def test_context_manager_waits_for_the_pending_save(tmp_path, monkeypatch):
  write = checkpoint.Checkpointer._write

  def slow_write(self, *args):
    time.sleep(0.5)  # Still writing when the block ends.
    write(self, *args)

  monkeypatch.setattr(checkpoint.Checkpointer, "_write", slow_write)
  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    ckpt.save(3, _state(step=3))
  assert (tmp_path / "ckpt" / "latest" / "3" / "_CHECKPOINT_METADATA").is_file()
  assert not list((tmp_path / "ckpt" / "latest").glob("*tmp*"))
  ckpt.close()  # A second close is harmless.


# ---------------------------------------------------------------------------
# Leftovers of interrupted saves.
# ---------------------------------------------------------------------------


def _leftovers(folder):
  """What a save killed mid-write leaves: a temporary folder beside the steps."""
  made = []
  for sub in ("latest", "best"):
    tmp = Path(folder) / sub / f"7{checkpoint.TMP_SUFFIX}-1733390000"
    (tmp / "default").mkdir(parents=True)
    (tmp / "default" / "partial").write_bytes(b"\0" * 64)
    made.append(tmp)
  return made


def test_tmp_leftovers_are_removed_and_best_holds_one_entry(tmp_path):
  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    ckpt.save(1, _state(step=1), metrics={"psnr": 10.0})
    ckpt.save(2, _state(step=2), metrics={"psnr": 12.0})
  best = tmp_path / "ckpt" / "best"
  # A second best entry, as a save killed between renaming the new best and
  # deleting the old one leaves (here an older copy, with a lower metric).
  shutil.copytree(best / "2", best / "1")
  (best / "1" / "metrics" / "metrics").write_text('{"psnr": 10.0}')
  made = _leftovers(tmp_path / "ckpt")

  with checkpoint.Checkpointer(tmp_path / "ckpt") as ckpt:
    assert not any(p.exists() for p in made)
    assert sorted(p.name for p in best.iterdir()) == ["2"]
    assert ckpt.best_step() == 2 and ckpt.latest_step() == 2
    assert int(ckpt.restore_latest(_state()).step) == 2
    ckpt.save(7, _state(step=7), metrics={"psnr": 13.0})  # The step the killed save wrote.
  assert sorted(p.name for p in best.iterdir()) == ["7"]
  assert sorted(p.name for p in (tmp_path / "ckpt" / "latest").iterdir()) == ["1", "2", "7"]


# ---------------------------------------------------------------------------
# Failed writes.
# ---------------------------------------------------------------------------


def _fail_saves(monkeypatch, *, step, folder, error):
  """Makes Orbax's save of ``step`` into ``folder`` write a partial folder, then fail."""
  save = ocp.CheckpointManager.save

  def failing_save(self, s, *args, **kwargs):
    if s == step and Path(os.fspath(self.directory)).name == folder:
      (Path(os.fspath(self.directory)) / f"{s}{checkpoint.TMP_SUFFIX}").mkdir()
      raise error
    return save(self, s, *args, **kwargs)

  monkeypatch.setattr(ocp.CheckpointManager, "save", failing_save)


# Disk full as the OS reports it (Orbax's own writes) and as TensorStore does.
_DISK_FULL = [
    OSError(errno.ENOSPC, "No space left on device"),
    ValueError('RESOURCE_EXHAUSTED: Failed writing: "x/d/0": Failed to write 306 bytes to file '
               "4: No space left on device [os_error_code='28']"),
]


@pytest.mark.parametrize("error", _DISK_FULL, ids=["oserror", "tensorstore"])
def test_disk_full_is_one_line_save_error_and_the_next_run_continues(tmp_path, monkeypatch,
                                                                     error):
  folder = tmp_path / "ckpt"
  ckpt = checkpoint.Checkpointer(folder)
  ckpt.save(1, _state(step=1), metrics={"psnr": 10.0})
  ckpt.save(2, _state(step=2), metrics={"psnr": 9.0})
  ckpt.wait()
  _fail_saves(monkeypatch, step=3, folder="latest", error=error)
  ckpt.save(3, _state(step=3), metrics={"psnr": 8.0})
  with pytest.raises(checkpoint.SaveError) as info:
    ckpt.wait()
  assert str(info.value) == (f"could not write checkpoint 3 to {folder.absolute()}/latest: No "
                             "space left on device; free space and rerun — the run resumes "
                             "from step 2")
  assert info.value.errno == errno.ENOSPC
  with pytest.raises(checkpoint.SaveError):
    ckpt.save(4, _state(step=4))  # Nothing is written after a failed save.
  ckpt.close()  # Already reported: not raised again.
  monkeypatch.undo()

  assert not list(folder.rglob(f"*{checkpoint.TMP_SUFFIX}*"))
  with checkpoint.Checkpointer(folder) as ckpt:
    assert ckpt.latest_step() == 2 and ckpt.best_step() == 1
    assert int(ckpt.restore_latest(_state()).step) == 2
    ckpt.save(3, _state(step=3), metrics={"psnr": 8.0})
  assert checkpoint.Checkpointer(folder).latest_step() == 3


def test_failed_best_save_leaves_latest_behind_and_the_rerun_writes_both(tmp_path, monkeypatch):
  folder = tmp_path / "ckpt"
  with checkpoint.Checkpointer(folder) as ckpt:
    ckpt.save(1, _state(step=1), metrics={"psnr": 10.0})
  _fail_saves(monkeypatch, step=2, folder="best", error=OSError(errno.ENOSPC, "No space"))
  ckpt = checkpoint.Checkpointer(folder)
  ckpt.save(2, _state(step=2), metrics={"psnr": 12.0})
  with pytest.raises(checkpoint.SaveError, match=r"checkpoint 2 to .*/best: .* from step 1$"):
    ckpt.close()
  monkeypatch.undo()
  # Latest was not written ahead of the best it should have replaced.
  with checkpoint.Checkpointer(folder) as ckpt:
    assert ckpt.latest_step() == 1 and ckpt.best_step() == 1
    ckpt.save(2, _state(step=2), metrics={"psnr": 12.0})
  with checkpoint.Checkpointer(folder) as ckpt:
    assert ckpt.latest_step() == 2 and ckpt.best_step() == 2


# ---------------------------------------------------------------------------
# One run per workdir.
# ---------------------------------------------------------------------------

_HOLDER = """
    import importlib.util, sys
    # The module alone: importing the jax_dae package would take seconds.
    spec = importlib.util.spec_from_file_location("workdir_lock", sys.argv[1])
    workdir_lock = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(workdir_lock)
    with workdir_lock.hold(sys.argv[2]):
      print("held", flush=True)
      sys.stdin.read()  # Until the test closes our stdin, or kills us.
    """


@pytest.fixture
def held_workdir(tmp_path):
  """A workdir held by another process, and that process."""
  workdir = tmp_path / "run"
  proc = _run_python(_HOLDER, ROOT / "jax_dae" / "workdir_lock.py", workdir,
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
  with proc:  # Closes its pipes.
    try:
      assert proc.stdout.readline().strip() == "held"
      yield workdir, proc
    finally:
      proc.kill()


def test_second_holder_of_a_workdir_is_refused_naming_the_first(held_workdir):
  workdir, proc = held_workdir
  with pytest.raises(workdir_lock.BusyError) as info:
    with workdir_lock.hold(workdir):
      pass
  message = str(info.value)
  assert "\n" not in message
  assert message.startswith(f"workdir {workdir} is in use by pid {proc.pid} on host "
                            f"{socket.gethostname()} (started ")
  assert message.endswith("); wait for it or use another --workdir")
  # A crash releases it: the kernel drops the lock of a killed process.
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  with workdir_lock.hold(workdir):
    assert workdir_lock.held_here(workdir)
    with pytest.raises(workdir_lock.BusyError, match="already in use by this process"):
      with workdir_lock.hold(workdir):
        pass
  assert not workdir_lock.held_here(workdir)


def test_leftovers_of_a_workdir_held_elsewhere_are_left_alone(held_workdir):
  workdir, _ = held_workdir
  made = _leftovers(workdir / "checkpoints")
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints")  # Inference beside a training run.
  assert all(p.exists() for p in made)  # Perhaps the other run's save in progress.
  ckpt.close()
