"""Checker for notebook 07's loop: fine-tuning the shipped tiny GPT with LoRA, written by you.

``fn(model, batches, steps, lr, r, alpha, targets) -> (optimizer, losses)`` injects LoRA into
``model`` (rank ``r``, ``alpha``, the layers ``targets`` name), leaves only LoRA trainable, builds
``lora_np.optim.AdamW`` over the trainable parameters only and takes ``steps`` steps, one batch
``(idx, targets)`` each: zero the gradients, forward, backward, step. It returns the optimiser and
the list of the ``steps`` training losses.

What the checker proves, on the shipped base and two course tasks (25 steps at lr 2e-2, batches
of 16, a second or two per case on one core; the grader runs the checker twice within its time
limit):

* every base weight is bit-identical afterwards, and none still requires a gradient;
* the optimiser was given exactly the LoRA parameters and holds state for each of them and for
  nothing else;
* the gradient left after the last step is that step's own, not a pile of them (on the first
  case: it is a property of the loop, and the check costs a forward and backward pass);
* the loss on 32 held-out prompts fell to at most :data:`MARGIN` of its start. Measured with the
  library's loop (:func:`train_lora_reference`) on both cases, 3 seeds each (64 held-out
  prompts): a correct loop ends at 0.24 to 0.29 of the start, one without ``zero_grad`` at 0.48
  to 0.61.

Building the model draws LoRA's random A from the library's generator; each case seeds it and the
caller's random stream is put back afterwards, so a checker cell never changes what the notebook
draws next.
"""

from __future__ import annotations

import copy

from threadpoolctl import threadpool_limits

from .. import backend, data, optim, transformer
from .. import lora as lora_lib
from ..autograd import Tensor, no_grad
from ._guard import safe_str
from ._harness import (
    ExerciseError,
    as_array,
    as_items,
    call,
    describe,
    exercise,
    np,
    passed,
)
from .finetune import _own_random_stream

__all__ = ["MARGIN", "check_train_lora", "train_lora_reference"]

MARGIN = 0.35
"""The held-out loss after training must be at most this share of the loss before."""

BATCH_SIZE = 16
HELD_OUT = 32  # held-out prompts the loss is measured on

# (task, r, alpha, targets, steps, lr, description)
_CASES = [
    ("prv", 4, 8.0, ["q", "v"], 25, 2e-2, "task prv, LoRA r = 4, alpha 8 on q and v"),
    ("rot", 2, 2.0, ["fc", "proj"], 25, 2e-2, "task rot, r = 2, alpha 2 on the MLP (fc, proj)"),
]


def train_lora_reference(model, batches, steps, lr, r, alpha, targets):
    """The library's loop: LoRA on ``targets``, AdamW over A and B only, ``steps`` steps.

    Args:
        model: a GPT; LoRA is injected into it in place.
        batches: an iterator of ``(idx, targets)`` pairs, each (B, T) token ids.
        steps: the number of optimiser steps (one batch each); lr: AdamW's learning rate.
        r, alpha, targets: the adapters' rank, alpha and the layer names (PEFT's rule).
    Returns:
        (the AdamW optimiser, a list of the ``steps`` training losses as floats).
    """
    lora_lib.inject(model, targets, r, alpha)
    lora_lib.mark_only_lora_as_trainable(model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for _, (idx, batch_targets) in zip(range(steps), batches, strict=False):
        optimizer.zero_grad()
        _, loss = model(idx, batch_targets)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.item()))
    return optimizer, losses


class _Batches:
    """The stream handed to the learner: counts the batches taken and remembers, for the last
    two, the batch and the LoRA weights when it was taken (for the pile-up check)."""

    def __init__(self, model, originals: set, task: str, seed: int):
        self.model, self.originals = model, originals
        self.stream = data.batches(task, BATCH_SIZE, seed=seed)
        self.taken = 0
        self.first_weights = None
        self.recent: list = []  # [(LoRA weights when taken, batch)] of the last two batches

    def __iter__(self):
        return self

    def __next__(self):
        weights = [
            backend.to_numpy(p.data).copy()
            for p in self.model.parameters()
            if id(p) not in self.originals
        ]
        if self.first_weights is None:
            self.first_weights = weights
        batch = next(self.stream)
        self.recent = [*self.recent[-1:], (weights, batch)]
        self.taken += 1
        return batch

    def last_trained(self, steps: int):
        """(weights, batch) of the last step's batch, or None when it cannot be known."""
        if not self.recent or self.taken not in (steps, steps + 1):
            return None
        return self.recent[-1] if self.taken == steps else self.recent[0]


def _reseed(seed: int) -> None:
    """Seed the library's generator in place (the caller's state is put back afterwards by
    ``_own_random_stream``; a new generator object would escape it)."""
    bits = backend.rng().bit_generator
    bits.state = type(bits)(seed).state


