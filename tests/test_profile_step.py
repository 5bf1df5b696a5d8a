"""scripts/profile_step.py: trace parsing on a small scanned step (host plane on CPU)."""

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import profile_step  # noqa: E402

STEPS = 4


def _step(w, x):
  y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return w - 1e-3 * jnp.mean(jnp.tanh(y)) * w, jnp.sum(y * y)


@pytest.fixture(scope="module")
def summary(tmp_path_factory):
  loop = jax.jit(lambda w, xs: jax.lax.scan(_step, w, xs))
  w, xs = jnp.ones((3, 3, 8, 8)), jnp.ones((STEPS, 2, 16, 16, 8))
  compiled = loop.lower(w, xs).compile()
  jax.block_until_ready(compiled(w, xs))
  trace_dir = tmp_path_factory.mktemp("trace")
  with jax.profiler.trace(str(trace_dir)):
    jax.block_until_ready(compiled(w, xs))
  (xplane,) = trace_dir.glob("**/*.xplane.pb")
  plane, ops = profile_step.device_ops(jax.profiler.ProfileData.from_file(str(xplane)))
  return profile_step.summarise(ops, plane, STEPS, 0.0, profile_step.op_names(compiled.as_text()))


def test_summary_counts_and_busy_fraction(summary):
  assert summary["plane"].startswith("/host:CPU")
  assert summary["ops_per_step"] >= 1
  assert 0 < summary["busy_fraction"] <= 1
  categories = {row["name"]: row["us_per_step"] for row in summary["by_category"]}
  assert categories.get("conv/gemm", 0) > 0
  assert sum(categories.values()) == pytest.approx(summary["op_us_per_step"])
  # The scan body's convolution runs once per step, and its op_name is known.
  conv = [r for r in summary["by_hlo_op"] if r["op_name"].endswith("conv_general_dilated")]
  assert conv and conv[0]["count_per_step"] == pytest.approx(1)


def test_region_from_name_stack():
  body = "jit(loop)/while/body/closed_call/"
  assert profile_step.region(body + "transpose(jvp(CAE))/CAE.decode/BatchNorm_6/mul") == (
      "CAE backward BatchNorm")
  assert profile_step.region(body + "jvp(CAE)/CAE.encode/Conv_0/conv_general_dilated") == (
      "CAE forward Conv")
  assert profile_step.region(body + "vmap()/conv_general_dilated").startswith("corruption")
  assert profile_step.region(body + "sqrt").startswith("update")
  assert profile_step.region("").startswith("no op_name")
