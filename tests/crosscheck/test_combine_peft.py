"""combine_adapters against PEFT's ``add_weighted_adapter`` (``make crosscheck``).

The same model gets the same three adapters in lora_np and in PEFT (ranks 2, 3, 2; alphas 3, 5,
7, so three different scalings; random A and B), is combined both ways, and the new adapter's
ΔW on every layer and the model's output with it active must agree to 1e-12 (relative) in
float64. Where we differ from PEFT on purpose, a test computes PEFT's result and pins the
difference exactly. Every claim about PEFT here was measured with PEFT 0.21.2.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
from packaging.version import Version

import lora_np as ln
from lora_np import analysis, lora, nn

pytestmark = pytest.mark.crosscheck

C, OUT = 12, 8  # q and v are (12, 12), head is (8, 12): the sum of all three ranks (7) fits
TARGETS = ["q", "v", "head"]
ADAPTERS = {"default": (2, 3.0), "b": (3, 5.0), "c": (2, 7.0)}  # name: (r, alpha)
# The newest PEFT measured to give a combined adapter the scaling sqrt(r) when the FIRST source
# adapter uses rsLoRA (it copies use_rslora into the new config, whose alpha is r).
LAST_PEFT_WITH_RSLORA_OVERSCALE = Version("0.21.2")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.q = nn.Linear(C, C, dtype="float64")
        self.v = nn.Linear(C, C, dtype="float64")
        self.head = nn.Linear(C, OUT, dtype="float64")

    def forward(self, x):
        return self.head(x + self.q(x) * self.v(x))


def torch_net(torch):
    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Linear(C, C)
            self.v = torch.nn.Linear(C, C)
            self.head = torch.nn.Linear(C, OUT)

        def forward(self, x):
            return self.head(x + self.q(x) * self.v(x))

    torch.manual_seed(0)
    return TorchNet().to(torch.float64)


def peft_layers(peft_model):
    return {
        name.removeprefix("base_model.model."): m
        for name, m in peft_model.named_modules()
        if hasattr(m, "lora_A")
    }


def build(torch, peft, rslora=(False, False, False)):
    """(lora_np model, PEFT model): the same base and the same adapters default, b, c."""
    reference = torch_net(torch)
    model = Net()
    params = dict(model.named_parameters())
    for name, p in reference.named_parameters():
        params[name].data = p.detach().numpy().copy()
    peft_model = None
    for (name, (r, alpha)), rs in zip(ADAPTERS.items(), rslora):
        config = peft.LoraConfig(r=r, lora_alpha=alpha, target_modules=TARGETS, use_rslora=rs)
        if peft_model is None:
            peft_model = peft.get_peft_model(reference, config)
            lora.inject(model, TARGETS, r=r, alpha=alpha, rslora=rs)
        else:
            peft_model.add_adapter(name, config)
            lora.add_adapter(model, name, r=r, alpha=alpha, rslora=rs)
    rng = np.random.default_rng(4)
    theirs = peft_layers(peft_model)
    with torch.no_grad():
        for layer_name, layer in lora.lora_layers(model):
            for name in ADAPTERS:  # both factors random, so every ΔW and every TIES step matters
                adapter = layer.adapters[name]
                adapter.A.data = rng.standard_normal(adapter.A.shape) / math.sqrt(C)
                adapter.B.data = rng.standard_normal(adapter.B.shape)
                theirs[layer_name].lora_A[name].weight.copy_(torch.from_numpy(adapter.A.data))
                theirs[layer_name].lora_B[name].weight.copy_(torch.from_numpy(adapter.B.data))
    return model, peft_model


@contextlib.contextmanager
def float64_default(torch):
    """PEFT turns the weights into ``torch.tensor(weights)`` for linear, svd and ties: in
    torch's default dtype, float32 unless changed, which rounds them to 7 digits even in a
    float64 model (pinned in test_peft_rounds_the_weights_to_float32)."""
    saved = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def peft_delta(peft_model, layer_name, name):
    return peft_layers(peft_model)[layer_name].get_delta_weight(name).detach().numpy()


def outputs(torch, model, peft_model, name):
    """Both models' outputs (7, OUT) with adapter ``name`` active."""
    x = np.random.default_rng(3).standard_normal((7, C))
    lora.set_adapter(model, name)
    peft_model.set_adapter(name)
    with torch.no_grad():
        theirs = peft_model(torch.from_numpy(x)).numpy()
    return model(ln.Tensor(x)).data, theirs