def _loss(model, idx, targets) -> float:
    with no_grad():
        return float(model(idx, targets)[1].item())


def _as_losses(losses, name: str, case: str, steps: int):
    """The learner's losses (a list, tuple or array of ``steps`` numbers) as a float array."""
    if isinstance(losses, list | tuple):
        for item in losses:
            if isinstance(item, Tensor):
                raise ExerciseError(
                    f"{name}: your losses hold Tensors on {case}; append loss.item(), a float "
                    "(a Tensor keeps its whole graph alive, and the memory with it)"
                )
            if not (type(item) in (int, float) or isinstance(item, np.floating | np.integer)):
                raise ExerciseError(
                    f"{name}: your losses hold {describe(item)} on {case}; expected numbers "
                    "(append loss.item() at every step)"
                )
        losses = np.array([float(item) for item in losses])
    return as_array(losses, name, case + " (losses)", shape=(steps,))


def _inputs():
    rng = np.random.default_rng(20260707)  # the grader's hidden cases draw other seeds
    for task, r, alpha, targets, steps, lr, description in _CASES:
        seed = int(rng.integers(0, 2**31))
        yield (task, r, alpha, targets, steps, lr, seed), description


def _check_base(name, case, model, originals: dict) -> list:
    """The LoRA parameters of the trained model, after proving the base untouched and frozen."""
    now = {id(p): (n, p) for n, p in model.named_parameters()}
    for key, (label, before) in originals.items():
        if key not in now:
            raise ExerciseError(
                f"{name}: after your loop on {case} the model no longer holds its own weight "
                f"`{label}`: wrap the existing Linear layers in place (inject), do not copy them"
            )
        _, p = now[key]
        if not np.array_equal(backend.to_numpy(p.data), before):
            raise ExerciseError(
                f"{name}: the base weight `{label}` changed during training on {case}. The base "
                "is not frozen: mark only LoRA as trainable before building the optimiser, and "
                "give the optimiser only the parameters that require a gradient"
            )
        if p.requires_grad:
            raise ExerciseError(
                f"{name}: the base weight `{label}` still requires a gradient after your loop on "
                f"{case}. The base is not frozen: call mark_only_lora_as_trainable(model) after "
                "inject (every backward then computes gradients nobody uses)"
            )
    added = [(n, p) for key, (n, p) in now.items() if key not in originals]
    if not added:
        raise ExerciseError(
            f"{name}: the model has no LoRA parameters after your loop on {case}: inject LoRA "
            "into the model you were given (in place) before training"
        )
    for label, p in added:
        if not p.requires_grad:
            raise ExerciseError(
                f"{name}: the LoRA parameter `{label}` is frozen after your loop on {case}: "
                "A and B are the only parameters that train"
            )
    return added


def _check_is_adamw(name, case, optimizer) -> None:
    if not isinstance(optimizer, optim.AdamW):
        raise ExerciseError(
            f"{name} returned {describe(optimizer)} as the optimiser on {case} (yours "
            f"{safe_str(optimizer)}); expected the ln.optim.AdamW you trained with, first in "
            "the pair (optimizer, losses)"
        )


def _check_optimizer(name, case, optimizer, lora_params, originals: dict) -> None:
    lora_ids = {id(p): label for label, p in lora_params}
    given = {id(p) for p in optimizer.params}
    base_given = [originals[k][0] for k in given if k in originals]
    if base_given:
        raise ExerciseError(
            f"{name}: every parameter is optimised on {case}: your AdamW was given "
            f"{len(base_given)} frozen base weights (`{base_given[0]}` among them). Give it "
            "only what trains: [p for p in model.parameters() if p.requires_grad]"
        )
    missing = [label for key, label in lora_ids.items() if key not in given]
    if missing:
        raise ExerciseError(
            f"{name}: your AdamW was not given the LoRA parameter `{missing[0]}` on {case}, "
            "so it never trains: build the optimiser after inject, from the model's trainable "
            "parameters"
        )
    stray = [k for k in optimizer.state if k not in lora_ids]
    if stray or len(given) != len(lora_ids):
        raise ExerciseError(
            f"{name}: your AdamW holds parameters or state that are not the model's LoRA "
            f"parameters on {case}: build it from this model's trainable parameters only"
        )
    unstepped = [label for key, label in lora_ids.items() if key not in optimizer.state]
    if unstepped:
        raise ExerciseError(
            f"{name}: your AdamW holds no state for `{unstepped[0]}` on {case}: it never took "
            "a step with a gradient there (call loss.backward() before optimizer.step(), and "
            "zero the gradients before the backward, not between backward and step)"
        )


