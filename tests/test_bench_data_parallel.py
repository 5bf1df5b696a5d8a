"""scripts/bench_data_parallel.py: the sharded train loop gives one device's update on several."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import bench_data_parallel  # noqa: E402


def test_several_devices_train_like_one_and_report_throughput(tmp_path):
  out = tmp_path / "dp.json"
  report = bench_data_parallel.main(["--devices", "1,4", "--steps", "2", "--windows", "1",
                                     "--out", str(out)])
  rows = {r["devices"]: r for r in report["rows"]}
  assert sorted(rows) == [1, 4]
  # Weak scaling: the global batch grows with the devices.
  assert rows[4]["global_batch"] == 4 * rows[1]["global_batch"]
  # Strong scaling: the same global batch on 4 devices ends at 1 device's parameters
  # (BatchNorm statistics and gradients averaged over the whole batch).
  assert rows[1]["max_param_diff_vs_1"] == 0.0
  assert rows[4]["max_param_diff_vs_1"] < 1e-5
  assert json.loads(out.read_text())["rows"] == report["rows"]
