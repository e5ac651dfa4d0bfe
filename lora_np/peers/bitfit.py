"""BitFit (Ben Zaken et al. 2021; the LoRA paper's §5.1 baseline): only the biases train.

Every bias of the model trains: the Linear layers' (q, k, v, o, fc, proj) and the LayerNorms'
shifts (beta). Everything else is frozen. Nothing is added to the model, so there is nothing to
merge and no latency; the trained model is saved whole (``GPT.save``) or as its biases.
On the tiny GPT: 11 C per block (4 C attention, 4 C + C MLP, 2 C LayerNorms) plus C for ln_f.
"""

from __future__ import annotations

from .. import nn


def bias_parameters(model: nn.Module) -> list:
    """(dotted name, Parameter) of every bias in ``model``: names ending in "bias"."""
    return [(n, p) for n, p in model.named_parameters() if n == "bias" or n.endswith(".bias")]


def mark_only_bias_as_trainable(model: nn.Module) -> list:
    """Freeze everything but the biases (BitFit); return the names of what trains.

    Raises ValueError, changing nothing, when the model has no bias at all.
    """
    biases = bias_parameters(model)
    if not biases:
        raise ValueError(
            f"{type(model).__name__} has no bias parameters; BitFit would train nothing"
        )
    model.requires_grad_(False)
    for _, p in biases:
        p.requires_grad_(True)
    return [n for n, _ in biases]
