"""The README's smoke run shows denoising working: configs/lfw_cae.py:runlocal.

Run as a newcomer runs it (the real command line, unchanged settings), it must
end with a model whose test PSNR is above its blurred input's. On the real LFW
beside the checkout when it is there; otherwise on face-like images the test
draws (smooth ellipses on a smooth background) through the image-folder source.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import lfw_cae

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("JAX_DAE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def _drawn_faces(folder: Path, count: int) -> None:
  """``count`` 64x64 images: a shaded ellipse ("face") with two dark spots, random placement."""
  rng = np.random.default_rng(0)
  y, x = np.mgrid[0:64, 0:64] / 63.0
  for i in range(count):
    cy, cx, ry, rx = rng.uniform(0.4, 0.6), rng.uniform(0.4, 0.6), *rng.uniform(0.2, 0.35, 2)
    face = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
    eyes = sum(((y - cy + ry / 3) ** 2 + (x - cx + s * rx / 2.5) ** 2) < 0.003 for s in (-1, 1))
    colour = rng.uniform(0.2, 0.9, 3)
    image = (rng.uniform(0, 0.3, 3) + 0.2 * y[..., None]) * np.ones((64, 64, 3))
    image[face] = colour * (0.8 + 0.2 * x[face, None])
    image[eyes > 0] = 0.1
    Image.fromarray(np.uint8(255 * np.clip(image, 0, 1))).save(folder / f"{i:05d}.png")


@pytest.mark.slow
def test_lfw_cae_runlocal_ends_above_its_blurred_input(tmp_path):
  args = ["--config=configs/lfw_cae.py:runlocal", f"--workdir={tmp_path / 'smoke'}",
          f"--config.data.cache_dir={ROOT / '.pytest_cache' / 'data'}",
          f"--compilation_cache={ROOT / '.pytest_cache' / 'xla'}"]
  if (SHARED_DATA / "lfw-deepfunneled.tgz").is_file():
    args += [f"--config.data.dir={SHARED_DATA}", "--config.data.download=False"]
  elif os.environ.get("JAX_DAE_REQUIRE_DATA") == "1":
    pytest.fail(f"the real LFW is expected at {SHARED_DATA} (JAX_DAE_REQUIRE_DATA=1)")
  else:
    folder = tmp_path / "faces"
    folder.mkdir()
    config = lfw_cae.get_config("runlocal")
    _drawn_faces(folder, sum(config.data.split.values()))
    args += ["--config.data.name=folder", f"--config.data.dir={folder}"]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  done = subprocess.run([sys.executable, "-m", "jax_dae.main", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  results = json.loads((tmp_path / "smoke" / "results.json").read_text())
  assert results["test"]["psnr"] > results["test_input"]["psnr"] + 1.0, results["test"]
  assert results["test"]["ssim"] > results["test_input"]["ssim"]
  assert (tmp_path / "smoke" / "samples" / "test.png").is_file()
