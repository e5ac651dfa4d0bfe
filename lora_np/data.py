"""Synthetic tasks for the tiny GPT: a character tokenizer, task generators, batching, scoring.

Every example is one line of text ``"<task>:<input>=<answer>."``, for instance::

    rev:lora=arol.

The model reads the prompt ``"rev:lora="`` and must write the answer ``"arol."``; the final
``"."`` is the end token that tells generation to stop. A task is named by three letters,
so the model learns which task it is doing from the prompt alone.

Two families of tasks live here:

* **Pretraining tasks** (:data:`PRETRAIN_TASKS`) — the base model learns all of them from
  scratch (``python -m lora_np.pretrain``). They give it its skills: copying, reversing,
  shifting letters, sorting, counting.
* **Downstream tasks** (:data:`DOWNSTREAM_TASKS`) — new prompts the base has never seen. The
  shipped base scores at most 10% on each; a LoRA adapter of rank 8 on q and v teaches each
  one in well under two minutes on a laptop CPU, except hop. They differ in what the adapter
  must change (each generator's docstring says what): swp, rot and dup change where the model
  looks; prv and sub change which letter it writes; rvn combines two skills the base already
  has. sub is the task where rank shows; hop is the hardest (q and v at r = 8 reach about 0.7 in
  1,200 steps, no better than k, o or all four at the same budget). Measured
  on the shipped base (batch 32, AdamW lr 3e-3, alpha 16, one CPU core; scores on 100
  held-out prompts)::

      task   base   LoRA q,v r=8: steps to >= 90%   r=1 after 60 s   r=2 after 60 s
      swp    0.08   200                             -                -
      rot    0.06   300                             -                -
      dup    0.00   300                             -                -
      prv    0.00   300                             -                -
      sub    0.00   800                             0.17             0.53
      rvn    0.00   plateaus near 0.87: the base's rev fails 7-letter inputs, rvn inherits it
      hop    0.00   0.64-0.80 after 1200 steps (alpha = 2r); k, o at r=8: 0.70-0.82;
                    q, k, v, o at r=4: 0.72-0.77 (3 seeds, 200 prompts,
                    experiments/07_which_matrices.py)

  (300 steps take about 10 s.) Two tasks combine through the data, not through the weights:
  one adapter trained on a mixture of swp and rot (``data.batches(["swp", "rot"], 32)``) does
  both, while the sum of two adapters trained separately loses both, even with replay
  (notebook 08 measures why).

Determinism: examples are drawn with host NumPy's PCG64 generator
(``backend.np.random.default_rng``), seeded from the task name and the seed, so a seed gives
the same tokens on every machine and every backend. Each example belongs to the ``"train"``
or the ``"test"`` split by a hash of its prompt, so a test prompt is never trained on.

Shapes: ``B`` is the batch size, ``T`` the sequence length (the longest example in a batch).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from . import backend
from .transformer import generate_tokens

# ----------------------------------------------------------------------------------------------
# The tokenizer: one token per character, a fixed vocabulary of 40 symbols.

PAD = "_"
"""Padding (id 0): fills a batch's short rows; never a target, never in a prompt."""
END = "."
"""End of an answer: generation stops once the model writes it."""
SEP = "="
"""Separates a prompt's input from its answer: the prompt ends with it."""
TASK_SEP = ":"
"""Separates the task name from its input."""
LETTERS = "abcdefghijklmnopqrstuvwxyz"
DIGITS = "0123456789"

VOCAB = PAD + END + SEP + TASK_SEP + LETTERS + DIGITS
"""Every symbol the tokenizer knows; a symbol's id is its index here (``PAD`` is 0)."""

PAD_ID = VOCAB.index(PAD)
END_ID = VOCAB.index(END)
IGNORE_INDEX = -100
"""Target value for positions that do not count in the loss (PyTorch's default)."""

_STOI = {ch: i for i, ch in enumerate(VOCAB)}


def encode(text: str) -> list[int]:
    """Token ids of ``text``, one per character; a ValueError names any unknown character."""
    ids = []
    for position, ch in enumerate(text):
        if ch not in _STOI:
            raise ValueError(
                f"character {ch!r} at position {position} of {text!r} is not in the vocabulary; "
                f"expected one of {VOCAB!r}"
            )
        ids.append(_STOI[ch])
    return ids


def decode(ids) -> str:
    """The text of a sequence of token ids (any int sequence or 1-D array); PAD ids are kept."""
    ids = (
        [int(i) for i in backend.to_numpy(ids).reshape(-1)] if hasattr(ids, "shape") else list(ids)
    )
    for position, i in enumerate(ids):
        if not 0 <= i < len(VOCAB):
            raise ValueError(
                f"token id {i} at position {position} is outside the vocabulary [0, {len(VOCAB)})"
            )
    return "".join(VOCAB[i] for i in ids)


