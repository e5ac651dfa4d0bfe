"""check_inject and check_mark_only_lora_as_trainable accept correct solutions written
different ways and name each classic mistake."""

import copy

import pytest

import lora_np as ln
from lora_np import lora
from lora_np.checks import check_inject, check_mark_only_lora_as_trainable
from lora_np.checks._harness import ExerciseError
from lora_np.checks.injection import inject_reference, mark_only_lora_as_trainable_reference

# ----------------------------------------------------------------------------- inject


def inject_by_parents(model, targets, r, alpha, layer_cls):
    """Correct, written differently: walks the tree itself, setattr on each parent."""
    replaced = []

    def walk(module, prefix):
        for child_name, child in list(module.named_children()):
            full = f"{prefix}.{child_name}" if prefix else child_name
            if any(full == t or full.endswith("." + t) for t in targets):
                setattr(module, child_name, layer_cls(child, r, alpha))
                replaced.append(full)
            else:
                walk(child, full)

    walk(model, "")
    return replaced


def inject_target_first(model, targets, r, alpha, layer_cls):
    """Correct, target by target (another order of names), with keyword arguments."""
    names = []
    modules = dict(model.named_modules())
    for t in targets:
        for name in modules:
            if name and (name == t or name.endswith("." + t)) and name not in names:
                names.append(name)
    for name in names:
        model.set_submodule(name, layer_cls(modules[name], r=r, alpha=alpha))
    return tuple(names)


def test_reference_and_independent_solutions_pass(capsys):
    check_inject(inject_reference)
    assert "✓ inject: all 3 checks passed" in capsys.readouterr().out
    check_inject(inject_by_parents, quiet=True)
    check_inject(inject_target_first, quiet=True)


def _replace(model, names, r, alpha, layer_cls):
    modules = dict(model.named_modules())
    for name in names:
        model.set_submodule(name, layer_cls(modules[name], r, alpha))
    return list(names)


def substring(model, targets, r, alpha, layer_cls):
    names = [n for n, _ in model.named_modules() if n and any(t in n for t in targets)]
    names = [n for n in names if not any(n.startswith(m + ".") for m in names)]
    return _replace(model, names, r, alpha, layer_cls)


def first_match_only(model, targets, r, alpha, layer_cls):
    names = []
    for t in targets:
        for n, _ in model.named_modules():
            if n == t or n.endswith("." + t):
                names.append(n)
                break
    return _replace(model, names, r, alpha, layer_cls)


def in_a_copy(model, targets, r, alpha, layer_cls):
    return inject_reference(copy.deepcopy(model), targets, r, alpha, layer_cls)


def children_only(model, targets, r, alpha, layer_cls):
    names = [n for n, _ in model.named_children() if n in targets]
    return _replace(model, names, r, alpha, layer_cls)


def endswith_without_dot(model, targets, r, alpha, layer_cls):
    names = [n for n, _ in model.named_modules() if n and any(n.endswith(t) for t in targets)]
    return _replace(model, names, r, alpha, layer_cls)


def wraps_a_copy(model, targets, r, alpha, layer_cls):
    modules = dict(model.named_modules())
    names = [n for n in modules if n and any(n == t or n.endswith("." + t) for t in targets)]
    for name in names:
        model.set_submodule(name, layer_cls(copy.deepcopy(modules[name]), r, alpha))
    return names


def alpha_and_r_swapped(model, targets, r, alpha, layer_cls):
    return inject_reference(model, targets, alpha, r, layer_cls)


def returns_nothing(model, targets, r, alpha, layer_cls):
    inject_reference(model, targets, r, alpha, layer_cls)


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (substring, "matches a target anywhere in the name"),
        (first_match_only, "only the first match"),
        (in_a_copy, "not in a copy"),
        (children_only, "misses nested modules"),
        (endswith_without_dot, "without the dot"),
        (wraps_a_copy, "wraps a copy"),
        (alpha_and_r_swapped, "expected layer_cls(module, r, alpha)"),
        (returns_nothing, "expected the list of replaced names"),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)
def test_each_inject_mistake_is_named(wrong, phrase):
    with pytest.raises(ExerciseError) as info:
        check_inject(wrong)
    assert phrase in str(info.value), str(info.value)


def test_inject_that_changes_the_targets_list_is_named():
    def pops(model, targets, r, alpha, layer_cls):
        names = inject_reference(model, targets, r, alpha, layer_cls)
        targets.pop()
        return names

    with pytest.raises(ExerciseError) as info:
        check_inject(pops)
    assert "changed its input targets" in str(info.value)


# ----------------------------------------------------------------------------- mark


def mark_two_passes(model):
    """Correct, written differently: freeze all, then unfreeze the A and B of every module."""
    model.requires_grad_(False)
    for _, module in model.named_modules():
        for name, value in vars(module).items():
            if name in ("A", "B") and isinstance(value, ln.nn.Parameter):
                value.requires_grad_(True)


def test_mark_reference_and_independent_solutions_pass(capsys):
    check_mark_only_lora_as_trainable(mark_only_lora_as_trainable_reference)
    out = capsys.readouterr().out
    assert "✓ mark_only_lora_as_trainable: all 3 checks passed" in out
    check_mark_only_lora_as_trainable(mark_two_passes, quiet=True)


def only_unfreezes_lora(model):
    for name, p in model.named_parameters():
        if name.endswith((".A", ".B")):
            p.requires_grad_(True)


def freezes_everything(model):
    model.requires_grad_(False)


def library_only(model):  # the library's needs its own LoRALinear: fails on the toy's class
    lora.mark_only_lora_as_trainable(model)


def changes_values(model):
    mark_only_lora_as_trainable_reference(model)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data * 0


@pytest.mark.parametrize(
    "wrong, phrase",
    [
        (only_unfreezes_lora, "the base is left trainable"),
        (freezes_everything, "LoRA is frozen"),
        (library_only, "raised ValueError"),
        (changes_values, "changed the values"),
    ],
    ids=lambda v: v.__name__ if callable(v) else None,
)
def test_each_mark_mistake_is_named(wrong, phrase):
    with pytest.raises(ExerciseError) as info:
        check_mark_only_lora_as_trainable(wrong)
    assert phrase in str(info.value), str(info.value)


def test_the_pair_works_with_the_learners_class_shape():
    """inject + mark with a learner-style class leave exactly A and B trainable in a GPT."""
    from lora_np.checks.injection import _tiny_gpt, _TinyLoRA

    model = _tiny_gpt()
    names = inject_reference(model, ["q", "v"], 2, 4.0, _TinyLoRA)
    mark_only_lora_as_trainable_reference(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names == [f"blocks.{i}.attn.{m}" for i in range(2) for m in ("q", "v")]
    assert trainable == [f"{n}.{f}" for n in names for f in ("A", "B")]


def test_whole_names_only_is_named_where_it_differs_from_missing_nested_modules():
    def whole_names_only(model, targets, r, alpha, layer_cls):
        names = [n for n, _ in model.named_modules() if n in targets]
        return _replace(model, names, r, alpha, layer_cls)

    with pytest.raises(ExerciseError) as info:
        check_inject(whole_names_only)
    assert "misses nested modules" in str(info.value)  # on the GPT both replace nothing
    with pytest.raises(ExerciseError) as info:  # a dotted target tells the two apart

        def only_second_case(m, targets, r, alpha, layer_cls):
            if targets == ["q", "o"]:
                return inject_reference(m, targets, r, alpha, layer_cls)
            return whole_names_only(m, targets, r, alpha, layer_cls)

        check_inject(only_second_case)
    assert "matches whole names only" in str(info.value)
