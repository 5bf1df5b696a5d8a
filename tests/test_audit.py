"""The privacy audit (issue 22): protocol, metrics, the recogniser, the command.

The protocol and metric tests use synthetic identities and hand-placed
embeddings. The recogniser test runs dlib's real network on real LFW photos
(CI installs it with ``.[test]``, which includes the ``[audit]`` extra). The
command runs end to end in a subprocess on a tiny run: a workdir whose
weights are freshly initialised (the plumbing does not need trained weights;
what the restorations score is not asserted), at 32x32 on 32 test images.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from scipy import stats

from configs import lfw_cae
from jax_dae import checkpoint, models, optimizers, steps, writers
from jax_dae.audit import embedders, faces, protocol, sweep
from jax_dae.data import lfw, preprocess

ROOT = Path(__file__).resolve().parents[1]
BLUR = "gaussian_blur(kernel=9,sigma=4)"


# ---------------------------------------------------------------------------
# Protocol.
# ---------------------------------------------------------------------------

# Rows 0..9: A has 3 photos (two in the test split), B 2 (both in the test
# split), C 1 (in it), D 1, E 2 (neither in it), F 1 (in it).
_IDS = ["A", "A", "A", "B", "B", "C", "D", "E", "E", "F"]
_TEST = [0, 1, 3, 4, 5, 9]


def test_protocol_rules_on_a_small_example():
  p = protocol.build(_IDS, _TEST, seed=0)
  gallery = p.gallery_rows.tolist()
  probes = p.probe_rows.tolist()
  # A's mate is its photo outside the test split, so both its test photos are probes.
  assert gallery[p.gallery_identities.index("A")] == 2
  # B has only test photos: one is its mate, the other the probe.
  b_mate = gallery[p.gallery_identities.index("B")]
  assert b_mate in (3, 4) and probes.count(7 - b_mate) == 1 and b_mate not in probes
  assert sorted(probes) == sorted([0, 1, 7 - b_mate])
  # Single-photo people (C, F in the test split) are never probes, only distractors.
  assert 5 not in probes and 9 not in probes
  assert set(p.gallery_identities) == {"A", "B", "C", "D", "E", "F"}
  assert p.num_mated == 2 and p.gallery_identities[:2] == ("A", "B")
  # Each probe's mate is another photo of its person; probes keep their test-split index.
  for row, mate, index in zip(probes, p.probe_mates, p.probe_test_index, strict=True):
    assert _IDS[gallery[mate]] == _IDS[row] and gallery[mate] != row
    assert _TEST[index] == row
  with pytest.raises(ValueError, match="smaller than the 2 people"):
    protocol.build(_IDS, _TEST, gallery_size=1)
  small = protocol.build(_IDS, _TEST, gallery_size=3, seed=0)
  assert small.gallery_size == 3 and small.gallery_identities[:2] == ("A", "B")


@pytest.mark.parametrize("seed", range(5))
def test_protocol_rules_on_random_people(seed):
  rng = np.random.default_rng(seed)
  sizes = rng.geometric(0.5, size=300)  # Many single-photo people, a few with many.
  ids = [f"p{i}" for i, n in enumerate(sizes) for _ in range(n)]
  test = np.sort(rng.choice(len(ids), len(ids) // 3, replace=False))
  full = protocol.build(ids, test, seed=seed)
  sub = protocol.build(ids, test, seed=seed, gallery_size=full.num_mated + 20, max_probes=25)
  for p in (full, sub):
    protocol.check(p, ids)  # Also run by build; here on purpose.
    assert not set(p.probe_rows.tolist()) & set(p.gallery_rows.tolist())
    assert set(p.probe_rows.tolist()) <= set(test.tolist())
    counts = {i: ids.count(i) for i in set(ids)}
    assert all(counts[ids[r]] >= 2 for r in p.probe_rows)
  assert full.gallery_size == len(set(ids))
  assert sub.gallery_size == full.num_mated + 20 and sub.num_probes == 25
  # Every test photo of a person with another photo is a probe, unless it is the mate.
  mates = set(full.gallery_rows[:full.num_mated].tolist())
  expected = [r for r in test.tolist() if ids.count(ids[r]) >= 2 and r not in mates]
  assert full.probe_rows.tolist() == expected


def _example():
  """3 probes, 4 gallery entries on a line: distances are differences (see the test)."""
  gallery = np.array([[0.0], [10.0], [20.0], [30.0]])
  probes = np.array([[1.0], [16.0], [25.0]])
  mates = np.array([0, 1, 3])
  return probes, gallery, mates


def test_metrics_against_a_hand_computed_example():
  probes, gallery, mates = _example()
  genuine, impostor = protocol.split_pairs(protocol.distances(probes, gallery), mates)
  np.testing.assert_allclose(genuine, [1, 6, 5])
  np.testing.assert_allclose(impostor, [[9, 19, 29], [16, 4, 14], [25, 15, 5]])
  # Probe 1: entry 2 (d=4) is closer than its mate (6). Probe 2: entry 2 ties its mate (5).
  np.testing.assert_array_equal(protocol.ranks(genuine, impostor), [1, 2, 2])
  # Of 27 (genuine, impostor) pairs, the genuine is closer in 9 + 7 + 7 and ties in 1.
  assert protocol.roc_auc(genuine, impostor) == pytest.approx(23.5 / 27)
  # Sorted impostors 4, 5, 9, 14, ...: FAR <= 1/9 allows d < 5; <= 2/9 allows d < 9.
  assert protocol.tar_at_far(genuine, impostor, 1 / 9) == (pytest.approx(1 / 3), 5.0)
  assert protocol.tar_at_far(genuine, impostor, 2 / 9) == (pytest.approx(1.0), 9.0)
  assert protocol.tar_at_far(genuine, impostor, 1e-3) == (pytest.approx(1 / 3), 4.0)
  out = protocol.score(probes, gallery, mates, far=1 / 9, threshold=5.5, bootstrap=200, seed=0)
  assert out["rank1"]["value"] == pytest.approx(1 / 3)
  assert out["rank5"]["value"] == 1.0
  assert out["auc"]["value"] == pytest.approx(23.5 / 27)
  assert out["tar_at_far"]["value"] == pytest.approx(1 / 3)
  assert out["tar_at_threshold"]["value"] == pytest.approx(2 / 3)
  assert out["far_at_threshold"]["value"] == pytest.approx(2 / 9)
  for key in ("rank1", "auc", "tar_at_far", "tar_at_threshold"):
    lo, hi = out[key]["ci"]
    assert lo <= out[key]["value"] <= hi


def test_auc_is_the_mann_whitney_statistic():
  rng = np.random.default_rng(0)
  genuine = np.round(rng.normal(0.4, 0.1, 50), 2)  # Rounded: ties happen.
  impostor = np.round(rng.normal(0.7, 0.1, (50, 30)), 2)
  u = stats.mannwhitneyu(impostor.ravel(), genuine).statistic
  assert protocol.roc_auc(genuine, impostor) == pytest.approx(u / genuine.size / impostor.size)


def test_bootstrap_weights_equal_listing_probes_that_many_times():
  rng = np.random.default_rng(1)
  genuine = rng.normal(0.45, 0.1, 40)
  impostor = rng.normal(0.8, 0.12, (40, 300))
  counts = np.bincount(rng.integers(0, 40, 40), minlength=40)
  got = protocol.resampled(genuine, impostor, counts[None], far=1e-2, threshold=0.6)
  idx = np.repeat(np.arange(40), counts)
  g, i = genuine[idx], impostor[idx]
  r = protocol.ranks(g, i)
  assert got["rank1"][0] == pytest.approx(np.mean(r <= 1))
  assert got["rank5"][0] == pytest.approx(np.mean(r <= 5))
  assert got["auc"][0] == pytest.approx(protocol.roc_auc(g, i))
  assert got["tar_at_far"][0] == pytest.approx(protocol.tar_at_far(g, i, 1e-2)[0])
  assert got["tar_at_threshold"][0] == pytest.approx(np.mean(g < 0.6))
  assert got["far_at_threshold"][0] == pytest.approx(np.mean(i < 0.6))


def test_sweep_ladders_hold_seed_000_settings():
  assert sweep.blur_spec(4) == BLUR
  assert sweep.pixelate_blocks(112) == [2, 4, 7, 8, 14, 16, 28]
  assert "pixelate(block=8)" in dict((s, v) for v, s in sweep.ladders(112)["pixelate"])
  assert sweep.family_of(BLUR) == "gaussian_blur"
  assert sweep.family_of("pixelate(grid=8)") == "pixelate"
  assert sweep.family_of(f"{BLUR}|pixelate(block=8)") is None
  assert faces.identity_of("lfw-deepfunneled/Jo_Bo/Jo_Bo_0012.jpg") == "Jo_Bo"


# ---------------------------------------------------------------------------
# The recogniser on real photos.
# ---------------------------------------------------------------------------

_PEOPLE = ("George_W_Bush", "Colin_Powell", "Tony_Blair")


def _lfw_crops(shared_data: Path, crop: int = 112) -> dict[str, np.ndarray]:
  """The first two photos of each of ``_PEOPLE``, preprocessed as seed 000 does."""
  source = lfw._Source(shared_data / lfw.VARIANTS["deepfunneled"].archive)
  wanted = {f"lfw-deepfunneled/{p}/{p}_000{k}.jpg" for p in _PEOPLE for k in (1, 2)}
  out = {}
  for name, data in source.read(wanted):
    image = preprocess.decode(data, mode="RGB", name=name)
    out[Path(name).stem] = preprocess.resize_center_crop(image, resize=224 * crop // 112,
                                                         crop=crop)
  assert len(out) == len(wanted)
  return out


@pytest.mark.parametrize("align", embedders.ALIGNS)
def test_dlib_puts_one_person_closer_than_two(shared_data, align):
  pytest.importorskip("dlib", reason="the [audit] extra (dlib-bin) is not installed")
  crops = _lfw_crops(shared_data)
  names = sorted(crops)
  embedder = embedders.DlibEmbedder(align=align, workers=1)
  assert isinstance(embedder, embedders.IdentityEmbedder)
  vectors = embedder.embed(np.stack([crops[n] for n in names]))
  assert vectors.shape == (6, 128) and vectors.dtype == np.float32
  # Float and uint8 inputs give the same embedding.
  as_float = embedder.embed(np.stack([crops[names[0]]]).astype(np.float32) / 255.0)
  np.testing.assert_allclose(as_float[0], vectors[0], atol=1e-6)
  d = protocol.distances(vectors, vectors)
  person = [faces.identity_of(n + ".jpg") for n in names]
  same = [d[i, j] for i in range(6) for j in range(i + 1, 6) if person[i] == person[j]]
  other = [d[i, j] for i in range(6) for j in range(i + 1, 6) if person[i] != person[j]]
  # Every pair of photos of one person is closer than any pair of two people.
  # (dlib's decision distance 0.6 is for its own chips: on resized crops one
  # pair of two people is at 0.57, so it is not asserted.)
  assert max(same) < min(other), (same, other)


def test_missing_models_error_names_the_extra(monkeypatch):
  monkeypatch.setattr(embedders.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(embedders.MissingExtraError, match=r"pip install -e '\.\[audit\]'"):
    embedders.model_dir()


# ---------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------


def _audit(*args, block_dlib: bool = False) -> subprocess.CompletedProcess:
  """``python -m jax_dae.audit ARGS`` in a subprocess (optionally as if dlib were missing)."""
  code = "import runpy, sys\n"
  if block_dlib:
    code += "sys.modules['dlib'] = None  # 'import dlib' now raises ImportError.\n"
  code += "sys.argv[0] = 'jax_dae.audit'\nrunpy.run_module('jax_dae.audit', run_name='__main__')\n"
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)


def test_missing_dlib_is_one_line_naming_the_extra(tmp_path):
  done = _audit(f"--workdir={tmp_path}", block_dlib=True)
  assert done.returncode == 2, done.stderr
  lines = [line for line in done.stderr.splitlines() if line.strip()]
  assert len(lines) == 1, done.stderr
  assert lines[0].startswith("error: the privacy audit needs dlib")
  assert "pip install -e '.[audit]'" in lines[0]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, shared_data):
  """A workdir with lfw_cae's smoke model (SmallCAE, 32x32), freshly initialised, 32 test images."""
  path = tmp_path_factory.mktemp("tiny_run")
  config = lfw_cae.get_config("runlocal")
  config.data.dir = str(shared_data)
  config.data.split = {"test": 32, "val": 8, "train": 16}
  writers.write_json(path / "config.json", config.to_dict())
  model = models.from_config(config, out_channels=3)
  state = steps.init_state(model, optimizers.create(config), (32, 32, 3), jax.random.key(0))
  ckpt = checkpoint.Checkpointer(path / "checkpoints")
  ckpt.save(1, state, metrics={"psnr": 1.0})
  ckpt.wait()
  ckpt.close()
  return path


