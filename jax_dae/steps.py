"""The library's training API: the train state, the loss, its gradients and pure steps.

Layers, each built on the one above it and each usable alone:

* ``make_loss_fn(loss_fn=...)`` gives ``compute_loss(params, state, noisy,
  clean, rngs) -> (loss, aux)``: one forward pass in train mode and the
  objective, a pure function of ``params`` for ``jax.grad``. ``aux`` holds
  the new BatchNorm statistics, the metrics and the other collections the
  model wrote.
* ``loss_and_grad(compute_loss, state, noisy, clean, rngs, axis_name=...)``
  gives ``((loss, aux), grads)`` with the gradients (and metrics) averaged
  over the data axis, however they arrive (below). Call it inside your own
  step for gradient accumulation, an EMA of the parameters or any update.
* ``make_train_step(loss_fn=..., corrupt=...)`` gives
  ``train_step(state, images, rng) -> (state, metrics)``: corrupt, loss and
  gradients, one optimizer update. ``make_eval_step`` and
  ``make_reconstruct`` give the evaluation functions; they take a
  ``TrainState`` or a variables dict.

Conventions, with today's defaults: the model is called with ``train=True``
in training and ``train=False`` otherwise (``train_kwarg``; ``None``: no
flag); it gets the named PRNG streams ``rng_streams`` (``"sample"`` for
variational models, ``"dropout"`` for ``nn.Dropout``); it may write the
collections ``mutable``: ``"batch_stats"`` is kept in the state, values sown
into ``"aux"`` are passed to the loss by name (``losses.create`` weights
them explicitly: ``config.loss.kl_weight`` or ``aux_weights``), and every
written collection but ``"batch_stats"`` comes back in ``aux["sown"]``. A
``flax.nnx`` module works directly: ``init_state`` wraps it with ``from_nnx``.

Data parallelism. Under ``jax.jit`` with the batch sharded (``NamedSharding``
on Auto or Explicit mesh axes) build the step with ``axis_name=None``: XLA
inserts the reductions. On Explicit axes the corruption keys are resharded
like the batch and the model runs under ``jax.sharding.auto_axes`` (model
code need not be written for sharding in types). Under ``jax.shard_map`` or
``jax.pmap`` over a batch axis, pass that axis as ``axis_name`` and build
the model with ``bn_axis_name`` too. Gradients then arrive in one of two ways, and the step
reads which from the types (``jax.typeof(x)``'s varying manual axes):

* ``shard_map(..., check_vma=True)``: the replicated parameters are
  invariant over the axis, so the transpose of their implicit broadcast sums
  the per-device gradients: they arrive invariant and *summed*, and are
  divided by the axis size.
* ``shard_map(..., check_vma=False)`` and ``pmap``: no type information;
  each device's gradient is its own shard's, and ``lax.pmean`` averages them.

So every style gives the update of one device running the whole batch
(``tests/test_api.py``). What cannot be right fails at trace time with a
one-line ``ValueError``: an ``axis_name`` that is not mapped, summed
gradients with ``axis_name=None``, BatchNorm statistics that differ across
the axis (a model built without ``bn_axis_name``, under ``check_vma=True``).
Under ``check_vma=False`` and ``pmap`` the types cannot show a missing
``bn_axis_name``: build the model with it.
"""

from __future__ import annotations

import inspect
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import nnx, traverse_util
from flax.training import train_state

from jax_dae import corruptions, losses, metrics

AxisName = str | tuple[str, ...]

# Named PRNG streams the model gets in training: "sample" for variational
# models (VCAE), "dropout" for nn.Dropout. Unused streams cost nothing.
DEFAULT_RNG_STREAMS = ("sample", "dropout")
# Collections the model may write in training.
DEFAULT_MUTABLE = ("batch_stats", "aux")
# The collection whose sown values are the loss's named auxiliary terms.
AUX_COLLECTION = "aux"


