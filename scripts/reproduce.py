r"""Reproduces the seeds' result tables: runs their experiments, then writes docs/results.md.

Two steps, so that the runs can happen on a GPU machine and the report here:

  # Run a table's experiments (each is the main command, `python -m
  # jax_dae.main --config=...`); rows already in --previous/<TABLE>.json or
  # with a results.json in --workdir are kept. Writes <TABLE>.json (every row's
  # results.json, its validation curve, its command and time) and
  # <TABLE>_samples.png (the first test faces through every model) to --out.
  python scripts/reproduce.py run S0 --data_dir=.carry/data --out=docs/runs

  # LPIPS needs VGG16 to relu5_3 (59 MB), too big to travel with the data, so
  # it is computed where the weights are: `run --export_dir=$OUT` also writes
  # each row's final variables (<TABLE>_<row>.npz); then, here,
  python scripts/reproduce.py lpips S0 --params_dir=DIR --data_dir=../shared/data
  # adds test LPIPS (model and corrupted input) to docs/runs/S0.json, and the
  # PSNR recomputed from those variables as a check against the GPU's; it also
  # redraws S0_samples.png from every exported row, when the rows were run by
  # several calls of `run` (exports above 15 MiB are split into .part<i>.npz).

  # Write docs/results.md and its figures from docs/runs/<TABLE>.json.
  python scripts/reproduce.py report

Tables (``TABLES``; seeds' numbers from ../shared/seeds/):
  S0    seed 000: LFW deblurring and depixelation, PSNR/SSIM per model and loss,
        the per-epoch pixel-vs-perceptual table, and rows beyond the seed;
  S1    seed 001: test MSE of the dense-bottleneck AE under seven distortions;
  S1_bottleneck  seed 001's bottleneck-size sweep (validation MSE);
  S2    seed 002: per-noise PSNR/SSIM of the six dual-AE variants, with sizes;
  S3    seed 003: the MNIST depth x latent test-loss grid and the seed's claims.
Data: S0 reads LFW (archive, or the crop carry form); S1 the ``rgb64`` and S2 the
``gray100`` carry form or archive; S3 MNIST (``scripts/make_lfw_carry.py``,
docs/data.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from jax_dae import models, plots, steps, writers

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Row:
  """One experiment of a table: one run of the main command.

  Attributes:
    name: identifier (folder and JSON key).
    label: the row's name in the table.
    config: ``configs/<file>.py[:arg]``.
    seed: the seed's published numbers for this row, by metric name
      (e.g. ``{"psnr": 30.62, "ssim": 0.88}``); per noise for S2.
    flags: extra ``--config.*`` flags.
  """

  name: str
  label: str
  config: str
  seed: dict = dataclasses.field(default_factory=dict)
  flags: tuple[str, ...] = ()


S0_EPOCHS = (1, 5, 10, 15)
_EPOCH_FLAG = f"--config.train.test_epochs=({','.join(map(str, S0_EPOCHS))})"
_PIXELATE_INPUT = {"psnr": 22.42, "ssim": 0.48}
S1_DISTORTIONS = {  # seed 001's table 2: test MSE
    "dropout": ("Coarse", 0.00765),
    "gaussian": ("Gaussian", 0.00673),
    "salt_pepper": ("Salt and pepper", 0.00676),
    "gaussian+dropout": ("Coarse + Gaussian", 0.00738),
    "dropout+salt_pepper": ("Coarse + salt and pepper", 0.00729),
    "gaussian+salt_pepper": ("Gaussian + salt and pepper", 0.00626),
    "all": ("Coarse + Gaussian + salt and pepper", 0.00668),
}
S1_BOTTLENECKS = (128, 256, 512, 1000, 2048, 4096)
S2_MODELS = {  # seed 002's table: (trainable parameters, {noise: (PSNR, SSIM)})
    "SingleAE": (36386, {"gaussian": (24.30, 0.76), "impulse": (25.99, 0.82),
                         "speckle": (27.19, 0.86), "poisson": (28.14, 0.89)}),
    "SingleAE_sep": (15760, {"gaussian": (24.18, 0.75), "impulse": (22.12, 0.62),
                             "speckle": (26.78, 0.83), "poisson": (27.51, 0.87)}),
    "DualAE": (87812, {"gaussian": (25.01, 0.78), "impulse": (26.88, 0.85),
                       "speckle": (28.11, 0.88), "poisson": (29.08, 0.90)}),
    "DualAE_sep": (52445, {"gaussian": (24.65, 0.76), "impulse": (22.79, 0.67),
                           "speckle": (27.26, 0.86), "poisson": (27.91, 0.88)}),
    "DualSkipAE": (91488, {"gaussian": (24.92, 0.76), "impulse": (28.59, 0.88),
                           "speckle": (29.52, 0.89), "poisson": (30.83, 0.91)}),
    "DualSkipAE_sep": (56231, {"gaussian": (24.37, 0.75), "impulse": (24.27, 0.73),
                               "speckle": (27.95, 0.87), "poisson": (28.84, 0.89)}),
}
S3_DEPTHS, S3_LATENTS = (1, 3, 5), (13, 8, 5)

TABLES: dict[str, list[Row]] = {
    "S0": [
        Row("cae", "CAE (pixel MSE)", "configs/lfw_cae.py",
            {"psnr": 30.62, "ssim": 0.88, "input_psnr": 26.67, "input_ssim": 0.73,
             "epochs": {1: (23.19, 0.62), 5: (28.76, 0.83), 10: (29.72, 0.85),
                        15: (31.07, 0.87)}}, (_EPOCH_FLAG,)),
        Row("vcae", "VCAE", "configs/lfw_vcae.py", {"psnr": 22.69, "ssim": 0.54}),
        Row("rescae", "ResCAE", "configs/lfw_rescae.py", {"psnr": 29.43, "ssim": 0.84}),
        Row("perceptual", "CAE + perceptual loss", "configs/lfw_cae_perceptual.py",
            {"psnr": 24.25, "ssim": 0.79,
             "epochs": {1: (10.47, 0.00), 5: (18.27, 0.45), 10: (21.94, 0.64),
                        15: (24.28, None)}}, (_EPOCH_FLAG,)),
        Row("mixed_rho0.5", "CAE + mixed loss, ρ = 0.5", "configs/lfw_cae_mixed.py:rho=0.5",
            {"psnr": 26.59, "ssim": 0.84}),
        Row("mixed_rho1", "CAE + mixed loss, ρ = 1", "configs/lfw_cae_mixed.py:rho=1",
            {"psnr": 27.26, "ssim": 0.86}),
        Row("pixelate_cae", "CAE on pixelation", "configs/lfw_cae_pixelate.py",
            {"psnr": 25.40, "ssim": 0.68, **{f"input_{k}": v for k, v in _PIXELATE_INPUT.items()}}),
        Row("pixelate_mpl1", "CAE + mixed ρ = 1 on pixelation", "configs/lfw_cae_pixelate.py:mpl1",
            {"psnr": 22.48, "ssim": 0.61}),
        # Beyond the seed: its proposed future work, in the same 15 epochs.
        Row("beyond_rescae_perceptual", "beyond: ResCAE + perceptual loss",
            "configs/lfw_cae_perceptual.py", {}, ("--config.model.name=ResCAE",)),
    ],
    "S1": [Row(d.replace("+", "_"), label, f"configs/faces64_dense_ae.py:distortion={d}",
               {"mse": mse}) for d, (label, mse) in S1_DISTORTIONS.items()],
    "S1_bottleneck": [
        Row(f"bottleneck_{n}", f"bottleneck {n}",
            f"configs/faces64_dense_ae.py:distortion=none,bottleneck={n}",
            {"val_mse": 0.0058} if n == 1000 else {})
        for n in S1_BOTTLENECKS],
    "S2": [Row(m, m, f"configs/faces100_dual_ae.py:model={m}", {"params": p, "noise": noise})
           for m, (p, noise) in S2_MODELS.items()],
    "S3": [Row(f"d{d}_l{latent}", f"DAE_{d}_{latent}",
               f"configs/mnist_dae.py:depth={d},latent={latent}")
           for d in S3_DEPTHS for latent in S3_LATENTS],
}


# ---------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------


def _gpu_name() -> str:
  try:
    out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout.strip()
    return out.splitlines()[0] if out else "cpu"
  except (OSError, subprocess.CalledProcessError):
    return "cpu"


def _versions() -> dict[str, str]:
  import flax
  import jax
  import optax

  return {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}


def _val_curve(metrics_path: Path) -> list[dict]:
  """Per-epoch validation metrics and training loss (last line per epoch)."""
  by_epoch = {}
  for row in writers.read_jsonl(metrics_path, missing_ok=True):
    if "epoch" in row:
      by_epoch[int(row["epoch"])] = {k: v for k, v in row.items() if k != "step"}
  return [by_epoch[e] for e in sorted(by_epoch)]


def run_row(row: Row, workdir: Path, args: argparse.Namespace) -> dict:
  """Runs one experiment with the main command; returns its entry of the table's JSON."""
  command = [sys.executable, "-m", "jax_dae.main", f"--config={row.config}",
             f"--workdir={workdir}", f"--config.data.dir={args.data_dir}", *row.flags,
             *args.flag]
  shown = ["python", *command[1:]]
  t0 = time.time()
  if not (workdir / "results.json").exists():
    workdir.mkdir(parents=True, exist_ok=True)
    with open(workdir / "log.txt", "w") as log:
      proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
      for line in proc.stdout:
        log.write(line)
        for part in line.split("\r"):
          if any(key in part for key in ("epoch ", "test:", "Error", "error:", "Early stop")):
            if "img/s" not in part:
              print(f"{row.name}: {part.strip().split('] ', 1)[-1]}", flush=True)
      if proc.wait():
        raise RuntimeError(f"{shlex.join(shown)} failed ({proc.returncode}); see "
                           f"{workdir / 'log.txt'}")
  results = json.loads((workdir / "results.json").read_text())
  return {"command": shlex.join(shown), "seconds": round(time.time() - t0, 1),
          "results": results, "val": _val_curve(workdir / "metrics.jsonl")}