def assert_close(ours, theirs, rel=1e-12):
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=rel * np.abs(theirs).max())


CASES = [  # how, names, weights, rank, density
    ("cat", ["default", "b"], [1.0, 1.0], None, None),
    ("cat", ["default", "b", "c"], [0.7, -0.4, 1.3], None, None),
    ("cat", ["b"], [-2.0], None, None),  # one adapter: PEFT switches to linear; the same ΔW
    ("linear", ["default", "c"], [1.0, 1.0], None, None),
    ("linear", ["default", "c"], [0.7, -0.4], None, None),
    ("linear", ["c", "default"], [-1.5, 0.25], None, None),
    ("svd", ["default", "b"], [1.0, 1.0], None, None),  # default rank: max(2, 3) = 3
    ("svd", ["default", "b", "c"], [0.7, -0.4, 1.3], None, None),
    ("svd", ["default", "b", "c"], [0.7, -0.4, 1.3], 2, None),
    ("svd", ["b", "c", "default"], [1.3, 0.7, -0.4], 7, None),  # the sum's full rank: exact
    ("ties", ["default", "c"], [1.0, 1.0], None, 0.5),
    ("ties", ["default", "c"], [0.7, -0.4], None, 0.3),
    ("ties", ["c", "default"], [1.0, 0.5], None, 1.0),  # no trimming: signs and means only
    ("ties_svd", ["default", "b", "c"], [0.7, -0.4, 1.3], None, 0.6),
    ("ties_svd", ["default", "b"], [1.0, 1.0], 2, 0.4),
]


@pytest.mark.filterwarnings("ignore:The density 1.0 is greater:UserWarning")  # PEFT's, at 1.0
@pytest.mark.parametrize("rslora", [(False,) * 3, (False, True, True), (True,) * 3])
@pytest.mark.parametrize("how, names, weights, rank, density", CASES)
def test_combined_adapter_matches_peft(torch, peft, rslora, how, names, weights, rank, density):
    model, peft_model = build(torch, peft, rslora)
    lora.combine_adapters(model, names, weights, how, "new", rank=rank, density=density)
    with float64_default(torch):
        peft_model.add_weighted_adapter(
            names, weights, "new", combination_type=how, svd_rank=rank, density=density
        )
    config = peft_model.peft_config["new"]
    # PEFT's new adapter: alpha = r, so scaling 1, except that it copies use_rslora from the
    # first source adapter, and then its scaling is r / sqrt(r) = sqrt(r) (pinned below).
    assert config.lora_alpha == config.r
    assert config.use_rslora == rslora[list(ADAPTERS).index(names[0])]
    overscale = math.sqrt(config.r) if config.use_rslora else 1.0
    factor = peft_layers(peft_model)["q"].scaling["new"]
    if Version(peft.__version__) <= LAST_PEFT_WITH_RSLORA_OVERSCALE:
        assert factor == pytest.approx(overscale, rel=1e-15)
    else:  # a later PEFT may have fixed it (huggingface/peft#3449)
        assert factor in (pytest.approx(1.0, rel=1e-15), pytest.approx(overscale, rel=1e-15))
    for layer_name, layer in lora.lora_layers(model):
        adapter = layer.adapters["new"]
        assert (adapter.r, adapter.alpha, adapter.scaling) == (config.r, config.r, 1.0)
        assert peft_layers(peft_model)[layer_name].scaling["new"] == factor
        ours = layer.delta_weight("new")
        assert np.abs(ours).max() > 0.1  # a real update, not zeros on both sides
        assert_close(factor * ours, peft_delta(peft_model, layer_name, "new"))
    for _, layer in lora.lora_layers(model):
        layer.adapters["new"].scaling = factor  # PEFT's output is ours at PEFT's scaling
    assert_close(*outputs(torch, model, peft_model, "new"))


