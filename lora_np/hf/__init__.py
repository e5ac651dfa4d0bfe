"""From lora_np to Hugging Face: the tiny GPT as a transformers OPT model, its adapters as PEFT's.

* ``export(model, folder)``: config.json + model.safetensors that
  ``transformers.AutoModelForCausalLM.from_pretrained(folder)`` loads (OPTForCausalLM, no custom
  code), and each adapter in ``folder/<adapter name>/`` for ``peft.PeftModel.from_pretrained``.
  Needs no torch.
* ``load(folder)``: such a folder back into lora_np, with its adapters.
* ``load_peft_adapter(model, folder)``: an adapter PEFT trained on the exported model, into
  lora_np's GPT.

Names are translated (``blocks.0.attn.q`` <-> ``model.decoder.layers.0.self_attn.q_proj``,
see ``hf.names``); weights, ranks, alphas and rsLoRA carry over unchanged. What cannot be
expressed on the other side is refused, naming it, before anything is written or changed.
"""

from .adapters import load_peft_adapter
from .model import CONFIG_FILE, WEIGHTS_FILE, base_state, export, load, load_base
from .names import from_opt, to_opt

__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "base_state",
    "export",
    "from_opt",
    "load",
    "load_base",
    "load_peft_adapter",
    "to_opt",
]
