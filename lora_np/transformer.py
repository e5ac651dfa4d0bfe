"""A tiny GPT built from lora_np's own parts, read top-down as nanoGPT's ``model.py``.

Blocks first (attention, MLP, a pre-norm block), then the config, then the model. Every
projection is its own ``Linear`` — q, k, v and o in attention, fc and proj in the MLP — so
LoRA can be put on any of them by name (``blocks.0.attn.q``, ``blocks.3.mlp.fc``, ...).

Shapes: ``B`` batch, ``T`` sequence length, ``C`` = n_embd, ``nh`` heads, ``hs`` = C / nh,
``V`` vocabulary size.

Weights are saved as safetensors through :mod:`lora_np.serialization` (a JSON header and raw arrays; no
pickle), written to a temporary file and renamed, so a crash never leaves half a checkpoint.
The file carries the model's config in its metadata, so ``GPT.load(path)`` needs nothing else.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from . import backend, nn, serialization
from . import functional as F
from .autograd import Tensor, no_grad


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with separate q, k, v and output (o) projections."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        C = config.n_embd
        self.n_head = config.n_head
        self.q = nn.Linear(C, C)  # queries: what each position looks for
        self.k = nn.Linear(C, C)  # keys: what each position offers to be found by
        self.v = nn.Linear(C, C)  # values: what each position hands over when found
        self.o = nn.Linear(C, C)  # output projection back into the residual stream
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, C) -> (B, T, C)"""
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        # each Linear works on the (B*T, C) rows in one 2-D GEMM (see F.linear)
        q = self.q(x).reshape(B, T, nh, hs).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
        k = self.k(x).reshape(B, T, nh, hs).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
        v = self.v(x).reshape(B, T, nh, hs).transpose(0, 2, 1, 3)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(0, 2, 1, 3).reshape(B, T, C)  # (B, T, C): heads side by side again
        return self.dropout(self.o(y))  # (B, T, C)


class MLP(nn.Module):
    """Position-wise feed-forward: fc (C -> 4C), GELU, proj (4C -> C)."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.gelu = nn.GELU()
        self.proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, C) -> (B, T, C)"""
        return self.dropout(self.proj(self.gelu(self.fc(x))))  # (B, T, 4C) inside


class Block(nn.Module):
    """A pre-norm transformer block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, T, C) -> (B, T, C)"""
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


