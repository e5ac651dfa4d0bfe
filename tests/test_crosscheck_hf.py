"""lora_np.hf against transformers and PEFT (``make crosscheck``): the exported folder is the
same model, the same adapters, the same generation and the same training.

In float32 the two frameworks round differently (OPT scales q before the product, lora_np
after; BLAS kernels differ), so logits agree to 1e-4, not bit for bit; the shipped base's
largest difference on 64 prompts is about 5e-5.
"""

from __future__ import annotations

import importlib
import os

import numpy as np
import pytest

import lora_np as ln
from lora_np import data, hf, lora, optim
from lora_np.transformer import load_pretrained

pytestmark = pytest.mark.crosscheck

LOGIT_TOL = 1e-4
STEPS = 20


@pytest.fixture(scope="module")
def transformers():
    """transformers, skipped when missing, except under `make crosscheck` (where a skip would
    let the proofs pass without running): there the import error fails the test."""
    if os.environ.get("LORA_NP_CROSSCHECK", "") == "1":
        return importlib.import_module("transformers")
    return pytest.importorskip("transformers")


def random_prompts(n=64, T=32, seed=0):
    return np.random.default_rng(seed).integers(0, 64, size=(n, T))


def torch_logits(torch, model, idx):
    with torch.no_grad():
        return model(torch.from_numpy(idx)).logits.numpy()


def with_adapter(model, seed=0):
    """rsLoRA on q, v, fc1 and the head with a rank and an alpha pattern (v at r=2, the head
    at alpha 3), every B random so that the adapter changes every output."""
    lora.inject(model, ["q", "fc"], r=4, alpha=8, rslora=True)
    lora.inject(model, ["v"], r=2, alpha=8, rslora=True)
    lora.inject(model, ["head"], r=4, alpha=3, rslora=True)
    rng = np.random.default_rng(seed)
    for _, layer in lora.lora_layers(model):
        layer.B.data = (0.05 * rng.standard_normal(layer.B.shape)).astype("float32")
    return model


def test_exported_base_is_the_same_function_in_float64(torch, transformers, tmp_path):
    """In float64 the two frameworks agree to 1e-10 on 64 random full-length prompts: the
    exported OPT computes exactly lora_np's function; float32 differences are rounding."""
    model = load_pretrained().to("float64")
    hf.export(model, tmp_path / "base")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    assert theirs.dtype == torch.float64
    idx = random_prompts(T=64)
    assert np.abs(torch_logits(torch, theirs, idx) - model(idx)[0].data).max() <= 1e-10


def test_exported_base_gives_lora_np_logits_in_float32(torch, transformers, tmp_path):
    model = load_pretrained()
    hf.export(model, tmp_path / "base")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    assert type(theirs).__name__ == "OPTForCausalLM" and theirs.dtype == torch.float32
    idx = random_prompts()
    assert np.abs(torch_logits(torch, theirs, idx) - model(idx)[0].data).max() <= LOGIT_TOL


def test_float32_difference_on_full_length_prompts_is_each_sides_rounding(
    torch, transformers, tmp_path
):
    """On 64-token random strings (far from the training data, logits up to 25) PyTorch's own
    float32 logits are more than 1e-4 from its float64 ones, so 1e-4 cannot hold there for any
    port: the two float32 results differ by no more than their two rounding errors together."""
    hf.export(load_pretrained(), tmp_path / "f32")
    hf.export(load_pretrained().to("float64"), tmp_path / "f64")
    idx = random_prompts(T=64)
    ours32, ours64 = load_pretrained()(idx)[0].data, hf.load(tmp_path / "f64")(idx)[0].data
    theirs32 = torch_logits(
        torch, transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "f32"), idx
    )
    theirs64 = torch_logits(
        torch, transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "f64"), idx
    )
    own = np.abs(ours32 - ours64).max() + np.abs(theirs32 - theirs64).max()
    assert np.abs(theirs32 - ours32).max() <= own
    assert own < 1e-3


def test_gelu_new_is_lora_np_gelu(torch, transformers):
    x = np.linspace(-8, 8, 10001).astype("float64")
    act = transformers.activations.ACT2FN["gelu_new"]
    expected = act(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ln.F.gelu(ln.Tensor(x)).data, expected, rtol=0, atol=1e-12)


