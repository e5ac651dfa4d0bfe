"""Checkers for notebook 10 (LoRA among its peers): an adapter layer's forward pass, a DoRA
layer's forward pass (with the gradients it must give), and LoRA+'s learning rates.

References: the library's :class:`lora_np.peers.BottleneckAdapter`, :func:`lora_np.lora.dora.
dora_linear` (norm detached, as PEFT) and :func:`lora_np.peers.loraplus_groups` (PEFT's groups).
Shapes keep d ≠ k and r ≠ C so that a missing transpose fails loudly.
"""

from __future__ import annotations

from .. import backend, peers, transformer
from ..autograd import Tensor, no_grad
from ..lora import inject, mark_only_lora_as_trainable
from ..lora.dora import dora_linear
from ._harness import (
    ExerciseError,
    as_array,
    call,
    compare,
    describe,
    exercise,
    is_shape_error,
    np,
    passed,
    precision_of,
    snapshot,
    unchanged,
    with_hint,
)

__all__ = [
    "adapter_forward_reference",
    "check_adapter_forward",
    "check_dora_forward",
    "check_loraplus_rates",
    "dora_forward_reference",
    "loraplus_rates_reference",
]


# ----------------------------------------------------------------------------- adapter forward


def adapter_forward_reference(h, W_down, b_down, W_up, b_up):
    """h + relu(h W_down^T + b_down) W_up^T + b_up through the library's BottleneckAdapter.

    Args:
        h: (..., C); W_down: (r, C); b_down: (r,); W_up: (C, r); b_up: (C,).
    Returns:
        (..., C), a NumPy array of h's dtype.
    """
    r, C = np.shape(W_down)
    generator = backend.rng()
    saved = getattr(getattr(generator, "bit_generator", None), "state", None)
    adapter = peers.BottleneckAdapter(C, r, "relu", dtype=str(np.asarray(h).dtype))
    if saved is not None:  # building the layer must not move the caller's random stream
        generator.bit_generator.state = saved
    dtype = np.asarray(h).dtype
    for p, value in ((adapter.down.weight, W_down), (adapter.down.bias, b_down),
                     (adapter.up.weight, W_up), (adapter.up.bias, b_up)):  # fmt: skip
        p.data = backend.xp.asarray(np.asarray(value, dtype=dtype))
    with no_grad():
        return adapter(Tensor(backend.xp.asarray(np.asarray(h)))).numpy()


# (shape of h, r, zero up-projection, dtype, description)
_ADAPTER_CASES = [
    ((5, 6), 2, False, "float64", "h (5, 6), bottleneck r = 2"),
    ((2, 3, 7), 3, False, "float64", "h (2, 3, 7) (batch, T, C), r = 3"),
    ((4, 6), 2, True, "float64", "the start: W_up = 0 and b_up = 0, h (4, 6), r = 2"),
    ((3, 8), 1, False, "float32", "float32, h (3, 8), r = 1"),
]


def _adapter_inputs():
    rng = np.random.default_rng(20261010)
    for shape, r, zero, dtype, description in _ADAPTER_CASES:
        C = shape[-1]
        h = rng.standard_normal(shape)
        W_down, b_down = rng.standard_normal((r, C)), rng.standard_normal(r)
        W_up, b_up = rng.standard_normal((C, r)), rng.standard_normal(C)
        if zero:
            W_up, b_up = np.zeros((C, r)), np.zeros(C)
        yield tuple(a.astype(dtype) for a in (h, W_down, b_down, W_up, b_up)), description


