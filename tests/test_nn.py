"""Layers and Module bookkeeping: init, names, modes, freezing, state dicts, dtype."""

from __future__ import annotations

import math

import numpy as np
import pytest

import lora_np as ln
from lora_np import backend, nn
from lora_np import functional as F

# Every test runs twice: with the fast paths and in plain mode (conftest.engine_mode).
pytestmark = pytest.mark.usefixtures("engine_mode")


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.fc(self.norm(x)))


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(5, 4)
        self.scale = nn.Parameter(np.ones(4, dtype=np.float32))
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Sequential(nn.Linear(4, 3), nn.GELU(), nn.Linear(3, 2, bias=False))

    def forward(self, idx):
        x = self.emb(idx) * self.scale  # (*S, 4)
        for block in self.blocks:
            x = x + block(x)
        return self.head(x)  # (*S, 2)


EXPECTED_NAMES = [
    "scale",
    "emb.weight",
    "blocks.0.norm.weight",
    "blocks.0.norm.bias",
    "blocks.0.fc.weight",
    "blocks.0.fc.bias",
    "blocks.1.norm.weight",
    "blocks.1.norm.bias",
    "blocks.1.fc.weight",
    "blocks.1.fc.bias",
    "head.0.weight",
    "head.0.bias",
    "head.2.weight",
]


# ------------------------------------------------------------------------ Linear
def test_linear_shapes_dtype_and_forward():
    layer = nn.Linear(3, 5)
    assert layer.weight.shape == (5, 3) and layer.bias.shape == (5,)
    assert layer.weight.dtype == np.float32 and layer.weight.requires_grad
    assert isinstance(layer.weight, nn.Parameter)
    x = np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)
    out = layer(ln.Tensor(x))
    assert out.shape == (2, 4, 5)
    np.testing.assert_allclose(
        out.numpy(), x @ layer.weight.numpy().T + layer.bias.numpy(), rtol=1e-5
    )
    assert nn.Linear(3, 5, bias=False).bias is None
    assert nn.Linear(3, 5, dtype="float64").weight.dtype == np.float64
    assert "in_features=3" in repr(layer)


@pytest.mark.parametrize("in_features", [1, 16, 300])
def test_linear_init_is_uniform_within_one_over_sqrt_fan_in(in_features):
    ln.manual_seed(0)
    out_features = 60_000 // in_features
    layer = nn.Linear(in_features, out_features)
    bound = 1 / math.sqrt(in_features)
    for p in (layer.weight.numpy().ravel(), layer.bias.numpy()):
        assert np.all(np.abs(p) <= bound)
    w = layer.weight.numpy().ravel().astype(np.float64)
    assert w.min() < -0.99 * bound and w.max() > 0.99 * bound  # fills the interval
    assert abs(w.mean()) < 0.02 * bound
    assert abs(w.var() / (bound**2 / 3) - 1) < 0.03  # the variance of U(-b, b)
    counts, _ = np.histogram(w, bins=10, range=(-bound, bound))
    assert np.all(np.abs(counts / w.size - 0.1) < 0.01)  # flat, not normal


def test_linear_init_is_seeded():
    ln.manual_seed(1)
    a = nn.Linear(4, 3).weight.numpy()
    ln.manual_seed(1)
    np.testing.assert_array_equal(nn.Linear(4, 3).weight.numpy(), a)


@pytest.mark.parametrize("bad", [0, -2, 2.5, "3"])
def test_linear_rejects_bad_sizes(bad):
    with pytest.raises(ValueError, match=repr(bad).replace("(", r"\(")):
        nn.Linear(bad, 3)


# ------------------------------------------------------------------------ other layers
def test_embedding_layer_norm_dropout_gelu_relu():
    ln.manual_seed(0)
    emb = nn.Embedding(5, 3)
    assert emb.weight.shape == (5, 3) and emb.weight.dtype == np.float32
    out = emb(np.array([[0, 4], [4, 4]]))
    np.testing.assert_array_equal(out.numpy()[1, 0], emb.weight.numpy()[4])

    norm = nn.LayerNorm(3)
    np.testing.assert_array_equal(norm.weight.numpy(), 1)
    np.testing.assert_array_equal(norm.bias.numpy(), 0)
    y = norm(ln.Tensor(np.array([[1.0, 2.0, 3.0]], dtype=np.float32))).numpy()
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-6)
    np.testing.assert_allclose(y.var(-1), 1, atol=1e-4)

    x = ln.Tensor(np.ones((20, 20), dtype=np.float32))
    drop = nn.Dropout(0.5)
    assert (drop(x).numpy() == 0).any()
    drop.eval()
    assert drop(x) is x or np.array_equal(drop(x).numpy(), x.numpy())
    with pytest.raises(ValueError, match="1.5"):
        nn.Dropout(1.5)

    z = ln.Tensor([-1.0, 2.0])
    np.testing.assert_array_equal(nn.ReLU()(z).numpy(), [0.0, 2.0])
    np.testing.assert_array_equal(nn.GELU()(z).numpy(), F.gelu(z).numpy())


