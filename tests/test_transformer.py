"""The tiny GPT: shapes, names, causality, bad input, generation, saving and loading."""

import json
import struct

import numpy as np
import pytest

import lora_np as ln
from lora_np import data
from lora_np.serialization import read_weights
from lora_np.transformer import GPT, GPTConfig

SMALL = GPTConfig(vocab_size=48, block_size=24, n_embd=16, n_head=2, n_layer=2)


@pytest.fixture
def model():
    ln.manual_seed(0)
    return GPT(SMALL)


def _idx(B=3, T=10, seed=0, vocab=SMALL.vocab_size):
    return np.random.default_rng(seed).integers(0, vocab, size=(B, T))


def test_forward_shapes_and_initial_loss(model):
    logits, loss = model(_idx())
    assert logits.shape == (3, 10, SMALL.vocab_size) and loss is None
    targets = _idx(seed=1)
    _, loss = model(_idx(), targets)
    assert loss.shape == ()
    # small initial weights: the prediction is close to uniform
    assert abs(loss.item() - np.log(SMALL.vocab_size)) < 0.1


def test_module_and_parameter_names_follow_the_design(model):
    names = dict(model.named_modules())
    for i in range(SMALL.n_layer):
        for sub in ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc", "mlp.proj"):
            assert isinstance(names[f"blocks.{i}.{sub}"], ln.nn.Linear)
    params = dict(model.named_parameters())
    assert "head.weight" in params and "head.bias" not in params  # untied, no bias
    assert params["blocks.0.attn.q.weight"].shape == (SMALL.n_embd, SMALL.n_embd)
    assert params["blocks.1.mlp.fc.weight"].shape == (4 * SMALL.n_embd, SMALL.n_embd)
    C, V, L = SMALL.n_embd, SMALL.vocab_size, SMALL.n_layer
    per_block = 4 * (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C) + 4 * C
    expected = V * C + SMALL.block_size * C + L * per_block + 2 * C + V * C
    assert model.num_parameters() == expected


def test_attention_is_causal(model):
    idx = _idx(B=1, T=12)
    changed = idx.copy()
    changed[0, 7] = (changed[0, 7] + 1) % SMALL.vocab_size
    a, _ = model(idx)
    b, _ = model(changed)
    np.testing.assert_array_equal(a.data[:, :7], b.data[:, :7])
    assert not np.allclose(a.data[:, 7:], b.data[:, 7:])


def test_bad_input_is_named(model):
    with pytest.raises(ValueError, match=r"token id 48 is outside the vocabulary.*\[0, 48\)"):
        model(np.array([[1, 48]]))
    with pytest.raises(ValueError, match="token id -1"):
        model(np.array([[-1, 2]]))
    with pytest.raises(ValueError, match="length 25 is longer than the model's block_size 24"):
        model(np.zeros((1, 25), dtype=np.int64))
    with pytest.raises(ValueError, match=r"shape \(B, T\)"):
        model(np.zeros(5, dtype=np.int64))
    with pytest.raises(TypeError, match="integer token ids"):
        model(np.zeros((1, 5)))
    with pytest.raises(ValueError, match="n_embd=130 is not divisible by n_head=4"):
        GPTConfig(n_embd=130, n_head=4)
    with pytest.raises(ValueError, match="n_layer must be a positive int"):
        GPTConfig(n_layer=0)


def test_backward_reaches_every_parameter_and_only_unfrozen_ones(model):
    _, loss = model(_idx(), _idx(seed=1))
    loss.backward()
    assert all(p.grad is not None and np.isfinite(p.grad).all() for p in model.parameters())
    model.zero_grad()
    model.requires_grad_(False)
    model.blocks[0].attn.q.weight.requires_grad_(True)
    _, loss = model(_idx(), _idx(seed=1))
    loss.backward()
    with_grad = [n for n, p in model.named_parameters() if p.grad is not None]
    assert with_grad == ["blocks.0.attn.q.weight"]


def test_gradients_match_finite_differences_in_float64():
    ln.manual_seed(1)
    tiny = GPT(GPTConfig(vocab_size=7, block_size=5, n_embd=4, n_head=2, n_layer=1)).to("float64")
    idx, targets = _idx(B=2, T=4, vocab=7), _idx(B=2, T=4, seed=3, vocab=7)
    for name in ("blocks.0.attn.q.weight", "blocks.0.mlp.fc.weight", "pos_emb.weight"):
        param = dict(tiny.named_parameters())[name]
        assert ln.gradcheck(lambda p: tiny(idx, targets)[1], param)


