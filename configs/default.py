"""Shared defaults: seed 000's CAE on LFW against Gaussian blur.

Experiments import this file and override only what differs. Every field can
be changed on the command line, e.g. ``--config.train.batch_size=64``.
"""

import difflib

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Seed of everything random: init, data order, corruption noise.
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  # Source name: see jax_dae.data.available().
  config.data.name = "lfw"
  # Folder holding the dataset files (archives or extracted folders).
  config.data.dir = "data"
  # LFW variant: deepfunneled | funneled | original | tfds.
  config.data.variant = "deepfunneled"
  # Shorter side after resizing, then side of the center crop (seed 000).
  config.data.resize = 224
  config.data.crop = 112
  # Split sizes (counts, or fractions of the source) cut from one seeded
  # permutation, in the key order of the ConfigDict (alphabetical).
  config.data.split = ml_collections.ConfigDict({"test": 3708, "val": 1905, "train": 7620})
  # Map an output split to a source's own split (e.g. {"test": "test"} for
  # MNIST's official test set); empty: everything is cut from one pool.
  config.data.split_from = ml_collections.ConfigDict()
  # Seed of that permutation (independent of config.seed so that model seeds
  # can vary on a fixed split).
  config.data.split_seed = 0
  # Download the data when it is missing and the network allows.
  config.data.download = True
  # Where preprocessed splits are cached ("" = $JAX_DAE_CACHE or ~/.cache/jax_dae).
  config.data.cache_dir = ""
  # Colour mode of the images: RGB or L (grayscale).
  config.data.mode = "RGB"
  # Grey level that transparent pixels are composited on (image folders).
  config.data.background = 255
  # Skip (and count) unreadable files in image folders instead of stopping.
  config.data.skip_bad_files = False
  # TFDS sources: builder name, data dir ("" = TFDS default), image feature.
  config.data.tfds_name = ""
  config.data.tfds_data_dir = ""
  config.data.image_key = "image"
  # Where the training split lives: device (resident on the accelerators, the
  # fast path), host (streamed with prefetch), auto (device when it fits).
  config.data.placement = "auto"
  # Share of free device memory the split may take under placement=auto.
  config.data.device_memory_fraction = 0.5
  # Batches (of steps_per_call steps) kept ready on the devices when streaming.
  config.data.prefetch = 2

  # Corruption applied to the clean images inside the step: see
  # jax_dae.corruptions.available(); ops separated by "|".
  config.corruption = "gaussian_blur(kernel=9,sigma=4)"
  # More corruptions the test split is also evaluated under, by name (results.json
  # "test_by_corruption"), e.g. {"speckle": "speckle(var=0.02)"}.
  config.test_corruptions = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  # Model name: see jax_dae.models.available().
  config.model.name = "CAE"
  # Compute dtype: float32 (fidelity default) or bfloat16 (parameters stay float32).
  config.model.dtype = "float32"

  config.loss = ml_collections.ConfigDict()
  # Loss name: see jax_dae.losses.available().
  config.loss.name = "mse"

  config.optimizer = ml_collections.ConfigDict()
  # adam (L2 added to the gradient, PyTorch's Adam weight_decay, seed 000),
  # adamw (decoupled weight decay) or sgd (with momentum below).
  config.optimizer.name = "adam"
  config.optimizer.learning_rate = 5e-4
  config.optimizer.weight_decay = 1e-5
  # SGD momentum (0 = none); unused by adam/adamw.
  config.optimizer.momentum = 0.0
  # Exponential learning-rate decay: x decay_rate per decay_steps (1.0 = none).
  config.optimizer.decay_rate = 1.0
  config.optimizer.decay_steps = 1000

  config.train = ml_collections.ConfigDict()
  config.train.batch_size = 8
  config.train.num_epochs = 15
  # Independent replicas trained together in one compiled program: replica k
  # is the run of seed + k (jax_dae.replicas). results.json reports each and
  # their mean, std, min and max.
  config.train.num_seeds = 1
  # How the replicas run in the program: "vmap" (vectorised; grouped
  # convolutions) or "unrolled" (each traced in turn; plain convolutions).
  config.train.seeds_form = "vmap"
  # Most train steps fused in one compiled call. Calls are sized by time
  # (seconds_per_call) up to this; data streamed from the host (placement=host)
  # uses this, rounded down to a divisor of the steps per epoch, for every call.
  config.train.steps_per_call = 200
  # Target wall time of one compiled call: progress, Ctrl-C and time-based
  # checkpoints act between calls, so this is how long they can wait.
  config.train.seconds_per_call = 1.0
  # Also checkpoint mid-epoch when this many seconds passed since the last save
  # (0: only at the end of each epoch). A stop signal always saves.
  config.train.checkpoint_every_s = 300.0
  # Start over in a --workdir that holds a run: its outputs are moved to
  # workdir/replaced-<time>/ and training starts from step 0.
  config.train.restart = False
  # Resume although fields that define a step (data, split, batch size, seed,
  # corruption, loss, optimizer, model) differ from the run in --workdir.
  config.train.allow_config_change = False
  # BatchNorm statistics that evaluation, checkpoints and inference use:
  # "recomputed" (at each epoch's end, the population statistics of
  # bn_stats_images fixed training images under the current weights, in
  # groups of batch_size; evaluation.make_recompute_batch_stats) or
  # "running" (the averages kept in training, as Keras and PyTorch do: the
  # seeds' protocol, whose validation PSNR jumps; docs/seeds.md).
  config.train.bn_stats = "recomputed"
  config.train.bn_stats_images = 1024
  # Evaluate (and checkpoint for inference) an exponential moving average of
  # the weights with this decay per step (0: the weights themselves).
  config.train.ema_decay = 0.0
  # Batch size of evaluation (padded; does not change results).
  config.train.eval_batch_size = 256
  # Validation images shown in the per-epoch sample grid.
  config.train.num_samples = 8
  # Checkpoints kept in workdir/checkpoints.
  config.train.max_checkpoints = 3
  # Early stopping: stop after this many epochs without a better validation
  # PSNR (0: train all num_epochs).
  config.train.patience = 0
  # Also evaluate the test split after these epochs (results.json "test_by_epoch").
  config.train.test_epochs = ()

  config.mesh = ml_collections.ConfigDict()
  # Devices for data parallelism: 0 = all local devices.
  config.mesh.num_devices = 0

  return config