def samples_figure(table: str, entries: list[tuple[str, Path]], path: Path) -> None:
  """One picture: the same first test faces, clean, corrupted and through each model."""
  lines, labels, seen = [], [], set()
  for label, workdir in entries:
    npz = workdir / "test_samples.npz"
    if not npz.exists():
      continue
    faces = np.load(npz)
    if not lines:
      lines.append(faces["clean"])
      labels.append("clean")
    corrupted = faces["corrupted"]
    if corrupted.tobytes() not in seen:
      seen.add(corrupted.tobytes())
      lines.append(corrupted)
      labels.append("input" if len(seen) == 1 else f"input ({label})")
    lines.append(faces["reconstructed"])
    labels.append(label)
  if not lines:
    return
  n, h, _, c = lines[0].shape
  pad = 2
  grid = plots.image_grid(lines, pad)
  with plots.figure(path, figsize=(1.1 * n + 2.5, 1.1 * len(lines)), dpi=100) as (_, ax):
    ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray", vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_yticks([pad + r * (h + pad) + h / 2 for r in range(len(lines))], labels, fontsize=8)
    ax.set_xticks([])
    ax.set_title(f"{table}: the first {n} test images", fontsize=9)


# Largest file export_variables writes: the GPU machine returns files of at most 16 MiB.
EXPORT_PART_BYTES = 15 * 2**20


