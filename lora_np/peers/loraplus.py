"""LoRA+ (Hayou, Ghosh & Yu 2024, arXiv:2402.12354): B learns ``loraplus_lr_ratio`` times
faster than A.

With one learning rate for A and B, wide models fine-tune suboptimally; LoRA+ puts B (and, as
PEFT's ``create_loraplus_optimizer`` does, every other trainable 1-D parameter: biases, DoRA's
magnitude) in a parameter group whose learning rate is ``lr * loraplus_lr_ratio``.

The groups are PEFT's, in its order:

    groupA          A matrices and every other trainable >= 2-D weight   lr
    embedding       LoRA on an Embedding (PEFT's; lora_np has none)      loraplus_lr_embedding
    groupB          B matrices, and 1-D parameters that decay (DoRA's m) lr * ratio
    groupB_no_decay biases and LayerNorm parameters                      lr * ratio, no decay

``transformers``' rule for "decays" (every parameter outside a LayerNorm whose name has no
"bias") decides groupB against groupB_no_decay; ``loraplus_weight_decay`` is the decay of the
other groups (PEFT's name; default 0). Each non-empty group is one lora_np optimiser with its
own learning rate; an optimiser keeps its state per parameter (Adam's step count included), so
this equals one torch optimiser with these parameter groups (tests/crosscheck).
Unlike PEFT, which lets group settings override a ``weight_decay`` keyword silently, a
``weight_decay`` keyword is refused, naming ``loraplus_weight_decay``.
"""

from __future__ import annotations

from .. import nn, optim
from ..lora.layer import LoRAAdapter

GROUPS = ("groupA", "embedding", "groupB", "groupB_no_decay")


def _owners(model: nn.Module) -> dict:
    """id(parameter) -> (the module that holds it, its attribute name)."""
    owners = {}
    for _, module in model.named_modules():
        for attr, value in vars(module).items():
            if isinstance(value, nn.Parameter):
                owners.setdefault(id(value), (module, attr))
    return owners


def loraplus_groups(model: nn.Module) -> dict:
    """PEFT's LoRA+ grouping of ``model``'s trainable parameters: group name -> [(name, p)]."""
    owners = _owners(model)
    groups = {g: [] for g in GROUPS}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        module, attr = owners[id(p)]
        if (isinstance(module, LoRAAdapter) and attr == "B") or p.ndim == 1:
            # transformers' decay rule: LayerNorm parameters and "bias" names do not decay; a
            # 1-D parameter elsewhere (DoRA's m) does (PEFT puts it in groupB)
            no_decay = isinstance(module, nn.LayerNorm) or "bias" in name
            groups["groupB_no_decay" if no_decay else "groupB"].append((name, p))
        else:
            groups["groupA"].append((name, p))
    return groups


class LoRAPlusOptimizer:
    """One optimiser per LoRA+ parameter group, stepped together; usable as ``train``'s
    ``optimizer`` (it has ``lr``, ``state``, ``step_count``, ``zero_grad``, ``step``).

    Attributes:
        param_groups: [{"name", "params", "lr", "weight_decay", "lr_ratio"}] for the non-empty
            groups, in PEFT's order (torch's ``optimizer.param_groups`` shape); ``lr_ratio`` is
            the group's rate over ``lr`` (None: a fixed rate).
        optimizers: the lora_np optimiser of each of those groups.
        state: one dict (id(param) -> state) that every group's optimiser shares.
    """

    def __init__(self, groups: list, optimizer_cls, lr: float, **kwargs):
        self.param_groups = groups
        self.optimizers = [
            optimizer_cls(g["params"], lr=g["lr"], weight_decay=g["weight_decay"], **kwargs)
            for g in groups
        ]
        self.state: dict = {}
        for opt in self.optimizers:  # the keys (parameter ids) never collide across groups
            opt.state = self.state
        self._lr = optim.check_learning_rate(lr)

    @property
    def lr(self) -> float:
        """A's learning rate; setting it (a schedule does) moves every group's rate with it,
        keeping B's ``loraplus_lr_ratio`` times A's."""
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        self._lr = optim.check_learning_rate(value)
        for group, opt in zip(self.param_groups, self.optimizers, strict=True):
            if group["lr_ratio"] is not None:
                group["lr"] = opt.lr = value * group["lr_ratio"]

    @property
    def step_count(self) -> int:
        return self.optimizers[0].step_count

    @step_count.setter
    def step_count(self, value: int) -> None:
        for opt in self.optimizers:
            opt.step_count = value

    def zero_grad(self) -> None:
        for opt in self.optimizers:
            opt.zero_grad()

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def state_bytes(self) -> int:
        return sum(opt.state_bytes() for opt in self.optimizers)


def create_loraplus_optimizer(
    model: nn.Module,
    optimizer_cls,
    *,
    lr: float,
    loraplus_lr_ratio: float,
    loraplus_lr_embedding: float = 1e-6,
    loraplus_weight_decay: float = 0.0,
    **kwargs,
) -> LoRAPlusOptimizer:
    """PEFT's ``create_loraplus_optimizer``, same arguments and groups (see the module doc).

    Args:
        model: a model with trainable LoRA adapters (``lora.inject``).
        optimizer_cls: ``optim.Adam``, ``optim.AdamW`` or ``optim.SGD``.
        lr: A's learning rate; loraplus_lr_ratio: B's rate divided by A's (the paper suggests
            a large ratio, e.g. 16); loraplus_lr_embedding: trainable embeddings' rate.
        loraplus_weight_decay: every group's decay but groupB_no_decay's (0).
        kwargs: passed to every group's optimiser (betas, eps, momentum).
    """
    if "weight_decay" in kwargs:
        raise TypeError(
            "create_loraplus_optimizer sets each group's decay: pass loraplus_weight_decay="
            f"{kwargs['weight_decay']!r} instead of weight_decay"
        )
    weight_decay = loraplus_weight_decay
    optim.check_learning_rate(lr)
    optim.check_learning_rate(loraplus_lr_embedding)
    if not (isinstance(loraplus_lr_ratio, int | float) and loraplus_lr_ratio > 0):
        raise ValueError(f"loraplus_lr_ratio must be a number > 0, got {loraplus_lr_ratio!r}")
    settings = {  # (lr, weight decay, rate over lr)
        "groupA": (lr, weight_decay, 1),
        "embedding": (loraplus_lr_embedding, weight_decay, None),
        "groupB": (lr * loraplus_lr_ratio, weight_decay, loraplus_lr_ratio),
        "groupB_no_decay": (lr * loraplus_lr_ratio, 0.0, loraplus_lr_ratio),
    }
    groups = [
        {
            "name": g,
            "params": [p for _, p in found],
            "lr": settings[g][0],
            "weight_decay": settings[g][1],
            "lr_ratio": settings[g][2],
        }
        for g, found in loraplus_groups(model).items()
        if found
    ]
    if not groups:
        raise ValueError("the model has no trainable parameters; inject LoRA (lora.inject) first")
    return LoRAPlusOptimizer(groups, optimizer_cls, lr, **kwargs)