def test_model_forward_and_backward_reach_every_parameter():
    model = Model().eval()
    out = model(np.array([[0, 1, 4]]))
    assert out.shape == (1, 3, 2)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


def test_module_without_forward_says_so():
    with pytest.raises(NotImplementedError, match="Block2"):
        type("Block2", (nn.Module,), {})()(1)


# ------------------------------------------------------------------------ names and traversal
def test_named_parameters_names_and_order():
    model = Model()
    names = [name for name, _ in model.named_parameters()]
    assert names == EXPECTED_NAMES
    assert [id(p) for p in model.parameters()] == [id(p) for _, p in model.named_parameters()]
    assert model.blocks[1].fc.weight is dict(model.named_parameters())["blocks.1.fc.weight"]


def test_module_list_and_sequential_name_children_by_index():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert [n for n, _ in seq.named_children()] == ["0", "1", "2"]
    assert len(seq) == 3 and isinstance(seq[-1], nn.Linear) and seq[1] is list(seq)[1]
    with pytest.raises(IndexError, match="3"):
        seq[3]
    with pytest.raises(TypeError, match="int"):
        nn.ModuleList([nn.ReLU(), 3])
    x = ln.Tensor(np.ones((4, 2), dtype=np.float32))
    expected = seq[2](seq[1](seq[0](x)))
    np.testing.assert_array_equal(seq(x).numpy(), expected.numpy())


def test_named_modules_and_get_submodule():
    model = Model()
    names = [n for n, _ in model.named_modules()]
    assert names[:4] == ["", "emb", "blocks", "blocks.0"]
    assert "blocks.1.fc" in names and "head.2" in names
    assert model.get_submodule("blocks.1.fc") is model.blocks[1].fc
    assert model.get_submodule("") is model
    with pytest.raises(AttributeError, match="blocks.7"):
        model.get_submodule("blocks.7")


def test_replacing_a_child_with_setattr_renames_nothing_else():
    model = Model()
    model.blocks[0].fc = nn.Linear(4, 4, bias=False)
    names = [n for n, _ in model.named_parameters()]
    assert "blocks.0.fc.bias" not in names and names.index("blocks.0.fc.weight") == 4


# ------------------------------------------------------------------------ modes and freezing
def test_train_and_eval_reach_every_module():
    model = Model()
    assert all(m.training for _, m in model.named_modules())
    assert model.eval() is model
    assert not any(m.training for _, m in model.named_modules())
    model.blocks.train()
    assert model.blocks[0].drop.training and not model.training
    model.train()
    assert all(m.training for _, m in model.named_modules())


def test_requires_grad_freezes_and_counts():
    model = Model()
    total = sum(p.size for p in model.parameters())
    assert model.num_parameters() == total == model.num_parameters(trainable_only=True)
    assert model.requires_grad_(False) is model
    assert not any(p.requires_grad for p in model.parameters())
    assert model.num_parameters(trainable_only=True) == 0
    model.head.requires_grad_(True)
    assert model.num_parameters(trainable_only=True) == 4 * 3 + 3 + 3 * 2
    assert model.num_parameters() == total


