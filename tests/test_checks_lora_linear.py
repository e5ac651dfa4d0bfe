"""check_lora_linear accepts LoRA layers written different ways and names each classic mistake."""

import numpy as np
import pytest

import lora_np as ln
from lora_np import lora
from lora_np.checks import check_lora_linear
from lora_np.checks._harness import ExerciseError

F = ln.functional


class Layer(ln.nn.Module):
    """A correct layer, written as a learner would: F.linear twice, data changed in place."""

    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base
        base.requires_grad_(False)
        d, k = base.weight.shape
        dtype = base.weight.data.dtype
        bound = 1 / np.sqrt(k)
        self.A = ln.nn.Parameter(
            np.random.default_rng(1).uniform(-bound, bound, (r, k)).astype(dtype)
        )
        self.B = ln.nn.Parameter(np.zeros((d, r), dtype=dtype))
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r
        self.merged = False

    def delta(self):
        return self.scaling * (self.B.data @ self.A.data)

    def forward(self, x):
        if self.merged:
            return self.base(x)
        return self.base(x) + F.linear(F.linear(x, self.A), self.B) * self.scaling

    def merge(self):
        if self.merged:
            raise RuntimeError("already merged")
        self.base.weight.data = self.base.weight.data + self.delta()
        self.merged = True

    def unmerge(self):
        self.base.weight.data = self.base.weight.data - self.delta()
        self.merged = False


class GaussianLayer(ln.nn.Module):
    """Correct, written differently: Gaussian A from the library's generator, Tensor @ and .T,
    a scaled x A^T before B, the frozen flags set one by one, merge with +=."""

    def __init__(self, base, r, alpha):
        super().__init__()
        for p in base.parameters():
            p.requires_grad_(False)
        self.base = base
        self.r = r
        self.alpha = alpha
        self.scaling = float(alpha) / float(r)
        self.merged = False
        dtype = base.weight.data.dtype
        self.A = ln.nn.Parameter(
            (ln.backend.rng().standard_normal((r, base.in_features)) / r).astype(dtype)
        )
        self.B = ln.nn.Parameter(np.zeros((base.out_features, r), dtype))

    def forward(self, x):
        h = self.base(x)
        if not self.merged:
            h = h + ((x @ self.A.T) * self.scaling) @ self.B.T
        return h

    def merge(self):
        if self.merged:
            raise ValueError("merge(): the update is already in W0")
        self.base.weight.data += self.scaling * self.B.data @ self.A.data
        self.merged = True

    def unmerge(self):
        if not self.merged:
            raise ValueError("not merged")
        self.base.weight.data -= self.scaling * self.B.data @ self.A.data
        self.merged = False


def test_the_library_and_independent_solutions_pass(capsys):
    check_lora_linear(lora.LoRALinear)
    assert "✓ LoRALinear: all 3 checks passed" in capsys.readouterr().out
    check_lora_linear(Layer, quiet=True)
    check_lora_linear(GaussianLayer, quiet=True)
    assert capsys.readouterr().out == ""


def test_the_checker_leaves_the_callers_random_stream_alone():
    ln.manual_seed(3)
    expected = ln.backend.rng().standard_normal(4)
    ln.manual_seed(3)
    check_lora_linear(GaussianLayer, quiet=True)  # draws A from the same generator
    assert np.array_equal(ln.backend.rng().standard_normal(4), expected)


class BaseTrainable(Layer):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        base.requires_grad_(True)


class BiasTrainable(Layer):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        if base.bias is not None:
            base.bias.requires_grad_(True)


class RandomB(Layer):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.B.data = (
            np.random.default_rng(2).standard_normal(self.B.shape).astype(self.B.data.dtype)
        )


class AlphaNotOverR(Layer):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.scaling = alpha


class Unscaled(Layer):
    def forward(self, x):
        if self.merged:
            return self.base(x)
        return self.base(x) + F.linear(F.linear(x, self.A), self.B)


class MergeWithoutScale(Layer):
    def merge(self):
        if self.merged:
            raise RuntimeError("already merged")
        self.base.weight.data = self.base.weight.data + self.B.data @ self.A.data
        self.merged = True


