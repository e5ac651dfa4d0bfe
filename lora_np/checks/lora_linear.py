"""Checker for notebook 02's LoRA layer as a class: ``LoRALinear(base, r, alpha)``.

The learner's class is built on small Linear layers (with and without a bias, float64 and
float32) and then used the way the course uses it: the base frozen, A random and B zero as
parameters, ``scaling`` = alpha / r, the output equal to the base's at step 0, the forward and
the gradients of A and B equal to the library's ``lora.LoRALinear`` given the same A and B, no
gradient reaching W0, and ``merge()`` / ``unmerge()`` with a ``merged`` flag (a second merge
refused, unmerge giving W0 back to rounding). The reference is the library's class, which takes
the same arguments. Building the cases draws random weights; the caller's random stream is put
back afterwards.
"""

from __future__ import annotations

import contextlib
import numbers

from .. import backend, lora, nn
from ..autograd import Tensor
from ._harness import ExerciseError, as_array, call, compare, describe, exercise, np, passed

__all__ = ["check_lora_linear"]

NAME = "LoRALinear"

# (k in, d out, r, alpha, bias, dtype, description); alpha != r everywhere, so alpha / r != alpha
_CASES = [
    (6, 5, 2, 6.0, True, "float64", "Linear(6 -> 5) with a bias, r = 2, alpha = 6"),
    (8, 4, 3, 1.5, False, "float64", "Linear(8 -> 4) without a bias, r = 3, alpha = 1.5"),
    (5, 7, 4, 2.0, True, "float32", "a float32 Linear(5 -> 7), r = 4, alpha = 2"),
]


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


def _host(t) -> np.ndarray:
    return np.array(backend.to_numpy(t.data if isinstance(t, Tensor) else t), copy=True)


def _fail(text: str, case: str) -> ExerciseError:
    return ExerciseError(f"{NAME}: {text} (on {case})")


# ----------------------------------------------------------------------------- construction


def _parameter(layer, attr: str, shape: tuple, dtype, case: str):
    """``layer.A`` / ``layer.B`` as a trainable Parameter of ``shape`` that parameters() finds."""
    value = getattr(layer, attr, None)
    if not isinstance(value, nn.Parameter):
        raise _fail(
            f"self.{attr} is {describe(value)}; expected an ln.nn.Parameter of shape {shape} "
            f"(e.g. self.{attr} = ln.nn.Parameter(array)), so that it trains",
            case,
        )
    if tuple(value.shape) == tuple(reversed(shape)) and value.shape != shape:
        raise _fail(f"{attr} has shape {value.shape}; expected {shape}: it is transposed", case)
    if tuple(value.shape) != shape:
        raise _fail(f"{attr} has shape {value.shape}; expected {shape}", case)
    if not value.requires_grad:
        raise _fail(f"{attr} does not require a gradient: A and B are what trains", case)
    if not any(p is value for p in layer.parameters()):
        raise _fail(f"layer.parameters() does not list {attr}: set it as an attribute", case)
    if np.dtype(str(value.data.dtype)) != dtype:
        raise _fail(
            f"{attr} is {value.data.dtype} but the base weight is {dtype}: make it in the "
            "base's dtype (.astype(base.weight.data.dtype))",
            case,
        )
    return value


def _check_built(layer, base, W0, r: int, alpha: float, case: str):
    """The state right after ``LoRALinear(base, r, alpha)``; returns (A, B) Parameters."""
    if not isinstance(layer, nn.Module):
        raise _fail(
            f"LoRALinear(base, r, alpha) gave {describe(layer)}; expected an ln.nn.Module "
            "(write `class LoRALinear(ln.nn.Module):` and call super().__init__())",
            case,
        )
    if getattr(layer, "base", None) is not base:
        raise _fail("self.base is not the Linear you were given: keep it as self.base", case)
    if not np.array_equal(_host(base.weight), W0):
        raise _fail("building the layer changed W0: leave the base weight as it is", case)
    trainable = [n for n, p in base.named_parameters() if p.requires_grad]
    if trainable:
        raise _fail(
            f"the base is left trainable ({', '.join(trainable)} still requires a gradient): "
            "LoRA freezes W0 and its bias, e.g. base.requires_grad_(False)",
            case,
        )
    d, k = W0.shape
    A = _parameter(layer, "A", (r, k), W0.dtype, case)
    B = _parameter(layer, "B", (d, r), W0.dtype, case)
    a, b = _host(A), _host(B)
    if np.any(b != 0):
        raise _fail(
            "B starts random: B must start at zero, so that B A = 0 and the layer's output "
            "equals the base's at step 0 (with a random B the output moves before any training)",
            case,
        )
    # distinct values counted with a set: np.unique would import numpy.ma, which the grader
    # reads as a change to NumPy
    if not np.all(np.isfinite(a)) or len(set(a.ravel().tolist())) < a.size // 2 + 1:
        raise _fail(
            "A does not look random (zeros, repeated values, NaN or inf): with B = 0, a zero A "
            "gives B no gradient and nothing ever trains. Draw A at random",
            case,
        )
    scaling = getattr(layer, "scaling", None)
    if isinstance(scaling, bool) or not isinstance(scaling, numbers.Real):
        raise _fail(f"self.scaling is {describe(scaling)}; expected the number alpha / r", case)
    if not np.isclose(float(scaling), alpha / r, rtol=1e-12):
        wrong = {alpha: "alpha instead of alpha / r", r / alpha: "r / alpha, upside down"}
        wrong[alpha / np.sqrt(r)] = "alpha / sqrt(r) (rsLoRA's scale, not LoRA's)"
        said = next((w for v, w in wrong.items() if np.isclose(float(scaling), v)), None)
        raise _fail(
            f"scaling is {float(scaling):g}, expected alpha / r = {alpha / r:g}"
            + (f": it is {said}" if said else ""),
            case,
        )
    if getattr(layer, "merged", None) is not False:
        raise _fail(
            f"self.merged is {describe(getattr(layer, 'merged', None))}; expected False", case
        )
    return A, B


