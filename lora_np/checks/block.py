"""Checker for notebook 06's transformer block as a class: ``Block(config)``.

The learner's class is built from a small :class:`~lora_np.transformer.GPTConfig`, its
parameters are given the library block's (random, LayerNorms different from each other and
from their start) by ``load_state_dict``, and its output is compared with the library's
:class:`~lora_np.transformer.Block` on sequences of one token and of several, a batch of one and
of several, in float64 and float32. Changing a later token must leave every earlier position's
output as it was (the causal mask, proven on the learner's own block). The answers that the
classic wrong blocks give (post-LN, a residual missing, no activation or ReLU in the MLP, one
LayerNorm used twice, attention without the mask) are computed from the same weights, so a
match names the mistake.
"""

from __future__ import annotations

import contextlib

from .. import backend, nn, transformer
from .. import functional as F
from ..autograd import Tensor, no_grad
from ._harness import ExerciseError, as_array, call, compare, describe, exercise, np, passed

__all__ = ["check_block"]

NAME = "Block"

# a block small enough to read: C = 8 channels in 2 heads of 4
CONFIG = transformer.GPTConfig(vocab_size=11, block_size=8, n_embd=8, n_head=2, n_layer=1)

# (B, T, dtype, description): one token alone, then sequences, one and several
_CASES = [
    (1, 1, "float64", "one sequence of one token (B=1, T=1), float64"),
    (1, 5, "float64", "one sequence of 5 tokens, float64"),
    (3, 6, "float64", "a batch of 3 sequences of 6 tokens, float64"),
    (2, 4, "float32", "a batch of 2 sequences of 4 tokens, float32"),
]


@contextlib.contextmanager
def _own_random_stream():
    """Let the blocks built here draw their initial weights, then give the caller its random
    stream back (the notebook's later cells draw from it)."""
    generator = backend.rng()
    saved = getattr(getattr(generator, "bit_generator", None), "state", None)
    try:
        yield
    finally:
        if saved is not None:
            generator.bit_generator.state = saved


def _weights(rng) -> dict:
    """Random weights for every parameter of the library's block, by name (float64)."""
    out = {}
    for name, p in transformer.Block(CONFIG).named_parameters():
        if ".ln_" in f".{name}" and name.endswith(".weight"):
            out[name] = 1.0 + 0.3 * rng.standard_normal(p.shape)  # not ones: ln_1 != ln_2
        elif name.endswith(".bias"):
            out[name] = 0.2 * rng.standard_normal(p.shape)
        else:
            out[name] = 0.4 * rng.standard_normal(p.shape)
    return out


def block_reference(weights: dict, x: np.ndarray) -> np.ndarray:
    """The library block's output for ``x`` (B, T, C) with ``weights``, as a host array."""
    block = transformer.Block(CONFIG).to(str(x.dtype))
    block.load_state_dict(weights)
    with no_grad():
        return np.asarray(backend.to_numpy(block.eval()(Tensor(x.copy())).data))