def export_variables(workdir: Path, path: Path, *, part_bytes: int = EXPORT_PART_BYTES) -> None:
  """Writes the run's final variables (no optimizer state) as flat ``.npz`` files.

  ``path`` holds the first arrays; arrays beyond ``part_bytes`` per file go to
  ``<stem>.part1.npz``, ``<stem>.part2.npz``, ... (a ResCAE's 24 MB would not
  come back from the GPU machine in one file). ``load_variables`` joins them.
  """
  from flax import traverse_util

  from jax_dae import inference

  variables = inference.load(workdir, checkpoint="latest").variables
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(variables, sep="/").items()}
  parts, size = [{}], 0
  for name, array in flat.items():
    if parts[-1] and size + array.nbytes > part_bytes:
      parts.append({})
      size = 0
    parts[-1][name] = array
    size += array.nbytes
  for i, part in enumerate(parts):
    writers.save_npz(_part_path(path, i), **part)


def _part_path(path: Path, i: int) -> Path:
  """``path`` itself for part 0, ``<name without .npz>.part<i>.npz`` beside it after."""
  return path if i == 0 else path.with_name(f"{path.name.removesuffix('.npz')}.part{i}.npz")


def load_variables(path: Path) -> dict:
  """Reads what ``export_variables`` wrote (``path`` and its ``.part<i>.npz`` files)."""
  from flax import traverse_util

  flat, i = {}, 0
  while _part_path(path, i).exists():
    with np.load(_part_path(path, i)) as part:
      flat.update(part)
    i += 1
  return traverse_util.unflatten_dict(flat, sep="/")


