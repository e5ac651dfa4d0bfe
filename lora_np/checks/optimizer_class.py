"""Checker for notebook 04's optimiser class: ``AdamW(params, lr, betas, eps, weight_decay)``.

The learner's class wraps their ``adamw_step`` into an optimiser with ``zero_grad()`` and
``step()``. It is run for a few steps on parameters of different shapes and dtypes, next to the
library's :class:`lora_np.optim.AdamW` on copies given the same gradients:

- two "twin" parameters with the same values and gradients (state kept per parameter moves them
  identically; state shared between parameters does not);
- a parameter that gets no gradient at the first step and a later one (it must not move then,
  and its bias correction counts its OWN steps, as the library's and PyTorch's AdamW do);
- a frozen parameter (``requires_grad`` False, never a gradient): it never moves;
- float32 and float64 parameters (the dtype is kept).

``zero_grad()`` is called once more than ``step()`` (once before the loop, as a training loop
often does), so a bias correction that counts ``zero_grad`` calls gives its own numbers.
``zero_grad()`` must set every gradient to None, as the library does (and PyTorch by default):
a zero array would make ``step()`` move a parameter that got no gradient.
"""

from __future__ import annotations

from .. import backend, optim
from ..nn import Parameter
from ._harness import ExerciseError, as_array, call, describe, exercise, np, passed
from .optimizer import adamw_step_reference

__all__ = ["check_adamw"]

NAME = "AdamW"
STEPS = 4
# which parameters get a gradient at each step (1-based): the late one skips steps 1 and 3
_GETS_GRAD = {"twin 1": True, "twin 2": True, "late": (2, 4), "other": True, "frozen": ()}

# (shapes, dtype, settings or None for the defaults, description)
_CASES = [
    (
        (3, 4),
        "float64",
        {"lr": 0.05, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.1},
        "float64 parameters of shape (3, 4), lr = 0.05, weight_decay = 0.1",
    ),
    (
        (5,),
        "float32",
        {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.3},
        "float32 bias vectors (5,), betas (0.8, 0.99), eps = 1e-6, weight_decay = 0.3",
    ),
    (
        (2, 3),
        "float64",
        None,
        "(2, 3) parameters, the defaults AdamW(params) (lr = 1e-3, weight_decay = 0.01)",
    ),
]


def _fail(text: str, case: str) -> ExerciseError:
    return ExerciseError(f"{NAME}: {text} (on {case})")


def _cases():
    """(description, dtype, settings, initial values, gradients[step][name] or None)."""
    rng = np.random.default_rng(20260420)
    for shape, dtype, settings, description in _CASES:
        twin = rng.standard_normal(shape)
        start = {"twin 1": twin, "twin 2": twin.copy()}
        start |= {n: rng.standard_normal(shape) for n in ("late", "other", "frozen")}
        start["other"] = rng.standard_normal((shape[0] + 1, *shape[1:]))  # another shape
        grads = []
        for step in range(1, STEPS + 1):
            g_twin = rng.standard_normal(shape)
            g = {"twin 1": g_twin, "twin 2": g_twin.copy(), "frozen": None}
            g["late"] = rng.standard_normal(shape) if step in _GETS_GRAD["late"] else None
            g["other"] = rng.standard_normal(start["other"].shape)
            grads.append(g)
        yield description, dtype, settings, start, grads


def _settings(settings) -> dict:
    return settings or {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}


def _library_run(dtype, settings, start, grads) -> list[dict]:
    """The library's AdamW on copies: the parameters' values after each step."""
    params = {n: Parameter(backend.xp.asarray(a.astype(dtype))) for n, a in start.items()}
    params["frozen"].requires_grad = False
    listed = list(params.values())
    opt = optim.AdamW(listed) if settings is None else optim.AdamW(listed, **settings)
    after = []
    for g in grads:
        opt.zero_grad()
        for n, grad in g.items():
            if grad is not None:
                params[n].grad = backend.xp.asarray(grad.astype(dtype))
        opt.step()
        after.append({n: backend.to_numpy(p.data).copy() for n, p in params.items()})
    return after


def _miscounted_run(dtype, settings, start, grads, count: str) -> list[dict]:
    """AdamW with the bias correction's t taken from a wrong counter: ``"steps"`` (one counter
    for all parameters) or ``"zero_grads"`` (the number of zero_grad calls, one more)."""
    s = _settings(settings)
    (b1, b2), values = s["betas"], {n: a.astype(dtype).astype(np.float64) for n, a in start.items()}
    moments = {n: (np.zeros_like(a), np.zeros_like(a)) for n, a in values.items()}
    after = []
    for step, g in enumerate(grads, start=1):
        t = step if count == "steps" else step + 1
        for n, grad in g.items():
            if grad is not None:
                m, v = moments[n]
                args = (values[n], grad.astype(dtype), m, v, t, s["lr"], b1, b2, s["eps"])
                values[n], m, v = adamw_step_reference(*args, s["weight_decay"])
                moments[n] = (m, v)
        after.append({n: a.copy() for n, a in values.items()})
    return after


_MISCOUNTS = {
    "steps": "the bias correction used one step counter for all parameters: a parameter that "
    "first gets a gradient at step 2 is at ITS step 1 (m = v = 0 before it). Keep t per "
    "parameter, with its m and v, as ln.optim.AdamW does (and PyTorch's AdamW)",
    "zero_grads": "the bias correction counted zero_grad() calls: t is the number of steps this "
    "parameter has taken (count in step(), per parameter); a loop may call zero_grad() more "
    "often than step()",
}


