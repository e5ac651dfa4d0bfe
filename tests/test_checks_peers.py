"""The notebook-10 checkers accept correct answers written any way and name each classic mistake."""

import numpy as np
import pytest

import lora_np as ln
from lora_np import peers, transformer
from lora_np.autograd import Tensor
from lora_np.checks import check_adapter_forward, check_dora_forward, check_loraplus_rates
from lora_np.checks._harness import ExerciseError, passing_or_reference
from lora_np.checks.peers import (
    adapter_forward_reference,
    dora_forward_reference,
    loraplus_rates_reference,
)

# ----------------------------------------------------------------------------- adapter forward


def adapter_einsum(h, W_down, b_down, W_up, b_up):
    """Correct, written with einsum and np.where."""
    z = np.einsum("...c,rc->...r", h, W_down) + b_down
    return h + np.einsum("...r,cr->...c", np.where(z > 0, z, 0.0), W_up) + b_up


def adapter_rows(h, W_down, b_down, W_up, b_up):
    """Correct, written row by row on a flattened copy."""
    flat = h.reshape(-1, h.shape[-1])
    out = np.empty_like(flat)
    for i, row in enumerate(flat):
        hidden = np.maximum(W_down @ row + b_down, 0)
        out[i] = row + W_up @ hidden + b_up
    return out.reshape(h.shape)


def test_adapter_reference_and_independent_solutions_pass(capsys):
    check_adapter_forward(adapter_forward_reference)
    assert "adapter_forward: all 4 checks passed" in capsys.readouterr().out
    check_adapter_forward(adapter_einsum, quiet=True)
    check_adapter_forward(adapter_rows, quiet=True)
    check_adapter_forward(lambda *a: Tensor(adapter_einsum(*a)), quiet=True)


def relu(z):
    return np.maximum(z, 0)


@pytest.mark.parametrize(
    "wrong, named",
    [
        (lambda h, Wd, bd, Wu, bu: relu(h @ Wd.T + bd) @ Wu.T + bu, "residual is missing"),
        (lambda h, Wd, bd, Wu, bu: h + (h @ Wd.T + bd) @ Wu.T + bu, "nonlinearity is missing"),
        (lambda h, Wd, bd, Wu, bu: h + relu((h @ Wd.T + bd) @ Wu.T + bu), "after the up"),
        (
            lambda h, Wd, bd, Wu, bu: relu(h + relu(h @ Wd.T + bd) @ Wu.T + bu),
            "covers the residual",
        ),
        (lambda h, Wd, bd, Wu, bu: h + relu(h @ Wd.T + bd) @ Wu.T, "b_up is missing"),
        (lambda h, Wd, bd, Wu, bu: h + relu(h @ Wd.T) @ Wu.T + bu, "b_down is missing"),
        (lambda h, Wd, bd, Wu, bu: h + (relu(h @ Wd.T) + bd) @ Wu.T + bu, "after the relu"),
    ],
)
def test_adapter_mistakes_are_named(wrong, named):
    with pytest.raises(ExerciseError, match=named):
        check_adapter_forward(wrong)


def test_adapter_shape_and_in_place_mistakes():
    with pytest.raises(ExerciseError, match=r"\(r, C\)"):
        check_adapter_forward(lambda h, Wd, bd, Wu, bu: h + relu(h @ Wd + bd) @ Wu + bu)

    def in_place(h, Wd, bd, Wu, bu):
        h += relu(h @ Wd.T + bd) @ Wu.T + bu
        return h

    with pytest.raises(ExerciseError, match="changed its input h"):
        check_adapter_forward(in_place)


# ----------------------------------------------------------------------------- DoRA forward


def dora_by_rows(x, W0, b, A, B, m, scaling):
    """Correct: the norm from the arrays (a constant), the direction through the engine."""
    V = W0.data + scaling * (B.data @ A.data)
    norm = Tensor(np.sqrt((V**2).sum(axis=1)))  # (d,), no gradient
    h = ln.functional.linear(x, W0) + ln.functional.linear(ln.functional.linear(x, A), B) * scaling
    out = h * (m / norm)
    return out if b is None else out + b


