"""Checkers for notebook 07 (fine-tuning with LoRA): what a practitioner pays, counted.

References: :func:`lora_np.lora.count_parameters` for the (trainable, total) entries of a
model, and the library's own optimisers for the state they keep: the reference builds the
optimiser, gives every trainable parameter a gradient, takes one step and reads
``optimizer.state_bytes()``.

The cases are small GPTs (and a plain Linear) with LoRA on some matrices, fully trainable or
fully frozen. Building them draws random weights; the caller's random stream is put back
afterwards, so a checker cell never changes what the notebook draws next.
"""

from __future__ import annotations

import contextlib
import copy

from .. import backend, nn, optim, transformer
from .. import lora as lora_lib
from ._harness import (
    ExerciseError,
    as_items,
    as_whole_number,
    call,
    exercise,
    passed,
    snapshot,
    unchanged,
)

__all__ = [
    "OPTIMIZERS",
    "check_count_trainable",
    "check_optimizer_state_bytes",
    "optimizer_state_bytes_reference",
]

OPTIMIZERS = ("sgd", "momentum", "adam", "adamw")
"""The optimiser names ``optimizer_state_bytes`` takes: plain SGD, SGD with momentum, Adam, AdamW."""


@contextlib.contextmanager
def _own_random_stream():
    """Let the cases draw their random weights, then give the caller its random stream back."""
    generator = backend.rng()
    saved = getattr(getattr(generator, "bit_generator", None), "state", None)
    try:
        yield
    finally:
        if saved is not None:
            generator.bit_generator.state = saved


def _tiny_gpt():
    return transformer.GPT(
        transformer.GPTConfig(vocab_size=20, block_size=8, n_embd=16, n_head=2, n_layer=2)
    )


def _models():
    """(description, model) pairs covering full, LoRA, several adapters and frozen models."""
    with _own_random_stream():
        full = _tiny_gpt()
        qv = _tiny_gpt()
        lora_lib.inject(qv, ["q", "v"], 2, alpha=4)
        every = _tiny_gpt()
        lora_lib.inject(every, ["q", "k", "v", "o", "fc", "proj"], 3, alpha=6)
        two = _tiny_gpt()
        lora_lib.inject(two, ["q", "v"], 4, alpha=8)
        lora_lib.add_adapter(two, "second", 2, alpha=2)
        frozen = _tiny_gpt()
        frozen.requires_grad_(False)
        biased = _tiny_gpt()
        lora_lib.inject(biased, ["fc"], 2, alpha=2)
        lora_lib.mark_only_lora_as_trainable(biased, bias="lora_only")
        linear = nn.Linear(7, 5, dtype="float64")
    return [
        ("a small GPT (2 blocks, width 16), every weight trainable", full),
        ("the same GPT with LoRA r = 2 on q and v (the rest frozen)", qv),
        ("LoRA r = 3 on every Linear in the blocks", every),
        ("two adapters on q and v (r = 4 and r = 2)", two),
        ("a GPT with every weight frozen", frozen),
        ("LoRA on fc with fc's bias trainable too", biased),
        ("a single Linear(7, 5) in float64", linear),
    ]


# ----------------------------------------------------------------------------- count_trainable


def _wrong_counts(model) -> list:
    params = model.parameters()
    trainable = sum(p.size for p in params if p.requires_grad)
    total = sum(p.size for p in params)
    nested = sum(p.size for _, m in model.named_modules() for p in m.parameters())
    nested_trainable = sum(
        p.size for _, m in model.named_modules() for p in m.parameters() if p.requires_grad
    )
    return [
        (
            "It counts parameter TENSORS, not their entries: add up p.size (the number of "
            "numbers in each).",
            (sum(1 for p in params if p.requires_grad), len(params)),
        ),
        ("The pair is the wrong way round: return (trainable, total).", (total, trainable)),
        (
            "Every entry was counted as trainable: a frozen weight has p.requires_grad False.",
            (total, total),
        ),
        (
            "Your total holds only the frozen entries: the total counts every entry, trainable "
            "ones included (as PEFT's `all params`).",
            (trainable, total - trainable),
        ),
        (
            "It counts a weight once for every module that contains it: model.parameters() "
            "already walks the whole tree, so do not add it up module by module.",
            (nested_trainable, nested),
        ),
        (
            "It counts bytes, not entries: the number of entries is p.size.",
            (
                sum(p.data.nbytes for p in params if p.requires_grad),
                sum(p.data.nbytes for p in params),
            ),
        ),
    ]


def _as_pair(got, name: str, case: str, what: str) -> tuple:
    items = as_items(got, 2, name, case, f"a pair {what}")
    return tuple(as_whole_number(v, name, case, f"two whole numbers {what}") for v in items)


@exercise("count_trainable", lora_lib.count_parameters)
def check_count_trainable(fn, *, quiet: bool = False) -> None:
    """Check ``fn(model)`` -> (trainable, total) numbers of parameter entries."""
    name = "count_trainable"
    n_cases = 0
    for case, model in _models():
        # the reference first, on a private copy: nothing the learner's function does to the
        # model can change the expected answer
        want = tuple(int(v) for v in lora_lib.count_parameters(copy.deepcopy(model)))
        wrong_counts = _wrong_counts(model)
        flags = [p.requires_grad for p in model.parameters()]
        before = snapshot(model)
        got = call(fn, name, case, model)
        if [p.requires_grad for p in model.parameters()] != flags:
            raise ExerciseError(
                f"{name} changed which parameters require a gradient on {case}: only count them"
            )
        unchanged(name, case, ("model",), before, [model])
        got = _as_pair(got, name, case, "(trainable, total)")
        if got != want:
            for explanation, wrong in wrong_counts:
                if tuple(int(v) for v in wrong) == got and tuple(wrong) != want:
                    raise ExerciseError(f"{name}: wrong count on {case}. {explanation}")
            raise ExerciseError(
                f"{name}: wrong count on {case}: yours {got}, expected {want} (trainable, total)"
            )
        n_cases += 1
    passed(name, n_cases, quiet)


