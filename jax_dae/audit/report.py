"""The audit's report: ``audit.json`` (everything), ``audit.md`` (tables) and plots.

* ``audit.png``: rank-1 identification of every row with its 95% interval;
* ``sweep.png`` (with ``--sweep``): rank-1 against obfuscation strength, for
  the corrupted probes and each restorer, one panel per ladder, the clean
  rank-1 as a line;
* ``examples.png``: a few probes as the recogniser sees them (150x150 chips),
  clean, obfuscated and restored.
"""

from __future__ import annotations

import json
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jax_dae.audit import attack as attack_lib

_METRICS = (("rank1", "rank-1"), ("rank5", "rank-5"), ("auc", "ROC AUC"))


def _cell(metric: dict, digits: int = 3) -> str:
  value, ci = metric["value"], metric.get("ci")
  text = f"{value:.{digits}f}"
  if ci:
    text += f" [{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"
  return text


def table(rows: Sequence[dict]) -> str:
  """A markdown table of rows (``Row.to_json()`` dicts) with 95% intervals."""
  if not rows:
    return ""
  far = rows[0]["far"]
  threshold = rows[0].get("threshold")
  head = ["probes", *(name for _, name in _METRICS), f"TAR@FAR={far:g}"]
  if threshold is not None:
    head += [f"TAR@d<{threshold:g}", f"FAR@d<{threshold:g}"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for row in rows:
    cells = [row["label"]]
    cells += [_cell(row[key], 4 if key == "auc" else 3) for key, _ in _METRICS]
    cells.append(_cell(row["tar_at_far"]))
    if threshold is not None:
      cells += [_cell(row["tar_at_threshold"]), _cell(row["far_at_threshold"], 4)]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def sweep_table(sweep: Sequence[dict]) -> str:
  """Rank-1 (95% interval) per rung: corrupted and each restorer in columns."""
  if not sweep:
    return ""
  models = sorted({r["model"] for r in sweep if r["kind"] == "restored"})
  head = ["ladder", "strength", "corruption", "corrupted", *(f"restored by {m}" for m in models)]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  cells: dict[tuple[str, str], dict[str, str]] = {}
  for r in sweep:
    key = (r["family"], r["corruption"])
    cells.setdefault(key, {"strength": f"{r['strength']:g}"})
    cells[key][r["model"] or "corrupted"] = _cell(r["rank1"])
  for (family, spec), c in cells.items():
    row = [family, c["strength"], f"`{spec}`", c.get("corrupted", ""),
           *(c.get(m, "") for m in models)]
    lines.append("| " + " | ".join(row) + " |")
  return "\n".join(lines)


def markdown(report: dict) -> str:
  """``audit.md``: what was measured, how, and the tables."""
  p = report["protocol"]
  lines = [
      "# Privacy audit: does restoring an obfuscated face give its identity back?", "",
      f"Command: `{report['command']}`", "",
      "## Runs", "",
  ]
  for run in report["runs"]:
    lines.append(f"- `{run['label']}`: {run['model']} at step {run['step']} ({run['checkpoint']} "
                 f"checkpoint) from `{run['workdir']}`, trained on `{run['corruption']}`")
  d = report["data"]
  lines += [
      "", "## Protocol", "",
      f"Data: LFW ({d['variant']}), resize {d['resize']}, centre crop {d['crop']}, "
      f"{d['mode']}; the run's test split ({d['test_images']} images, split seed "
      f"{d['split_seed']}).",
      f"Recogniser: {report['embedder']}.",
      f"Probes: {p['probes']} test images of {p['probe_people']} people who have another photo "
      f"in LFW (of {p['probe_candidates']} such test images"
      + (", a seeded subset" if p["probes"] < p["probe_candidates"] else "") + ").",
      f"Gallery: {p['gallery_size']} clean photos, one per person: {p['gallery_mates']} mates "
      f"(another photo of a probe person, never a probe) and {p['gallery_distractors']} "
      "distractors (people with no probe; every single-photo person is only ever a distractor).",
      f"Pairs: {p['genuine_pairs']} genuine, {p['impostor_pairs']} impostor (each probe against "
      "every other gallery entry). Distances are Euclidean between embeddings; a rank counts "
      "ties against the probe.",
      f"Intervals: 95% percentile bootstrap over probes ({report['bootstrap']} resamples; the "
      "gallery is fixed). Seed {}.".format(p["seed"]),
      "", "## Results", "", table(report["rows"]), "",
  ]
  if report.get("sweep"):
    lines += ["## Sweep (rank-1)", "", sweep_table(report["sweep"]), "",
              "![sweep](sweep.png)", ""]
  t = report["timings"]
  lines += ["## Time", "",
            f"{report['seconds']:.0f} s in all on {report['machine']}: "
            + ", ".join(f"{k} {v:.0f} s" for k, v in t.items()) + ".", ""]
  return "\n".join(lines)


def plot_rows(rows: Sequence[dict], path: Path) -> None:
  """Horizontal bars of rank-1 with 95% intervals."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  labels = [r["label"] for r in rows]
  values = np.array([r["rank1"]["value"] for r in rows])
  ci = [r["rank1"]["ci"] or [v, v] for r, v in zip(rows, values, strict=True)]
  err = np.array([[v - lo for (lo, _), v in zip(ci, values, strict=True)],
                  [hi - v for (_, hi), v in zip(ci, values, strict=True)]])
  colors = {"clean": "tab:green", "corrupted": "tab:red", "restored": "tab:blue"}
  fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
  ax.barh(range(len(rows)), values, xerr=err, color=[colors[r["kind"]] for r in rows],
          capsize=3)
  ax.set_yticks(range(len(rows)), labels, fontsize=8)
  ax.invert_yaxis()
  ax.set_xlim(0, 1)
  ax.set_xlabel("rank-1 identification (95% bootstrap interval)")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_sweep(sweep: Sequence[dict], clean_rank1: float, path: Path) -> None:
  """Rank-1 against strength, one panel per ladder."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  families = list(dict.fromkeys(r["family"] for r in sweep))
  fig, axes = plt.subplots(1, len(families), figsize=(5.5 * len(families), 4), squeeze=False)
  xlabel = {"gaussian_blur": "blur sigma (px; kernel 2*ceil(sigma)+1)",
            "pixelate": "pixelation block (px)"}
  for ax, family in zip(axes[0], families, strict=True):
    rows = [r for r in sweep if r["family"] == family]
    for line in dict.fromkeys((r["kind"], r["model"]) for r in rows):
      pts = [r for r in rows if (r["kind"], r["model"]) == line]
      x = [r["strength"] for r in pts]
      y = [r["rank1"]["value"] for r in pts]
      lo = [r["rank1"]["ci"][0] if r["rank1"]["ci"] else v for r, v in zip(pts, y, strict=True)]
      hi = [r["rank1"]["ci"][1] if r["rank1"]["ci"] else v for r, v in zip(pts, y, strict=True)]
      label = "corrupted" if line[0] == "corrupted" else f"restored by {line[1]}"
      style = "--o" if line[0] == "corrupted" else "-s"
      (handle,) = ax.plot(x, y, style, label=label, ms=4)
      ax.fill_between(x, lo, hi, color=handle.get_color(), alpha=0.15)
    ax.axhline(clean_rank1, color="tab:green", lw=1, label="clean")
    ax.set_xlabel(xlabel.get(family, "strength"))
    ax.set_ylabel("rank-1 identification")
    ax.set_ylim(0, 1)
    ax.set_title(family)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def plot_examples(panels: Sequence[tuple[str, np.ndarray]], path: Path) -> None:
  """A grid: one column per probe set, one row per probe (uint8 chips)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  num = len(panels[0][1])
  fig, axes = plt.subplots(num, len(panels), figsize=(1.6 * len(panels), 1.6 * num + 0.4),
                           squeeze=False)
  for j, (title, chips) in enumerate(panels):
    for i in range(num):
      ax = axes[i][j]
      ax.imshow(chips[i])
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(textwrap.fill(title, 24), fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write(report: dict, out_dir: str | os.PathLike) -> list[Path]:
  """Writes audit.json, audit.md and the plots into ``out_dir``; returns the paths."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = [out / "audit.json", out / "audit.md", out / "audit.png"]
  tmp = out / "audit.json.tmp"
  tmp.write_text(json.dumps(report, indent=1, default=_json_default) + "\n")
  os.replace(tmp, paths[0])
  paths[1].write_text(markdown(report))
  plot_rows(report["rows"], paths[2])
  if report.get("sweep"):
    clean = next(r for r in report["rows"] if r["kind"] == "clean")["rank1"]["value"]
    paths.append(out / "sweep.png")
    plot_sweep(report["sweep"], clean, paths[-1])
  return paths


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def rows_json(rows: Sequence[attack_lib.Row]) -> list[dict]:
  return [row.to_json() for row in rows]