def _check_pile_up(name, case, model, batches: _Batches, steps: int, lora_params) -> None:
    """The gradient left after the last step must be that step's own (skipped when the loop
    zeroed it afterwards, or took every batch before training)."""
    grads = [p.grad for _, p in lora_params]
    last = batches.last_trained(steps)
    if all(g is None for g in grads) or last is None or len(batches.recent) < 2:
        return
    last_weights, last_batch = last
    if all(np.array_equal(a, b) for a, b in zip(batches.first_weights, last_weights)):
        return  # the batches were all taken before training: nothing to compare with
    lora_ids = {id(p) for _, p in lora_params}
    positions = [i for i, p in enumerate(model.parameters()) if id(p) in lora_ids]
    twin = copy.deepcopy(model)  # the last step's forward and backward, on a private copy
    twin_params = twin.parameters()
    twin_lora = [twin_params[i] for i in positions]
    for p, weights in zip(twin_lora, last_weights, strict=True):
        p.data = backend.xp.asarray(weights)
    for p in twin_params:
        p.grad = None
    _, loss = twin(*last_batch)
    loss.backward()
    for (label, _), g, ref in zip(lora_params, grads, twin_lora, strict=True):
        if g is None or ref.grad is None:
            continue
        got = backend.to_numpy(g).astype(np.float64)
        want = backend.to_numpy(ref.grad).astype(np.float64)
        scale = max(float(np.abs(want).max()), 1e-12)
        if got.shape != want.shape or not np.allclose(got, want, rtol=1e-2, atol=1e-3 * scale):
            ratio = float(np.linalg.norm(got) / max(float(np.linalg.norm(want)), 1e-30))
            raise ExerciseError(
                f"{name}: the gradient of `{label}` after your last step on {case} is not that "
                f"step's gradient (its norm is {ratio:.3g} times as large). Gradients pile up: "
                "backward() adds to .grad, so call optimizer.zero_grad() before every backward"
            )


@exercise("train_lora", train_lora_reference)
def check_train_lora(fn, *, quiet: bool = False) -> None:
    """Check ``fn(model, batches, steps, lr, r, alpha, targets)`` -> (optimizer, losses)."""
    name = "train_lora"
    n_cases = 0
    for (task, r, alpha, targets, steps, lr, seed), case in _inputs():
        case = f"{case}, {steps} steps at lr {lr:g}"
        # one BLAS thread: these products are small, and a second thread only waits on a busy
        # machine (the loop must finish within the time limit of one call)
        with _own_random_stream(), threadpool_limits(limits=1, user_api="blas"):
            _reseed(seed)  # LoRA's A: the same draw for every call on this case
            model = transformer.load_pretrained()
            held_idx, held_targets = data.encode_examples(
                data.make_examples(task, HELD_OUT, seed=seed, split="test")
            )
            start = _loss(model, held_idx, held_targets)
            first_idx, first_targets = next(data.batches(task, BATCH_SIZE, seed=seed))
            first_loss = _loss(model, first_idx, first_targets)  # B = 0: LoRA changes nothing
            originals = {
                id(p): (n, backend.to_numpy(p.data).copy()) for n, p in model.named_parameters()
            }
            batches = _Batches(model, set(originals), task, seed)
            given_targets = list(targets)
            got = call(fn, name, case, model, batches, steps, lr, r, alpha, given_targets)
        if given_targets != targets:
            raise ExerciseError(f"{name} changed its input targets on {case}: leave it as given")
        optimizer, losses = as_items(got, 2, name, case, "a pair (optimizer, losses)")
        _check_is_adamw(name, case, optimizer)
        if batches.taken not in (steps, steps + 1):
            raise ExerciseError(
                f"{name} took {batches.taken} batches for {steps} steps on {case}: one batch "
                "per step (e.g. `for _, (idx, targets) in zip(range(steps), batches)`)"
            )
        losses = _as_losses(losses, name, case, steps)
        lora_params = _check_base(name, case, model, originals)
        _check_optimizer(name, case, optimizer, lora_params, originals)
        if not np.isclose(float(losses[0]), first_loss, rtol=1e-3, atol=1e-4):
            raise ExerciseError(
                f"{name}: losses[0] is {float(losses[0]):.5g} on {case}, but the first batch's "
                f"loss before any update is {first_loss:.5g}: append loss.item() of every step, "
                "in order"
            )
        if n_cases == 0:
            _check_pile_up(name, case, model, batches, steps, lora_params)
        end = _loss(model, held_idx, held_targets)
        if not end <= MARGIN * start:
            raise ExerciseError(
                f"{name}: the held-out loss fell only from {start:.4g} to {end:.4g} on {case} "
                f"({end / start:.0%} of its start); a correct loop ends below {MARGIN:.0%}. "
                "Check the order zero_grad, forward, backward, step, and the learning rate you "
                "pass to AdamW"
            )
        n_cases += 1
    passed(name, n_cases, quiet)
