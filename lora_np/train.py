"""A small training loop: AdamW, gradient clipping, a learning-rate schedule, periodic
evaluation, a history for plots, a progress bar, and a guard against NaN or infinite losses.

    from lora_np import data, train
    history = train.train(model, data.batches("swp", 32), steps=300, lr=3e-3,
                          eval_every=100, eval_fn=lambda m: data.exact_match(m, "swp", n=100))
    history["loss"][-1], history["eval"][-1]

Only parameters that require a gradient are optimised, so the same loop does full
fine-tuning and LoRA (freeze the base first). Every setting is checked before the first
step (:class:`TrainSettings`), so a bad one never changes the model. ``threads=2`` splits each
batch over two CPU threads (:mod:`lora_np.parallel`; set BLAS to one thread first).

The NaN guard: a loss that is not finite at step ``s`` means the update of step ``s - 1`` went
wrong (too high a learning rate, most often). The loop keeps a copy of the weights and the
optimiser state from before each update, puts them back, and raises :class:`TrainingDiverged`
(a FloatingPointError) holding the history up to the last finite loss. The model then holds the
weights that gave that loss, and the optimiser the state that goes with them, as if training had
stopped one step earlier. The copy costs one pass over the trained weights and their optimiser
state per step; it is what makes a failed run safe to keep using.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, fields

from tqdm.std import tqdm  # the plain text bar: never warns, works in a terminal and a notebook

from . import backend, fastpaths, graph, optim, parallel

SCHEDULES = ("constant", "cosine")


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def lr_at(
    step: int,
    steps: int,
    lr: float,
    warmup_steps: int = 0,
    schedule: str = "constant",
    min_lr_ratio: float = 0.1,
) -> float:
    """The learning rate at ``step`` (0-based) of ``steps``.

    Linear warm-up over ``warmup_steps``, then ``"constant"`` or ``"cosine"`` decay down to
    ``min_lr_ratio * lr`` at the last step.
    """
    if not (_is_int(warmup_steps) and warmup_steps >= 0):
        raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        span = max(steps - warmup_steps - 1, 1)
        progress = min((step - warmup_steps) / span, 1.0)
        return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown schedule {schedule!r}; expected 'constant' or 'cosine'")


@dataclass(frozen=True)
class TrainSettings:
    """The settings of one :func:`train` run (see its docstring), all checked when made."""

    steps: int
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.99)
    grad_clip: float | None = 1.0
    warmup_steps: int = 0
    schedule: str = "constant"
    eval_every: int | None = None
    log_every: int = 1
    max_seconds: float | None = None
    progress: bool = True
    desc: str = "train"
    threads: int = 1

    def __post_init__(self):
        def bad(name, expected):
            return ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

        if not (_is_int(self.steps) and self.steps >= 0):
            raise bad("steps", "an int >= 0")
        try:
            optim.check_learning_rate(self.lr)
        except ValueError as err:
            raise ValueError(f"lr: {err}") from None
        wd = self.weight_decay
        if not (_is_number(wd) and math.isfinite(wd) and wd >= 0):
            raise bad("weight_decay", "a finite number >= 0")
        betas_ok = isinstance(self.betas, tuple | list) and len(self.betas) == 2
        if not (betas_ok and all(_is_number(b) and 0 <= b < 1 for b in self.betas)):
            raise bad("betas", "two numbers in [0, 1)")
        if self.grad_clip is not None and not (_is_number(self.grad_clip) and self.grad_clip > 0):
            raise bad("grad_clip", "a number > 0 or None (no clipping)")
        if not (_is_int(self.warmup_steps) and self.warmup_steps >= 0):
            raise bad("warmup_steps", "an int >= 0")
        if self.schedule not in SCHEDULES:
            raise bad("schedule", f"one of {SCHEDULES}")
        if self.eval_every is not None and not (_is_int(self.eval_every) and self.eval_every >= 1):
            raise bad("eval_every", "an int >= 1 or None")
        if not (_is_int(self.log_every) and self.log_every >= 1):
            raise bad("log_every", "an int >= 1")
        seconds = self.max_seconds
        if seconds is not None and not (_is_number(seconds) and seconds >= 0):
            raise bad("max_seconds", "a number >= 0 or None")
        if not (_is_int(self.threads) and self.threads >= 1):
            raise bad("threads", "an int >= 1")

    def lr_at(self, step: int) -> float:
        """The learning rate of ``step`` under this schedule (see :func:`lr_at`)."""
        return lr_at(step, self.steps, self.lr, self.warmup_steps, self.schedule)


class TrainingDiverged(FloatingPointError):
    """The loss or the gradient norm stopped being finite.

    ``step`` is the step where it happened; ``history`` is the history up to the last finite
    loss, which is also where the model's weights and the optimiser's state were put back.
    """

    def __init__(self, message: str, step: int, history: dict):
        super().__init__(message)
        self.step, self.history = step, history


class _LastGood:
    """A copy of the trained weights and the optimiser state from before the latest update.

    The copies go into buffers kept from step to step, so taking one allocates nothing after
    the first step.
    """

    def __init__(self, params, optimizer):
        self.params, self.optimizer = params, optimizer
        self.weights: list = [None] * len(params)
        self.state: dict[int, dict] = {}
        self.step_count = optimizer.step_count

    @staticmethod
    def _copy(array, buffer):
        if buffer is not None and buffer.shape == array.shape and buffer.dtype == array.dtype:
            backend.xp.copyto(buffer, array)
            return buffer
        return array.copy()

    def save(self) -> None:
        self.weights = [self._copy(p.data, w) for p, w in zip(self.params, self.weights)]
        state = {}
        for key, entry in self.optimizer.state.items():
            old = self.state.get(key, {})
            state[key] = {
                name: self._copy(value, old.get(name)) if hasattr(value, "shape") else value
                for name, value in entry.items()
            }
        self.state, self.step_count = state, self.optimizer.step_count

    def restore(self) -> None:
        for p, saved in zip(self.params, self.weights):
            if saved is not None:
                p.data = saved.copy()
        live = self.optimizer.state
        for key in list(live):
            if key not in self.state:
                del live[key]  # state the undone step created
        for key, entry in self.state.items():
            live[key] = {
                name: value.copy() if hasattr(value, "shape") else value
                for name, value in entry.items()
            }
        self.optimizer.step_count = self.step_count


def _batch_source(batches):
    """A function of the step, or an iterator (``iter`` of a list of batches)."""
    if callable(batches) and not isinstance(batches, Iterator):
        return batches
    return iter(batches)


def _next_batch(source, batches, step: int, steps: int):
    """The batch for ``step``: by calling ``source(step)``, or the next of the iterator
    ``source`` made from ``batches`` (named in the error when it has none left)."""
    if callable(source) and not isinstance(source, Iterator):
        return source(step)
    try:
        return next(source)
    except StopIteration:
        raise ValueError(
            f"batches ran out at step {step} of {steps}: the {type(batches).__name__} given as "
            f"batches ({graph.short(batches)}) has no batch left. Give at least steps batches, "
            "an endless iterator (data.batches(...)), or a function step -> (idx, targets)"
        ) from None


def _checked(batch, step: int):
    """``batch`` as (idx, targets), refused when empty or when no target counts."""
    idx, targets = batch
    try:
        parallel.check_batch(idx, targets)
    except ValueError as err:
        raise ValueError(f"the batch for step {step}: {err}") from None
    if parallel.count_targets(targets) == 0:
        raise ValueError(
            f"the batch for step {step} has no target that counts: every target is -100 "
            f"(IGNORE_INDEX, skipped by the loss), so its loss is undefined (0/0). Check how "
            "the targets were made: each row needs at least one token to predict"
        )
    return idx, targets


def _trained_params(model, params) -> list:
    """What to optimise: ``params``, or every parameter of ``model`` that requires a grad."""
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    params = list(params)
    if not params:
        raise ValueError("nothing to train: no parameter requires a gradient")
    return params


def _check_not_merged(model) -> None:
    """Refuse a model with a merged LoRA adapter: its forward pass reads the merged weight, so
    the adapter's A and B would get no gradient. Any module with ``merged = True`` counts."""
    named_modules = getattr(model, "named_modules", None)
    for name, module in named_modules() if named_modules else ():
        if getattr(module, "merged", False) is True:
            raise RuntimeError(
                f"{name or 'the model'} has a merged LoRA adapter, so training would not reach "
                "it: unmerge first (lora.unmerge_adapter(model)), train, then merge again"
            )


