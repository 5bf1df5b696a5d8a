"""Image preprocessing shared by every source: decode, convert, resize, center crop.

Policies (the same for every source):
  * mode: ``"RGB"`` gives 3 channels, ``"L"`` gives 1 (ITU-R 601-2 luma,
    PIL's ``convert("L")``); grayscale images asked for as RGB repeat the gray
    value. Palette images are expanded first.
  * alpha (RGBA, LA, PA, palette transparency): composited over a uniform
    ``background`` gray level (default 255, white), then converted.
  * 16-bit images (16-bit PNG/PGM; PIL modes ``I;16*`` and ``I``) are scaled
    to 8 bits by ``round(v * 255 / 65535)``.
  * other modes (floating point ``F``, 32-bit values beyond 16 bits, ...) are
    rejected as "unexpected mode".
  * size: ``resize`` > 0 scales the shorter side to ``resize`` (bilinear);
    ``crop`` > 0 then takes the central ``crop x crop`` square. ``0`` skips
    either step; without a crop all images must end up the same size.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
from collections.abc import Callable, Iterable, Iterator

import numpy as np
from PIL import Image
from tqdm import tqdm

MODES = ("RGB", "L")


def check_mode(mode: str) -> str:
  """Returns ``mode`` if it is one of ``MODES``; raises a one-line ValueError otherwise."""
  if mode not in MODES:
    raise ValueError(f"config.data.mode={mode!r} is unknown; allowed: {', '.join(MODES)}.")
  return mode


def channels(mode: str) -> int:
  """Channels of images in ``mode``: 3 for "RGB", 1 for "L"."""
  return 3 if check_mode(mode) == "RGB" else 1


class BadImageError(ValueError):
  """One image file cannot be used: it does not decode, or its mode or size is unexpected."""


# Modes that convert() knows how to turn into RGB or L.
_DIRECT_MODES = {"1", "L", "RGB", "CMYK", "YCbCr", "RGBX"}
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WIDE_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


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

  Raises:
    ValueError: the crop does not fit, or ``image`` (a part of the full image)
      does not hold the region the crop reads.
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
  tolerance = 1e-6
  if (min(box[:2]) < -tolerance or box[2] > image.width + tolerance
      or box[3] > image.height + tolerance):
    raise ValueError(
        f"the {image.width}x{image.height} image at {origin} of a {width}x{height} frame does "
        f"not hold the region that resize {resize} / crop {crop} reads "
        f"({', '.join(f'{v + o:.1f}' for v, o in zip(box, origin * 2, strict=True))})."
    )
  out = image.resize((crop, crop), Image.Resampling.BILINEAR, box=box)
  array = np.asarray(out, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def decode(data: bytes, *, mode: str, name: str, background: int | None = None) -> Image.Image:
  """Decodes image bytes and converts to ``mode`` ("RGB" or "L").

  Args:
    data: encoded image (any format PIL reads).
    mode: "RGB" or "L".
    name: the file's name, for error messages.
    background: ``None`` converts with PIL's ``convert(mode)`` (alpha is
      dropped); an int 0..255 applies ``convert``'s policy (alpha composited
      over that gray level, 16-bit scaled, odd modes rejected).

  Raises:
    ValueError: naming ``name`` when the bytes are not a readable image (or,
      with ``background`` set, when its mode is not supported).
  """
  try:
    image = Image.open(io.BytesIO(data))
    image.load()
  except Exception as e:  # PIL raises several types for broken files.
    raise BadImageError(f"Cannot decode image {name}: {e}") from None
  if background is None:
    return image.convert(mode)
  return convert(image, mode=mode, background=background, name=name)


def convert(image: Image.Image, *, mode: str, background: int = 255, name: str = "") -> Image.Image:
  """Converts a decoded image to ``mode`` by the policy in the module docstring.

  Args:
    image: decoded PIL image.
    mode: "RGB" or "L".
    background: gray level (0..255) that transparent pixels are composited on.
    name: the image's name, for error messages.

  Returns:
    A PIL image in ``mode``.

  Raises:
    BadImageError: the image's mode has no defined conversion.
  """
  check_mode(mode)
  if image.mode == mode:
    return image
  if image.mode == "P":
    image = image.convert("RGBA" if "transparency" in image.info else "RGB")
  if image.mode in _WIDE_MODES:
    values = np.asarray(image, dtype=np.int64)
    if values.min() < 0 or values.max() > 65535:
      raise BadImageError(
          f"Image {name} has mode {image.mode} with values outside 0..65535; convert it to "
          "8-bit RGB or grayscale."
      )
    image = Image.fromarray(np.round(values * (255 / 65535)).astype(np.uint8), mode="L")
  if image.mode in _ALPHA_MODES:
    rgba = image.convert("RGBA")
    canvas = Image.new("RGBA", rgba.size, (background,) * 3 + (255,))
    image = Image.alpha_composite(canvas, rgba).convert("RGB")
  if image.mode not in _DIRECT_MODES:
    raise BadImageError(
        f"Image {name} has mode {image.mode!r}, which has no defined conversion to {mode}; "
        "convert it to 8-bit RGB or grayscale."
    )
  return image.convert(mode)


def fit(image: Image.Image, *, resize: int, crop: int, name: str = "") -> np.ndarray:
  """Applies the size policy: optional shorter-side resize, optional center crop.

  Args:
    image: decoded image, already in its final mode.
    resize: shorter side after resizing (bilinear); 0 keeps the size.
    crop: side of the central square crop; 0 keeps the whole image.
    name: the image's name, for error messages.

  Returns:
    ``[H, W, bands]`` uint8 array.

  Raises:
    BadImageError: the image is smaller than the crop.
  """
  if resize < 0 or crop < 0:
    raise ValueError(f"config.data.resize={resize} and crop={crop} must be >= 0.")
  if resize and crop:
    if crop > resize:
      raise ValueError(f"config.data.crop={crop} exceeds config.data.resize={resize}.")
    return resize_center_crop(image, resize=resize, crop=crop)
  width, height = image.size
  if resize:
    scale = resize / min(width, height)
    new_size = (round(width * scale), round(height * scale))
    if new_size != image.size:
      image = image.resize(new_size, Image.Resampling.BILINEAR)
  elif crop:
    if crop > min(width, height):
      raise BadImageError(
          f"Image {name} is {width}x{height}, smaller than config.data.crop={crop}; set "
          "config.data.resize to scale images first, or remove the file."
      )
    left, top = (width - crop) // 2, (height - crop) // 2
    image = image.crop((left, top, left + crop, top + crop))
  array = np.asarray(image, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def parallel_map(
    fn: Callable, items: Iterable, *, total: int | None = None, desc: str = "Preprocessing"
) -> Iterator:
  """``fn(*item)`` for every item on all local cores (threads; PIL releases the GIL).

  Yields ``(item, result or exception)`` in completion order, so a caller can
  decide per item whether an error stops everything.
  """
  with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 1) as pool:
    futures = {pool.submit(fn, *item): item for item in items}
    for f in tqdm(concurrent.futures.as_completed(futures), total=total or len(futures),
                  desc=desc, unit="img", leave=False):
      error = f.exception()
      yield futures[f], (error if error is not None else f.result())
