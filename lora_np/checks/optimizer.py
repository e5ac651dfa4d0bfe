"""Checker for notebook 04's optimiser exercise: one AdamW step on arrays.

``check_adamw_step(fn)`` calls ``fn(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay)``
(``t`` the number of this step, 1 on the first) and expects ``(new_param, new_m, new_v)``: the
parameter after the step and the two moving averages to keep for the next one, new arrays, the
inputs left as they were. The reference is one step of the library's :class:`lora_np.optim.AdamW`
started from the given state, so the learner's step and the optimiser the rest of the course
trains with are the same rule (PyTorch's: decoupled decay ``p *= 1 - lr * weight_decay`` first,
then ``p -= lr * m_hat / (sqrt(v_hat) + eps)``).

Each case is built so that the classic wrong versions give their own numbers there: a first step
from zero moments (where counting t from 0 divides by zero and g in place of g² takes the square
root of negative numbers), later steps with a history, a large weight decay and learning rate
(decoupled decay against L2 in the gradient), betas and eps other than the defaults, float32.
"""

from __future__ import annotations

from .. import backend, optim
from ..nn import Parameter
from ._harness import (
    ExerciseError,
    as_array,
    as_items,
    call,
    compare,
    exercise,
    np,
    passed,
    precision_of,
    snapshot,
    unchanged,
)

__all__ = ["adamw_step_reference", "check_adamw_step"]

LABELS = ("param", "grad", "m", "v", "t", "lr", "beta1", "beta2", "eps", "weight_decay")
OUTPUTS = ("new parameter", "new m", "new v")


def adamw_step_reference(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay) -> tuple:
    """One step of ``optim.AdamW`` from the state (m, v) after t - 1 steps.

    Args:
        param, grad, m, v: arrays of one shape (any); t: this step's number, an int >= 1;
        lr, beta1, beta2, eps, weight_decay: AdamW's settings.
    Returns:
        (new_param, new_m, new_v): new NumPy arrays of param's shape and dtype.
    """
    xp = backend.xp
    host = [np.asarray(backend.to_numpy(a)) for a in (param, grad, m, v)]  # NumPy or CuPy in
    dtype = host[0].dtype
    p = Parameter(xp.array(host[0]))  # a private copy: the caller's param stays
    p.grad = xp.array(host[1].astype(dtype))
    opt = optim.AdamW([p], lr=lr, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay)
    opt.state[id(p)] = {  # the state AdamW keeps between steps, as if t - 1 steps were taken
        "step": int(t) - 1,
        "exp_avg": xp.array(host[2].astype(dtype)),
        "exp_avg_sq": xp.array(host[3].astype(dtype)),
    }
    opt.step()
    state = opt.state[id(p)]
    return tuple(
        backend.to_numpy(a).copy() for a in (p.data, state["exp_avg"], state["exp_avg_sq"])
    )


# ----------------------------------------------------------------------------- the wrong versions


def _adam_like(p, g, m, v, t, lr, b1, b2, eps, wd, **wrong) -> tuple:
    """AdamW written out in float64, with one named deviation switched on (``wrong``)."""
    if wrong.get("l2"):
        g = g + wd * p  # Adam + L2: the decay goes into the gradient, and Adam rescales it
    m_new = b1 * m + (1 - b1) * g
    v_new = b2 * v + (1 - b2) * (g if wrong.get("g_not_squared") else g * g)
    t_used = t + wrong.get("t_shift", 0)
    c1, c2 = (1.0, 1.0) if wrong.get("no_bias_correction") else (1 - b1**t_used, 1 - b2**t_used)
    m_hat, v_hat = m_new / c1, v_new / c2
    update = m_hat / (np.sqrt(v_hat) + eps)
    if wrong.get("l2"):
        new_p = p - lr * update
    elif wrong.get("decay_without_lr"):
        new_p = p * (1 - wd) - lr * update
    elif wrong.get("decay_after"):
        new_p = (p - lr * update) * (1 - lr * wd)
    else:
        new_p = p * (1 - lr * wd) - lr * update
    if wrong.get("returns_corrected"):
        return new_p, m_hat, v_hat
    return new_p, m_new, v_new


_MISTAKES = [
    (
        "no bias correction: m and v start at 0, so their first averages are too small by the "
        "factors 1 - beta1**t and 1 - beta2**t; divide by them before the step",
        {"no_bias_correction": True},
    ),
    (
        "the weight decay went into the gradient (Adam + L2, g + weight_decay * param): AdamW "
        "decouples it, param * (1 - lr * weight_decay), outside m and v",
        {"l2": True},
    ),
    (
        "v averages g, not g**2: v is the running mean of the SQUARED gradient (its square root "
        "is the gradient's typical size)",
        {"g_not_squared": True},
    ),
    (
        "the bias correction uses t - 1 (t counted from 0): t is the number of this step, 1 on "
        "the first, so the first correction is 1 - beta**1",
        {"t_shift": -1},
    ),
    (
        "the bias correction uses t + 1: t already counts this step (1 on the first)",
        {"t_shift": 1},
    ),
    (
        "you returned the bias-corrected m_hat and v_hat as the new state: keep the raw moving "
        "averages m and v for the next step and correct them only to compute this one",
        {"returns_corrected": True},
    ),
    (
        "the weight decay is not multiplied by lr: AdamW shrinks param by 1 - lr * weight_decay",
        {"decay_without_lr": True},
    ),
    (
        "the weight decay was applied to the already updated parameter: both the decay and the "
        "Adam step start from the old param, param * (1 - lr * weight_decay) - lr * step",
        {"decay_after": True},
    ),
]


