"""Prefix tuning (Li & Liang 2021; the LoRA paper's §5.1 baselines): a frozen GPT reads ``l_p``
trainable positions before every input.

* **Prefix-embedding tuning** (``mode="embedding"``, the paper's PreEmbed): the prefix is l_p
  trainable vectors in the token-embedding space, P: (l_p, C), |Θ| = C l_p.
* **Prefix-layer tuning** (``mode="layer"``, PreLayer): the activations at the prefix positions
  are trainable *entering every block*, P: (L, l_p, C), |Θ| = L C l_p (what comes out of the
  last block there is never read: positions after it only see earlier ones).

Either way the prefix occupies positions 0 .. l_p-1 (with their position embeddings), and the
input moves to positions l_p .. l_p+T-1: a prefix costs ``block_size`` that the task cannot use,
and an input of more than ``block_size - l_p`` tokens is refused. (The paper's infix tokens l_i
are not modelled.)

At start the prefix is ``l_p`` real tokens (random vocabulary entries, seeded; for the layer
mode, the activations the frozen model computes for them), as Li & Liang recommend. So the
output at start is *not* the base's on ``idx``: it is the base's on ``prefix_tokens + idx``
(tested), a model reading a longer input. There is no merge and no PEFT format here (PEFT's
prefix tuning stores per-layer keys and values, another design); the prefix is saved in
lora_np's own layout (:mod:`lora_np.peers.saving`).
"""

from __future__ import annotations

import dataclasses

from .. import backend, nn
from .. import functional as F
from ..autograd import Tensor, no_grad
from ..transformer import generate_tokens

MODES = ("embedding", "layer")


def prepend(prefix: Tensor, x: Tensor) -> Tensor:
    """[prefix, x] along the positions: prefix (P, C) for every row, x (B, T, C) -> (B, P+T, C)."""
    xp = backend.xp
    B, _, C = x.shape
    P = prefix.shape[0]
    out = xp.concatenate([xp.broadcast_to(prefix.data, (B, P, C)), x.data], axis=1)

    def backward(g):  # g: (B, P+T, C); the prefix is shared by every row
        return (
            g[:, :P].sum(axis=0) if prefix.requires_grad else None,
            g[:, P:] if x.requires_grad else None,
        )

    return Tensor.from_op(out, (prefix, x), backward)


class PrefixTuning(nn.Module):
    """A frozen GPT behind ``n_prefix`` trainable positions; call it as the GPT:
    ``model(idx, targets=None) -> (logits (B, T, V), loss)``, logits for idx's positions only.

    Args:
        model: a ``transformer.GPT`` (frozen here).
        n_prefix: l_p >= 1, at most ``block_size - 1``.
        mode: "embedding" (P: (l_p, C)) or "layer" (P: (n_layer, l_p, C)).

    Attributes:
        prefix: the trainable Parameter. prefix_tokens: (l_p,) the ids it started from.
        config: the GPT's config with ``block_size`` reduced by l_p: the longest input it takes.
    """

    def __init__(self, model, n_prefix: int, mode: str = "embedding"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"prefix mode must be one of {MODES}, got {mode!r}")
        block_size = model.config.block_size
        if not (isinstance(n_prefix, int) and not isinstance(n_prefix, bool)):
            raise ValueError(f"n_prefix must be an int, got {n_prefix!r}")
        if not 1 <= n_prefix < block_size:
            raise ValueError(
                f"n_prefix={n_prefix} must be in [1, block_size - 1 = {block_size - 1}]: the "
                f"prefix takes positions of the model's block_size {block_size}"
            )
        self.mode, self.n_prefix = mode, n_prefix
        self.model = model.requires_grad_(False)
        ids = backend.rng().integers(0, model.config.vocab_size, size=n_prefix)
        self.prefix_tokens = backend.to_numpy(ids)  # (l_p,)
        self.prefix = nn.Parameter(self._initial_prefix(ids))

    def _initial_prefix(self, ids):
        """The start: the prefix tokens' embeddings (l_p, C), or, for the layer mode, the
        activations the frozen model computes at those positions entering every block
        (L, l_p, C)."""
        embedded = self.model.tok_emb.weight.data[ids]  # (l_p, C)
        if self.mode == "embedding":
            return embedded.copy()
        # Block 0's entry is the embedding (forward adds the position embeddings to it, as it
        # does for the input); block i's is what block i-1 computes there.
        acts = [embedded]
        with no_grad():
            x = self.model.tok_emb(ids[None]) + self.model.pos_emb(backend.xp.arange(len(ids)))
            for block in list(self.model.blocks)[:-1]:
                x = block(x)
                acts.append(x.data[0])  # (l_p, C) entering the next block
        return backend.xp.stack(acts)  # (L, l_p, C)

    @property
    def config(self):
        """The base's config, with the positions the prefix takes removed from block_size."""
        base = self.model.config
        return dataclasses.replace(base, block_size=base.block_size - self.n_prefix)

    def forward(self, idx, targets=None):
        """idx: int (B, T), T <= block_size - l_p -> (logits (B, T, V), loss or None)"""
        gpt, P = self.model, self.n_prefix
        ids = backend.xp.asarray(idx.data if isinstance(idx, Tensor) else idx)
        if ids.ndim == 2 and ids.shape[1] + P > gpt.config.block_size:
            raise ValueError(
                f"an input of {ids.shape[1]} tokens does not fit: the prefix takes {P} of the "
                f"model's block_size {gpt.config.block_size} positions, leaving "
                f"{gpt.config.block_size - P} for the input"
            )
        ids = gpt._check_idx(ids)  # shape, dtype and vocabulary checks
        B, T = ids.shape
        first = self.prefix if self.mode == "embedding" else self.prefix[0]  # (l_p, C)
        x = prepend(first, gpt.tok_emb(ids))  # (B, l_p + T, C)
        x = gpt.drop(x + gpt.pos_emb(backend.xp.arange(P + T)))  # prefix at positions 0..l_p-1
        for i, block in enumerate(gpt.blocks):
            if self.mode == "layer" and i > 0:
                x = prepend(self.prefix[i], x[:, P:])  # the trained activations replace these
            x = block(x)  # (B, l_p + T, C)
        logits = gpt.head(gpt.ln_f(x[:, P:]))  # (B, T, V): the input's positions only
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss

    def generate(self, idx, max_new_tokens: int, **sampling):
        """``GPT.generate`` behind the prefix: rows are cropped to ``block_size - l_p`` tokens
        (``self.config``) before each step. idx: (B, T) -> (B, T + max_new_tokens)."""
        ids = backend.to_numpy(backend.xp.asarray(idx)).astype(backend.np.int64)
        tokens, _ = generate_tokens(self, ids, max_new_tokens, **sampling)
        return tokens
