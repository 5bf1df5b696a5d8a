"""The reproduce driver's LPIPS path: exported variables give back the run's own test metrics."""

import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

from configs import lfw_cae
from jax_dae import corruptions, data, inference, metrics, models, replicas, steps, train
from jax_dae.models import vgg

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import reproduce  # noqa: E402


@pytest.mark.slow
def test_exported_variables_reproduce_the_runs_test_psnr_and_give_lpips(shared_data, tmp_path):
  config = lfw_cae.get_config("runlocal")
  config.model.name = "TinyCAE"
  config.data.dir = str(shared_data)
  config.data.cache_dir = str(tmp_path / "cache")
  config.data.split = {"test": 12, "val": 8, "train": 16}
  config.data.resize, config.data.crop = 64, 32
  config.data.download = False
  config.train.num_epochs = 1
  config.train.eval_batch_size = 8
  config.mesh.num_devices = 1
  results = train.train_and_evaluate(config, str(tmp_path / "run"))

  # Small parts, so that the variables are split over several files as a
  # ResCAE's are under the GPU machine's 16 MiB per file.
  # A dotted row name, like S0's mixed_rho0.5.
  export = tmp_path / "S0_tiny_rho0.5.npz"
  reproduce.export_variables(tmp_path / "run", export, part_bytes=20_000)
  parts = sorted(tmp_path.glob("S0_tiny_rho0.5*.npz"))
  assert len(parts) > 2 and (tmp_path / "S0_tiny_rho0.5.part1.npz") in parts
  for part in parts:
    with np.load(part) as flat:
      assert sum(flat[k].nbytes for k in flat.files) <= 20_000 or len(flat.files) == 1
  variables = reproduce.load_variables(export)
  saved = inference.load(tmp_path / "run", checkpoint="latest").variables
  assert jax.tree.structure(variables) == jax.tree.structure(saved)
  for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(saved), strict=True):
    np.testing.assert_array_equal(got, want)
  weights = vgg.load_weights(vgg.export_weights(
      tmp_path / "lpips.npz", source=str(vgg.package_checkpoint_path())))
  config = ml_collections.ConfigDict(results["config"])
  pixelated = ml_collections.ConfigDict(results["config"])
  pixelated.corruption = "pixelate(block=4)"
  runs = {"run": (config, variables), "again": (config, variables),
          "pixelated": (pixelated, variables)}
  scores = reproduce.lpips_on_test_split(runs, batch_size=5, weights=weights)
  got = scores["run"]
  # Same images, same corruption keys, same model: the run's own test PSNR.
  assert got["psnr"] == pytest.approx(results["test"]["psnr"], abs=1e-3)
  assert 0 < got["lpips"] < 1 and 0 < got["input_lpips"] < 1
  assert got["lpips"] != pytest.approx(got["input_lpips"], abs=1e-4)
  # Rows are scored side by side in one VGG pass: equal rows score equally,
  # and a row with another corruption gets its own input LPIPS.
  assert scores["again"] == got
  assert scores["pixelated"]["input_lpips"] != pytest.approx(got["input_lpips"], abs=1e-4)
  # One pair checked against the plain metric.
  test = np.asarray(data.load(config.data)["test"])
  model = models.from_config(config, out_channels=test.shape[-1])
  corrupt = corruptions.parse(config.corruption, test.shape[1:])
  clean = steps.to_float(test)
  noisy = corrupt(corruptions.example_keys(replicas.run_keys(config.seed)[3], np.arange(len(test))),
                  clean)
  out = model.apply(variables, noisy, train=False)
  assert got["lpips"] == pytest.approx(
      float(np.mean(metrics.lpips(out, clean, weights=weights))), rel=1e-5)