def _close(got, want, dtype) -> bool:
    rtol, atol = (2e-4, 2e-5) if dtype == "float32" else (1e-7, 1e-9)
    scale = max(1.0, float(np.max(np.abs(want))))
    return bool(np.allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol * scale))


def _read(params, names, dtype, start, case) -> dict:
    """Every parameter's values, proven still an array of its shape and dtype."""
    out = {}
    for n, p in zip(names, params, strict=True):
        data = as_array(
            p.data, f"{NAME}.step()", f"{case} (parameter {n!r}'s .data)", start[n].shape
        )
        if data.dtype != np.dtype(dtype):
            raise _fail(
                f"parameter {n!r} became {data.dtype}; keep its dtype {dtype} "
                "(write into p.data[...] or cast the new values)",
                case,
            )
        out[n] = np.array(data, copy=True)  # p.data may change in place at the next step
    return out


def _check_step(case, step, got, want, before, grads, dtype, wrong) -> None:
    """The values after ``step`` against the library's; a difference explained if possible."""
    if not np.array_equal(got["twin 1"], got["twin 2"]):
        raise _fail(
            f"two parameters with the same values and gradients moved differently at "
            f"step {step}: their state is shared. Keep m, v and t per parameter (e.g. "
            "a dict keyed by id(p)), created at the parameter's first gradient",
            case,
        )
    for n in got:
        if grads[n] is None and not np.array_equal(got[n], before[n]):
            why = "is frozen" if n == "frozen" else f"got no gradient at step {step}"
            raise _fail(
                f"parameter {n!r} {why} but step() changed it: skip every parameter "
                "whose .grad is None (no weight decay, no Adam step, no state)",
                case,
            )
    for n in got:
        if grads[n] is not None and np.array_equal(got[n], before[n]):
            raise _fail(
                f"parameter {n!r} did not change at step {step}: step() must write the "
                "new values into the parameter itself (p.data[...] = new), not into a "
                "copy or a local name",
                case,
            )
    if all(_close(got[n], want[step - 1][n], dtype) for n in got):
        return
    for count, explanation in _MISCOUNTS.items():
        if all(_close(got[n], wrong[count][step - 1][n], dtype) for n in got):
            raise _fail(explanation, case)
    n = next(n for n in got if not _close(got[n], want[step - 1][n], dtype))
    worst = float(np.max(np.abs(got[n] - want[step - 1][n])))
    raise _fail(
        f"after step {step}, parameter {n!r} differs from ln.optim.AdamW's by up to "
        f"{worst:.3g}: apply your adamw_step with this parameter's own m, v and t "
        "(t = 1 at its first step) and the optimiser's lr, betas, eps, weight_decay "
        "(defaults lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)",
        case,
    )


def _zero_grad(opt, params, case) -> None:
    call(getattr(opt, "zero_grad", None), f"{NAME}.zero_grad", case)
    for p in params:
        if p.grad is not None:
            raise _fail(
                f"after zero_grad() a gradient is {describe(p.grad)}; expected None "
                "(as ln.optim.AdamW and PyTorch do): with zeros, step() would still move "
                "a parameter that gets no gradient (decay and old momentum)",
                case,
            )


@exercise(NAME, optim.AdamW)
def check_adamw(cls, *, quiet: bool = False) -> None:
    """Check a class ``AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)``
    with ``zero_grad()`` and ``step()`` against ``ln.optim.AdamW`` over several steps."""
    n_cases = 0
    for case, dtype, settings, start, grads in _cases():
        want = _library_run(dtype, settings, start, grads)
        wrong = {c: _miscounted_run(dtype, settings, start, grads, c) for c in _MISCOUNTS}
        names = list(start)
        params = [Parameter(backend.xp.asarray(start[n].astype(dtype))) for n in names]
        params[names.index("frozen")].requires_grad = False
        opt = call(cls, NAME, case, params, **(settings or {}))
        _zero_grad(opt, params, case)  # once before the loop: one more zero_grad than step
        before = {n: a.astype(dtype) for n, a in start.items()}
        for step, g in enumerate(grads, start=1):
            _zero_grad(opt, params, case)
            given = {}
            for n, p in zip(names, params, strict=True):
                if g[n] is not None:
                    p.grad = backend.xp.asarray(g[n].astype(dtype))
                    given[n] = g[n].astype(dtype)
            try:
                call(getattr(opt, "step", None), f"{NAME}.step", f"{case}, step {step}")
            except ExerciseError as err:
                if getattr(err, "unsolved", False):
                    raise
                missing = ", ".join(repr(n) for n in names if g[n] is None)
                err.args = (
                    f"{err} -- at this step parameters {missing} are without a gradient "
                    "(.grad is None): skip every parameter whose .grad is None",
                )
                raise
            for n, p in zip(names, params, strict=True):
                if n in given and not np.array_equal(backend.to_numpy(p.grad), given[n]):
                    raise _fail(f"step() changed parameter {n!r}'s .grad: leave it as given", case)
            got = _read(params, names, dtype, start, case)
            _check_step(case, step, got, want, before, g, dtype, wrong)
            before = got
        n_cases += 1
    passed(NAME, n_cases, quiet)
