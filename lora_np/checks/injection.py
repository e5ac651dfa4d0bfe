"""Checkers for notebook 02's injection: putting LoRA layers into a model by module name, and
freezing everything else.

* ``inject(model, targets, r, alpha, layer_cls)`` replaces, in place, every module whose dotted
  name equals a target or ends with "." + target (PEFT's rule for a list of ``target_modules``)
  by ``layer_cls(module, r, alpha)`` and returns the replaced names.
* ``mark_only_lora_as_trainable(model)`` leaves exactly the LoRA parameters trainable: those
  named ``A`` or ``B`` (a dotted name ending in ".A" or ".B").

The references below take the same arguments and work with any LoRA class (the learner's or
the library's). The cases are small GPTs (the course's ``transformer.GPT``, two blocks) and
nested toy models whose names tell the classic mistakes apart (a name containing a target, a
name ending in a target without the dot, a target three levels down). ``layer_cls`` in the
inject cases is a small recording class, so the checker sees what each replacement wraps.
"""

from __future__ import annotations

from .. import lora, nn, transformer
from ._harness import ExerciseError, call, describe, exercise, np, passed, snapshot, unchanged
from .lora_linear import _own_random_stream

__all__ = [
    "check_inject",
    "check_mark_only_lora_as_trainable",
    "inject_reference",
    "is_lora_parameter",
    "mark_only_lora_as_trainable_reference",
]


# ----------------------------------------------------------------------------- references


def inject_reference(model: nn.Module, targets, r: int, alpha: float, layer_cls) -> list:
    """Replace every module that ``targets`` name by ``layer_cls(module, r, alpha)``, in place.

    Args:
        model: any Module. targets: a list of names; an entry matches a module whose dotted
            name equals it or ends with "." + entry. r, alpha: passed to ``layer_cls``.
    Returns:
        The dotted names of the replaced modules, in model order.
    """
    names = [
        name
        for name, _ in model.named_modules()
        if name and any(nn.name_matches(name, t) for t in targets)
    ]  # collected first: the model is not changed while it is walked
    for name in names:
        model.set_submodule(name, layer_cls(model.get_submodule(name), r, alpha))
    return names


def is_lora_parameter(name: str) -> bool:
    """Whether a dotted parameter name is a LoRA factor: it ends in "A" or "B"."""
    return name.rpartition(".")[2] in ("A", "B")


def mark_only_lora_as_trainable_reference(model: nn.Module) -> None:
    """Freeze every parameter of ``model`` except the LoRA factors A and B (made trainable)."""
    for name, p in model.named_parameters():
        p.requires_grad_(is_lora_parameter(name))


# ----------------------------------------------------------------------------- cases


class _Wrapped(nn.Module):
    """The ``layer_cls`` the inject checker passes: it records what it was built with."""

    def __init__(self, base, r, alpha):
        super().__init__()
        self.base, self.r, self.alpha = base, r, alpha

    def forward(self, x):
        return self.base(x)


class _TinyLoRA(nn.Module):
    """A LoRA layer as a learner writes it: base, A and B as attributes."""

    def __init__(self, base, r, alpha):
        super().__init__()
        self.base = base
        base.requires_grad_(False)
        self.A = nn.Parameter(np.full((r, base.in_features), 0.1, dtype=base.weight.data.dtype))
        self.B = nn.Parameter(np.zeros((base.out_features, r), dtype=base.weight.data.dtype))
        self.scaling = alpha / r


class _Toy(nn.Module):
    """A Linear ``fc`` at three depths (fc, inner.fc, inner.inner.fc), beside names a wrong
    rule also picks: ``fc_out`` (contains "fc"), ``deep_gate_fc`` (ends in "fc" without the
    dot) and a LayerNorm ``fcn``."""

    def __init__(self, depth: int = 2):
        super().__init__()
        self.fc = nn.Linear(4, 6)
        self.fc_out = nn.Linear(6, 4)  # contains "fc", does not end in ".fc"
        self.fcn = nn.LayerNorm(4)
        if depth:
            self.inner = _Toy(depth - 1)
            self.deep_gate_fc = nn.Linear(4, 4)  # ends in "fc" without the dot


def _tiny_gpt():
    return transformer.GPT(
        transformer.GPTConfig(vocab_size=20, block_size=8, n_embd=16, n_head=2, n_layer=2)
    )