def parse_arg(arg: str | None, **defaults):
  """Parses a config argument such as ``"depth=3,latent=8,runlocal"``.

  Args:
    arg: what follows ``:`` in ``--config=FILE:ARG`` (or ``None``).
    **defaults: the allowed keys and their defaults; a bool default makes a
      flag (present means True), other values are converted to the default's
      type (``None`` defaults stay strings or floats as written).

  Returns:
    ``ml_collections.ConfigDict`` of every key.

  Raises:
    ValueError: for a key that is not allowed, listing the allowed ones (and
      the closest to it), or a value of the wrong type.
  """
  values = dict(defaults)
  # How each key is written: a flag alone, other keys with "=".
  forms = {k: k if isinstance(v, bool) else f"{k}=" for k, v in defaults.items()}
  for token in filter(None, (arg or "").split(",")):
    key, sep, value = token.partition("=")
    if key not in defaults or bool(sep) == isinstance(defaults[key], bool):
      close = difflib.get_close_matches(key, list(defaults), n=1)
      hint = f" did you mean {forms[close[0]]!r}?" if close else ""
      raise ValueError(f"Unknown config argument {token!r};{hint} allowed: "
                       f"{', '.join(forms.values())}.")
    if isinstance(defaults[key], bool):
      values[key] = True
      continue
    kind = float if defaults[key] is None else type(defaults[key])
    try:
      values[key] = kind(value)
    except ValueError:
      raise ValueError(
          f"Config argument {token!r}: {key} must be of type {kind.__name__}.") from None
  return ml_collections.ConfigDict(values)


def smoke(config: ml_collections.ConfigDict, model: str) -> None:
  """The LFW smoke setting that shows denoising working on a laptop CPU in minutes.

  32x32 faces (resize 64, centre crop 32), 2048/64/256 train/val/test images,
  4 epochs at batch 8 and learning rate 2e-3, with a ``Small*`` model (two
  resolution levels); the blurred input is beaten by about 3.5 dB.
  """
  runlocal(config, model, split={"test": 256, "val": 64, "train": 2048}, num_epochs=4)
  config.data.resize, config.data.crop = 64, 32
  config.optimizer.learning_rate = 2e-3


def runlocal(config: ml_collections.ConfigDict, model: str, **overrides) -> None:
  """Shrinks an experiment in place to a smoke setting (about a minute on a CPU).

  A tiny model, 64/32/128 test/val/train images, 2 epochs at batch 8;
  ``overrides`` (``split=``, ``num_epochs=``, ``batch_size=``,
  ``eval_batch_size=``) change those.
  """
  config.model.name = model
  config.data.split = overrides.pop("split", {"test": 64, "val": 32, "train": 128})
  config.train.num_epochs = overrides.pop("num_epochs", 2)
  config.train.batch_size = overrides.pop("batch_size", 8)
  config.train.eval_batch_size = overrides.pop("eval_batch_size", 32)
  if overrides:
    raise TypeError(f"runlocal: unexpected {sorted(overrides)}.")