class TrainState(train_state.TrainState):
  """Flax TrainState plus BatchNorm statistics."""

  batch_stats: Any = None

  @property
  def variables(self) -> dict[str, Any]:
    """``{"params": ..., "batch_stats": ...}``, what ``apply_fn`` takes."""
    return {"params": self.params, "batch_stats": _or_empty(self.batch_stats)}

  def for_evaluation(self) -> TrainState:
    """The state evaluation and inference use (``EMATrainState``: the weights' average)."""
    return self


class EMATrainState(TrainState):
  """A ``TrainState`` that also keeps an exponential moving average of the parameters.

  ``init_state(..., ema=True)`` makes one; ``make_train_step(...,
  ema_decay=...)`` updates ``ema_params`` every step; evaluation and
  inference use them (``for_evaluation``). A separate class, so that the
  checkpoints of states without an average keep their tree.
  """

  ema_params: Any = None

  def for_evaluation(self) -> EMATrainState:
    """This state with ``params`` replaced by their average."""
    return self.replace(params=self.ema_params)


def _or_empty(tree):
  return {} if tree is None else tree


# ---------------------------------------------------------------------------
# flax.nnx modules.
# ---------------------------------------------------------------------------


class NNXModel:
  """A ``flax.nnx`` module instance with Linen's ``init``/``apply`` interface.

  ``from_nnx(module)`` builds one; ``init_state`` does it for you. Variables
  map to Linen collections by their type (``nnx.Param`` -> ``"params"``,
  ``nnx.BatchStat`` -> ``"batch_stats"``, as ``nnx.bridge`` names them);
  ``init`` returns the module's current values (its own initialisation, the
  key is unused). ``apply``:

  * ``train=True/False`` (``train_kwarg``) switches the module with nnx's
    ``module.train()`` / ``module.eval()`` (Dropout's ``deterministic``,
    BatchNorm's ``use_running_average``) and is passed on to ``__call__``
    only if it takes a parameter of that name.
  * ``rngs={name: key}`` reseeds the module's PRNG streams every call, so
    every step draws fresh dropout masks; a stream the step does not name
    (``nnx.Rngs(0)``'s ``"default"``) gets a key folded from the first one.
  * ``mutable=[...]``: state collections (``"batch_stats"``) come back
    updated; values sown with ``self.sow("aux", name, value)`` come back as
    the ``"aux"`` collection, as a Linen module's do.
  """

  def __init__(self, module: nnx.Module, *, train_kwarg: str | None = "train"):
    self.graphdef, self._state = nnx.split(module)
    self.train_kwarg = train_kwarg
    params = inspect.signature(type(module).__call__).parameters
    self._call_takes_train = train_kwarg is not None and (
        train_kwarg in params or any(p.kind is p.VAR_KEYWORD for p in params.values()))

  @staticmethod
  def _collections(module: nnx.Module) -> dict[str, dict[tuple, nnx.Variable]]:
    out: dict[str, dict[tuple, nnx.Variable]] = {}
    for path, var in nnx.to_flat_state(nnx.state(module, nnx.Not(nnx.RngState))):
      name = nnx.variablelib.variable_name_from_type(type(var), allow_register=True)
      out.setdefault(name, {})[tuple(path)] = var
    return out

  def variables(self) -> dict[str, Any]:
    """The wrapped module's variables as Linen collections of nested dicts."""
    module = nnx.merge(self.graphdef, self._state, copy=True)
    return {name: traverse_util.unflatten_dict({p: v.get_value() for p, v in flat.items()})
            for name, flat in self._collections(module).items()}

  def init(self, rngs, *args, **kwargs) -> dict[str, Any]:
    """The module's current variables (``rngs`` and the inputs are not used)."""
    del rngs, args, kwargs
    return self.variables()

  def apply(self, variables: Mapping[str, Any], *args, mutable: bool | Sequence[str] = False,
            rngs: Mapping[str, jax.Array] | None = None, **kwargs):
    """Calls the module with ``variables``, as Linen's ``Module.apply`` does."""
    module = nnx.merge(self.graphdef, self._state, copy=True)
    current = self._collections(module)
    for name, tree in variables.items():
      if not tree:  # The steps pass "batch_stats": {} for modules without BatchNorm.
        continue
      if name not in current:
        raise ValueError(f"NNXModel.apply: the module has no variables of collection {name!r}; "
                         f"it has {sorted(current)}.")
      for path, value in traverse_util.flatten_dict(dict(tree)).items():
        current[name][path].set_value(value)
    if rngs:
      streams = {v.tag for _, v in nnx.to_flat_state(nnx.state(module, nnx.RngKey))}
      first = next(iter(rngs.values()))
      nnx.reseed(module, **{s: rngs[s] if s in rngs else jax.random.fold_in(first, _stream_id(s))
                            for s in streams})
    if self.train_kwarg is not None and self.train_kwarg in kwargs:
      if kwargs[self.train_kwarg]:
        module.train()
      else:
        module.eval()
      if not self._call_takes_train:
        kwargs = {k: v for k, v in kwargs.items() if k != self.train_kwarg}
    if mutable is True:
      wanted = tuple(current) + (AUX_COLLECTION,)
    else:
      wanted = tuple(mutable or ())
    sown = [c for c in wanted if c not in current]
    # Under capture, sow stores only the captured types (and warns about none).
    types = [nnx.variablelib.variable_type_from_name(c, allow_register=True) for c in sown]
    out = nnx.capture(module, *types)(*args, **kwargs)
    captured = ()
    if types:  # (result, *states), one per type; without types, the result alone.
      out, *captured = out
    if mutable is False:
      return out
    after = self._collections(module)
    updates = {c: traverse_util.unflatten_dict({p: v.get_value() for p, v in after[c].items()})
               for c in wanted if c in after and c not in sown}
    for c, state in zip(sown, captured, strict=True):
      updates[c] = nnx.to_pure_dict(state)
    return out, updates