def test_frozen_layer_parameters_get_no_gradient():
    ln.manual_seed(0)
    layer = nn.Linear(3, 2)
    layer.weight.requires_grad_(False)
    x = ln.Tensor(np.ones((4, 3), dtype=np.float32), requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is None
    np.testing.assert_array_equal(layer.bias.grad, [4, 4])
    assert x.grad is not None
    layer.zero_grad()
    assert layer.bias.grad is None


# ------------------------------------------------------------------------ state dicts
def test_state_dict_round_trip():
    ln.manual_seed(0)
    source = Model()
    ln.manual_seed(1)
    target = Model()
    state = source.state_dict()
    assert list(state) == EXPECTED_NAMES
    target.load_state_dict(state)
    for (name, p), (_, q) in zip(source.named_parameters(), target.named_parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)
        assert p.data is not q.data  # copied, not shared
    state["scale"][:] = 5  # the loaded model does not follow later edits of the dict
    assert target.scale.numpy()[0] == 1


def test_load_state_dict_lists_every_problem_and_changes_nothing():
    model = Model()
    model.head[0].weight.grad = np.ones((3, 4), dtype=np.float32)
    before = {n: (p.data, p.numpy().copy()) for n, p in model.named_parameters()}
    state = {n: np.zeros(a.shape, a.dtype) for n, a in model.state_dict().items()}
    del state["blocks.0.fc.bias"], state["head.2.weight"]
    state["blocks.9.fc.weight"] = np.zeros((3, 4))
    state["emb.weight"] = np.zeros((6, 4))
    with pytest.raises(KeyError) as info:
        model.load_state_dict(state)
    message = str(info.value)
    for expected in (
        "blocks.0.fc.bias",
        "head.2.weight",
        "blocks.9.fc.weight",
        "emb.weight",
        "(6, 4)",
        "(5, 4)",
        "missing",
        "unexpected",
    ):
        assert expected in message, expected
    for n, p in model.named_parameters():  # untouched: same arrays, same values
        assert p.data is before[n][0]
        np.testing.assert_array_equal(p.numpy(), before[n][1])
    assert model.head[0].weight.grad is not None


def test_load_state_dict_non_strict_loads_what_matches():
    model = Model()
    state = {"scale": np.full(4, 2.0), "unknown.weight": np.zeros(1)}
    model.load_state_dict(state, strict=False)
    np.testing.assert_array_equal(model.scale.numpy(), 2.0)
    assert model.scale.dtype == np.float32  # the model's dtype is kept
    with pytest.raises(KeyError, match="scale"):
        model.load_state_dict({"scale": np.zeros(3)}, strict=False)  # shapes still checked


def test_to_float64_casts_every_parameter():
    model = Model()
    model.head[0].weight.grad = np.ones((3, 4), dtype=np.float32)
    assert model.to(np.float64) is model
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    out = model(np.array([0, 1]))
    assert out.dtype == np.float64
    out.sum().backward()
    assert all(p.grad.dtype == np.float64 for p in model.parameters())


def test_layers_on_every_backend(backend_name):
    ln.manual_seed(0)
    seq = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.LayerNorm(4), nn.Linear(4, 2))
    x = ln.Tensor(np.ones((2, 3), dtype=np.float32))
    out = seq(x)
    assert backend.array_module(out.data) == backend_name
    out.sum().backward()
    assert all(backend.array_module(p.grad) == backend_name for p in seq.parameters())
    clone = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.LayerNorm(4), nn.Linear(4, 2))
    clone.load_state_dict(seq.state_dict())
    np.testing.assert_array_equal(clone(x).numpy(), out.numpy())


def test_a_module_shared_by_two_paths_is_listed_and_stepped_once():
    shared = ln.nn.Linear(3, 3)
    model = ln.nn.Sequential(shared, shared)
    names = [name for name, _ in model.named_parameters()]
    assert names == ["0.weight", "0.bias"]
    assert model.num_parameters() == 12
    assert [name for name, _ in model.named_modules()] == ["", "0"]


def test_a_parameter_copies_the_array_it_is_made_from():
    w0 = np.ones((2, 2), dtype=np.float32)
    p = ln.nn.Parameter(w0)
    p.grad = np.ones_like(w0)
    ln.optim.SGD([p], lr=0.5).step()
    assert np.array_equal(w0, np.ones((2, 2), dtype=np.float32))
    assert np.array_equal(p.data, np.full((2, 2), 0.5, dtype=np.float32))


def test_set_submodule_replaces_the_module_at_a_dotted_name():
    model = ln.nn.Sequential(ln.nn.Linear(3, 4), ln.nn.Linear(4, 2))
    names = [n for n, _ in model.named_modules() if n]
    new = ln.nn.Linear(4, 2)
    model.set_submodule(names[-1], new)
    assert model.get_submodule(names[-1]) is new
    with pytest.raises(AttributeError, match="no sub-module"):
        model.set_submodule("missing.child", new)


@pytest.mark.parametrize(
    "name, entry, expected",
    [
        ("blocks.0.attn.q", "q", True),
        ("blocks.0.attn.q", "attn.q", True),
        ("q", "q", True),
        ("blocks.0.attn.qq", "q", False),
        ("blocks.0.attn.q.x", "q", False),
    ],
)
def test_name_matches_is_peft_rule(name, entry, expected):
    assert ln.nn.name_matches(name, entry) is expected