@dataclass(frozen=True)
class GPTConfig:
    """The shape of a GPT; two models with equal configs can swap weights."""

    vocab_size: int = 64  # token ids are 0 .. vocab_size-1 (data.py's tokenizer uses 40)
    block_size: int = 64  # longest sequence read; one learned position per index
    n_embd: int = 128  # width of the residual stream, C
    n_head: int = 4  # attention heads per layer; each has n_embd // n_head channels
    n_layer: int = 4  # transformer blocks
    dropout: float = 0.0  # dropout after attention, the MLP and the embeddings (0 = off)

    def __post_init__(self):
        # NumPy numbers are accepted and stored as Python ones, so asdict() stays JSON
        for name in ("vocab_size", "block_size", "n_embd", "n_head", "n_layer"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
            if type(value) is not int:
                object.__setattr__(self, name, int(value))
        if self.n_embd % self.n_head:
            raise ValueError(
                f"GPTConfig: n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                f"each head needs n_embd / n_head channels (try n_head in "
                f"{[h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0 and h <= 16]})"
            )
        dropout = self.dropout
        if not (_is_number(dropout) and 0.0 <= dropout < 1.0):
            raise ValueError(f"GPTConfig.dropout must be a number in [0, 1), got {dropout!r}")
        if type(dropout) not in (int, float):
            object.__setattr__(self, "dropout", float(dropout))

    def differences(self, other: GPTConfig) -> list[str]:
        """``"field: mine vs other's"`` for every field where the two configs differ."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} vs {getattr(other, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]

    @classmethod
    def from_dict(cls, values: dict) -> GPTConfig:
        """A config from a dict such as ``asdict(config)``; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown GPTConfig field(s) {unknown}; expected some of {sorted(known)}"
            )
        return cls(**values)


class GPT(nn.Module):
    """A decoder-only transformer: embeddings, ``n_layer`` pre-norm blocks, final norm, head.

    ``model(idx, targets=None) -> (logits, loss)`` with ``idx`` an integer array ``(B, T)``,
    ``logits`` a Tensor ``(B, T, V)`` and ``loss`` the mean cross-entropy over the targets that
    are not -100 (None when no targets are given).
    """

    output_layer_name = "head"  # what lora.inject(model, "all-linear", ...) leaves out

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)  # token -> vector
        self.pos_emb = nn.Embedding(config.block_size, config.n_embd)  # position -> vector
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # untied from tok_emb
        self._init_weights()

    def _init_weights(self) -> None:
        """GPT-2's initialisation: N(0, 0.02) weights, zero biases, and the projections that
        write into the residual stream (attn.o, mlp.proj) scaled by 1/sqrt(2 n_layer) so the
        stream's variance does not grow with depth."""
        rng = backend.rng()
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(".bias") or name.startswith("ln_") or ".ln_" in name:
                continue  # LayerNorm (ones, zeros) and biases (zeros, below) keep their start
            std = residual_std if name.endswith(("attn.o.weight", "mlp.proj.weight")) else 0.02
            p.data = (rng.standard_normal(p.shape) * std).astype(p.dtype)
        for name, p in self.named_parameters():
            if name.endswith(".bias") and ".ln_" not in name and not name.startswith("ln_"):
                p.data = backend.xp.zeros_like(p.data)

    def _check_idx(self, idx):
        """idx as a backend integer array (B, T), or a ValueError naming what is wrong."""
        ids = idx.data if isinstance(idx, Tensor) else backend.xp.asarray(idx)
        if ids.ndim != 2:
            raise ValueError(f"GPT expects token ids of shape (B, T), got shape {tuple(ids.shape)}")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"GPT expects integer token ids, got dtype {ids.dtype}")
        T = ids.shape[1]
        if T > self.config.block_size:
            raise ValueError(
                f"sequence of length {T} is longer than the model's block_size "
                f"{self.config.block_size}"
            )
        if ids.size:
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= self.config.vocab_size:
                bad = low if low < 0 else high
                raise ValueError(
                    f"token id {bad} is outside the vocabulary: expected ids in "
                    f"[0, {self.config.vocab_size})"
                )
        return ids

    def forward(self, idx, targets=None):
        """idx: int (B, T); targets: int (B, T) or None -> (logits (B, T, V), loss or None)"""
        ids = self._check_idx(idx)
        B, T = ids.shape
        positions = backend.xp.arange(T)  # (T,)
        x = self.tok_emb(ids) + self.pos_emb(positions)  # (B, T, C) + (T, C) -> (B, T, C)
        x = self.drop(x)
        for block in self.blocks:
            x = block(x)  # (B, T, C)
        x = self.ln_f(x)  # (B, T, C)
        logits = self.head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits, targets)  # scalar; -100 targets do not count
        return logits, loss

    def generate(
        self,
        idx,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
    ):
        """Extend every row of ``idx`` (B, T) by ``max_new_tokens`` tokens -> (B, T + max_new_tokens).

        Greedy (the most likely token) when ``temperature`` is 0, the default; otherwise sample
        from softmax(logits / temperature), keeping only the ``top_k`` most likely tokens if
        given, with a host generator seeded by ``seed``. Rows longer than ``block_size`` are
        cropped to their last ``block_size`` tokens before each step, as in nanoGPT. The loop
        is :func:`generate_tokens`, which also serves prompts of different lengths that stop at
        an end token (``data.generate_answers``).
        """
        ids = backend.to_numpy(self._check_idx(idx)).astype(backend.np.int64)  # (B, T), host
        tokens, _ = generate_tokens(
            self, ids, max_new_tokens, temperature=temperature, top_k=top_k, seed=seed
        )
        return tokens

    # ------------------------------------------------------------------ saving and loading
    def save(self, path, metadata: dict | None = None, partner=None) -> Path:
        """Write the weights (float32 or float64 as they are) and config to a safetensors file.

        The write is atomic: a temporary file in the same folder, then a rename. ``metadata``
        (str -> str) is stored in the header beside the config; ``partner`` (a file name and
        its bytes) is written beside it as a pair (``serialization.write_pair``). Only the
        plain GPT is saved, what :meth:`load` builds: a model with LoRA (or other foreign)
        layers is refused, with what to do instead.
        """
        foreign = [
            f"{name} ({type(m).__name__})"
            for name, m in self.named_modules()
            if name  # the root may be a subclass of GPT
            and type(m).__module__ not in (__name__, nn.__name__)
            and getattr(m, "weights_are_parameters", True)  # quantised: save_weights says why
        ]
        if foreign:
            raise ValueError(
                f"cannot save {path}: GPT.save writes the plain GPT that GPT.load builds, and "
                f"this model has other layers: {', '.join(foreign[:4])}"
                f"{' ...' if len(foreign) > 4 else ''}. Save an adapter with "
                "lora.save_adapter (beside the base's own file), or lora.merge_and_unload first "
                "to save a plain GPT with the update built in"
            )
        meta = {"model": "lora_np.GPT", "config": json.dumps(asdict(self.config))}
        return serialization.save_weights(self, path, {**meta, **(metadata or {})}, partner)

    @classmethod
    def load(cls, path, config: GPTConfig | None = None) -> GPT:
        """A GPT with the weights of a file written by :meth:`save`.

        The config comes from the file; a ``config`` given as well must equal it (the error
        names every field that differs, with both values). A corrupt or truncated file, or one
        whose weights do not fit its config, raises ValueError; nothing is built from a file
        that fails a check.
        """
        if config is not None and not isinstance(config, GPTConfig):
            raise TypeError(f"config must be a GPTConfig or None, got {type(config).__name__}")
        header, meta = serialization.read_header(path)  # sizes first: nothing allocated yet
        if "config" not in meta:
            raise ValueError(
                f"{path} has no GPT config in its metadata; was it written by GPT.save?"
            )
        try:
            file_config = GPTConfig.from_dict(json.loads(meta["config"]))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path} holds an unreadable GPT config: {err}") from err
        if config is not None and config != file_config:
            raise ValueError(
                f"{path} holds a GPT of another config (file vs given): "
                + "; ".join(file_config.differences(config))
            )
        problems = _misfits(file_config, header)
        if problems:  # before cls(file_config) allocates what the config says
            raise ValueError(
                f"checkpoint {path} does not fit its own config: {'; '.join(problems)}"
            )
        model = cls(file_config)
        tensors, _ = serialization.read_weights(path)
        try:
            model.load_state_dict(tensors)  # checks names and shapes, all before any change
        except nn.StateDictError as err:
            raise ValueError(f"checkpoint {path} does not fit its own config: {err}") from err
        return model