def from_nnx(module: nnx.Module, *, train_kwarg: str | None = "train") -> NNXModel:
  """Wraps a ``flax.nnx`` module instance for ``init_state`` and the steps (see ``NNXModel``)."""
  if not isinstance(module, nnx.Module):
    raise TypeError(f"from_nnx: expected a flax.nnx.Module instance, got {type(module).__name__}.")
  return NNXModel(module, train_kwarg=train_kwarg)


# ---------------------------------------------------------------------------
# State and inputs.
# ---------------------------------------------------------------------------


def init_state(model: nn.Module | nnx.Module | NNXModel, tx: optax.GradientTransformation,
               image_shape: tuple[int, ...], key: jax.Array, *, ema: bool = False,
               train_kwarg: str | None = "train",
               rng_streams: Sequence[str] = DEFAULT_RNG_STREAMS) -> TrainState:
  """Initialises parameters, BatchNorm statistics and optimizer state.

  Args:
    model: a Linen module, a ``flax.nnx`` module instance (its current
      parameters are the initial ones; ``key`` is then unused) or an
      ``NNXModel``.
    tx: the optimizer.
    image_shape: ``(H, W, C)`` of one image.
    key: the ``"params"`` key; the other streams get keys folded from it
      (the parameters depend on ``key`` alone).
    ema: also keep an exponential moving average of the parameters
      (``ema_params``, starting at the initial parameters).
    train_kwarg: the model's train flag, passed as ``False`` (``None``: none).
    rng_streams: other PRNG streams the model may ask for at init.

  Returns:
    A ``TrainState`` whose ``apply_fn`` the steps call.
  """
  if isinstance(model, nnx.Module):
    model = from_nnx(model, train_kwarg=train_kwarg)
  rngs = {"params": key, **{s: jax.random.fold_in(key, _stream_id(s)) for s in rng_streams}}
  kwargs = {train_kwarg: False} if train_kwarg else {}
  variables = model.init(rngs, jnp.zeros((1, *image_shape), jnp.float32), **kwargs)
  extra = {"ema_params": jax.tree.map(jnp.copy, variables["params"])} if ema else {}
  return (EMATrainState if ema else TrainState).create(
      apply_fn=model.apply,
      params=variables["params"],
      batch_stats=variables.get("batch_stats", {}),
      tx=tx,
      **extra,
  )