def test_peft_svd_scales_each_adapter_once(torch, peft):
    """A review read PEFT's svd path as scaling each adapter twice: it does not.

    PEFT's ΔW_svd (rank 7, the sum's full rank) = sum_i w_i s_i B_i A_i, as ours; the
    twice-scaled sum_i w_i s_i² B_i A_i is far from it (the scalings are 1.5, 5/3 and 3.5).
    Only the split differs: PEFT's A = V^T has orthonormal rows and B = U S, ours share
    sqrt(S), so ours have A A^T = B^T B = diag(S); B A is the same.
    """
    model, peft_model = build(torch, peft)
    names, weights = ["default", "b", "c"], [0.7, -0.4, 1.3]
    with float64_default(torch):
        peft_model.add_weighted_adapter(names, weights, "new", "svd", svd_rank=7)
    lora.combine_adapters(model, names, weights, "svd", "new", rank=7)
    for layer_name, layer in lora.lora_layers(model):
        parts = [(w, layer.adapters[n]) for n, w in zip(names, weights)]
        once = sum(w * a.scaling * a.B.data @ a.A.data for w, a in parts)
        twice = sum(w * a.scaling**2 * a.B.data @ a.A.data for w, a in parts)
        theirs = peft_delta(peft_model, layer_name, "new")
        assert_close(once, theirs)
        assert_close(layer.delta_weight("new"), theirs)
        assert np.linalg.norm(twice - theirs) > 0.3 * np.linalg.norm(theirs)
        A_theirs = peft_layers(peft_model)[layer_name].lora_A["new"].weight.detach().numpy()
        np.testing.assert_allclose(A_theirs @ A_theirs.T, np.eye(7), atol=1e-12)
        A, B = layer.adapters["new"].A.data, layer.adapters["new"].B.data
        S = np.linalg.svd(once, compute_uv=False)[:7]
        np.testing.assert_allclose(A @ A.T, np.diag(S), atol=1e-11 * S[0])
        np.testing.assert_allclose(B.T @ B, np.diag(S), atol=1e-11 * S[0])


def test_peft_overscales_when_the_first_adapter_uses_rslora(torch, peft):
    """Combining ONE rsLoRA adapter (r = 3) with weight 1 must give it back. PEFT 0.21 gives
    sqrt(3) times it: the new config copies use_rslora, so its scaling is 3 / sqrt(3); ours
    keeps scaling 1 and gives it back exactly. Pinned for every PEFT up to the one measured."""
    if Version(peft.__version__) > LAST_PEFT_WITH_RSLORA_OVERSCALE:
        pytest.skip(f"measured up to PEFT {LAST_PEFT_WITH_RSLORA_OVERSCALE}")
    model, peft_model = build(torch, peft, (True,) * 3)
    for how in ("cat", "linear", "svd"):
        with float64_default(torch):
            peft_model.add_weighted_adapter(["b"], [1.0], how, combination_type=how)
        lora.combine_adapters(model, ["b"], [1.0], how, how)
        for layer_name, layer in lora.lora_layers(model):
            original = peft_delta(peft_model, layer_name, "b")
            assert_close(layer.delta_weight(how), original)
            assert_close(peft_delta(peft_model, layer_name, how), math.sqrt(3) * original)


def test_peft_single_adapter_and_default_choices(torch, peft):
    """One adapter: PEFT always uses "linear" at the adapter's rank and ignores svd_rank; ours
    honours how="svd" with rank=1 (the best rank-1 approximation). PEFT's default
    combination_type is "svd" at the largest rank; ours is "cat" (exact)."""
    model, peft_model = build(torch, peft)
    with float64_default(torch):
        peft_model.add_weighted_adapter(["b"], [2.0], "one", combination_type="svd", svd_rank=1)
        peft_model.add_weighted_adapter(["default", "b"], [1.0, -1.0], "plain")
    lora.combine_adapters(model, ["b"], [2.0], "svd", "one", rank=1)
    lora.combine_adapters(model, ["default", "b"], [1.0, -1.0], "svd", "plain")
    lora.combine_adapters(model, ["default", "b"], [1.0, -1.0], new_name="ours_plain")
    assert peft_model.peft_config["one"].r == 3 and peft_model.peft_config["plain"].r == 3
    for layer_name, layer in lora.lora_layers(model):
        twice_b = 2 * layer.delta_weight("b")
        assert_close(peft_delta(peft_model, layer_name, "one"), twice_b)
        assert layer.adapters["one"].r == 1
        assert_close(layer.delta_weight("one"), analysis.best_rank_approximation(twice_b, 1))
        assert_close(layer.delta_weight("plain"), peft_delta(peft_model, layer_name, "plain"))
        exact = layer.delta_weight("default") - layer.delta_weight("b")
        assert layer.adapters["ours_plain"].r == 5
        assert_close(layer.delta_weight("ours_plain"), exact)


