"""Test setup: 8 host CPU devices for data-parallel tests, shared compile cache.

XLA_FLAGS must be set before JAX initialises its backends, so it is set here,
at import time of the first conftest, before any test module imports jax.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))  # `configs` is a top-level folder, not a package install.

# Compiles are the slow part of these tests on 2 cores: cache them on disk so
# that identical functions built by different tests (and reruns) compile once.
jax.config.update("jax_compilation_cache_dir", str(ROOT / ".pytest_cache" / "xla"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(scope="session")
def shared_data() -> Path:
  """The real datasets beside the checkout (../shared/data)."""
  if not (SHARED_DATA / "lfw-deepfunneled.tgz").is_file():
    pytest.skip(f"real data not found at {SHARED_DATA}")
  return SHARED_DATA