def _inject_cases():
    """(description, model, targets, r, alpha), built in a fixed order (the checker's seed)."""
    return [
        ("the tiny GPT (2 blocks), targets ['q', 'o']", _tiny_gpt(), ["q", "o"], 2, 4.0),
        (
            "the tiny GPT, targets ['fc', 'blocks.1.attn.v']",
            _tiny_gpt(),
            ["fc", "blocks.1.attn.v"],
            3,
            6.0,
        ),
        ("a nested toy model (fc at three depths), targets ['fc']", _Toy(), ["fc"], 1, 2.0),
    ]


# ----------------------------------------------------------------------------- inject


def _explain_extra(extra: list, targets) -> str | None:
    """The rule that selects names PEFT's rule does not: a suffix without the dot, a substring."""
    if any(n.endswith(t) for n in extra for t in targets):
        return (
            "It uses name.endswith(t) without the dot: 'deep_gate_fc' ends in 'fc' but is not "
            "a module named fc; test name == t or name.endswith('.' + t)."
        )
    if any(t in n for n in extra for t in targets):
        return (
            "It matches a target anywhere in the name (`target in name`): PEFT's rule is the "
            "whole name or its last dotted parts, name == t or name.endswith('.' + t)."
        )
    return None


def _wrong_missing(model, targets) -> list:
    """(explanation, names) of the rules that select too few modules."""
    right = [
        n for n, _ in model.named_modules() if n and any(nn.name_matches(n, t) for t in targets)
    ]
    return [
        (
            "It misses nested modules: walk the whole tree with model.named_modules(), not "
            "only the model's direct children, and select a name equal to a target or ending "
            "in '.' + target.",
            [n for n, _ in model.named_children() if n in targets],
        ),
        (
            "It replaces only the first match of each target: every module whose name matches "
            "is replaced (the same Linear sits in every block).",
            [next(n for n in right if nn.name_matches(n, t)) for t in targets],
        ),
        (
            "It matches whole names only: a target also matches a name ending in '.' + target "
            "(['q'] selects blocks.0.attn.q).",
            [n for n in right if n in targets],
        ),
    ]


def _names_given(got, name: str, case: str) -> list:
    # read through list's and tuple's own methods: a subclass may break len() or iteration
    items = (
        list(tuple.__iter__(got))
        if isinstance(got, tuple)
        else list(list.__iter__(got))
        if isinstance(got, list)
        else None
    )
    if items is None or not all(type(n) is str for n in items):
        raise ExerciseError(
            f"{name} returned {describe(got)} on {case}; expected the list of replaced names"
        )
    if len(set(items)) != len(items):
        raise ExerciseError(f"{name} returned a name twice on {case}: {items}")
    return items


def _check_in_place(model, modules: dict, want: list, r, alpha, name: str, case: str) -> None:
    """Each wanted name holds a ``_Wrapped`` of the original module; nothing else changed."""
    now = dict(model.named_modules())
    if not any(isinstance(m, _Wrapped) for m in now.values()):
        raise ExerciseError(
            f"{name} left the model unchanged on {case}: replace the modules in the model you "
            "were given (model.set_submodule(name, ...) or setattr on the parent), not in a copy"
        )
    for target in want:
        module = now.get(target)
        if not isinstance(module, _Wrapped):
            raise ExerciseError(
                f"{name}: `{target}` is {describe(module)} after the call on {case}; expected "
                "layer_cls(module, r, alpha) in its place"
            )
        if module.base is not modules[target]:
            raise ExerciseError(
                f"{name}: `{target}` wraps a copy, not the model's own module, on {case}: "
                "pass the module itself to layer_cls (its weights are the pretrained ones)"
            )
        if (module.r, module.alpha) != (r, alpha):
            raise ExerciseError(
                f"{name}: `{target}` was built with r = {module.r!r}, alpha = {module.alpha!r} "
                f"on {case}; expected layer_cls(module, r, alpha) with r = {r}, alpha = {alpha:g}"
            )
    for other, module in modules.items():
        if other not in want and not any(other.startswith(t + ".") for t in want):
            if now.get(other) is not module:
                raise ExerciseError(
                    f"{name} replaced or removed `{other}` on {case}, which no target names"
                )