def to_float(images: jax.Array) -> jax.Array:
  """uint8 images to float32 in [0, 1]; float images are cast to float32 as they are.

  Raises:
    ValueError: for other integer or boolean images, whose range is unknown.
  """
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 255.0
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"to_float: images must be uint8 (0..255) or float in [0, 1], got "
                     f"{images.dtype}.")
  return images.astype(jnp.float32)


def _stream_id(name: str) -> int:
  """A fixed 31-bit number per stream name, folded into keys."""
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


def _axes(axis_name: AxisName | None) -> tuple[str, ...]:
  if axis_name is None:
    return ()
  return (axis_name,) if isinstance(axis_name, str) else tuple(axis_name)


def _check_axes(axis_name: AxisName | None) -> None:
  """Raises unless every axis of ``axis_name`` is mapped here (shard_map/pmap)."""
  manual = tuple(jax.sharding.get_abstract_mesh().manual_axes)
  missing = [a for a in _axes(axis_name) if a not in manual]
  if missing:
    raise ValueError(
        f"axis_name={axis_name!r}: {missing[0]!r} is not mapped here (mapped axes: "
        f"{manual or 'none'}); pass axis_name only inside jax.shard_map or jax.pmap over it, "
        "and axis_name=None under jax.jit with shardings.")


def example_index(size: int, axis_name: AxisName | None = None, offset: int = 0) -> jax.Array:
  """Global indices of this shard's ``size`` examples, ``[size]`` int32.

  ``offset + i`` for example ``i`` under ``jit``; under ``shard_map``/``pmap``
  over ``axis_name`` the shard's position is added, so example ``i`` of the
  global batch gets index ``i`` however the batch is split (and micro-batch
  ``k`` of size ``m`` passes ``offset=k * m``).
  """
  index = jnp.arange(size) + offset
  if axis_name is not None:
    index = index + jax.lax.axis_index(axis_name) * size
  return index


def model_rngs(key: jax.Array, streams: Sequence[str] = DEFAULT_RNG_STREAMS, *,
               axis_name: AxisName | None = None) -> dict[str, jax.Array]:
  """Named PRNG streams for the model: ``{streams[0]: key, other: fold_in(key, id(other))}``.

  The first stream gets ``key`` itself (so a VCAE's ``"sample"`` draws are
  those of earlier versions). Under ``shard_map``/``pmap`` over
  ``axis_name`` the shard's index is folded in first, so shards draw
  independent noise (not the noise of a one-device run, which draws the
  whole batch at once; under ``jit`` with shardings it is that noise).
  """
  if axis_name is not None:
    key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
  return {s: key if i == 0 else jax.random.fold_in(key, _stream_id(s))
          for i, s in enumerate(streams)}


# ---------------------------------------------------------------------------
# The loss and its gradients.
# ---------------------------------------------------------------------------


def _collect_aux(collection: Mapping) -> dict[str, jax.Array]:
  """Flattens values a model ``sow``-ed into the ``aux`` collection, summed per name."""
  flat = {}
  for path, value in jax.tree_util.tree_flatten_with_path(collection)[0]:
    name = str(path[-2].key) if len(path) >= 2 else str(path[-1])
    flat[name] = flat.get(name, 0.0) + value
  return flat


