"""lora_np.lora: the LoRA layer, its initialisations, merging, adapters and model tools."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import lora_np as ln
from lora_np import analysis, lora, nn, optim
from lora_np import functional as F

# Every test runs twice: with the fast paths and in plain mode (conftest.engine_mode).
pytestmark = pytest.mark.usefixtures("engine_mode")

# ----------------------------------------------------------------------------- a small model


class Block(nn.Module):
    def __init__(self, c, dtype):
        super().__init__()
        self.q = nn.Linear(c, c, dtype=dtype)
        self.v = nn.Linear(c, c, dtype=dtype)
        self.norm = nn.LayerNorm(c, dtype=dtype)
        self.mlp = nn.Sequential(
            nn.Linear(c, 2 * c, dtype=dtype), nn.GELU(), nn.Linear(2 * c, c, dtype=dtype)
        )

    def forward(self, x):
        return self.mlp(self.norm(x + self.q(x) * self.v(x)))


class Net(nn.Module):
    """Module names: blocks.{0,1}.{q,v}, blocks.{i}.norm, blocks.{i}.mlp.{0,2}, head (4 -> 3)."""

    def __init__(self, c=6, dtype="float32"):
        super().__init__()
        self.blocks = nn.ModuleList([Block(c, dtype), Block(c, dtype)])
        self.head = nn.Linear(c, 3, dtype=dtype)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def make_net(dtype="float32", seed=0):
    ln.manual_seed(seed)
    return Net(dtype=dtype)


def inputs(shape=(4, 6), dtype="float32", seed=1):
    return ln.Tensor(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


def snapshot(model):
    """Everything an error must leave alone: module types, parameter values and flags."""
    return {
        "modules": [(name, type(m).__name__) for name, m in model.named_modules()],
        "params": {n: (p.data.copy(), p.requires_grad) for n, p in model.named_parameters()},
        "adapters": [
            (n, layer.active_adapter, layer.adapter_names, layer.merged)
            for n, layer in lora.lora_layers(model)
        ],
    }


def assert_same_snapshot(before, after):
    assert before["modules"] == after["modules"]
    assert before["adapters"] == after["adapters"]
    assert before["params"].keys() == after["params"].keys()
    for name, (data, flag) in before["params"].items():
        assert np.array_equal(data, after["params"][name][0]), name
        assert flag == after["params"][name][1], name


def randomise_B(model, seed=2, scale=0.3):
    rng = np.random.default_rng(seed)
    for _, layer in lora.lora_layers(model):
        layer.B.data = (scale * rng.standard_normal(layer.B.shape)).astype(layer.B.dtype)


# ----------------------------------------------------------------------------- the layer


def test_shapes_scaling_and_formula():
    ln.manual_seed(0)
    base = nn.Linear(7, 5, dtype="float64")
    layer = lora.LoRALinear(base, r=3, alpha=6.0)
    assert layer.base is base
    assert layer.A.shape == (3, 7) and layer.B.shape == (5, 3)  # A (r, k), B (d, r)
    assert layer.scaling == 2.0 and layer.r == 3 and layer.alpha == 6.0 and not layer.merged
    randomise_B(layer_model := nn.Sequential(layer))
    x = inputs((4, 7), "float64")
    W0, b = base.weight.data, base.bias.data
    expected = x.data @ W0.T + b + 2.0 * (x.data @ layer.A.data.T) @ layer.B.data.T
    np.testing.assert_allclose(layer_model(x).data, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.delta_weight(), 2.0 * layer.B.data @ layer.A.data, rtol=1e-14)
    # works on (batch, seq, features) too
    x3 = inputs((2, 3, 7), "float64")
    assert layer(x3).shape == (2, 3, 5)


def test_rslora_scaling():
    ln.manual_seed(0)
    layer = lora.LoRALinear(nn.Linear(20, 20, dtype="float64"), r=16, alpha=8, rslora=True)
    assert layer.scaling == pytest.approx(8 / math.sqrt(16))
    randomise_B(nn.Sequential(layer))
    x = inputs((3, 20), "float64")
    with layer.disable_adapters():
        base_out = layer(x).data
    np.testing.assert_allclose(
        layer(x).data - base_out, 2.0 * (x.data @ layer.A.data.T) @ layer.B.data.T, atol=1e-12
    )


def test_b_zero_gives_the_base_outputs_exactly():
    model = make_net()
    x = inputs()
    before = model(x).data.copy()
    lora.inject(model, ["q", "v", "head"], r=2, alpha=4, dropout=0.1)
    model.train()
    assert np.array_equal(model(x).data, before)
    model.eval()
    assert np.array_equal(model(x).data, before)


def test_frozen_weights_get_no_gradient_and_no_optimiser_state():
    model = make_net()
    lora.inject(model, ["q", "v"], r=2, alpha=4)
    randomise_B(model)
    params = dict(model.named_parameters())
    before = {n: p.data.copy() for n, p in params.items()}
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    loss = (model(inputs()) ** 2).mean()
    loss.backward()
    trained = {n for n, p in params.items() if p.grad is not None}
    assert trained == {n for n in params if ".adapters.default." in n}
    assert len(trained) == 8  # A and B of 4 layers
    opt.step()
    assert set(opt.state) == {id(params[n]) for n in trained}
    for name, p in params.items():
        if name in trained:
            assert not np.array_equal(p.data, before[name]), name
        else:
            assert np.array_equal(p.data, before[name]), name  # bitwise untouched


def test_gradients_of_A_and_B_are_right():
    ln.manual_seed(0)
    layer = lora.LoRALinear(nn.Linear(5, 4, dtype="float64"), r=2, alpha=3)
    randomise_B(nn.Sequential(layer))
    x = inputs((3, 5), "float64")
    x.requires_grad_(True)
    assert ln.gradcheck(lambda A, B, x: layer(x), layer.A, layer.B, x)


def test_kaiming_init_matches_peft_bounds():
    ln.manual_seed(0)
    k = 256
    layer = lora.LoRALinear(nn.Linear(k, 64), r=16, alpha=16)
    A = layer.A.data
    bound = 1 / math.sqrt(k)
    assert np.abs(A).max() <= bound and np.abs(A).max() > 0.98 * bound
    assert A.std() == pytest.approx(
        bound / math.sqrt(3), rel=0.05
    )  # uniform(-b, b) has std b/sqrt(3)
    assert not layer.B.data.any()
    assert A.dtype == np.float32


def test_gaussian_init_has_std_one_over_r():
    ln.manual_seed(0)
    layer = lora.LoRALinear(nn.Linear(512, 64), r=8, alpha=8, init="gaussian")
    assert layer.A.data.std() == pytest.approx(1 / 8, rel=0.05)
    assert abs(layer.A.data.mean()) < 0.01
    assert not layer.B.data.any()


@pytest.mark.parametrize(("dtype", "tol"), [("float64", 1e-12), ("float32", 2e-5)])
@pytest.mark.parametrize("rslora", [False, True])
def test_pissa_keeps_the_output_at_step_zero(dtype, tol, rslora):
    ln.manual_seed(0)
    base = nn.Linear(12, 9, dtype=dtype)
    W0 = base.weight.data.astype("float64").copy()
    x = inputs((5, 12), dtype)
    before = base(x).data.copy()
    layer = lora.LoRALinear(base, r=3, alpha=5, init="pissa", rslora=rslora)
    np.testing.assert_allclose(layer(x).data, before, atol=tol)
    # s·B·A is W0's best rank-3 part; the frozen weight holds the rest
    top = analysis.best_rank_approximation(W0, 3)
    np.testing.assert_allclose(layer.delta_weight().astype("float64"), top, atol=tol)
    np.testing.assert_allclose(base.weight.data, W0 - top, atol=tol)
    assert layer.A.requires_grad and not base.weight.requires_grad


# ----------------------------------------------------------------------------- merge / unmerge


@pytest.mark.parametrize(("dtype", "tol"), [("float64", 1e-12), ("float32", 1e-5)])
def test_merged_outputs_equal_unmerged(dtype, tol):
    ln.manual_seed(0)
    layer = lora.LoRALinear(nn.Linear(16, 12, dtype=dtype), r=4, alpha=8)
    randomise_B(nn.Sequential(layer))
    x = inputs((6, 16), dtype)
    unmerged = layer(x).data.copy()
    layer.merge()
    assert layer.merged
    np.testing.assert_allclose(layer(x).data, unmerged, atol=tol, rtol=tol)


def test_merged_forward_costs_one_gemm(monkeypatch):
    ln.manual_seed(0)
    layer = lora.LoRALinear(nn.Linear(8, 8), r=2, alpha=2)
    calls = []
    original = F._mm

    def counting(a, b):
        calls.append(a.shape)
        return original(a, b)

    monkeypatch.setattr(F, "_mm", counting)
    x = inputs((3, 8))
    layer(x)
    assert len(calls) == 3  # W0 x, A x, B (A x)
    calls.clear()
    layer.merge()
    layer(x)
    assert len(calls) == 1  # just the base Linear


def test_unmerge_restores_w0_within_the_rounding_bound():
    ln.manual_seed(0)
    layer = lora.LoRALinear(nn.Linear(64, 48), r=8, alpha=16)
    randomise_B(nn.Sequential(layer), scale=1.0)
    W0 = layer.base.weight.data.copy()
    delta = layer.delta_weight()
    layer.merge()
    # merged weight against a float64 reference of W0 + ΔW: one float32 rounding
    reference = W0.astype("float64") + delta.astype("float64")
    eps = np.finfo(np.float32).eps
    assert (np.abs(layer.base.weight.data - reference) <= eps * np.abs(reference) + 1e-30).all()
    layer.unmerge()
    assert not layer.merged
    error = np.abs(layer.base.weight.data.astype("float64") - W0)
    bound = eps * (np.abs(W0) + np.abs(delta)).astype("float64")
    assert (error <= bound).all()
    assert error.max() > 0 or np.array_equal(layer.base.weight.data, W0)


def test_merge_twice_and_unmerge_unmerged_are_errors():
    ln.manual_seed(0)
    layer = lora.LoRALinear(nn.Linear(4, 4), r=1, alpha=1)
    with pytest.raises(RuntimeError, match="not merged"):
        layer.unmerge()
    layer.merge()
    weight = layer.base.weight.data.copy()
    with pytest.raises(RuntimeError, match="already merged"):
        layer.merge()
    assert np.array_equal(layer.base.weight.data, weight)


# ----------------------------------------------------------------------------- bad input


def _fresh_layer():
    ln.manual_seed(0)
    return nn.Linear(6, 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"r": 0}, ValueError, "between 1 and min"),
        ({"r": -2}, ValueError, "between 1 and min"),
        ({"r": 2.5}, ValueError, "positive integer"),
        ({"r": 2.0}, ValueError, "positive integer"),
        ({"r": True}, ValueError, "positive integer"),
        ({"r": "2"}, ValueError, "positive integer"),
        ({"r": 5}, ValueError, r"min\(4, 6\) = 4"),
        ({"alpha": 0}, ValueError, "alpha"),
        ({"alpha": -1.0}, ValueError, "alpha"),
        ({"alpha": float("nan")}, ValueError, "alpha"),
        ({"alpha": float("inf")}, ValueError, "alpha"),
        ({"init": "xavier"}, ValueError, "'kaiming', 'gaussian', 'pissa'"),
        ({"dropout": 1.0}, ValueError, "dropout"),
        ({"rslora": "yes"}, ValueError, "rslora"),
        ({"adapter_name": "a.b"}, ValueError, "adapter name"),
        ({"adapter_name": "training"}, ValueError, "adapter name"),
    ],
)
def test_bad_layer_arguments_raise_and_leave_the_base_alone(kwargs, error, message):
    base = _fresh_layer()
    weight = base.weight.data.copy()
    args = {"r": 2, "alpha": 4} | kwargs
    with pytest.raises(error, match=message):
        lora.LoRALinear(base, **args)
    assert np.array_equal(base.weight.data, weight)
    assert base.weight.requires_grad and base.bias.requires_grad


def test_wrapping_a_non_linear_or_a_wrapped_layer():
    with pytest.raises(TypeError, match="wraps an nn.Linear, got LayerNorm"):
        lora.LoRALinear(nn.LayerNorm(4), r=1, alpha=1)
    layer = lora.LoRALinear(_fresh_layer(), r=1, alpha=1)
    with pytest.raises(TypeError, match="already a LoRALinear"):
        lora.LoRALinear(layer, r=1, alpha=1)


# ----------------------------------------------------------------------------- inject


def test_inject_matches_targets_as_peft():
    model = make_net()
    assert lora.inject(model, ["q"], r=2, alpha=2) == ["blocks.0.q", "blocks.1.q"]
    model = make_net()
    assert lora.inject(model, ["blocks.1.v", "head"], r=2, alpha=2) == ["blocks.1.v", "head"]
    assert isinstance(model.get_submodule("blocks.1.v"), lora.LoRALinear)
    assert isinstance(model.get_submodule("blocks.0.v"), nn.Linear)
    model = make_net()
    # "mlp.0" is a dotted tail; "0" alone would also be a tail of blocks.0 (a Block): an error
    assert lora.inject(model, ["mlp.0"], r=2, alpha=2) == ["blocks.0.mlp.0", "blocks.1.mlp.0"]
    model = make_net()
    # "lock.q" is not a whole dotted part of "blocks.0.q"
    with pytest.raises(ValueError, match="matches no module"):
        lora.inject(model, ["lock.q"], r=2, alpha=2)


def test_inject_freezes_everything_but_lora():
    model = make_net()
    lora.inject(model, ["q", "v"], r=2, alpha=2)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == [
        f"blocks.{i}.{m}.adapters.default.{w}" for i in range(2) for m in "qv" for w in "AB"
    ]


@pytest.mark.parametrize(
    ("targets", "kwargs", "message"),
    [
        (["wq"], {}, r"'wq' matches no module; the Linear layers are: \['blocks.0.q'"),
        (["norm"], {}, "a LayerNorm, not a Linear"),
        (["mlp"], {}, "a Sequential, not a Linear"),
        (["q", "nothing"], {}, "'nothing' matches no module"),
        (["q"], {"r": 7}, r"min\(6, 6\) = 6"),
        (["head"], {"r": 4}, r"min\(3, 6\) = 3"),
        (["q"], {"alpha": 0}, "alpha"),
        (["q"], {"init": "orthogonal"}, "unknown init"),
        (["q"], {"rank": 2}, "unknown arguments"),
        ([], {}, "non-empty"),
    ],
)
def test_inject_errors_leave_the_model_unchanged(targets, kwargs, message):
    model = make_net()
    before = snapshot(model)
    args = {"r": 2, "alpha": 2} | kwargs
    with pytest.raises((ValueError, TypeError), match=message):
        lora.inject(model, targets, **args)
    assert_same_snapshot(before, snapshot(model))


def test_injecting_twice_is_an_error_and_changes_nothing():
    model = make_net()
    lora.inject(model, ["q"], r=2, alpha=2)
    before = snapshot(model)
    for targets in (["q"], ["blocks.0.q"], ["v", "q"], ["base"]):
        with pytest.raises(ValueError, match="already has LoRA"):
            lora.inject(model, targets, r=2, alpha=2)
        assert_same_snapshot(before, snapshot(model))


def test_trainable_summary_in_peft_words():
    model = make_net()
    total_before = sum(p.size for p in model.parameters())
    lora.inject(model, ["q", "v"], r=2, alpha=2)
    trainable, total = lora.count_parameters(model)
    assert trainable == 4 * (2 * 6 + 6 * 2)
    assert total == total_before + trainable
    text = lora.trainable_summary(model)
    assert text == (
        f"trainable params: {trainable:,} || all params: {total:,} || "
        f"trainable%: {100 * trainable / total:.4f}"
    )
    assert re.fullmatch(
        r"trainable params: [\d,]+ \|\| all params: [\d,]+ \|\| trainable%: \d+\.\d{4}", text
    )


def test_mark_only_lora_as_trainable_bias_modes():
    model = make_net()
    lora.inject(model, ["q"], r=1, alpha=1)
    model.requires_grad_(True)
    lora.mark_only_lora_as_trainable(model, bias="lora_only")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "blocks.0.q.base.bias" in trainable and "blocks.0.v.bias" not in trainable
    lora.mark_only_lora_as_trainable(model, bias="all")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "blocks.0.v.bias" in trainable and "blocks.0.v.weight" not in trainable
    with pytest.raises(ValueError, match="bias must be"):
        lora.mark_only_lora_as_trainable(model, bias="some")
    assert len(lora.lora_parameters(model)) == 4


# ----------------------------------------------------------------------------- several adapters


def test_adapters_add_switch_disable_delete_on_a_layer():
    ln.manual_seed(0)
    layer = lora.LoRALinear(nn.Linear(6, 5, dtype="float64"), r=2, alpha=2)
    x = inputs((3, 6), "float64")
    base_out = layer.base(x).data.copy()
    layer.B.data[:] = 1.0
    first = layer(x).data.copy()
    second = layer.add_adapter("task_b", r=3, alpha=6)
    assert layer.adapter_names == ["default", "task_b"]
    assert layer.active_adapter == "default" and not second.A.requires_grad  # added inactive
    second.B.data[:] = -2.0
    layer.set_adapter("task_b")
    assert layer.r == 3 and layer.scaling == 2.0 and layer.A is second.A
    assert second.A.requires_grad and not layer.adapters["default"].A.requires_grad
    expected = base_out + 2.0 * (x.data @ second.A.data.T) @ second.B.data.T
    np.testing.assert_allclose(layer(x).data, expected, atol=1e-12)
    with layer.disable_adapters():
        assert np.array_equal(layer(x).data, base_out)
    assert not np.array_equal(layer(x).data, base_out)  # enabled again
    layer.delete_adapter("task_b")  # the active one: the first remaining becomes active
    assert layer.active_adapter == "default" and layer.A.requires_grad
    assert np.array_equal(layer(x).data, first)
    with pytest.raises(KeyError, match=r"no adapter named 'nope'; this layer has \['default'\]"):
        layer.set_adapter("nope")
    with pytest.raises(ValueError, match="only adapter"):
        layer.delete_adapter("default")
    with pytest.raises(ValueError, match="already has an adapter named 'default'"):
        layer.add_adapter("default", r=1, alpha=1)


def test_adapter_rules_while_merged():
    ln.manual_seed(0)
    layer = lora.LoRALinear(nn.Linear(6, 5), r=2, alpha=2)
    layer.add_adapter("other", r=1, alpha=1)
    layer.merge()
    for action in (
        lambda: layer.set_adapter("other"),
        lambda: layer.delete_adapter("default"),
        lambda: layer.disable_adapters().__enter__(),
        lambda: layer.add_adapter("p", r=1, alpha=1, init="pissa"),
    ):
        with pytest.raises(RuntimeError, match="unmerge"):
            action()
    assert layer.active_adapter == "default" and layer.merged
    layer.set_adapter("default")  # re-selecting the merged adapter is fine
    layer.add_adapter("new", r=1, alpha=1)  # adding an inactive one is fine
    layer.delete_adapter("other")  # deleting an inactive one is fine
    layer.unmerge()
    layer.set_adapter("new")


def test_model_level_adapter_functions():
    model = make_net("float64")
    x = inputs(dtype="float64")
    base_out = model(x).data.copy()
    lora.inject(model, ["q", "v"], r=2, alpha=2)
    randomise_B(model, seed=3)
    out_default = model(x).data.copy()
    assert lora.add_adapter(model, "b", r=1, alpha=2, targets=["q"]) == ["blocks.0.q", "blocks.1.q"]
    with pytest.raises(KeyError, match="blocks.0.v: no adapter named 'b'"):
        lora.set_adapter(model, "b")
    lora.add_adapter(model, "c", r=2, alpha=2)
    lora.set_adapter(model, "c")
    assert np.array_equal(model(x).data, base_out)  # c's B is zero
    with lora.disable_adapters(model):
        assert np.array_equal(model(x).data, base_out)
    lora.set_adapter(model, "default")
    assert np.array_equal(model(x).data, out_default)
    with lora.disable_adapters(model):
        assert np.array_equal(model(x).data, base_out)
    assert np.array_equal(model(x).data, out_default)
    lora.delete_adapter(model, "b")
    assert all(layer.adapter_names == ["default", "c"] for _, layer in lora.lora_layers(model))
    with pytest.raises(KeyError, match=r"no adapter named 'b'; the model has \['c', 'default'\]"):
        lora.delete_adapter(model, "b")
    lora.merge_adapter(model)
    np.testing.assert_allclose(model(x).data, out_default, atol=1e-12)
    with pytest.raises(RuntimeError, match="merged"):
        with lora.disable_adapters(model):
            pass
    with pytest.raises(RuntimeError, match="unmerge"):
        lora.set_adapter(model, "c")
    lora.unmerge_adapter(model)
    np.testing.assert_allclose(model(x).data, out_default, atol=1e-12)


def test_model_level_add_adapter_checks_every_layer_first():
    model = make_net()
    lora.inject(model, ["q", "head"], r=2, alpha=2)
    before = snapshot(model)
    with pytest.raises(
        ValueError, match=r"head: LoRA rank r must be between 1 and min\(d, k\) = min\(3, 6\)"
    ):
        lora.add_adapter(model, "big", r=4, alpha=4)  # fits q (6x6) but not head (3x6)
    assert_same_snapshot(before, snapshot(model))


def test_merge_and_unload_and_unload():
    model = make_net("float64")
    x = inputs(dtype="float64")
    base_out = model(x).data.copy()
    lora.inject(model, ["q", "v", "head"], r=2, alpha=2)
    randomise_B(model)
    adapted = model(x).data.copy()
    merged = lora.merge_and_unload(model)
    assert not lora.lora_layers(merged)
    assert type(merged.get_submodule("blocks.0.q")) is nn.Linear
    np.testing.assert_allclose(merged(x).data, adapted, atol=1e-12)

    model = make_net("float64")
    lora.inject(model, ["q"], r=2, alpha=2)
    randomise_B(model)
    lora.merge_adapter(model)
    lora.unload(model)
    np.testing.assert_allclose(model(x).data, base_out, atol=1e-12)


# ----------------------------------------------------------------------------- combining


def _two_adapter_layer(r1=2, r2=3):
    ln.manual_seed(0)
    layer = lora.LoRALinear(nn.Linear(8, 7, dtype="float64"), r=r1, alpha=4)
    layer.add_adapter("b", r=r2, alpha=3, rslora=True)
    rng = np.random.default_rng(5)
    for name in ("default", "b"):
        adapter = layer.adapters[name]
        adapter.B.data = rng.standard_normal(adapter.B.shape)
    return layer


def test_combine_cat_is_exact():
    layer = _two_adapter_layer()
    expected = 0.7 * layer.delta_weight("default") - 0.4 * layer.delta_weight("b")
    lora.combine_adapters(layer, ["default", "b"], [0.7, -0.4], how="cat", new_name="mix")
    assert layer.adapters["mix"].r == 5 and layer.adapters["mix"].scaling == 1.0
    np.testing.assert_allclose(layer.delta_weight("mix"), expected, atol=1e-12)
    assert layer.active_adapter == "default"  # added inactive


def test_combine_svd_is_the_best_approximation_of_the_sum():
    layer = _two_adapter_layer()
    total = 0.5 * layer.delta_weight("default") + 0.5 * layer.delta_weight("b")
    lora.combine_adapters(layer, ["default", "b"], [0.5, 0.5], how="svd", new_name="svd2", rank=2)
    np.testing.assert_allclose(
        layer.delta_weight("svd2"), analysis.best_rank_approximation(total, 2), atol=1e-12
    )


def test_combine_linear_and_its_errors():
    layer = _two_adapter_layer(2, 2)
    lora.combine_adapters(layer, ["default", "b"], [1.0, 0.0], how="linear", new_name="lin")
    np.testing.assert_allclose(layer.delta_weight("lin"), layer.delta_weight("default"), atol=1e-12)
    before = layer.adapter_names
    with pytest.raises(ValueError, match="equal rank"):
        lora.combine_adapters(
            _two_adapter_layer(2, 3), ["default", "b"], [1, 1], how="linear", new_name="x"
        )
    with pytest.raises(KeyError, match="nope"):
        lora.combine_adapters(layer, ["default", "nope"], [1, 1], new_name="x")
    with pytest.raises(ValueError, match="how must be"):
        lora.combine_adapters(layer, ["default"], [1], how="dare_linear", new_name="x")
    with pytest.raises(ValueError, match="one weight per adapter"):
        lora.combine_adapters(layer, ["default", "b"], [1], new_name="x")
    assert layer.adapter_names == before


def test_combine_on_a_model():
    model = make_net("float64")
    lora.inject(model, ["q"], r=2, alpha=2)
    lora.add_adapter(model, "other", r=2, alpha=2)
    randomise_B(model)
    assert lora.combine_adapters(model, ["default", "other"], [1, 1], new_name="sum") == [
        "blocks.0.q",
        "blocks.1.q",
    ]
    for _, layer in lora.lora_layers(model):
        np.testing.assert_allclose(
            layer.delta_weight("sum"), layer.delta_weight("default"), atol=1e-12
        )


def test_inject_returns_names_in_model_order():
    model = make_net()
    assert lora.inject(model, ["v", "q"], r=1, alpha=1) == [
        "blocks.0.q",
        "blocks.0.v",
        "blocks.1.q",
        "blocks.1.v",
    ]


def test_lora_and_analysis_on_each_backend(backend_name, tmp_path):
    """The same checks with arrays of the active backend (CuPy too when a GPU is present)."""
    from lora_np import backend

    ln.manual_seed(0)
    model = Net(dtype="float64")
    x = ln.Tensor(np.random.default_rng(1).standard_normal((4, 6)))
    before = backend.to_numpy(model(x).data)
    lora.inject(model, ["q", "v"], r=2, alpha=4)
    assert np.array_equal(backend.to_numpy(model(x).data), before)
    layer = model.get_submodule("blocks.0.q")
    layer.B.data = backend.xp.ones(layer.B.shape)
    adapted = backend.to_numpy(model(x).data)
    (model(x) ** 2).mean().backward()
    assert layer.A.grad is not None and layer.base.weight.grad is None
    lora.merge_adapter(model)
    np.testing.assert_allclose(backend.to_numpy(model(x).data), adapted, atol=1e-12)
    lora.unmerge_adapter(model)
    lora.save_adapter(model, tmp_path / "a")
    ln.manual_seed(0)
    fresh = Net(dtype="float64")
    lora.load_adapter(fresh, tmp_path / "a")
    np.testing.assert_allclose(backend.to_numpy(fresh(x).data), adapted, atol=1e-12)
    pissa = lora.LoRALinear(nn.Linear(6, 5, dtype="float64"), r=2, alpha=2, init="pissa")
    delta = pissa.delta_weight()
    assert backend.array_module(delta) == backend_name
    assert analysis.energy_rank(delta, 1.0) == 2
    assert analysis.eckart_young_error(delta, 2) < 1e-12
    assert analysis.subspace_similarity(pissa.A.data, pissa.A.data, 2, 2) == pytest.approx(1.0)


def test_set_scale_dials_the_update_and_is_refused_while_merged():
    ln.manual_seed(0)
    layer = lora.LoRALinear(ln.nn.Linear(6, 5, dtype="float64"), r=2, alpha=4)
    layer.B.data[...] = ln.backend.rng().standard_normal(layer.B.shape)
    x = ln.Tensor(ln.backend.rng().standard_normal((3, 6)))
    with layer.disable_adapters():
        base_out = layer(x).data.copy()
    full_out = layer(x).data.copy()
    layer.set_scale("default", 0.0)
    assert np.array_equal(layer(x).data, base_out)
    layer.set_scale("default", 0.5)
    np.testing.assert_allclose(layer(x).data, base_out + 0.5 * (full_out - base_out), atol=1e-12)
    layer.set_scale("default", 1.0)
    layer.merge()
    with pytest.raises(RuntimeError, match="unmerge"):
        layer.set_scale("default", 2.0)
    assert layer.scaling == 2.0  # alpha / r, unchanged by the refused call
    with pytest.raises(ValueError, match="real number"):
        layer.set_scale("default", "big")


# --------------------------------------------------------------------------- all-linear
def _gpt_for_all_linear():
    from lora_np.transformer import GPT, GPTConfig

    ln.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, block_size=8, n_embd=16, n_head=2, n_layer=2))


def test_all_linear_targets_every_linear_but_the_output_head():
    model = _gpt_for_all_linear()
    linear = [n for n, m in model.named_modules() if isinstance(m, ln.nn.Linear)]
    names = lora.inject(model, "all-linear", r=2, alpha=4)
    assert "head" in linear and "head" not in names
    assert names == [n for n in linear if n != "head"]
    assert len(names) == 2 * 6  # q, k, v, o, fc, proj in each of 2 blocks
    assert isinstance(model.head, ln.nn.Linear)  # untouched, and frozen like the rest
    assert not model.head.weight.requires_grad


def test_all_linear_on_a_quantised_base_and_on_a_model_without_an_output_name():
    model = _gpt_for_all_linear()
    ln.quantized.quantize_model(model)  # keeps the head in float
    assert len(lora.inject(model, "all-linear", r=2, alpha=4)) == 12
    plain = ln.nn.Sequential(ln.nn.Linear(3, 4), ln.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="output_layer_name"):
        lora.inject(plain, "all-linear", r=1, alpha=1)
    assert not any(isinstance(m, lora.LoRALinear) for _, m in plain.named_modules())


def test_all_linear_twice_is_refused_as_injecting_twice():
    model = _gpt_for_all_linear()
    lora.inject(model, "all-linear", r=2, alpha=4)
    with pytest.raises(ValueError, match="already has LoRA"):
        lora.inject(model, "all-linear", r=2, alpha=4)


def test_an_all_linear_adapter_saves_and_loads_back(tmp_path):
    model = _gpt_for_all_linear()
    lora.inject(model, "all-linear", r=2, alpha=4)
    for _, layer in lora.lora_layers(model):
        layer.B.data[...] = 0.01
    lora.save_adapter(model, tmp_path / "a")
    again = _gpt_for_all_linear()
    lora.load_adapter(again, tmp_path / "a")
    names = [n for n, _ in lora.lora_layers(again)]
    assert names == [n for n, _ in lora.lora_layers(model)] and "head" not in names
    idx = np.arange(8)[None, :] % 11
    np.testing.assert_allclose(again(idx)[0].data, model(idx)[0].data, rtol=1e-6, atol=1e-6)
