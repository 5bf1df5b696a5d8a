"""Multi-process training on localhost: 2 processes x 2 CPU devices == 1 x 4."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import lfw_cae
from jax_dae import checkpoint, models, optimizers, steps

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _flags(shared_data, tmp_path, workdir, epochs):
  return [
      "--config=configs/lfw_cae.py:runlocal", f"--workdir={workdir}",
      f"--config.data.dir={shared_data}", f"--config.data.cache_dir={tmp_path / 'cache'}",
      "--config.data.download=False", "--config.data.resize=64", "--config.data.crop=32",
      "--config.data.split.train=32", "--config.data.split.val=8", "--config.data.split.test=8",
      f"--config.train.num_epochs={epochs}", "--config.train.steps_per_call=2",
      "--config.train.eval_batch_size=8", "--config.train.num_samples=2",
      # SGD: an exact comparison of reduction orders (see optimizers.create).
      "--config.optimizer.name=sgd", "--config.optimizer.learning_rate=0.05",
      f"--compilation_cache={ROOT / '.pytest_cache' / 'xla'}",
  ]


def _env(devices):
  return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _run_two_processes(args):
  port = _free_port()
  procs = [
      subprocess.Popen(
          [sys.executable, "-m", "jax_dae.main", *args,
           f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
          cwd=ROOT, env=_env(2), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)
  ]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs, strict=True):
    assert p.returncode == 0, err[-3000:]
  return outs


def _state(workdir):
  config = lfw_cae.get_config("runlocal")
  config.optimizer.name, config.optimizer.learning_rate = "sgd", 0.05
  state = steps.init_state(models.from_config(config), optimizers.create(config),
                           (32, 32, 3), jax.random.key(0))
  return checkpoint.Checkpointer(Path(workdir) / "checkpoints").restore_latest(state)


@pytest.mark.slow
def test_two_processes_match_one_process_and_resume(shared_data, tmp_path):
  multi = tmp_path / "multi"
  outs = _run_two_processes(_flags(shared_data, tmp_path, multi, epochs=2))
  assert "process 1 of 2" in outs[1][1] and "devices: [CpuDevice(id=0)" in outs[0][1]

  single = tmp_path / "single"
  done = subprocess.run([sys.executable, "-m", "jax_dae.main",
                         *_flags(shared_data, tmp_path, single, epochs=2)],
                        cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]

  _assert_close(_state(multi), _state(single), step=8)
  results = json.loads((multi / "results.json").read_text())
  assert len(results["devices"]) == 4  # one global mesh over both processes

  # The same 2-process command with one more epoch resumes from step 8 on both
  # processes, and its resumed values follow the 1-process run resumed alike.
  outs = _run_two_processes(_flags(shared_data, tmp_path, multi, epochs=3))
  assert all("Resuming from step 8" in err for _, err in outs)
  resumed = subprocess.run([sys.executable, "-m", "jax_dae.main",
                            *_flags(shared_data, tmp_path, single, epochs=3)],
                           cwd=ROOT, env=_env(4), capture_output=True, text=True, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  _assert_close(_state(multi), _state(single), step=12)
  rows = [json.loads(line) for line in (multi / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in rows if "epoch" in r] == [1, 2, 3]  # written by process 0 only


def _assert_close(a, b, *, step):
  assert int(a.step) == int(b.step) == step
  for x, y in zip(jax.tree.leaves((a.params, a.batch_stats)),
                  jax.tree.leaves((b.params, b.batch_stats)), strict=True):
    # Float order only: relative to each tensor's scale (the CPU's matmul
    # convolution forms sum a sharded batch in another order; a few entries of
    # 1e-3 then differ by 2e-6).
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=max(1e-6, 1e-4 * float(np.max(np.abs(y)))))
