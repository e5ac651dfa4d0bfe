"""What every checker shares (lora_np/checks/_harness.py, _guard.py): a learner's return value
never crashes a checker, a function that never returns does not hang it, the learner's own line
is shown, and reassigning the library's functions does not change the reference answers."""

import threading

import numpy as np
import pytest

import lora_np as ln
from lora_np import checks
from lora_np.checks import _guard
from lora_np.checks._harness import ExerciseError, with_hint

CHECKERS = sorted(name for name in checks.__all__ if name.startswith("check_"))


class Evil:
    """An object every one of whose conversions raises."""

    def numpy(self):
        raise RuntimeError("numpy() breaks")

    def __array__(self, *args, **kwargs):
        raise RuntimeError("__array__ breaks")

    def __eq__(self, other):
        raise RuntimeError("__eq__ breaks")

    __hash__ = object.__hash__

    def __len__(self):
        raise RuntimeError("__len__ breaks")

    def __iter__(self):
        raise RuntimeError("__iter__ breaks")

    def __float__(self):
        raise RuntimeError("__float__ breaks")

    def __index__(self):
        raise RuntimeError("__index__ breaks")

    def __repr__(self):
        raise RuntimeError("__repr__ breaks")


class EvilTuple(tuple):
    """A pair whose length and items cannot be read the usual way."""

    def __len__(self):
        raise RuntimeError("__len__ breaks")

    def __iter__(self):
        raise RuntimeError("__iter__ breaks")


RETURNED = {
    "ragged tuple": ((np.zeros(3), np.zeros((2, 2)), 5), ("tuple", "array")),
    "list of numbers": ([1.0, 2.0], ("list", "float")),
    "object whose conversions raise": (Evil(), ("Evil",)),
    "pair of such objects": ((Evil(), Evil()), ("Evil", "tuple")),
    "tuple subclass that breaks": (EvilTuple((1, 2)), ("EvilTuple", "yours (1, 2)", "yours 1")),
    "complex number": (1 + 2j, ("complex",)),
    "bool": (True, ("bool", "True")),
    "string": ("done", ("str", "string")),
}


def value_class(fn):
    """A class for check_value whose constructor keeps the number and every op is ``fn``."""

    def op(self, *args, **kwargs):
        return fn(*args, **kwargs)

    def init(self, data, parents=(), op=""):
        self.data, self.grad, self.parents, self._backward = data, 0.0, parents, lambda: None

    ops = ("add", "radd", "mul", "rmul", "pow", "neg", "sub", "rsub", "truediv", "rtruediv")
    methods = {f"__{name}__": op for name in ops}
    return type("Answer", (), {"__init__": init, "tanh": op, "exp": op, "backward": op, **methods})


def lora_linear_class(fn):
    """A class for check_lora_linear built as asked, whose forward, merge and unmerge are ``fn``."""

    def init(self, base, r, alpha):
        ln.nn.Module.__init__(self)
        self.base = base.requires_grad_(False)
        d, k = base.weight.shape
        dtype = base.weight.data.dtype
        self.A = ln.nn.Parameter(ln.backend.rng().uniform(-1, 1, (r, k)).astype(dtype))
        self.B = ln.nn.Parameter(np.zeros((d, r), dtype=dtype))
        self.r, self.alpha, self.scaling, self.merged = r, alpha, alpha / r, False

    def op(self, *args, **kwargs):
        return fn(*args, **kwargs)

    methods = {"__init__": init, "forward": op, "merge": op, "unmerge": op}
    return type("Answer", (ln.nn.Module,), methods)


