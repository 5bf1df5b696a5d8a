r"""Makes the compact carry form of LFW for machines that take few bytes.

The GPU machines accept at most 64 MiB of files per call and the LFW archive
is 109 MB. Seed 000's pipeline (resize 250 -> 224, center crop 112) only reads
the source pixels around the central 125x125 region. This script keeps, for
every image, the 144x144 region at offset (48, 48) as a *lossless* JPEG crop
(``jpegtran -crop``: the DCT blocks are copied, nothing is re-encoded; 48 is a
multiple of the 16-pixel MCU of LFW's 4:2:0 JPEGs), in a plain tar with a
``CROP.json`` that tells the LFW reader where the crop sits in the original.
The reader then resamples exactly the same source region
(``jax_dae.data.preprocess.resize_center_crop`` with ``origin``).

Usage:
  python scripts/make_lfw_carry.py --data_dir=../shared/data --out=.carry/data
  # writes .carry/data/lfw-deepfunneled.crop.tar and prints how the 112x112
  # crops it yields compare with those of the original archive.

Needs ``jpegtran`` (Debian: libjpeg-turbo-progs).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import subprocess
import tarfile
import time
from pathlib import Path

import numpy as np

from jax_dae.data import lfw, preprocess

ORIGIN = 48
SIZE = 144
FULL = 250


def crop_losslessly(data: bytes) -> bytes:
  crop = f"{SIZE}x{SIZE}+{ORIGIN}+{ORIGIN}"
  cmd = ["jpegtran", "-copy", "none", "-optimize", "-perfect", "-crop", crop]
  return subprocess.run(cmd, input=data, capture_output=True, check=True).stdout


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", default="../shared/data")
  parser.add_argument("--variant", default="deepfunneled", choices=sorted(lfw.VARIANTS))
  parser.add_argument("--out", default=".carry/data")
  args = parser.parse_args()

  variant = lfw.VARIANTS[args.variant]
  source = Path(args.data_dir) / variant.archive
  out = Path(args.out) / (variant.folder + lfw.CARRY_SUFFIX)
  out.parent.mkdir(parents=True, exist_ok=True)

  t0 = time.time()
  with tarfile.open(source) as tar:
    members = [(m.name, tar.extractfile(m).read()) for m in tar if lfw._is_image(m.name)]
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    crops = list(pool.map(crop_losslessly, (d for _, d in members)))

  tmp = out.with_name(out.name + ".part")
  with tarfile.open(tmp, "w") as tar:
    meta = json.dumps({"origin": [ORIGIN, ORIGIN], "full_size": [FULL, FULL]}).encode()
    info = tarfile.TarInfo(lfw.CARRY_META)
    info.size = len(meta)
    tar.addfile(info, io.BytesIO(meta))
    for (name, _), data in zip(members, crops, strict=True):
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  os.replace(tmp, out)
  print(f"wrote {out}: {len(crops)} images, {out.stat().st_size / 2**20:.1f} MiB "
        f"(original {source.stat().st_size / 2**20:.1f} MiB) in {time.time() - t0:.0f} s")

  # What the carry form changes: compare the 112x112 crops of both forms.
  def both(pair):
    (name, full), crop = pair
    a = preprocess.resize_center_crop(preprocess.decode(full, mode="RGB", name=name),
                                      resize=224, crop=112)
    b = preprocess.resize_center_crop(preprocess.decode(crop, mode="RGB", name=name),
                                      resize=224, crop=112, origin=(ORIGIN, ORIGIN),
                                      full_size=(FULL, FULL))
    diff = a.astype(np.int32) - b.astype(np.int32)
    return int(np.abs(diff).max()), float(np.mean(diff.astype(np.float64) ** 2))

  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    stats = list(pool.map(both, zip(members, crops, strict=True)))
  max_abs = max(s[0] for s in stats)
  mse = float(np.mean([s[1] for s in stats]))
  differing = sum(s[0] > 0 for s in stats)
  psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
  print(f"carry vs original 112x112 crops: {differing} of {len(stats)} images differ, "
        f"max |diff| {max_abs}, PSNR {psnr:.2f} dB")


if __name__ == "__main__":
  main()
