"""The notebook-07 checkers accept correct answers written any way and name each classic mistake."""

import numpy as np
import pytest

import lora_np as ln
from lora_np import lora
from lora_np.checks import check_count_trainable, check_optimizer_state_bytes
from lora_np.checks._harness import ExerciseError
from lora_np.checks.finetune import optimizer_state_bytes_reference

# ----------------------------------------------------------------------------- count_trainable


def count_trainable(model):
    params = model.parameters()
    return sum(p.size for p in params if p.requires_grad), sum(p.size for p in params)


def count_by_names(model):
    """Correct, written differently: named parameters, np.prod of shapes, a list back."""
    trainable = total = 0
    for _, p in model.named_parameters():
        n = int(np.prod(p.shape))
        total += n
        trainable += n if p.requires_grad else 0
    return [np.int64(trainable), total]


def test_count_reference_and_independent_solutions_pass(capsys):
    check_count_trainable(lora.count_parameters)
    assert "count_trainable: all 7 checks passed" in capsys.readouterr().out
    check_count_trainable(count_trainable, quiet=True)
    check_count_trainable(count_by_names, quiet=True)


def _nested(model):
    mods = [m for _, m in model.named_modules()]
    return (
        sum(p.size for m in mods for p in m.parameters() if p.requires_grad),
        sum(p.size for m in mods for p in m.parameters()),
    )


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (
            lambda m: (sum(p.requires_grad for p in m.parameters()), len(m.parameters())),
            "TENSORS",
        ),
        (lambda m: count_trainable(m)[::-1], "wrong way round"),
        (lambda m: (count_trainable(m)[1],) * 2, "counted as trainable"),
        (
            lambda m: (count_trainable(m)[0], count_trainable(m)[1] - count_trainable(m)[0]),
            "frozen",
        ),
        (_nested, "once for every module"),
        (
            lambda m: (
                sum(p.data.nbytes for p in m.parameters() if p.requires_grad),
                sum(p.data.nbytes for p in m.parameters()),
            ),
            "bytes",
        ),
    ],
    ids=["tensors", "swapped", "all-trainable", "total-frozen", "nested", "bytes"],
)
def test_each_count_mistake_is_named(wrong, phrase):
    with pytest.raises(ExerciseError) as info:
        check_count_trainable(wrong)
    assert phrase in str(info.value), str(info.value)


def test_count_bad_answers_give_clear_messages():
    with pytest.raises(ExerciseError, match="not written yet"):
        check_count_trainable(lambda m: (_ for _ in ()).throw(NotImplementedError()))
    with pytest.raises(ExerciseError, match="expected a pair"):
        check_count_trainable(lambda m: count_trainable(m)[0])
    with pytest.raises(ExerciseError, match="forget `return`"):
        check_count_trainable(lambda m: None)
    with pytest.raises(ExerciseError, match="whole numbers"):
        check_count_trainable(lambda m: (0.5, 1))
    with pytest.raises(ExerciseError, match="expected your function"):
        check_count_trainable("count")

    def unfreezes(model):
        model.requires_grad_(True)
        return count_trainable(model)

    with pytest.raises(ExerciseError, match="changed which parameters"):
        check_count_trainable(unfreezes)


def test_checker_leaves_the_random_stream_alone():
    ln.manual_seed(7)
    expected = ln.backend.to_numpy(ln.backend.rng().random(3))
    ln.manual_seed(7)
    check_count_trainable(count_trainable, quiet=True)
    check_optimizer_state_bytes(optimizer_state_bytes_reference, quiet=True)
    assert np.array_equal(ln.backend.to_numpy(ln.backend.rng().random(3)), expected)


# ----------------------------------------------------------------------------- optimizer state

MOMENTS = {"sgd": 0, "momentum": 1, "adam": 2, "adamw": 2}


def state_bytes(params, optimizer):
    return sum(MOMENTS[optimizer] * p.data.nbytes for p in params if p.requires_grad)


def state_bytes_by_dtype(params, optimizer):
    """Correct, written differently: entries times the dtype's itemsize, a loop with a branch."""
    total = 0
    for p in params:
        if not p.requires_grad or optimizer == "sgd":
            continue
        per_entry = np.dtype(p.dtype).itemsize * (1 if optimizer == "momentum" else 2)
        total += p.size * per_entry
    return np.int64(total)