def test_forward(config, image_shape: tuple[int, ...]):
  """``forward(variables, images, indices) -> (corrupted, reconstruction)``, jitted.

  Test image ``indices[i]`` is corrupted with the evaluation's own key, exactly
  as ``train_and_evaluate`` corrupts it, so metrics match the run's.
  """
  import jax

  from jax_dae import corruptions, replicas

  model = models.from_config(config, out_channels=image_shape[-1])
  corrupt = corruptions.parse(config.corruption, image_shape)
  eval_key = replicas.run_keys(config.seed)[3]

  @jax.jit
  def forward(variables, images, indices):
    noisy = corrupt(corruptions.example_keys(eval_key, indices), steps.to_float(images))
    return noisy, model.apply(variables, noisy, train=False)
  return forward


def lpips_on_test_split(runs, *, batch_size: int = 64, weights=None) -> dict[str, dict]:
  """Mean test LPIPS of several runs' models, and of their corrupted inputs.

  Args:
    runs: ``{name: (config, variables)}``; the configs must share one dataset.
    batch_size: test images per step.
    weights: LPIPS weights (``metrics.lpips``); the default resolution if None.

  Returns:
    ``{name: {"lpips", "input_lpips", "psnr"}}``. The test images are corrupted
    exactly as ``train_and_evaluate`` corrupts them (same keys per image), so
    the PSNR must equal the run's own. Each batch goes through VGG once, with
    the clean images, every distinct corrupted input and every model's
    reconstruction side by side (``metrics.lpips_to_reference``).
  """
  import jax.numpy as jnp
  from tqdm import tqdm

  from jax_dae import data, metrics

  configs = {name: config for name, (config, _) in runs.items()}
  first = next(iter(configs.values()))
  for name, config in configs.items():
    if config.data.to_dict() != first.data.to_dict():
      raise ValueError(f"lpips: run {name!r} reads other data than the first run.")
  test = np.asarray(data.load(first.data)["test"])

  forwards = {name: test_forward(config, test.shape[1:]) for name, config in configs.items()}
  # Runs with the same corruption and seed share their corrupted inputs.
  input_of = {name: (c.corruption, c.seed) for name, c in configs.items()}
  inputs = list(dict.fromkeys(input_of.values()))
  totals = {name: {"lpips": 0.0, "input_lpips": 0.0, "psnr": 0.0} for name in runs}
  for start in tqdm(range(0, len(test), batch_size), desc="LPIPS", unit="batch"):
    indices = np.arange(start, min(start + batch_size, len(test)))
    clean = steps.to_float(test[indices])
    noisy, outs = {}, []
    for name, (_, variables) in runs.items():
      x, out = forwards[name](variables, test[indices], indices)
      noisy.setdefault(input_of[name], x)
      outs.append(out)
      totals[name]["psnr"] += float(metrics.psnr(out, clean).sum())
    candidates = jnp.stack([noisy[k] for k in inputs] + outs)
    dist = np.asarray(metrics.lpips_to_reference(clean, candidates, weights=weights)).sum(axis=1)
    for i, name in enumerate(runs):
      totals[name]["input_lpips"] += float(dist[inputs.index(input_of[name])])
      totals[name]["lpips"] += float(dist[len(inputs) + i])
  return {name: {k: v / len(test) for k, v in t.items()} for name, t in totals.items()}


def write_test_samples(config, variables, test: np.ndarray, path: Path) -> None:
  """Writes ``test_samples.npz`` as a run does: its first test faces, corrupted and rebuilt."""
  from jax_dae import plots

  clean = test[: config.train.num_samples]
  noisy, recon = test_forward(config, test.shape[1:])(variables, clean, np.arange(len(clean)))
  writers.save_npz(path, corrupted=plots.to_uint8(noisy), reconstructed=plots.to_uint8(recon),
                   clean=clean)


def add_lpips(args: argparse.Namespace) -> int:
  """Adds LPIPS to the table's record, and redraws its sample figure, from exported variables."""
  import ml_collections

  from jax_dae import data

  path = Path(args.runs) / f"{args.table}.json"
  record = json.loads(path.read_text())
  entries, todo, tests = [], {}, {}
  for row in TABLES[args.table]:
    entry = record["rows"].get(row.name)
    npz = Path(args.params_dir) / f"{args.table}_{row.name}.npz"
    if entry is None or not npz.exists():
      continue
    config = ml_collections.ConfigDict(entry["results"]["config"])
    config.data.dir = args.data_dir
    variables = load_variables(npz)
    samples_dir = Path(args.params_dir) / f"{args.table}_{row.name}"
    key = json.dumps(config.data.to_dict(), sort_keys=True)
    if key not in tests:
      tests[key] = np.asarray(data.load(config.data)["test"])
    write_test_samples(config, variables, tests[key], samples_dir / "test_samples.npz")
    entries.append((row.label, samples_dir))
    if "lpips" not in entry or args.recompute:
      todo[row.name] = (config, variables)
  # Every exported row's reconstructions of the same faces, also when the rows
  # were run by several calls of `run`.
  samples_figure(args.table, entries, Path(args.runs) / f"{args.table}_samples.png")
  scores = lpips_on_test_split(todo, batch_size=args.batch_size) if todo else {}
  for name, value in scores.items():
    record["rows"][name]["lpips"] = value
    print(f"{args.table}/{name}: {value}", flush=True)
  writers.write_json(path, record)
  return 0


