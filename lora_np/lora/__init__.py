"""LoRA: low-rank adaptation of a frozen ``Linear`` layer, and the tools around it.

The idea (Hu et al. 2021, Eq. 3): keep the pretrained weight W0 (d, k) frozen and learn a
low-rank update ΔW = B A, with A (r, k) and B (d, r), r much smaller than min(d, k):

    h = W0 x + b + s · B A x,        s = alpha / r   (or alpha / sqrt(r) with rsLoRA)

A starts random and B starts at zero, so ΔW = 0 and the adapted model starts exactly where the
pretrained one was. Only A and B get gradients and optimiser state.

The package, one idea per module, in reading order (every public name is importable from
``lora_np.lora``):

1. ``validation``: the checks every operation runs first, and the scaling rule.
2. ``layer``: ``LoRAAdapter`` (one adapter's A, B and settings, its initialisations) and
   ``LoRALinear`` (a Linear with named adapters; merge / unmerge; disable).
3. ``targeting``: ``inject``, ``find_targets``, ``mark_only_lora_as_trainable``,
   ``lora_parameters``, ``count_parameters`` / ``trainable_summary``.
4. ``management``: model-wide ``add_adapter`` / ``set_adapter`` / ``delete_adapter`` /
   ``disable_adapters``, ``merge_adapter`` / ``unmerge_adapter`` / ``merge_and_unload`` /
   ``unload``.
2b. ``dora``: ``DoRALinear`` (DoRA: a trainable magnitude over LoRA's direction) and
   ``dora_linear``.
5. ``combine``: ``combine_adapters``.
6. ``peft_format``: ``save_adapter`` / ``load_adapter`` / ``adapter_config`` in PEFT's layout.

The rules, in one place:

* **Merging.** ``merge()`` adds s·B·A of the active adapter into the base weight in place; the
  layer then costs exactly one Linear. ``unmerge()`` subtracts the same s·B·A again. Merging a
  merged layer or unmerging an unmerged one is a RuntimeError, never a silent double update.
  While merged, the adapters are locked: switching, disabling, deleting the merged adapter and
  combining raise a RuntimeError that says to ``unmerge()`` first (the paper's recipe for
  switching tasks: subtract B A, add B' A').
* **Several adapters.** A layer holds named adapters; one is *active* (used in forward and the
  only one whose A and B require a gradient). ``add_adapter`` adds a frozen, inactive adapter;
  ``set_adapter`` makes one active and trainable (as PEFT does). Deleting the active adapter
  activates the first remaining one; the last adapter cannot be deleted (use ``unload``).
* **Errors leave nothing changed.** Every check runs before the first change.
"""

from .combine import combine_adapters
from .dora import DoRALinear, dora_linear
from .layer import LoRAAdapter, LoRALinear
from .management import (
    add_adapter,
    delete_adapter,
    disable_adapters,
    merge_adapter,
    merge_and_unload,
    set_adapter,
    unload,
    unmerge_adapter,
)
from .peft_format import (
    CONFIG_NAME,
    PREFIX,
    WEIGHTS_NAME,
    adapter_config,
    load_adapter,
    save_adapter,
)
from .targeting import (
    count_parameters,
    find_targets,
    inject,
    lora_layers,
    lora_parameters,
    mark_only_lora_as_trainable,
    trainable_summary,
)
from .validation import DEFAULT_ADAPTER, INITS, scaling

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_ADAPTER",
    "INITS",
    "PREFIX",
    "WEIGHTS_NAME",
    "DoRALinear",
    "LoRAAdapter",
    "LoRALinear",
    "adapter_config",
    "add_adapter",
    "combine_adapters",
    "count_parameters",
    "delete_adapter",
    "dora_linear",
    "disable_adapters",
    "find_targets",
    "inject",
    "load_adapter",
    "lora_layers",
    "lora_parameters",
    "mark_only_lora_as_trainable",
    "merge_adapter",
    "merge_and_unload",
    "save_adapter",
    "scaling",
    "set_adapter",
    "trainable_summary",
    "unload",
    "unmerge_adapter",
]