class ForwardAddsAgain(Layer):
    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.A), self.B) * self.scaling


class UnmergeOnlyFlag(Layer):
    def unmerge(self):
        self.merged = False


class UnmergeWithoutScale(Layer):
    def unmerge(self):
        self.base.weight.data = self.base.weight.data - self.B.data @ self.A.data
        self.merged = False


class MergeTwice(Layer):
    def merge(self):
        self.base.weight.data = self.base.weight.data + self.delta()
        self.merged = True


class NewParameterOnMerge(Layer):
    """Replaces base.weight by a new Parameter in unmerge: trainable, so W0 gets a gradient."""

    def unmerge(self):
        self.base.weight = ln.nn.Parameter(self.base.weight.data - self.delta())
        self.merged = False


class DetachedForward(Layer):
    def forward(self, x):
        if self.merged:
            return self.base(x)
        low = (x.numpy() @ self.A.numpy().T) @ self.B.numpy().T * self.scaling
        return self.base(x) + ln.Tensor(low)


class NotAModule:
    def __init__(self, base, r, alpha):
        self.base = base


class ZeroA(Layer):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.A.data = np.zeros_like(self.A.data)


class TransposedA(Layer):
    def __init__(self, base, r, alpha):
        super().__init__(base, r, alpha)
        self.A = ln.nn.Parameter(self.A.data.T.copy())


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (BaseTrainable, "the base is left trainable"),
        (BiasTrainable, "bias still requires a gradient"),
        (RandomB, "B starts random"),
        (AlphaNotOverR, "alpha instead of alpha / r"),
        (Unscaled, "not scaled"),
        (MergeWithoutScale, "without the scale"),
        (ForwardAddsAgain, "adds scaling · B A x again"),
        (UnmergeOnlyFlag, "did not restore W0: base.weight is still W0 + scaling · B A"),
        (UnmergeWithoutScale, "subtracted B A without the scale"),
        (MergeTwice, "a second merge() was accepted"),
        (NewParameterOnMerge, "a gradient reached the frozen base"),
        (DetachedForward, "got no gradient (the output does not require one)"),
        (NotAModule, "expected an ln.nn.Module"),
        (ZeroA, "A does not look random"),
        (TransposedA, "it is transposed"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_each_mistake_is_named(wrong, phrase):
    with pytest.raises(ExerciseError) as info:
        check_lora_linear(wrong)
    assert phrase in str(info.value), str(info.value)


def test_an_unsolved_stub_is_marked_unsolved():
    class Stub(ln.nn.Module):
        def __init__(self, base, r, alpha):
            raise NotImplementedError()

    with pytest.raises(ExerciseError) as info:
        check_lora_linear(Stub)
    assert getattr(info.value, "unsolved", False) is True


def test_a_missing_merge_method_is_named():
    class NoMerge(Layer):
        merge = None

    with pytest.raises(ExerciseError) as info:
        check_lora_linear(NoMerge)
    assert "no method merge()" in str(info.value)


def test_a_second_merge_that_changes_the_weight_before_refusing_is_named():
    class AddsThenRefuses(Layer):
        def merge(self):
            self.base.weight.data = self.base.weight.data + self.delta()
            if self.merged:
                raise RuntimeError("already merged")
            self.merged = True

    with pytest.raises(ExerciseError) as info:
        check_lora_linear(AddsThenRefuses)
    assert "a second merge() changed base.weight" in str(info.value)


def test_a_passing_class_is_carried_to_later_notebooks(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LORA_NP_MINE", str(tmp_path))
    assert ln.checks.passing_or_reference(GaussianLayer, "LoRALinear", carry=True) is GaussianLayer
    assert (tmp_path / "LoRALinear.py").exists()
    carried = ln.checks.yours_or_reference("LoRALinear")
    assert carried is not GaussianLayer and carried.__name__ == "GaussianLayer"
    assert "mine: your own LoRALinear below" in capsys.readouterr().out
    check_lora_linear(carried, quiet=True)


def test_without_a_carried_class_later_notebooks_get_the_librarys(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_NP_MINE", str(tmp_path))
    assert ln.checks.yours_or_reference("LoRALinear") is lora.LoRALinear
