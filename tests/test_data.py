"""The tokenizer, the task generators, encoding, batching and the exact-match scorer."""

import string

import numpy as np
import pytest

import lora_np as ln
from lora_np import data


def test_vocabulary_is_small_and_pad_is_zero():
    assert len(data.VOCAB) <= 64
    assert len(set(data.VOCAB)) == len(data.VOCAB)
    assert data.PAD_ID == 0 and data.VOCAB[data.END_ID] == data.END


def test_encode_decode_round_trip():
    text = "rev:lora=arol."
    assert data.decode(data.encode(text)) == text
    assert data.decode(np.array(data.encode(text))) == text


def test_unknown_character_names_it():
    with pytest.raises(ValueError, match=r"'Q' at position 4"):
        data.encode("rev:Qx=")
    with pytest.raises(ValueError, match="token id 99"):
        data.decode([1, 99])


def _shift(s, k):
    return "".join(chr((ord(c) - 97 + k) % 26 + 97) for c in s)


# Each task's rule, written again independently of data.py.
RULES = {
    "cpy": lambda s: s,
    "rev": lambda s: s[::-1],
    "nxt": lambda s: _shift(s, 1),
    "srt": lambda s: "".join(sorted(s)),
    "cnt": lambda s: str(len(s)),
    "swp": lambda s: "".join(s[i + 1] + s[i] for i in range(0, len(s), 2)),
    "rot": lambda s: s[1:] + s[:1],
    "rvn": lambda s: _shift(s[::-1], 1),
    "prv": lambda s: _shift(s, -1),
    "dup": lambda s: "".join(c + c for c in s),
    "sub": lambda s: s.translate(
        str.maketrans(string.ascii_lowercase, "qwertyuiopasdfghjklzxcvbnm")
    ),
    "hop": lambda s: "".join(_shift(s[i], int(s[i + 1])) for i in range(0, len(s), 2)),
}


def test_every_task_has_a_rule_here():
    assert set(RULES) == set(data.TASKS)
    assert set(data.PRETRAIN_TASKS) | set(data.DOWNSTREAM_TASKS) == set(data.TASKS)


@pytest.mark.parametrize("task", list(data.TASKS))
def test_examples_are_well_formed_and_right(task):
    examples = data.make_examples(task, 50, seed=3)
    assert len(examples) == 50
    for prompt, answer in examples:
        assert prompt.startswith(task + ":") and prompt.endswith("=")
        assert answer.endswith(".") and answer.count(".") == 1
        data.encode(prompt + answer)  # every character is in the vocabulary
        assert len(prompt) + len(answer) <= 40  # far inside block_size 64
        assert answer[:-1] == RULES[task](prompt[4:-1]), (prompt, answer)
    assert data.TASKS[task].description.startswith(task + " —")


def test_hop_inputs_are_letter_digit_pairs():
    inputs = [p[4:-1] for p, _ in data.make_examples("hop", 400, seed=5)]
    assert {len(s) for s in inputs} == {2, 4, 6, 8}  # 1-4 pairs
    assert all(s[0::2].isalpha() and set(s[1::2]) <= set("0123") for s in inputs)
    assert set("".join(s[1::2] for s in inputs)) == set("0123")  # every step size occurs


def test_examples_are_deterministic_and_pinned():
    assert data.make_examples("rev", 20, seed=7) == data.make_examples("rev", 20, seed=7)
    assert data.make_examples("rev", 20, seed=7) != data.make_examples("rev", 20, seed=8)
    # pinned values: PCG64 and CRC32 give these on every machine and NumPy version
    assert data.make_examples("rev", 3, seed=0) == [
        ("rev:h=", "h."),
        ("rev:crfvwh=", "hwvfrc."),
        ("rev:aktpbdyx=", "xydbptka."),
    ]
    # hop's stored experiment results (lora_np/results/07_finetune.json) depend on these
    assert data.make_examples("hop", 3, seed=0) == [
        ("hop:j0u2u0v1=", "jwuw."),
        ("hop:v0z1w0=", "vaw."),
        ("hop:f0m3=", "fp."),
    ]


def test_train_and_test_prompts_never_overlap():
    for task in ("swp", "rev", "cnt"):
        train = {p for p, _ in data.make_examples(task, 2000, seed=0, split="train")}
        test = {p for p, _ in data.make_examples(task, 500, seed=1, split="test")}
        assert not train & test


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown task 'xyz'"):
        data.make_examples("xyz", 3)
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        data.make_examples("rev", 3, split="dev")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        next(data.batches("rev", 0))