# ----------------------------------------------------------------------------- forward, grads


def _forward(layer, x: np.ndarray, case: str) -> Tensor:
    out = call(layer, NAME, case, Tensor(x.copy()))
    if not isinstance(out, Tensor):
        raise _fail(
            f"forward returned {describe(out)}; expected a Tensor built with the engine's ops "
            "(F.linear, +, *), so that backward() can run through it",
            case,
        )
    return out


def _reference(W0, bias, A, B, r, alpha, x, G):
    """The library layer's output for x, and the gradients of sum(out * G) w.r.t. A and B."""
    d, k = W0.shape
    base = nn.Linear(k, d, bias=bias is not None, dtype=str(W0.dtype))
    base.weight.data = backend.xp.asarray(W0.copy())
    if bias is not None:
        base.bias.data = backend.xp.asarray(bias.copy())
    layer = lora.LoRALinear(base, r, alpha, weights=(A, B))
    out = layer(Tensor(x))
    (out * Tensor(G)).sum().backward()
    return _host(out), _host(layer.A.grad), _host(layer.B.grad)


def _no_gradient_on_base(base, case: str, when: str) -> None:
    reached = [n for n, p in base.named_parameters() if p.grad is not None]
    if reached:
        raise _fail(
            f"a gradient reached the frozen base {when} ({', '.join(reached)}.grad is set): "
            "W0 must get none. A new Parameter is trainable by default: change base.weight.data "
            "in place instead of replacing base.weight",
            case,
        )


def _check_grads(layer, base, A, B, x, G, want_A, want_B, case: str) -> None:
    for p in (A, B, *base.parameters()):
        p.grad = None
    out = _forward(layer, x, case)
    if not out.requires_grad:
        raise _fail(
            "A and B got no gradient (the output does not require one): forward must use the "
            "Parameters themselves (e.g. F.linear(x, self.A)), not their .data or NumPy arrays",
            case,
        )
    try:
        (out * Tensor(G)).sum().backward()
    except Exception as err:
        raise _fail(
            f"backward through your forward failed: {type(err).__name__}: {err}", case
        ) from None
    _no_gradient_on_base(base, case, "in backward")
    for label, p, want in (("A", A, want_A), ("B", B, want_B)):
        if p.grad is None:
            raise _fail(
                f"{label} got no gradient: forward must use the Parameters themselves "
                f"(e.g. F.linear(x, self.{label})), not their .data or NumPy arrays",
                case,
            )
        compare(_host(p.grad), want, NAME, case, (), f"gradient of {label}", want.dtype)


def _method(layer, method: str, case: str):
    """``layer.<method>`` when it is a method, else a clear error."""
    bound = getattr(layer, method, None)
    if not callable(bound):
        raise _fail(f"the layer has no method {method}() (got {describe(bound)})", case)
    return bound


# ----------------------------------------------------------------------------- merge, unmerge


def _merge_mistakes(W0, delta, s, alpha):
    return [
        ("merge added B A without the scale: merge W0 + scaling · B A.", W0 + delta / s),
        ("merge added alpha · B A: the scale is alpha / r.", W0 + alpha * delta / s),
        ("merge left W0 unchanged: add scaling · B A into base.weight.data.", W0),
        ("base.weight holds only scaling · B A: add it to W0.", delta),
    ]


