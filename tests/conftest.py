"""Test setup: 8 host CPU devices for data-parallel tests, shared compile cache, real data.

XLA_FLAGS must be set before JAX initialises its backends, so it is set here,
at import time of the first conftest, before any test module imports jax.

Real data (``shared_data``): the datasets in ``../shared/data`` (or
``$JAX_DAE_SHARED_DATA``). A test that needs them skips when they are absent
only where nobody expects them: with ``JAX_DAE_REQUIRE_DATA=1`` (CI sets it)
or when the folder that should hold them exists, a missing file fails the test
instead, so that a broken checkout cannot pass by skipping.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("JAX_DAE_SHARED_DATA", ROOT.parent / "shared" / "data"))
LFW_ARCHIVE = "lfw-deepfunneled.tgz"
sys.path.insert(0, str(ROOT))  # `configs` is a top-level folder, not a package install.

# Compiles are the slow part of these tests on 2 cores: cache them on disk so
# that identical functions built by different tests (and reruns) compile once.
jax.config.update("jax_compilation_cache_dir", str(ROOT / ".pytest_cache" / "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _data_required() -> str | None:
  """Why missing real data must fail the tests that need it, or None if it may skip them."""
  if os.environ.get("JAX_DAE_REQUIRE_DATA") == "1":
    return "JAX_DAE_REQUIRE_DATA=1"
  if SHARED_DATA.parent.is_dir():
    return f"{SHARED_DATA.parent} exists"
  return None


def _missing_data(what: str) -> None:
  """Fails or skips the current test for missing real data (see the module docstring)."""
  why = _data_required()
  if why:
    pytest.fail(f"Real data is required ({why}) but {what}. Put the datasets described in "
                f"../shared/data/README.md in {SHARED_DATA} (or point JAX_DAE_SHARED_DATA at "
                "them).", pytrace=False)
  pytest.skip(f"real data not found at {SHARED_DATA}")


@pytest.fixture(scope="session")
def shared_data() -> Path:
  """The real datasets beside the checkout (../shared/data or $JAX_DAE_SHARED_DATA)."""
  archive = SHARED_DATA / LFW_ARCHIVE
  if not archive.is_file():
    _missing_data(f"{archive} is missing")
  return SHARED_DATA


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
  """Data skips written as ``skipif`` markers obey the same rule as ``shared_data``.

  tests/test_data_sources.py marks its real-file tests with ``skipif(<file
  missing>, reason="... (set JAX_DAE_SHARED_DATA)")``; where data is required,
  such a test fails here, before the skipping plugin would skip it.
  """
  for marker in item.iter_markers("skipif"):
    reason = marker.kwargs.get("reason", "")
    if marker.args and marker.args[0] is True and "JAX_DAE_SHARED_DATA" in reason:
      if _data_required():
        _missing_data(f"the test would skip: {reason}")
