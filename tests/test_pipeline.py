"""Host streaming gives the device path's batches, with bounded memory; placement."""

import os
import subprocess
import sys
import textwrap

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_dae import loops
from jax_dae.data import pipeline


def _device_permutation(data_key, n):
  """The permutation exactly as train.train_and_evaluate builds it."""
  return jax.jit(lambda epoch: jax.random.permutation(jax.random.fold_in(data_key, epoch), n))


def _images(n, shape=(6, 5, 3), seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _save_npy(path, array):
  np.save(path, array)
  return np.load(path, mmap_mode="r")


@flax.struct.dataclass
class _CountingState:
  step: jax.Array


def _device_path_batches(images, data_key, *, batch_size, num_epochs):
  """Batches that loops.make_train_loop feeds its train_step (recorded as metrics)."""
  n = len(images)
  steps_per_epoch = n // batch_size

  def record(state, batch, key):
    del key
    return _CountingState(step=state.step + 1), {"batch": batch}

  loop = loops.make_train_loop(record, batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                               steps_per_call=steps_per_epoch)
  permutation = _device_permutation(data_key, n)
  state, out = _CountingState(step=jnp.zeros((), jnp.int32)), []
  device_images = jnp.asarray(images)
  for epoch in range(num_epochs):
    state, metrics = loop(state, device_images, permutation(epoch), jax.random.key(1))
    out.extend(np.asarray(metrics["batch"]))
  return out


def test_epoch_permutation_matches_device_path():
  data_key = jax.random.split(jax.random.key(7), 4)[1]
  permutation = _device_permutation(data_key, 1000)
  for epoch in (0, 1, 13):
    np.testing.assert_array_equal(pipeline.epoch_permutation(data_key, epoch, 1000),
                                  np.asarray(permutation(epoch)))


@pytest.mark.parametrize("storage", ["array", "npy_memmap", "npy_path"])
def test_host_and_device_placements_give_identical_batches(tmp_path, storage):
  images = _images(53)  # 53 // 8 = 6 steps per epoch; 5 rows dropped per epoch, as on device.
  data_key = jax.random.key(3)
  batch_size, epochs = 8, 3
  reference = _device_path_batches(images, data_key, batch_size=batch_size, num_epochs=epochs)
  source = {
      "array": lambda: images,
      "npy_memmap": lambda: _save_npy(tmp_path / "train.npy", images),
      "npy_path": lambda: (np.save(tmp_path / "t.npy", images), str(tmp_path / "t.npy"))[1],
  }[storage]()
  with pipeline.host_batches(source, data_key=data_key, batch_size=batch_size,
                             num_steps=6 * epochs, prefetch=3) as batches:
    host = [np.asarray(b) for b in batches]
  assert len(host) == len(reference) == 18
  for step, (h, d) in enumerate(zip(host, reference, strict=True)):
    np.testing.assert_array_equal(h, d, err_msg=f"step {step}")
  # The same against jnp.take with the permutation, mid-epoch resume included.
  permutation = _device_permutation(data_key, len(images))
  with pipeline.host_batches(source, data_key=data_key, batch_size=batch_size, start_step=9,
                             num_steps=5) as batches:
    for step, batch in zip(range(9, 14), batches, strict=True):
      perm = permutation(step // 6)
      want = jnp.take(jnp.asarray(images), perm[(step % 6) * 8 : (step % 6 + 1) * 8], axis=0)
      assert isinstance(batch, jax.Array) and batch.dtype == jnp.uint8
      np.testing.assert_array_equal(np.asarray(batch), np.asarray(want))


def test_steps_per_item_stacks_consecutive_steps():
  images = _images(40)
  data_key = jax.random.key(0)
  flat = [np.asarray(b) for b in pipeline.host_batches(images, data_key=data_key, batch_size=4,
                                                        num_steps=12)]
  stacked = [np.asarray(b) for b in pipeline.host_batches(images, data_key=data_key,
                                                           batch_size=4, num_steps=12,
                                                           steps_per_item=4)]
  assert [s.shape for s in stacked] == [(4, 4, 6, 5, 3)] * 3
  np.testing.assert_array_equal(np.concatenate(stacked), np.stack(flat))


def test_eval_batches_cover_the_split_in_order_with_padding():
  images = _images(10)
  got = list(pipeline.eval_batches(images, batch_size=4))
  assert [n for _, n in got] == [4, 4, 2]
  np.testing.assert_array_equal(np.concatenate([np.asarray(b)[:n] for b, n in got]), images)
  assert not np.asarray(got[-1][0])[2:].any()


def test_errors_in_the_producer_reach_the_consumer_and_close_stops_it():
  def bad_indices():
    yield np.arange(4)
    raise RuntimeError("index source failed")

  reader = pipeline.RowReader(_images(8))
  batches = pipeline.HostBatches(reader, bad_indices(), sharding=None, prefetch=1)
  next(batches)
  with pytest.raises(RuntimeError, match="index source failed"):
    next(batches)
  forever = pipeline.host_batches(_images(8), data_key=jax.random.key(0), batch_size=2,
                                  prefetch=2)
  next(forever)
  forever.close()  # Must not hang on the full queue.
  with pytest.raises(StopIteration):
    next(forever)


def test_sharded_batches_on_four_devices_match_the_reference():
  """Data-parallel sharding (forced 4 CPU devices, in a fresh process)."""
  code = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from jax.sharding import NamedSharding, PartitionSpec as P
      from jax_dae.data import pipeline
      assert jax.device_count() == 4
      mesh = jax.make_mesh((4,), ("data",))
      images = np.random.default_rng(0).integers(0, 256, (37, 4, 4, 1), dtype=np.uint8)
      key = jax.random.key(5)
      perm = jax.jit(lambda e: jax.random.permutation(jax.random.fold_in(key, e), 37),
                     out_shardings=NamedSharding(mesh, P()))
      sharding = NamedSharding(mesh, P("data"))
      assert pipeline.local_rows(sharding, (8, 4, 4, 1)) == slice(0, 8)
      batches = pipeline.host_batches(images, data_key=key, batch_size=8, sharding=sharding,
                                      num_steps=8)
      for step, b in enumerate(batches):
        assert b.sharding == sharding and len(b.addressable_shards) == 4
        p = perm(step // 4)
        want = jnp.take(jnp.asarray(images), p[(step % 4) * 8:(step % 4 + 1) * 8], axis=0)
        np.testing.assert_array_equal(np.asarray(b), np.asarray(want))
      stacked = pipeline.host_batches(images, data_key=key, batch_size=8, num_steps=4,
                                      steps_per_item=2,
                                      sharding=NamedSharding(mesh, P(None, "data")))
      assert [b.shape for b in stacked] == [(2, 8, 4, 4, 1)] * 2
      print("ok")
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def _rss_bytes() -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith("VmRSS:"):
        return int(line.split()[1]) * 1024
  raise RuntimeError("no VmRSS")


def _write_large_npy(path, rows, row_shape, chunk=256):
  """A .npy of uint8 rows written in chunks (never whole in memory); row i starts with i % 251."""
  header = {"descr": "|u1", "fortran_order": False, "shape": (rows, *row_shape)}
  block = np.random.default_rng(0).integers(0, 256, (chunk, *row_shape), dtype=np.uint8)
  with open(path, "wb") as f:
    np.lib.format.write_array_header_1_0(f, header)
    for start in range(0, rows, chunk):
      n = min(chunk, rows - start)
      block[:n, 0, 0, 0] = np.arange(start, start + n) % 251
      f.write(block[:n].tobytes())


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_host_iterator_keeps_memory_bounded_on_a_split_larger_than_the_budget(tmp_path):
  rows, row_shape = 24_000, (64, 64, 3)  # 295 MB.
  path = tmp_path / "big.npy"
  _write_large_npy(path, rows, row_shape)
  file_bytes = os.path.getsize(path)
  budget = 64 << 20
  assert pipeline.placement_for(file_bytes, budget) == "host"
  images = np.load(path, mmap_mode="r")  # What the cache hands to train.py.
  data_key = jax.random.key(0)
  batch_size = 256
  steps = rows // batch_size
  perm = pipeline.epoch_permutation(data_key, 0, rows)
  baseline = _rss_bytes()
  peak = baseline
  with pipeline.host_batches(images, data_key=data_key, batch_size=batch_size, num_steps=steps,
                             prefetch=2) as batches:
    for step, batch in enumerate(batches):
      tags = np.asarray(batch[:, 0, 0, 0])
      np.testing.assert_array_equal(tags, perm[step * batch_size:(step + 1) * batch_size] % 251)
      peak = max(peak, _rss_bytes())
  growth = peak - baseline
  print(f"RSS growth {growth / 2**20:.1f} MiB while streaming a {file_bytes / 2**20:.0f} MiB file")
  # The epoch read 99% of the file; only a few 3 MB batches (and allocator slack) stay resident.
  assert growth < budget, f"RSS grew by {growth / 2**20:.1f} MiB"


def test_placement():
  assert pipeline.placement_for(10, 100) == "device"
  assert pipeline.placement_for(1000, 100) == "host"
  assert pipeline.placement_for(10, None) == "host"
  assert pipeline.resolve_placement("host", 1) == "host"
  assert pipeline.resolve_placement("device", 1 << 60) == "device"
  assert pipeline.resolve_placement("auto", 1 << 20) == "device"  # CPU: host RAM is the budget.
  assert pipeline.resolve_placement("auto", 1 << 60) == "host"
  with pytest.raises(ValueError, match="config.data.placement='gpu'"):
    pipeline.resolve_placement("gpu", 1)
  budget = pipeline.memory_budget(fraction=0.25)
  assert budget is None or budget > 0