def dora_weight_first(x, W0, b, A, B, m, scaling):
    """Correct: build W' = m / ‖V‖ ⊙ V in the graph, then one product."""
    V = W0 + (B @ A) * scaling  # (d, k)
    norm = np.linalg.norm(V.data, axis=1, keepdims=True)  # (d, 1), a constant
    W = V * (m.reshape(-1, 1) / Tensor(norm))
    return ln.functional.linear(x, W, b)


def test_dora_reference_and_independent_solutions_pass(capsys):
    check_dora_forward(dora_forward_reference)
    assert "dora_forward: all 4 checks passed" in capsys.readouterr().out
    check_dora_forward(dora_by_rows, quiet=True)
    check_dora_forward(dora_weight_first, quiet=True)


def _dora(norm_of, direction_scale=True, bias_inside=False, use_m=True, s_in_dir=True):
    def fn(x, W0, b, A, B, m, scaling):
        V = W0.data + (scaling if s_in_dir else 1.0) * (B.data @ A.data)
        norm = Tensor(norm_of(W0.data, A.data, B.data, scaling))
        s = scaling if s_in_dir else 1.0
        h = ln.functional.linear(x, W0) + ln.functional.linear(ln.functional.linear(x, A), B) * s
        if bias_inside and b is not None:
            h = h + b
        out = h * (m / norm) if use_m else h / norm
        if not direction_scale:
            out = h * m
        del V
        return out if (b is None or bias_inside) else out + b

    return fn


def _rows(W0, A, B, s):
    return np.sqrt(((W0 + s * B @ A) ** 2).sum(axis=1))


@pytest.mark.parametrize(
    "wrong, named",
    [
        (_dora(lambda W0, A, B, s: np.sqrt(((W0 + s * B @ A) ** 2).sum(axis=0))), "wrong axis"),
        (_dora(_rows, direction_scale=False), "no normalisation"),
        (_dora(lambda W0, A, B, s: np.sqrt((W0**2).sum(axis=1))), "norm of W0 alone"),
        (_dora(lambda W0, A, B, s: np.sqrt(((W0 + B @ A) ** 2).sum(axis=1))), "inside the norm"),
        (_dora(lambda W0, A, B, s: np.sqrt(((W0 + B @ A) ** 2).sum(axis=1)), s_in_dir=False),
         "scaling is missing: the direction"),
        (_dora(lambda W0, A, B, s: np.sqrt(((W0 + s * B @ A) ** 2).sum())), "Frobenius"),
        (_dora(_rows, bias_inside=True), "bias is scaled"),
        (_dora(_rows, use_m=False), "magnitude m is missing"),
    ],
)  # fmt: skip
def test_dora_mistakes_are_named(wrong, named):
    with pytest.raises(ExerciseError, match=named):
        check_dora_forward(wrong)


def test_dora_norm_not_detached_is_named():
    def attached(x, W0, b, A, B, m, scaling):
        V = W0 + (B @ A) * scaling
        norm = ((V * V).sum(axis=1)).sqrt()  # in the graph: gradient flows through it
        out = ln.functional.linear(x, V) * (m / norm)
        return out if b is None else out + b

    with pytest.raises(ExerciseError, match="norm carries gradient"):
        check_dora_forward(attached)


def test_dora_no_gradient_and_not_a_tensor():
    def on_arrays(x, W0, b, A, B, m, scaling):
        return dora_forward_reference(x, W0, b, A, B, Tensor(m.data), scaling)

    with pytest.raises(ExerciseError, match="no gradient reached m"):
        check_dora_forward(on_arrays)
    with pytest.raises(ExerciseError, match="expected a Tensor"):
        check_dora_forward(lambda *a: dora_forward_reference(*a).numpy())


# ----------------------------------------------------------------------------- LoRA+ rates