def _check_merge(layer, base, W0, A, B, s, alpha, x, outs, case: str) -> None:
    delta = s * (_host(B).astype(np.float64) @ _host(A).astype(np.float64))  # (d, k)
    base_out, want_out = outs  # the base's output and the layer's, for x
    weight = base.weight
    call(_method(layer, "merge", case), NAME, case + ", merge()")
    if getattr(layer, "merged", None) is not True:
        raise _fail("after merge(), self.merged should be True", case)
    W = _host(base.weight)
    compare(
        W,
        W0 + delta,
        NAME,
        case + ", after merge()",
        _merge_mistakes(W0, delta, s, alpha),
        "base.weight",
        W0.dtype,
    )
    if base.weight is not weight or weight.requires_grad:
        raise _fail(
            "merge() replaced base.weight by a new Parameter (trainable by default): change "
            "base.weight.data in place, so W0 stays the frozen Parameter it was",
            case,
        )
    got = as_array(_forward(layer, x, case + ", after merge()").data, NAME, case)
    low = want_out - base_out  # scaling · (x A^T) B^T
    compare(
        got,
        want_out,
        NAME,
        case + ", forward after merge()",
        [
            (
                "forward after merge() adds scaling · B A x again: once merged, the update is inside "
                "W0, so while merged the output is the base's alone.",
                want_out + low,
            )
        ],
        "output",
        W0.dtype,
    )
    try:
        call(_method(layer, "merge", case), NAME, case + ", a second merge()")
        refused = False
    except ExerciseError:
        refused = True
    if not refused or not np.array_equal(_host(base.weight), W):
        raise _fail(
            "a second merge() "
            + ("changed base.weight" if refused else "was accepted")
            + ": merging twice would add scaling · B A twice. Raise an error (e.g. RuntimeError) "
            "when self.merged is already True, before changing anything",
            case,
        )
    call(_method(layer, "unmerge", case), NAME, case + ", unmerge()")
    if getattr(layer, "merged", None) is not False:
        raise _fail("after unmerge(), self.merged should be False", case)
    back = _host(base.weight).astype(np.float64)
    eps = float(np.finfo(W0.dtype).eps)
    if np.any(np.abs(back - W0) > 4 * eps * (np.abs(W0) + np.abs(delta))):
        said = ""
        if np.allclose(back, W0 + delta, atol=1e3 * eps):
            said = ": base.weight is still W0 + scaling · B A (unmerge must subtract it)"
        elif np.allclose(back, W0 + delta - delta / s, atol=1e3 * eps):
            said = ": it subtracted B A without the scale"
        raise _fail(f"unmerge() did not restore W0{said}", case)


# ----------------------------------------------------------------------------- the checker


def _cases():
    rng = np.random.default_rng(20260520)
    for k, d, r, alpha, bias, dtype, description in _CASES:
        x = rng.standard_normal((4, k)).astype(dtype)
        x3 = rng.standard_normal((2, 3, k)).astype(dtype)  # a batch of sequences
        A = rng.standard_normal((r, k)).astype(dtype)
        B = rng.standard_normal((d, r)).astype(dtype)
        G = rng.standard_normal((4, d)).astype(dtype)
        yield (k, d, r, alpha, bias, dtype, x, x3, A, B, G), description


@exercise(NAME, lora.LoRALinear)
def check_lora_linear(cls, *, quiet: bool = False) -> None:
    """Check a class ``LoRALinear(base, r, alpha)``: an ``ln.nn.Module`` with the base frozen,
    A (r, k) random and B (d, r) zero as Parameters, ``scaling`` = alpha / r, ``forward``,
    ``merge()`` / ``unmerge()`` and a ``merged`` flag."""
    n_cases = 0
    with _own_random_stream():
        for (k, d, r, alpha, bias, dtype, x, x3, A0, B0, G), case in _cases():
            base = nn.Linear(k, d, bias=bias, dtype=dtype)
            W0 = _host(base.weight)
            b = _host(base.bias) if bias else None
            base_out = x.astype(np.float64) @ W0.T + (0 if b is None else b)  # (n, d)
            want_out, want_A, want_B = _reference(W0, b, A0, B0, r, alpha, x, G)
            want_3 = _reference(W0, b, A0, B0, r, alpha, x3, np.zeros((2, 3, d), dtype))[0]
            layer = call(cls, NAME, case, base, r, alpha)
            A, B = _check_built(layer, base, W0, r, alpha, case)
            got = as_array(_forward(layer, x, case).data, NAME, case)
            compare(got, base_out, NAME, case + ", at step 0", (), "output", W0.dtype)
            A.data = backend.xp.asarray(A0.copy())  # as if trained: B no longer zero
            B.data = backend.xp.asarray(B0.copy())
            s = alpha / r
            unscaled = base_out + (want_out - base_out) / s
            mistakes = [
                ("the low-rank path is not scaled: multiply it by self.scaling.", unscaled),
                (
                    "the low-rank path is scaled by alpha, not alpha / r.",
                    unscaled + (alpha - 1) * (want_out - base_out) / s,
                ),
                ("the whole output is scaled: only the low-rank path is.", s * unscaled),
            ]
            got = as_array(_forward(layer, x, case).data, NAME, case)
            compare(got, want_out, NAME, case, mistakes, "output", W0.dtype)
            got = as_array(_forward(layer, x3, case + ", input (2, 3, k)").data, NAME, case)
            compare(got, want_3, NAME, case + ", input (2, 3, k)", (), "output", W0.dtype)
            _check_grads(layer, base, A, B, x, G, want_A, want_B, case)
            _check_merge(layer, base, W0, A, B, s, alpha, x, (base_out, want_out), case)
            _check_grads(layer, base, A, B, x, G, want_A, want_B, case + ", after unmerge()")
            n_cases += 1
    passed(NAME, n_cases, quiet)
