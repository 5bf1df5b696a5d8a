"""Command line: denoise (or deblur) image files with a trained run.

  python -m jax_dae.denoise --workdir=runs/lfw_cae --out_dir=out photos/ face.jpg
  python -m jax_dae.denoise --workdir=runs/lfw_cae --out_dir=demo \\
      --corrupt="gaussian_blur(kernel=9,sigma=4)" photos/

Inputs are image files and folders (searched recursively for JPEG, PNG,
PGM/PPM/PBM, WebP and BMP; names starting with "." are skipped). For each
input the denoised image is written as PNG to ``--out_dir`` under the same
relative path (a file argument: its name; a folder argument: its path inside
that folder), with a side-by-side ``<name>.compare.png`` (input | corrupted,
with ``--corrupt`` | output). Outputs are never written over an input:
``--out_dir`` may not be an input folder or lie inside one, nor be the folder
of an input file, and no output path may be an input file.

Exit status: 0 when every image was written; 1 when some files could not be
read or written (the others are still processed, each failure is reported as
it happens and named again in the last line); 2 when nothing was done (bad
flags, workdir or inputs). docs/denoise.md has the size and mode policies.

The logic lives in ``jax_dae.inference`` and in ``run`` below.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import flags, logging
from PIL import Image, ImageOps
from tqdm import tqdm

from jax_dae import cli, inference, plots
from jax_dae.data import preprocess
from jax_dae.data.folder import EXTENSIONS

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Trained run folder (config.json and checkpoints/).")
flags.DEFINE_string("out_dir", None, "Output folder; must not hold the inputs.")
flags.DEFINE_enum("checkpoint", "best", list(inference.CHECKPOINTS),
                  "best: highest validation PSNR; latest: the newest.")
flags.DEFINE_integer("replica", None, "For a run of several seeds: the replica to use (replica k "
                     "is seed config.seed + k); default: the best by validation PSNR.")
flags.DEFINE_string("corrupt", "", "Corrupt the inputs with this spec first (e.g. "
                    "'gaussian_blur(kernel=9,sigma=4)') to show before/after; '' = the inputs "
                    "are already corrupted.")
flags.DEFINE_integer("seed", 0, "Seed of the --corrupt noise.")
flags.DEFINE_integer("batch_size", 16, "Images (or tiles) per model call.")
flags.DEFINE_integer("max_side", 1024, "Largest tile side for fully convolutional models.")
flags.DEFINE_float("overlap", 0.25, "Overlap of neighbouring tiles, as a fraction of a tile.")
flags.DEFINE_bool("side_by_side", True, "Also write <name>.compare.png.")
flags.DEFINE_string("compilation_cache", "~/.cache/jax_dae/xla",
                    "Persistent XLA compilation cache folder ('' to disable).")

USAGE = """\
Denoise (or deblur) image files with a trained run.