def rates_by_shape(named_parameters, lr, ratio):
    """Correct: B is the (d, r) factor named B; 1-D parameters go with it."""
    out = []
    for name, p in named_parameters:
        if not p.requires_grad:
            continue
        faster = p.ndim == 1 or name.rsplit(".", 1)[-1] == "B"
        out.append((name, lr * ratio if faster else lr))
    return out


def rates_by_sets(named_parameters, lr, ratio):
    """Correct, written differently: collect the fast names first."""
    train = [(n, p) for n, p in named_parameters if p.requires_grad]
    fast = {n for n, p in train if n.endswith(".B")} | {n for n, p in train if len(p.shape) == 1}
    return tuple((n, lr * ratio if n in fast else lr) for n, _ in reversed(train))  # any order


def test_loraplus_reference_and_independent_solutions_pass(capsys):
    check_loraplus_rates(loraplus_rates_reference)
    assert "loraplus_rates: all 4 checks passed" in capsys.readouterr().out
    check_loraplus_rates(rates_by_shape, quiet=True)
    check_loraplus_rates(rates_by_sets, quiet=True)


def test_the_reference_rule_is_the_librarys_grouping():
    """On the shipped tiny GPT with DoRA and trainable biases, the name-and-shape rule gives
    the rates of peers.create_loraplus_optimizer's groups."""
    model = transformer.load_pretrained()
    ln.lora.inject(model, ["q", "v", "fc"], 2, alpha=4, use_dora=True)
    ln.lora.mark_only_lora_as_trainable(model, bias="all")
    opt = peers.create_loraplus_optimizer(model, ln.optim.AdamW, lr=1e-3, loraplus_lr_ratio=8)
    by_id = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    want = {n: by_id[id(p)] for n, p in model.named_parameters() if p.requires_grad}
    assert dict(loraplus_rates_reference(list(model.named_parameters()), 1e-3, 8)) == want


def _rule(rate_of):
    return lambda named, lr, ratio: [
        (n, rate_of(n, p, lr, ratio)) for n, p in named if p.requires_grad
    ]


@pytest.mark.parametrize(
    "wrong, named",
    [
        (_rule(lambda n, p, lr, k: lr * k if n.endswith(".A") or p.ndim == 1 else lr), "swapped"),
        (_rule(lambda n, p, lr, k: lr * k), "Every parameter got lr \\* ratio"),
        (_rule(lambda n, p, lr, k: lr * k if n.endswith(".B") else lr), "1-D parameters"),
        (
            _rule(lambda n, p, lr, k: lr / k if n.endswith(".B") or p.ndim == 1 else lr),
            "lr / ratio",
        ),
    ],
)
def test_loraplus_mistakes_are_named(wrong, named):
    with pytest.raises(ExerciseError, match=named):
        check_loraplus_rates(wrong)


def test_loraplus_frozen_and_missing_parameters():
    every = lambda named, lr, k: [(n, lr) for n, _ in named]  # noqa: E731
    with pytest.raises(ExerciseError, match="which is frozen"):
        check_loraplus_rates(every)
    with pytest.raises(ExerciseError, match="gave no rate"):
        check_loraplus_rates(lambda named, lr, k: [])
    with pytest.raises(ExerciseError, match="expected a list of"):
        check_loraplus_rates(lambda named, lr, k: {n: lr for n, _ in named})
    twice = lambda named, lr, k: 2 * loraplus_rates_reference(named, lr, k)  # noqa: E731
    with pytest.raises(ExerciseError, match="two rates"):
        check_loraplus_rates(twice)


def test_passing_or_reference_gives_the_library_until_yours_passes(capsys):
    assert passing_or_reference(adapter_einsum, "adapter_forward") is adapter_einsum
    fallback = passing_or_reference(lambda *a: a[0], "adapter_forward")
    assert fallback is adapter_forward_reference
    assert "note: using the library's adapter_forward" in capsys.readouterr().out
    assert passing_or_reference(dora_by_rows, "dora_forward") is dora_by_rows
    assert passing_or_reference(rates_by_sets, "loraplus_rates") is rates_by_sets