@exercise("inject", inject_reference)
def check_inject(fn, *, quiet: bool = False) -> None:
    """Check ``fn(model, targets, r, alpha, layer_cls)`` -> the replaced names; in place."""
    name = "inject"
    n_cases = 0
    with _own_random_stream():
        cases = _inject_cases()
    for case, model, targets, r, alpha in cases:
        modules = dict(model.named_modules())
        want = [n for n in modules if n and any(nn.name_matches(n, t) for t in targets)]
        mistakes = _wrong_missing(model, targets)
        before = snapshot(targets)
        got = call(fn, name, case, model, targets, r, alpha, _Wrapped)
        unchanged(name, case, ("targets",), before, (targets,))
        got = _names_given(got, name, case)
        if sorted(got) != sorted(want):
            missing = [n for n in want if n not in got]
            extra = [n for n in got if n not in want]
            explained = _explain_extra(extra, targets)
            for explanation, wrong in mistakes:
                if sorted(wrong) != sorted(want) and sorted(got) == sorted(wrong):
                    explained = explanation
                    break  # the first that fits: nested modules missed before whole names only
            if explained:
                raise ExerciseError(f"{name}: wrong modules on {case}. {explained}")
            raise ExerciseError(
                f"{name}: wrong modules on {case}: missing {missing or 'none'}, "
                f"not targeted {extra or 'none'}"
            )
        _check_in_place(model, modules, want, r, alpha, name, case)
        n_cases += 1
    passed(name, n_cases, quiet)


# ----------------------------------------------------------------------------- mark


def _mark_cases():
    """(description, model, start) with start "all" (every parameter trainable) or "none"."""
    gpt_lib = _tiny_gpt()
    lora.inject(gpt_lib, ["q", "v"], 2, 4.0)
    gpt_frozen = _tiny_gpt()
    lora.inject(gpt_frozen, ["fc", "o"], 2, 4.0)
    toy = _Toy()
    inject_reference(toy, ["fc"], 2, 2.0, _TinyLoRA)
    return [
        ("the tiny GPT with lora.LoRALinear on q and v, every parameter trainable", gpt_lib, "all"),
        ("the tiny GPT with LoRA on fc and o, every parameter frozen", gpt_frozen, "none"),
        ("a nested toy model with a learner-style LoRA class on fc, all trainable", toy, "all"),
    ]


def _trainable(model) -> list:
    return [n for n, p in model.named_parameters() if p.requires_grad]


@exercise("mark_only_lora_as_trainable", mark_only_lora_as_trainable_reference)
def check_mark_only_lora_as_trainable(fn, *, quiet: bool = False) -> None:
    """Check ``fn(model)``: afterwards exactly the parameters named A or B are trainable."""
    name = "mark_only_lora_as_trainable"
    n_cases = 0
    with _own_random_stream():
        cases = _mark_cases()
    for case, model, start in cases:
        model.requires_grad_(start == "all")
        params = list(model.named_parameters())
        want = [n for n, _ in params if is_lora_parameter(n)]
        values = [(n, id(p), p.numpy().copy()) for n, p in params]
        returned = call(fn, name, case, model)
        if returned is not None and returned is not model:
            raise ExerciseError(
                f"{name} returned {describe(returned)} on {case}; expected nothing (None): it "
                "changes the model in place"
            )
        now = list(model.named_parameters())
        if [(n, id(p)) for n, p in now] != [(n, i) for n, i, _ in values]:
            raise ExerciseError(f"{name} added, removed or replaced parameters on {case}")
        for (n, _, before), (_, p) in zip(values, now):
            if not np.array_equal(before, p.numpy()):
                raise ExerciseError(f"{name} changed the values of `{n}` on {case}")
        got = _trainable(model)
        if got == want:
            n_cases += 1
            continue
        frozen_lora = [n for n in want if n not in got]
        extra = [n for n in got if n not in want]
        if extra:
            raise ExerciseError(
                f"{name}: on {case} the base is left trainable ({len(extra)} parameters that "
                f"are not A or B, e.g. `{extra[0]}`): freeze every parameter first, "
                "model.requires_grad_(False), then unfreeze A and B"
            )
        raise ExerciseError(
            f"{name}: on {case} LoRA is frozen ({len(frozen_lora)} of its {len(want)} A and B "
            f"parameters, e.g. `{frozen_lora[0]}`, do not require a gradient): make every "
            "parameter named A or B trainable, p.requires_grad_(True)"
        )
    passed(name, n_cases, quiet)