def test_encoding_marks_only_answer_tokens():
    examples = [("rev:ab=", "ba."), ("cpy:lora=", "lora.")]
    idx, targets = data.encode_examples(examples)
    assert idx.shape == targets.shape == (2, len("cpy:lora=lora.") - 1)
    assert idx.dtype == targets.dtype == np.int64
    for row, (prompt, answer) in enumerate(examples):
        counted = targets[row] != data.IGNORE_INDEX
        assert counted.sum() == len(answer)
        assert data.decode(targets[row][counted]) == answer
        # teacher forcing: the target at t is the input at t + 1
        seq = data.encode(prompt + answer)
        assert list(idx[row, : len(seq) - 1]) == seq[:-1]
        assert (idx[row, len(seq) - 1 :] == data.PAD_ID).all()
    first = len("rev:ab=") - 1
    assert targets[0, first] == data.encode("b")[0]


def test_batches_are_deterministic_mixed_and_padded():
    a, b = data.batches(["cpy", "rev"], 8, seed=5), data.batches(["cpy", "rev"], 8, seed=5)
    for _ in range(3):
        (ia, ta), (ib, tb) = next(a), next(b)
        assert np.array_equal(ia, ib) and np.array_equal(ta, tb)
        assert ia.shape[0] == 8
    first_tokens = {
        data.decode(row[:3]) for row in next(data.batches(["cpy", "rev"], 8, seed=5))[0]
    }
    assert first_tokens == {"cpy", "rev"}


class _Oracle:
    """A fake model whose logits at every position predict the right next character."""

    def __init__(self, examples, wrong_after=None):
        self.full = {p: p + a for p, a in examples}
        self.wrong_after = wrong_after
        self.calls = 0

    def __call__(self, idx):
        self.calls += 1
        idx = ln.to_numpy(idx)
        logits = np.zeros(idx.shape + (len(data.VOCAB),), dtype=np.float32)
        for b, row in enumerate(idx):
            text = data.decode(row)
            if "=" not in text:
                continue  # a finished row, cut short: its logits are not read
            prompt = text[: text.index("=") + 1]
            target = self.full[prompt]
            for t in range(len(prompt) - 1, idx.shape[1]):
                k = t + 1
                ch = target[k] if k < len(target) else data.PAD
                if self.wrong_after is not None and k - len(prompt) >= self.wrong_after:
                    ch = "z"
                logits[b, t, data.VOCAB.index(ch)] = 1.0
        return ln.Tensor(logits), None


def test_batched_greedy_decoding_handles_ragged_prompts():
    examples = data.make_examples("rot", 40, seed=0) + data.make_examples("cnt", 40, seed=0)
    prompts = [p for p, _ in examples]
    oracle = _Oracle(examples)
    got = data.generate_answers(oracle, prompts, max_new_tokens=12, batch_size=32)
    assert got == [a for _, a in examples]
    assert oracle.calls <= 3 * 12  # three chunks, each stops once every row wrote "."


def test_exact_match_counts_only_exact_answers():
    examples = data.make_examples("swp", 30, seed=1234, split="test")
    assert data.exact_match(_Oracle(examples), "swp", n=30) == 1.0
    assert data.exact_match(_Oracle(examples, wrong_after=1), "swp", n=30) == 0.0
    result = data.evaluate(_Oracle(examples), "swp", n=5)
    assert result["exact_match"] == 1.0 and len(result["examples"]) == 5


@pytest.mark.parametrize(
    "prompts, kwargs, match",
    [
        (["cpy:ab="], {"max_new_tokens": 2.5}, "max_new_tokens"),
        (["cpy:ab="], {"max_new_tokens": "3"}, "max_new_tokens"),
        (["cpy:ab="], {"max_new_tokens": None}, "max_new_tokens"),
        (["cpy:ab="], {"max_new_tokens": 3, "batch_size": 0}, "batch_size"),
        (["cpy:ab=", ""], {"max_new_tokens": 3}, "empty"),
    ],
)
def test_generate_answers_names_bad_arguments(prompts, kwargs, match):
    examples = data.make_examples("cpy", 4, seed=0)
    with pytest.raises((ValueError, TypeError), match=match):
        data.generate_answers(_Oracle(examples), prompts, **kwargs)


def test_generate_answers_of_no_prompts_is_empty():
    assert data.generate_answers(_Oracle([]), [], max_new_tokens=3) == []
