"""The command lines' errors: one line on stderr, the right exit status, no traceback.

Each bad input runs the real ``python -m jax_dae.main`` (or ``jax_dae.denoise``)
and must fail before anything compiles. The config's value checks
(``validation.validate_config``) and the permissions of written files are
tested directly.
"""

import math
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from configs import lfw_cae
from jax_dae import cli, validation

ROOT = Path(__file__).resolve().parents[1]
# absl's info and warning records ("I1205 10:32:12.614549 139902 main.py:52] ...").
_ABSL_LOG = re.compile(r"[IW]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")


def _run(module: str, *args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
      timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _error_line(result: subprocess.CompletedProcess, status: int) -> str:
  """The one line of stderr, checked to be an ``error:`` line, for a run that exited ``status``."""
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert result.returncode == status, result.stderr[-3000:]
  assert len(lines) == 1, result.stderr[-3000:]
  assert lines[0].startswith("error: "), lines[0]
  return lines[0]


def _main(*args: str) -> subprocess.CompletedProcess:
  return _run("jax_dae.main", *args)


# ---------------------------------------------------------------------------
# Flag and config errors: exit 2 before anything runs.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("given, meant", [
    ("config.train.batchsize", "config.train.batch_size"),
    ("config.trian.batch_size", "config.train.batch_size"),
    ("config.optimizer.learningrate", "config.optimizer.learning_rate"),
])
def test_misspelled_config_field_suggests_the_right_name(given, meant, tmp_path):
  line = _error_line(_main("--config=configs/lfw_cae.py", f"--workdir={tmp_path}",
                           f"--{given}=8"), 2)
  assert line.startswith(f"error: unknown config field {given}; did you mean {meant}?"), line
  assert "--list_fields" in line


def test_missing_config_file_is_named_with_the_configs_there(tmp_path):
  line = _error_line(_main("--config=configs/nope.py", f"--workdir={tmp_path}"), 2)
  assert line.startswith("error: config file configs/nope.py not found;"), line
  assert "lfw_cae.py" in line and "mnist_dae.py" in line
  # A near miss is named.
  line = _error_line(_main("--config=configs/lfw_cea.py", f"--workdir={tmp_path}"), 2)
  assert "did you mean configs/lfw_cae.py?" in line


def test_bad_config_argument_suggests_the_allowed_one(tmp_path):
  line = _error_line(_main("--config=configs/lfw_cae.py:runlocl", f"--workdir={tmp_path}"), 2)
  assert "configs/lfw_cae.py:runlocl" in line
  assert "Unknown config argument 'runlocl'; did you mean 'runlocal'?" in line


@pytest.mark.parametrize("value", ["nan", "inf", "-1.0"])
def test_bad_learning_rate_on_the_command_line_is_refused(value, tmp_path):
  line = _error_line(_main("--config=configs/lfw_cae.py", f"--workdir={tmp_path}",
                           f"--config.optimizer.learning_rate={value}"), 2)
  assert "config.optimizer.learning_rate" in line
  assert not any(tmp_path.iterdir())  # Refused before the run wrote anything.


def test_flag_value_and_missing_flag_errors_are_one_line(tmp_path):
  line = _error_line(_main("--config=configs/lfw_cae.py", f"--workdir={tmp_path}",
                           "--config.train.batch_size=abc"), 2)
  assert "--config.train.batch_size=abc" in line
  line = _error_line(_main("--config=configs/lfw_cae.py"), 2)
  assert "--workdir is required" in line
  line = _error_line(_run("jax_dae.denoise", "--workdir=x", "--out_dir=y", "--batch_size=abc",
                          "a.png"), 2)
  assert "--batch_size=abc" in line


def test_verbose_adds_the_traceback_and_keeps_the_status(tmp_path):
  result = _main("--config=configs/lfw_cae.py", f"--workdir={tmp_path}",
                 "--config.train.batchsize=8", "--verbose")
  assert result.returncode == 2
  assert "Traceback" in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      "error: unknown config field config.train.batchsize")


# ---------------------------------------------------------------------------
# Errors of the run: exit 1.
# ---------------------------------------------------------------------------


def test_truncated_archive_is_named_with_how_to_replace_it(shared_data, tmp_path):
  data_dir = tmp_path / "data"
  data_dir.mkdir()
  archive = data_dir / "lfw-deepfunneled.tgz"
  with open(shared_data / "lfw-deepfunneled.tgz", "rb") as f:
    archive.write_bytes(f.read(2 << 20))
  result = _main("--config=configs/lfw_cae.py:runlocal", f"--workdir={tmp_path / 'run'}",
                 f"--config.data.dir={data_dir}", f"--config.data.cache_dir={tmp_path / 'cache'}",
                 "--config.data.download=False", "--compilation_cache=")
  assert result.returncode == 1, result.stderr[-3000:]
  # The run's own log records (its devices, a CPU warning) may come first;
  # then the error, and nothing else.
  lines = [line for line in result.stderr.splitlines()
           if line.strip() and not _ABSL_LOG.match(line)]
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  line = lines[0]
  assert result.stderr.strip().splitlines()[-1] == line
  assert line.startswith(f"error: {archive} is damaged or truncated"), line
  assert "download it again" in line and "sha256" in line


def test_run_errors_are_one_line_and_interrupts_pass(capsys):
  with pytest.raises(SystemExit) as exit_info:
    with cli.one_line_errors((RuntimeError, OSError), status=1):
      raise RuntimeError("RESOURCE_EXHAUSTED: out of memory\n  long details")
  assert exit_info.value.code == 1
  assert capsys.readouterr().err == (
      "error: RESOURCE_EXHAUSTED: out of memory (--verbose shows the rest)\n")
  with pytest.raises(KeyboardInterrupt):
    with cli.one_line_errors((RuntimeError, OSError), status=1):
      raise KeyboardInterrupt


