"""scripts/torch_reference.py: every PyTorch variant of the benchmarked step is the same step.

The benchmark keeps the fastest PyTorch variant of each row; these tests check
that the faster forms (channels_last data and VGG, compiled forward, backward
and optimizer step, whole-step CUDA graphs) compute the same losses, parameter
updates and BatchNorm statistics as the plain eager step. Torch is not a
project dependency: without it the file is skipped. The CUDA graph variants
need a GPU and are skipped elsewhere.
"""

import copy
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import torch_reference as tr  # noqa: E402

BATCH, SIZE = 4, 16


def _parts(device, perceptual: bool):
  torch.manual_seed(0)
  model = tr.TorchCAE(encoder_features=(8, 8, 8, 16), decoder_features=(16, 8, 8),
                      stem_kernel=3).to(device)
  if perceptual:
    loss = tr.PerceptualLoss({"conv2_2": 1.0}, upsample=2).to(device)
  else:
    loss = tr.mse_loss
  blur = tr.GaussianBlur(9, 4.0, 3).to(device)
  images = torch.randint(0, 256, (16, SIZE, SIZE, 3), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(1)).to(device)
  return model, loss, blur, images


def _run(mode, device, perceptual, indices):
  model, loss, blur, images = _parts(device, perceptual)
  step, _ = tr.make_train_step(model, loss, blur, images, BATCH, mode=mode)
  losses = [float(step(idx.to(device)).detach()) for idx in indices]
  state = {k: v.detach().float().cpu().numpy() for k, v in model.state_dict().items()}
  return losses, state


# Biases of convolutions that BatchNorm follows: their gradient is zero but for rounding,
# which Adam scales up to steps of +-lr in either form; they leave the function unchanged.
_PRE_NORM_BIASES = frozenset(
    [f"encoder_convs.{i}.bias" for i in range(4)] + [f"decoder_convs.{i}.bias" for i in range(3)])


# Adam moves a weight by about lr (5e-4) per step whatever its gradient's size, so a weight
# whose gradient is tiny moves by a different amount when the gradient's rounding differs
# (Inductor sums in another order): parameters are compared to a tenth of one step.
_ATOL = 5e-5


def _assert_same_steps(mode, device, perceptual, *, steps=3, rtol=1e-5, atol=1e-6):
  gen = torch.Generator().manual_seed(2)
  indices = [torch.randint(0, 16, (BATCH,), generator=gen) for _ in range(steps)]
  want_losses, want = _run("eager", device, perceptual, indices)
  got_losses, got = _run(mode, device, perceptual, indices)
  np.testing.assert_allclose(got_losses, want_losses, rtol=rtol)
  assert want_losses[0] != want_losses[-1]  # the parameters did move
  for name in want:
    if name in _PRE_NORM_BIASES:
      continue
    np.testing.assert_allclose(got[name], want[name], rtol=rtol, atol=atol, err_msg=name)


def test_resident_images_gather_channels_last_without_a_copy():
  images = torch.randint(0, 256, (6, 5, 7, 3), dtype=torch.uint8)
  resident = tr.resident_images(images)
  assert resident.data_ptr() == images.data_ptr()
  batch = resident[torch.tensor([4, 1])]
  assert batch.shape == (2, 3, 5, 7)
  assert batch.is_contiguous(memory_format=torch.channels_last)
  np.testing.assert_array_equal(batch.permute(0, 2, 3, 1).numpy(), images[[4, 1]].numpy())


def test_channels_last_perceptual_loss_equals_nchw():
  torch.manual_seed(0)
  loss = tr.PerceptualLoss({"conv2_2": 1.0}, upsample=2)
  x, y = torch.rand(2, 3, SIZE, SIZE), torch.rand(2, 3, SIZE, SIZE)
  want = loss(x, y)
  cl = copy.deepcopy(loss).to(memory_format=torch.channels_last)
  got = cl(x.contiguous(memory_format=torch.channels_last),
           y.contiguous(memory_format=torch.channels_last))
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)


def test_unknown_or_misplaced_variant_is_refused():
  model, loss, blur, images = _parts("cpu", False)
  with pytest.raises(ValueError, match="allowed: eager"):
    tr.make_train_step(model, loss, blur, images, BATCH, mode="fast")
  with pytest.raises(ValueError, match="CUDA graphs"):
    tr.make_train_step(model, loss, blur, images, BATCH, mode="graph")


def test_compiled_step_with_compiled_adam_equals_eager_step_on_cpu():
  """The strongest variant a CPU runs: forward, backward and Adam under torch.compile."""
  _assert_same_steps("compile", "cpu", perceptual=True, rtol=1e-4, atol=_ATOL)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph variants need a GPU")


@cuda
@pytest.mark.parametrize("mode", ["graph", "graph-compile", "reduce-overhead"])
def test_cuda_graph_variants_equal_eager_step(mode):
  torch.backends.cudnn.deterministic = True
  torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
  _assert_same_steps(mode, "cuda", perceptual=True, rtol=1e-4, atol=_ATOL)
