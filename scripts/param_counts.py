r"""Parameter counts of every registered model against the seeds' numbers.

Usage::

  python scripts/param_counts.py              # every registered model
  python scripts/param_counts.py DualAE GrazAE_net1

Each model is sized at its family's natural input (CAE family 112x112x3,
Graz 64x64x3, dual 100x100x1, MNIST 28x28x1) with ``jax.eval_shape``, so
nothing is allocated and the whole table takes seconds on a CPU. "params" are
Flax's ``params`` (Keras's trainable parameters); "BN stats" are BatchNorm's
running mean and variance (Keras's non-trainable ones), so that params + BN
stats is Keras's "Total params". "seed" is the seed's published number, "diff"
is ours minus the seed's, and "latent" lists what the model sows as its
latent. docs/models.md explains every difference.
"""

from __future__ import annotations

import argparse

from jax_dae.models import inventory


def _fmt(value) -> str:
  if value is None:
    return "-"
  return f"{value:,}"


def _diff(value: int | None) -> str:
  if value is None:
    return "-"
  return "0 (exact)" if value == 0 else f"{value:+,}"


def _latents(latents: dict[str, tuple[int, ...]]) -> str:
  return ", ".join(
      f"{path.removesuffix('latent').rstrip('/') or 'latent'} {'x'.join(map(str, shape[1:]))}"
      for path, shape in latents.items()
  ) or "-"


def table(names: list[str] | None = None) -> str:
  """The inventory as a Markdown table, followed by the notes on differences.

  Args:
    names: registry names to include (all by default).

  Returns:
    The text to print.
  """
  header = ["model", "input", "params", "BN stats", "seed", "diff", "latent"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  notes = []
  for row in inventory.rows(names):
    shape = "x".join(map(str, row.input_shape)) if row.input_shape else "? (unknown family)"
    published = row.published
    cells = [row.name, shape, _fmt(row.params), _fmt(row.batch_stats),
             _fmt(published.count if published else None), _diff(row.difference),
             _latents(row.latents)]
    lines.append("| " + " | ".join(cells) + " |")
    if published is not None:
      notes.append(f"- {row.name}: {published.source}" + (f"; {published.note}" if published.note
                                                          else ""))
  return "\n".join(lines + ["", "Seed numbers:", *notes])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("names", nargs="*", help="registry names (default: all)")
  args = parser.parse_args()
  print(table(args.names or None))


if __name__ == "__main__":
  main()
