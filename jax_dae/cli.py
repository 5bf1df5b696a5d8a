"""Command-line plumbing shared by ``jax_dae.main`` and ``jax_dae.denoise``.

Errors a user can fix are one line on stderr, ``error: ...``: exit status 2
for usage and config errors (before anything runs), 1 for errors of the run
itself. ``--verbose`` also prints the traceback. ``--help`` prints a
short usage on stdout and exits 0.

Flag errors are raised while absl parses the command line, before ``main``
runs, so ``run`` gives ``absl.app.run`` a flags parser that turns them into
one line; a broken ``--config`` or a misspelled ``--config.FIELD`` is
diagnosed by loading the config file again, here, on the error path only.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import importlib.util
import logging as logging_std
import os
import re
import sys
import textwrap
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from absl import app, flags, logging

FLAGS = flags.FLAGS
flags.DEFINE_bool("verbose", False, "On an error, also print its full traceback.")

# The folder of the experiment configs in a source checkout.
CONFIGS = Path(__file__).resolve().parent.parent / "configs"
_HELP = ("--help", "-help", "--helpshort", "-helpshort", "-h", "-?")
_HELPFULL = ("--helpfull", "-helpfull")


class _QuietLibraries(logging_std.Filter):
  """Drops the INFO chatter of Orbax's internals; warnings still show."""

  def filter(self, record: logging_std.LogRecord) -> bool:
    return record.levelno >= logging_std.WARNING or "/orbax/" not in record.pathname


def fail(message: str, status: int = 2) -> NoReturn:
  """Prints ``error: message`` on stderr and exits with ``status``."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(status)


def describe(error: BaseException) -> str:
  """An exception's message on one line (its first line, when it has several)."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  if len(lines) > 1:
    return f"{lines[0]} (--verbose shows the rest)"
  return lines[0]


@contextlib.contextmanager
def one_line_errors(types: tuple[type[BaseException], ...], status: int) -> Iterator[None]:
  """Turns ``types`` raised in the block into ``error: ...`` and exit ``status``.

  With ``--verbose`` its traceback is printed first.
  """
  try:
    yield
  except types as e:
    if FLAGS.is_parsed() and FLAGS.verbose:
      traceback.print_exc()
    fail(describe(e), status)


def run(main: Callable[[list[str]], Any], *, usage: str, config_flag: str | None = None) -> None:
  """``absl.app.run(main)`` with one-line flag errors and a plain ``--help``.

  Args:
    main: the program, called with the positional arguments (``argv[0]`` first).
    usage: printed by ``--help`` (and before the flag list by ``--helpfull``).
    config_flag: the name of a ``config_flags.DEFINE_config_file`` flag, whose
      load and override errors are explained (missing file, misspelled field).
  """
  app.run(main, flags_parser=functools.partial(parse_flags, usage=usage,
                                               config_flag=config_flag))


def parse_flags(argv: Sequence[str], *, usage: str, config_flag: str | None = None) -> list[str]:
  """Parses ``argv`` into ``FLAGS``; on an error prints one line and exits 2.

  Returns:
    The positional arguments, ``argv[0]`` first (what absl passes to ``main``).
  """
  argv = list(argv)
  options = argv[1:argv.index("--")] if "--" in argv else argv[1:]
  if any(a in _HELP or a in _HELPFULL for a in options):
    print(usage.strip())
    if any(a in _HELPFULL for a in options):
      print("\nAll flags:\n")
      print(FLAGS.get_help())
    sys.exit(0)
  try:
    positional = FLAGS(argv)
    if config_flag is not None:
      # A config file that failed to load is kept as a placeholder that raises
      # on first use (ml_collections); use it now, while errors are flag errors.
      getattr(FLAGS[config_flag].value, "keys", None)
  except Exception as e:  # Config files and flag parsers raise many types.
    # FLAGS.verbose may not be parsed yet: look for it.
    if any(re.fullmatch(r"--?verbose(=(true|t|1|yes|y))?", a, re.IGNORECASE) for a in options):
      traceback.print_exc()
    fail(_flag_error(e, options, config_flag))
  return positional