def _grad_norm(params, grad_clip) -> float:
    """The global gradient norm, clipping the gradients to ``grad_clip`` when it is given."""
    if grad_clip is not None:
        return optim.clip_grad_norm_(params, grad_clip)
    return math.sqrt(sum(float((p.grad * p.grad).sum()) for p in params if p.grad is not None))


def _all_finite(params) -> bool:
    xp = backend.xp
    return all(bool(xp.isfinite(p.data).all()) for p in params)


def _eval_text(result) -> str:
    """A compact text of an eval result for the progress bar."""
    if isinstance(result, dict):
        return " ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
        )
    return f"{result:.3g}" if isinstance(result, float) else str(result)


def _progress_bar(settings: TrainSettings):
    """A text bar (tqdm) that redraws every ~5 % of the steps, not on a timer, so a notebook
    stores the same frames on every run; None when ``progress`` is off."""
    if not settings.progress:
        return None
    return tqdm(
        total=settings.steps,
        desc=settings.desc,
        leave=True,  # the finished bar stays: nbval keeps only a stream's last frame, masked
        mininterval=0,
        maxinterval=float("inf"),
        miniters=max(1, settings.steps // 20),
    )


def _rolled_back(history: dict, steps_done: int) -> dict:
    """``history`` without what the undone update added (its evaluation)."""
    history["steps_done"] = steps_done
    while history["eval_step"] and history["eval_step"][-1] > steps_done:
        history["eval_step"].pop()
        history["eval"].pop()
    return history


def train(
    model,
    batches: Iterable | Callable,
    steps: int,
    lr: float = 1e-3,
    *,
    params=None,
    optimizer=None,
    weight_decay: float = 0.0,
    betas: tuple = (0.9, 0.99),
    grad_clip: float | None = 1.0,
    warmup_steps: int = 0,
    schedule: str = "constant",
    eval_every: int | None = None,
    eval_fn: Callable | None = None,
    log_every: int = 1,
    max_seconds: float | None = None,
    progress: bool = True,
    desc: str = "train",
    threads: int = 1,
) -> dict:
    """Train ``model`` for ``steps`` optimiser steps; return the history.

    Args:
        model: called as ``model(idx, targets) -> (logits, loss)``.
        batches: an iterator (or iterable) of ``(idx, targets)`` pairs, each ``(B, T)`` (e.g.
            ``data.batches(...)``), or a function ``step -> (idx, targets)``.
        steps: how many optimiser steps.
        lr: peak learning rate (after ``warmup_steps``), see :func:`lr_at` and ``schedule``.
            Checked (finite, >= 0) even when ``optimizer`` is given, since it sets that
            optimiser's rate at every step.
        params: what to optimise; default: every parameter of ``model`` that requires a grad.
        optimizer: use this optimiser instead of a fresh ``AdamW(params, lr, betas,
            weight_decay=weight_decay)``; its ``lr`` is still set by the schedule.
        grad_clip: clip the global gradient norm to this (> 0; None: no clipping).
        eval_every, eval_fn: call ``eval_fn(model)`` (a number or a dict of numbers) before the
            first step, every ``eval_every`` steps and after the last step.
        log_every: record loss, lr and gradient norm every this many steps.
        max_seconds: stop early (after a whole step) once this much training time has passed;
            evaluation time is not counted.
        progress: show a text progress bar on stderr (off: nothing is printed).
        threads: run each step's batch as this many shards of rows on as many threads
            (:func:`lora_np.parallel.loss_and_backward`; the same gradient to rounding).

    Returns:
        ``{"step": [...], "loss": [...], "lr": [...], "grad_norm": [...],
        "eval_step": [...], "eval": [...], "train_seconds": float, "steps_done": int}``;
        the model is left in training mode.

    Raises:
        ValueError, TypeError: a bad setting, before anything changes. ValueError also for a
            batch that is empty or has no target that counts (all -100), and for ``batches``
            that run out before ``steps``, naming the step.
        RuntimeError: a LoRA adapter of ``model`` is merged (unmerge first).
        TrainingDiverged: a FloatingPointError; the loss or the gradient norm was NaN or
            infinite. The model and the optimiser are back at the last finite loss, and the
            error's ``history`` runs up to it. Any other error (in ``eval_fn``, say) leaves
            the model in the train or eval mode it had when ``train`` was called.
    """
    arguments = locals()  # every field of TrainSettings is an argument of the same name
    settings = TrainSettings(**{f.name: arguments[f.name] for f in fields(TrainSettings)})
    if eval_every is not None and eval_fn is None:
        raise ValueError(f"eval_every={eval_every} needs a positive number and an eval_fn")
    params = _trained_params(model, params)
    _check_not_merged(model)
    if optimizer is None:
        optimizer = optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    # Training allocates and frees the same activation arrays every step: let glibc keep them
    # (speed only; a no-op elsewhere or with LORA_NP_MALLOC_TUNING=0).
    fastpaths.tune_allocator()
    was_training = model.training
    try:
        return _Run(model, batches, settings, params, optimizer, eval_fn).run()
    except BaseException:
        model.train(was_training)
        raise


class _Run:
    """One call of :func:`train`: the loop, its history and its guard."""

    def __init__(self, model, batches, settings: TrainSettings, params, optimizer, eval_fn):
        self.model, self.batches, self.settings = model, batches, settings
        self.source = _batch_source(batches)
        self.params, self.optimizer, self.eval_fn = params, optimizer, eval_fn
        self.history = {"step": [], "loss": [], "lr": [], "grad_norm": [], "eval_step": []}
        self.history.update(eval=[], train_seconds=0.0, steps_done=0)
        self.last_good = _LastGood(params, optimizer)
        self.bar = None

    def evaluate(self, step: int):
        self.model.eval()  # no dropout while scoring
        result = self.eval_fn(self.model)
        self.history["eval_step"].append(step)
        self.history["eval"].append(result)
        self.model.train()
        return result

    def diverged(self, message: str, step: int, undo: bool) -> TrainingDiverged:
        """Put the last finite state back (``undo``: the latest update made things worse)."""
        done = self.history["steps_done"]
        if undo and done > 0:
            self.last_good.restore()
            done -= 1
            message += (
                f"; the weights and optimiser state from before step {done}'s update (the last "
                "finite loss) were restored"
            )
        message += ": try a lower learning rate or gradient clipping"
        return TrainingDiverged(message, step, _rolled_back(self.history, done))

    def step(self, step: int) -> tuple[float, float, float]:
        """One optimiser step: (learning rate, loss before the update, gradient norm)."""
        rate = self.settings.lr_at(step)
        self.optimizer.lr = rate
        batch = _next_batch(self.source, self.batches, step, self.settings.steps)
        idx, targets = _checked(batch, step)
        self.optimizer.zero_grad()
        loss_value = parallel.loss_and_backward(self.model, idx, targets, self.settings.threads)
        if not math.isfinite(loss_value):
            self.optimizer.zero_grad()  # the gradient of a non-finite loss is of no use
            raise self.diverged(
                f"the loss became {loss_value} at step {step} (lr {rate:.3g})", step, undo=True
            )
        norm = _grad_norm(self.params, self.settings.grad_clip)
        if not math.isfinite(norm):
            raise self.diverged(
                f"the gradient norm became {norm} at step {step} (loss {loss_value:.4g}); no "
                "update was made from that state",
                step,
                undo=False,
            )
        self.last_good.save()
        self.optimizer.step()
        self.history["steps_done"] = step + 1
        return rate, loss_value, norm

    def log(self, step: int, rate: float, loss_value: float, norm: float) -> None:
        if step % self.settings.log_every == 0 or step == self.settings.steps - 1:
            self.history["step"].append(step)
            self.history["loss"].append(loss_value)
            self.history["lr"].append(rate)
            self.history["grad_norm"].append(norm)

    def run(self) -> dict:
        settings, history = self.settings, self.history
        scheduled_eval = self.eval_fn is not None and settings.eval_every is not None
        self.model.train()
        if scheduled_eval:
            self.evaluate(0)
        self.bar = _progress_bar(settings)
        seconds = 0.0
        try:
            for step in range(settings.steps):
                started = time.perf_counter()
                rate, loss_value, norm = self.step(step)
                seconds += time.perf_counter() - started
                self.log(step, rate, loss_value, norm)
                if self.bar is not None:
                    self.bar.update(1)
                    self.bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
                done = step == settings.steps - 1 or (
                    settings.max_seconds is not None and seconds >= settings.max_seconds
                )
                if done and not _all_finite(self.params):
                    # no next forward pass will see these weights: check them directly
                    raise self.diverged(
                        f"the weights are not finite after the last update (step {step}, lr "
                        f"{rate:.3g})",
                        step,
                        undo=True,
                    )
                if scheduled_eval and ((step + 1) % settings.eval_every == 0 or done):
                    result = self.evaluate(step + 1)
                    if self.bar is not None:
                        self.bar.set_postfix(
                            loss=f"{loss_value:.4f}", eval=_eval_text(result), refresh=False
                        )
                if done:
                    break
        finally:
            if self.bar is not None:
                self.bar.close()
            history["train_seconds"] = seconds
        if self.eval_fn is not None and settings.eval_every is None:
            self.evaluate(history["steps_done"])
        return history