# ----------------------------------------------------------------------------------------------
# The tasks. Each generator draws one (input, answer) pair from a NumPy Generator; the answer
# excludes the END token, which is added by make_examples.


def _word(rng, low: int, high: int, alphabet: str = LETTERS) -> str:
    """A random string of ``low..high`` (inclusive) characters from ``alphabet``."""
    n = int(rng.integers(low, high + 1))
    return "".join(alphabet[i] for i in rng.integers(0, len(alphabet), size=n))


def _shift(text: str, k: int) -> str:
    """Each letter moved ``k`` places along the alphabet, wrapping z -> a."""
    return "".join(LETTERS[(LETTERS.index(c) + k) % 26] for c in text)


# Pretraining tasks ---------------------------------------------------------------------------


def _cpy(rng):
    """cpy — copy the input: ``cpy:lora=lora.`` (1–8 letters)."""
    s = _word(rng, 1, 8)
    return s, s


def _rev(rng):
    """rev — reverse the input: ``rev:lora=arol.`` (1–8 letters)."""
    s = _word(rng, 1, 8)
    return s, s[::-1]


def _nxt(rng):
    """nxt — each letter to the next one, z wraps to a: ``nxt:lora=mpsb.`` (1–8 letters)."""
    s = _word(rng, 1, 8)
    return s, _shift(s, 1)


def _srt(rng):
    """srt — the letters in alphabetical order: ``srt:lora=alor.`` (1–8 letters)."""
    s = _word(rng, 1, 8)
    return s, "".join(sorted(s))


def _cnt(rng):
    """cnt — how many letters, in decimal: ``cnt:lora=4.`` (1–12 letters)."""
    s = _word(rng, 1, 12)
    return s, str(len(s))


# Downstream tasks ----------------------------------------------------------------------------


def _swp(rng):
    """swp — swap each adjacent pair: ``swp:abcdef=badcfe.`` (2–8 letters, even).

    A new routing rule: every output letter is an input letter, read one place to the left or
    right. Only where the model *looks* changes, which is what the query projection decides,
    so a LoRA on q and v learns it quickly.
    """
    n = 2 * int(rng.integers(1, 5))  # an even length, 2..8
    s = _word(rng, n, n)
    return s, "".join(s[i + 1] + s[i] for i in range(0, len(s), 2))


def _rot(rng):
    """rot — rotate left by one, the first letter goes last: ``rot:lora=oral.`` (2–8 letters).

    Another routing rule (read the next input letter; at the end go back to the start). The
    base copies well, so the adapter only moves its attention by one place.
    """
    s = _word(rng, 2, 8)
    return s, s[1:] + s[0]


def _rvn(rng):
    """rvn — reverse, then shift each letter by one: ``rvn:lora=bspm.`` (1–8 letters).

    A composition of two pretraining skills (rev's routing and nxt's letter map): the adapter
    must switch both on for one prompt. It can only be as good as the base's rev.
    """
    s = _word(rng, 1, 8)
    return s, _shift(s[::-1], 1)


def _prv(rng):
    """prv — each letter to the previous one, a wraps to z: ``prv:lora=knqz.`` (1–8 letters).

    A new letter map (the inverse of nxt's) on plain copying routing. The base knows the
    alphabet's order from nxt, so even a small adapter on q and v learns it quickly.
    """
    s = _word(rng, 1, 8)
    return s, _shift(s, -1)


def _dup(rng):
    """dup — write every letter twice: ``dup:lora=lloorraa.`` (1–6 letters).

    Routing at half speed: output position i reads input position i // 2.
    """
    s = _word(rng, 1, 6)
    return s, "".join(c + c for c in s)


_SUB_KEY = "qwertyuiopasdfghjklzxcvbnm"  # a fixed substitution key: a -> q, b -> w, ...


def _sub(rng):
    """sub — encrypt with a fixed substitution key, ``a->q b->w c->e ...`` (the keyboard's
    letter rows): ``sub:lora=sgkq.`` (1–8 letters).

    A brand-new 26-entry lookup table that no pretraining task resembles; routing is plain
    copying, all the work is the letter map. This is the task where rank shows: the table
    does not fit through a rank-1 adapter, and the score climbs with r (the table at the top of this module).
    """
    s = _word(rng, 1, 8)
    return s, "".join(_SUB_KEY[LETTERS.index(c)] for c in s)