def make_loss_fn(*, loss_fn: losses.Loss, train_kwarg: str | None = "train",
                 mutable: Sequence[str] = DEFAULT_MUTABLE,
                 aux_weights: Mapping[str, float] | None = None) -> Callable:
  """Builds ``compute_loss(params, state, noisy, clean, rngs) -> (loss, aux)``.

  Args:
    loss_fn: ``loss(reconstruction, clean, aux) -> (scalar, terms)``, e.g.
      from ``losses.create``; ``aux`` maps the names the model sowed into the
      ``"aux"`` collection to their values (summed over modules).
    train_kwarg: the model's train flag, passed as ``True`` (``None``: none).
    mutable: collections the model may write; ``"batch_stats"`` is the
      state's, the others are returned in ``aux["sown"]``.
    aux_weights: ``{name: weight}``: add ``weight * aux[name]`` to the loss
      here and log it as the term ``name``; the names not listed are passed
      on to ``loss_fn`` (whose ``losses.create`` losses refuse a sown term
      without a weight).

  Returns:
    A pure function of ``params`` (differentiate it with ``jax.grad`` or
    ``loss_and_grad``): ``state`` supplies ``apply_fn`` and the BatchNorm
    statistics (a ``TrainState``), ``noisy`` is the model input and ``clean``
    the target, ``[B, H, W, C]`` float in [0, 1], and ``rngs`` the named
    PRNG keys (``model_rngs``). ``aux`` is ``{"batch_stats": new
    statistics, "metrics": {"loss": ..., **terms}, "sown": {collection:
    values}}``.
  """
  if aux_weights is not None:
    loss_fn = losses.weight_aux(loss_fn, aux_weights, strict=False)
  mutable = tuple(mutable)

  def compute_loss(params, state, noisy: jax.Array, clean: jax.Array,
                   rngs: Mapping[str, jax.Array]):
    batch_stats = _or_empty(getattr(state, "batch_stats", None))
    kwargs = {train_kwarg: True} if train_kwarg else {}
    reconstruction, updates = state.apply_fn(
        {"params": params, "batch_stats": batch_stats}, noisy, mutable=list(mutable),
        rngs=dict(rngs or {}), **kwargs)
    loss, terms = loss_fn(reconstruction, clean,
                          _collect_aux(updates.get(AUX_COLLECTION, {})))
    return loss, {
        "batch_stats": updates.get("batch_stats", batch_stats),
        "metrics": {"loss": loss, **terms},
        "sown": {k: v for k, v in updates.items() if k != "batch_stats"},
    }

  return compute_loss


def _on_auto_axes(fn: Callable, batch: jax.Array, out_sharding) -> Callable:
  """``fn``, run on Auto mesh axes where ``batch``'s type has Explicit ones.

  Explicit axes put shardings in the types, and model code (the reshapes of
  a space-to-depth convolution, dm-pix's SSIM) need not be written for that:
  on Auto axes XLA propagates the batch's sharding through it, as on an Auto
  mesh. ``out_sharding``: PartitionSpecs for the results (a tree prefix).
  Without Explicit axes, ``fn`` itself.
  """
  mesh = jax.typeof(batch).sharding.mesh
  axes = tuple(getattr(mesh, "explicit_axes", ()))
  if not axes:
    return fn

  def run(*args):
    with jax.sharding.use_abstract_mesh(mesh):
      return jax.sharding.auto_axes(fn, axes=axes, out_sharding=out_sharding)(*args)

  return run


def _batch_spec(x: jax.Array) -> jax.sharding.PartitionSpec:
  """``x``'s split of its leading (batch) axis, as a PartitionSpec."""
  spec = getattr(jax.typeof(x).sharding, "spec", None)
  return jax.sharding.PartitionSpec(spec[0] if spec else None)


def _varying(x) -> frozenset:
  """Mesh axes ``x`` varies over inside ``shard_map`` (empty when not tracked)."""
  aval = jax.typeof(x)
  mat = getattr(aval, "mat", None)  # JAX 0.10: ShapedArray.mat.varying.
  if mat is not None:
    return frozenset(mat.varying)
  return frozenset(getattr(aval, "vma", ()))  # Earlier JAX: ShapedArray.vma.


def _tracked(axis: str) -> bool:
  """Whether shard_map tracks how values vary over ``axis`` (``check_vma=True``)."""
  return axis in _varying(jax.lax.axis_index(axis))