def run(args: argparse.Namespace) -> int:
  import jax

  # This process only reads checkpoints (--export_dir): keep it off the GPU,
  # whose memory JAX would otherwise claim before the next row's run starts.
  jax.config.update("jax_platforms", "cpu")
  out = Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  start, failed = time.time(), 0
  for table in args.tables:
    path = out / f"{table}.json"
    previous = Path(args.previous) / f"{table}.json" if args.previous else path
    record = json.loads(previous.read_text()) if previous.exists() else {"rows": {}}
    record.update(table=table, device=_gpu_name(), versions=_versions())
    rows = [r for r in TABLES[table] if not args.rows or r.name in args.rows]
    entries = []
    for row in rows:
      workdir = Path(args.workdir) / table / row.name
      entries.append((row.label, workdir))
      if row.name in record["rows"]:
        print(f"{table}/{row.name}: kept from {previous}", flush=True)
        continue
      if args.deadline_s and time.time() - start > args.deadline_s:
        print(f"{table}/{row.name}: not started (past --deadline_s)", flush=True)
        continue
      try:
        record["rows"][row.name] = run_row(row, workdir, args)
      except RuntimeError as e:
        print(f"{table}/{row.name}: {e}", flush=True)
        failed += 1
        continue
      writers.write_json(path, record)
      if args.export_dir:
        export_variables(workdir, Path(args.export_dir) / f"{table}_{row.name}.npz")
    writers.write_json(path, record)
    samples_figure(table, entries, out / f"{table}_samples.png")
  return 1 if failed else 0


# ---------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------


def _load(runs: Path, table: str) -> dict | None:
  path = runs / f"{table}.json"
  return json.loads(path.read_text()) if path.exists() else None


def _ps(metrics: dict | None) -> str:
  if not metrics or "psnr" not in metrics:
    return "–"
  return f"{metrics['psnr']:.2f} / {metrics['ssim']:.3f}"


def _seed_ps(psnr, ssim) -> str:
  if psnr is None:
    return "–"
  return f"{psnr:.2f} / {ssim:.2f}" if ssim is not None else f"{psnr:.2f} / ?"


def _diff(ours: float | None, seed: float | None, fmt: str = "+.2f", unit: str = " dB") -> str:
  if ours is None or seed is None:
    return "–"
  return f"{ours - seed:{fmt}}{unit}"


def _header(data: dict) -> str:
  v = data.get("versions", {})
  return (f"Run on {data.get('device', '?')} (JAX {v.get('jax', '?')}, flax {v.get('flax', '?')},"
          f" optax {v.get('optax', '?')}).")


def _commands(rows: list[Row], data_dir: str, table: str) -> str:
  lines = [f"    python scripts/reproduce.py run {table} --data_dir={data_dir} --out=docs/runs",
           "", "which runs, for each row:", ""]
  lines += ["    python -m jax_dae.main " + shlex.join([
      f"--config={r.config}", f"--workdir=runs/{table}/{r.name}", f"--config.data.dir={data_dir}",
      *r.flags]) for r in rows]
  return "\n".join(lines)


