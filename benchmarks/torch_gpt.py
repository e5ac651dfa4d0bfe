"""The tiny GPT written in PyTorch, mirroring ``lora_np.transformer.GPT`` layer for layer.

An outside reference for the benchmarks: the same parameter names (``blocks.0.attn.q.weight``
...), GELU in its tanh form, pre-norm blocks, causal attention, an untied head. ``TorchLoRA``
is the same LoRA layer as ``lora_np.lora.LoRALinear`` (h = W0 x + b + s B A x), written the
plain way a PyTorch user would write it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class Attention(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.q, self.k, self.v, self.o = (nn.Linear(n_embd, n_embd) for _ in range(4))

    def forward(self, x):
        B, T, C = x.shape

        def heads(t):
            return t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)

        y = F.scaled_dot_product_attention(
            heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), is_causal=True
        )
        return self.o(y.transpose(1, 2).reshape(B, T, C))  # (B, T, C)


class Mlp(nn.Module):
    def __init__(self, n_embd: int):
        super().__init__()
        self.fc = nn.Linear(n_embd, 4 * n_embd)
        self.proj = nn.Linear(4 * n_embd, n_embd)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln_1, self.attn = nn.LayerNorm(n_embd), Attention(n_embd, n_head)
        self.ln_2, self.mlp = nn.LayerNorm(n_embd), Mlp(n_embd)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TorchGPT(nn.Module):
    """Takes the fields of a ``lora_np.transformer.GPTConfig``."""

    def __init__(self, vocab_size, block_size, n_embd, n_head, n_layer, dropout=0.0):
        super().__init__()
        self.tok_emb = nn.Embedding(vocab_size, n_embd)
        self.pos_emb = nn.Embedding(block_size, n_embd)
        self.blocks = nn.ModuleList(Block(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd)
        self.head = nn.Linear(n_embd, vocab_size, bias=False)

    def forward(self, idx, targets=None):
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln_f(x))  # (B, T, V)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss


class TorchLoRA(nn.Module):
    """h = W0 x + b + (alpha / r) B A x with the base Linear frozen; A Kaiming-uniform, B = 0."""

    def __init__(self, base: nn.Linear, r: int, alpha: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.A = nn.Parameter(torch.empty(r, base.in_features))
        self.B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.scaling = alpha / r

    def forward(self, x):
        return self.base(x) + F.linear(F.linear(x, self.A), self.B) * self.scaling


def inject_lora(model: TorchGPT, targets=("q", "v"), r: int = 8, alpha: float = 16.0) -> None:
    """Freeze the model and wrap every attention projection named in ``targets``."""
    model.requires_grad_(False)
    for block in model.blocks:
        for name in targets:
            setattr(block.attn, name, TorchLoRA(getattr(block.attn, name), r, alpha))
