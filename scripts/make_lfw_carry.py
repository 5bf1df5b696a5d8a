r"""Makes the compact carry forms of LFW for machines that take few bytes.

The GPU machines accept at most 64 MiB of files per call and the LFW archive
is 109 MB. Two forms, each a plain tar of JPEGs with a ``CROP.json`` that tells
the LFW reader where the images sit in the original 250x250 frame:

* the crop form (default, ``lfw-deepfunneled.crop.tar.gz``, 39.4 MiB), for seed
  000's pipeline (resize 250 -> 224, center crop 112), which only reads the
  source pixels around the central 125x125 region. For every image it keeps the
  144x144 region at offset (48, 48) as a *lossless* JPEG crop (``jpegtran
  -crop``: the DCT blocks are copied, nothing is re-encoded; 48 is a multiple
  of the 16-pixel MCU of LFW's 4:2:0 JPEGs). The reader resamples exactly the
  same source region (``preprocess.resize_center_crop`` with ``origin``), so
  the crops are bit-identical; a preprocessing that reads outside the kept
  region is refused.
* a preset form (``--preset gray100`` or ``rgb64``,
  ``lfw-deepfunneled.<preset>.tar.gz``), for the whole-frame settings of seeds
  001 and 002 (``lfw.PRESETS``): the preprocessed images themselves, as JPEGs
  of ``--quality`` (95; no chroma subsampling), which the reader takes as they
  are; gzip takes the tar headers' 10 MiB back. Lossless PNG or WebP would
  not fit (70 and 63 MiB for gray100).

Either way the script ends by comparing what the carry form yields with what
the original archive yields, image by image (max |diff|, PSNR).

Usage:
  python scripts/make_lfw_carry.py --data_dir=../shared/data --out=.carry/data
  python scripts/make_lfw_carry.py --preset=gray100 --out=.carry/gray100

The crop form needs ``jpegtran`` (Debian: libjpeg-turbo-progs).
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
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from jax_dae.data import lfw, preprocess

ORIGIN = 48
SIZE = 144
FULL = 250
# Seed 000's preprocessing, which the crop form serves.
CROP_SETTING = {"mode": "RGB", "resize": 224, "crop": 112}


def crop_losslessly(data: bytes) -> bytes:
  crop = f"{SIZE}x{SIZE}+{ORIGIN}+{ORIGIN}"
  cmd = ["jpegtran", "-copy", "none", "-optimize", "-perfect", "-crop", crop]
  return subprocess.run(cmd, input=data, capture_output=True, check=True).stdout


def preprocessed(data: bytes, name: str, setting: dict, **placement) -> np.ndarray:
  image = preprocess.decode(data, mode=setting["mode"], name=name)
  return preprocess.resize_center_crop(
      image, resize=setting["resize"], crop=setting["crop"], **placement)


def encode_jpeg(array: np.ndarray, quality: int) -> bytes:
  image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
  buffer = io.BytesIO()
  image.save(buffer, "JPEG", quality=quality, subsampling=0, optimize=True)
  return buffer.getvalue()


def parallel_map(fn: Callable, items) -> list:
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    return list(pool.map(fn, items))


def write_tar(out: Path, meta: dict, members: list[tuple[str, bytes]]) -> None:
  """Writes ``CROP.json`` and the members, atomically (gzip-compressed for a .gz name)."""
  tmp = out.with_name(out.name + ".part")
  with tarfile.open(tmp, "w:gz" if out.suffix == ".gz" else "w") as tar:
    for name, data in [(lfw.CARRY_META, json.dumps(meta).encode()), *members]:
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  os.replace(tmp, out)


def compare(setting: dict, originals: list[tuple[str, bytes]], carried: list[bytes],
            placement: dict) -> None:
  """Prints how the carry form's preprocessed images differ from the original's."""

  def both(pair):
    (name, full), small = pair
    a = preprocessed(full, name, setting).astype(np.int32)
    b = preprocessed(small, name, setting, **placement).astype(np.int32)
    return int(np.abs(a - b).max()), float(np.mean((a - b).astype(np.float64) ** 2))

  stats = parallel_map(both, zip(originals, carried, strict=True))
  mse = float(np.mean([s[1] for s in stats]))
  psnr = float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
  print(f"carry vs original {setting}: {sum(s[0] > 0 for s in stats)} of {len(stats)} images "
        f"differ, max |diff| {max(s[0] for s in stats)}, PSNR {psnr:.2f} dB")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data_dir", default="../shared/data")
  parser.add_argument("--variant", default="deepfunneled", choices=sorted(lfw.VARIANTS))
  parser.add_argument("--preset", choices=sorted(lfw.PRESETS),
                      help="make the preset form instead of the crop form")
  parser.add_argument("--quality", type=int, default=95, help="JPEG quality of the preset form")
  parser.add_argument("--out", default=".carry/data")
  args = parser.parse_args()

  variant = lfw.VARIANTS[args.variant]
  source = Path(args.data_dir) / variant.archive
  t0 = time.time()
  with tarfile.open(source) as tar:
    originals = [(m.name, tar.extractfile(m).read()) for m in tar if lfw._is_image(m.name)]

  if args.preset:
    setting = lfw.PRESETS[args.preset]
    out = Path(args.out) / lfw.preset_carry_name(args.variant, args.preset)
    carried = parallel_map(
        lambda pair: encode_jpeg(preprocessed(pair[1], pair[0], setting), args.quality),
        originals)
    size = setting["crop"]
    placement = {"origin": (0, 0), "full_size": (size, size)}
    meta = {**placement, "preset": args.preset, "quality": args.quality}
  else:
    setting = CROP_SETTING
    out = Path(args.out) / (variant.folder + lfw.CARRY_SUFFIX)
    carried = parallel_map(crop_losslessly, (data for _, data in originals))
    placement = {"origin": (ORIGIN, ORIGIN), "full_size": (FULL, FULL)}
    meta = dict(placement)
  out.parent.mkdir(parents=True, exist_ok=True)
  write_tar(out, meta, [(name, data) for (name, _), data in zip(originals, carried, strict=True)])
  print(f"wrote {out}: {len(carried)} images, {out.stat().st_size / 2**20:.1f} MiB "
        f"(original {source.stat().st_size / 2**20:.1f} MiB) in {time.time() - t0:.0f} s")
  compare(setting, originals, carried, placement)


if __name__ == "__main__":
  main()
