r"""Faults on purpose, as a user meets them: what each prints, its exit status, what is on disk.

Runs the real command lines on a small CPU setting (64x64 LFW faces from
``--data_dir``) and prints the markdown table of docs/reliability.md:

  python scripts/reliability_probes.py --data_dir=../shared/data > /tmp/probes.md

Each probe's line is the last line the command printed (the one-line error,
or the resume line); the disk column is checked by the script, not assumed.
Faults a command line cannot cause by itself (a kill during a save, a full
disk) are injected by tests/fault_runner.py.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

UMASK = 0o022
TMP = ""  # the probes' temporary folder, shown as $TMP in the table
ROWS: list[tuple[str, str, str, str]] = []  # (probe, line, exit status, on disk)


def flags(data_dir: Path, workdir: Path, cache: Path, *extra: str) -> list[str]:
  return ["--config=configs/lfw_cae.py:runlocal", f"--workdir={workdir}",
          f"--config.data.dir={data_dir}", f"--config.data.cache_dir={cache}",
          "--config.data.download=False", "--config.data.resize=64", "--config.data.crop=64",
          "--config.data.split.train=64", "--config.data.split.val=8",
          "--config.data.split.test=8", "--config.train.num_epochs=3",
          "--config.train.seconds_per_call=0.5", "--config.train.eval_batch_size=8",
          "--config.train.num_samples=2", *extra]


def env(fault: str | None = None) -> dict[str, str]:
  out = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  out.pop("JAX_DAE_FAULT", None)
  if fault:
    out["JAX_DAE_FAULT"] = fault
  return out


def command(args: list[str], fault: str | None = None, module: str = "jax_dae.main") -> list[str]:
  if fault:
    return [sys.executable, str(ROOT / "tests" / "fault_runner.py"), *args]
  return [sys.executable, "-m", module, *args]


def run(args, fault=None, module="jax_dae.main") -> subprocess.CompletedProcess:
  return subprocess.run(command(args, fault, module), cwd=ROOT, env=env(fault),
                        capture_output=True, text=True, timeout=900)


def last_line(text: str, pattern: str | None = None) -> str:
  lines = [ln.strip() for ln in re.split(r"[\r\n]", text) if ln.strip()]
  if pattern:
    lines = [ln for ln in lines if re.search(pattern, ln)] or lines
  line = lines[-1] if lines else ""
  return re.sub(r"^[IWE]\d{4} [\d:.]+ +\d+ \S+\] ", "", line)  # absl's prefix


def steps_on_disk(workdir: Path) -> str:
  latest = workdir / "checkpoints" / "latest"
  steps = sorted(int(p.name) for p in latest.glob("[0-9]*")) if latest.is_dir() else []
  tmp = list(workdir.rglob("*orbax-checkpoint-tmp*"))
  return (f"checkpoints {steps}" if steps else "no checkpoint") + (
      f", {len(tmp)} temporary folder(s)" if tmp else "") + (
      ", results.json" if (workdir / "results.json").exists() else "")


def add(probe: str, result: subprocess.CompletedProcess | None, disk: str, *,
        pattern: str | None = None, line: str | None = None, status: int | None = None) -> None:
  line = line if line is not None else last_line(result.stderr + result.stdout, pattern)
  line = line.replace(TMP, "$TMP") if TMP else line
  status = status if status is not None else result.returncode
  ROWS.append((probe, line.replace("|", "\\|"), str(status), disk))
  print(f"[{len(ROWS)}] {probe}: exit {status}; {line[:160]}", file=sys.stderr, flush=True)


def signal_probe(data_dir, workdir, cache, signum) -> None:
  proc = subprocess.Popen(command(flags(data_dir, workdir, cache)), cwd=ROOT, env=env(),
                          stderr=subprocess.PIPE, text=True)
  seen = ""
  while not re.search(r"[1-9]\d*/\d+ \[[^]]*\dimg/s", seen):
    chunk = proc.stderr.read(1)
    if not chunk:
      break
    seen += chunk
  proc.send_signal(signum)
  sent = time.time()
  _, rest = proc.communicate(timeout=120)
  name = signal.Signals(signum).name
  add(f"{name} after the first progress line (stopped {time.time() - sent:.1f} s later)",
      None, steps_on_disk(workdir), line=last_line(seen + rest), status=proc.returncode)
  again = run(flags(data_dir, workdir, cache))
  add(f"the same command again after {name}", again, steps_on_disk(workdir),
      pattern="Resuming from step")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data_dir", type=Path, default=ROOT.parent / "shared" / "data")
  args = p.parse_args()
  os.umask(UMASK)  # inherited by every command below
  data_dir = args.data_dir.resolve()
  global TMP
  tmp = Path(tempfile.mkdtemp(prefix="jax_dae_probes_"))
  TMP = str(tmp)
  cache = tmp / "cache"

  signal_probe(data_dir, tmp / "sigint", cache, signal.SIGINT)
  signal_probe(data_dir, tmp / "sigterm", cache, signal.SIGTERM)

  killed = tmp / "killed"
  result = run(flags(data_dir, killed, cache), fault="save:2")
  add("SIGKILL while the 2nd checkpoint is written (the 1st on disk)", result,
      steps_on_disk(killed), line="(killed)")
  result = run(flags(data_dir, killed, cache))
  add("the same command again after SIGKILL", result, steps_on_disk(killed),
      pattern="Resuming from step")

  # Damaged newest checkpoint: array data removed from the newest step.
  damaged = tmp / "damaged"
  shutil.copytree(tmp / "sigint", damaged)
  newest = max((damaged / "checkpoints" / "latest").glob("[0-9]*"), key=lambda q: int(q.name))
  data_files = [f for f in newest.rglob("*") if f.is_file() and (
      "ocdbt.process_" in str(f) or f.parent.name == "d")]
  for path in data_files:  # the arrays' bytes; the metadata stays readable
    path.unlink()
  result = run(flags(data_dir, damaged, cache, "--config.train.num_epochs=4"))
  add(f"newest checkpoint ({newest.name}) damaged on disk, rerun with one more epoch", result,
      steps_on_disk(damaged), pattern="damaged|Replacing")
  result = run(flags(data_dir, damaged, cache, "--config.train.num_epochs=4"))
  add("the same command once more (nothing left to train)", result, steps_on_disk(damaged),
      pattern="Resuming from step")

  before = steps_on_disk(tmp / "sigint")
  result = run(flags(data_dir, tmp / "sigint", cache, "--config.model.name=TinyResCAE"))
  add("rerun with another model", result, steps_on_disk(tmp / "sigint") +
      (" (untouched)" if steps_on_disk(tmp / "sigint") == before else " (CHANGED)"))
  result = run(flags(data_dir, tmp / "sigint", cache, "--config.model.name=TinyResCAE",
                     "--config.train.allow_config_change=True"))
  add("the same with --config.train.allow_config_change=True", result,
      steps_on_disk(tmp / "sigint"))
  result = run(flags(data_dir, tmp / "sigint", cache, "--config.train.batch_size=16",
                     "--config.train.num_epochs=6"))
  add("rerun with batch size 8 -> 16 and epochs 3 -> 6", result, steps_on_disk(tmp / "sigint"))

  # The library's Checkpointer: an optimizer chain other than the saved one.
  code = ("import jax, optax, sys; from configs import lfw_cae; "
          "from jax_dae import checkpoint, models, steps\n"
          "c = lfw_cae.get_config('runlocal'); m = models.from_config(c)\n"
          "s = steps.init_state(m, optax.sgd(0.1), (64, 64, 3), jax.random.key(0))\n"
          "checkpoint.Checkpointer(sys.argv[1]).restore_latest(s)\n")
  result = subprocess.run([sys.executable, "-c", code, str(tmp / "sigint" / "checkpoints")],
                          cwd=ROOT, env=env(), capture_output=True, text=True)
  add("library: Checkpointer.restore_latest with another optimizer chain (SGD for Adam)",
      result, steps_on_disk(tmp / "sigint"), pattern="MismatchError")

  code = ("import jax.numpy as jnp, sys; from jax_dae import checkpoint\n"
          "checkpoint.Checkpointer(sys.argv[1]).save(7, {'w': jnp.ones(3)})\n")
  result = subprocess.run([sys.executable, "-c", code, str(tmp / "noclose")], cwd=ROOT,
                          env=env(), capture_output=True, text=True)
  readable = subprocess.run(
      [sys.executable, "-c", "import sys, jax.numpy as jnp; from jax_dae import checkpoint; "
       "print(checkpoint.Checkpointer(sys.argv[1]).restore_latest({'w': jnp.zeros(3)})['w'])",
       str(tmp / "noclose")], cwd=ROOT, env=env(), capture_output=True, text=True).stdout.strip()
  add("library: Checkpointer.save() then exit without close()", result,
      f"step 7 restores as {readable}", line="(nothing printed)" if not result.stderr.strip()
      else None)

  busy = tmp / "busy"
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from jax_dae import workdir_lock\n"
       "with workdir_lock.hold(sys.argv[1]):\n  print('held', flush=True); time.sleep(60)",
       str(busy)], cwd=ROOT, env=env(), stdout=subprocess.PIPE, text=True)
  holder.stdout.readline()
  result = run(flags(data_dir, busy, cache))
  holder.kill()
  add("a second run on a workdir in use", result, steps_on_disk(busy))

  leftover = tmp / "leftover"
  shutil.copytree(tmp / "killed", leftover)
  (leftover / "checkpoints" / "latest" / "99.orbax-checkpoint-tmp-1").mkdir()
  result = run(flags(data_dir, leftover, cache))
  add("a temporary checkpoint folder left by a crash", result, steps_on_disk(leftover))

  full = tmp / "full"
  result = run(flags(data_dir, full, cache), fault="enospc:2")
  add("disk full at the 2nd checkpoint save", result, steps_on_disk(full))
  result = run(flags(data_dir, full, cache))
  add("the same command again after the disk-full stop", result, steps_on_disk(full),
      pattern="Resuming from step")

  nan = tmp / "nan"
  result = run(flags(data_dir, nan, cache), fault="nan:11")
  add("loss becomes NaN at step 11 (mid epoch 2)", result, steps_on_disk(nan))

  bad_inputs = [
      ("misspelled field --config.train.batchsize=8", ["--config.train.batchsize=8"]),
      ("--config.optimizer.learning_rate=nan", ["--config.optimizer.learning_rate=nan"]),
      ("a config file that does not exist", ["--config=configs/nope.py"]),
      ("a bad :arg (runlocl)", ["--config=configs/lfw_cae.py:runlocl"]),
  ]
  for probe, extra in bad_inputs:
    result = run([*flags(data_dir, tmp / "bad", cache), *extra])
    add(probe, result, steps_on_disk(tmp / "bad"))
  truncated = tmp / "truncated"
  truncated.mkdir()
  with open(data_dir / "lfw-deepfunneled.tgz", "rb") as src:
    (truncated / "lfw-deepfunneled.tgz").write_bytes(src.read(2 << 20))
  result = run(flags(truncated, tmp / "trunc_run", tmp / "cache2"))
  add("truncated lfw-deepfunneled.tgz (first 2 MB)", result, steps_on_disk(tmp / "trunc_run"))
  for module in ("jax_dae.main", "jax_dae.denoise"):
    result = run(["--help"], module=module)
    add(f"python -m {module} --help", result, "-", line=f"({len(result.stdout.splitlines())} "
        "lines of usage on stdout)")
  mode = oct((tmp / "sigint" / "results.json").stat().st_mode & 0o777)
  add(f"output files under umask {oct(UMASK)}", None,
      f"results.json mode {mode}", line="-", status=0)

  print("| probe | what it prints (last line) | exit | on disk after |")
  print("|---|---|---|---|")
  for row in ROWS:
    print("| " + " | ".join(row) + " |")
  shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
  main()
