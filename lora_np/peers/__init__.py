"""LoRA's peers (issue 22): the other parameter-efficient methods the LoRA paper compares
against, and two that came after it, each small and beside LoRA on the same tiny GPT.

One module per method, in reading order:

1. ``adapters``: Adapter^H and Adapter^L, bottleneck layers in every block.
2. ``prefix``: prefix-embedding and prefix-layer tuning (positions of ``block_size``).
3. ``bitfit``: only the biases train.
4. ``loraplus``: LoRA+, B's learning rate a multiple of A's (parameter groups).
5. ``saving``: lora_np's own safetensors layout for what PEFT has no format for.

DoRA sits beside LoRA's layer (``lora_np.lora.DoRALinear``): it is a LoRA layer with a
magnitude, saved in PEFT's adapter format.
"""

from ..lora.dora import DoRALinear, dora_linear
from .adapters import AdaptedSublayer, BottleneckAdapter, adapter_layer_count, add_adapter_layers
from .bitfit import bias_parameters, mark_only_bias_as_trainable
from .loraplus import LoRAPlusOptimizer, create_loraplus_optimizer, loraplus_groups
from .prefix import PrefixTuning, prepend
from .saving import load_peer, save_peer

__all__ = [
    "AdaptedSublayer",
    "BottleneckAdapter",
    "DoRALinear",
    "LoRAPlusOptimizer",
    "PrefixTuning",
    "adapter_layer_count",
    "add_adapter_layers",
    "bias_parameters",
    "create_loraplus_optimizer",
    "dora_linear",
    "load_peer",
    "loraplus_groups",
    "mark_only_bias_as_trainable",
    "prepend",
    "save_peer",
]