def _flag_error(error: Exception, options: list[str], config_flag: str | None) -> str:
  """The one line that explains a flag error."""
  spec = _config_spec(options, config_flag) if config_flag else None
  if spec is not None:
    path, _, _ = spec.partition(":")
    if not Path(path).expanduser().is_file():
      return _missing_config(path)
    try:
      config = load_config(spec)
    except Exception as e:  # Whatever the config file raised.
      kind = "" if isinstance(e, ValueError | TypeError) else f"{type(e).__name__}: "
      return f"--{config_flag}={spec}: {kind}{describe(e)}"
    unknown = _unknown_field(config, options, config_flag, spec)
    if unknown:
      return unknown
  if isinstance(error, flags.Error):
    return describe(error)
  # The innermost exception is the one that says what went wrong.
  while error.__cause__ or error.__context__:
    error = error.__cause__ or error.__context__
  return f"{type(error).__name__}: {describe(error)}"


def _config_spec(options: list[str], name: str) -> str | None:
  """The value of ``--name=FILE[:ARG]`` (or ``--name FILE[:ARG]``) in ``options``, if given."""
  spec = None
  for i, option in enumerate(options):
    if match := re.fullmatch(rf"--?{name}=(.*)", option, re.DOTALL):
      spec = match.group(1)
    elif re.fullmatch(rf"--?{name}", option) and i + 1 < len(options):
      spec = options[i + 1]
  return spec


def load_config(spec: str) -> Any:
  """Loads ``FILE[:ARG]`` as ``config_flags`` does: ``get_config(ARG)`` of the file."""
  path, sep, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("_jax_dae_cli_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if sep else module.get_config()


def config_files(folder: Path = CONFIGS) -> list[str]:
  """The experiment configs in ``folder`` (file names)."""
  if not folder.is_dir():
    return []
  return sorted(p.name for p in folder.glob("*.py") if not p.name.startswith("_"))


def _shown(path: Path) -> str:
  """``path`` relative to the working directory when it lies below it."""
  with contextlib.suppress(ValueError):
    return str(path.relative_to(Path.cwd()))
  return str(path)


def _missing_config(path: str) -> str:
  given = Path(path).expanduser()
  # The folder the user meant, else the checkout's configs/.
  folder = given.parent if given.parent.is_dir() and config_files(given.parent) else CONFIGS
  names = config_files(folder)
  close = difflib.get_close_matches(given.name, names, n=1)
  hint = f" did you mean {Path(_shown(folder)) / close[0]}?" if close else ""
  listing = ", ".join(names) or "none"
  return f"config file {path} not found;{hint} configs in {_shown(folder)}/: {listing}."


def _unknown_field(config: Any, options: list[str], name: str, spec: str) -> str | None:
  """Names the first ``--name.FIELD`` override that the config lacks, with the closest field."""
  # Imported here: it loads JAX, which the other flag errors do not need.
  from jax_dae import validation

  leaves = list(validation.fields(config, prefix=name))
  known = set(leaves)
  for leaf in leaves:  # Dict fields can be overridden whole.
    parts = leaf.split(".")
    known.update(".".join(parts[:i]) for i in range(2, len(parts)))
  for option in options:
    match = re.fullmatch(rf"--?(?:no)?({re.escape(name)}\.[^=]+)(=.*)?", option, re.DOTALL)
    if match and match.group(1) not in known:
      field = match.group(1)
      close = difflib.get_close_matches(field, leaves, n=1, cutoff=0.5)
      hint = f"; did you mean {close[0]}?" if close else ""
      return f"unknown config field {field}{hint} (--{name}={spec} --list_fields lists them)"
  return None


def quiet_libraries() -> None:
  """Hides Orbax's INFO chatter from absl's log; call it first thing in ``main``."""
  logging.get_absl_handler().addFilter(_QuietLibraries())


def configs_paragraph(width: int = 96) -> str:
  """Which configs there are and where, wrapped, for a usage text."""
  names = [n.removesuffix(".py") for n in config_files()]
  return textwrap.fill(f"Configs in {_shown(CONFIGS)}{os.sep}: {', '.join(names) or 'none'}.",
                       width=width, subsequent_indent="  ")