def test_run_faces_pair_names_with_the_cached_split(tiny_run, monkeypatch):
  config = faces.read_config(tiny_run)
  run = faces.RunFaces(config)
  assert len(run.test_rows) == 32
  # Test photos come from the cache, others are decoded: both are the pipeline's crops.
  other = next(r for r in range(len(run.names)) if r not in set(run.test_rows.tolist()))
  images = run.images([run.test_rows[3], other])
  np.testing.assert_array_equal(images[0], run.test_images()[3])
  assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
  # If the split logic drifted (here: one position off), the names would be wrong: refused.
  real = faces.splits.split_indices
  monkeypatch.setattr(faces.splits, "split_indices",
                      lambda *a: {s: np.roll(r, 1) for s, r in real(*a).items()})
  with pytest.raises(ValueError, match="no longer matches"):
    faces.RunFaces(config)


def test_command_end_to_end(tiny_run, tmp_path):
  pytest.importorskip("dlib", reason="the [audit] extra (dlib-bin) is not installed")
  out = tmp_path / "report"
  done = _audit(f"--workdir={tiny_run}", f"--out_dir={out}", "--corrupt=pixelate(block=8)",
                "--gallery_size=30", "--max_probes=8", "--bootstrap=100", "--workers=2",
                "--examples=2", "--sweep", "--compilation_cache=")
  assert done.returncode == 0, done.stderr[-3000:]
  report = json.loads((out / "audit.json").read_text())
  for name in ("audit.md", "audit.png", "sweep.png", "examples.png"):
    assert (out / name).stat().st_size > 0
  p = report["protocol"]
  assert (p["probes"], p["gallery_size"], p["genuine_pairs"], p["impostor_pairs"]) == (
      8, 30, 8, 8 * 29)
  labels = [r["label"] for r in report["rows"]]
  run = tiny_run.name
  assert labels == ["clean", f"corrupted: {BLUR}", f"restored by {run}: {BLUR}",
                    "corrupted: pixelate(block=8)", f"restored by {run}: pixelate(block=8)"]
  for row in report["rows"]:
    for key in ("rank1", "rank5", "auc", "tar_at_far", "tar_at_threshold", "far_at_threshold"):
      lo, hi = row[key]["ci"]
      assert 0 <= lo <= row[key]["value"] <= hi <= 1, (row["label"], key)
  clean, blurred = report["rows"][0], report["rows"][1]
  assert clean["rank1"]["value"] >= 0.5
  assert clean["auc"]["value"] > blurred["auc"]["value"]
  # The sweep at 32x32: 7 blur rungs corrupted and restored (the run was trained on
  # blur), pixelation blocks 2, 4, 8 corrupted only.
  kinds = [(r["family"], r["kind"]) for r in report["sweep"]]
  assert kinds.count(("gaussian_blur", "corrupted")) == 7
  assert kinds.count(("gaussian_blur", "restored")) == 7
  assert kinds.count(("pixelate", "corrupted")) == 3 and ("pixelate", "restored") not in kinds
  md = (out / "audit.md").read_text()
  assert "| clean |" in md and "30 clean photos" in md