def _attention(attn, h: Tensor, causal: bool) -> Tensor:
    """CausalSelfAttention.forward with the mask on or off: (B, T, C) -> (B, T, C)."""
    B, T, C = h.shape
    nh = attn.n_head
    q, k, v = (
        m(h).reshape(B, T, nh, C // nh).transpose(0, 2, 1, 3) for m in (attn.q, attn.k, attn.v)
    )
    y = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return attn.o(y.transpose(0, 2, 1, 3).reshape(B, T, C))


def _mistakes(weights: dict, x: np.ndarray) -> list:
    """(explanation, output) for each classic wrong block, with the same weights."""
    ref = transformer.Block(CONFIG).to(str(x.dtype))
    ref.load_state_dict(weights)
    ln_1, ln_2, attn, mlp = ref.ln_1, ref.ln_2, ref.attn, ref.mlp

    def attend(h, causal=True):
        return _attention(attn, h, causal)

    def ff(h, act=F.gelu):
        return mlp.proj(act(mlp.fc(h)))

    def run(fn):
        with no_grad():
            return np.asarray(backend.to_numpy(fn(Tensor(x.copy())).data))

    def post_ln(x):
        x = ln_1(x + attend(x))
        return ln_2(x + ff(x))

    def no_attn_residual(x):
        h = attend(ln_1(x))
        return h + ff(ln_2(h))

    def no_mlp_residual(x):
        return ff(ln_2(x + attend(ln_1(x))))

    def both(x, norm_2=ln_2, act=F.gelu, causal=True):
        x = x + attend(ln_1(x), causal)
        return x + ff(norm_2(x), act)

    return [
        (
            "It is post-LN (x = ln(x + attn(x)), the original transformer's order): this block "
            "is pre-LN, x = x + attn(ln_1(x)), then x = x + mlp(ln_2(x)); the residual stream "
            "itself is never normalised.",
            run(post_ln),
        ),
        (
            "The residual around attention is missing: x = x + attn(ln_1(x)), not attn(ln_1(x)).",
            run(no_attn_residual),
        ),
        (
            "The residual around the MLP is missing: return x + mlp(ln_2(x)), not mlp(ln_2(x)).",
            run(no_mlp_residual),
        ),
        (
            "The MLP has no activation between fc and proj: without GELU the two layers are one "
            "linear map. Apply F.gelu to fc's output.",
            run(lambda x: both(x, act=lambda h: h)),
        ),
        (
            "The MLP uses ReLU; this block's MLP uses GELU (F.gelu).",
            run(lambda x: both(x, act=F.relu)),
        ),
        (
            "The two LayerNorms are shared: ln_1 is used before the MLP too. Each sub-layer has "
            "its own LayerNorm with its own weight and bias: use ln_2 before the MLP.",
            run(lambda x: both(x, norm_2=ln_1)),
        ),
        (
            "Attention is not causal: each position reads later tokens too. Mask the future "
            "(F.scaled_dot_product_attention(q, k, v, is_causal=True), or the library's "
            "CausalSelfAttention).",
            run(lambda x: both(x, causal=False)),
        ),
    ]


def _fail(text: str, case: str) -> ExerciseError:
    return ExerciseError(f"{NAME}: {text} (on {case})")


def _built(cls, dtype: str, weights: dict, case: str):
    """The learner's ``Block(CONFIG)`` in ``dtype`` holding ``weights``, in eval mode."""
    if (
        isinstance(cls, type)
        and cls is not transformer.Block
        and issubclass(cls, transformer.Block)
    ):
        raise _fail(
            "your class inherits from the library's Block, so its forward is the library's: "
            "write `class Block(ln.nn.Module):` with your own __init__ and forward",
            case,
        )
    block = call(cls, NAME, case, CONFIG)
    if not isinstance(block, nn.Module):
        raise _fail(
            f"Block(config) gave {describe(block)}; expected an ln.nn.Module (write "
            "`class Block(ln.nn.Module):` and call super().__init__())",
            case,
        )
    ln_1, ln_2 = getattr(block, "ln_1", None), getattr(block, "ln_2", None)
    if ln_1 is not None and ln_1 is ln_2:
        raise _fail(
            "self.ln_1 and self.ln_2 are the same LayerNorm: the two LayerNorms are shared. "
            "Each sub-layer gets its own (two ln.nn.LayerNorm(C) objects)",
            case,
        )
    names = [n for n, _ in block.named_parameters()]
    missing = sorted(set(weights) - set(names))
    extra = sorted(set(names) - set(weights))
    if missing or extra:
        said = f" missing: {', '.join(missing)}." if missing else ""
        said += f" not expected: {', '.join(extra)}." if extra else ""
        raise _fail(
            "its parameters are not named like the library's block's, so the shipped weights "
            f"cannot be loaded into it.{said} Use the attribute names ln_1, attn "
            "(CausalSelfAttention(config)), ln_2 and mlp (MLP(config))",
            case,
        )
    block.to(dtype)
    block.load_state_dict({n: w.astype(dtype) for n, w in weights.items()})
    block.eval()
    return block


def _forward(block, x: np.ndarray, case: str) -> np.ndarray:
    given = Tensor(x.copy())
    out = call(block, NAME, case, given)
    if not np.array_equal(np.asarray(backend.to_numpy(given.data)), x):
        raise _fail("forward changed its input x in place: build a new Tensor (x = x + ...)", case)
    if isinstance(out, Tensor) and not out.requires_grad:
        raise _fail(
            "the output does not require a gradient: forward must use the engine's modules and "
            "ops on Tensors (not .data or NumPy arrays), so that the block can train",
            case,
        )
    if not isinstance(out, Tensor) and isinstance(out, np.ndarray):
        raise _fail(
            f"forward returned {describe(out)}; expected a Tensor built with the engine's ops",
            case,
        )
    return as_array(out, NAME, case, x.shape)


def _causal(block, x: np.ndarray, got: np.ndarray, rng, case: str) -> None:
    """Changing the token at a later position leaves every earlier output as it was."""
    T = x.shape[1]
    t = T // 2
    changed = x.copy()
    changed[:, t:] = rng.standard_normal(changed[:, t:].shape).astype(x.dtype)
    again = _forward(block, changed, case + ", later tokens changed")
    eps = float(np.finfo(x.dtype).eps)
    scale = max(1.0, float(np.max(np.abs(got))))
    if np.any(np.abs(again[:, :t] - got[:, :t]) > 1e3 * eps * scale):
        raise _fail(
            f"changing the tokens from position {t} on changed the outputs at positions 0..{t - 1}: "
            "the block reads the future. Attention must be causal (mask the later keys)",
            case,
        )


@exercise(NAME, transformer.Block)
def check_block(cls, *, quiet: bool = False) -> None:
    """Check a class ``Block(config)``: a pre-LN transformer block (an ``ln.nn.Module``) named
    like the library's (ln_1, attn, ln_2, mlp) whose forward maps (B, T, C) -> (B, T, C) as the
    library's ``transformer.Block`` does, causally."""
    n_cases = 0
    rng = np.random.default_rng(20260707)  # the cases' inputs and weights (the grader's differ)
    with _own_random_stream():
        for B, T, dtype, case in _CASES:
            weights = _weights(rng)
            x = rng.standard_normal((B, T, CONFIG.n_embd)).astype(dtype)
            want = block_reference(weights, x)
            # with one token there is no future to mask: the unmasked answer is the same
            mistakes = _mistakes(weights, x)[: None if T > 1 else -1]
            block = _built(cls, dtype, weights, case)
            got = _forward(block, x, case)
            compare(got, want, NAME, case, mistakes, "output", np.dtype(dtype))
            if T > 1:
                _causal(block, x, got, rng, case)
            n_cases += 1
    passed(NAME, n_cases, quiet)