def report_s0(runs: Path, images: Path) -> str:
  data = _load(runs, "S0")
  if data is None:
    return "## S0 (seed 000)\n\nNot run yet.\n"
  got = data["rows"]
  rows = TABLES["S0"]
  out = ["## S0 (seed 000): CAEs on LFW, 15 epochs, batch 8", "", _header(data), "",
         _commands(rows, ".carry/data", "S0"), "",
         "Test split (3708 faces), PSNR (dB) / SSIM after the last epoch (the seed's protocol),"
         " and at the checkpoint with the best validation PSNR; LPIPS (VGG, lower is better) of"
         " the last epoch's model where computed (`reproduce.py lpips`).", "",
         "| row | seed 000 | jax_dae | difference (PSNR) | jax_dae, best-val checkpoint | "
         "LPIPS |", "|---|---|---|---|---|---|"]

  def lpips(entry, key):
    value = (entry or {}).get("lpips", {}).get(key)
    return "–" if value is None else f"{value:.3f}"

  def add_input(label, row_name):
    entry = got.get(row_name)
    seed = next(r for r in rows if r.name == row_name).seed
    ours = entry["results"]["test_input"] if entry else None
    out.append(f"| {label} | {_seed_ps(seed.get('input_psnr'), seed.get('input_ssim'))} | "
               f"{_ps(ours)} | {_diff(ours and ours['psnr'], seed.get('input_psnr'))} | | "
               f"{lpips(entry, 'input_lpips')} |")

  add_input("blurred input (`gaussian_blur(kernel=9,sigma=4)`)", "cae")
  for row in rows:
    if row.name == "pixelate_cae":
      add_input("pixelated input (`pixelate(block=8)`)", "pixelate_cae")
    entry = got.get(row.name)
    res = entry["results"] if entry else {}
    seed = row.seed
    out.append(f"| {row.label} | {_seed_ps(seed.get('psnr'), seed.get('ssim'))} | "
               f"{_ps(res.get('test'))} | "
               f"{_diff(res.get('test', {}).get('psnr'), seed.get('psnr'))} | "
               f"{_ps(res.get('test_at_best_val'))} | {lpips(entry, 'lpips')} |")

  out += ["", "Per epoch, test split PSNR / SSIM (seed 000's \"improved convergence speed\" "
          "table; its test-set column):", "",
          "| loss | " + " | ".join(f"epoch {e}" for e in S0_EPOCHS) + " |",
          "|---" * (len(S0_EPOCHS) + 1) + "|"]
  for name, label in (("cae", "pixel"), ("perceptual", "perceptual")):
    seed = next(r for r in rows if r.name == name).seed["epochs"]
    by_epoch = got.get(name, {}).get("results", {}).get("test_by_epoch", {})
    out.append(f"| {label}, seed 000 | "
               + " | ".join(_seed_ps(*seed[e]) for e in S0_EPOCHS) + " |")
    out.append(f"| {label}, jax_dae | "
               + " | ".join(_ps(by_epoch.get(str(e))) for e in S0_EPOCHS) + " |")
  out += ["", "![S0 samples](runs/S0_samples.png)", ""]
  return "\n".join(out)


def report_s1(runs: Path, images: Path) -> str:
  data, sweep = _load(runs, "S1"), _load(runs, "S1_bottleneck")
  out = ["## S1 (seed 001): dense-bottleneck AE on 64×64 faces", ""]
  if data is None:
    out.append("Not run yet.\n")
  else:
    rows = TABLES["S1"]
    out += [_header(data), "", _commands(rows, ".carry/rgb64", "S1"), "",
            "Test MSE (images in [0, 1]) after early stopping (patience 3, at most 50 epochs),"
            " LFW frames at 64×64 instead of AFHQ:", "",
            "| distortion | seed 001 | jax_dae | difference | input MSE | epochs | "
            "jax_dae, best-val checkpoint |", "|---|---|---|---|---|---|---|"]
    for row in rows:
      entry = data["rows"].get(row.name)
      if entry is None:
        out.append(f"| {row.label} | {row.seed['mse']:.5f} | – | – | – | – | – |")
        continue
      res = entry["results"]
      mse = res["test"]["mse"]
      out.append(f"| {row.label} | {row.seed['mse']:.5f} | {mse:.5f} | "
                 f"{_diff(mse, row.seed['mse'], '+.5f', '')} | {res['test_input']['mse']:.5f} | "
                 f"{res.get('epochs', '–')} | {res['test_at_best_val']['mse']:.5f} |")
  if sweep is not None:
    out += ["", "Bottleneck sweep (no distortion; the seed's figure 4): best validation MSE by"
            " bottleneck size; the seed reads 0.0058 at 1000.", "",
            "| bottleneck | best validation MSE | test MSE |", "|---|---|---|"]
    points = []
    for row in TABLES["S1_bottleneck"]:
      entry = sweep["rows"].get(row.name)
      if entry is None:
        continue
      best = min(e["val/mse"] for e in entry["val"])
      points.append((int(row.name.split("_")[1]), best))
      out.append(f"| {points[-1][0]} | {best:.5f} | {entry['results']['test']['mse']:.5f} |")
    if points:
      _plot_sweep(points, images / "s1_bottleneck.png")
      out += ["", "![bottleneck sweep](images/s1_bottleneck.png)"]
  out += ["", "![S1 samples](runs/S1_samples.png)", ""]
  return "\n".join(out)