# ----------------------------------------------------------------------------- optimizer state


def _build(optimizer: str, params):
    if optimizer == "sgd":
        return optim.SGD(params, lr=0.1)
    if optimizer == "momentum":
        return optim.SGD(params, lr=0.1, momentum=0.9)
    if optimizer == "adam":
        return optim.Adam(params, lr=0.1)
    return optim.AdamW(params, lr=0.1)


def optimizer_state_bytes_reference(params, optimizer: str) -> int:
    """Bytes of state ``optimizer`` keeps for ``params`` once each has had a gradient.

    Args:
        params: a list of Parameters (those with ``requires_grad`` False get no state).
        optimizer: one of :data:`OPTIMIZERS`.
    Returns:
        the library optimiser's ``state_bytes()`` after one step on stand-in copies.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {OPTIMIZERS}")
    xp = backend.xp
    copies = [
        nn.Parameter(xp.zeros(p.shape, dtype=p.dtype), requires_grad=p.requires_grad)
        for p in params
    ]
    for p in copies:
        if p.requires_grad:
            p.grad = xp.zeros(p.shape, dtype=p.dtype)
    opt = _build(optimizer, copies)
    opt.step()
    return int(opt.state_bytes())


def _param_lists():
    models = dict((case, model) for case, model in _models())
    qv = models["the same GPT with LoRA r = 2 on q and v (the rest frozen)"].parameters()
    full = models["a small GPT (2 blocks, width 16), every weight trainable"].parameters()
    linear = models["a single Linear(7, 5) in float64"].parameters()
    with _own_random_stream():
        mixed = qv[:6] + linear + [nn.Parameter(backend.xp.zeros((3, 4)), requires_grad=False)]
    return [
        ("a GPT with LoRA r = 2 on q, v (frozen weights in the list too)", qv, "adam"),
        ("the same list", qv, "sgd"),
        ("the same list", qv, "momentum"),
        ("a fully trainable GPT", full, "adamw"),
        ("a float64 Linear(7, 5)", linear, "momentum"),
        ("float32 and float64 parameters, some frozen", mixed, "momentum"),
        ("float32 and float64 parameters, some frozen", mixed, "adamw"),
    ]


def _wrong_state_bytes(params, optimizer: str) -> list:
    moments = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}[optimizer]
    trained = [p for p in params if p.requires_grad]
    entries = sum(p.size for p in trained)
    nbytes = sum(p.data.nbytes for p in trained)
    specific = []
    if optimizer in ("adam", "adamw"):
        specific += [
            ("It matches ONE moment per entry: Adam keeps two (m and v).", nbytes),
            (
                "It matches three arrays per entry: Adam keeps two moments (m and v); the "
                "weights themselves are not optimiser state.",
                3 * nbytes,
            ),
        ]
    if optimizer == "momentum":
        specific += [
            (
                "It matches two arrays per entry: SGD with momentum keeps one buffer; the "
                "weights themselves are not optimiser state.",
                2 * nbytes,
            )
        ]
    if optimizer == "sgd":
        specific += [("Plain SGD keeps no state at all: p -= lr * g needs nothing else.", nbytes)]
    wrong = specific + [
        (
            "It counts state for frozen parameters too: an optimiser keeps state only for "
            "parameters that require a gradient.",
            moments * sum(p.data.nbytes for p in params),
        ),
        ("It counts entries, not bytes: multiply by each parameter's itemsize.", moments * entries),
        (
            "It assumes 4 bytes per number: use each parameter's own dtype (p.data.itemsize, "
            "8 for float64).",
            moments * 4 * entries,
        ),
        (
            "It counts the parameters themselves as state: the state is only the moments "
            "(Adam 2 per entry, momentum 1, plain SGD none).",
            (moments + 1) * nbytes,
        ),
    ]
    return wrong


@exercise("optimizer_state_bytes", optimizer_state_bytes_reference)
def check_optimizer_state_bytes(fn, *, quiet: bool = False) -> None:
    """Check ``fn(params, optimizer)`` -> bytes of optimiser state for the trainable params."""
    name = "optimizer_state_bytes"
    n_cases = 0
    for case, params, optimizer in _param_lists():
        case = f"{case}, optimizer {optimizer!r}"
        want = optimizer_state_bytes_reference(params, optimizer)  # first (it reads copies)
        wrong_answers = _wrong_state_bytes(params, optimizer)
        given = list(params)
        before = snapshot(given)
        got = call(fn, name, case, given, optimizer)
        unchanged(name, case, ("params",), before, [given])
        number = as_whole_number(got, name, case, "the number of bytes")
        if number != want:
            for explanation, wrong in wrong_answers:
                if wrong == number and wrong != want:
                    raise ExerciseError(f"{name}: wrong answer on {case}. {explanation}")
            raise ExerciseError(f"{name}: wrong answer on {case}: yours {number}, expected {want}")
        n_cases += 1
    passed(name, n_cases, quiet)