def _wrong_adapters(h, Wd, bd, Wu, bu) -> list:
    relu = lambda z: np.maximum(z, 0.0)  # noqa: E731
    inner = h @ Wd.T + bd  # (..., r)
    return [
        ("The residual is missing: an adapter returns h + (its bottleneck's output), so that "
         "with W_up = 0 it is the identity and the adapted model starts as the base.",
         relu(inner) @ Wu.T + bu),
        ("The nonlinearity is missing: relu between the two projections (without it the "
         "adapter is a low-rank linear map that could be merged, as LoRA is).",
         h + inner @ Wu.T + bu),
        ("The relu sits after the up-projection: apply it to the bottleneck (h W_down^T + "
         "b_down), before W_up.", h + relu(inner @ Wu.T + bu)),
        ("The relu covers the residual too: relu only the bottleneck; h is added as it is.",
         relu(h + relu(inner) @ Wu.T + bu)),
        ("b_up is missing: the up-projection has a bias too.", h + relu(inner) @ Wu.T),
        ("b_down is missing: the down-projection has a bias (add it before the relu).",
         h + relu(h @ Wd.T) @ Wu.T + bu),
        ("b_down is added after the relu: the bias belongs inside, relu(h W_down^T + b_down).",
         h + (relu(h @ Wd.T) + bd) @ Wu.T + bu),
    ]  # fmt: skip


@exercise("adapter_forward", adapter_forward_reference)
def check_adapter_forward(fn, *, quiet: bool = False) -> None:
    """Check ``fn(h, W_down, b_down, W_up, b_up)`` -> h + relu(h W_down^T + b_down) W_up^T +
    b_up, an array shaped like h (..., C)."""
    name = "adapter_forward"
    labels = ("h", "W_down", "b_down", "W_up", "b_up")
    n_cases = 0
    for args, case in _adapter_inputs():
        args64 = [a.astype(np.float64) for a in args]
        want = adapter_forward_reference(*args64)  # first, from private copies
        mistakes = _wrong_adapters(*args64)
        given = [a.copy() for a in args]
        before = snapshot(*given)
        try:
            got = call(fn, name, case, *given)
        except ExerciseError as err:
            hint = (
                ". W_down is (r, C) and W_up is (C, r), as a Linear's (out, in) weights: "
                "h @ W_down.T is (..., r)" if is_shape_error(str(err)) else ""
            )  # fmt: skip
            raise with_hint(err, hint) from None
        unchanged(name, case, labels, before, given)
        got = as_array(got, name, case, want.shape)
        compare(got, want, name, case, mistakes, "output", precision_of(*args))
        n_cases += 1
    passed(name, n_cases, quiet)


# ----------------------------------------------------------------------------- DoRA forward


def dora_forward_reference(x, W0, b, A, B, m, scaling):
    """m ⊙ (x W0^T + s x A^T B^T) / ‖W0 + s B A‖ + b, the norm per output row and treated as
    a constant in backward (PEFT's choice): the library's ``dora_linear``.

    Args (Tensors): x: (n, k); W0: (d, k); b: (d,) or None; A: (r, k); B: (d, r); m: (d,);
        scaling: a number. Returns: a Tensor (n, d) in the graph of A, B and m.
    """
    return dora_linear(x, W0, b, A, B, m, float(scaling), detach_norm=True)


# (n, k, d, r, scaling, bias, dtype, description)
_DORA_CASES = [  # the square case first: there a norm over the wrong axis runs and is named
    (3, 6, 6, 2, 1.5, True, "float64", "a square W0 (6, 6), r = 2, scaling 1.5, a bias"),
    (4, 6, 5, 2, 2.0, True, "float64", "x (4, 6), W0 (5, 6), r = 2, scaling 2, a bias"),
    (3, 7, 4, 3, 0.5, False, "float64", "x (3, 7), W0 (4, 7), r = 3, scaling 0.5, b = None"),
    (2, 5, 8, 1, 4.0, True, "float32", "float32, x (2, 5), W0 (8, 5), r = 1, scaling 4"),
]


def _dora_inputs():
    rng = np.random.default_rng(20261011)
    for n, k, d, r, s, bias, dtype, description in _DORA_CASES:
        x, W0 = rng.standard_normal((n, k)), rng.standard_normal((d, k))
        A, B = rng.standard_normal((r, k)), rng.standard_normal((d, r))
        m = np.abs(rng.standard_normal(d)) + 0.5
        b = rng.standard_normal(d) if bias else None
        grad = rng.standard_normal((n, d))
        arrays = [None if a is None else a.astype(dtype) for a in (x, W0, b, A, B, m)]
        yield arrays, s, grad.astype(dtype), description