def _hop(rng):
    """hop — move each letter forward by the digit (0–3) written after it:
    ``hop:a3c1=dd.`` (1–4 letter-digit pairs).

    Every output letter depends on *two* input tokens, a letter and the digit beside it, and
    the base has never had to read a digit (digits appear only in cnt's answers). This is the
    task where q and v are not the best choice: spreading the same number of parameters over
    q, k, v and o (at half the rank) does better on every seed, and adapting the MLP instead
    does worse (notebook 07).
    """
    n = int(rng.integers(1, 5))
    letters = [LETTERS[i] for i in rng.integers(0, 26, size=n)]
    steps = [int(k) for k in rng.integers(0, 4, size=n)]
    text = "".join(f"{c}{k}" for c, k in zip(letters, steps))
    return text, "".join(_shift(c, k) for c, k in zip(letters, steps))


@dataclass(frozen=True)
class Task:
    """One task family: its name (the prompt's first three letters) and its generator."""

    name: str  # three letters, the start of every prompt of this task
    draw: Callable  # rng -> (input, answer) strings, answer without the END token
    pretrain: bool  # True if the base model is pretrained on it

    @property
    def description(self) -> str:
        """The generator's docstring: what the task is, with an example."""
        return (self.draw.__doc__ or "").strip()


TASKS: dict[str, Task] = {
    t.name: t
    for t in (
        Task("cpy", _cpy, True),
        Task("rev", _rev, True),
        Task("nxt", _nxt, True),
        Task("srt", _srt, True),
        Task("cnt", _cnt, True),
        Task("swp", _swp, False),
        Task("rot", _rot, False),
        Task("rvn", _rvn, False),
        Task("prv", _prv, False),
        Task("dup", _dup, False),
        Task("sub", _sub, False),
        Task("hop", _hop, False),
    )
}
"""Every task by name."""

PRETRAIN_TASKS = tuple(name for name, t in TASKS.items() if t.pretrain)
"""The tasks the base model is pretrained on (an equal mixture)."""
DOWNSTREAM_TASKS = tuple(name for name, t in TASKS.items() if not t.pretrain)
"""Tasks the base has never seen, for fine-tuning."""

SPLITS = ("train", "test")
_TEST_FRACTION = 5  # one prompt in five belongs to the test split


def _check_task(task: str) -> Task:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(map(repr, TASKS))}")
    return TASKS[task]


def _split_of(prompt: str) -> str:
    """``"test"`` for one prompt in five (by a CRC32 hash, the same on every machine)."""
    return "test" if zlib.crc32(prompt.encode()) % _TEST_FRACTION == 0 else "train"


def task_rng(task: str, seed: int):
    """The host NumPy generator for ``task`` and ``seed`` (independent streams per task)."""
    return backend.np.random.default_rng([int(seed), zlib.crc32(task.encode())])


def make_examples(task: str, n: int, seed: int = 0, split: str = "train") -> list[tuple[str, str]]:
    """``n`` examples of ``task`` as ``(prompt, answer)`` strings.

    The prompt ends with ``"="``, the answer with ``"."``::

        >>> make_examples("rev", 2, seed=0)
        [('rev:...=', '....'), ...]

    ``split`` picks prompts from the train or the test side of a fixed hash split, so a model
    evaluated on ``split="test"`` has never trained on those prompts. Very short inputs have
    few distinct values; the two splits then share none of them, and examples repeat.
    """
    spec = _check_task(task)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    if n < 0:
        raise ValueError(f"number of examples must be >= 0, got {n}")
    rng = task_rng(task, seed)
    examples: list[tuple[str, str]] = []
    while len(examples) < n:
        text, answer = spec.draw(rng)
        prompt = f"{task}{TASK_SEP}{text}{SEP}"
        if _split_of(prompt) == split:
            examples.append((prompt, answer + END))
    return examples


def make_mixture(
    tasks: Sequence[str], n: int, seed: int = 0, split: str = "train"
) -> list[tuple[str, str]]:
    """``n`` examples drawn evenly from the entries of ``tasks``, shuffled by ``seed``.

    A task named twice gets twice the share: ``["swp"] * 5 + list(PRETRAIN_TASKS)`` is half
    swp and half the pretraining mixture (rehearsal, so an adapter also learns what *not* to
    change).
    """
    if not tasks:
        raise ValueError("make_mixture needs at least one task")
    counts: dict[str, int] = {}
    for i, task in enumerate(tasks):
        counts[task] = counts.get(task, 0) + n // len(tasks) + (i < n % len(tasks))
    examples = [ex for task, k in counts.items() for ex in make_examples(task, k, seed, split)]
    order = backend.np.random.default_rng([int(seed), 0x5EED]).permutation(len(examples))
    return [examples[i] for i in order]


# ----------------------------------------------------------------------------------------------
# Encoding and batching.


