"""The experiment: train, evaluate every epoch, checkpoint, test, write the results.

``train_and_evaluate`` reads as the table of contents of a run; each part
below it is one step of it, and each uses the library's layers:
``steps`` (state and pure step functions), ``loops`` (compiled loops and
data feeds), ``evaluation`` (split metrics and sample faces), ``checkpoint``,
``resume`` (what a rerun may change), ``stopping`` (clean stops on signals).

Randomness: one root key from ``config.seed``; the data order of epoch ``e``
uses ``fold_in(data_key, e)`` and step ``s`` uses ``fold_in(step_key, s)``, so a
resumed run draws exactly what an uninterrupted one would, however the run is
cut into compiled calls.

Seeds: ``config.train.num_seeds = N`` trains N replicas (seeds ``seed`` to
``seed + N - 1``) in one program (``jax_dae.replicas``). Metrics are written
as the replicas' mean (``val/psnr``) and per replica (``val/psnr/r<k>``);
the best checkpoint and early stopping follow the mean validation PSNR.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from jax_dae import (
  checkpoint,
  corruptions,
  data,
  distributed,
  evaluation,
  loops,
  losses,
  models,
  optimizers,
  plots,
  resume,
  steps,
  stopping,
  validation,
  workdir_lock,
  writers,
)
from jax_dae import (
  replicas as replicas_lib,
)
from jax_dae.data import pipeline


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, evaluates every epoch, checkpoints, and writes the test results.

  Resumes from the newest checkpoint in ``workdir`` if there is one (see
  ``jax_dae.resume`` for what a rerun may change). One run per workdir at a
  time. SIGINT and SIGTERM stop at the end of the running call, after saving
  a checkpoint, with ``stopping.Interrupted``.

  Args:
    config: an experiment config (see ``configs/default.py``).
    workdir: output folder: checkpoints, metrics, pictures, results.json.

  Returns:
    The dictionary written to ``workdir/results.json``.
  """
  start_time = time.time()
  validation.validate_config(config)
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with contextlib.ExitStack() as stack:
    if distributed.is_main_process():
      stack.enter_context(workdir_lock.hold(workdir))
    open_workdir(config, workdir)
    stop = stack.enter_context(stopping.handle_signals())
    run = build_run(config, workdir)
    stack.callback(run.close)
    state = train(run, stop)
    return test_and_report(run, state, start_time)


def open_workdir(config: ml_collections.ConfigDict, workdir: Path) -> None:
  """Starts over, or checks that a rerun may resume (``build_run`` writes ``config.json``)."""
  main_process = distributed.is_main_process()
  if config.train.restart:
    moved = resume.start_over(workdir) if main_process else None
    if moved:
      logging.warning("config.train.restart: the previous run was moved to %s.", moved)
  elif any((workdir / "checkpoints").glob("*/[0-9]*")):
    resume.check_config_change(workdir, config)


class PhaseClock:
  """Wall time spent in each named phase of a run (``results.json``'s ``phase_s``)."""

  def __init__(self):
    self.seconds: dict[str, float] = {}

  @contextlib.contextmanager
  def __call__(self, phase: str):
    start = time.time()
    try:
      yield
    finally:
      self.seconds[phase] = self.seconds.get(phase, 0.0) + time.time() - start


@dataclasses.dataclass
class Run:
  """What a run is made of, built once from its config by ``build_run``."""

  config: ml_collections.ConfigDict
  workdir: Path
  clock: PhaseClock
  mesh: jax.sharding.Mesh
  replicas: replicas_lib.Replicas
  num_test_images: int
  steps_per_epoch: int
  state: Any  # the initial or restored train state
  ckpt: checkpoint.Checkpointer
  feed: loops.DeviceFeed | loops.HostFeed
  placement: str
  evaluators: dict[str, Any]  # "val", "test", and "test/<name>" per config.test_corruptions
  # BatchNorm statistics recomputed before each evaluation (config.train.bn_stats), or None.
  recompute: evaluation.BatchStatsRecompute | None
  samples: evaluation.Samples
  compile_s: float
  writer: writers.MetricWriter
  pictures: writers.Background
  train_s: float = 0.0  # time in train calls, set by ``train``
  train_images: int = 0
  closed: bool = False

  @property
  def num_steps(self) -> int:
    return self.steps_per_epoch * self.config.train.num_epochs

  def close(self) -> None:
    """Waits for pending checkpoints and pictures; stops the feed (idempotent)."""
    if self.closed:
      return
    self.closed = True
    try:
      self.ckpt.close()
    finally:
      self.feed.close()
      self.writer.close()
      self.pictures.close()


