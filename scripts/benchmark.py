r"""Training throughput of jax_dae against the same model in PyTorch (issue 9).

What is measured, per row of the grid {model} x {loss} x {batch} x {precision}:

* jax_dae: the library's own fused loop, ``loops.make_train_loop`` around
  ``step_api.make_train_step`` (built from ``create_model``, ``create_optimizer``,
  ``corruptions.parse`` and ``losses.create`` on ``configs/default.py``), i.e.
  ``--steps_per_call`` steps per compiled call in a ``lax.scan`` over uint8
  images resident on the device; each step takes a batch by a permuted index,
  blurs it (``gaussian_blur(kernel=9,sigma=4)``, reflect padding), runs forward
  and backward and the Adam update. ``lower`` and ``compile`` are timed apart.
* PyTorch (``scripts/torch_reference.py``): the same model, blur (two depthwise
  convolutions with the same normalised 9 taps, reflect padding) and loss, with
  channels_last, fused Adam with the same coupled L2, ``cudnn.benchmark``, TF32
  allowed and bf16 autocast for the bf16 rows; each step draws random indices
  into the same resident uint8 images. Modes (``--torch_modes``, the keys of
  ``torch_reference.VARIANTS``; each row keeps the fastest): ``eager``,
  ``compile`` (``torch.compile`` of forward, backward and the optimizer step),
  ``reduce-overhead`` (the same with CUDA graphs), ``max-autotune-no-cudagraphs``,
  ``graph``/``graph-compile``/``graph-max-autotune`` (the whole step, Adam
  included, in one manually captured CUDA graph, the forward eager or compiled)
  and ``legacy-reduce-overhead`` (the step as it was before issue 23); the
  CUDA-graph modes are skipped on a CPU. ``scripts/gpu_torch_strong.sh`` runs them
  all on the 16-row grid.

Throughput is images/s from the median of ``--windows`` timed windows of
``--steps_per_call`` steps each (default 3200 / batch, clamped to 50..200),
after a warm-up (one compiled call for JAX; 3 compiling steps plus 20 for
torch), device-synchronised
(``jax.block_until_ready`` / ``torch.cuda.synchronize``).

FLOPs per step are counted two ways. *Analytic* counts useful convolution
multiply-accumulates x 2: the autoencoder forward x 3 (forward, input gradient,
weight gradient), a stride-2 4x4 transposed convolution as (4/2)^2 taps per
output pixel (dilation zeros not counted); for the perceptual loss VGG16 up to
relu3_3 at the upsampled size x 3 (reconstruction forward and input gradient,
target forward; VGG is frozen, so no weight gradient). BatchNorm, blur,
upsampling and the optimizer are left out. *XLA* is
``compiled.cost_analysis()["flops"]`` of the train loop (XLA counts the scan
body once; this script divides by the steps when it has multiplied): it skips
the padding and dilation zeros as the analytic count does, adds elementwise
work, and counts what the lowering really computes (e.g. the perceptual loss
runs VGG's backward over the target half of its concatenated batch too, about
4/3 of the analytic VGG work; the stem's input gradient is not computed). The
achieved fraction of peak is analytic FLOPs per second over the bf16 matmul
peak measured in the same run (chained ``--peak_size``^3 bf16 ``jnp.dot``s).

The test-split evaluation (``evaluation.make_evaluate`` over ``make_eval_step``:
PSNR, SSIM and MSE of ``--eval_images`` images) is compiled and timed once per
(model, precision).

Losses: pixel MSE (``losses.create`` of ``mse``), and the perceptual loss
(``losses.create`` of ``perceptual`` with ``layers=("relu3_3",)``,
``upsample=2``, ``vgg_dtype`` = the row's precision). VGG16 weights are the
library's pretrained ones (``vgg.load_weights``) on both sides; where they
cannot be found, both sides get the same random He-normal weights of the same
shapes through ``losses.make_perceptual(weights=...)`` (the report says
which; speed does not depend on the values).

Data are synthetic uniform uint8 images (``--num_images`` for training,
``--eval_images`` for the test split); throughput does not depend on pixel
values.

Commands:

  # The full grid on a GPU (scripts/gpu_benchmark.sh wraps this with --check,
  # --resume and --deadline_s, and shards rows over several GPUs when present):
  python scripts/benchmark.py --out $OUT/benchmark.json --markdown $OUT/benchmarks.md

  # The CPU row (issue 23): CAE mse b8 fp32, jax_dae vs PyTorch eager and compile on 2
  # threads, alternating windows, ratio printed (about 3 minutes on 2 cores):
  python scripts/benchmark.py --cpu --out /tmp/cpu.json

  # A tiny end-to-end run on CPU (TinyCAE at 16x16, two rows; a few minutes, most of it
  # torch.compile):
  python scripts/benchmark.py --smoke --out /tmp/b.json --markdown /tmp/b.md

  # Prove that both sides compute the same model (copy the JAX parameters into
  # torch, compare the blur, the forward and the losses of two steps):
  python scripts/benchmark.py --check_only --models CAE,ResCAE

``--model_set upsample=transpose,full_res_conv=space_to_depth`` measures jax_dae
with those ``CAE`` attributes (how its layers are computed: exact forms with
the same parameters, ``models/layers.py``), so ``--check --model_set ...`` also
proves those forms against torch.

Rows are run in a priority order (batch 8 fp32 and batch 64 bf16 first), each
printed as it completes, and the JSON is rewritten after every row, so a run
cut short keeps what it measured; ``--resume`` skips rows already in ``--out``
and ``--deadline_s`` skips rows that would start after that many seconds.
``--shard K/N`` runs every N-th row (one process per GPU) and ``--merge``
joins the shards' JSON into one report.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

# JAX and torch share the GPU: leave torch half of it (JAX preallocates 75% by default).
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.45")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from configs import default as default_config  # noqa: E402
from jax_dae import corruptions, evaluation, loops, losses, models, optimizers, writers  # noqa: E402
from jax_dae import steps as step_api  # noqa: E402  (`steps` is a count here)
from jax_dae.models import layers, vgg  # noqa: E402

CORRUPTION = "gaussian_blur(kernel=9,sigma=4)"
PRECISIONS = ("float32", "bfloat16")
LOSSES = ("mse", "perceptual")
# CAE attributes that choose how a layer is computed (same function, same parameters).
LAYER_FORMS = ("upsample", "full_res_conv", "downsample")
# PyTorch variants (``torch_reference.VARIANTS``); each row keeps the fastest.
TORCH_MODES = ("eager", "compile", "reduce-overhead", "max-autotune-no-cudagraphs", "graph",
               "graph-compile", "graph-max-autotune", "legacy-reduce-overhead")
# Perceptual loss of seed 000: VGG16 relu3_3 after x2 bilinear upsampling.
PERCEPTUAL_LAYER = "relu3_3"
PERCEPTUAL_UPSAMPLE = 2

FULL = dict(
    models="CAE,ResCAE", losses="mse,perceptual", batches="8,64", precisions="float32,bfloat16",
    torch_modes="eager,compile,reduce-overhead", steps_per_call=0, windows=3,
    num_images=1024, image_size=112, eval_images=3708, eval_batch_size=256, peak_size=8192,
)
SMOKE = dict(
    models="TinyCAE", losses="mse,perceptual", batches="4", precisions="float32,bfloat16",
    torch_modes="eager,compile,reduce-overhead", steps_per_call=5, windows=2,
    num_images=32, image_size=16, eval_images=40, eval_batch_size=16, peak_size=512,
)
# The CPU row (issue 23): the CAE mse b8 fp32 step, jax_dae against PyTorch on 2 threads.
CPU_ROW = dict(
    models="CAE", losses="mse", batches="8", precisions="float32", torch_modes="eager,compile",
    steps_per_call=2, windows=7, num_images=64, image_size=112, eval_images=40,
    eval_batch_size=8, peak_size=256,
)
# Rows run first: the reference points of SPEC.md ("Performance architecture").
PRIORITY = (("CAE", 8, "float32"), ("CAE", 64, "bfloat16"))


def log(message: str) -> None:
  print(f"[{time.perf_counter() - _T0:7.1f}s] {message}", flush=True)


_T0 = time.perf_counter()


# ---------------------------------------------------------------------------
# Environment.
# ---------------------------------------------------------------------------


def _try_import_torch():
  try:
    import torch
    import torch_reference
  except ImportError as e:
    log(f"torch is not available ({e}); torch rows skipped.")
    return None, None
  return torch, torch_reference


def environment(torch) -> dict[str, Any]:
  """Device name and library versions."""
  import flax
  import jaxlib
  import optax

  device = jax.devices()[0]
  env = {
      "python": platform.python_version(),
      "jax": jax.__version__,
      "jaxlib": jaxlib.__version__,
      "flax": flax.__version__,
      "optax": optax.__version__,
      "jax_backend": jax.default_backend(),
      "jax_device": device.device_kind,
      "jax_device_count": jax.device_count(),
      "host_cpus": os.cpu_count(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }
  try:
    import jax.extend.backend as jax_backend

    env["jax_platform_version"] = jax_backend.get_backend().platform_version
  except Exception:  # noqa: BLE001 - informational only
    pass
  if torch is not None:
    env["torch"] = torch.__version__
    env["torch_cuda"] = torch.version.cuda
    if torch.cuda.is_available():
      env["torch_device"] = torch.cuda.get_device_name()
      env["cudnn"] = torch.backends.cudnn.version()
  return env


def median_call_seconds(fn, *args, repeats: int) -> float:
  """Median device-synchronised seconds of ``fn(*args)`` over ``repeats`` calls after one."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def measure_bf16_peak(size: int, chain: int = 10, repeats: int = 5) -> dict[str, float]:
  """bf16 matmul FLOP/s: ``chain`` dependent ``size``^3 products per call, median of calls."""
  key_a, key_b = jax.random.split(jax.random.key(0))
  a = jax.random.normal(key_a, (size, size), jnp.bfloat16)
  b = (jax.random.normal(key_b, (size, size), jnp.float32) / math.sqrt(size)).astype(jnp.bfloat16)

  @jax.jit
  def chained(x, w):
    return jax.lax.fori_loop(0, chain, lambda _, y: jnp.dot(y, w), x)

  seconds = median_call_seconds(chained, a, b, repeats=repeats)
  flops = 2.0 * size**3 * chain
  return {"size": size, "chain": chain, "seconds": seconds, "flops_per_s": flops / seconds}


