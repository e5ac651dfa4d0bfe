"""Checkers for notebook 04 (scaling): ``lora_scaling`` and ``adam_first_update``.

``check_lora_scaling(fn)`` compares with the scale the library's adapters use
(``lora.LoRAAdapter.trained_scaling``: alpha / r, or alpha / sqrt(r) with rsLoRA).
``check_adam_first_update(fn)`` compares with one real step of the library's ``optim.Adam``
on B = 0, and accepts the exact sign form as well as Adam's g / (|g| + eps).
"""

from __future__ import annotations

import math
from typing import Any

from .. import backend, optim
from .. import lora as lora_lib
from ..autograd import Tensor
from ..nn import Parameter
from ._harness import (
    ExerciseError,
    as_array,
    call,
    compare,
    exercise,
    np,
    passed,
    snapshot,
    unchanged,
)

__all__ = [
    "check_adam_first_update",
    "check_lora_scaling",
    "reference_adam_first_update",
    "reference_lora_scaling",
]


# ============================================================================ lora_scaling


def reference_lora_scaling(alpha: float, r: int, rslora: bool = False) -> float:
    """The scale s of the library's adapters: alpha / r, or alpha / sqrt(r) when ``rslora``.

    Read off a ``LoRAAdapter`` built on empty factors (so no random number is drawn).
    """
    adapter = lora_lib.LoRAAdapter(
        np.zeros((r, 1)), np.zeros((1, r)), float(alpha), bool(rslora), 0.0, "kaiming"
    )
    return float(adapter.trained_scaling)


_SCALING_CASES = [
    (8, 8, False, "PEFT's default r = 8, alpha = 8"),
    (20, 4, False, "alpha = 20, r = 4"),
    (8, 3, False, "alpha = 8, r = 3 (not a whole number)"),
    (32, 4, False, "GPT-2 in the paper: r = 4, alpha = 32"),
    (8.0, 64, False, "a float alpha, r = 64"),
    (1, 2, False, "alpha = 1, r = 2"),
    (8, 64, True, "rsLoRA, alpha = 8, r = 64"),
    (16, 4, True, "rsLoRA, alpha = 16, r = 4"),
    (8, 3, True, "rsLoRA, alpha = 8, r = 3"),
    (math.sqrt(8), 2, True, "rsLoRA, alpha = sqrt(8), r = 2"),
    (9, 9, True, "rsLoRA, alpha = r = 9"),
]