def _misfits(config: GPTConfig, header: dict) -> list:
    """How a checkpoint's tensors (``header``: name -> (dtype, shape)) differ from the sizes
    its config implies, for every config field that sets a size: vocab_size, block_size,
    n_embd (the other widths are multiples of it) and n_layer."""
    C = config.n_embd
    expected = {
        "tok_emb.weight": (config.vocab_size, C),
        "pos_emb.weight": (config.block_size, C),
        "head.weight": (config.vocab_size, C),
    }
    problems = [
        f"{name} is {header[name][1] if name in header else 'missing'} in the file, "
        f"the config implies {shape}"
        for name, shape in expected.items()
        if name not in header or tuple(header[name][1]) != shape
    ]
    blocks = {int(n.split(".")[1]) for n in header if re.match(r"blocks\.\d+\.", n)}
    if blocks != set(range(config.n_layer)):
        problems.append(
            f"the file holds blocks {sorted(blocks)}, the config n_layer={config.n_layer}"
        )
    return problems


def _check_generation(max_new_tokens, temperature, top_k) -> None:
    if not (_is_int(max_new_tokens) and max_new_tokens >= 0):
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    if not (_is_number(temperature) and math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if top_k is not None and not (_is_int(top_k) and top_k >= 1):
        raise ValueError(f"top_k must be an int >= 1 or None, got {top_k!r}")


def generate_tokens(
    model,
    prompts,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
    stop_id: int | None = None,
    pad_id: int = 0,
    vocab_limit: int | None = None,
):
    """The generation loop: extend each prompt token by token -> (tokens, last).

    ``prompts`` is a sequence of B token-id sequences, each of length >= 1; they may differ in
    length. They are right-padded with ``pad_id`` into ``tokens`` (B, longest +
    max_new_tokens), where each row keeps its own write position: because attention is causal,
    the padding right of a row's position never changes that row's logits (up to float
    rounding: BLAS rounds another matrix shape differently), so one forward pass per step serves
    them all. ``last`` (B,) is the index of each row's last written token.

    Each step reads the logits at every row's position, picks the next token (greedy when
    ``temperature`` is 0, else sampled from softmax(logits / temperature) over the ``top_k``
    most likely, with a host generator seeded by ``seed``; only ids below ``vocab_limit`` if
    given) and writes it. A row stops after writing ``stop_id`` (kept); the loop stops when
    every row has stopped or after ``max_new_tokens`` steps. When the rows would outgrow the
    model's ``block_size``, prompts of one length are cropped to their last ``block_size``
    tokens (as nanoGPT does); prompts of different lengths are an error, since a shared crop
    would cut their contexts differently.

    ``model(idx)`` must return ``(logits, loss)`` with logits (B, T, V); it runs in eval mode
    without a graph, and gets its train/eval mode back afterwards.
    """
    np = backend.np
    _check_generation(max_new_tokens, temperature, top_k)
    rows_in = [np.asarray(p, dtype=np.int64).reshape(-1) for p in prompts]
    lengths = np.array([len(p) for p in rows_in], dtype=np.int64)  # (B,)
    if len(rows_in) and lengths.min() == 0:
        raise ValueError(f"prompt {int(lengths.argmin())} is empty: each needs >= 1 token")
    B = len(rows_in)
    longest = int(lengths.max()) if B else 0
    tokens = np.full((B, longest + max_new_tokens), pad_id, dtype=np.int64)  # (B, T_max)
    for b, p in enumerate(rows_in):
        tokens[b, : len(p)] = p
    last = lengths - 1  # (B,) position of each row's last token
    if B == 0 or max_new_tokens == 0:
        return tokens, last
    block_size = getattr(getattr(model, "config", None), "block_size", None)
    if block_size is not None and tokens.shape[1] > block_size and lengths.min() != longest:
        raise ValueError(
            f"a prompt of {longest} tokens plus {max_new_tokens} new tokens needs "
            f"{tokens.shape[1]} positions, more than the model's block_size {block_size}"
        )
    rng = np.random.default_rng(seed)
    done = np.zeros(B, dtype=bool)  # (B,)
    rows = np.arange(B)
    was_training = getattr(model, "training", None)
    if hasattr(model, "eval"):
        model.eval()
    try:
        with no_grad():
            for _ in range(max_new_tokens):
                width = int(last[~done].max()) + 1
                start = 0 if block_size is None else max(0, width - block_size)
                logits, _ = model(backend.xp.asarray(tokens[:, start:width]))  # (B, W, V)
                read = np.where(done, width - 1, last) - start  # a stopped row's is not used
                at = (backend.xp.asarray(rows), backend.xp.asarray(read))
                scores = backend.to_numpy(logits.data[at])[:, :vocab_limit]  # (B, V)
                nxt = _pick(scores, temperature, top_k, rng)  # (B,)
                nxt = np.where(done, pad_id, nxt)
                tokens[rows, last + 1] = nxt
                last = np.where(done, last, last + 1)
                if stop_id is not None:
                    done |= nxt == stop_id
                    if done.all():
                        break
    finally:
        if was_training is not None and hasattr(model, "train"):
            model.train(was_training)
    return tokens, last


def _pick(scores, temperature: float, top_k: int | None, rng):
    """The next token of every row from its scores (B, V): argmax, or a draw from
    softmax(scores / temperature) over the ``top_k`` best (in float64, on the host)."""
    np = backend.np
    if temperature == 0:
        return scores.argmax(axis=-1)  # (B,)
    scores = scores.astype(np.float64) / temperature
    if top_k is not None:
        kth = np.sort(scores, axis=-1)[:, -min(top_k, scores.shape[-1])][:, None]
        scores = np.where(scores < kth, -np.inf, scores)
    probs = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)  # (B, V)
    return np.array([rng.choice(len(p), p=p) for p in probs])  # (B,)


CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
PRETRAINED_PATH = CHECKPOINT_DIR / "tiny_gpt.safetensors"


def load_pretrained(path=None) -> GPT:
    """The shipped base model (``lora_np/checkpoints/tiny_gpt.safetensors``), in eval mode.

    Its training run, config and scores are in ``tiny_gpt.json`` beside it; rebuild it from
    scratch with ``python -m lora_np.pretrain``.
    """
    path = Path(path) if path is not None else PRETRAINED_PATH
    if not path.exists():
        raise FileNotFoundError(
            f"no pretrained checkpoint at {path}; run `python -m lora_np.pretrain` to make it"
        )
    return GPT.load(path).eval()
