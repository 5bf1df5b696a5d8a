"""scripts/bench_layers.py times rewrites of the CAE's convolutions: each is the same function."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_layers  # noqa: E402


def test_every_rewrite_equals_its_reference_in_value_and_gradients(capsys):
  # Heights and widths divided by 7 (112 -> 16): the identities do not depend on size.
  bench_layers.check(batch=1, shrink=7)
  checked = capsys.readouterr().out.count("equal to the reference")
  assert checked == sum(len(variants) for *_, variants in bench_layers.LAYERS.values())