def encode_examples(examples: Sequence[tuple[str, str]], length: int | None = None):
    """Token arrays for teacher-forced training on ``(prompt, answer)`` pairs.

    Returns ``(idx, targets)``, host NumPy int64 arrays of shape ``(B, T)`` with
    ``T = max(len(prompt + answer)) - 1`` (or ``length`` if given). ``idx`` holds each
    sequence without its last token, padded with PAD; ``targets[b, t]`` is the token that
    should follow ``idx[b, :t+1]`` where that token is part of the answer, and
    ``IGNORE_INDEX`` (-100) everywhere else (the prompt and the padding), so the loss is the
    answer's alone.
    """
    np = backend.np
    if not examples:
        raise ValueError("encode_examples needs at least one example")
    sequences = [encode(p + a) for p, a in examples]
    longest = max(len(s) for s in sequences) - 1
    T = longest if length is None else length
    if T < longest:
        raise ValueError(
            f"length {length} is shorter than the longest example ({longest} input tokens)"
        )
    B = len(sequences)
    idx = np.full((B, T), PAD_ID, dtype=np.int64)  # (B, T)
    targets = np.full((B, T), IGNORE_INDEX, dtype=np.int64)  # (B, T)
    for b, ((prompt, _), seq) in enumerate(zip(examples, sequences)):
        idx[b, : len(seq) - 1] = seq[:-1]
        start = len(prompt) - 1  # the position whose next token is the answer's first
        targets[b, start : len(seq) - 1] = seq[len(prompt) :]
    return idx, targets


def batches(
    tasks: str | Sequence[str], batch_size: int, seed: int = 0, split: str = "train"
) -> Iterator[tuple]:
    """An endless stream of ``(idx, targets)`` batches, each ``(B, T)`` as in :func:`encode_examples`.

    ``tasks`` is one task name or a list of them (each batch then mixes them evenly). Batch
    ``k`` of a stream depends only on ``(tasks, seed, k)``.
    """
    names = [tasks] if isinstance(tasks, str) else list(tasks)
    for name in names:
        _check_task(name)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    step = 0
    while True:
        yield encode_examples(
            make_mixture(names, batch_size, seed=seed * 1_000_003 + step, split=split)
        )
        step += 1


# ----------------------------------------------------------------------------------------------
# Scoring: batched greedy generation and exact match.


def generate_answers(
    model, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 256
) -> list[str]:
    """Greedy answers for ``prompts`` of any lengths, ``batch_size`` prompts per forward pass.

    Each answer runs up to and including the END token, or is cut after ``max_new_tokens``
    tokens. Prompts of different lengths share one batch: the loop
    (:func:`lora_np.transformer.generate_tokens`) right-pads them and keeps a write position
    per row, which causal attention makes safe. Only the tokenizer's symbols are written (a
    model may have spare ids).

    ``model(idx)`` must return ``(logits, loss)`` with logits ``(B, T, vocab)``.
    """
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    encoded = [encode(p) for p in prompts]
    for prompt, ids in zip(prompts, encoded):
        if not ids:
            raise ValueError(f"prompt {prompt!r} is empty; a prompt needs at least one token")
    answers: list[str] = []
    for first in range(0, len(encoded), batch_size):
        chunk = encoded[first : first + batch_size]
        tokens, last = generate_tokens(
            model, chunk, max_new_tokens, stop_id=END_ID, pad_id=PAD_ID, vocab_limit=len(VOCAB)
        )
        for b, ids in enumerate(chunk):
            answers.append(decode(tokens[b, len(ids) : last[b] + 1]).rstrip(PAD))
    return answers


def evaluate(
    model, task: str, n: int = 200, seed: int = 1234, split: str = "test", batch_size: int = 256
) -> dict:
    """Greedy exact-match score of ``model`` on ``n`` examples of ``task``.

    An answer counts only if it equals the expected answer exactly, END token included.
    Returns ``{"task", "exact_match" (a fraction), "n", "examples": [(prompt, expected, got)]}``.
    """
    examples = make_examples(task, n, seed=seed, split=split)
    prompts = [p for p, _ in examples]
    longest = max(len(a) for _, a in examples)
    got = generate_answers(model, prompts, max_new_tokens=longest, batch_size=batch_size)
    rows = [(p, a, g) for (p, a), g in zip(examples, got)]
    correct = sum(a == g for _, a, g in rows)
    return {"task": task, "exact_match": correct / max(n, 1), "n": n, "examples": rows}


def exact_match(
    model, task: str, n: int = 200, seed: int = 1234, split: str = "test", batch_size: int = 256
) -> float:
    """The fraction of ``n`` test prompts of ``task`` that ``model`` answers exactly (greedy)."""
    return evaluate(model, task, n=n, seed=seed, split=split, batch_size=batch_size)["exact_match"]