def adamw_class(fn):
    """A class for check_adamw built as asked, whose step writes ``fn``'s result into p.data."""

    def init(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        self.params = list(params)

    def zero_grad(self):
        for p in self.params:
            p.grad = None

    def step(self):
        for p in self.params:
            if p.grad is not None:
                p.data = fn(p.data, p.grad)

    return type("Answer", (), {"__init__": init, "zero_grad": zero_grad, "step": step})


def block_class(fn):
    """A class for check_block built as asked (the library's pieces), whose forward is ``fn``."""
    from lora_np.transformer import MLP, CausalSelfAttention

    def init(self, config):
        ln.nn.Module.__init__(self)
        self.ln_1 = ln.nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = ln.nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def op(self, *args, **kwargs):
        return fn(*args, **kwargs)

    return type("Answer", (ln.nn.Module,), {"__init__": init, "forward": op})


# A class exercise's checker takes a class: the same bad behaviour, put in every method.
CLASS_ANSWERS = {
    "check_value": value_class,
    "check_lora_linear": lora_linear_class,
    "check_adamw": adamw_class,
    "check_block": block_class,
}


def answer(checker: str, fn):
    """What ``checker`` is given: ``fn`` itself, or for a class exercise a class built on it."""
    return CLASS_ANSWERS.get(checker, lambda f: f)(fn)


@pytest.mark.parametrize("returned", sorted(RETURNED))
@pytest.mark.parametrize("checker", CHECKERS)
def test_no_return_value_crashes_a_checker(checker, returned):
    value, words = RETURNED[returned]
    with pytest.raises(ExerciseError) as info:
        getattr(checks, checker)(answer(checker, lambda *args, **kwargs: value), quiet=True)
    # it names what came back (or, for a pair or list read item by item, the item's shape)
    words += ("has shape", "returned shape", "is not a node")
    assert any(word in str(info.value) for word in words), str(info.value)


class BadMessage(Exception):
    def __str__(self):
        raise RuntimeError("no message for you")


@pytest.mark.parametrize("checker", CHECKERS)
def test_an_exception_that_cannot_be_printed_is_reported(checker):
    def raises(*args, **kwargs):
        raise BadMessage

    with pytest.raises(ExerciseError) as info:
        getattr(checks, checker)(answer(checker, raises), quiet=True)
    assert "raised BadMessage" in str(info.value)
    assert "could not be shown" in str(info.value)


@pytest.fixture
def short_time_limit(monkeypatch):
    monkeypatch.setattr(_guard, "TIME_LIMIT_S", 0.3)


def _checker_threads():
    return [t for t in threading.enumerate() if t.name == "lora_np-checker-call" and t.is_alive()]


@pytest.mark.parametrize("checker", CHECKERS)
def test_a_function_that_never_returns_is_given_up_on_and_stopped(checker, short_time_limit):
    def forever(*args, **kwargs):
        while True:
            pass

    with pytest.raises(ExerciseError) as info:
        getattr(checks, checker)(answer(checker, forever), quiet=True)
    assert "did not return within 0.3 s" in str(info.value)
    for thread in _checker_threads():  # the endless loop was asked to stop
        thread.join(5.0)
    assert not _checker_threads()


def test_the_learners_line_is_shown_and_the_checkers_frames_hidden():
    def best_rank_approximation(M, r):
        U, S, Vt = np.linalg.svd(M, full_matrices=False)
        return U[:, :r] * S[:r] @ Vt[:r] / 0 if r > 99 else {}["no such key"]

    with pytest.raises(ExerciseError) as info:
        checks.check_best_rank_approximation(best_rank_approximation)
    message = str(info.value)
    assert "raised KeyError" in message
    assert '{}["no such key"]' in message  # the learner's own line, quoted
    frames = []
    tb = info.value.__traceback__
    while tb is not None:
        frames.append((tb.tb_frame.f_code.co_filename, tb.tb_frame.f_code.co_name))
        tb = tb.tb_next
    assert "best_rank_approximation" in [n for _, n in frames], frames
    inside = [(f, n) for f, n in frames if f.startswith(_guard._CHECKS_DIR)]
    assert [n for _, n in inside] == ["run"], inside  # only the one hidden wrapper line
    assert "__tracebackhide__" in checks.check_best_rank_approximation.__code__.co_varnames


def test_print_inside_the_learners_function_reaches_the_caller(capsys):
    def unbroadcast(grad, shape):
        print("hello from the learner")
        return ln.autograd.unbroadcast(grad, shape)

    checks.check_unbroadcast(unbroadcast, quiet=True)
    assert "hello from the learner" in capsys.readouterr().out


# ---------------------------------------------------------------- the library as imported


def _wrong_best_rank(M, r):
    return np.zeros_like(M) + 1.0


def test_reassigning_the_library_function_does_not_change_the_reference(monkeypatch):
    monkeypatch.setattr(ln.analysis, "best_rank_approximation", _wrong_best_rank)
    with pytest.raises(ExerciseError):
        checks.check_best_rank_approximation(_wrong_best_rank)
    # the learner's reassignment is still in place afterwards
    assert ln.analysis.best_rank_approximation is _wrong_best_rank


def test_patching_an_op_the_reference_uses_does_not_change_it(monkeypatch):
    original = ln.functional.lora_linear

    def doubled(*args, **kwargs):  # a wrong op, matching a wrong learner's answer
        return original(*args, **kwargs) * 2.0

    def wrong_forward(x, W0, b, A, B, s):
        h = x @ W0.T + s * (x @ A.T) @ B.T + (0.0 if b is None else b)
        return 2.0 * h

    monkeypatch.setattr(ln.functional, "lora_linear", doubled)
    with pytest.raises(ExerciseError):
        checks.check_lora_forward(wrong_forward)
    assert ln.functional.lora_linear is doubled


def test_the_learners_reassignment_is_in_effect_while_their_function_runs(monkeypatch):
    seen = []

    def mine(M, r):
        return ln.analysis.best_rank_approximation.__name__

    def best_rank_approximation(M, r):
        seen.append(ln.analysis.best_rank_approximation)
        U, S, Vt = np.linalg.svd(M, full_matrices=False)
        return (U[:, :r] * S[:r]) @ Vt[:r]

    monkeypatch.setattr(ln.analysis, "best_rank_approximation", mine)
    checks.check_best_rank_approximation(best_rank_approximation, quiet=True)
    assert seen and all(f is mine for f in seen)


def test_a_method_patched_on_a_library_class_is_restored_for_the_reference(monkeypatch):
    def merge_without_scale(W0, A, B, s):
        return W0 + B @ A

    def merge_method(self):  # makes the library's merge agree with the wrong answer
        self.base.weight.data = self.base.weight.data + self.B.data @ self.A.data
        self.merged = True

    monkeypatch.setattr(ln.lora.LoRALinear, "merge", merge_method)
    with pytest.raises(ExerciseError, match="factor `scaling`"):
        checks.check_merge(merge_without_scale)
    assert ln.lora.LoRALinear.merge is merge_method


def test_a_hint_keeps_what_the_error_carries():
    """call_explained adds its hint only to the error it explains, and the learner's traceback
    and the mark of an unsolved exercise survive the hint (Run All of the student edition
    relies on that mark)."""
    from lora_np.checks._harness import call_explained

    def mismatched(a):
        return np.ones((2, 3)) @ np.ones((2, 3))

    def unsolved(a):
        raise NotImplementedError

    with pytest.raises(ExerciseError) as info:
        call_explained(mismatched, "f", "a case", 1, shape_hint=". HINT", none_hint=". NONE")
    assert str(info.value).endswith(". HINT") and info.value.learner_traceback is not None
    with pytest.raises(ExerciseError) as info:
        call_explained(unsolved, "f", "a case", 1, shape_hint=". HINT")
    assert "HINT" not in str(info.value) and getattr(info.value, "unsolved", False)
    hinted = with_hint(info.value, ". more")
    assert str(hinted).endswith(". more") and hinted.unsolved
    assert hinted.learner_traceback is info.value.learner_traceback