def test_adapter_unmerged_and_merged_equal_peft(torch, transformers, peft, tmp_path):
    model = with_adapter(load_pretrained())
    hf.export(model, tmp_path / "out")
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    peft_model = peft.PeftModel.from_pretrained(base, tmp_path / "out" / "default")
    theirs_layers = {
        n.removeprefix("base_model.model."): m
        for n, m in peft_model.named_modules()
        if hasattr(m, "lora_A")
    }
    for name, layer in lora.lora_layers(model):
        assert theirs_layers[hf.to_opt(name)].scaling["default"] == pytest.approx(layer.scaling)
    assert {layer.r for _, layer in lora.lora_layers(model)} == {2, 4}
    idx = random_prompts()
    ours = model(idx)[0].data
    with lora.disable_adapters(model):
        ours_base = model(idx)[0].data
    assert np.abs(ours - ours_base).max() > 100 * LOGIT_TOL  # the adapter matters
    assert np.abs(torch_logits(torch, peft_model, idx) - ours).max() <= LOGIT_TOL
    with peft_model.disable_adapter():
        assert np.abs(torch_logits(torch, peft_model, idx) - ours_base).max() <= LOGIT_TOL
    merged_theirs = peft_model.merge_and_unload()
    merged_ours = lora.merge_and_unload(model)
    assert np.abs(torch_logits(torch, merged_theirs, idx) - merged_ours(idx)[0].data).max() <= (
        LOGIT_TOL
    )
    theirs_params = dict(merged_theirs.named_parameters())
    for name, array in hf.base_state(merged_ours).items():
        if name == "pos_emb.weight":
            continue
        module, _, kind = name.rpartition(".")
        np.testing.assert_allclose(
            theirs_params[f"{hf.to_opt(module)}.{kind}"].detach().numpy(), array, atol=1e-6
        )


def test_greedy_generate_gives_the_same_tokens(torch, transformers, peft, tmp_path):
    model = load_pretrained()
    lora.load_adapter(model, ln.results.path("08_adapters") / "swp", adapter_name="swp")
    hf.export(model, tmp_path / "out")
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    peft_model = peft.PeftModel.from_pretrained(base, tmp_path / "out" / "swp", adapter_name="swp")
    prompts = [p for p, _ in data.make_examples("swp", 6, seed=5, split="test")]
    prompts += [p for p, _ in data.make_examples("rev", 6, seed=5, split="test")]
    for use_adapter in (True, False):
        for prompt in prompts:
            ids = np.array([data.encode(prompt)])
            new = 16  # past every answer's end token: the models go on writing
            if use_adapter:
                ours = model.generate(ids, new)
            else:
                with lora.disable_adapters(model):
                    ours = model.generate(ids, new)
            with torch.no_grad():
                kwargs = {"max_new_tokens": new, "do_sample": False, "pad_token_id": 0}
                if use_adapter:
                    theirs = peft_model.generate(input_ids=torch.from_numpy(ids), **kwargs)
                else:
                    with peft_model.disable_adapter():
                        theirs = peft_model.generate(input_ids=torch.from_numpy(ids), **kwargs)
            np.testing.assert_array_equal(theirs.numpy(), ours, err_msg=prompt)


def test_a_peft_adapter_with_patterns_loads_into_lora_np(torch, transformers, peft, tmp_path):
    """PEFT makes the adapter (random A and B, a regex-free list of targets, rsLoRA, a rank and
    an alpha pattern); lora_np loads it and computes the same logits."""
    hf.export(load_pretrained(), tmp_path / "base")
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    config = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "out_proj", "fc2", "lm_head"],
        rank_pattern={"fc2": 2, "layers.3.self_attn.q_proj": 6},
        alpha_pattern={"lm_head": 5},
        use_rslora=True,
        init_lora_weights=False,  # B random too
    )
    torch.manual_seed(0)
    peft_model = peft.get_peft_model(base, config)
    peft_model.save_pretrained(tmp_path / "peft")
    model = hf.load_base(tmp_path / "base")
    names = hf.load_peft_adapter(model, tmp_path / "peft")
    assert len(names) == 4 * 3 + 1
    assert model.get_submodule("blocks.3.attn.q").r == 6
    assert model.get_submodule("blocks.2.mlp.proj").r == 2
    assert model.get_submodule("head").alpha == 5
    idx = random_prompts()
    assert np.abs(torch_logits(torch, peft_model, idx) - model(idx)[0].data).max() <= LOGIT_TOL


