"""check_train_lora (notebook 07's loop) passes correct loops written any way and names each
classic mistake: no zero_grad, every parameter optimised, the base not frozen."""

import numpy as np
import pytest

import lora_np as ln
from lora_np import lora, optim
from lora_np.checks import check_train_lora
from lora_np.checks._harness import ExerciseError
from lora_np.checks.training import train_lora_reference


def loop_by_hand(model, batches, steps, lr, r, alpha, targets):
    """Correct, written differently: layers wrapped one by one, then frozen; `p.grad = None`
    after each step; a while loop over next(); AdamW's default weight decay."""
    names = [n for n, m in model.named_modules() if any(n.endswith("." + t) for t in targets)]
    for n in names:
        model.set_submodule(n, lora.LoRALinear(model.get_submodule(n), r, alpha))
    lora.mark_only_lora_as_trainable(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = optim.AdamW(trainable, lr=lr)
    losses, step = [], 0
    while step < steps:
        idx, tgt = next(batches)
        loss = model(idx, tgt)[1]
        loss.backward()
        opt.step()
        for p in trainable:
            p.grad = None
        losses.append(loss.item())
        step += 1
    return (opt, np.array(losses))


def loop_with_enumerate(model, batches, steps, lr, r, alpha, targets):
    """Correct, written differently: enumerate and break (one batch more taken), a tuple of
    float32 losses, zero_grad at the top of each step."""
    lora.inject(model, targets, r, alpha)
    lora.mark_only_lora_as_trainable(model)
    opt = optim.AdamW([p for _, p in model.named_parameters() if p.requires_grad], lr=lr)
    losses = []
    for i, (idx, tgt) in enumerate(batches):
        if i == steps:
            break
        opt.zero_grad()
        logits, loss = model(idx, tgt)
        loss.backward()
        opt.step()
        losses.append(np.float32(loss.item()))
    return opt, tuple(losses)


def test_reference_and_independent_loops_pass(capsys):
    check_train_lora(train_lora_reference)
    assert "train_lora: all 2 checks passed" in capsys.readouterr().out
    check_train_lora(loop_by_hand, quiet=True)
    check_train_lora(loop_with_enumerate, quiet=True)


def no_zero_grad(model, batches, steps, lr, r, alpha, targets):
    lora.inject(model, targets, r, alpha)
    opt = optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _, (idx, tgt) in zip(range(steps), batches):
        _, loss = model(idx, tgt)
        loss.backward()  # adds to last step's .grad
        opt.step()
        losses.append(loss.item())
    return opt, losses


def every_parameter_optimised(model, batches, steps, lr, r, alpha, targets):
    lora.inject(model, targets, r, alpha)
    opt = optim.AdamW(model.parameters(), lr=lr)  # frozen base handed over too
    losses = []
    for _, (idx, tgt) in zip(range(steps), batches):
        opt.zero_grad()
        _, loss = model(idx, tgt)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return opt, losses


def base_not_frozen(model, batches, steps, lr, r, alpha, targets):
    # LoRALinear freezes its own base Linear, but without mark_only_lora_as_trainable the
    # embeddings, layer norms and the head still train
    for n in [n for n, m in model.named_modules() if any(n.endswith("." + t) for t in targets)]:
        model.set_submodule(n, lora.LoRALinear(model.get_submodule(n), r, alpha))
    opt = optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _, (idx, tgt) in zip(range(steps), batches):
        opt.zero_grad()
        _, loss = model(idx, tgt)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return opt, losses


def base_trainable_but_not_optimised(model, batches, steps, lr, r, alpha, targets):
    lora.inject(model, targets, r, alpha)
    lora_params = lora.lora_parameters(model)
    model.requires_grad_(True)  # undoes the freeze: the base gets gradients nobody uses
    opt = optim.AdamW(lora_params, lr=lr)
    losses = []
    for _, (idx, tgt) in zip(range(steps), batches):
        opt.zero_grad()
        _, loss = model(idx, tgt)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return opt, losses


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (no_zero_grad, "Gradients pile up"),
        (every_parameter_optimised, "every parameter is optimised"),
        (base_not_frozen, "base is not frozen"),
        (base_trainable_but_not_optimised, "base is not frozen"),
    ],
)
def test_each_named_mistake_is_rejected(wrong, phrase):
    with pytest.raises(ExerciseError, match=phrase):
        check_train_lora(wrong)


def _zero_between_backward_and_step(model, batches, steps, lr, r, alpha, targets):
    lora.inject(model, targets, r, alpha)
    opt = optim.AdamW(lora.lora_parameters(model), lr=lr)
    losses = []
    for _, (idx, tgt) in zip(range(steps), batches):
        _, loss = model(idx, tgt)
        loss.backward()
        opt.zero_grad()  # too late: step() finds no gradient
        opt.step()
        losses.append(loss.item())
    return opt, losses


def _tensor_losses(model, batches, steps, lr, r, alpha, targets):
    opt, losses = train_lora_reference(model, batches, steps, lr, r, alpha, targets)
    return opt, [ln.Tensor(np.float32(x)) for x in losses]


def _sgd(model, batches, steps, lr, r, alpha, targets):
    lora.inject(model, targets, r, alpha)
    for _ in zip(range(steps), batches):
        pass
    return optim.SGD(lora.lora_parameters(model), lr=lr), [0.0] * steps


def _not_written(*args):
    raise NotImplementedError


def test_other_bad_loops_get_clear_messages():
    with pytest.raises(ExerciseError, match="holds no state"):
        check_train_lora(_zero_between_backward_and_step)
    with pytest.raises(ExerciseError, match=r"append loss\.item\(\)"):
        check_train_lora(_tensor_losses)
    with pytest.raises(ExerciseError, match="ln.optim.AdamW"):
        check_train_lora(_sgd)
    with pytest.raises(ExerciseError, match="not written yet"):
        check_train_lora(_not_written)
    with pytest.raises(ExerciseError, match="expected a pair"):
        check_train_lora(lambda *args: train_lora_reference(*args)[0])


def test_checker_leaves_the_random_stream_alone():
    ln.manual_seed(3)
    expected = ln.backend.rng().random(4)
    ln.manual_seed(3)
    check_train_lora(loop_with_enumerate, quiet=True)
    assert np.array_equal(ln.backend.rng().random(4), expected)
