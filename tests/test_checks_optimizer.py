"""The notebook-04 AdamW-step checker: correct steps written differently pass, and each classic
mistake is rejected with a message that names it."""

import math

import numpy as np
import pytest

import lora_np as ln
from lora_np.checks import check_adamw_step
from lora_np.checks._harness import ExerciseError
from lora_np.checks.optimizer import adamw_step_reference

# ----------------------------------------------------------------------------- correct steps


def adamw_textbook(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    """Loshchilov & Hutter's order, written as formulas on new arrays."""
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    new_param = param - lr * weight_decay * param - lr * m_hat / (np.sqrt(v_hat) + eps)
    return new_param, m, v


def adamw_entry_by_entry(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    """Entry by entry in Python floats, the bias corrections folded into the step size."""
    flat = [np.asarray(a, dtype=np.float64).ravel() for a in (param, grad, m, v)]
    out = np.zeros((3, flat[0].size))
    step = lr * math.sqrt(1 - beta2**t) / (1 - beta1**t)
    eps_hat = eps * math.sqrt(1 - beta2**t)  # the same rule as eps added to sqrt(v_hat)
    for i, (p, g, mi, vi) in enumerate(zip(*flat, strict=True)):
        mi = beta1 * mi + (1 - beta1) * g
        vi = beta2 * vi + (1 - beta2) * g * g
        out[:, i] = p * (1 - lr * weight_decay) - step * mi / (math.sqrt(vi) + eps_hat), mi, vi
    shape = np.shape(param)
    return tuple(row.reshape(shape).astype(np.asarray(param).dtype) for row in out)


def adamw_in_float32_lists(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    """In float32 throughout, returned as a list."""
    p, g, m, v = (np.asarray(a, dtype=np.float32) for a in (param, grad, m, v))
    m = m * np.float32(beta1) + np.float32(1 - beta1) * g
    v = v * np.float32(beta2) + np.float32(1 - beta2) * g * g
    update = (m / np.float32(1 - beta1**t)) / (np.sqrt(v / np.float32(1 - beta2**t)) + eps)
    return [p * np.float32(1 - lr * weight_decay) - np.float32(lr) * update, m, v]


@pytest.mark.parametrize(
    "fn", [adamw_step_reference, adamw_textbook, adamw_entry_by_entry, adamw_in_float32_lists]
)
def test_correct_steps_pass(fn, capsys):
    check_adamw_step(fn)
    assert "✓ adamw_step: all 6 checks passed" in capsys.readouterr().out


def test_the_reference_is_the_library_optimiser():
    # three steps of ln.optim.AdamW on a parameter equal three chained reference steps
    rng = np.random.default_rng(1)
    p = ln.nn.Parameter(rng.standard_normal((3, 4)))
    opt = ln.optim.AdamW([p], lr=0.05, weight_decay=0.1)
    param, m, v = p.data.copy(), np.zeros((3, 4)), np.zeros((3, 4))
    for t in (1, 2, 3):
        grad = rng.standard_normal((3, 4))
        p.grad = grad.copy()
        opt.step()
        param, m, v = adamw_step_reference(param, grad, m, v, t, 0.05, 0.9, 0.999, 1e-8, 0.1)
    assert np.allclose(param, p.data, rtol=1e-12, atol=1e-14)
    assert np.allclose(m, opt.state[id(p)]["exp_avg"], rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- named mistakes


def no_bias_correction(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    return param * (1 - lr * weight_decay) - lr * m / (np.sqrt(v) + eps), m, v


def adam_with_l2(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    grad = grad + weight_decay * param
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad**2
    update = (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)
    return param - lr * update, m, v


def v_of_g(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    m = beta1 * m + (1 - beta1) * grad
    v = beta2 * v + (1 - beta2) * grad  # g, not g**2
    update = (m / (1 - beta1**t)) / (np.sqrt(v / (1 - beta2**t)) + eps)
    return param * (1 - lr * weight_decay) - lr * update, m, v


def t_from_zero(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    return adamw_textbook(param, grad, m, v, t - 1, lr, beta1, beta2, eps, weight_decay)


def t_plus_one(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    return adamw_textbook(param, grad, m, v, t + 1, lr, beta1, beta2, eps, weight_decay)


def returns_corrected(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    m = (beta1 * m + (1 - beta1) * grad) / (1 - beta1**t)
    v = (beta2 * v + (1 - beta2) * grad**2) / (1 - beta2**t)
    return param * (1 - lr * weight_decay) - lr * m / (np.sqrt(v) + eps), m, v


def decay_without_lr(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    new, m, v = adamw_textbook(param, grad, m, v, t, lr, beta1, beta2, eps, 0.0)
    return new - weight_decay * param, m, v


def decay_after(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
    new, m, v = adamw_textbook(param, grad, m, v, t, lr, beta1, beta2, eps, 0.0)
    return new * (1 - lr * weight_decay), m, v


@pytest.mark.parametrize(
    "fn, words",
    [
        (no_bias_correction, "no bias correction"),
        (adam_with_l2, "Adam + L2"),
        (v_of_g, "v averages g, not g**2"),
        (t_from_zero, "t counted from 0"),
        (t_plus_one, "uses t + 1"),
        (returns_corrected, "bias-corrected m_hat and v_hat"),
        (decay_without_lr, "not multiplied by lr"),
        (decay_after, "already updated parameter"),
    ],
    ids=[
        "no-bias-correction",
        "l2",
        "g-not-squared",
        "t-from-0",
        "t+1",
        "corrected",
        "no-lr",
        "decay-after",
    ],
)
@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # t - 1 divides by 0
def test_each_classic_mistake_is_named(fn, words):
    with pytest.raises(ExerciseError) as info:
        check_adamw_step(fn)
    assert words in str(info.value), str(info.value)


def test_in_place_updates_are_refused():
    def in_place(param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay):
        new, m_new, v_new = adamw_textbook(
            param, grad, m, v, t, lr, beta1, beta2, eps, weight_decay
        )
        m[...] = m_new  # the caller's state array changed
        return new, m, v_new

    with pytest.raises(ExerciseError, match="changed its input m"):
        check_adamw_step(in_place)


@pytest.mark.parametrize(
    "bad, phrase",
    [
        (None, "expected your function"),
        (lambda *a: (_ for _ in ()).throw(NotImplementedError()), "not written yet"),
        (lambda *a: None, "forget `return`"),
        (lambda *a: adamw_textbook(*a)[0], "expected (new_param, new_m, new_v)"),
        (lambda *a: adamw_textbook(*a)[:2], "expected 3 items"),
        (lambda *a: (lambda p, m, v: (p, v, m))(*adamw_textbook(*a)), "m and v swapped"),
        (lambda *a: tuple(x.T for x in adamw_textbook(*a)), "returned shape"),
        (lambda *a: tuple(x * np.nan for x in adamw_textbook(*a)), "NaN or inf"),
        (lambda *a: (adamw_textbook(*a)[0] + 1e-3, *adamw_textbook(*a)[1:]), "largest difference"),
    ],
    ids=[
        "not-callable",
        "stub",
        "none",
        "one-array",
        "two-items",
        "swapped",
        "transposed",
        "nan",
        "off",
    ],
)
def test_bad_answers_give_clear_messages(bad, phrase):
    with pytest.raises(ExerciseError) as info:
        check_adamw_step(bad)
    assert phrase in str(info.value), str(info.value)


def test_the_cases_tell_every_mistake_apart_somewhere():
    # each named wrong version differs from the right answer on at least one case, and the
    # first step is among the cases (t = 1 from m = v = 0)
    from lora_np.checks.optimizer import _MISTAKES, _adam_like, _inputs

    cases = [[np.float64(a) if i < 4 else a for i, a in enumerate(args)] for args, _ in _inputs()]
    assert any(args[4] == 1 and not np.any(args[2]) and not np.any(args[3]) for args in cases)
    for _, switch in _MISTAKES:
        differs = []
        for args in cases:
            with np.errstate(all="ignore"):
                wrong = _adam_like(*args, **switch)
            right = adamw_step_reference(*args)
            differs.append(
                not all(np.allclose(w, r, rtol=1e-6) for w, r in zip(wrong, right, strict=True))
            )
        assert any(differs), switch


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # v_of_g: sqrt(< 0)
def test_passing_or_reference_gives_back_the_right_function(capsys):
    assert ln.checks.passing_or_reference(adamw_textbook, "adamw_step") is adamw_textbook
    assert ln.checks.passing_or_reference(v_of_g, "adamw_step") is adamw_step_reference
    assert "using the library's adamw_step" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore:.*encountered in:RuntimeWarning")  # t - 1 divides by 0
def test_the_first_case_gives_every_mistake_its_own_answer():
    # the checker stops at the first failing case: there, no wrong version may equal the right
    # answer or another wrong version, or a message could name someone else's mistake
    from lora_np.checks.optimizer import _all_same, _inputs, _wrong_steps

    args, _ = next(iter(_inputs()))
    want = adamw_step_reference(*args)
    wrong = [answer for _, answer in _wrong_steps(list(args))]
    at = [np.dtype(np.float64)] * 3
    assert not any(_all_same(answer, want, at) for answer in wrong)
    for i, first in enumerate(wrong):
        assert not any(_all_same(first, other, at) for other in wrong[i + 1 :]), i