# ---------------------------------------------------------------------------
# Analytic FLOPs.
# ---------------------------------------------------------------------------


def cae_forward_macs(model, height: int, width: int) -> int:
  """Useful forward MACs of a ``cae.CAE`` on one image (see the module docstring)."""
  k = model.stem_kernel
  first, *rest = model.encoder_features
  channels = 3
  macs = height * width * first * channels * k * k
  h, w, channels = height, width, first
  for features in rest:
    h, w = -(-h // 2), -(-w // 2)
    macs += h * w * features * channels * 16
    channels = features
  macs += model.num_res_blocks * 2 * h * w * channels * channels * 9
  for features in model.decoder_features:
    h, w = 2 * h, 2 * w
    macs += h * w * features * channels * 4
    channels = features
  return macs + h * w * model.out_channels * channels * k * k


_VGG16 = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def vgg16_forward_macs(height: int, width: int, last: str = PERCEPTUAL_LAYER) -> int:
  """Forward MACs of VGG16 convolutions up to ``last`` (``reluB_L``) on one image."""
  last_block, last_layer = (int(x) for x in last[len("relu"):].split("_"))
  macs, channels, h, w = 0, 3, height, width
  for b, block in enumerate(_VGG16, start=1):
    for i, features in enumerate(block, start=1):
      macs += h * w * features * channels * 9
      channels = features
      if (b, i) == (last_block, last_layer):
        return macs
    h, w = h // 2, w // 2
  return macs


def analytic_flops_per_step(model, loss_name: str, batch: int, size: int) -> dict[str, float]:
  cae = cae_forward_macs(model, size, size)
  out = {"cae_forward_gmacs_per_image": cae / 1e9}
  macs = 3 * cae
  if loss_name == "perceptual":
    vgg = vgg16_forward_macs(PERCEPTUAL_UPSAMPLE * size, PERCEPTUAL_UPSAMPLE * size)
    out["vgg_forward_gmacs_per_image"] = vgg / 1e9
    macs += 3 * vgg
  out["flops_per_step"] = 2.0 * macs * batch
  return out


# ---------------------------------------------------------------------------
# jax_dae side.
# ---------------------------------------------------------------------------


def make_config(model_name: str, loss_name: str, batch: int, precision: str,
                model_set: dict[str, str] | None = None):
  """``configs/default.py`` with this row's model, loss, batch and dtype.

  ``model_set`` overrides ``config.model`` fields (e.g. ``CAE.upsample``, how
  the transposed convolutions are computed).

  The bf16 rows compute VGG16 in bf16 as well (``config.loss.vgg_dtype``), as
  torch's autocast does.
  """
  config = default_config.get_config()
  config.model.name = model_name
  config.model.dtype = precision
  for key, value in (model_set or {}).items():
    config.model[key] = value
  config.train.batch_size = batch
  config.corruption = CORRUPTION
  if loss_name == "perceptual":
    config.loss.name = "perceptual"
    config.loss.layers = (PERCEPTUAL_LAYER,)
    config.loss.layer_weights = (1.0,)
    config.loss.upsample = PERCEPTUAL_UPSAMPLE
    config.loss.vgg_weights = ""
    config.loss.vgg_dtype = precision
  else:
    config.loss.name = "mse"
  return config


@functools.cache
def vgg_weights() -> tuple[dict[str, np.ndarray], str]:
  """VGG16 weights for both sides: the library's pretrained ones, else random (He normal).

  Returns:
    ``(weights, description)`` with ``weights`` in ``jax_dae.models.vgg.load_weights``'s
    flat format (``"vgg/<conv>/kernel"`` HWIO, ``"vgg/<conv>/bias"``).
  """
  try:
    return vgg.load_weights(), "pretrained (jax_dae.models.vgg.load_weights)"
  except (FileNotFoundError, ValueError, OSError) as e:
    log(f"no pretrained VGG16 weights ({e}); both sides use random weights of the same shapes.")
  rng = np.random.default_rng(0)
  weights, cin = {}, 3
  for name in vgg.convs_needed((PERCEPTUAL_LAYER,)):
    cout = vgg.CHANNELS[vgg.LAYERS[int(name[len("conv")]) - 1]]
    std = math.sqrt(2.0 / (9 * cin))
    weights[f"vgg/{name}/kernel"] = (rng.standard_normal((3, 3, cin, cout)) * std).astype(
        np.float32)
    weights[f"vgg/{name}/bias"] = np.zeros((cout,), np.float32)
    cin = cout
  return weights, "random He-normal (pretrained weights not found)"


def vgg_convs(weights: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
  """The convolutions up to ``PERCEPTUAL_LAYER`` in network order, for the torch twin."""
  return [{"kernel": weights[f"vgg/{n}/kernel"], "bias": weights[f"vgg/{n}/bias"]}
          for n in vgg.convs_needed((PERCEPTUAL_LAYER,))]


def create_loss(config) -> losses.Loss:
  """The library's loss for ``config.loss``; with random VGG weights when no pretrained exist.

  With pretrained weights this is exactly ``losses.create(config.loss)``;
  otherwise ``losses.make_perceptual`` (which the registered loss wraps) gets
  the random weights directly.
  """
  if config.loss.name != "perceptual":
    return losses.create(config.loss)
  weights, source = vgg_weights()
  if source.startswith("pretrained"):
    return losses.create(config.loss)
  perceptual = losses.make_perceptual(
      layers=tuple(config.loss.layers), layer_weights=tuple(config.loss.layer_weights),
      upsample=config.loss.upsample, dtype=jnp.dtype(config.loss.vgg_dtype), weights=weights)

  def loss(reconstruction, clean, aux):
    del aux
    return perceptual(reconstruction, clean)

  return loss


def steps_per_window(args, batch: int) -> int:
  """``--steps_per_call``, or 3200 / batch clamped to 50..200 (about 0.3-3 s per window)."""
  return args.steps_per_call or min(200, max(50, 3200 // batch))


def synthetic_images(count: int, size: int, seed: int) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (count, size, size, 3), dtype=np.uint8)


def build_jax_loop(model_name, loss_name, batch, precision, images, steps, *, model_set=None,
                   optimizer: str = "", seed=0) -> dict[str, Any]:
  """jax_dae's train loop of one row (not yet lowered) and its first arguments.

  Also used by ``scripts/profile_step.py``, so that it profiles this very loop,
  and by ``scripts/bench_data_parallel.py`` (with ``optimizer="sgd"``).

  Returns:
    A dict with ``loop`` (``loops.make_train_loop`` of ``steps`` steps per
    call), its arguments ``state``, ``perm`` and ``step_key`` (``images`` is the
    fourth), and ``train_step`` and ``corrupt``.
  """
  config = make_config(model_name, loss_name, batch, precision, model_set)
  if optimizer:
    config.optimizer.name = optimizer
  image_shape = tuple(images.shape[1:])
  model = models.from_config(config)
  tx = optimizers.create(config)
  corrupt = corruptions.parse(config.corruption, image_shape)
  train_step = step_api.make_train_step(loss_fn=create_loss(config), corrupt=corrupt)
  loop = loops.make_train_loop(train_step, batch_size=batch,
                               steps_per_epoch=images.shape[0] // batch, steps_per_call=steps)
  init_key, perm_key, step_key = jax.random.split(jax.random.key(seed), 3)
  state = jax.jit(functools.partial(step_api.init_state, model, tx, image_shape))(init_key)
  perm = jax.random.permutation(perm_key, images.shape[0])
  return dict(loop=loop, state=state, perm=perm, step_key=step_key, train_step=train_step,
              corrupt=corrupt)


def run_jax_row(model_name, loss_name, batch, precision, images, args):
  """Compiles and times jax_dae's train loop for one row.

  Returns:
    ``(results, state, corrupt)``: the numbers, the trained state and the
    corruption (both reused by the evaluation).
  """
  steps = steps_per_window(args, batch)
  row = build_jax_loop(model_name, loss_name, batch, precision, images, steps,
                       model_set=args.model_set, seed=args.seed)
  loop, state, perm, step_key = row["loop"], row["state"], row["perm"], row["step_key"]
  train_step, corrupt = row["train_step"], row["corrupt"]

  t = time.perf_counter()
  lowered = loop.lower(state, images, perm, step_key)
  lower_s = time.perf_counter() - t
  t = time.perf_counter()
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t

  result = {"lower_s": lower_s, "compile_s": compile_s}
  result.update(xla_flops(compiled, train_step, state, images[:batch], steps))
  t = time.perf_counter()
  state, out = compiled(state, images, perm, step_key)
  jax.block_until_ready((state, out))
  result["first_call_s"] = time.perf_counter() - t
  times = []
  for _ in range(args.windows):
    t = time.perf_counter()
    state, out = compiled(state, images, perm, step_key)
    jax.block_until_ready((state, out))
    times.append(time.perf_counter() - t)
  last_loss = float(np.asarray(out["loss"])[-1])
  if not math.isfinite(last_loss):
    raise FloatingPointError(f"jax_dae loss became {last_loss}.")
  result.update(window_s=times, steps_per_window=steps,
                images_per_s=steps * batch / statistics.median(times),
                last_loss=last_loss)
  return result, state, corrupt


def xla_flops(compiled, train_step, state, batch_images, steps: int) -> dict[str, float]:
  """XLA's FLOP count per step of the compiled loop (see the module docstring)."""
  out = {}
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    loop_flops = float(cost["flops"])
    single = jax.jit(train_step).lower(state, batch_images, jax.random.key(0)).cost_analysis()
    single = single[0] if isinstance(single, list) else single
    hlo_step = float(single["flops"])
    out["xla_loop_flops"] = loop_flops
    out["hlo_step_flops"] = hlo_step
    # XLA counts a while loop's body once; divide if a version multiplies by the trip count.
    out["xla_flops_per_step"] = loop_flops / steps if loop_flops > 1.5 * hlo_step else loop_flops
  except Exception as e:  # noqa: BLE001 - a missing cost model must not stop the benchmark
    out["xla_flops_error"] = repr(e)
  return out


def run_jax_eval(state, corrupt, precision, args) -> dict[str, Any]:
  """Compiles and times the test-split evaluation (``make_evaluate``)."""
  batch = min(args.eval_batch_size, args.eval_images)
  host = synthetic_images(args.eval_images, args.image_size, args.seed + 2)
  test = jax.device_put(evaluation.pad_to_multiple(host, batch))
  evaluate = evaluation.make_evaluate(step_api.make_eval_step(corrupt=corrupt),
                                 num_examples=args.eval_images, batch_size=batch)
  key = jax.random.key(args.seed + 3)
  t = time.perf_counter()
  compiled = evaluate.lower(state, test, key).compile()
  compile_s = time.perf_counter() - t
  jax.block_until_ready(compiled(state, test, key))
  times = []
  for _ in range(max(args.windows, 1)):
    t = time.perf_counter()
    out = jax.block_until_ready(compiled(state, test, key))
    times.append(time.perf_counter() - t)
  return {"precision": precision, "images": args.eval_images, "batch_size": batch,
          "compile_s": compile_s, "eval_s": statistics.median(times), "window_s": times,
          "images_per_s": args.eval_images / statistics.median(times),
          "psnr": float(out["psnr"]), "ssim": float(out["ssim"])}


# ---------------------------------------------------------------------------
# PyTorch side.
# ---------------------------------------------------------------------------


def setup_torch(torch) -> str:
  """Fast-path settings the PyTorch rows use; returns the device type."""
  torch.backends.cudnn.benchmark = True
  torch.backends.cuda.matmul.allow_tf32 = True
  torch.backends.cudnn.allow_tf32 = True
  torch.set_float32_matmul_precision("high")
  return "cuda" if torch.cuda.is_available() else "cpu"


def torch_model_for(tr, model, device):
  return tr.TorchCAE(
      encoder_features=model.encoder_features, decoder_features=model.decoder_features,
      stem_kernel=model.stem_kernel, num_res_blocks=model.num_res_blocks,
      out_channels=model.out_channels,
  ).to(device)


def torch_loss_for(tr, loss_name: str, device):
  """The torch twin of the row's loss; VGG16 gets the same weights as the JAX side."""
  if loss_name == "mse":
    return tr.mse_loss, None
  loss = tr.PerceptualLoss({PERCEPTUAL_LAYER.replace("relu", "conv"): 1.0},
                           upsample=PERCEPTUAL_UPSAMPLE).to(device)
  weights, source = vgg_weights()
  tr.load_hwio_vgg(loss.vgg, vgg_convs(weights))
  return loss, source


def run_torch_mode(torch, tr, mode, model_name, loss_name, batch, precision, images,
                   args) -> dict[str, Any]:
  """Times one PyTorch mode for one row."""
  device = images.device
  sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
  torch._dynamo.reset()
  counters = torch._dynamo.utils.counters
  counters.clear()
  torch.manual_seed(args.seed)
  flax_model = models.create(model_name)
  model = torch_model_for(tr, flax_model, device)
  loss, weights_source = torch_loss_for(tr, loss_name, device)
  blur = tr.GaussianBlur(9, 4.0, 3).to(device)
  steps = steps_per_window(args, batch)
  # Building the step of a whole-step CUDA graph warms up (compiles, autotunes) and records;
  # otherwise the first steps compile (and, for reduce-overhead, record); cuDNN autotunes
  # in the first step of each shape, so a short second warm-up suffices.
  t = time.perf_counter()
  step, _ = tr.make_train_step(model, loss, blur, images, batch, mode=mode,
                               bf16=precision == "bfloat16")
  for _ in range(3):
    value = step()
  sync()
  compile_s = time.perf_counter() - t
  for _ in range(min(steps, 20)):
    value = step()
  sync()
  times = []
  for _ in range(args.windows):
    t = time.perf_counter()
    for _ in range(steps):
      value = step()
    sync()
    times.append(time.perf_counter() - t)
  last_loss = float(value.detach())
  if not math.isfinite(last_loss):
    raise FloatingPointError(f"torch {mode} loss became {last_loss}.")
  result = {"first_steps_s": compile_s, "window_s": times, "steps_per_window": steps,
            "images_per_s": steps * batch / statistics.median(times), "last_loss": last_loss,
            "optimizer": ("fused" if step.optimizer.defaults.get("fused") else "foreach")
            + (" capturable" if step.optimizer.defaults.get("capturable") else "") + " Adam"}
  if mode != "eager":
    # A graph break or a skipped CUDA graph would make the mode measure something else.
    result["dynamo"] = {"unique_graphs": counters["stats"].get("unique_graphs", 0),
                        "graph_breaks": sum(counters["graph_break"].values()),
                        "cudagraph_skips": counters["inductor"].get("cudagraph_skips", 0)}
  if loss_name == "perceptual":
    result["vgg_weights"] = weights_source
  del step, model, loss
  if device.type == "cuda":
    torch.cuda.empty_cache()
  return result


def run_cpu_row(torch, tr, args) -> dict[str, Any]:
  """The CPU row: jax_dae and each PyTorch mode in alternating timed windows.

  On a CPU shared with other work, windows taken one after another drift with
  the load, so the sides take turns: window ``w`` of every side runs before
  window ``w + 1`` of any (the order rotates each round), and each side's
  throughput is the median of its windows. PyTorch runs on ``--threads``
  threads; XLA:CPU uses the host's cores (run under ``taskset -c 0-1`` on a
  larger host to match).
  """
  model_name, loss_name, batch, precision = (args.models[0], args.losses[0], args.batches[0],
                                             args.precisions[0])
  steps = steps_per_window(args, batch)
  torch.set_num_threads(args.threads)
  host = synthetic_images(args.num_images, args.image_size, args.seed + 1)
  images = jax.device_put(host)
  row = build_jax_loop(model_name, loss_name, batch, precision, images, steps,
                       model_set=args.model_set, seed=args.seed)
  t = time.perf_counter()
  compiled = row["loop"].lower(row["state"], images, row["perm"], row["step_key"]).compile()
  jax_compile_s = time.perf_counter() - t
  jax_state = {"state": row["state"]}

  def jax_window():
    state, out = compiled(jax_state["state"], images, row["perm"], row["step_key"])
    jax.block_until_ready((state, out))
    jax_state["state"] = state
    return float(np.asarray(out["loss"])[-1])

  windows = {"jax_dae": jax_window}
  first = {"jax_dae": jax_compile_s}
  timages = torch.from_numpy(host)
  for mode in args.torch_modes:
    if mode in tr.CUDA_ONLY:
      continue
    torch.manual_seed(args.seed)
    model = torch_model_for(tr, models.create(model_name), "cpu")
    loss, _ = torch_loss_for(tr, loss_name, "cpu")
    blur = tr.GaussianBlur(9, 4.0, 3)
    t = time.perf_counter()
    step, _ = tr.make_train_step(model, loss, blur, timages, batch, mode=mode,
                                 bf16=precision == "bfloat16")
    step()
    first[f"torch {mode}"] = time.perf_counter() - t

    def torch_window(step=step):
      for _ in range(steps):
        value = step()
      return float(value.detach())

    windows[f"torch {mode}"] = torch_window
  for fn in windows.values():  # warm-up window
    fn()
  times = {name: [] for name in windows}
  names = list(windows)
  for w in range(args.windows):
    for name in names[w % len(names):] + names[:w % len(names)]:
      t = time.perf_counter()
      last = windows[name]()
      times[name].append(time.perf_counter() - t)
      if not math.isfinite(last):
        raise FloatingPointError(f"{name} loss became {last}.")
  ips = {name: steps * batch / statistics.median(ts) for name, ts in times.items()}
  best = max((n for n in ips if n.startswith("torch")), key=ips.get, default=None)
  result = {"key": row_key(model_name, loss_name, batch, precision) + "/cpu", "threads":
            args.threads, "steps_per_window": steps, "window_s": times, "images_per_s": ips,
            "first_s": first, "best_torch": best,
            "jax_over_best_torch": ips["jax_dae"] / ips[best] if best else None,
            "load_average": os.getloadavg()}
  cells = ", ".join(f"{n} {v:.2f}" for n, v in ips.items())
  log(f"CPU row {result['key']} ({args.threads} threads, median of {args.windows} alternating "
      f"windows of {steps} steps): {cells} img/s; jax_dae / {best}: "
      f"{_fmt(result['jax_over_best_torch'], '.2f')}; load average {os.getloadavg()[0]:.1f}")
  return result


# ---------------------------------------------------------------------------
# Correctness check: both sides compute the same model.
# ---------------------------------------------------------------------------


def run_check(torch, tr, model_names, args, tol: float = 1e-4) -> list[dict[str, Any]]:
  """Copies jax_dae's initial CAE parameters into torch and compares two steps.

  Batch 8, float32, pixel MSE, full float32 matmul precision on both sides.
  Compares the blurred batch, the train-mode forward output and the losses of
  the first two steps (the second runs on parameters after one Adam update,
  so it also checks the gradients and the optimizer).
  """
  results = []
  device = "cuda" if torch.cuda.is_available() else "cpu"
  saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
           torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
  # Plain float32 arithmetic: no TF32, no autotuned (e.g. Winograd/FFT) algorithms.
  torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
  torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
  batch, size = 8, args.image_size
  host = synthetic_images(4 * batch, size, args.seed + 5)
  try:
    with jax.default_matmul_precision("highest"):
      for model_name in model_names:
        config = make_config(model_name, "mse", batch, "float32", args.model_set)
        image_shape = (size, size, 3)
        model = models.from_config(config)
        tx = optimizers.create(config)
        corrupt = corruptions.parse(config.corruption, image_shape)
        train_step = step_api.make_train_step(loss_fn=losses.create(config.loss), corrupt=corrupt)
        loop = loops.make_train_loop(train_step, batch_size=batch,
                                     steps_per_epoch=len(host) // batch, steps_per_call=1)
        init_key, perm_key, step_key = jax.random.split(jax.random.key(args.seed), 3)
        state = jax.jit(functools.partial(step_api.init_state, model, tx, image_shape))(init_key)
        params, stats = jax.device_get((state.params, state.batch_stats))
        images = jax.device_put(host)
        perm = jax.random.permutation(perm_key, len(host))
        perm_np = np.asarray(perm)
        # JAX: blur and forward of batch 0, then two library steps.
        clean0 = step_api.to_float(jnp.asarray(host[perm_np[:batch]]))
        noisy0 = corrupt(jax.random.split(jax.random.key(0), batch), clean0)
        recon0, _ = model.apply({"params": params, "batch_stats": stats}, noisy0, train=True,
                                mutable=["batch_stats"])
        jax_losses = []
        for _ in range(2):
          state, out = loop(state, images, perm, step_key)
          jax_losses.append(float(np.asarray(out["loss"])[0]))
        # Torch: the same parameters, blur, batches and optimizer.
        tmodel = tr.load_flax_cae(torch_model_for(tr, model, device), params, stats)
        blur = tr.GaussianBlur(9, 4.0, 3).to(device)
        timages = torch.from_numpy(host).to(device)
        step, fwd = tr.make_train_step(tmodel, tr.mse_loss, blur, timages, batch, mode="eager",
                                       bf16=False)
        idx0 = torch.from_numpy(perm_np[:batch].astype(np.int64)).to(device)
        with torch.no_grad():
          tclean = timages.index_select(0, idx0).permute(0, 3, 1, 2).float().div(255.0)
          tnoisy = blur(tclean)
          trecon = tmodel(tnoisy.contiguous(memory_format=torch.channels_last))
        torch_losses = []
        for s in range(2):
          idx = torch.from_numpy(perm_np[s * batch:(s + 1) * batch].astype(np.int64)).to(device)
          value = fwd(idx)
          value.backward()
          step.optimizer.step()
          step.optimizer.zero_grad(set_to_none=True)
          torch_losses.append(float(value.detach()))
        to_nhwc = lambda t: t.detach().permute(0, 2, 3, 1).cpu().numpy()  # noqa: E731
        diffs = {
            "blur": float(np.max(np.abs(to_nhwc(tnoisy) - np.asarray(noisy0)))),
            "forward": float(np.max(np.abs(to_nhwc(trecon) - np.asarray(recon0)))),
            "loss_step1": abs(torch_losses[0] - jax_losses[0]),
            "loss_step2": abs(torch_losses[1] - jax_losses[1]),
        }
        scale = {"loss_step1": max(1.0, abs(jax_losses[0])),
                 "loss_step2": max(1.0, abs(jax_losses[1]))}
        entry = {"model": model_name, "batch": batch, "image_size": size,
                 "jax_losses": jax_losses, "torch_losses": torch_losses}
        if model_name == model_names[0] and "perceptual" in args.losses:
          # The perceptual loss of the same reconstruction and target (same VGG16 weights).
          weights, source = vgg_weights()
          jax_perceptual = losses.make_perceptual(
              layers=(PERCEPTUAL_LAYER,), upsample=PERCEPTUAL_UPSAMPLE, weights=weights)
          pj = float(jax_perceptual(recon0, clean0)[0])
          tloss = tr.PerceptualLoss({PERCEPTUAL_LAYER.replace("relu", "conv"): 1.0},
                                    upsample=PERCEPTUAL_UPSAMPLE).to(device)
          tr.load_hwio_vgg(tloss.vgg, vgg_convs(weights))
          with torch.no_grad():
            pt = float(tloss(trecon, tclean))
          diffs["perceptual"] = abs(pt - pj)
          scale["perceptual"] = max(1.0, abs(pj))
          entry.update(jax_perceptual=pj, torch_perceptual=pt, vgg_weights=source)
        ok = all(v <= tol * scale.get(k, 1.0) for k, v in diffs.items())
        entry.update(max_abs_diff=diffs, tolerance=f"{tol} (losses: relative when > 1)", ok=ok)
        results.append(entry)
        extra = (f", perceptual {diffs['perceptual']:.2e} (jax {entry['jax_perceptual']:.6g}, "
                 f"torch {entry['torch_perceptual']:.6g})" if "perceptual" in diffs else "")
        log(f"check {model_name}: max |torch - jax| blur {diffs['blur']:.2e}, forward "
            f"{diffs['forward']:.2e}, loss step 1 {diffs['loss_step1']:.2e}, step 2 "
            f"{diffs['loss_step2']:.2e} (losses jax {jax_losses}, torch {torch_losses}){extra}: "
            f"{'OK' if ok else 'MISMATCH'}")
  finally:
    (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
     torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) = saved
  return results


# ---------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------


def row_key(model_name, loss_name, batch, precision) -> str:
  return f"{model_name}/{loss_name}/b{batch}/{precision}"


def write_json(path: str | None, report: dict) -> None:
  """Writes ``report`` atomically (a reader never sees half a file)."""
  if path:
    writers.write_json(path, report)


def write_outputs(args, report: dict) -> None:
  write_json(args.out, report)
  if args.markdown:
    path = Path(args.markdown)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(markdown(report))


def _fmt(value, spec: str = ",.0f", missing: str = "-") -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return missing
  return format(value, spec)


def _status(result: dict | None) -> str:
  result = result or {}
  return _fmt(result.get("images_per_s"), missing=result.get("status", "-"))


def summarise_row(row: dict) -> dict[str, Any]:
  """Derived numbers of one row: best torch mode, ratio, FLOP rates, fraction of peak."""
  peak = row.get("peak_flops_per_s")
  jax_ips = (row.get("jax") or {}).get("images_per_s")
  valid = {m: r["images_per_s"] for m, r in (row.get("torch") or {}).items()
           if r.get("images_per_s")}
  best = max(valid, key=valid.get) if valid else None
  out = {"best_torch_mode": best, "best_torch_images_per_s": valid.get(best),
         "jax_over_best_torch": jax_ips / valid[best] if jax_ips and best else None}
  flops = row.get("flops_per_step")
  for name, ips in (("jax", jax_ips), ("best_torch", valid.get(best))):
    if ips and flops:
      out[f"{name}_flops_per_s"] = flops * ips / row["batch"]
      out[f"{name}_fraction_of_bf16_peak"] = out[f"{name}_flops_per_s"] / peak if peak else None
  return out


def markdown(report: dict) -> str:
  """The report as markdown: context, the main table, compile times, evaluation, check."""
  env, meta = report["environment"], report["meta"]
  peak = report.get("peak") or {}
  modes = meta["torch_modes"]
  lines = [
      "# jax_dae training throughput vs PyTorch",
      "",
      f"Command: `{meta['command']}`",
      "",
      f"Device: {env.get('jax_device')} ({env.get('jax_backend')}; {env.get('jax_device_count')}"
      f" device(s) visible per process); host CPUs: {env.get('host_cpus')}.",
      "",
      "Versions: " + ", ".join(
          f"{k} {env[k]}" for k in ("python", "jax", "jaxlib", "flax", "optax", "torch",
                                    "torch_cuda", "cudnn", "jax_platform_version")
          if env.get(k) is not None) + ".",
      "",
      f"XLA_FLAGS: `{env.get('xla_flags') or '(none)'}`.",
      "",
      f"jax_dae layer forms (`CAE` attributes): {meta.get('model_set', '-')}.",
      "",
      f"Data: {meta['data']}. Corruption inside the step: `{CORRUPTION}`. VGG16 weights "
      f"(perceptual rows, both sides): {meta.get('vgg_weights', '-')}. Throughput: images/s, "
      f"median of {meta['windows']} windows of {meta['steps_per_call'] or '3200/batch (50..200)'}"
      " steps after warm-up.",
      "",
  ]
  if peak.get("flops_per_s"):
    lines += [f"Measured bf16 matmul peak: {peak['flops_per_s'] / 1e12:,.1f} TFLOP/s "
              f"({peak['chain']} chained {peak['size']}^3 `jnp.dot`s per call).", ""]
  header = (["model", "loss", "batch", "precision", "jax_dae"] + [f"torch {m}" for m in modes]
            + ["jax / best torch", "GFLOP/step analytic", "GFLOP/step XLA", "jax TFLOP/s",
               "jax % bf16 peak", "best torch % bf16 peak"])
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in report["rows"]:
    s = summarise_row(row)
    j = row.get("jax") or {}
    cells = [row["model"], row["loss"], str(row["batch"]), row["precision"], _status(j)]
    for m in modes:
      cell = _status((row.get("torch") or {}).get(m))
      cells.append(f"**{cell}**" if m == s["best_torch_mode"] else cell)
    xla = j.get("xla_flops_per_step")
    cells += [
        _fmt(s["jax_over_best_torch"], ".2f"),
        _fmt(row["flops_per_step"] / 1e9 if row.get("flops_per_step") else None, ".4g"),
        _fmt(xla / 1e9 if xla else None, ".4g"),
        _fmt(s["jax_flops_per_s"] / 1e12 if s.get("jax_flops_per_s") else None, ".3g"),
        _fmt(100 * s["jax_fraction_of_bf16_peak"]
             if s.get("jax_fraction_of_bf16_peak") else None, ".1f"),
        _fmt(100 * s["best_torch_fraction_of_bf16_peak"]
             if s.get("best_torch_fraction_of_bf16_peak") else None, ".1f"),
    ]
    lines.append("| " + " | ".join(cells) + " |")
  lines += [
      "",
      "Bold: the fastest PyTorch mode of the row, which the ratio uses. Analytic FLOPs: useful "
      "convolution MACs x 2; the autoencoder x 3 (forward, input gradient, weight gradient); "
      f"for the perceptual loss VGG16 to {PERCEPTUAL_LAYER} at {PERCEPTUAL_UPSAMPLE}x size x 3 "
      "(reconstruction forward and input gradient, target forward); transposed convolutions "
      "without the dilation zeros; BatchNorm, blur, resize and Adam not counted. XLA FLOPs: "
      "`compiled.cost_analysis()['flops']` per step (includes elementwise work and whatever "
      "the lowering computes, e.g. VGG's backward over the target half of the batch). Percent "
      "of peak: analytic FLOP/s over the measured bf16 matmul peak, for fp32 rows too.",
      "",
  ]
  compiled = [r for r in report["rows"] if (r.get("jax") or {}).get("compile_s")]
  if compiled:
    lines += ["## Compile time (s)", "",
              "JAX: `loop.lower(...)` and `.compile()` timed apart, then the first call. "
              "Torch: the first 3 steps (Dynamo, Inductor and, for reduce-overhead, CUDA graph "
              "recording; cuDNN autotuning in eager). Rows after the first in a process reuse "
              "in-process autotuning results and caches.", "",
              "| row | jax lower | jax compile | jax first call | "
              + " | ".join(f"torch {m}" for m in modes) + " |",
              "|" + "---|" * (4 + len(modes))]
    for row in compiled:
      j = row["jax"]
      cells = [row["key"], _fmt(j.get("lower_s"), ".1f"), _fmt(j.get("compile_s"), ".1f"),
               _fmt(j.get("first_call_s"), ".2f")]
      cells += [_fmt(((row.get("torch") or {}).get(m) or {}).get("first_steps_s"), ".1f")
                for m in modes]
      lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
  if report.get("eval"):
    lines += ["## Test-split evaluation (`make_evaluate` over `make_eval_step`: PSNR, SSIM, MSE "
              "of reconstruction and corrupted input)", "",
              "| model | precision | images | batch | compile s | eval s | images/s |",
              "|---|---|---|---|---|---|---|"]
    for e in report["eval"]:
      if "error" in e:
        lines.append(f"| {e['model']} | {e['precision']} | error: {e['error']} | | | | |")
        continue
      lines.append(f"| {e['model']} | {e['precision']} | {e['images']} | {e['batch_size']} | "
                   f"{_fmt(e['compile_s'], '.1f')} | {_fmt(e['eval_s'], '.3f')} | "
                   f"{_fmt(e['images_per_s'])} |")
    lines.append("")
  if report.get("check"):
    lines += ["## Correctness check", "",
              "jax_dae's initial parameters copied into the torch model; batch 8, float32 with "
              "full-precision matmuls on both sides; blurred input, train-mode forward, and the "
              "pixel-MSE losses of two library train steps (the second after one Adam update); "
              "perceptual: the loss of the same reconstruction and target.", ""]
    for c in report["check"]:
      d = c["max_abs_diff"]
      extra = f", perceptual {d['perceptual']:.1e}" if "perceptual" in d else ""
      lines.append(f"- {c['model']} ({c['image_size']}x{c['image_size']}): max |torch - jax| "
                   f"blur {d['blur']:.1e}, forward {d['forward']:.1e}, loss step 1 "
                   f"{d['loss_step1']:.1e}, step 2 {d['loss_step2']:.1e}{extra}: "
                   f"{'OK' if c['ok'] else 'MISMATCH'}")
    lines.append("")
  notes = [f"- {r['key']}: {'; '.join(r['notes'])}" for r in report["rows"] if r.get("notes")]
  errors = [f"- {r['key']} {side}: {res.get('error')}" for r in report["rows"]
            for side, res in [("jax", r.get("jax") or {})]
            + [(f"torch {m}", v) for m, v in (r.get("torch") or {}).items()]
            if res.get("status") == "error"]
  if notes or errors:
    lines += ["## Notes", ""] + notes + errors + [""]
  return "\n".join(lines)


def print_table(report: dict) -> None:
  modes = report["meta"]["torch_modes"]
  head = f"{'row':32s} {'jax_dae':>8s} " + " ".join(f"{m[:15]:>15s}" for m in modes)
  head += f" {'jax/best':>8s} {'GFLOP/step':>10s} {'XLA GFLOP':>10s} {'jax%peak':>8s}"
  head += f" {'compile s':>9s}"
  print(head)
  for row in report["rows"]:
    s = summarise_row(row)
    j = row.get("jax") or {}
    line = f"{row['key']:32s} {_status(j):>8s} "
    line += " ".join(f"{_status((row.get('torch') or {}).get(m))[:15]:>15s}" for m in modes)
    xla = j.get("xla_flops_per_step")
    frac = s.get("jax_fraction_of_bf16_peak")
    line += (f" {_fmt(s['jax_over_best_torch'], '.2f'):>8s}"
             f" {_fmt(row['flops_per_step'] / 1e9 if row.get('flops_per_step') else None, '.4g'):>10s}"  # noqa: E501
             f" {_fmt(xla / 1e9 if xla else None, '.4g'):>10s}"
             f" {_fmt(100 * frac if frac else None, '.2f'):>8s}"
             f" {_fmt(j.get('compile_s'), '.1f'):>9s}")
    print(line)
  for e in report.get("eval", []):
    if "error" not in e:
      print(f"eval {e['model']}/{e['precision']}: {e['images']} images in {e['eval_s']:.3f} s "
            f"(compile {e['compile_s']:.1f} s)")
  sys.stdout.flush()


# ---------------------------------------------------------------------------
# Driver.
# ---------------------------------------------------------------------------


def parse_model_set(text: str) -> dict[str, str]:
  """``"a=1,b=x"`` -> ``{"a": "1", "b": "x"}`` (config.model overrides)."""
  pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
  if any(len(pair) != 2 for pair in pairs):
    raise argparse.ArgumentTypeError(f"expected key=value[,key=value...], got {text!r}")
  return {k.strip(): v.strip() for k, v in pairs}


def model_forms(model_set: dict[str, str]) -> dict[str, str]:
  """The CAE's layer-form attributes in effect: the library's defaults, then ``model_set``."""
  forms = {name: str(getattr(models.CAE, name)) for name in LAYER_FORMS}
  forms = {**forms, **model_set}
  # "auto" stands for the form chosen for this backend (models/layers.py AUTO_FORMS).
  return {k: f"auto ({layers.auto_form(k)})" if k in LAYER_FORMS and v == "auto" else v
          for k, v in forms.items()}


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--models", help=f"comma list of CAE-family model names ({FULL['models']})")
  p.add_argument("--losses", help=f"comma list from {LOSSES}")
  p.add_argument("--batches", help="comma list of batch sizes (8,64)")
  p.add_argument("--precisions", help=f"comma list from {PRECISIONS}")
  p.add_argument("--torch_modes", help=f"comma list from {TORCH_MODES}")
  p.add_argument("--steps_per_call", type=int,
                 help="steps per timed window and per compiled JAX call (0: 3200 / batch, "
                      "clamped to 50..200)")
  p.add_argument("--windows", type=int, help="timed windows per measurement (3)")
  p.add_argument("--num_images", type=int, help="resident training images (1024)")
  p.add_argument("--image_size", type=int, help="image side in pixels (112)")
  p.add_argument("--eval_images", type=int, help="test-split size for the evaluation (3708)")
  p.add_argument("--eval_batch_size", type=int, help="evaluation batch (256)")
  p.add_argument("--peak_size", type=int, help="side of the bf16 peak matmul (8192)")
  p.add_argument("--model_set", default="", type=parse_model_set,
                 help="comma list of key=value config.model overrides, e.g. how jax_dae "
                      "computes its layers: upsample=transpose,full_res_conv=space_to_depth "
                      "(default: the library's defaults)")
  p.add_argument("--no_eval", action="store_true", help="skip the test-split evaluation")
  p.add_argument("--smoke", action="store_true",
                 help="tiny CPU-sized run: TinyCAE at 16x16, batch 4, few steps, two rows "
                      "(mse/float32 and perceptual/bfloat16) unless --losses/--precisions")
  p.add_argument("--skip_torch", action="store_true", help="jax_dae rows only")
  p.add_argument("--cpu", action="store_true",
                 help="the CPU row: CAE mse b8 fp32, jax_dae vs PyTorch eager and compile on "
                      "--threads threads, in alternating windows (other grid flags still apply)")
  p.add_argument("--threads", type=int, default=2, help="PyTorch threads of the CPU row (2)")
  p.add_argument("--check", action="store_true",
                 help="first prove that torch and jax_dae compute the same model (first model)")
  p.add_argument("--check_only", action="store_true",
                 help="run the check for every --models entry and exit (1 on mismatch)")
  p.add_argument("--deadline_s", type=float, default=0.0,
                 help="skip rows and modes that would start after this many seconds (0: none)")
  p.add_argument("--resume", action="store_true", help="keep the complete rows already in --out")
  p.add_argument("--shard", default="0/1",
                 help="K/N: run rows K, K+N, K+2N, ... of the grid (one process per GPU)")
  p.add_argument("--merge", nargs="+", metavar="JSON",
                 help="merge shard outputs into --out/--markdown and exit")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", help="JSON results, rewritten after every row")
  p.add_argument("--markdown", help="markdown report, rewritten after every row")
  args = p.parse_args(argv)
  args.diagonal = args.smoke and args.losses is None and args.precisions is None
  defaults = SMOKE if args.smoke else CPU_ROW if args.cpu else FULL
  for name, value in defaults.items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  args.models = [m for m in args.models.split(",") if m]
  args.losses = [m for m in args.losses.split(",") if m]
  args.batches = [int(b) for b in args.batches.split(",") if b]
  args.precisions = [m for m in args.precisions.split(",") if m]
  args.torch_modes = [m for m in args.torch_modes.split(",") if m]
  cae_family = [n for n in models.available() if type(models.create(n)) is models.CAE]
  for name, allowed in (("losses", LOSSES), ("precisions", PRECISIONS),
                        ("torch_modes", TORCH_MODES), ("models", cae_family)):
    bad = sorted(set(getattr(args, name)) - set(allowed))
    if bad:
      p.error(f"--{name}: {', '.join(bad)} unknown; allowed: {', '.join(allowed)}.")
  try:
    args.shard_index, args.num_shards = (int(x) for x in args.shard.split("/"))
    assert 0 <= args.shard_index < args.num_shards
  except (ValueError, AssertionError):
    p.error(f"--shard={args.shard!r}: expected K/N with 0 <= K < N.")
  return args


def grid(args) -> list[tuple[str, str, int, str]]:
  """The rows in run order: SPEC's reference points first, then grid order."""
  if args.diagonal:
    pairs = list(zip(args.losses, args.precisions, strict=False))
    rows = [(m, loss, b, prec) for m in args.models for b in args.batches for loss, prec in pairs]
  else:
    rows = [(m, loss, b, prec) for m in args.models for b in args.batches
            for prec in args.precisions for loss in args.losses]

  def priority(row):
    m, _, b, prec = row
    return PRIORITY.index((m, b, prec)) if (m, b, prec) in PRIORITY else len(PRIORITY)

  return sorted(rows, key=priority)  # Stable: grid order within a priority.


def merge(args) -> int:
  """Combines the JSON of several shards into one report."""
  reports = [json.loads(Path(f).read_text()) for f in args.merge]
  report = reports[0]
  report["meta"]["merged_from"] = list(args.merge)
  report["meta"]["shard_commands"] = [r["meta"]["command"] for r in reports]
  order = {row_key(*r): i for i, r in enumerate(grid(args))}
  report["rows"] = sorted((row for r in reports for row in r["rows"]),
                          key=lambda row: order.get(row["key"], len(order)))
  report["eval"] = [e for r in reports for e in r.get("eval", [])]
  report["check"] = [c for r in reports for c in r.get("check", [])]
  peaks = [r["peak"]["flops_per_s"] for r in reports if (r.get("peak") or {}).get("flops_per_s")]
  if peaks:
    report["peak"]["flops_per_s_per_shard"] = peaks
  write_outputs(args, report)
  print_table(report)
  return 0


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.merge:
    return merge(args)
  use_torch = not args.skip_torch or args.check or args.check_only
  torch, tr = _try_import_torch() if use_torch else (None, None)
  torch_device = setup_torch(torch) if torch is not None else None
  modes = [] if args.skip_torch or torch is None else args.torch_modes
  report = {
      "meta": {
          "command": " ".join(["python"] + sys.argv),
          "args": dict(vars(args)),
          "torch_modes": modes,
          "steps_per_call": args.steps_per_call, "windows": args.windows,
          "model_set": ", ".join(f"{k}={v}" for k, v in model_forms(args.model_set).items()),
          "data": (f"synthetic uniform uint8, {args.num_images} training images of "
                   f"{args.image_size}x{args.image_size}x3 resident on the device; "
                   f"{args.eval_images} test images"),
          "started": time.strftime("%Y-%m-%d %H:%M:%S"),
      },
      "environment": environment(torch),
      "rows": [], "eval": [], "check": [],
  }
  log(f"devices: {jax.devices()}; torch device: {torch_device}")
  if "perceptual" in args.losses:
    report["meta"]["vgg_weights"] = vgg_weights()[1]
  if args.resume and args.out and Path(args.out).exists():
    previous = json.loads(Path(args.out).read_text())
    report["rows"] = [r for r in previous.get("rows", []) if r.get("complete")]
    report["eval"] = [e for e in previous.get("eval", []) if "error" not in e]
    report["check"] = previous.get("check", [])
    log(f"resuming: {len(report['rows'])} complete rows kept from {args.out}")

  if (args.check or args.check_only) and not report["check"]:
    if torch is None:
      log("--check needs torch; skipped.")
    else:
      names = args.models if args.check_only else args.models[:1]
      report["check"] = run_check(torch, tr, names, args)
      write_outputs(args, report)
  if args.check_only:
    return 0 if report["check"] and all(c["ok"] for c in report["check"]) else 1
  if args.cpu:
    report["cpu_row"] = run_cpu_row(torch, tr, args) if torch is not None else None
    report["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    write_outputs(args, report)
    return 0

  report["peak"] = measure_bf16_peak(args.peak_size)
  peak = report["peak"]["flops_per_s"]
  log(f"bf16 matmul peak: {peak / 1e12:.1f} TFLOP/s ({args.peak_size}^3 x "
      f"{report['peak']['chain']})")
  write_outputs(args, report)

  host = synthetic_images(args.num_images, args.image_size, args.seed + 1)
  images = jax.device_put(host)
  timages = torch.from_numpy(host).to(torch_device) if modes else None
  done = {r["key"] for r in report["rows"]}
  evaluated = {(e["model"], e["precision"]) for e in report["eval"]}
  rows = grid(args)[args.shard_index::args.num_shards]
  remaining = [r for r in rows if row_key(*r) not in done]
  log(f"{len(remaining)} of {len(rows)} rows to run")

  for model_name, loss_name, batch, precision in remaining:
    key = row_key(model_name, loss_name, batch, precision)
    row = {"key": key, "model": model_name, "loss": loss_name, "batch": batch,
           "precision": precision, "image_size": args.image_size, "jax": {}, "torch": {},
           "notes": [], "peak_flops_per_s": peak}
    row.update(analytic_flops_per_step(models.create(model_name), loss_name, batch,
                                       args.image_size))
    report["rows"].append(row)
    if args.deadline_s and time.perf_counter() - _T0 > args.deadline_s:
      row["jax"] = {"status": "deadline"}
      row["torch"] = {m: {"status": "deadline"} for m in modes}
      log(f"{key}: skipped (deadline {args.deadline_s:.0f} s)")
      write_outputs(args, report)
      continue

    try:
      result, state, corrupt = run_jax_row(model_name, loss_name, batch, precision, images, args)
      row["jax"] = result
      log(f"{key}: jax_dae {result['images_per_s']:,.0f} img/s (lower {result['lower_s']:.1f} s,"
          f" compile {result['compile_s']:.1f} s)")
      if not args.no_eval and (model_name, precision) not in evaluated:
        evaluated.add((model_name, precision))
        try:
          ev = {"model": model_name, **run_jax_eval(state, corrupt, precision, args)}
          log(f"{model_name}/{precision}: test eval of {ev['images']} images {ev['eval_s']:.3f} s"
              f" (compile {ev['compile_s']:.1f} s)")
        except Exception as e:  # noqa: BLE001 - keep the rest of the grid
          ev = {"model": model_name, "precision": precision, "error": repr(e)}
          log(f"{model_name}/{precision}: eval failed: {e!r}")
        report["eval"].append(ev)
      del state
    except Exception as e:  # noqa: BLE001 - keep the rest of the grid
      row["jax"] = {"status": "error", "error": repr(e), "traceback": traceback.format_exc()}
      log(f"{key}: jax_dae failed: {e!r}")
    write_outputs(args, report)

    for mode in modes:
      if mode in tr.CUDA_ONLY and torch_device != "cuda":
        row["torch"][mode] = {"status": "n/a (CUDA only)"}
        continue
      if args.deadline_s and time.perf_counter() - _T0 > args.deadline_s:
        row["torch"][mode] = {"status": "deadline"}
        continue
      try:
        r = run_torch_mode(torch, tr, mode, model_name, loss_name, batch, precision, timages,
                           args)
        row["torch"][mode] = r
        dynamo = r.get("dynamo", {})
        if dynamo.get("graph_breaks"):
          row["notes"].append(f"torch {mode}: {dynamo['graph_breaks']} graph breaks")
        if mode == "reduce-overhead" and dynamo.get("cudagraph_skips"):
          row["notes"].append(f"torch {mode}: CUDA graphs skipped {dynamo['cudagraph_skips']}x "
                              "(see the log for the reason)")
        log(f"{key}: torch {mode} {r['images_per_s']:,.0f} img/s "
            f"(first 3 steps {r['first_steps_s']:.1f} s){' ' + str(dynamo) if dynamo else ''}")
      except Exception as e:  # noqa: BLE001 - keep the rest of the grid
        row["torch"][mode] = {"status": "error", "error": repr(e),
                              "traceback": traceback.format_exc()}
        log(f"{key}: torch {mode} failed: {e!r}")
      write_outputs(args, report)
    row.update(summarise_row(row))
    row["complete"] = not any(r.get("status") == "deadline" for r in row["torch"].values())
    write_outputs(args, report)

  report["meta"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
  report["meta"]["wall_s"] = time.perf_counter() - _T0
  left = [r["key"] for r in report["rows"] if not r.get("complete")]
  report["meta"]["incomplete_rows"] = left
  write_outputs(args, report)
  print_table(report)
  if left:
    log(f"{len(left)} rows incomplete (deadline or cut short); rerun with --resume to finish.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
