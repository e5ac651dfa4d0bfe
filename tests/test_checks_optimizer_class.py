"""The notebook-04 AdamW class checker: correct optimisers written differently pass, and each
named mistake is rejected with a message that names it."""

import numpy as np
import pytest

import lora_np as ln
from lora_np.checks import check_adamw
from lora_np.checks._harness import ExerciseError
from lora_np.checks.optimizer import adamw_step_reference as adamw_step


class AdamWById:
    """The notebook's solution: state (m, v, t) per parameter in a dict keyed by id(p)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        self.params = list(params)
        self.lr, self.betas, self.eps, self.weight_decay = lr, betas, eps, weight_decay
        self.state = {}

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        for p in self.params:
            if p.grad is None:
                continue
            m, v, t = self.state.get(id(p), (np.zeros_like(p.data), np.zeros_like(p.data), 0))
            new, m, v = adamw_step(
                p.data, p.grad, m, v, t + 1, self.lr, *self.betas, self.eps, self.weight_decay
            )
            p.data[...] = new
            self.state[id(p)] = (m, v, t + 1)


class AdamWParallelLists:
    """Written apart: lists of m, v and step counts aligned with the parameters, p.data rebound
    (cast back to its dtype), settings kept as separate attributes."""

    def __init__(self, params, lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2):
        self.params = [p for p in params]
        self.lr, (self.beta1, self.beta2) = lr, betas
        self.eps, self.wd = eps, weight_decay
        self.m = [None] * len(self.params)
        self.v = [None] * len(self.params)
        self.t = [0] * len(self.params)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        for i, p in enumerate(self.params):
            if p.grad is None or not p.requires_grad:
                continue
            if self.m[i] is None:
                self.m[i], self.v[i] = np.zeros(p.shape), np.zeros(p.shape)
            self.t[i] += 1
            new, self.m[i], self.v[i] = adamw_step(
                p.data,
                p.grad,
                self.m[i],
                self.v[i],
                self.t[i],
                self.lr,
                self.beta1,
                self.beta2,
                self.eps,
                self.wd,
            )
            p.data = np.asarray(new, dtype=p.data.dtype)


@pytest.mark.parametrize("cls", [AdamWById, AdamWParallelLists, ln.optim.AdamW])
def test_correct_optimisers_pass(cls, capsys):
    check_adamw(cls)
    assert "✓ AdamW: all 3 checks passed" in capsys.readouterr().out


def reject(cls, *words):
    with pytest.raises(ExerciseError) as info:
        check_adamw(cls, quiet=True)
    message = str(info.value)
    assert all(w in message for w in words), message


class SharedCounter(AdamWById):
    def step(self):
        self.t = getattr(self, "t", 0) + 1  # one counter for every parameter
        for p in self.params:
            if p.grad is None:
                continue
            m, v, _ = self.state.get(id(p), (np.zeros_like(p.data), np.zeros_like(p.data), 0))
            new, m, v = adamw_step(
                p.data, p.grad, m, v, self.t, self.lr, *self.betas, self.eps, self.weight_decay
            )
            p.data[...] = new
            self.state[id(p)] = (m, v, self.t)


class CountsZeroGrad(AdamWById):
    def zero_grad(self):
        self.calls = getattr(self, "calls", 0) + 1
        super().zero_grad()

    def step(self):
        for p in self.params:
            if p.grad is None:
                continue
            m, v, _ = self.state.get(id(p), (np.zeros_like(p.data), np.zeros_like(p.data), 0))
            new, m, v = adamw_step(
                p.data, p.grad, m, v, self.calls, self.lr, *self.betas, self.eps, self.weight_decay
            )
            p.data[...] = new
            self.state[id(p)] = (m, v, self.calls)


class SharedState(AdamWById):
    def step(self):  # one (m, v, t) per shape: parameters of one shape share it
        for p in self.params:
            if p.grad is None:
                continue
            key = p.data.shape
            m, v, t = self.state.get(key, (np.zeros_like(p.data), np.zeros_like(p.data), 0))
            new, m, v = adamw_step(
                p.data, p.grad, m, v, t + 1, self.lr, *self.betas, self.eps, self.weight_decay
            )
            p.data[...] = new
            self.state[key] = (m, v, t + 1)


class StepsWithoutGrad(AdamWById):
    def step(self):  # a missing gradient taken as zeros: weight decay and momentum still act
        for p in self.params:
            g = np.zeros_like(p.data) if p.grad is None else p.grad
            m, v, t = self.state.get(id(p), (np.zeros_like(p.data), np.zeros_like(p.data), 0))
            new, m, v = adamw_step(
                p.data, g, m, v, t + 1, self.lr, *self.betas, self.eps, self.weight_decay
            )
            p.data[...] = new
            self.state[id(p)] = (m, v, t + 1)


class CrashesWithoutGrad(AdamWById):
    def step(self):
        for p in self.params:
            m, v, t = self.state.get(id(p), (np.zeros_like(p.data), np.zeros_like(p.data), 0))
            new, m, v = adamw_step(
                p.data, p.grad, m, v, t + 1, self.lr, *self.betas, self.eps, self.weight_decay
            )
            p.data[...] = new
            self.state[id(p)] = (m, v, t + 1)


class ZeroGradToZeros(AdamWById):
    def zero_grad(self):
        for p in self.params:
            p.grad = np.zeros_like(p.data)


class StepsACopy(AdamWById):
    def step(self):
        for p in self.params:
            if p.grad is None:
                continue
            data = p.data.copy()  # the parameter's values, copied: writing here changes nothing
            m, v, t = self.state.get(id(p), (np.zeros_like(data), np.zeros_like(data), 0))
            new, m, v = adamw_step(
                data, p.grad, m, v, t + 1, self.lr, *self.betas, self.eps, self.weight_decay
            )
            data[...] = new
            self.state[id(p)] = (m, v, t + 1)


class WrongDefaults(AdamWById):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, betas, eps, weight_decay)


def test_a_shared_step_counter_is_named():
    reject(SharedCounter, "one step counter for all parameters", "per parameter")


def test_a_bias_correction_counting_zero_grad_calls_is_named():
    reject(CountsZeroGrad, "counted zero_grad() calls")


def test_state_shared_between_parameters_is_named():
    reject(SharedState, "state is shared", "per parameter")


def test_a_parameter_without_a_gradient_stepped_is_named():
    reject(StepsWithoutGrad, "but step() changed it", "grad is None")


def test_a_crash_on_a_parameter_without_a_gradient_is_named():
    reject(CrashesWithoutGrad, "without a gradient", "grad is None")


def test_zero_grad_to_zeros_is_named():
    reject(ZeroGradToZeros, "after zero_grad()", "expected None")


def test_a_step_on_a_copy_is_named():
    reject(StepsACopy, "did not change", "into the parameter itself")


def test_other_defaults_are_refused():
    reject(WrongDefaults, "differs from ln.optim.AdamW's", "weight_decay=0.01")


def test_the_miscounted_runs_equal_the_library_where_the_count_agrees():
    # the simulator behind the named counter mistakes, with the right count, is the library's run
    from lora_np.checks import optimizer_class as oc

    for case, dtype, settings, start, grads in oc._cases():
        want = oc._library_run(dtype, settings, start, grads)
        shared = oc._miscounted_run(dtype, settings, start, grads, "steps")
        for step in range(len(grads)):
            for n in ("twin 1", "other", "frozen"):  # stepped every time (or never): t agrees
                assert oc._close(shared[step][n], want[step][n], dtype), (case, step, n)
            assert not oc._close(shared[step]["late"], want[step]["late"], dtype) or step == 0


def test_the_unsolved_stub_is_reported_unsolved():
    class Stub:
        def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
            raise NotImplementedError

    with pytest.raises(ExerciseError) as info:
        check_adamw(Stub, quiet=True)
    assert getattr(info.value, "unsolved", False)