def reduce_gradients(grads, loss: jax.Array, axis_name: AxisName | None):
  """Gradients averaged over the data axes ``axis_name``, however they arrive.

  Per leaf and per axis, from the types (see the module docstring): a
  gradient that varies over the axis (or where nothing is tracked:
  ``check_vma=False``, ``pmap``) is per device and gets ``lax.pmean``; one
  that is invariant while the loss varies was summed by the transpose of the
  parameters' implicit broadcast and is divided by the axis size; one that
  is invariant with an invariant loss is the same everywhere and kept.

  Raises:
    ValueError: inside ``shard_map(..., check_vma=True)`` with
      ``axis_name=None`` when the gradients arrive summed over a mapped axis.
  """
  axes = _axes(axis_name)
  loss_varying = _varying(loss)
  tracked = {a for a in jax.sharding.get_abstract_mesh().manual_axes if _tracked(a)}
  for axis in sorted(tracked - set(axes)):
    if axis in loss_varying and any(axis not in _varying(g) for g in jax.tree.leaves(grads)):
      raise ValueError(
          f"The loss varies over the mapped axis {axis!r} but the parameters do not, so their "
          f"gradients arrive summed over it: build the step with axis_name={axis!r} (and the "
          f"model with bn_axis_name={axis!r}).")

  def reduce(g):
    varying = _varying(g)
    per_device = tuple(a for a in axes if a not in tracked or a in varying)
    summed = tuple(a for a in axes if a in tracked and a not in varying and a in loss_varying)
    if per_device:
      g = jax.lax.pmean(g, per_device)
    if summed:
      g = g / jax.lax.axis_size(summed)
    return g

  return jax.tree.map(reduce, grads)


def loss_and_grad(compute_loss: Callable, state, noisy: jax.Array, clean: jax.Array,
                  rngs: Mapping[str, jax.Array], *, axis_name: AxisName | None = None):
  """``((loss, aux), grads)`` of ``compute_loss`` at ``state.params``, averaged over the data axis.

  Under ``shard_map``/``pmap`` over ``axis_name`` the gradients are averaged
  by ``reduce_gradients`` and the loss and ``aux["metrics"]`` by
  ``lax.pmean``: every device gets the values of one device running the
  whole batch. ``axis_name=None`` under ``jit`` (with or without
  shardings) and on one device.

  Args:
    compute_loss: from ``make_loss_fn``.
    state: a ``TrainState`` (``params``, ``batch_stats``, ``apply_fn``).
    noisy: the model input, ``[B, H, W, C]`` float in [0, 1].
    clean: the target, same shape.
    rngs: named PRNG keys for the model (``model_rngs``).
    axis_name: the data axis under ``shard_map``/``pmap``.

  Returns:
    ``((loss, aux), grads)``; ``grads`` has the structure of ``state.params``.

  Raises:
    ValueError: an ``axis_name`` not mapped here, gradients summed over a
      mapped axis with ``axis_name=None``, or BatchNorm statistics that
      differ across ``axis_name`` (``check_vma=True``; build the model with
      ``bn_axis_name``).
  """
  _check_axes(axis_name)
  grad_fn = jax.value_and_grad(compute_loss, has_aux=True)
  # On Explicit axes: the gradients sharded as the parameters, the rest replicated.
  specs = jax.tree.map(lambda p: jax.typeof(p).sharding.spec, state.params)
  replicated = jax.sharding.PartitionSpec()
  grad_fn = _on_auto_axes(grad_fn, noisy, ((replicated, replicated), specs))
  (loss, aux), grads = grad_fn(state.params, state, noisy, clean, rngs)
  grads = reduce_gradients(grads, loss, axis_name)
  axes = _axes(axis_name)
  if axes:
    for leaf in jax.tree.leaves(aux["batch_stats"]):
      differing = [a for a in axes if a in _varying(leaf)]
      if differing:
        raise ValueError(
            f"BatchNorm statistics differ across the data axis {differing[0]!r}: build the model "
            f"with bn_axis_name={differing[0]!r} so that they are averaged over it.")
    aux = {**aux, "metrics": jax.lax.pmean(aux["metrics"], axes)}
    loss = aux["metrics"]["loss"]
  return (loss, aux), grads


# ---------------------------------------------------------------------------
# Steps.
# ---------------------------------------------------------------------------