def _plot_sweep(points, path: Path) -> None:
  with plots.figure(path) as (_, ax):
    ax.plot(*zip(*points, strict=True), "o-", label="jax_dae (LFW 64×64)")
    ax.plot([1000], [0.0058], "r*", ms=12, label="seed 001 at 1000 (AFHQ)")
    ax.set_xscale("log")
    ax.set_xlabel("bottleneck units")
    ax.set_ylabel("best validation MSE")
    ax.legend()
    ax.grid(alpha=0.3)


def report_s2(runs: Path, images: Path) -> str:
  data = _load(runs, "S2")
  out = ["## S2 (seed 002): single, dual and dual-with-skips AEs, 100×100 gray faces", ""]
  if data is None:
    return "\n".join(out + ["Not run yet.\n"])
  rows = TABLES["S2"]
  out += [_header(data), "", _commands(rows, ".carry/gray100", "S2"), "",
          "Each model is trained once on all four noises (one per image, 40 epochs), then the"
          " test split is evaluated under each noise alone. PSNR (dB) / SSIM:", "",
          "| model | parameters (seed / ours) | noise | seed 002 | input | jax_dae | difference |",
          "|---|---|---|---|---|---|---|"]
  for row in rows:
    entry = data["rows"].get(row.name)
    res = entry["results"] if entry else {}
    params = res.get("num_params")
    for i, (noise, (psnr, ssim)) in enumerate(row.seed["noise"].items()):
      got = res.get("test_by_corruption", {}).get(noise, {})
      ours = got.get("test")
      size = f"{row.seed['params']:,} / {params:,}" if params else f"{row.seed['params']:,} / –"
      out.append(f"| {row.label if i == 0 else ''} | {size if i == 0 else ''} | {noise} | "
                 f"{_seed_ps(psnr, ssim)} | {_ps(got.get('test_input'))} | {_ps(ours)} | "
                 f"{_diff(ours and ours['psnr'], psnr)} |")
  out += ["", "![S2 samples](runs/S2_samples.png)", ""]
  return "\n".join(out)


def report_s3(runs: Path, images: Path) -> str:
  data = _load(runs, "S3")
  out = ["## S3 (seed 003): MNIST DAEs, depth × latent", ""]
  if data is None:
    return "\n".join(out + ["Not run yet.\n"])
  rows = TABLES["S3"]
  loss = {}
  for row in rows:
    entry = data["rows"].get(row.name)
    if entry:
      depth, latent = (int(x[1:]) for x in row.name.split("_"))
      loss[depth, latent] = entry["results"]["test"]["mse"]
  out += [_header(data), "", _commands(rows, ".mnist", "S3"), "",
          "Test loss (MSE against the clean digit; the seed's figure 6 has bars, no numbers):",
          "", "| depth \\ latent | " + " | ".join(f"4×{n}×{n}" for n in S3_LATENTS) + " |",
          "|---" * (len(S3_LATENTS) + 1) + "|"]
  for d in S3_DEPTHS:
    out.append(f"| {d} | " + " | ".join(
        f"{loss[d, n]:.4f}" if (d, n) in loss else "–" for n in S3_LATENTS) + " |")
  if loss:
    _plot_s3(loss, images / "s3_test_loss.png")
    out += ["", "![S3 test loss](images/s3_test_loss.png)", "", "The seed's claims, cell by cell:",
            ""]
    latent_pairs = [(d, a, b) for d in S3_DEPTHS for a, b in zip(S3_LATENTS, S3_LATENTS[1:],
                                                                   strict=False)]
    depth_pairs = [(n, a, b) for n in S3_LATENTS for a, b in zip(S3_DEPTHS, S3_DEPTHS[1:],
                                                                  strict=False)]
    held = [loss[d, a] < loss[d, b] for d, a, b in latent_pairs
            if (d, a) in loss and (d, b) in loss]
    deep = [loss[b, n] < loss[a, n] for n, a, b in depth_pairs
            if (a, n) in loss and (b, n) in loss]
    out += [f"- (*) larger latent is better: holds in {sum(held)} of {len(held)} neighbouring "
            "pairs (same depth).",
            f"- (**) deeper is better: holds in {sum(deep)} of {len(deep)} neighbouring pairs "
            "(same latent)."]
  out += ["", "![S3 samples](runs/S3_samples.png)", ""]
  return "\n".join(out)