@pytest.mark.parametrize("how", ["linear", "svd", "ties"])
def test_peft_rounds_the_weights_to_float32(torch, peft, how):
    """Under torch's default dtype (float32) PEFT rounds each weight (linear, ties: each
    sqrt|w_i s_i|; svd: each w_i) to float32, so a float64 model's combination is off by about
    1e-8 relative; under float64 it agrees with ours to 1e-12 (the test above). "cat" keeps
    Python floats and agrees either way."""
    model, peft_model = build(torch, peft)
    names, weights = ["default", "c"], [0.7, -0.4]
    density = 0.5 if how == "ties" else None
    assert torch.get_default_dtype() == torch.float32
    peft_model.add_weighted_adapter(names, weights, "f32", how, density=density)
    with float64_default(torch):
        peft_model.add_weighted_adapter(names, weights, "f64", how, density=density)
    lora.combine_adapters(model, names, weights, how, "ours", density=density)
    for layer_name, layer in lora.lora_layers(model):
        ours = layer.delta_weight("ours")
        assert_close(ours, peft_delta(peft_model, layer_name, "f64"))
        gap = np.abs(ours - peft_delta(peft_model, layer_name, "f32")).max() / np.abs(ours).max()
        assert 1e-10 < gap < 1e-6, gap


def test_what_peft_accepts_and_we_refuse(torch, peft):
    """Each argument PEFT takes quietly and lora_np refuses, with what PEFT does instead."""
    model, peft_model = build(torch, peft)
    before = {n: peft_delta(peft_model, "q", n) for n in ADAPTERS}
    # an existing name: PEFT returns and keeps the old adapter; we raise
    peft_model.add_weighted_adapter(["b", "c"], [1.0, 1.0], "default", combination_type="cat")
    assert_close(peft_delta(peft_model, "q", "default"), before["default"])
    with pytest.raises(ValueError, match="already has an adapter named 'default'"):
        lora.combine_adapters(model, ["b", "c"], [1.0, 1.0], "cat", "default")
    # one weight too few: PEFT zips, so b is dropped without a word; we raise
    peft_model.add_weighted_adapter(["default", "b"], [1.0], "short", combination_type="cat")
    assert_close(peft_delta(peft_model, "q", "short"), before["default"])
    with pytest.raises(ValueError, match="one weight per adapter"):
        lora.combine_adapters(model, ["default", "b"], [1.0], "cat", "short")
    # svd_rank=0: PEFT falls back to the default rank; we raise
    peft_model.add_weighted_adapter(["default", "b"], [1, 1], "zero", "svd", svd_rank=0)
    assert peft_model.peft_config["zero"].r == 3
    with pytest.raises(ValueError, match="rank"):
        lora.combine_adapters(model, ["default", "b"], [1, 1], "svd", "zero", rank=0)
    # "cat" past min(d, k) = 8 on head: PEFT builds a rank-9 adapter; we keep r <= min(d, k)
    peft_model.add_weighted_adapter(["b"] * 3, [1.0] * 3, "wide", combination_type="cat")
    assert peft_model.peft_config["wide"].r == 9
    assert_close(peft_delta(peft_model, "head", "wide"), 3 * peft_delta(peft_model, "head", "b"))
    with pytest.raises(ValueError, match=r"min\(d, k\)"):
        lora.combine_adapters(model, ["b"] * 3, [1.0] * 3, "cat", "wide")
    # a missing adapter: both refuse (PEFT with ValueError, we with the library's KeyError)
    with pytest.raises(ValueError, match="does not exist"):
        peft_model.add_weighted_adapter(["default", "nope"], [1, 1], "x", "cat")
    with pytest.raises(KeyError, match="nope"):
        lora.combine_adapters(model, ["default", "nope"], [1, 1], "cat", "x")
    # unequal ranks for linear and ties: both refuse
    for how in ("linear", "ties"):
        with pytest.raises(ValueError, match="same r"):
            peft_model.add_weighted_adapter(["default", "b"], [1, 1], "x", how, density=0.5)
        density = 0.5 if how == "ties" else None
        with pytest.raises(ValueError, match="equal rank"):
            lora.combine_adapters(model, ["default", "b"], [1, 1], how, "x", density=density)
    assert sorted(lora.lora_layers(model)[0][1].adapter_names) == sorted(ADAPTERS)


def test_the_test_model_is_not_trivial(torch, peft):
    """Guard for the comparisons above: the adapters change the output, and differently."""
    model, peft_model = build(torch, peft)
    results = [outputs(torch, model, peft_model, name)[0] for name in ADAPTERS]
    with lora.disable_adapters(model):
        base = model(ln.Tensor(np.random.default_rng(3).standard_normal((7, C)))).data
    for i, out in enumerate(results):
        assert np.abs(out - base).max() > 0.1
        assert all(np.abs(out - other).max() > 0.1 for other in results[i + 1 :])