usage: python -m jax_dae.denoise --workdir=RUN --out_dir=DIR [flags] FILE_OR_FOLDER ...

  --workdir=RUN     a trained run folder (python -m jax_dae.main's --workdir).
  --out_dir=DIR     output folder (not an input folder): <name>.png and <name>.compare.png.
  --checkpoint      best (highest validation PSNR, default) or latest.
  --replica=K       for a run of several seeds (config.train.num_seeds): replica K;
                    default: the one with the best validation PSNR.
  --corrupt=SPEC    corrupt clean inputs first to show before/after,
                    e.g. --corrupt="gaussian_blur(kernel=9,sigma=4)".
  --verbose         on an error, also print its full traceback.
  --helpfull        every flag (batch size, tiling, seed, logging).

Folders are searched recursively for JPEG, PNG, PGM/PPM/PBM, WebP and BMP files.
Exit status: 0 every image written; 1 some files failed; 2 nothing was done (bad flags,
workdir or inputs). docs/denoise.md has the details.
"""

COMPARE_SUFFIX = ".compare.png"
# Images are grouped by size into batches of at most batch_size images and
# about this many pixels; pending images are flushed beyond 4x as many.
_GROUP_PIXELS = 1 << 22
# Gap between the panels of a side-by-side picture.
_GAP = 4
_GRAY_MODES = {"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N"}


class SetupError(ValueError):
  """Nothing can be done: bad flags, workdir or inputs."""


@dataclasses.dataclass(frozen=True)
class Job:
  """One input file and where its results go."""

  index: int
  source: Path
  output: Path
  compare: Path


@dataclasses.dataclass
class Report:
  """What a run did."""

  written: list[Path] = dataclasses.field(default_factory=list)
  failed: dict[str, str] = dataclasses.field(default_factory=dict)
  notes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  psnr_corrupted: list[float] = dataclasses.field(default_factory=list)
  psnr_output: list[float] = dataclasses.field(default_factory=list)


# ---------------------------------------------------------------------------
# Inputs and output paths.
# ---------------------------------------------------------------------------


def _scan(root: Path) -> list[Path]:
  return sorted(
      p.relative_to(root) for p in root.rglob("*")
      if p.suffix.lower() in EXTENSIONS and p.is_file()
      and not any(part.startswith(".") for part in p.relative_to(root).parts)
  )


def _outputs(rel: Path, keep_suffix: bool) -> tuple[Path, Path]:
  stem = rel.name if keep_suffix else rel.stem
  return rel.with_name(stem + ".png"), rel.with_name(stem + COMPARE_SUFFIX)


def plan_jobs(inputs: Sequence[str], out_dir: str | os.PathLike) -> list[Job]:
  """Lists the input files and their output paths, refusing any that could clobber an input.

  Args:
    inputs: image files and folders.
    out_dir: the output folder.

  Returns:
    One ``Job`` per distinct input file, in argument order (folders sorted).

  Raises:
    SetupError: an input is missing or holds no images, ``out_dir`` is (or is
      inside) an input folder or is the folder of an input file, or an output
      path would be an input.
  """
  out_root = Path(out_dir).expanduser()
  out_resolved = out_root.resolve()
  entries: list[tuple[Path, Path]] = []
  # (folder, whether out_dir may not lie inside it either, what it is) for the refusal below.
  holding: list[tuple[Path, bool, str]] = []
  for arg in inputs:
    path = Path(arg).expanduser()
    if path.is_dir():
      holding.append((path.resolve(), True, f"the input folder {arg}"))
      files = _scan(path)
      if not files:
        raise SetupError(f"No images ({', '.join(EXTENSIONS)}) found under {arg}.")
      entries += [(path / rel, rel) for rel in files]
    elif path.is_file():
      holding.append((path.resolve().parent, False, f"the folder of the input {arg}"))
      entries.append((path, Path(path.name)))
    elif path.exists():
      raise SetupError(f"Input {arg} is neither a file nor a folder.")
    else:
      raise SetupError(f"Input {arg} does not exist.")
  for folder, recursive, what in holding:
    if out_resolved == folder or (recursive and out_resolved.is_relative_to(folder)):
      raise SetupError(
          f"--out_dir={out_dir} is {'' if out_resolved == folder else 'inside '}{what}: outputs "
          "could overwrite inputs (or be read as inputs later); choose an out_dir outside it.")

  # One job per distinct file (a file may be named twice, or also lie in a named folder).
  seen: dict[Path, tuple[Path, Path]] = {}
  for source, rel in entries:
    seen.setdefault(source.resolve(), (source, rel))
  # Inputs whose output names would coincide (a.jpg and a.png) keep their suffix: a.jpg.png.
  names = collections.Counter(p for _, rel in seen.values() for p in _outputs(rel, False))
  planned = []
  for source, rel in seen.values():
    keep_suffix = any(names[p] > 1 for p in _outputs(rel, False))
    output, compare = _outputs(rel, keep_suffix)
    planned.append((source, out_root / output, out_root / compare))
  counts = collections.Counter(p for _, o, c in planned for p in (o, c))
  clashes = sorted(str(p) for p, n in counts.items() if n > 1)
  if clashes:
    raise SetupError(f"Several inputs would be written to {', '.join(clashes[:5])}; rename them or "
                     "run them separately.")

  input_ids = {}
  for resolved in seen:
    st = resolved.stat()
    input_ids[(st.st_dev, st.st_ino)] = resolved
  jobs = []
  for index, (source, output, compare) in enumerate(planned):
    for target in (output, compare):
      clobbered = None
      if target.resolve() in seen:
        clobbered = target.resolve()
      elif target.exists():
        st = target.stat()
        clobbered = input_ids.get((st.st_dev, st.st_ino))
      if clobbered is not None:
        raise SetupError(f"The output {target} would overwrite the input {clobbered}; choose "
                         "another --out_dir.")
    jobs.append(Job(index=index, source=source, output=output, compare=compare))
  return jobs


# ---------------------------------------------------------------------------
# Reading, converting and writing images.
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class _Image:
  job: Job
  pixels: np.ndarray  # [H, W, C] float32 in [0, 1], the model's channels.
  alpha: np.ndarray | None  # [H, W] uint8, untouched.
  source: Image.Image  # The input as shown in the side-by-side (RGB or L).
  gray: bool  # The input has no colour.


def _split_alpha(image: Image.Image) -> tuple[Image.Image, np.ndarray | None]:
  """The colour (or gray) part of an image and its alpha channel, if it has one."""
  if image.mode == "P" or (image.mode in ("L", "RGB") and "transparency" in image.info):
    if "transparency" not in image.info:
      return image.convert("RGB"), None
    image = image.convert("LA" if image.mode == "L" else "RGBA")
  if image.mode in ("RGBA", "RGBa", "PA"):
    image = image.convert("RGBA")
    return image.convert("RGB"), np.asarray(image.getchannel("A"))
  if image.mode in ("LA", "La"):
    image = image.convert("LA")
    return image.convert("L"), np.asarray(image.getchannel("A"))
  return image, None


def read_image(job: Job, mode: str) -> _Image:
  """Decodes ``job.source`` and converts it to the model's ``mode`` ("L" or "RGB").

  EXIF orientation is applied; animated images give their first frame; the
  alpha channel is split off; 16-bit images are scaled to 8 bits
  (``preprocess.convert``).

  Raises:
    preprocess.BadImageError: the file does not decode or its mode has no conversion.
  """
  try:
    with Image.open(job.source) as image:
      image.load()
      image = ImageOps.exif_transpose(image)
  except Exception as e:  # PIL raises many types for unreadable files.
    raise preprocess.BadImageError(f"cannot decode: {type(e).__name__}: {e}") from None
  color, alpha = _split_alpha(image)
  gray = color.mode in _GRAY_MODES
  converted = preprocess.convert(color, mode=mode, name=job.source.name)
  source = converted if (mode == "L") == gray else preprocess.convert(
      color, mode="L" if gray else "RGB", name=job.source.name)
  pixels = np.asarray(converted, np.float32) / 255.0
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  return _Image(job=job, pixels=pixels, alpha=alpha, source=source, gray=gray)


def _to_pil(pixels: np.ndarray, alpha: np.ndarray | None, gray: bool) -> Image.Image:
  """Model-space pixels to a PIL image: gray inputs stay gray, alpha re-attached exactly."""
  array = plots.to_uint8(pixels)
  image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
  if gray and image.mode == "RGB":
    image = image.convert("L")
  if alpha is not None:
    image.putalpha(Image.fromarray(alpha))
  return image


def side_by_side(panels: Sequence[Image.Image]) -> Image.Image:
  """Panels of one size in a row, ``_GAP`` white pixels apart, in a mode that fits all."""
  color = any(p.mode.startswith("RGB") for p in panels)
  alpha = any(p.mode in ("RGBA", "LA") for p in panels)
  mode = ("RGB" if color else "L") + ("A" if alpha else "")
  width, height = panels[0].size
  canvas = Image.new(mode, (len(panels) * (width + _GAP) - _GAP, height), (255,) * len(mode))
  for i, panel in enumerate(panels):
    canvas.paste(panel.convert(mode), (i * (width + _GAP), 0))
  return canvas


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  mse = float(np.mean(np.square(a.astype(np.float64) - b)))
  return 10.0 * math.log10(1.0 / max(mse, 1e-10))


# ---------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------


def run(inputs: Sequence[str], *, workdir: str, out_dir: str, checkpoint: str = "best",
        replica: int | None = None, corrupt: str = "", seed: int = 0, batch_size: int = 16,
        max_side: int = 1024, overlap: float = 0.25, write_side_by_side: bool = True,
        progress: bool | None = None) -> Report:
  """Denoises image files and folders into ``out_dir`` (see the module docstring).

  Args:
    inputs: image files and folders.
    workdir: a trained run folder.
    out_dir: output folder.
    checkpoint: "best" or "latest".
    replica: the replica of a run of several seeds (default: the best).
    corrupt: corruption spec applied before the model ("" = none).
    seed: seed of the corruption noise.
    batch_size, max_side, overlap: see ``inference.Denoiser``.
    write_side_by_side: also write ``<name>.compare.png``.
    progress: show a progress bar (default: for folders and several files).

  Returns:
    A ``Report``; ``failed`` maps each file that could not be denoised to why.

  Raises:
    SetupError: bad inputs or output folder, or a bad corruption spec.
    FileNotFoundError, ValueError: the workdir cannot be loaded.
  """
  if batch_size < 1:
    raise SetupError(f"--batch_size={batch_size} must be >= 1.")
  jobs = plan_jobs(inputs, out_dir)
  corrupter = None
  if corrupt:
    try:
      corrupter = inference.make_corrupter(corrupt, seed=seed)
    except ValueError as e:
      raise SetupError(f"--corrupt={corrupt!r}: {e}") from None
  denoiser = inference.load(workdir, checkpoint=checkpoint, replica=replica,
                            batch_size=batch_size,
                            max_side=max_side, overlap=overlap)
  logging.info("Restored %s at step %d from %s. %s", denoiser.name, denoiser.step, workdir,
               denoiser.describe())
  report = Report()
  if progress is None:
    progress = len(jobs) > 1 or any(Path(i).expanduser().is_dir() for i in inputs)
  bar = tqdm(total=len(jobs), unit="img", desc="denoise", disable=not progress,
             dynamic_ncols=True, file=sys.stderr)

  def fail(job: Job, reason: str) -> None:
    report.failed[str(job.source)] = reason
    tqdm.write(f"error: {job.source}: {reason}", file=sys.stderr)

  def note(text: str) -> None:
    if not report.notes[text]:
      tqdm.write(f"note: {text}", file=sys.stderr)
    report.notes[text] += 1

  def flush(group: list[_Image]) -> None:
    clean = np.stack([im.pixels for im in group])
    corrupted = None
    if corrupter is not None:
      try:
        corrupted = corrupter(clean, [im.job.index for im in group])
      except ValueError as e:
        for im in group:
          fail(im.job, f"--corrupt does not apply to this {clean.shape[2]}x{clean.shape[1]} "
                       f"image: {e}")
        bar.update(len(group))
        return
    restored = denoiser.denoise(clean if corrupted is None else corrupted)
    for i, im in enumerate(group):
      output = _to_pil(restored[i], im.alpha, im.gray)
      try:
        plots.save_png(output, im.job.output)
        if write_side_by_side:
          panels = [im.source if im.alpha is None else _with_alpha(im.source, im.alpha)]
          if corrupted is not None:
            panels.append(_to_pil(corrupted[i], im.alpha, im.gray))
          plots.save_png(side_by_side([*panels, output]), im.job.compare)
      except OSError as e:
        fail(im.job, f"cannot write the output: {e}")
        continue
      report.written.append(im.job.output)
      if corrupted is not None:
        report.psnr_corrupted.append(_psnr(corrupted[i], im.pixels))
        report.psnr_output.append(_psnr(restored[i], im.pixels))
    bar.update(len(group))

  groups: dict[tuple[int, int], list[_Image]] = collections.defaultdict(list)

  def pixels(group: list[_Image]) -> int:
    return sum(im.pixels.shape[0] * im.pixels.shape[1] for im in group)

  with bar:
    for job in jobs:
      try:
        image = read_image(job, denoiser.mode)
      except (preprocess.BadImageError, OSError) as e:
        fail(job, str(e))
        bar.update(1)
        continue
      if denoiser.mode == "L" and not image.gray:
        note("the model takes 1-channel images: colour inputs are converted to grayscale "
             "(ITU-R 601-2 luma) and written as grayscale.")
      elif denoiser.mode == "RGB" and image.gray:
        note("the model takes RGB images: grayscale inputs are repeated to 3 channels and the "
             "output is converted back to grayscale.")
      size = image.pixels.shape[:2]
      groups[size].append(image)
      if len(groups[size]) >= batch_size or pixels(groups[size]) >= _GROUP_PIXELS:
        flush(groups.pop(size))
      elif sum(pixels(g) for g in groups.values()) >= 4 * _GROUP_PIXELS:
        for key in list(groups):
          flush(groups.pop(key))
    for key in list(groups):
      flush(groups.pop(key))
  for text, count in report.notes.items():
    if count > 1:
      logging.info("%d images: %s", count, text)
  if report.psnr_output:
    logging.info("PSNR to the uncorrupted input, mean of %d images: corrupted %.2f dB, "
                 "denoised %.2f dB.", len(report.psnr_output), np.mean(report.psnr_corrupted),
                 np.mean(report.psnr_output))
  return report


def _with_alpha(image: Image.Image, alpha: np.ndarray) -> Image.Image:
  image = image.copy()
  image.putalpha(Image.fromarray(alpha))
  return image


def main(argv: Sequence[str]) -> None:
  """Runs the CLI on the positional arguments; exits 1 or 2 on failure (module docstring)."""
  cli.quiet_libraries()
  inputs = list(argv[1:])
  if not FLAGS.workdir or not FLAGS.out_dir:
    cli.fail("--workdir and --out_dir are required (--help for usage).")
  if not inputs:
    cli.fail("name the image files or folders to denoise, e.g. python -m jax_dae.denoise "
             "--workdir=runs/lfw_cae --out_dir=out photos/")
  if FLAGS.compilation_cache:
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(FLAGS.compilation_cache))
  # Bad workdir, inputs or --corrupt: nothing was done (2). Errors of the
  # model run itself (XLA, out of memory, a full disk): 1.
  with (cli.one_line_errors((RuntimeError, OSError), status=1),
        cli.one_line_errors((ValueError, FileNotFoundError), status=2)):
    report = run(inputs, workdir=FLAGS.workdir, out_dir=FLAGS.out_dir,
                 checkpoint=FLAGS.checkpoint, replica=FLAGS.replica, corrupt=FLAGS.corrupt,
                 seed=FLAGS.seed,
                 batch_size=FLAGS.batch_size, max_side=FLAGS.max_side, overlap=FLAGS.overlap,
                 write_side_by_side=FLAGS.side_by_side)
  total = len(report.written) + len(report.failed)
  if report.failed:
    names = ", ".join(report.failed)
    sys.exit(f"error: {len(report.failed)} of {total} files could not be denoised: {names} "
             f"(outputs of the other {len(report.written)} are in {FLAGS.out_dir}).")
  logging.info("Wrote %d denoised images to %s.", len(report.written), FLAGS.out_dir)


if __name__ == "__main__":
  cli.run(main, usage=USAGE)