def _as_tensors(arrays):
    x, W0, b, A, B, m = arrays
    train = (False, False, False, True, True, True)
    return [None if a is None else Tensor(backend.xp.asarray(a.copy()), requires_grad=t)
            for a, t in zip((x, W0, b, A, B, m), train, strict=True)]  # fmt: skip


def _grads(arrays, s, grad, detach_norm=True):
    tensors = _as_tensors(arrays)
    h = dora_linear(*tensors[:6], float(s), detach_norm=detach_norm)
    h.backward(Tensor(backend.xp.asarray(grad)))
    return h.numpy(), [backend.to_numpy(t.grad) for t in tensors[3:]]


def _wrong_doras(x, W0, b, A, B, m, s) -> list:
    bias = 0.0 if b is None else b
    V = W0 + s * B @ A  # (d, k)
    direction = x @ V.T  # (n, d)
    by_rows = np.sqrt((V * V).sum(axis=1))
    return [
        ("The norm runs over the wrong axis: one norm per OUTPUT row of the (d, k) weight, "
         "summed over the input axis (axis=1), so each output i keeps its own magnitude m[i].",
         m * direction / np.sqrt((V * V).sum(axis=0)) + bias if V.shape[0] == V.shape[1]
         else None),
        ("It matches no normalisation at all: divide the direction by its norm, "
         "m ⊙ (W0 + s B A) / ‖W0 + s B A‖ row by row.", m * direction + bias),
        ("It matches the norm of W0 alone: normalise the adapted weight W0 + s B A.",
         m * direction / np.sqrt((W0 * W0).sum(axis=1)) + bias),
        ("The scaling is missing inside the norm: normalise W0 + s B A, with s.",
         m * direction / np.sqrt(((W0 + B @ A) ** 2).sum(axis=1)) + bias),
        ("The scaling is missing: the direction is x (W0 + s B A)^T, with s.",
         m * (x @ (W0 + B @ A).T) / np.sqrt(((W0 + B @ A) ** 2).sum(axis=1)) + bias),
        ("It matches one norm for the whole matrix (Frobenius): DoRA normalises each output "
         "row separately.", m * direction / np.sqrt((V * V).sum()) + bias),
        ("The bias is scaled with the direction: add b after m ⊙ (...) / ‖...‖; it is not "
         "part of the weight.", m * (direction + bias) / by_rows),
        ("The magnitude m is missing: the output is m ⊙ direction / norm.",
         direction / by_rows + bias),
    ]  # fmt: skip


@exercise("dora_forward", dora_forward_reference)
def check_dora_forward(fn, *, quiet: bool = False) -> None:
    """Check ``fn(x, W0, b, A, B, m, scaling)`` (Tensors; A, B, m train) -> a Tensor (n, d):
    m ⊙ (x W0^T + s x A^T B^T) / ‖W0 + s B A‖ + b, norm per output row, treated as a constant
    in backward; its gradients for A, B and m are checked too."""
    name = "dora_forward"
    n_cases = 0
    for arrays, s, grad, case in _dora_inputs():
        a64 = [None if a is None else a.astype(np.float64) for a in arrays]
        want, want_grads = _grads(a64, s, grad.astype(np.float64))  # first, private copies
        _, attached = _grads(a64, s, grad.astype(np.float64), detach_norm=False)
        mistakes = [(t, w) for t, w in _wrong_doras(*a64, s) if w is not None]
        tensors = _as_tensors(arrays)
        before = snapshot(*(t.numpy() if t is not None else None for t in tensors))
        try:
            got = call(fn, name, case, *tensors, s)
        except ExerciseError as err:
            text = str(err)
            hint = (
                ". Shapes: W0 (d, k), B (d, r), A (r, k): B @ A is (d, k) like W0; the norm of "
                "each OUTPUT row sums over the input axis, ((V * V).sum(axis=1)).sqrt(), shape (d,)" if is_shape_error(text)
                else ". b can be None (no bias): add it only when it is given"
                if "NoneType" in text else ""
            )  # fmt: skip
            raise with_hint(err, hint) from None
        after = [t.numpy() if t is not None else None for t in tensors]
        unchanged(name, case, ("x", "W0", "b", "A", "B", "m"), before, after)
        if not isinstance(got, Tensor):
            raise ExerciseError(
                f"{name} returned {type(got).__name__} on {case}; expected a Tensor built from "
                "the Tensors given (with their ops), so that gradients reach m, A and B"
            )
        compare(as_array(got, name, case, want.shape), want, name, case, mistakes, "output",
                precision_of(*(a for a in arrays if a is not None)))  # fmt: skip
        got.backward(Tensor(backend.xp.asarray(grad)))
        for label, t, w, other in zip("ABm", tensors[3:], want_grads, attached, strict=True):
            if t.grad is None:
                raise ExerciseError(
                    f"{name}: no gradient reached {label} on {case}: build the output from the "
                    f"Tensor {label} itself (not {label}.data or a NumPy copy)"
                )
            wrong = [("The norm carries gradient: DoRA (as PEFT implements it) treats "
                      "‖W0 + s B A‖ as a constant in backward. Compute it from the arrays "
                      "(.data) and wrap it as a Tensor, so no gradient flows through it.",
                      other)]  # fmt: skip
            g = as_array(t.grad, name, case + f" (grad of {label})", w.shape)
            compare(g, w, name, case, wrong, f"gradient of {label}", precision_of(*arrays[:2]))
        n_cases += 1
    passed(name, n_cases, quiet)