def build_run(config: ml_collections.ConfigDict, workdir: Path) -> Run:
  """Data, mesh, model, state (restored when the workdir has one), feed, evaluators, compiles."""
  clock = PhaseClock()
  if jax.default_backend() == "cpu":
    logging.warning("No accelerator found: training on the CPU, far slower than on a GPU; the "
                    "time this run needs is estimated after its first steps.")
  # Data first: a missing dataset should fail before anything compiles.
  with clock("data"):
    splits = data.load(config.data)
  image_shape = tuple(splits["train"].shape[1:])
  mesh = distributed.make_mesh(config.mesh.num_devices)
  batch_size, num_devices = config.train.batch_size, mesh.devices.size
  if batch_size % num_devices:
    raise ValueError(
        f"config.train.batch_size={batch_size} must be a multiple of the {num_devices} devices.")
  steps_per_epoch = len(splits["train"]) // batch_size
  if steps_per_epoch < 1:
    raise ValueError(
        f"config.train.batch_size={batch_size} exceeds the {len(splits['train'])} training images.")

  model = models.from_config(config, out_channels=image_shape[-1])
  models.check_fits(model, config.model.name, image_shape)
  corrupt = corruptions.parse(config.corruption, image_shape)
  replicated = NamedSharding(mesh, P())
  replicas = replicas_lib.Replicas(config.seed, config.train.num_seeds,
                                    config.train.get("seeds_form", "vmap"))
  init_key, data_key, step_key, eval_key = replicas.keys()
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints",
                                 max_to_keep=config.train.max_checkpoints, best_metric="psnr")
  with clock("init"):
    init = replicas.map(functools.partial(steps.init_state, model, optimizers.create(config),
                                          image_shape, ema=config.train.ema_decay > 0))
    state = jax.jit(init, out_shardings=replicated)(init_key)
    state = ckpt.restore_latest(state)
  # Recorded once the checkpoint fits: a refused rerun leaves the run's config as it was.
  if distributed.is_main_process():
    writers.write_json(workdir / "config.json", config.to_dict())
  start_step = replicas_lib.step_of(state)
  if start_step >= steps_per_epoch * config.train.num_epochs:
    logging.info("Resuming from step %d: training is complete (%d epochs); evaluating.",
                 start_step, start_step // steps_per_epoch)
  elif start_step:
    logging.info("Resuming from step %d (epoch %d of %d, %d of its %d steps done).", start_step,
                 start_step // steps_per_epoch + 1, config.train.num_epochs,
                 start_step % steps_per_epoch, steps_per_epoch)
  elif (workdir / "metrics.jsonl").exists():
    logging.warning("No checkpoint in %s: starting from step 0.", workdir)
  logging.info("%s: %d parameters; %d devices; %d steps/epoch.", config.model.name,
               _num_params(state, replicas), num_devices, steps_per_epoch)
  if replicas.stacked:
    logging.info("%d replicas in one program: seeds %s.", replicas.num,
                 ", ".join(map(str, replicas.seeds)))

  train_step = steps.make_train_step(loss_fn=losses.create(config.loss), corrupt=corrupt,
                                     ema_decay=config.train.ema_decay)
  placement = pipeline.resolve_placement(config.data.placement, splits["train"].nbytes,
                                         fraction=config.data.device_memory_fraction)
  if replicas.stacked and placement != "device":
    raise ValueError(
        f"config.train.num_seeds={replicas.num} needs the training split on the devices, but it "
        f"is streamed from the host (config.data.placement={config.data.placement!r}); use "
        "placement='device' or one seed per run.")
  batch_sharding = NamedSharding(mesh, P(distributed.DATA_AXIS))
  if placement == "device":
    feed = loops.DeviceFeed(train_step, splits["train"], data_key, step_key,
                            replicated=replicated, batch_sharding=batch_sharding,
                            batch_size=batch_size, steps_per_epoch=steps_per_epoch,
                            max_steps=min(steps_per_epoch, config.train.steps_per_call),
                            replicas=replicas)
  else:
    feed = loops.HostFeed(
        train_step, splits["train"], data_key, step_key, mesh=mesh, batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        steps_per_call=loops.largest_divisor_at_most(steps_per_epoch, config.train.steps_per_call),
        start_step=start_step, num_steps=steps_per_epoch * config.train.num_epochs - start_step,
        prefetch=config.data.prefetch)
  logging.info("Training data placement: %s.", placement)

  # Evaluations: val and test under the run's corruption, the test split
  # under each of config.test_corruptions (sharing its device copy).
  eval_batch = min(config.train.eval_batch_size, len(splits["val"]))
  eval_batch = -(-eval_batch // num_devices) * num_devices
  evaluator = functools.partial(
      evaluation.DeviceEvaluator if placement == "device" else evaluation.HostEvaluator,
      replicas=replicas)
  if placement == "device":
    evaluator = functools.partial(evaluator, replicated=replicated)
  eval_step = steps.make_eval_step(corrupt=corrupt)
  evaluators = {s: evaluator(eval_step, splits[s], eval_key, batch_sharding=batch_sharding,
                             batch_size=eval_batch) for s in ("val", "test")}
  for name, spec in config.test_corruptions.items():
    other = steps.make_eval_step(corrupt=corruptions.parse(spec, image_shape))
    evaluators[f"test/{name}"] = evaluators["test"].with_step(other)

  # The evaluations and the sample reconstruction compile on a background
  # thread, overlapping the train loop's compile and the first epoch instead
  # of stalling the first validation (XLA's compile releases the GIL; only
  # tracing holds it).
  compiler = concurrent.futures.ThreadPoolExecutor(max_workers=1,
                                                   thread_name_prefix="compile_eval")
  for evaluate in evaluators.values():
    evaluate.compile_in_background(state, compiler)
  recompute = None
  if config.train.bn_stats == "recomputed" and jax.tree.leaves(state.batch_stats):
    recompute = _batch_stats_recompute(config, splits["train"], corrupt, eval_key, replicas,
                                       replicated)
    recompute.compile_in_background(state, compiler)
  samples = evaluation.Samples(steps.make_reconstruct(corrupt=corrupt),
                               {s: splits[s] for s in ("val", "test")},
                               config.train.num_samples, eval_key, replicated=replicated,
                               state=state, executor=compiler, replicas=replicas)
  compiler.shutdown(wait=False)
  # Compiled ahead of time so compile time is measured apart from training.
  t0 = time.time()
  feed.compile(state)
  compile_s = time.time() - t0
  logging.info("Compiled the train loop in %.1f s.", compile_s)

  main_process = distributed.is_main_process()
  pictures = writers.Background("pictures")  # encoded and written while training goes on
  if main_process:
    pictures.submit(plots.prepare)  # Matplotlib's import, off the critical path.
  return Run(config=config, workdir=workdir, clock=clock, mesh=mesh, replicas=replicas,
             num_test_images=len(splits["test"]), steps_per_epoch=steps_per_epoch, state=state,
             ckpt=ckpt, feed=feed, placement=placement, evaluators=evaluators,
             recompute=recompute, samples=samples,
             compile_s=compile_s, writer=writers.MetricWriter(workdir, active=main_process),
             pictures=pictures)


def _batch_stats_recompute(config: ml_collections.ConfigDict, train_images: np.ndarray, corrupt,
                           eval_key, replicas: replicas_lib.Replicas,
                           replicated: NamedSharding) -> evaluation.BatchStatsRecompute:
  """``config.train.bn_stats="recomputed"``: statistics of fixed training images, every epoch.

  The images: ``bn_stats_images`` of the training split chosen once by
  ``default_rng(0)`` (the same for every replica and every run of the
  split); their corruption: keys from the second half of
  ``split(eval_key)``, so each replica draws its own.
  """
  count = min(config.train.bn_stats_images, len(train_images))
  chosen = np.sort(np.random.default_rng(0).permutation(len(train_images))[:count])
  key = jax.jit(replicas.map(lambda k: jax.random.split(k)[1]))(eval_key)
  return evaluation.BatchStatsRecompute(
      steps.make_batch_statistics(corrupt=corrupt), train_images[chosen], key,
      replicated=replicated, batch_size=config.train.batch_size, replicas=replicas)


# How long a stop waits for the running call before abandoning it.
_STOP_PATIENCE_S = 2.0


@dataclasses.dataclass
class _Progress:
  """Training time and throughput, and the bar that shows them."""

  bar: tqdm
  train_s: float = 0.0
  images: int = 0
  eta_said: bool = False
  last_call_s: float | None = None


def train(run: Run, stop: stopping.StopRequest) -> Any:
  """Epochs from the restored step on: calls, validation, checkpoints, sample faces.

  Returns the final train state. Raises ``stopping.Interrupted`` after saving
  the checkpoint of the step where a stop signal found it.
  """
  config, ckpt, clock = run.config, run.ckpt, run.clock
  state, spe = run.state, run.steps_per_epoch
  step = start_step = replicas_lib.step_of(state)
  sizer = loops.CallSizer(config.train.seconds_per_call, config.train.steps_per_call)
  progress = _Progress(tqdm(total=run.num_steps * config.train.batch_size,
                            initial=start_step * config.train.batch_size, unit="img",
                            dynamic_ncols=True, leave=False, mininterval=0, smoothing=0.1,
                            disable=not distributed.is_main_process()))
  last_save = time.time()
  stop.arm()
  try:  # the bar is cleared on any exit, so an error starts its own line
    for epoch in range(start_step // spe, config.train.num_epochs):
      if config.train.patience and epoch - (ckpt.best_step() or 0) // spe >= config.train.patience:
        logging.info("Early stop after epoch %d: no better validation PSNR for %d epochs.",
                     epoch, config.train.patience)
        break
      run.feed.start_epoch(epoch)
      progress.bar.set_description(f"epoch {epoch + 1}/{config.train.num_epochs}")
      epoch_end, epoch_losses = (epoch + 1) * spe, []
      while step < epoch_end:
        state, losses_of_call = _train_call(run, state, step, epoch_end, sizer, progress, stop)
        step += len(losses_of_call)
        epoch_losses.append(losses_of_call)
        every = config.train.checkpoint_every_s
        if step < epoch_end and (stop or (every and time.time() - last_save >= every)):
          with clock("checkpoint"):
            ckpt.save(step, state)
          last_save = time.time()
          _stop_if_asked(run, stop, step)
      state = _end_epoch(run, state, epoch, np.mean(np.concatenate(epoch_losses), axis=0))
      last_save = time.time()
      _stop_if_asked(run, stop, step)
  finally:
    progress.bar.close()
  run.train_s, run.train_images = progress.train_s, progress.images
  return state


def _train_call(run: Run, state, step: int, epoch_end: int, sizer: loops.CallSizer,
                progress: _Progress, stop: stopping.StopRequest) -> tuple[Any, np.ndarray]:
  """One compiled call from ``step``: metrics written, progress shown; (state, its losses).

  The losses are ``[steps, N]``, one column per replica.

  A stop that the call does not answer within a few seconds abandons it and
  saves the state it started from.
  """
  batch_size = run.config.train.batch_size
  count = sizer.next(epoch_end - step) if run.feed.sized_by_time else None
  t = time.time()
  # Where calls are slower than a stop may wait (a CPU, one step a call), keep
  # the state the call starts from on the host: the call donates ``state``,
  # and a copy on the devices would only be readable after the call.
  slow = progress.last_call_s is None or progress.last_call_s > _STOP_PATIENCE_S
  before = distributed.to_host(state) if slow and jax.process_count() == 1 else None
  state, call_metrics = run.feed.run(state, count)
  if (not stopping.wait_ready(call_metrics, stop, patience=_STOP_PATIENCE_S)
      and before is not None):
    logging.warning("The running call did not finish within %.0f s of the stop: saving the "
                    "state before it.", _STOP_PATIENCE_S)
    with run.clock("checkpoint"):
      run.ckpt.save(step, before)
    _stop_if_asked(run, stop, step, abandoned=True)
  del before
  call_metrics = distributed.to_host(call_metrics)
  call_s = time.time() - t
  count = count or len(call_metrics["loss"])
  call_metrics = {k: run.replicas.rows(v[:count]) for k, v in call_metrics.items()}
  sizer.record(count, call_s)
  progress.last_call_s = call_s
  _check_finite(call_metrics, step, run.replicas)
  progress.train_s += call_s
  progress.images += count * batch_size
  means = {k: np.mean(v, axis=0) for k, v in call_metrics.items()}
  run.writer.write_scalars(step + count, _replica_scalars("train", means, run.replicas))
  progress.bar.update(count * batch_size)
  progress.bar.set_postfix(loss=f"{np.mean(means['loss']):.4f}")
  if not progress.eta_said and progress.images > count * batch_size:  # 2nd call: warm
    progress.eta_said = True
    rate = count * batch_size / call_s
    left = run.num_steps - step - count
    seconds = left * batch_size / rate
    hint = ("; for a quick result on a CPU, stop (Ctrl-C) and add :runlocal to --config (a "
            "smoke setting of a few minutes)" if jax.default_backend() == "cpu" and seconds > 900
            else "")
    per = f" per replica ({run.replicas.num} replicas)" if run.replicas.stacked else ""
    logging.info("Training at %.1f img/s%s on %s: about %s for the %d steps left%s.", rate, per,
                 jax.default_backend(), _humanize(seconds), left, hint)
  return state, call_metrics["loss"]


def _end_epoch(run: Run, state, epoch: int, epoch_loss: np.ndarray) -> Any:
  """Ends an epoch: BatchNorm statistics, validation (and test), checkpoint, sample faces.

  Recomputes the BatchNorm statistics first if ``config.train.bn_stats`` asks
  (for the weights evaluation uses; returning the state that holds them),
  evaluates the EMA of the weights where one is kept (``config.train.ema_decay``),
  and evaluates the test split too after the epochs in ``config.train.test_epochs``.

  ``epoch_loss`` is ``[N]``, per replica. The checkpoint is ranked by the
  replicas' mean validation PSNR; the sample grid shows the replica with the
  best validation PSNR.
  """
  config, clock, step, replicas = run.config, run.clock, replicas_lib.step_of(state), run.replicas
  with clock("validation"):
    if run.recompute is not None:
      state = state.replace(batch_stats=run.recompute(state.for_evaluation()))
    evaluated = state.for_evaluation()  # the EMA of the weights where one is kept
    val = _per_replica(run.evaluators["val"](evaluated), replicas)
  scalars = _replica_scalars("val", val, replicas)
  if epoch + 1 in config.train.test_epochs:
    with clock("test"):
      test = _per_replica(run.evaluators["test"](evaluated), replicas)
    scalars |= _replica_scalars("test", test, replicas)
  scalars |= _replica_scalars("train", {"epoch_loss": epoch_loss}, replicas)
  run.writer.write_scalars(step, scalars | {"epoch": epoch + 1})
  mean = {k: float(np.mean(v)) for k, v in val.items()}
  spread = (f" (replicas {np.min(val['psnr']):.2f} to {np.max(val['psnr']):.2f} dB)"
            if replicas.stacked else "")
  logging.info("epoch %d: loss %.5f, val PSNR %.2f dB%s, SSIM %.4f (input %.2f / %.4f)",
               epoch + 1, float(np.mean(epoch_loss)), mean["psnr"], spread, mean["ssim"],
               mean["input_psnr"], mean["input_ssim"])
  with clock("checkpoint"):
    run.ckpt.save(step, state, metrics=mean)
  with clock("samples"):
    noisy, recon, clean = run.samples(evaluated, "val", int(np.argmax(val["psnr"])))
    if distributed.is_main_process():
      run.pictures.submit(plots.save_sample_grid,
                          run.workdir / "samples" / f"epoch_{epoch + 1:03d}.png", noisy, recon,
                          clean / 255.0)
  return state


def _stop_if_asked(run: Run, stop: stopping.StopRequest, step: int, *,
                   abandoned: bool = False) -> None:
  """After a stop signal: the checkpoint of ``step`` on disk, then ``Interrupted``."""
  if stop:
    with run.clock("checkpoint"):
      run.close()
    logging.warning("Stopped at step %d: checkpoint saved; rerun the same command to resume.",
                    step)
    stop.check(step, abandoned=abandoned)


def test_and_report(run: Run, state, start_time: float) -> dict:
  """Test metrics of the final and the best-validation state; results.json, curves, faces.

  With several replicas, ``test``, ``test_input`` and ``test_at_best_val``
  hold the replicas' means, ``replicas`` each replica's own, and ``spread``
  their mean, std, min and max.
  """
  config, clock, ckpt, replicas = run.config, run.clock, run.ckpt, run.replicas
  step = replicas_lib.step_of(state)
  evaluated = state.for_evaluation()  # the EMA of the weights where one is kept
  with clock("checkpoint"):
    ckpt.wait()
  run.feed.close()
  with clock("test"):
    t = time.time()
    final = {name: _per_replica(evaluate(evaluated), replicas)
             for name, evaluate in run.evaluators.items() if name.startswith("test")}
    eval_s = time.time() - t
  # The best checkpoint is often the final state: then its metrics are the same.
  final_is_best = ckpt.best_step() == step
  with clock("checkpoint"):
    best_state = state if final_is_best else ckpt.restore_best(state)
  with clock("test"):
    best = final if final_is_best else {
        name: _per_replica(run.evaluators[name](best_state.for_evaluation()), replicas)
        for name in final}
  best_step = replicas_lib.step_of(best_state)
  rows = writers.read_jsonl(run.workdir / "metrics.jsonl", missing_ok=True)
  best_replica = replicas_lib.best_replica(rows, best_step, replicas.num)

  def split(name):
    """Per replica, then their means and spread: {test, test_input, test_at_best_val}."""
    parts = {
        "test": {k: v for k, v in final[name].items() if not k.startswith("input_")},
        "test_input": {k[len("input_"):]: v for k, v in final[name].items()
                       if k.startswith("input_")},
        "test_at_best_val": {k: v for k, v in best[name].items() if not k.startswith("input_")},
    }
    out = {part: {k: float(np.mean(v)) for k, v in metrics.items()}
           for part, metrics in parts.items()}
    per_replica = {part: replicas_lib.split_metrics(m) for part, m in parts.items()}
    out["replicas"] = [{"seed": seed, **{part: per_replica[part][k] for part in parts}}
                       for k, seed in enumerate(replicas.seeds)]
    out["spread"] = {part: {k: replicas_lib.spread(v) for k, v in metrics.items()}
                     for part, metrics in parts.items()}
    return out

  # The first test faces, as corrupted for the evaluation, through the final model.
  main_process = distributed.is_main_process()
  with clock("samples"):
    noisy, recon, faces = run.samples(evaluated, "test", best_replica)
    if main_process and len(faces):
      run.pictures.submit(plots.save_sample_grid, run.workdir / "samples" / "test.png", noisy,
                          recon, faces / 255.0)
      run.pictures.submit(writers.save_npz, run.workdir / "test_samples.npz",
                          corrupted=plots.to_uint8(noisy), reconstructed=plots.to_uint8(recon),
                          clean=faces)

  train_s = run.train_s
  results = {
      "config": config.to_dict(),
      "step": step,
      "epochs": step // run.steps_per_epoch,
      "num_params": _num_params(state, replicas),
      "num_seeds": replicas.num,
      "seeds": replicas.seeds,
      "best_replica": best_replica,
      **split("test"),
      "best_val_step": best_step,
      "test_by_epoch": _test_by_epoch(run.workdir / "metrics.jsonl"),
      "test_by_corruption": {name[len("test/"):]: split(name) for name in final if "/" in name},
      "num_test_images": run.num_test_images,
      "devices": [str(d) for d in run.mesh.devices.flat],
      "placement": run.placement,
      "compile_s": run.compile_s,
      "train_s": train_s,
      "train_images_per_s": run.train_images / train_s if train_s else math.nan,
      "test_eval_s": eval_s,
      "wall_s": time.time() - start_time,
  }
  # Where the wall time went; "other" is everything not in a named phase
  # (model building, logging, metric writing).
  phases = clock.seconds | {"compile": run.compile_s, "train": train_s}
  results["phase_s"] = phases | {"other": results["wall_s"] - sum(phases.values())}
  logging.info("wall time %.1f s: %s.", results["wall_s"], ", ".join(
      f"{k} {v:.1f} s" for k, v in sorted(results["phase_s"].items(), key=lambda kv: -kv[1])))
  run.writer.write_scalars(step, _replica_scalars("test", final["test"], replicas))
  if main_process:
    run.pictures.submit(plots.save_curves, run.workdir / "metrics.jsonl",
                        run.workdir / "curves.png")
  run.close()  # Every picture and checkpoint is on disk before results.json says it is done.
  if main_process:
    writers.write_json(run.workdir / "results.json", results)
  test, corrupted = results["test"], results["test_input"]
  spread = results["spread"]["test"]["psnr"]
  seeds = (f" (mean of {replicas.num} seeds; std {spread['std']:.2f}, {spread['min']:.2f} to "
           f"{spread['max']:.2f} dB)" if replicas.stacked else "")
  logging.info("test: PSNR %.2f dB%s, SSIM %.4f (corrupted input %.2f / %.4f); %s",
               test["psnr"], seeds, test["ssim"], corrupted["psnr"], corrupted["ssim"],
               run.workdir / "results.json")
  return results


def _check_finite(step_metrics: Mapping[str, np.ndarray], first_step: int,
                  replicas: replicas_lib.Replicas) -> None:
  """Raises at the first non-finite value of ``[steps, N]`` metrics, naming step and replica."""
  for name, values in step_metrics.items():
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
      row, k = bad[0]
      which = f" of replica {k} (seed {replicas.seeds[k]})" if replicas.stacked else ""
      raise FloatingPointError(
          f"{name}{which} became {values[row, k]} at step {first_step + int(row) + 1}; training "
          "stopped and the last checkpoint was kept. Lower config.optimizer.learning_rate or "
          "check the data."
      )


def _per_replica(metrics: Mapping[str, Any], replicas: replicas_lib.Replicas
                 ) -> dict[str, np.ndarray]:
  """An evaluator's means as ``{metric: [N]}``."""
  return {k: replicas.per_replica(v) for k, v in metrics.items()}


def _replica_scalars(prefix: str, metrics: Mapping[str, np.ndarray],
                     replicas: replicas_lib.Replicas) -> dict[str, float]:
  """``{prefix/name: mean}``, plus ``prefix/name/r<k>`` per replica when there are several."""
  out = {}
  for name, values in metrics.items():
    values = replicas.per_replica(values)
    out[f"{prefix}/{name}"] = float(np.mean(values))
    if replicas.stacked:
      out |= {f"{prefix}/{name}/r{k}": float(v) for k, v in enumerate(values)}
  return out


def _num_params(state, replicas: replicas_lib.Replicas) -> int:
  """Parameters of one replica."""
  return sum(x.size for x in jax.tree.leaves(state.params)) // replicas.num


def _test_by_epoch(metrics_path: Path) -> dict[str, dict[str, float]]:
  """``{epoch: test metrics}`` of the epochs in config.train.test_epochs (last run wins)."""
  rows = writers.read_jsonl(metrics_path, missing_ok=True)
  return {str(int(row["epoch"])): {k[len("test/"):]: v for k, v in row.items()
                                   if k.startswith("test/")}
          for row in rows if "epoch" in row and any(k.startswith("test/") for k in row)}


def _humanize(seconds: float) -> str:
  if seconds < 120:
    return f"{seconds:.0f} s"
  if seconds < 7200:
    return f"{seconds / 60:.0f} min"
  return f"{seconds / 3600:.1f} h"