def make_train_step(*, loss_fn: losses.Loss, corrupt: corruptions.BatchCorruption,
                    axis_name: AxisName | None = None, ema_decay: float = 0.0,
                    train_kwarg: str | None = "train",
                    rng_streams: Sequence[str] = DEFAULT_RNG_STREAMS,
                    mutable: Sequence[str] = DEFAULT_MUTABLE,
                    aux_weights: Mapping[str, float] | None = None) -> Callable:
  """Builds ``train_step(state, images, rng) -> (state, metrics)``.

  Args:
    loss_fn: from ``losses.create``.
    corrupt: from ``corruptions.parse`` (any ``corrupt(keys, images)``).
    axis_name: the data axis under ``shard_map`` or ``pmap`` (build the
      model with ``bn_axis_name`` too); ``None`` under ``jit`` with
      shardings, where XLA inserts the reductions. See the module docstring.
    ema_decay: where the state keeps ``ema_params``, each step moves them
      toward the new parameters by ``1 - d``, with ``d = min(ema_decay,
      (1 + t) / (10 + t))`` at step ``t`` (a short warm-up, so that the
      average leaves the initial weights behind within the first epoch).
    train_kwarg, mutable, aux_weights: as for ``make_loss_fn``.
    rng_streams: the model's named PRNG streams (``model_rngs``).

  Returns:
    A pure function: ``images`` are clean ``[B, H, W, C]`` uint8 (or float in
    [0, 1]); ``rng`` is this step's key: ``split(rng)`` gives the corruption
    key, whose ``fold_in`` with example ``i``'s global index corrupts it,
    and the model's key (``model_rngs``). ``metrics`` holds the loss and its
    terms, averaged over ``axis_name``.
  """
  compute_loss = make_loss_fn(loss_fn=loss_fn, train_kwarg=train_kwarg, mutable=mutable,
                              aux_weights=aux_weights)

  def train_step(state: TrainState, images: jax.Array, rng: jax.Array):
    _check_axes(axis_name)
    clean = to_float(images)
    corrupt_key, sample_key = jax.random.split(rng)
    # Example i of the global batch gets fold_in(corrupt_key, i) whether the
    # batch is whole (jit) or split over an axis (shard_map, pmap).
    index = example_index(clean.shape[0], axis_name)
    noisy = corrupt(corruptions.example_keys(corrupt_key, index), clean)
    rngs = model_rngs(sample_key, rng_streams, axis_name=axis_name)
    (_, aux), grads = loss_and_grad(compute_loss, state, noisy, clean, rngs, axis_name=axis_name)
    batch_stats = aux["batch_stats"]
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if isinstance(state, EMATrainState):
      state = state.replace(ema_params=update_ema(state.ema_params, state.params, state.step,
                                                  ema_decay))
    return state, aux["metrics"]

  return train_step


def make_batch_statistics(*, corrupt: corruptions.BatchCorruption,
                          train_kwarg: str | None = "train",
                          rng_streams: Sequence[str] = DEFAULT_RNG_STREAMS) -> Callable:
  """Builds ``batch_statistics(state, images, keys, rng) -> batch_stats`` of one batch.

  The BatchNorm statistics that a training step on ``images`` (corrupted
  with the per-example ``keys``) computes under ``state``'s parameters:
  each layer's batch mean and variance, as a tree like ``state.batch_stats``
  (``evaluation.make_recompute_batch_stats`` averages them over many
  batches). Read off the model's own running-average update, for any
  momentum ``m``: a train-mode call from running statistics ``r`` returns
  ``m * r + (1 - m) * b``, so calls from ``r = 0`` and ``r = 1`` give
  ``(1 - m) * b`` and ``m``, hence ``b``. Layers whose statistics do not
  follow that update (none in this library) would need their own rule.
  """
  kwargs = {train_kwarg: True} if train_kwarg else {}

  def batch_statistics(state: TrainState, images: jax.Array, keys: jax.Array,
                       rng: jax.Array):
    noisy = corrupt(keys, to_float(images))
    rngs = model_rngs(rng, rng_streams)

    def updated(start: float):
      stats = jax.tree.map(lambda x: jnp.full_like(x, start), state.batch_stats)
      _, new = state.apply_fn({"params": state.params, "batch_stats": stats}, noisy,
                              mutable=["batch_stats"], rngs=rngs, **kwargs)
      return new["batch_stats"]

    from_zero, from_one = updated(0.0), updated(1.0)
    # from_one - from_zero = m; from_zero = (1 - m) * b.
    return jax.tree.map(lambda z, o: z / (1.0 - (o - z)), from_zero, from_one)

  return batch_statistics