# ----------------------------------------------------------------------------- LoRA+ rates


def loraplus_rates_reference(named_parameters, lr, ratio):
    """[(name, learning rate)] for every trainable parameter, in the order given (pairs, as
    ``named_parameters`` lists them), as PEFT's LoRA+ groups them: B
    matrices (lora_np names them ``...adapters.<name>.B``) and 1-D parameters (biases,
    LayerNorm weights, DoRA's m) at ``lr * ratio``, everything else (A, other matrices) at
    ``lr``. The checker holds this rule to :func:`lora_np.peers.loraplus_groups` on its models.

    Args:
        named_parameters: [(name, Parameter)] as ``model.named_parameters()`` gives them.
    """
    return [
        (n, lr * ratio if n.endswith(".B") or p.ndim == 1 else lr)
        for n, p in named_parameters
        if p.requires_grad
    ]


def _library_rates(model, lr, ratio) -> dict:
    """{name: rate} from the library's LoRA+ groups of ``model``."""
    ids = {id(p): n for n, p in model.named_parameters()}
    return {
        ids[id(p)]: lr if group == "groupA" else lr * ratio
        for group, found in peers.loraplus_groups(model).items()
        for _, p in found
    }


# (what to build, description)
_RATE_CASES = [
    ("lora", 2e-4, 16.0, "LoRA on q, v (A and B train)"),
    ("dora", 1e-3, 8.0, "DoRA on q, v (A, B and the 1-D magnitude m train)"),
    ("lora+bias", 5e-4, 4.0, "LoRA on q, v with every bias trainable (bias='all')"),
    ("lora+ln", 1e-4, 16.0, "LoRA on q, v, fc with the LayerNorms trainable too"),
]


def _rate_model(kind: str):
    """A fresh model each time: the learner's function may change the one it gets."""
    generator = backend.rng()
    saved = getattr(getattr(generator, "bit_generator", None), "state", None)
    config = transformer.GPTConfig(vocab_size=11, block_size=8, n_embd=8, n_head=2, n_layer=2)
    model = transformer.GPT(config)
    targets = ["q", "v", "fc"] if kind == "lora+ln" else ["q", "v"]
    inject(model, targets, 2, alpha=4.0, use_dora=kind == "dora")
    mark_only_lora_as_trainable(model, bias="all" if kind == "lora+bias" else "none")
    if kind == "lora+ln":
        for block in model.blocks:
            block.ln_1.requires_grad_(True)
    if saved is not None:
        generator.bit_generator.state = saved
    return model