def _plot_s3(loss: dict, path: Path) -> None:
  width = 0.25
  with plots.figure(path, figsize=(5.5, 3.2)) as (_, ax):
    for i, n in enumerate(S3_LATENTS):
      xs = [j + (i - 1) * width for j, d in enumerate(S3_DEPTHS) if (d, n) in loss]
      ax.bar(xs, [loss[d, n] for d in S3_DEPTHS if (d, n) in loss], width,
             label=f"latent 4×{n}×{n}")
    ax.set_xticks(range(len(S3_DEPTHS)), [f"depth {d}" for d in S3_DEPTHS])
    ax.set_ylabel("test MSE")
    ax.legend(fontsize=8)


INTRO = """\
# Results

Written by `python scripts/reproduce.py report` from the run records in
`docs/runs/<TABLE>.json`, which `python scripts/reproduce.py run <TABLE>` makes
(on the GPU named in each section). Every number below comes from those
records; the seeds' numbers are in `scripts/reproduce.py` (`TABLES`), copied
from `../shared/seeds/`.

Substitutions, stated once and true for every table:
- LFW **deep-funneled** instead of seed 000's *funneled* LFW (alignment differs
  slightly); LFW frames resized to 64×64 RGB instead of AFHQ (S1), to 100×100
  grayscale instead of IMDB-WIKI (S2); our own seeded random splits with the
  seeds' sizes (S0) or fractions (S1, S2).
- On the GPU the data come from the carry forms (docs/data.md): S0's crops are
  bit-identical to the archive's; the S1 and S2 images are quality-95 JPEGs of
  the exact preprocessing (41.6 and 45.9 dB PSNR to it), inputs and targets alike.
- Layers the seeds do not publish are reconstructed (docs/models.md).
- SSIM is dm-pix's (11×11 Gaussian window, σ 1.5, on [0, 1] images; equal to
  scikit-image's `structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False)`); the seeds do not say which SSIM they used.
"""


def report(args: argparse.Namespace) -> int:
  runs, images = Path(args.runs), Path(args.images)
  images.mkdir(parents=True, exist_ok=True)
  notes = Path(args.notes).read_text() if args.notes and Path(args.notes).exists() else ""
  sections = [INTRO, report_s0(runs, images), report_s1(runs, images), report_s2(runs, images),
              report_s3(runs, images)]
  if notes:
    sections.append(notes)
  Path(args.output).write_text("\n".join(sections).rstrip() + "\n")
  print(f"wrote {args.output}")
  return 0


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  r = sub.add_parser("run", help="run tables' experiments")
  r.add_argument("tables", nargs="+", choices=sorted(TABLES))
  r.add_argument("--data_dir", default="../shared/data", help="config.data.dir for every row")
  r.add_argument("--workdir", default="runs/reproduce", help="one folder per row under it")
  r.add_argument("--out", default="docs/runs", help="where <TABLE>.json and the figure go")
  r.add_argument("--previous", default="",
                 help="folder with earlier <TABLE>.json whose rows are kept (default: --out; "
                 "delete a row there to run it again)")
  r.add_argument("--rows", nargs="*", default=[], help="only these row names")
  r.add_argument("--deadline_s", type=float, default=0.0,
                 help="start no row after this many seconds (0: no limit)")
  r.add_argument("--flag", action="append", default=[],
                 help="extra flag for every run, e.g. --flag=--compilation_cache=/tmp/xla")
  r.add_argument("--export_dir", default="",
                 help="also write each row's final variables here (<TABLE>_<row>.npz)")
  lp = sub.add_parser("lpips", help="add test LPIPS to runs/<TABLE>.json from exported variables")
  lp.add_argument("table", choices=sorted(TABLES))
  lp.add_argument("--params_dir", required=True)
  lp.add_argument("--data_dir", default="../shared/data")
  lp.add_argument("--runs", default="docs/runs")
  lp.add_argument("--batch_size", type=int, default=64)
  lp.add_argument("--recompute", action="store_true", help="also rows that have LPIPS already")
  p = sub.add_parser("report", help="write docs/results.md from docs/runs")
  p.add_argument("--runs", default="docs/runs")
  p.add_argument("--images", default="docs/images")
  p.add_argument("--output", default="docs/results.md")
  p.add_argument("--notes", default="docs/results_notes.md",
                 help="hand-written discussion appended to the report")
  return parser.parse_args(argv)


def main(argv=None) -> int:
  args = parse_args(argv)
  return {"run": run, "lpips": add_lpips, "report": report}[args.command](args)


if __name__ == "__main__":
  sys.exit(main())
