"""Adapter layers (the LoRA paper's §3 and §5.1 baselines): small bottleneck networks inserted
into every block, trained while the model stays frozen.

    adapter(h) = h + W_up act(W_down norm(h) + b_down) + b_up
    W_down: (r, C), b_down: (r,), W_up: (C, r), b_up: (C,)       r: the bottleneck width

W_up and b_up start at zero, so an adapter starts as the identity and the adapted model
computes exactly the base's outputs. Two designs, as the paper compares them:

* **Adapter^H** (Houlsby et al. 2019): one adapter after attention and one after the MLP, each
  on the sublayer's output *before* the block's residual add; no norm inside; the blocks'
  LayerNorms (ln_1, ln_2) train too, as Houlsby does.
* **Adapter^L** (Lin et al. 2020): one adapter after the MLP only, with its own LayerNorm
  in front (the "norm" above), which trains with it.

Both give the paper's count |Θ| = L̂_Adpt (2 C r + r + C) + 2 L̂_LN C (L̂_Adpt = 2L, L̂_LN = 2L
for H; L and L for L). Unlike LoRA, an adapter cannot be merged into a weight (the
nonlinearity sits between its two products), so it adds two products per adapter to every
forward pass: the latency of Table 1. There is no PEFT format for these; they are saved in
lora_np's own layout (:mod:`lora_np.peers.saving`).
"""

from __future__ import annotations

from .. import backend, nn
from .. import functional as F
from ..autograd import Tensor

KINDS = ("houlsby", "lin")
ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class BottleneckAdapter(nn.Module):
    """h -> h + up(act(down(norm(h)))): (..., C) -> (..., C), the identity at start."""

    def __init__(
        self,
        d_model: int,
        r: int,
        activation: str = "relu",
        layer_norm: bool = False,
        dtype="float32",
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        self.activation = activation
        self.norm = nn.LayerNorm(d_model, dtype=dtype) if layer_norm else None
        self.down = nn.Linear(d_model, r, dtype=dtype)  # (r, C), (r,): Linear's random start
        self.up = nn.Linear(r, d_model, dtype=dtype)  # (C, r), (C,): zero, so it starts as h
        self.up.weight.data = backend.xp.zeros_like(self.up.weight.data)
        self.up.bias.data = backend.xp.zeros_like(self.up.bias.data)

    def forward(self, h: Tensor) -> Tensor:
        """h: (..., C) -> (..., C)"""
        z = h if self.norm is None else self.norm(h)
        return h + self.up(ACTIVATIONS[self.activation](self.down(z)))  # (..., r) inside


class AdaptedSublayer(nn.Module):
    """A block's sublayer (attention or MLP) followed by an adapter: adapter(base(x)); the
    block adds its residual afterwards, as for the plain sublayer."""

    def __init__(self, base: nn.Module, adapter: BottleneckAdapter):
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, C) -> (B, T, C)"""
        return self.adapter(self.base(x))


def _check(model, kind, r, activation) -> None:
    if kind not in KINDS:
        raise ValueError(f"adapter kind must be one of {KINDS}, got {kind!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    blocks = getattr(model, "blocks", None)
    if blocks is None or not len(blocks):
        raise ValueError(f"{type(model).__name__} has no transformer blocks to put adapters in")
    C = model.config.n_embd
    if not (isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= C):
        raise ValueError(f"adapter width r must be an int in [1, n_embd={C}], got {r!r}")
    for i, block in enumerate(blocks):
        if isinstance(block.attn, AdaptedSublayer) or isinstance(block.mlp, AdaptedSublayer):
            raise ValueError(f"block {i} already has adapter layers; add them once")


def add_adapter_layers(model, kind: str, r: int, activation: str = "relu") -> list:
    """Put Adapter^H (``kind="houlsby"``) or Adapter^L (``"lin"``) into every block of a GPT,
    in place; freeze everything else (the blocks' LayerNorms train for H). Returns the names of
    the trainable parameters. Everything is checked before the model changes.

    The sublayers move to ``blocks.<i>.attn.base`` / ``blocks.<i>.mlp.base``; the adapters are
    ``blocks.<i>.attn.adapter`` (H only) and ``blocks.<i>.mlp.adapter``.
    """
    _check(model, kind, r, activation)
    C, dtype = model.config.n_embd, model.tok_emb.weight.dtype  # adapters in the model's dtype
    model.requires_grad_(False)
    for block in model.blocks:
        if kind == "houlsby":
            block.attn = AdaptedSublayer(
                block.attn, BottleneckAdapter(C, r, activation, False, dtype)
            )
            block.ln_1.requires_grad_(True)
            block.ln_2.requires_grad_(True)
        adapter = BottleneckAdapter(C, r, activation, kind == "lin", dtype)
        block.mlp = AdaptedSublayer(block.mlp, adapter)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def adapter_layer_count(n_layer: int, d_model: int, r: int, kind: str) -> int:
    """The paper's |Θ| = L̂_Adpt (2 C r + r + C) + 2 L̂_LN C for this model and kind."""
    per_adapter = 2 * d_model * r + r + d_model
    adapters, norms = (2 * n_layer, 2 * n_layer) if kind == "houlsby" else (n_layer, n_layer)
    return adapters * per_adapter + 2 * norms * d_model
