"""PyTorch twins of jax_dae's CAE, blur and losses, for ``scripts/benchmark.py``.

This module is benchmark-only: it is imported by ``scripts/benchmark.py`` and
is not part of the ``jax_dae`` package (torch is not a project dependency).

What it mirrors, layer for layer:

* ``TorchCAE``: ``jax_dae.models.cae.CAE`` (and its residual variant) in NCHW
  with channels_last memory, BatchNorm with Flax's momentum and epsilon, the
  ``(x - 0.5) / 0.5`` input normalisation and the tanh output mapped back to
  [0, 1].
* ``GaussianBlur``: ``corruptions.gaussian_blur(kernel, sigma)`` with reflect
  padding: the same normalised float32 taps as dm-pix, applied as two
  depthwise convolutions (horizontal, then vertical).
* ``VGG16Features`` and ``perceptual_loss``: VGG16 up to a ReLU layer on
  inputs upsampled x2 (bilinear, half-pixel centres) and normalised with the
  torchvision ImageNet mean/std; squared feature error divided by C*H*W and
  averaged over the batch.
* ``load_flax_cae``/``load_hwio_vgg``: copy Flax parameters into the torch
  modules so that both sides compute the same function (``--check``).

Weight layouts. Flax ``nn.Conv`` stores HWIO, torch ``Conv2d`` OIHW. Flax
``nn.ConvTranspose`` (``transpose_kernel=False``) stores HWIO for a
*correlation* over the stride-dilated input padded by ``k - 1 - p``; torch
``ConvTranspose2d`` stores ``(in, out, kH, kW)`` and scatters each input pixel
through the kernel, which is a correlation over the dilated input with the
spatially *flipped* kernel. Hence ``torch_w = flip(flax_k, (0, 1))`` moved to
``(in, out, kH, kW)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# Flax BatchNorm: ra = 0.99 * ra + 0.01 * batch; torch: ra = (1 - m) * ra + m * batch.
_BN_MOMENTUM = 0.01
_BN_EPSILON = 1e-5

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# VGG16 "features": (name, out_channels) per conv; "pool" between blocks.
VGG16_LAYOUT = (
    ("conv1_1", 64), ("conv1_2", 64), "pool",
    ("conv2_1", 128), ("conv2_2", 128), "pool",
    ("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256), "pool",
    ("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512), "pool",
    ("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512),
)
VGG16_CONVS = tuple(entry[0] for entry in VGG16_LAYOUT if entry != "pool")


def _bn(channels: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(channels, eps=_BN_EPSILON, momentum=_BN_MOMENTUM)


class TorchResidualBlock(nn.Module):
  """conv3x3-BN-ReLU-conv3x3-BN plus identity, as ``cae.ResidualBlock``."""

  def __init__(self, channels: int):
    super().__init__()
    self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
    self.bn1 = _bn(channels)
    self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
    self.bn2 = _bn(channels)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = F.relu(self.bn1(self.conv1(x)))
    return x + self.bn2(self.conv2(y))


class TorchCAE(nn.Module):
  """``jax_dae.models.cae.CAE`` in PyTorch (NCHW tensors, [0, 1] in and out).

  Args:
    encoder_features: output channels of the stem and the stride-2 convs.
    decoder_features: output channels of the stride-2 transposed convs.
    stem_kernel: kernel size of the first and last convolution (odd).
    num_res_blocks: residual blocks at the bottleneck.
    in_channels: channels of the input image.
    out_channels: channels of the output image.
  """

  def __init__(self, encoder_features: Sequence[int] = (64, 64, 128, 256),
               decoder_features: Sequence[int] = (256, 128, 64), stem_kernel: int = 9,
               num_res_blocks: int = 0, in_channels: int = 3, out_channels: int = 3):
    super().__init__()
    pad = stem_kernel // 2
    enc, dec = list(encoder_features), list(decoder_features)
    self.encoder_convs = nn.ModuleList()
    self.encoder_norms = nn.ModuleList()
    channels = in_channels
    for i, features in enumerate(enc):
      if i == 0:
        conv = nn.Conv2d(channels, features, stem_kernel, padding=pad)
      else:
        conv = nn.Conv2d(channels, features, 4, stride=2, padding=1)
      self.encoder_convs.append(conv)
      self.encoder_norms.append(_bn(features))
      channels = features
    self.res_blocks = nn.ModuleList(TorchResidualBlock(channels) for _ in range(num_res_blocks))
    self.decoder_convs = nn.ModuleList()
    self.decoder_norms = nn.ModuleList()
    for features in dec:
      self.decoder_convs.append(nn.ConvTranspose2d(channels, features, 4, stride=2, padding=1))
      self.decoder_norms.append(_bn(features))
      channels = features
    self.head = nn.Conv2d(channels, out_channels, stem_kernel, padding=pad)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    """Maps ``[B, C, H, W]`` images in [0, 1] to reconstructions in [0, 1]."""
    x = (images - 0.5) / 0.5
    for conv, norm in zip(self.encoder_convs, self.encoder_norms, strict=True):
      x = F.relu(norm(conv(x)))
    for block in self.res_blocks:
      x = block(x)
    for conv, norm in zip(self.decoder_convs, self.decoder_norms, strict=True):
      x = F.relu(norm(conv(x)))
    y = torch.tanh(self.head(x))
    return (y.float() + 1.0) / 2.0


def gaussian_taps(kernel: int, sigma: float) -> np.ndarray:
  """The normalised 1-D Gaussian of ``corruptions.gaussian_blur`` (float32, as dm-pix)."""
  radius = kernel // 2
  x = np.arange(-radius, radius + 1).astype(np.float32)
  taps = np.exp(-(x**2) / np.float32(2.0 * sigma**2)).astype(np.float32)
  return taps / taps.sum(dtype=np.float32)


class GaussianBlur(nn.Module):
  """Separable Gaussian blur with reflect padding, as depthwise convolutions.

  Args:
    kernel: odd number of taps.
    sigma: standard deviation in pixels.
    channels: image channels.
  """

  def __init__(self, kernel: int = 9, sigma: float = 4.0, channels: int = 3):
    super().__init__()
    taps = torch.from_numpy(gaussian_taps(kernel, sigma))
    self.radius = kernel // 2
    self.channels = channels
    self.register_buffer("kernel_h", taps.view(1, 1, 1, kernel).repeat(channels, 1, 1, 1))
    self.register_buffer("kernel_v", taps.view(1, 1, kernel, 1).repeat(channels, 1, 1, 1))

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    """Blurs ``[B, C, H, W]`` float images."""
    r = self.radius
    x = F.pad(images, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, self.kernel_h, groups=self.channels)
    return F.conv2d(x, self.kernel_v, groups=self.channels)


def mse_loss(reconstruction: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
  """``losses.mse``: mean squared error in float32."""
  return torch.mean(torch.square(reconstruction.float() - clean.float()))


class VGG16Features(nn.Module):
  """VGG16 convolutions up to the ReLU after ``last`` (e.g. ``conv3_3``).

  Parameters are frozen (``requires_grad=False``): a perceptual loss needs the
  gradient with respect to the input only. Weights are random (He normal)
  until ``load_hwio_vgg`` copies real ones in.

  Args:
    last: the deepest conv whose ReLU output is returned.
    taps: names of convs whose ReLU outputs ``forward`` returns (default:
      ``(last,)``).
  """

  def __init__(self, last: str = "conv3_3", taps: Sequence[str] | None = None):
    super().__init__()
    if last not in VGG16_CONVS:
      raise ValueError(f"last={last!r} is not a VGG16 conv; allowed: {', '.join(VGG16_CONVS)}.")
    self.taps = tuple(taps or (last,))
    self.convs = nn.ModuleDict()
    self.plan: list[str] = []
    channels = 3
    for entry in VGG16_LAYOUT:
      if entry == "pool":
        self.plan.append("pool")
        continue
      name, features = entry
      conv = nn.Conv2d(channels, features, 3, padding=1)
      nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
      nn.init.zeros_(conv.bias)
      self.convs[name] = conv
      self.plan.append(name)
      channels = features
      if name == last:
        break
    self.requires_grad_(False)

  def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
    """Returns the ReLU outputs of ``taps`` for ``[B, 3, H, W]`` normalised input."""
    outputs = []
    for step in self.plan:
      if step == "pool":
        x = F.max_pool2d(x, 2)
      else:
        x = F.relu(self.convs[step](x))
        if step in self.taps:
          outputs.append(x)
    return outputs


class PerceptualLoss(nn.Module):
  """Feature reconstruction loss (Johnson et al.) on VGG16 ReLU outputs.

  ``loss = sum_l w_l * mean_b ||phi_l(up(x)) - phi_l(up(y))||^2 / (C_l H_l W_l)``
  with ``up`` a x2 bilinear upsampling (``align_corners=False``, the
  half-pixel convention of ``jax.image.resize``) and ImageNet normalisation.
  The target's features are computed without gradient.

  Args:
    layers: mapping of VGG16 conv name (``conv3_3`` stands for relu3_3) to weight.
    upsample: spatial factor before VGG (2: 112 -> 224).
  """

  def __init__(self, layers: Mapping[str, float] | None = None, upsample: int = 2):
    super().__init__()
    self.layers = dict(layers or {"conv3_3": 1.0})
    last = max(self.layers, key=VGG16_CONVS.index)
    self.vgg = VGG16Features(last=last, taps=tuple(self.layers))
    self.upsample = upsample
    self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
    self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

  def features(self, images: torch.Tensor) -> list[torch.Tensor]:
    if self.upsample != 1:
      images = F.interpolate(images, scale_factor=self.upsample, mode="bilinear",
                             align_corners=False)
    return self.vgg((images - self.mean) / self.std)

  def forward(self, reconstruction: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
      targets = self.features(clean)
    outputs = self.features(reconstruction)
    total = reconstruction.new_zeros((), dtype=torch.float32)
    names = [n for n in self.vgg.plan if n in self.layers]
    for name, out, target in zip(names, outputs, targets, strict=True):
      total = total + self.layers[name] * torch.mean(torch.square(out.float() - target.float()))
    return total


# ---------------------------------------------------------------------------
# Flax -> torch parameter copies.
# ---------------------------------------------------------------------------


def _t(array, like: torch.Tensor) -> torch.Tensor:
  return torch.from_numpy(np.array(array, np.float32)).to(like)


def conv_kernel_to_torch(kernel: np.ndarray) -> np.ndarray:
  """Flax ``nn.Conv`` HWIO kernel to torch ``Conv2d`` OIHW."""
  return np.transpose(np.asarray(kernel), (3, 2, 0, 1))


def conv_transpose_kernel_to_torch(kernel: np.ndarray) -> np.ndarray:
  """Flax ``nn.ConvTranspose`` HWIO kernel to torch ``ConvTranspose2d`` (in, out, kH, kW).

  Flax correlates the dilated input with the kernel; torch scatters, i.e.
  correlates with the spatially flipped kernel.
  """
  return np.transpose(np.asarray(kernel)[::-1, ::-1], (2, 3, 0, 1))


def _copy_conv(module: nn.Module, params: Mapping, *, transpose: bool = False) -> None:
  convert = conv_transpose_kernel_to_torch if transpose else conv_kernel_to_torch
  weight = convert(params["kernel"])
  if tuple(weight.shape) != tuple(module.weight.shape):
    raise ValueError(f"kernel {weight.shape} does not fit {module} {tuple(module.weight.shape)}.")
  module.weight.data.copy_(_t(weight, module.weight))
  module.bias.data.copy_(_t(params["bias"], module.bias))


def _copy_bn(module: nn.BatchNorm2d, params: Mapping, stats: Mapping) -> None:
  module.weight.data.copy_(_t(params["scale"], module.weight))
  module.bias.data.copy_(_t(params["bias"], module.bias))
  module.running_mean.copy_(_t(stats["mean"], module.running_mean))
  module.running_var.copy_(_t(stats["var"], module.running_var))


@torch.no_grad()
def load_flax_cae(model: TorchCAE, params: Mapping, batch_stats: Mapping) -> TorchCAE:
  """Copies a Flax ``CAE``'s ``params``/``batch_stats`` into ``model`` in place.

  Flax names submodules by creation order: ``Conv_0..n-1`` are the encoder,
  ``Conv_n`` the head, ``BatchNorm_0..n-1`` the encoder's norms and the rest
  the decoder's, ``ConvTranspose_j`` the decoder, ``ResidualBlock_i`` the
  bottleneck blocks.

  Returns:
    ``model``.
  """
  n_enc = len(model.encoder_convs)
  for i, (conv, norm) in enumerate(zip(model.encoder_convs, model.encoder_norms, strict=True)):
    _copy_conv(conv, params[f"Conv_{i}"])
    _copy_bn(norm, params[f"BatchNorm_{i}"], batch_stats[f"BatchNorm_{i}"])
  for i, block in enumerate(model.res_blocks):
    p, s = params[f"ResidualBlock_{i}"], batch_stats[f"ResidualBlock_{i}"]
    _copy_conv(block.conv1, p["Conv_0"])
    _copy_bn(block.bn1, p["BatchNorm_0"], s["BatchNorm_0"])
    _copy_conv(block.conv2, p["Conv_1"])
    _copy_bn(block.bn2, p["BatchNorm_1"], s["BatchNorm_1"])
  for j, (conv, norm) in enumerate(zip(model.decoder_convs, model.decoder_norms, strict=True)):
    _copy_conv(conv, params[f"ConvTranspose_{j}"], transpose=True)
    _copy_bn(norm, params[f"BatchNorm_{n_enc + j}"], batch_stats[f"BatchNorm_{n_enc + j}"])
  _copy_conv(model.head, params[f"Conv_{n_enc}"])
  return model


@torch.no_grad()
def load_hwio_vgg(vgg: VGG16Features, convs: Sequence[Mapping]) -> VGG16Features:
  """Copies VGG16 conv parameters, given in network order as ``{"kernel": HWIO,
  "bias": [O]}`` dicts (extra trailing layers are ignored), into ``vgg``."""
  names = [n for n in vgg.plan if n != "pool"]
  if len(convs) < len(names):
    raise ValueError(f"Got {len(convs)} VGG convs; {len(names)} are needed up to {names[-1]}.")
  for name, params in zip(names, convs, strict=False):
    _copy_conv(vgg.convs[name], params)
  return vgg


# ---------------------------------------------------------------------------
# The benchmarked step.
# ---------------------------------------------------------------------------

# How the step is run (``make_train_step(variant=...)``; ``scripts/benchmark.py --torch_modes``):
# name -> (torch.compile mode of the forward and loss or None for eager, whole step captured
# in one manual CUDA graph, optimizer step compiled in the forward's mode).
VARIANTS: dict[str, tuple[str | None, bool, bool]] = {
    "eager": (None, False, False),
    "compile": ("default", False, True),
    "reduce-overhead": ("reduce-overhead", False, True),
    "max-autotune-no-cudagraphs": ("max-autotune-no-cudagraphs", False, True),
    # Forward, backward and the fused capturable Adam step in one CUDA graph.
    "graph": (None, True, False),
    "graph-compile": ("default", True, False),
    "graph-max-autotune": ("max-autotune-no-cudagraphs", True, False),
    # The step as it was before issue 23 (images permuted inside the step, VGG in NCHW,
    # eager fused Adam outside the compiled region), to measure what the changes gained.
    "legacy-reduce-overhead": ("reduce-overhead", False, False),
}
CUDA_ONLY = frozenset(v for v, (mode, graph, _) in VARIANTS.items()
                      if graph or mode == "reduce-overhead")


def resident_images(images_nhwc: torch.Tensor) -> torch.Tensor:
  """uint8 ``[N, H, W, C]`` images -> the ``[N, C, H, W]`` channels_last view the model reads.

  No copy: channels_last NCHW is NHWC in memory. Indexing the batch dimension
  (``images[idx]``) keeps the layout, so a gathered batch needs no permute.
  """
  return images_nhwc.permute(0, 3, 1, 2)


def _make_optimizer(params, *, learning_rate: float, weight_decay: float, device: torch.device,
                    capturable: bool, compiled: bool) -> torch.optim.Optimizer:
  """Adam with coupled L2 (jax_dae's ``adam``), in the fastest form the step allows.

  Fused (one multi-tensor kernel) where supported; ``capturable`` keeps its step
  count on the device for CUDA graphs; a step that ``torch.compile`` traces uses
  the foreach form, which Inductor fuses (it cannot trace into the fused kernel).
  """
  kwargs = dict(lr=learning_rate, weight_decay=weight_decay)
  if compiled:
    return torch.optim.Adam(params, foreach=True, capturable=device.type == "cuda", **kwargs)
  try:
    return torch.optim.Adam(params, fused=True, capturable=capturable, **kwargs)
  except (RuntimeError, TypeError, ValueError):  # fused unsupported on this device/build
    return torch.optim.Adam(params, foreach=True, capturable=capturable, **kwargs)


def make_train_step(model: nn.Module, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    blur: nn.Module, images: torch.Tensor, batch_size: int, *,
                    mode: str = "eager", bf16: bool = False, learning_rate: float = 5e-4,
                    weight_decay: float = 1e-5,
                    warmup_steps: int = 3) -> tuple[Callable[..., torch.Tensor], Callable]:
  """One training step on device-resident uint8 images, as jax_dae's scan body.

  Each call draws ``batch_size`` random indices into ``images`` (uint8
  ``[N, H, W, C]`` on the device), gathers the batch already in channels_last
  NCHW (``resident_images``: no permute in the step), converts to float in
  [0, 1], blurs, runs forward and backward (under bf16 autocast when ``bf16``)
  and an Adam update with coupled L2 (jax_dae's ``adam``). The model and, for
  the perceptual loss, VGG16 are channels_last.

  ``mode`` is a key of ``VARIANTS``: eager; ``torch.compile`` of the forward
  and loss (AOTAutograd compiles the backward) in one of its modes, with the
  optimizer step compiled in the same mode; or the whole step (index draw,
  forward, backward, fused capturable Adam) captured in one CUDA graph after
  ``warmup_steps`` steps on a side stream, with the forward eager or compiled
  without CUDA graphs. The warm-up runs real steps (cuDNN autotuning, Inductor
  compilation, Adam's state); the parameters, buffers and optimizer state are
  then put back, so the first ``step()`` of every mode starts from the same
  state.

  Args:
    model: the autoencoder (moved to channels_last here).
    loss: ``loss(reconstruction, clean) -> scalar`` (a module is moved to channels_last).
    blur: the corruption module.
    images: resident uint8 ``[N, H, W, C]`` images.
    batch_size: images per step.
    mode: a key of ``VARIANTS``.
    bf16: autocast the forward (and thus backward) to bfloat16.
    learning_rate: Adam step size.
    weight_decay: L2 coefficient added to the gradient (torch ``Adam``'s).
    warmup_steps: steps run before a CUDA graph capture.

  Returns:
    ``(step, forward_loss)``: ``step(idx=None)`` runs one training step on
    ``idx`` (a ``[batch_size]`` int64 device tensor) or on random indices and
    returns the (unsynchronised) loss tensor; ``forward_loss(idx)`` is the
    possibly compiled forward. ``step.optimizer`` is the optimizer.
  """
  if mode not in VARIANTS:
    raise ValueError(f"mode={mode!r} is unknown; allowed: {', '.join(VARIANTS)}.")
  compile_mode, whole_graph, compile_optimizer = VARIANTS[mode]
  legacy = mode.startswith("legacy-")
  device = images.device
  if whole_graph and device.type != "cuda":
    raise ValueError(f"mode={mode!r} captures CUDA graphs; the images are on {device}.")
  model.to(memory_format=torch.channels_last).train()
  if isinstance(loss, nn.Module) and not legacy:
    loss.to(memory_format=torch.channels_last)
  params = [p for p in model.parameters() if p.requires_grad]
  opt = _make_optimizer(params, learning_rate=learning_rate, weight_decay=weight_decay,
                        device=device, capturable=whole_graph,
                        compiled=compile_optimizer and compile_mode is not None)
  cl_images = images if legacy else resident_images(images)
  n = images.shape[0]

  def forward_loss(idx: torch.Tensor) -> torch.Tensor:
    if legacy:
      clean = cl_images.index_select(0, idx).permute(0, 3, 1, 2).float().div(255.0)
      noisy = blur(clean).contiguous(memory_format=torch.channels_last)
    else:
      clean = cl_images[idx].float().div(255.0)
      noisy = blur(clean)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
      reconstruction = model(noisy)
      value = loss(reconstruction, clean)
    return value.float()

  if compile_mode is not None:
    # The resident images are a closed-over tensor: mark them static so that CUDA graphs
    # read them in place instead of copying them into the graph's input buffer each replay.
    torch._dynamo.mark_static_address(images)
    fwd = torch.compile(forward_loss, dynamic=False,
                        mode=None if compile_mode == "default" else compile_mode)
  else:
    fwd = forward_loss
  opt_step = opt.step
  if compile_optimizer and compile_mode is not None:
    opt_step = torch.compile(opt.step, dynamic=False,
                             mode=None if compile_mode == "default" else compile_mode)
  cudagraph_trees = compile_mode == "reduce-overhead"

  def eager_step(idx: torch.Tensor | None = None) -> torch.Tensor:
    if idx is None:
      idx = torch.randint(n, (batch_size,), device=device)
    if cudagraph_trees:
      torch.compiler.cudagraph_mark_step_begin()
    value = fwd(idx)
    value.backward()
    opt_step()
    opt.zero_grad(set_to_none=True)
    return value

  if not whole_graph:
    eager_step.optimizer = opt
    return eager_step, fwd

  # Whole-step CUDA graph (torch.cuda.graphs "whole network capture").
  static_idx = torch.zeros(batch_size, dtype=torch.long, device=device)
  use_given = torch.zeros((), dtype=torch.bool, device=device)
  state = _snapshot(model, opt)

  def body() -> torch.Tensor:
    drawn = torch.randint(n, (batch_size,), device=device)
    idx = torch.where(use_given, static_idx, drawn)
    value = fwd(idx)
    value.backward()
    opt.step()
    return value

  side = torch.cuda.Stream()
  side.wait_stream(torch.cuda.current_stream())
  with torch.cuda.stream(side):
    for _ in range(warmup_steps):
      opt.zero_grad(set_to_none=True)
      body()
  torch.cuda.current_stream().wait_stream(side)
  _restore(model, opt, state)
  opt.zero_grad(set_to_none=True)
  graph = torch.cuda.CUDAGraph()
  with torch.cuda.graph(graph):
    static_value = body()
  # Capture records the step without running it: the state is still the initial one.

  def graph_step(idx: torch.Tensor | None = None) -> torch.Tensor:
    if idx is None:
      use_given.fill_(False)
    else:
      static_idx.copy_(idx)
      use_given.fill_(True)
    graph.replay()
    return static_value

  graph_step.optimizer = opt
  graph_step.graph = graph
  return graph_step, fwd


def _snapshot(model: nn.Module, opt: torch.optim.Optimizer) -> dict:
  """Copies of the parameters and buffers (the optimizer has no state yet)."""
  return {"model": {k: v.detach().clone() for k, v in model.state_dict().items()},
          "opt_empty": not opt.state}


@torch.no_grad()
def _restore(model: nn.Module, opt: torch.optim.Optimizer, saved: dict) -> None:
  """Puts ``_snapshot``'s values back in place (same tensors: a graph keeps their addresses)
  and resets Adam's state to that of a fresh optimizer (zero moments, step 0)."""
  for k, v in model.state_dict().items():
    v.copy_(saved["model"][k])
  if saved["opt_empty"]:
    for state in opt.state.values():
      for value in state.values():
        if torch.is_tensor(value):
          value.zero_()