def update_ema(ema: Any, params: Any, step: jax.Array, decay: float) -> Any:
  """``ema`` moved toward ``params`` after ``step`` updates (see ``make_train_step``)."""
  step = jnp.asarray(step, jnp.float32)
  d = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
  return jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), ema, params)


def _resolve(state_or_variables, apply_fn: Callable | None, where: str):
  """``(apply_fn, variables)`` from a TrainState or a variables dict."""
  if isinstance(state_or_variables, Mapping):
    if "params" not in state_or_variables:
      raise ValueError(f"{where}: a variables dict needs 'params', got keys "
                       f"{sorted(state_or_variables)}.")
    variables = dict(state_or_variables)
    fn = apply_fn
  else:
    variables = {"params": state_or_variables.params,
                 "batch_stats": _or_empty(getattr(state_or_variables, "batch_stats", None))}
    fn = apply_fn or getattr(state_or_variables, "apply_fn", None)
  if fn is None:
    raise ValueError(f"{where}: a variables dict carries no model; build the step with "
                     "apply_fn=model.apply.")
  return fn, variables


def make_reconstruct(*, corrupt: corruptions.BatchCorruption, apply_fn: Callable | None = None,
                     train_kwarg: str | None = "train") -> Callable:
  """Builds ``reconstruct(state_or_variables, images, keys) -> (corrupted, reconstruction)``.

  Args:
    corrupt: from ``corruptions.parse``.
    apply_fn: the model's ``apply``, needed when the first argument is a
      variables dict (``{"params": ..., "batch_stats": ...}``) rather than
      a ``TrainState``.
    train_kwarg: the model's train flag, passed as ``False`` (``None``: none).
  """
  kwargs = {train_kwarg: False} if train_kwarg else {}

  def reconstruct(state_or_variables, images: jax.Array, keys: jax.Array):
    fn, variables = _resolve(state_or_variables, apply_fn, "reconstruct")
    noisy = corrupt(keys, to_float(images))
    model = _on_auto_axes(lambda v, x: fn(v, x, **kwargs), noisy, _batch_spec(noisy))
    return noisy, model(variables, noisy)

  return reconstruct


def make_eval_step(*, corrupt: corruptions.BatchCorruption, apply_fn: Callable | None = None,
                   train_kwarg: str | None = "train") -> Callable:
  """Builds ``eval_step(state_or_variables, images, keys) -> per-image metrics``.

  Returns PSNR, SSIM and MSE of the reconstruction and of the corrupted input
  (the baseline), each ``[B]``. ``keys`` are per-example corruption keys;
  the first argument is a ``TrainState`` or a variables dict (then pass
  ``apply_fn``), as for ``make_reconstruct``.
  """

  reconstruct = make_reconstruct(corrupt=corrupt, apply_fn=apply_fn, train_kwarg=train_kwarg)

  def score(reconstruction, noisy, clean):
    out = metrics.image_metrics(reconstruction, clean)
    out.update({f"input_{k}": v for k, v in metrics.image_metrics(noisy, clean).items()})
    return out

  def eval_step(state_or_variables, images: jax.Array, keys: jax.Array):
    clean = to_float(images)
    noisy, reconstruction = reconstruct(state_or_variables, clean, keys)
    return _on_auto_axes(score, clean, _batch_spec(clean))(reconstruction, noisy, clean)

  return eval_step


__all__ = [
    "DEFAULT_MUTABLE", "DEFAULT_RNG_STREAMS", "EMATrainState", "NNXModel", "TrainState",
    "example_index",
    "from_nnx", "init_state", "loss_and_grad", "make_batch_statistics", "make_eval_step",
    "make_loss_fn", "update_ema",
    "make_reconstruct", "make_train_step", "model_rngs", "reduce_gradients", "to_float",
]