def _wrong_steps(args64) -> list:
    """(explanation, (new_param, m, v)) of every named wrong version on these inputs."""
    p, g, m, v, t, lr, b1, b2, eps, wd = args64
    out = []
    with np.errstate(all="ignore"):  # several wrong versions divide by 0 or take sqrt(< 0)
        for explanation, switch in _MISTAKES:
            out.append((explanation, _adam_like(p, g, m, v, t, lr, b1, b2, eps, wd, **switch)))
    return out


# ----------------------------------------------------------------------------- the cases

# (shape, t, lr, beta1, beta2, eps, weight_decay, dtype, description)
_CASES = [
    ((4, 5), 1, 1e-2, 0.9, 0.999, 1e-8, 0.01, "float64", "the first step (t = 1, m = v = 0)"),
    ((6, 3), 3, 1e-2, 0.9, 0.999, 1e-8, 0.1, "float64", "step t = 3, after two steps"),
    ((7,), 20, 1e-1, 0.9, 0.999, 1e-8, 0.5, "float64", "a bias vector, t = 20, lr = 0.1, wd = 0.5"),
    ((3, 4), 5, 3e-2, 0.8, 0.99, 1e-6, 0.2, "float64", "betas (0.8, 0.99), eps = 1e-6, t = 5"),
    ((2, 3, 4), 1000, 1e-3, 0.9, 0.999, 1e-8, 0.05, "float64", "a 3-d array at t = 1000"),
    ((5, 6), 2, 1e-2, 0.9, 0.999, 1e-8, 0.0, "float32", "float32 arrays, t = 2, no weight decay"),
]


def _inputs():
    """(args, description) per case; the state (m, v) is what t - 1 real steps would leave."""
    rng = np.random.default_rng(20260404)
    for shape, t, lr, b1, b2, eps, wd, dtype, description in _CASES:
        param = rng.standard_normal(shape)
        grad = rng.standard_normal(shape)
        m, v = np.zeros(shape), np.zeros(shape)
        for _ in range(t - 1):  # a plausible history: gradients of the same size
            past = rng.standard_normal(shape)
            m, v = b1 * m + (1 - b1) * past, b2 * v + (1 - b2) * past * past
        arrays = [a.astype(dtype) for a in (param, grad, m, v)]
        yield (*arrays, t, lr, b1, b2, eps, wd), description


def _same(got, want, precision) -> bool:
    """Equal to ``precision`` (NaN matching NaN: a wrong version may give NaN where yours does)."""
    rtol, atol = (2e-4, 2e-5) if np.finfo(precision).bits <= 32 else (1e-7, 1e-9)
    a, b = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    scale = max(1.0, float(np.nanmax(np.abs(b), initial=0.0)))
    return a.shape == b.shape and bool(
        np.allclose(a, b, rtol=rtol, atol=atol * scale, equal_nan=True)
    )


def _all_same(outputs, answers, precisions) -> bool:
    """Every output equal to its answer (see :func:`_same`)."""
    return all(_same(o, a, p) for o, a, p in zip(outputs, answers, precisions, strict=True))


@exercise("adamw_step", adamw_step_reference)
def check_adamw_step(fn, *, quiet: bool = False) -> None:
    """Check ``fn(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay)`` ->
    ``(new_param, new_m, new_v)``, one AdamW step (t counted from 1), inputs left unchanged."""
    name = "adamw_step"
    n_cases = 0
    for args, case in _inputs():
        args64 = [a.astype(np.float64) if isinstance(a, np.ndarray) else a for a in args]
        want = adamw_step_reference(*args64)  # first, from private float64 copies
        wrong = _wrong_steps(args64)
        given = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
        before = snapshot(*given)
        got = call(fn, name, case, *given)
        unchanged(name, case, LABELS, before, given)
        items = as_items(got, 3, name, case, "(new_param, new_m, new_v), e.g. `return p, m, v`")
        shape = np.shape(args[0])
        got = [
            as_array(item, name, f"{case} ({what})", shape, finite=False)
            for item, what in zip(items, OUTPUTS, strict=True)
        ]
        inputs_precision = precision_of(*args[:4])
        # each output judged at its inputs' precision or its own, whichever is coarser
        at = [precision_of(np.zeros(0, inputs_precision), item) for item in got]
        if not _all_same(got, want, at):
            for explanation, answer in wrong:
                if _all_same(got, answer, at) and not _all_same(answer, want, at):
                    raise ExerciseError(f"{name}: wrong step on {case}: {explanation}")
            if _same(got[1], want[2], at[1]) and _same(got[2], want[1], at[2]):
                raise ExerciseError(
                    f"{name} returned m and v swapped on {case}: return (new_param, new_m, new_v)"
                )
            for item, answer, what in zip(got, want, OUTPUTS, strict=True):
                if not np.all(np.isfinite(item)):
                    raise ExerciseError(
                        f"{name} returned NaN or inf in the {what} on {case}: look for a "
                        "division by zero or the square root of a negative number"
                    )
                compare(item, answer, name, case, (), what, inputs_precision)
        n_cases += 1
    passed(name, n_cases, quiet)
