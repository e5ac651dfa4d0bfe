"""Exercise checkers: ``check_<name>(fn)`` runs your function against the library's own.

Each checker calls your function on random and edge cases, compares with the library's
implementation, and either prints one line (every case passed) or raises an ``AssertionError``
that names the case and the likely mistake. A checker cannot be passed by accident or by a trick:
its reference answer is computed first, from private copies of the inputs, with the library's
functions as they were when this package was imported; your function must leave its inputs
unchanged, return exactly the kind of value asked for, and return within a time limit
(``_guard.TIME_LIMIT_S`` seconds per call). When your function raises, the error shows your own
line, not the checker's. ``passing_or_reference(fn, name)`` gives your
function back when it passes, otherwise the library's, so later cells still run; with
``carry=True`` it also saves your passing answer to ``mine/<name>.py``, and a later notebook's
``yours_or_reference(name)`` gives it back (checked again) or the library's.

One module per notebook topic; this package sits above the rest of ``lora_np`` (it imports the
library for its reference answers, and nothing in the library imports it).
"""

from . import _harness
from ._harness import ExerciseError, passing_or_reference, yours_or_reference
from .adapter_files import check_save_adapter
from .adapters import check_mixed_lora_forward, check_quantize_blockwise
from .attention import check_causal_attention, check_split_heads
from .autodiff import check_topological_order, check_unbroadcast
from .block import check_block
from .finetune import check_count_trainable, check_optimizer_state_bytes
from .initialisation import check_init_lora, check_pissa_init
from .injection import check_inject, check_mark_only_lora_as_trainable
from .kaiming import check_kaiming_bound
from .layer import check_lora_forward, check_lora_grads, check_merge
from .lora_linear import check_lora_linear
from .low_rank import (
    check_best_rank_approximation,
    check_eckart_young_error,
    check_numerical_rank,
)
from .normalisation import check_layer_norm_backward
from .numerical import check_numerical_gradient
from .optimizer import check_adamw_step
from .optimizer_class import check_adamw
from .peers import check_adapter_forward, check_dora_forward, check_loraplus_rates
from .peft_names import check_opt_positions, check_peft_key, check_peft_lora_config
from .projection import check_projection_norm
from .scaling import check_adam_first_update, check_lora_scaling
from .svd import check_energy_rank, check_subspace_similarity
from .training import check_train_lora
from .value import check_value

__all__ = [
    "ExerciseError",
    "check_lora_linear",
    "check_block",
    "check_inject",
    "check_kaiming_bound",
    "check_mark_only_lora_as_trainable",
    "check_mixed_lora_forward",
    "check_quantize_blockwise",
    "check_causal_attention",
    "check_count_trainable",
    "check_optimizer_state_bytes",
    "check_save_adapter",
    "check_split_heads",
    "check_adam_first_update",
    "check_adamw",
    "check_adamw_step",
    "check_init_lora",
    "check_lora_scaling",
    "check_pissa_init",
    "check_best_rank_approximation",
    "check_eckart_young_error",
    "check_numerical_rank",
    "check_energy_rank",
    "check_opt_positions",
    "check_peft_key",
    "check_peft_lora_config",
    "check_projection_norm",
    "check_subspace_similarity",
    "check_adapter_forward",
    "check_dora_forward",
    "check_loraplus_rates",
    "check_layer_norm_backward",
    "check_lora_forward",
    "check_lora_grads",
    "check_merge",
    "check_topological_order",
    "check_train_lora",
    "check_unbroadcast",
    "check_numerical_gradient",
    "check_value",
    "passing_or_reference",
    "yours_or_reference",
]

_harness._guard.freeze_library()  # the library as imported: what every reference runs on