# ---------------------------------------------------------------------------
# Help and --list_fields: exit 0.
# ---------------------------------------------------------------------------


def test_help_is_a_short_usage_and_exits_0():
  result = _main("--help")
  assert result.returncode == 0, result.stderr[-3000:]
  for needed in ("python -m jax_dae.main", "--config=", "--workdir=", "--list_fields",
                 "--verbose", "Configs in configs/", "lfw_cae"):
    assert needed in result.stdout, needed
  assert "kept short on purpose" not in result.stdout  # The module docstring is for developers.
  assert len(result.stdout.splitlines()) < 30
  result = _run("jax_dae.denoise", "--help")
  assert result.returncode == 0, result.stderr[-3000:]
  for needed in ("python -m jax_dae.denoise", "--workdir=", "--out_dir=", "--verbose"):
    assert needed in result.stdout, needed


def test_list_fields_prints_every_field_with_overrides_applied():
  result = _main("--config=configs/lfw_cae.py:runlocal", "--list_fields",
                 "--config.train.batch_size=16")
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stderr.strip() == ""
  lines = result.stdout.splitlines()
  assert "config.train.batch_size = 16" in lines
  assert "config.model.name = 'SmallCAE'" in lines
  assert "config.data.split.train = 2048" in lines
  expected = validation.fields(lfw_cae.get_config("runlocal"))
  assert [line.split(" = ")[0] for line in lines] == list(expected)


# ---------------------------------------------------------------------------
# validation.validate_config.
# ---------------------------------------------------------------------------


def _with(field: str, value):
  """lfw_cae's config with ``field`` (dotted, below ``config``) set to ``value``."""
  config = lfw_cae.get_config()
  parent, _, leaf = field.rpartition(".")
  holder = config.get(parent) if parent else config
  # Replace the field, so that a value of another type can be set.
  with config.ignore_type():
    setattr(holder, leaf, value)
  return config


@pytest.mark.parametrize("field, value, message", [
    ("optimizer.learning_rate", math.nan, "config.optimizer.learning_rate=nan is not a finite"),
    ("optimizer.learning_rate", math.inf, "config.optimizer.learning_rate=inf is not a finite"),
    ("optimizer.weight_decay", -math.inf, "config.optimizer.weight_decay=-inf is not a finite"),
    ("data.split.val", math.nan, "config.data.split.val=nan is not a finite"),
    ("train.seconds_per_call", math.nan, "config.train.seconds_per_call=nan is not a finite"),
    ("optimizer.learning_rate", 0.0, "config.optimizer.learning_rate must be > 0"),
    ("optimizer.weight_decay", -1e-5, "config.optimizer.weight_decay must be >= 0"),
    ("optimizer.momentum", -0.9, "config.optimizer.momentum must be >= 0"),
    ("optimizer.decay_rate", 0.0, "config.optimizer.decay_rate must be in (0, 1]"),
    ("optimizer.decay_rate", 1.5, "config.optimizer.decay_rate must be in (0, 1]"),
    ("data.device_memory_fraction", 0.0, "config.data.device_memory_fraction=0.0 must be in"),
    ("data.device_memory_fraction", 1.5, "config.data.device_memory_fraction=1.5 must be in"),
    ("data.prefetch", 0, "config.data.prefetch=0 must be an integer >= 1"),
    ("data.placement", "gpu", "config.data.placement='gpu' is unknown"),
    ("train.seconds_per_call", 0.0, "config.train.seconds_per_call=0.0 must be > 0"),
    ("train.checkpoint_every_s", -1.0, "config.train.checkpoint_every_s=-1.0 must be >= 0"),
    ("train.restart", "yes", "config.train.restart='yes' must be True or False"),
    ("train.allow_config_change", 1, "config.train.allow_config_change=1 must be True or False"),
    ("train.batch_size", 0, "config.train.batch_size=0 must be an integer >= 1"),
    ("optimizer.name", "sgdd", "config.optimizer.name='sgdd' is unknown; allowed: adam"),
])
def test_validate_config_names_the_bad_field(field, value, message):
  with pytest.raises(ValueError) as info:
    validation.validate_config(_with(field, value))
  assert message in str(info.value)
  assert "\n" not in str(info.value)


def test_decay_steps_is_checked_only_when_the_rate_decays():
  config = _with("optimizer.decay_steps", 0)
  validation.validate_config(config)  # decay_rate 1.0: decay_steps unused.
  config.optimizer.decay_rate = 0.5
  with pytest.raises(ValueError, match=r"config\.optimizer\.decay_steps=0 must be an integer"):
    validation.validate_config(config)


def test_validate_config_accepts_configs_without_the_newer_fields():
  config = lfw_cae.get_config()
  for key in ("seconds_per_call", "checkpoint_every_s", "restart", "allow_config_change"):
    if key in config.train:
      del config.train[key]
  validation.validate_config(config)
  config.train.checkpoint_every_s = 0.0  # 0 = only at the end of each epoch.
  validation.validate_config(config)


# ---------------------------------------------------------------------------
# Written files honour the umask.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_get_the_mode_the_umask_gives(umask, mode, tmp_path):
  script = (
      "import sys; from PIL import Image; from jax_dae import plots, writers\n"
      "writers.write_json(sys.argv[1] + '/config.json', {'a': 1})\n"
      "plots.save_png(Image.new('RGB', (4, 4)), sys.argv[1] + '/grid.png')\n")
  subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=ROOT, check=True,
                 env={**os.environ, "JAX_PLATFORMS": "cpu"}, preexec_fn=lambda: os.umask(umask))
  for name in ("config.json", "grid.png"):
    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name