def test_a_few_steps_fit_one_batch(model):
    idx, targets = data.encode_examples(data.make_examples("rev", 16, seed=0))
    cfg = GPTConfig(vocab_size=64, block_size=32, n_embd=32, n_head=2, n_layer=1)
    ln.manual_seed(0)
    m = GPT(cfg)
    opt = ln.optim.AdamW(m.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        opt.zero_grad()
        _, loss = m(idx, targets)
        loss.backward()
        opt.step()
        first = first or loss.item()
    assert loss.item() < 0.5 * first


def test_greedy_generate_appends_argmax_tokens(model):
    idx = _idx(B=2, T=5)
    out = model.generate(idx, 4)
    assert out.shape == (2, 9) and np.array_equal(out[:, :5], idx)
    logits, _ = model(out[:, :8])
    np.testing.assert_array_equal(out[:, 8], logits.data[:, -1].argmax(-1))
    sampled = model.generate(idx, 4, temperature=1.0, top_k=3, seed=0)
    assert np.array_equal(sampled, model.generate(idx, 4, temperature=1.0, top_k=3, seed=0))


def test_batched_answers_equal_one_at_a_time():
    ln.manual_seed(2)
    m = GPT(GPTConfig(vocab_size=64, block_size=64, n_embd=32, n_head=2, n_layer=2))
    prompts = [
        p for p, _ in data.make_examples("rot", 6, seed=0) + data.make_examples("cnt", 6, seed=0)
    ]
    batched = data.generate_answers(m, prompts, max_new_tokens=8, batch_size=5)
    single = [data.generate_answers(m, [p], max_new_tokens=8)[0] for p in prompts]
    assert batched == single


def test_save_load_round_trip_is_exact(model, tmp_path):
    path = model.save(tmp_path / "m.safetensors", metadata={"note": "hi"})
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no temporary left behind
    loaded = GPT.load(path)
    assert loaded.config == SMALL
    for (name, a), (_, b) in zip(model.named_parameters(), loaded.named_parameters()):
        assert a.dtype == b.dtype and np.array_equal(a.data, b.data), name
    idx = _idx()
    np.testing.assert_array_equal(model(idx)[0].data, loaded(idx)[0].data)
    _, meta = read_weights(path)
    assert meta["note"] == "hi" and json.loads(meta["config"])["n_embd"] == SMALL.n_embd


def test_checkpoint_for_another_config_names_the_fields(model, tmp_path):
    path = model.save(tmp_path / "m.safetensors")
    other = GPTConfig(vocab_size=48, block_size=24, n_embd=32, n_head=2, n_layer=3)
    with pytest.raises(ValueError, match=r"n_embd: 16 vs 32; n_layer: 2 vs 3"):
        GPT.load(path, config=other)


def test_weights_that_do_not_fit_the_files_own_config_are_refused(model, tmp_path):
    from lora_np.serialization import save_weights

    wider = GPTConfig(**{**vars(SMALL), "n_embd": 32})
    path = save_weights(model, tmp_path / "m.safetensors", {"config": json.dumps(vars(wider))})
    with pytest.raises(ValueError, match=r"does not fit its own config.*tok_emb.weight"):
        GPT.load(path)


def test_corrupt_and_truncated_checkpoints_are_refused(model, tmp_path):
    path = model.save(tmp_path / "m.safetensors")
    blob = path.read_bytes()
    cases = {
        "truncated": blob[: len(blob) - 100],
        "tiny": blob[:5],
        "header": struct.pack("<Q", 10**12) + blob[8:],
        "json": blob[:8] + b"{" * 20 + blob[28:],
    }
    for label, content in cases.items():
        bad = tmp_path / f"{label}.safetensors"
        bad.write_bytes(content)
        with pytest.raises(ValueError, match="truncated or corrupt"):
            GPT.load(bad)


def test_checkpoints_are_standard_safetensors_files(model, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    path = model.save(tmp_path / "m.safetensors")
    theirs = st.load_file(str(path))
    for name, p in model.named_parameters():
        assert np.array_equal(theirs[name], p.data), name


# ------------------------------------------------------------------------ bad settings
@pytest.mark.parametrize(
    "field, bad",
    [
        ("dropout", "0.1"),
        ("dropout", float("nan")),
        ("dropout", 1.0),
        ("dropout", True),
        ("n_head", 2.0),
        ("n_layer", "4"),
        ("vocab_size", 0),
    ],
)
def test_config_names_the_bad_field(field, bad):
    with pytest.raises((ValueError, TypeError)) as info:
        GPTConfig(**{field: bad})
    assert f"GPTConfig.{field}" in str(info.value) and repr(bad) in str(info.value)


def test_config_accepts_numpy_numbers_and_stores_python_ones():
    config = GPTConfig(n_embd=np.int64(32), n_head=np.int32(2), dropout=np.float32(0.5))
    assert type(config.n_embd) is int and type(config.dropout) is float
    assert config == GPTConfig(n_embd=32, n_head=2, dropout=0.5)


@pytest.mark.parametrize("field, value", [("n_head", 4), ("dropout", 0.1), ("n_layer", 3)])
def test_load_with_another_config_names_the_field_and_both_values(model, tmp_path, field, value):
    path = model.save(tmp_path / "m.safetensors")
    other = GPTConfig(**{**vars(SMALL), field: value})
    with pytest.raises(ValueError) as info:
        GPT.load(path, config=other)
    message = str(info.value)
    assert field in message
    assert repr(getattr(SMALL, field)) in message and repr(value) in message
    assert GPT.load(path, config=SMALL).config == SMALL  # the same config is fine


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_new_tokens": 2.5}, "max_new_tokens"),
        ({"max_new_tokens": "3"}, "max_new_tokens"),
        ({"max_new_tokens": None}, "max_new_tokens"),
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"max_new_tokens": 2, "temperature": float("nan")}, "temperature"),
        ({"max_new_tokens": 2, "temperature": -1.0}, "temperature"),
        ({"max_new_tokens": 2, "temperature": "1"}, "temperature"),
        ({"max_new_tokens": 2, "temperature": 1.0, "top_k": 0}, "top_k"),
        ({"max_new_tokens": 2, "temperature": 1.0, "top_k": -3}, "top_k"),
        ({"max_new_tokens": 2, "temperature": 1.0, "top_k": 2.5}, "top_k"),
    ],
)
def test_generate_names_bad_arguments(model, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        model.generate(_idx(B=2, T=3), **kwargs)


def test_generate_refuses_an_empty_prompt(model):
    with pytest.raises(ValueError, match="empty"):
        model.generate(np.zeros((2, 0), dtype=np.int64), 3)


def test_generate_and_generate_answers_agree(model):
    """One generation loop: greedy GPT.generate writes what generate_answers writes."""
    ln.manual_seed(3)
    m = GPT(GPTConfig(vocab_size=40, block_size=32, n_embd=16, n_head=2, n_layer=1))
    prompts = ["rev:abcd=", "cpy:wxyz="]
    out = m.generate(np.array([data.encode(p) for p in prompts]), 6)
    answers = data.generate_answers(m, prompts, max_new_tokens=6)
    for row, prompt, answer in zip(out, prompts, answers):
        written = data.decode(row[len(prompt) :])
        stop = written.find(data.END)
        assert answer == (written if stop < 0 else written[: stop + 1])


def test_generate_crops_to_block_size_and_is_reproducible(model):
    out = model.generate(_idx(B=2, T=20), 10, temperature=0.8, top_k=5, seed=1)
    assert out.shape == (2, 30)
    again = model.generate(_idx(B=2, T=20), 10, temperature=0.8, top_k=5, seed=1)
    assert np.array_equal(out, again)


def test_saving_a_model_with_lora_layers_is_refused(model, tmp_path):
    from lora_np import lora

    lora.inject(model, ["q", "v"], r=2, alpha=4)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.q \(LoRALinear\).*lora\.save_adapter"):
        model.save(tmp_path / "m.safetensors")
    assert list(tmp_path.iterdir()) == []
    lora.merge_and_unload(model)  # what the message offers: a plain GPT that loads
    GPT.load(model.save(tmp_path / "m.safetensors"))


def test_a_config_that_implies_huge_tensors_is_refused_before_building(
    model, tmp_path, monkeypatch
):
    from lora_np.serialization import save_weights

    huge = GPTConfig(**{**vars(SMALL), "vocab_size": 4_000_000})
    path = save_weights(model, tmp_path / "m.safetensors", {"config": json.dumps(vars(huge))})
    built = []
    real = GPT.__init__

    def spy(self, config):
        built.append(config)
        real(self, config)

    monkeypatch.setattr(GPT, "__init__", spy)
    with pytest.raises(
        ValueError,
        match=r"tok_emb\.weight is \(48, 16\) in the file, the config implies \(4000000, 16\)",
    ):
        GPT.load(path)
    assert built == []  # refused from the header, before allocating the model


def test_a_checkpoint_with_bytes_after_its_tensors_is_refused(model, tmp_path):
    path = model.save(tmp_path / "m.safetensors")
    with open(path, "ab") as f:
        f.write(b"\0" * 1000)
    with pytest.raises(ValueError, match="1000 bytes after the tensors"):
        GPT.load(path)