# ---------------------------------------------------------------- training, both directions


def batches(n_steps=STEPS, size=16):
    examples = data.make_examples("swp", n_steps * size, seed=11)
    for step in range(n_steps):
        yield data.encode_examples(examples[step * size : (step + 1) * size])


def train_lora_np(model, lr):
    params = lora.lora_parameters(model)
    opt = optim.AdamW(params, lr=lr)
    losses = []
    model.train()
    for idx, targets in batches():
        opt.zero_grad()
        _, loss = model(idx, targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def train_peft(torch, peft_model, lr):
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    losses = []
    peft_model.train()
    for idx, targets in batches():
        opt.zero_grad()
        logits = peft_model(torch.from_numpy(idx)).logits
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(0, 1), torch.from_numpy(targets).flatten(), ignore_index=-100
        )
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, params


def adapter_arrays(model, adapter="default"):
    return {
        f"{name}.{w}": getattr(layer.adapters[adapter], w).data.copy()
        for name, layer in lora.lora_layers(model)
        for w in "AB"
    }


@pytest.mark.parametrize("start", ["lora_np", "peft"])
def test_twenty_adamw_steps_match_in_both_directions(torch, transformers, peft, tmp_path, start):
    """The same initial adapter (made by lora_np, or by PEFT), the same batches, AdamW with
    the same arguments in each: the same loss curve, and the adapter PEFT trained, loaded back
    into lora_np, equals the one lora_np trained within float32 rounding."""
    lr = 3e-3
    hf.export(load_pretrained(), tmp_path / "base")
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    if start == "lora_np":
        ln.manual_seed(0)
        model = load_pretrained()
        lora.inject(model, ["q", "v"], r=8, alpha=16)
        hf.export(model, tmp_path / "start")
        peft_model = peft.PeftModel.from_pretrained(
            base, tmp_path / "start" / "default", is_trainable=True
        )
    else:
        torch.manual_seed(0)
        config = peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
        peft_model = peft.get_peft_model(base, config)
        peft_model.save_pretrained(tmp_path / "start")
        model = hf.load_base(tmp_path / "base")
        hf.load_peft_adapter(model, tmp_path / "start", is_trainable=True)
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == sum(
        p.size for p in model.parameters() if p.requires_grad
    )
    ours = train_lora_np(model, lr)
    theirs, _ = train_peft(torch, peft_model, lr)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=0)
    assert ours[-1] < 0.7 * ours[0]  # it trained

    peft_model.save_pretrained(tmp_path / "trained")
    back = hf.load_base(tmp_path / "base")
    hf.load_peft_adapter(back, tmp_path / "trained")
    trained_theirs, trained_ours = adapter_arrays(back), adapter_arrays(model)
    assert trained_theirs.keys() == trained_ours.keys()
    for key, array in trained_ours.items():
        scale = np.abs(array).max()
        np.testing.assert_allclose(
            trained_theirs[key], array, rtol=0, atol=1e-4 * scale, err_msg=key
        )


def test_differences_that_remain_are_pinned(torch, transformers, peft, tmp_path):
    """Two differences a PEFT user meets, pinned: (1) transformers shifts ``labels`` inside the
    model, lora_np's GPT takes targets already shifted; (2) PEFT's parameter total counts OPT's
    two unused position rows (2 x n_embd more), while the trainable counts agree."""
    model = load_pretrained()
    lora.inject(model, ["q", "v"], r=8, alpha=16)
    hf.export(model, tmp_path / "out")
    base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    peft_model = peft.PeftModel.from_pretrained(
        base, tmp_path / "out" / "default", is_trainable=True
    )
    idx = random_prompts(n=8, T=16)
    targets = np.full_like(idx, -100)
    targets[:, :-1] = idx[:, 1:]  # lora_np: the target at position t is the token at t + 1
    with torch.no_grad():
        theirs = peft_model(torch.from_numpy(idx), labels=torch.from_numpy(idx)).loss.item()
    ours = model(idx, targets)[1].item()
    assert ours == pytest.approx(theirs, rel=1e-5)
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert lora.count_parameters(model) == (trainable, total - 2 * model.config.n_embd)
