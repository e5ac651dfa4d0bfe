"""A small training loop: AdamW, gradient clipping, a learning-rate schedule, periodic
evaluation, a history for plots, a progress bar, and a guard against NaN or infinite losses.

    from lora_np import data, train
    history = train.train(model, data.batches("swp", 32), steps=300, lr=3e-3,
                          eval_every=100, eval_fn=lambda m: data.exact_match(m, "swp", n=100))
    history["loss"][-1], history["eval"][-1]

Only parameters that require a gradient are optimised, so the same loop does full
fine-tuning and LoRA (freeze the base first). A loss that is not finite stops training with
a FloatingPointError naming the step *before* the optimiser touches the weights, so the
model keeps the last finite state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator

from . import optim

try:  # a progress bar if tqdm is installed; the loop works without it
    from tqdm.auto import tqdm as _tqdm
except ImportError:  # pragma: no cover - tqdm is a listed dependency
    _tqdm = None


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
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    if schedule == "cosine":
        span = max(steps - warmup_steps - 1, 1)
        progress = min((step - warmup_steps) / span, 1.0)
        return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown schedule {schedule!r}; expected 'constant' or 'cosine'")


def _next_batch(batches, step: int):
    """The batch for ``step``: from an iterator, or by calling ``batches(step)``."""
    if callable(batches) and not isinstance(batches, Iterator):
        return batches(step)
    return next(batches)


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
) -> dict:
    """Train ``model`` for ``steps`` optimiser steps; return the history.

    Args:
        model: called as ``model(idx, targets) -> (logits, loss)``.
        batches: an iterator of ``(idx, targets)`` pairs, each ``(B, T)`` (e.g.
            ``data.batches(...)``), or a function ``step -> (idx, targets)``.
        steps: how many optimiser steps.
        lr: peak learning rate (after ``warmup_steps``), see :func:`lr_at` and ``schedule``.
        params: what to optimise; default: every parameter of ``model`` that requires a grad.
        optimizer: use this optimiser instead of a fresh ``AdamW(params, lr, betas,
            weight_decay=weight_decay)``; its ``lr`` is still set by the schedule.
        grad_clip: clip the global gradient norm to this (None: no clipping).
        eval_every, eval_fn: call ``eval_fn(model)`` (a number or a dict of numbers) before the
            first step, every ``eval_every`` steps and after the last step.
        log_every: record loss, lr and gradient norm every this many steps.
        max_seconds: stop early (after a whole step) once this much training time has passed;
            evaluation time is not counted.
        progress: show a tqdm progress bar (turn it off for stable notebook output).

    Returns:
        ``{"step": [...], "loss": [...], "lr": [...], "grad_norm": [...],
        "eval_step": [...], "eval": [...], "train_seconds": float, "steps_done": int}``;
        the model is left in training mode.

    Raises:
        FloatingPointError: the loss or the gradient norm was NaN or infinite at some step;
            the message names the step, and no optimiser step was taken from that state.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if eval_every is not None and (eval_every < 1 or eval_fn is None):
        raise ValueError(f"eval_every={eval_every} needs a positive number and an eval_fn")
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    params = list(params)
    if not params:
        raise ValueError("nothing to train: no parameter requires a gradient")
    if optimizer is None:
        optimizer = optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)

    history = {
        "step": [],
        "loss": [],
        "lr": [],
        "grad_norm": [],
        "eval_step": [],
        "eval": [],
        "train_seconds": 0.0,
        "steps_done": 0,
    }

    def run_eval(step: int):
        model.eval()  # no dropout while scoring
        result = eval_fn(model)
        history["eval_step"].append(step)
        history["eval"].append(result)
        model.train()
        return result

    model.train()
    if eval_fn is not None and eval_every is not None:
        run_eval(0)
    bar = _tqdm(total=steps, desc=desc, disable=not progress, leave=False) if _tqdm else None
    seconds = 0.0
    step = 0
    try:
        for step in range(steps):
            started = time.perf_counter()
            rate = lr_at(step, steps, lr, warmup_steps, schedule)
            optimizer.lr = rate
            idx, targets = _next_batch(batches, step)
            optimizer.zero_grad()
            _, loss = model(idx, targets)
            loss_value = float(loss.item())
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"the loss became {loss_value} at step {step} (lr {rate:.3g}); no update was "
                    "made from that state: try a lower learning rate or gradient clipping"
                )
            loss.backward()
            if grad_clip is not None:
                norm = optim.clip_grad_norm_(params, grad_clip)
            else:
                norm = math.sqrt(
                    sum(float((p.grad * p.grad).sum()) for p in params if p.grad is not None)
                )
            if not math.isfinite(norm):
                raise FloatingPointError(
                    f"the gradient norm became {norm} at step {step} (loss {loss_value:.4g}); no "
                    "update was made from that state"
                )
            optimizer.step()
            seconds += time.perf_counter() - started
            history["steps_done"] = step + 1
            if step % log_every == 0 or step == steps - 1:
                history["step"].append(step)
                history["loss"].append(loss_value)
                history["lr"].append(rate)
                history["grad_norm"].append(norm)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4f}", refresh=False)
            done = step == steps - 1 or (max_seconds is not None and seconds >= max_seconds)
            if (
                eval_fn is not None
                and eval_every is not None
                and ((step + 1) % eval_every == 0 or done)
            ):
                result = run_eval(step + 1)
                if bar is not None:
                    bar.set_postfix(loss=f"{loss_value:.4f}", eval=_short(result), refresh=False)
            if done:
                break
    finally:
        if bar is not None:
            bar.close()
        history["train_seconds"] = seconds
    if eval_fn is not None and eval_every is None:
        run_eval(history["steps_done"])
    return history


def _short(result) -> str:
    """A compact text of an eval result for the progress bar."""
    if isinstance(result, dict):
        return " ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.items()
        )
    return f"{result:.3g}" if isinstance(result, float) else str(result)
