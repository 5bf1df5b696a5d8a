r"""Deliberate breakages: does the test suite notice each one?

Copies the checkout to a temporary folder, applies one breakage at a time to
the copy (never to the checkout), runs the tests that should catch it with
``pytest -x``, and reports the first failing test of each. A breakage whose
tests all pass is a hole in the suite: the script exits 1.

  python scripts/mutation_check.py                # every breakage
  python scripts/mutation_check.py --only swap_clean_noisy,no_checkpoint
  python scripts/mutation_check.py --list

Each breakage is a literal replacement in one file; if the text is no longer
there (the code moved), the script says so and fails rather than testing an
unbroken copy. Run it before you stop when you touch the trainer.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Breakage:
  name: str
  what: str
  file: str
  old: str
  new: str
  tests: tuple[str, ...]  # pytest node ids or files, run in this order with -x


BREAKAGES = (
    Breakage(
        "swap_clean_noisy", "the model sees the clean image and learns to output the corrupted",
        "jax_dae/steps.py",
        "    noisy = corrupt(corruptions.example_keys(corrupt_key, index), clean)\n",
        "    noisy, clean = clean, corrupt(corruptions.example_keys(corrupt_key, index), clean)\n",
        ("tests/test_objective.py", "tests/test_train.py")),
    Breakage(
        "no_corruption", "the training input is not corrupted",
        "jax_dae/steps.py",
        "    noisy = corrupt(corruptions.example_keys(corrupt_key, index), clean)\n",
        "    noisy = clean\n",
        ("tests/test_objective.py", "tests/test_train.py")),
    Breakage(
        "gradients_averaged_twice", "gradients averaged over the data axis, then divided again",
        "jax_dae/steps.py",
        "      g = jax.lax.pmean(g, per_device)\n",
        "      g = jax.lax.pmean(g, per_device) / jax.lax.axis_size(per_device)\n",
        ("tests/test_api.py",)),
    Breakage(
        "no_weight_decay", "Adam's coupled L2 term dropped",
        "jax_dae/optimizers.py",
        "    return optax.chain(optax.add_decayed_weights(opt.weight_decay), optax.adam(lr))\n",
        "    return optax.chain(optax.adam(lr))\n",
        ("tests/test_optimizers.py",)),
    Breakage(
        "no_batchnorm_update", "BatchNorm running statistics never updated",
        "jax_dae/steps.py",
        "    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)\n",
        "    state = state.apply_gradients(grads=grads, batch_stats=state.batch_stats)\n",
        ("tests/test_train.py", "tests/test_api.py")),
    Breakage(
        "no_checkpoint", "checkpoint saves write nothing",
        "jax_dae/checkpoint.py",
        "    manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics or None, "
        "force=True)\n",
        "    pass\n",
        ("tests/test_checkpoint.py",)),
    Breakage(
        "shifted_test_split", "every split cut one image later (the test split overlaps another)",
        "jax_dae/data/splits.py",
        "    out[split] = np.sort(order[start : start + n])\n",
        "    out[split] = np.sort(order[start + 1 : start + n + 1])\n",
        ("tests/test_lfw_data.py", "tests/test_data_sources.py")),
    Breakage(
        "no_resume", "a rerun ignores its checkpoints and starts from step 0",
        "jax_dae/train.py",
        "    state = ckpt.restore_latest(state)\n",
        "    pass\n",
        ("tests/test_reliability.py",)),
)


def copy_checkout(target: Path) -> None:
  """The tracked and untracked (not ignored) files, plus the XLA cache of the tests."""
  listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                          check=True, capture_output=True).stdout.decode().split("\0")
  for name in filter(None, listed):
    source = ROOT / name
    if source.is_file():
      (target / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(source, target / name)
  cache = ROOT / ".pytest_cache" / "xla"
  if cache.is_dir():  # Compiled functions: the copy's tests need not compile again.
    shutil.copytree(cache, target / ".pytest_cache" / "xla")


def first_failure(output: str) -> str | None:
  match = re.search(r"^(?:FAILED|ERROR) (\S+)", output, re.MULTILINE)
  return match.group(1) if match else None


def check(breakage: Breakage, copy: Path, timeout: int) -> tuple[str, str]:
  """(outcome, detail): ``caught``/``missed``/``stale``, and the test or the reason."""
  path = copy / breakage.file
  original = path.read_text()
  if original.count(breakage.old) != 1:
    return "stale", f"{breakage.file} no longer holds the text to break (once)"
  path.write_text(original.replace(breakage.old, breakage.new))
  try:
    # The copy has no ../shared beside it: point the tests at the real data and
    # make them fail, not skip, without it.
    env = dict(os.environ, PYTHONPATH=str(copy), JAX_DAE_REQUIRE_DATA="1",
               JAX_DAE_SHARED_DATA=os.environ.get("JAX_DAE_SHARED_DATA",
                                                  str(ROOT.parent / "shared" / "data")))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly", "-n", "0",
         *breakage.tests], cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return "missed", f"tests ran past {timeout} s"
  finally:
    path.write_text(original)
  if result.returncode == 0:
    return "missed", "all tests passed"
  return "caught", first_failure(result.stdout) or f"pytest exit {result.returncode}"


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--only", default="", help="comma-separated breakage names")
  p.add_argument("--list", action="store_true", help="list the breakages and exit")
  p.add_argument("--timeout", type=int, default=900, help="seconds per breakage")
  args = p.parse_args()
  chosen = [b for b in BREAKAGES if not args.only or b.name in args.only.split(",")]
  if args.list or not chosen:
    for b in BREAKAGES:
      print(f"{b.name:26s} {b.what}  [{b.file}]")
    return 0 if args.list else 2
  with tempfile.TemporaryDirectory(prefix="jax_dae_mutation_") as tmp:
    copy = Path(tmp)
    copy_checkout(copy)
    imported = subprocess.run([sys.executable, "-c", "import jax_dae; print(jax_dae.__file__)"],
                              cwd=copy, env=dict(os.environ, PYTHONPATH=str(copy)),
                              capture_output=True, text=True, check=True).stdout.strip()
    if not imported.startswith(tmp):
      sys.exit(f"error: the copy imports jax_dae from {imported}, not from the copy")
    missed = 0
    print(f"{'breakage':26s} {'outcome':8s} {'s':>5s}  caught by")
    for b in chosen:
      start = time.time()
      outcome, detail = check(b, copy, args.timeout)
      missed += outcome != "caught"
      print(f"{b.name:26s} {outcome:8s} {time.time() - start:5.0f}  {detail}", flush=True)
  print(f"{len(chosen) - missed} of {len(chosen)} breakages caught.")
  return 1 if missed else 0


if __name__ == "__main__":
  sys.exit(main())