def _scaling_mistakes(alpha: float, r: int, rslora: bool) -> list:
    wrong = [
        ("you returned alpha * r: the scale divides by the rank", alpha * r),
        ("you returned r / alpha: it is alpha over the rank", r / alpha),
        (
            "you returned sqrt(alpha) / r: the square root belongs on r, and only with rsLoRA",
            math.sqrt(alpha) / (math.sqrt(r) if rslora else r),
        ),
        (
            "integer division: use alpha / r, not alpha // r",
            float(alpha // r) if not rslora else None,
        ),
        (
            "the result is rounded to a whole number: return the float alpha / r",
            float(round(alpha / r)) if not rslora else None,
        ),
    ]
    if rslora:
        wrong.insert(
            0, ("rsLoRA was ignored: with rslora=True the scale is alpha / sqrt(r)", alpha / r)
        )
        wrong.append(("alpha / r**2? With rsLoRA it is alpha / sqrt(r)", alpha / r**2))
    else:
        wrong.insert(
            0,
            (
                "you divided by sqrt(r) without rsLoRA: with rslora=False the scale is alpha / r",
                alpha / math.sqrt(r),
            ),
        )
        wrong.append(("you returned alpha / r**2: divide by the rank once", alpha / r**2))
    return wrong


@exercise("lora_scaling", reference_lora_scaling)
def check_lora_scaling(fn: Any, *, quiet: bool = False) -> None:
    """Check ``fn(alpha, r, rslora=False)`` -> s: alpha / r, or alpha / sqrt(r) with rsLoRA.

    Cases: integer and float alpha, r that does not divide alpha, rsLoRA on and off (passed by
    keyword), and the default (rslora left out).
    """
    name = "lora_scaling"
    n_checks = 0
    # alpha = 12, r = 8 first: there every classic mistake gives its own number (at alpha = 16,
    # r = 4, alpha / r**2 and sqrt(alpha) / r are both 1 and could not be told apart)
    for alpha, r in ((12, 8), (8, 3)):
        case = f"alpha = {alpha}, r = {r} with rslora left out (its default is False)"
        want = np.float64(reference_lora_scaling(alpha, r))
        got = as_array(call(fn, name, case, alpha, r), name, case, ())
        compare(got, want, name, case, _scaling_mistakes(alpha, r, False), "scale")
        n_checks += 1
    for alpha, r, rslora, what in _SCALING_CASES:
        case = f"alpha = {alpha:g}, r = {r}, rslora = {rslora} ({what})"
        want = np.float64(reference_lora_scaling(alpha, r, rslora))
        got = as_array(call(fn, name, case, alpha, r, rslora=rslora), name, case, ())
        compare(got, want, name, case, _scaling_mistakes(alpha, r, rslora), "scale")
        n_checks += 1
    passed(name, n_checks, quiet)


# ============================================================================ adam_first_update


def reference_adam_first_update(G, A, scaling: float, lr: float) -> Any:
    """Delta W after the first ``optim.Adam`` step of B from B = 0, (d, k), float64.

    G (d, k) is dL/d(Delta W) at Delta W = 0 and A (r, k) the (frozen for this step) factor;
    the loss is taken linear in Delta W, L = <G, s B A>, so dL/dB = s G A^T exactly.
    """
    G = np.asarray(G, dtype=np.float64)
    A = np.asarray(A, dtype=np.float64)
    d, r = G.shape[0], A.shape[0]
    xp = backend.xp
    B = Parameter(xp.zeros((d, r)), dtype="float64")
    A_t = Tensor(xp.asarray(A), dtype="float64")
    loss = (Tensor(xp.asarray(G), dtype="float64") * ((B @ A_t) * scaling)).sum()
    opt = optim.Adam([B], lr=lr)
    loss.backward()
    opt.step()
    return scaling * backend.to_numpy(B.data) @ A


_ADAM_CASES = [
    (128, 128, 8, 1.0, 1e-3, "d = k = 128, r = 8, s = 1 (section 1's layer)"),
    (12, 20, 3, 2.0, 1e-2, "a (12, 20) layer, r = 3, s = 2"),
    (20, 12, 1, 0.125, 3e-2, "rank 1, s = 0.125"),
    (16, 16, 5, 4.0, 1e-3, "a (16, 16) layer, r = 5, s = 4"),
]


def _close_enough(got, want) -> bool:
    """``got`` equals ``want`` to the precision of got's dtype (float32 judged as float32)."""
    rtol, atol = (2e-4, 2e-5) if got.dtype == np.float32 else (1e-7, 1e-9)
    scale = max(float(np.abs(want).max()), 1e-300)
    return got.shape == want.shape and bool(
        np.allclose(got.astype(np.float64), want, rtol=rtol, atol=atol * scale)
    )


@exercise("adam_first_update", reference_adam_first_update)
def check_adam_first_update(fn: Any, *, quiet: bool = False) -> None:
    """Check ``fn(G, A, scaling, lr)`` -> Delta W_1 (d, k) = -s * lr * sign(s G A^T) A.

    G (d, k) is dL/d(Delta W); A (r, k). The sign form (eps neglected) and Adam's exact
    g / (|g| + eps) both pass; they differ where an entry of the gradient is near eps.
    """
    name = "adam_first_update"
    rng = np.random.default_rng(5)
    n_checks = 0
    for d, k, r, s, lr, what in _ADAM_CASES:
        case = f"G ({d}, {k}), A ({r}, {k}), scaling = {s:g}, lr = {lr:g} ({what})"
        G = rng.standard_normal((d, k)) / d
        A = rng.uniform(-1, 1, (r, k)) / math.sqrt(k)
        want = reference_adam_first_update(G.copy(), A.copy(), s, lr)  # first, on copies
        given = [G.copy(), A.copy(), s, lr]
        before = snapshot(*given)
        got = call(fn, name, case, *given)
        unchanged(name, case, ("G", "A", "scaling", "lr"), before, given)
        got = as_array(got, name, case)
        if got.shape == (d, r):
            raise ExerciseError(
                f"{name}: you returned shape {got.shape} on {case}, the step of B; return the "
                f"step of Delta W = s * (step of B) @ A, shape {(d, k)}"
            )
        g = s * G @ A.T  # dL/dB, (d, r)
        sign_form = -s * lr * np.sign(g) @ A  # eps neglected: what section 1 derives
        mistakes = [
            (
                "this is a plain gradient step (SGD): Adam's first step moves every entry of B "
                "by lr * sign(gradient), whatever the gradient's size",
                -s * lr * g @ A,
            ),
            ("the step goes uphill: Adam moves B against its gradient (a minus sign)", -sign_form),
            ("the scale s is missing: Delta W = s * (step of B) @ A", sign_form / s),
            (
                "s is applied twice: the sign of s G A^T does not depend on s, and Delta W "
                "multiplies by s once",
                sign_form * s,
            ),
        ]
        for accepted in (want, sign_form):
            if _close_enough(got, accepted):
                break
        else:
            compare(got, sign_form, name, case, mistakes, "Delta W")
        n_checks += 1
    passed(name, n_checks, quiet)
