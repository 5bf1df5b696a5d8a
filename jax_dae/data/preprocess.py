"""Image preprocessing shared by every source: decode, resize, center crop."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def resize_center_crop(
    image: Image.Image,
    *,
    resize: int,
    crop: int,
    origin: tuple[int, int] = (0, 0),
    full_size: tuple[int, int] | None = None,
) -> np.ndarray:
  """Resizes the shorter side to ``resize`` (bilinear), then center-crops ``crop``.

  This is torchvision's ``Resize(resize)`` + ``CenterCrop(crop)`` on a PIL image,
  computed in one resampling pass over the source region that the crop keeps
  (PIL's ``box``): the filter is the same, pixels just outside the region
  still contribute, and nothing outside the crop is computed.

  Args:
    image: decoded image (any PIL mode with 1 or 3 bands after conversion).
    resize: length of the shorter side after resizing.
    crop: side of the square center crop.
    origin: position of ``image`` inside the full image, for images that are
      already a crop of the original (the compact carry form of LFW).
    full_size: ``(width, height)`` of the full original image; defaults to
      ``image.size``.

  Returns:
    ``[crop, crop, bands]`` uint8 array.
  """
  width, height = full_size or image.size
  scale = resize / min(width, height)
  new_w, new_h = round(width * scale), round(height * scale)
  if crop > min(new_w, new_h):
    raise ValueError(f"crop {crop} is larger than the resized image {new_w}x{new_h}.")
  left = int(round((new_w - crop) / 2.0))
  top = int(round((new_h - crop) / 2.0))
  sx, sy = width / new_w, height / new_h
  box = (
      left * sx - origin[0],
      top * sy - origin[1],
      (left + crop) * sx - origin[0],
      (top + crop) * sy - origin[1],
  )
  out = image.resize((crop, crop), Image.Resampling.BILINEAR, box=box)
  array = np.asarray(out, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def decode(data: bytes, *, mode: str, name: str) -> Image.Image:
  """Decodes image bytes and converts to ``mode`` ("RGB" or "L").

  Raises:
    ValueError: naming ``name`` when the bytes are not a readable image.
  """
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except Exception as e:  # PIL raises several types for broken files.
    raise ValueError(f"Cannot decode image {name}: {e}") from None
  return image.convert(mode)