def test_state_reference_and_independent_solutions_pass(capsys):
    check_optimizer_state_bytes(optimizer_state_bytes_reference)
    assert "optimizer_state_bytes: all 7 checks passed" in capsys.readouterr().out
    check_optimizer_state_bytes(state_bytes, quiet=True)
    check_optimizer_state_bytes(state_bytes_by_dtype, quiet=True)


def _moments(fn):
    return lambda params, opt: sum(fn(opt) * p.data.nbytes for p in params if p.requires_grad)


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (lambda ps, o: sum(MOMENTS[o] * p.data.nbytes for p in ps), "frozen parameters too"),
        (lambda ps, o: sum(MOMENTS[o] * p.size for p in ps if p.requires_grad), "entries"),
        (lambda ps, o: sum(MOMENTS[o] * 4 * p.size for p in ps if p.requires_grad), "4 bytes"),
        (_moments(lambda o: MOMENTS[o] + 1), "themselves"),
        (_moments(lambda o: 1 if o.startswith("adam") else MOMENTS[o]), "ONE moment"),
        (_moments(lambda o: 3 if o.startswith("adam") else MOMENTS[o]), "three arrays"),
        (_moments(lambda o: 2 if o == "momentum" else MOMENTS[o]), "keeps one"),
        (_moments(lambda o: 1 if o == "sgd" else MOMENTS[o]), "no state at all"),
    ],
    ids=["frozen", "entries", "4-bytes", "params", "one-moment", "three", "momentum-2", "sgd"],
)
def test_each_state_mistake_is_named(wrong, phrase):
    with pytest.raises(ExerciseError) as info:
        check_optimizer_state_bytes(wrong)
    assert phrase in str(info.value), str(info.value)


def test_state_bad_answers_give_clear_messages():
    with pytest.raises(ExerciseError, match="not written yet"):
        check_optimizer_state_bytes(lambda *a: (_ for _ in ()).throw(NotImplementedError()))
    with pytest.raises(ExerciseError, match="forget `return`"):
        check_optimizer_state_bytes(lambda *a: None)
    with pytest.raises(ExerciseError, match="whole number"):
        check_optimizer_state_bytes(lambda *a: "lots")


def test_reference_matches_a_real_training_step():
    ln.manual_seed(0)
    model = ln.nn.Linear(6, 4)
    opt = ln.optim.Adam(model.parameters(), lr=0.1)
    (model(ln.Tensor(np.ones((2, 6), dtype=np.float32)))).sum().backward()
    opt.step()
    assert opt.state_bytes() == optimizer_state_bytes_reference(model.parameters(), "adam") == 224
    with pytest.raises(ValueError, match="unknown optimizer"):
        optimizer_state_bytes_reference(model.parameters(), "lion")


# ----------------------------------------------------------------------------- soundness


def test_a_count_that_empties_every_parameter_is_refused():
    def empties_then_counts(model):  # the reference must not be computed on what is left
        for p in model.parameters():
            p.data = np.zeros((0,), dtype=p.data.dtype)
        return lora.count_parameters(model)

    with pytest.raises(ExerciseError, match="changed its input model") as info:
        check_count_trainable(empties_then_counts)
    assert "values" in str(info.value) or "shape" in str(info.value)


def test_a_count_of_floats_is_refused():
    with pytest.raises(ExerciseError, match="whole number"):
        check_count_trainable(lambda model: tuple(float(v) for v in count_trainable(model)))


def test_state_bytes_that_freeze_the_parameters_and_answer_zero_are_refused():
    def freezes(params, optimizer):
        for p in params:
            p.requires_grad = False
        return 0

    with pytest.raises(ExerciseError, match="changed its input params") as info:
        check_optimizer_state_bytes(freezes)
    assert "requires_grad is now False" in str(info.value)


def test_state_bytes_that_change_a_parameters_values_are_refused():
    def zeroes(params, optimizer):
        for p in params:
            p.data = p.data * 0
        return optimizer_state_bytes_reference(params, optimizer)

    with pytest.raises(ExerciseError, match="changed its input params"):
        check_optimizer_state_bytes(zeroes)
