"""The obfuscation sweep: identification against the strength of blur and pixelation.

Two ladders, in pixels of the run's crops:

* Gaussian blur: sigma in ``BLUR_SIGMAS`` with kernel ``2 * ceil(sigma) + 1``
  (seed 000's kernel 9 at sigma 4 is on it);
* pixelation: square blocks of every size in ``[2, crop / 4]`` that divides
  the crop (112: 2, 4, 7, 8, 14, 16, 28; seed 000's block 8 is on it).

Every rung is scored corrupted, and restored by each run whose training
corruption is of that family (a run trained on blur restores the blur ladder;
``family_of``). Where restored rank-1 stays near the corrupted one, the
restorer gives no identity back at that strength.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence

from jax_dae.audit import attack as attack_lib

BLUR_SIGMAS = (0.5, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0)
FAMILIES = ("gaussian_blur", "pixelate")


def blur_spec(sigma: float) -> str:
  kernel = 2 * math.ceil(sigma) + 1
  return f"gaussian_blur(kernel={kernel},sigma={sigma:g})"


def pixelate_blocks(crop: int) -> list[int]:
  """Block sizes of the pixelation ladder for square crops of side ``crop``."""
  return [b for b in range(2, crop // 4 + 1) if crop % b == 0]


def ladders(crop: int) -> dict[str, list[tuple[float, str]]]:
  """``{family: [(strength, spec), ...]}``: sigma for blur, block side for pixelation."""
  return {
      "gaussian_blur": [(s, blur_spec(s)) for s in BLUR_SIGMAS],
      "pixelate": [(float(b), f"pixelate(block={b})") for b in pixelate_blocks(crop)],
  }


def family_of(spec: str) -> str | None:
  """The ladder a corruption spec belongs to: its single op's name if it is one of ``FAMILIES``."""
  try:
    node = ast.parse(spec.strip(), mode="eval").body
  except SyntaxError:
    return None
  name = node.func.id if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) else None
  return name if name in FAMILIES else None


def run(attack: attack_lib.Attack, crop: int,
        restorers: Sequence[tuple[str, attack_lib.Restorer, str]]) -> list[dict]:
  """Scores every rung of the ladders.

  Args:
    attack: the ``Attack`` (its clean row is not recomputed here).
    crop: side of the square crops.
    restorers: ``(label, restorer, training corruption spec)``.

  Returns:
    One dict per row: ``family``, ``strength``, and ``Row.to_json()``'s fields.
  """
  out = []
  for family, ladder in ladders(crop).items():
    theirs = [(label, r) for label, r, spec in restorers if family_of(spec) == family]
    for strength, spec in ladder:
      rows = [attack.corrupt(spec)]
      rows += [attack.restore(spec, r, label) for label, r in theirs]
      for row in rows:
        attack_lib.log_row(row)
        out.append({"family": family, "strength": strength, **row.to_json()})
  return out
