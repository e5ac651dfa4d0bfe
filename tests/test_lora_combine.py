"""combine_adapters: signed "linear" weights and the TIES combinations (PEFT's definitions).

The comparison with PEFT itself is in tests/crosscheck/test_combine_peft.py; here every
expectation is computed by hand, without PyTorch.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_lora import assert_same_snapshot, make_net, snapshot

import lora_np as ln
from lora_np import analysis, lora, nn


def layer_with(adapters, d=7, k=8, seed=5):
    """A float64 LoRALinear (d, k) holding ``adapters`` = [(name, r, alpha)], A and B random."""
    ln.manual_seed(0)
    (first, r, alpha), *rest = adapters
    layer = lora.LoRALinear(nn.Linear(k, d, dtype="float64"), r=r, alpha=alpha, adapter_name=first)
    for name, r, alpha in rest:
        layer.add_adapter(name, r=r, alpha=alpha)
    rng = np.random.default_rng(seed)
    for name, *_ in adapters:
        adapter = layer.adapters[name]
        adapter.A.data = ln.backend.xp.asarray(rng.standard_normal(adapter.A.shape))
        adapter.B.data = ln.backend.xp.asarray(rng.standard_normal(adapter.B.shape))
    return layer


def ties_by_loops(tensors, weights, density):
    """TIES written entry by entry: trim each tensor to its int(density * size) largest
    magnitudes, elect the sign of the trimmed sum (0 counts as +), average the weighted
    entries whose sign is the elected one."""
    trimmed = []
    for t in tensors:
        keep = int(density * t.size)
        kept = set(np.argsort(-np.abs(t), axis=None)[:keep].tolist())
        trimmed.append([v if i in kept else 0.0 for i, v in enumerate(t.ravel())])
    out = []
    for j in range(tensors[0].size):
        column = [t[j] for t in trimmed]
        elected = 1.0 if sum(column) >= 0 else -1.0
        agreeing = [w * v for w, v in zip(weights, column) if np.sign(v) == elected]
        out.append(sum(agreeing) / max(len(agreeing), 1))
    return np.array(out).reshape(tensors[0].shape)


def test_linear_takes_negative_weights_with_the_sign_on_A():
    layer = layer_with([("a", 2, 3.0), ("b", 2, 5.0)])
    lora.combine_adapters(layer, "a", [-2.0], how="linear", new_name="minus")
    np.testing.assert_allclose(
        layer.delta_weight("minus"), -2 * layer.delta_weight("a"), atol=1e-12
    )

    lora.combine_adapters(layer, ["a", "b"], [0.7, -0.4], how="linear", new_name="mix")
    a, b = layer.adapters["a"], layer.adapters["b"]
    ca, cb = 0.7 * a.scaling, -0.4 * b.scaling
    A = np.sqrt(ca) * a.A.data - np.sqrt(-cb) * b.A.data
    B = np.sqrt(ca) * a.B.data + np.sqrt(-cb) * b.B.data
    np.testing.assert_allclose(layer.delta_weight("mix"), B @ A, atol=1e-12)
    # B A = c_a B_a A_a + c_b B_b A_b + the cross terms, which are not small
    diagonal = 0.7 * layer.delta_weight("a") - 0.4 * layer.delta_weight("b")
    assert np.linalg.norm(B @ A - diagonal) > 0.3 * np.linalg.norm(diagonal)


@pytest.mark.parametrize("weights, density", [([1.0, 1.0], 0.5), ([0.7, -0.4], 0.3), ([1, 2], 1)])
def test_ties_combines_A_and_B_by_ties(weights, density):
    layer = layer_with([("a", 2, 3.0), ("b", 2, 5.0)])
    lora.combine_adapters(layer, ["a", "b"], weights, how="ties", new_name="t", density=density)
    a, b = layer.adapters["a"], layer.adapters["b"]
    coefs = [weights[0] * a.scaling, weights[1] * b.scaling]
    roots = [np.sqrt(abs(c)) for c in coefs]
    signed = [np.copysign(r, c) for r, c in zip(roots, coefs)]
    A = ties_by_loops([a.A.data, b.A.data], signed, density)
    B = ties_by_loops([a.B.data, b.B.data], roots, density)
    new = layer.adapters["t"]
    assert (new.r, new.scaling) == (2, 1.0)
    np.testing.assert_allclose(new.A.data, A, atol=1e-12)
    np.testing.assert_allclose(new.B.data, B, atol=1e-12)


def test_ties_of_an_adapter_with_itself_is_the_adapter_not_twice():
    layer = layer_with([("a", 2, 3.0)])
    lora.combine_adapters(layer, ["a", "a"], [1.0, 1.0], how="ties", new_name="t", density=1.0)
    np.testing.assert_allclose(layer.delta_weight("t"), layer.delta_weight("a"), atol=1e-12)


def test_ties_svd_is_ties_of_the_updates_then_truncated():
    layer = layer_with([("a", 2, 3.0), ("b", 3, 5.0), ("c", 2, 7.0)])
    names, weights = ["a", "b", "c"], [0.7, -0.4, 1.3]
    deltas = [layer.delta_weight(n) for n in names]
    merged = ties_by_loops(deltas, weights, 0.6)
    lora.combine_adapters(layer, names, weights, how="ties_svd", new_name="ts", density=0.6)
    lora.combine_adapters(layer, names, weights, "ties_svd", "ts2", rank=2, density=0.6)
    assert layer.adapters["ts"].r == 3  # the largest rank, as "svd"
    for name, r in (("ts", 3), ("ts2", 2)):
        expected = analysis.best_rank_approximation(merged, r)
        np.testing.assert_allclose(layer.delta_weight(name), expected, atol=1e-12)


def test_ties_keeping_nothing_gives_a_zero_update():
    layer = layer_with([("a", 2, 3.0), ("b", 2, 5.0)])
    # int(0.01 * 16) = 0 entries kept of each A (2, 8): A and so B A are zero
    lora.combine_adapters(layer, ["a", "b"], [1, 1], how="ties", new_name="t", density=0.01)
    assert not layer.adapters["t"].A.data.any()
    assert not layer.delta_weight("t").any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"how": "ties"}, "density is needed"),
        ({"how": "ties_svd"}, "density is needed"),
        ({"how": "cat", "density": 0.5}, "density is needed"),
        ({"how": "svd", "density": 0.5}, "density is needed"),
        ({"how": "ties", "density": 0.0}, "0 < density <= 1"),
        ({"how": "ties", "density": 1.5}, "0 < density <= 1"),
        ({"how": "ties", "density": float("nan")}, "0 < density <= 1"),
        ({"how": "ties", "density": True}, "0 < density <= 1"),
        ({"how": "ties", "density": "0.5"}, "0 < density <= 1"),
        ({"how": "ties", "density": 0.5, "rank": 2}, "rank is only used"),
        ({"how": "linear", "rank": 2}, "rank is only used"),
        ({"how": "dare_linear"}, "how must be one of"),
    ],
)
def test_bad_combine_arguments_name_the_value_and_change_nothing(kwargs, message):
    model = make_net("float64")
    lora.inject(model, ["q"], r=2, alpha=2)
    lora.add_adapter(model, "other", r=2, alpha=4)
    before = snapshot(model)
    with pytest.raises(ValueError, match=message):
        lora.combine_adapters(model, ["default", "other"], [1.0, -1.0], new_name="x", **kwargs)
    assert_same_snapshot(before, snapshot(model))


def test_ties_and_signed_linear_on_each_backend(backend_name):
    """The same results with the active backend's arrays as with NumPy's (CuPy with a GPU)."""
    cases = [("ties", {"density": 0.5}), ("ties_svd", {"density": 0.5, "rank": 2}), ("linear", {})]

    def combined(name):
        ln.backend.set_backend(name)
        layer = layer_with([("a", 2, 3.0), ("b", 2, 5.0)])
        for how, extra in cases:
            lora.combine_adapters(layer, ["a", "b"], [1.0, -1.0], how, how, **extra)
            assert ln.backend.array_module(layer.adapters[how].A.data) == name
        return {how: ln.backend.to_numpy(layer.delta_weight(how)) for how, _ in cases}

    reference = combined("numpy")
    for how, delta in combined(backend_name).items():
        np.testing.assert_allclose(delta, reference[how], atol=1e-12)
