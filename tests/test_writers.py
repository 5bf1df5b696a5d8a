"""writers: the background job runner and the metric writer built on it."""

import threading

import pytest

from jax_dae import writers


def test_background_runs_jobs_in_order_off_the_calling_thread():
  done, threads = [], set()
  background = writers.Background("test")

  def job(i):
    threads.add(threading.current_thread().name)
    done.append(i)

  for i in range(20):
    background.submit(job, i)
  background.close()
  assert done == list(range(20))
  assert threads and all(t.startswith("test") for t in threads)


def test_background_raises_a_failed_job_on_wait_and_keeps_running_later_jobs():
  background = writers.Background()
  blocker = threading.Event()
  background.submit(blocker.wait)

  def fail():
    raise OSError("disk full")

  background.submit(fail)
  blocker.set()
  with pytest.raises(OSError, match="disk full"):
    background.wait()
  done = []
  background.submit(done.append, 1)
  background.close()
  assert done == [1]


def test_metric_writer_writes_jsonl_at_once_and_tensorboard_by_close(tmp_path):
  pytest.importorskip("tensorboardX")
  writer = writers.MetricWriter(tmp_path)
  writer.write_scalars(3, {"train/loss": 0.5})
  # metrics.jsonl is flushed before write_scalars returns (a killed run keeps it).
  assert writers.read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 3, "train/loss": 0.5}]
  writer.write_scalars(4, {"val/psnr": 30.0})
  writer.close()
  events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert len(events) == 1
  data = events[0].read_bytes()
  assert b"train/loss" in data and b"val/psnr" in data