def _wrong_rates(named, lr, ratio) -> list:
    train = [(n, p) for n, p in named if p.requires_grad]

    def rates(rule):
        return np.array([rule(n, p) for n, p in train], dtype=np.float64)

    is_B = lambda n: n.endswith(".B")  # noqa: E731
    return [
        ("A and B are swapped: B (the matrix that starts at zero) learns `ratio` times faster "
         "than A.", rates(lambda n, p: lr * ratio if n.endswith(".A") or p.ndim == 1 else lr)),
        ("Every parameter got lr * ratio: only B (and the 1-D parameters) get the larger rate.",
         rates(lambda n, p: lr * ratio)),
        ("The 1-D parameters (biases, LayerNorm weights, DoRA's magnitude m) are at lr: PEFT's "
         "LoRA+ puts every 1-D parameter in B's group, at lr * ratio.",
         rates(lambda n, p: lr * ratio if is_B(n) else lr)),
        ("B's rate is lr / ratio: B's rate is lr TIMES ratio.",
         rates(lambda n, p: lr / ratio if is_B(n) or p.ndim == 1 else lr)),
    ]  # fmt: skip


def _items(value):
    """A tuple's or a list's items, read without calling the value's own methods; else None."""
    kind = tuple if isinstance(value, tuple) else list if isinstance(value, list) else None
    return None if kind is None else tuple(kind.__iter__(value))


def _pairs(got, name: str, case: str) -> list:
    """The learner's [(name, rate)] as a list of (str, float), or a clear ExerciseError."""
    if got is None:
        raise ExerciseError(f"{name} returned None on {case}: did you forget `return`?")
    expected = "expected a list of (name, rate) pairs, e.g. [(name, lr), ...]"
    items = _items(got)
    if items is None:
        raise ExerciseError(f"{name} returned {describe(got)} on {case}; {expected}")
    pairs = []
    for item in items:
        pair = _items(item)
        ok = pair is not None and len(pair) == 2 and isinstance(pair[0], str)
        if not ok or not isinstance(pair[1], int | float | np.floating | np.integer):
            raise ExerciseError(
                f"{name} returned {describe(got)} on {case}, with an item {describe(item)}; "
                f"{expected} (a str and a number each)"
            )
        pairs.append((pair[0], float(pair[1])))
    return pairs


@exercise("loraplus_rates", loraplus_rates_reference)
def check_loraplus_rates(fn, *, quiet: bool = False) -> None:
    """Check ``fn(named_parameters, lr, ratio)`` -> [(name, rate)] for the trainable parameters
    only, in the order given: B and every 1-D parameter at lr * ratio, the rest at lr (PEFT's
    LoRA+ groups)."""
    name = "loraplus_rates"
    n_cases = 0
    for kind, lr, ratio, case in _RATE_CASES:
        model = _rate_model(kind)
        named = list(model.named_parameters())
        want_map = _library_rates(model, lr, ratio)  # first
        want_map = {n: want_map[n] for n, p in named if p.requires_grad}  # in model order
        given = list(named)
        got = call(fn, name, case, given, lr, ratio)
        if [n for n, _ in given] != [n for n, _ in named]:
            raise ExerciseError(
                f"{name} changed the list it was given on {case}: leave it as it is"
            )
        pairs = _pairs(got, name, case)
        got = dict(pairs)
        if len(got) != len(pairs):
            raise ExerciseError(f"{name} gave a parameter two rates on {case}: one pair each")
        frozen = sorted(set(got) - set(want_map))
        if frozen:
            raise ExerciseError(
                f"{name} gave a rate to {frozen[0]!r} on {case}, which is frozen "
                "(requires_grad False): rate only the parameters that train"
            )
        missing = sorted(set(want_map) - set(got))
        if missing:
            raise ExerciseError(f"{name} gave no rate to {missing[0]!r} on {case}, which trains")
        names = list(want_map)
        mine = np.array([float(got[n]) for n in names], dtype=np.float64)
        want = np.array([want_map[n] for n in names], dtype=np.float64)
        compare(mine, want, name, case, _wrong_rates(named, lr, ratio), "rates")
        n_cases += 1
    passed(name, n_cases, quiet)
