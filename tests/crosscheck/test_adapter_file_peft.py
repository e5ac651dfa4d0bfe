"""PEFT loads an adapter folder written by a learner's save_adapter (notebook 08, Exercise 08.1)
that passes ``ln.checks.check_save_adapter`` (``make crosscheck``)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

import lora_np as ln

pytestmark = pytest.mark.crosscheck

K, R, ALPHA = 16, 4, 6.0


def learners_save_adapter(weights, r, alpha, folder):
    """A correct answer to Exercise 08.1, written as a learner would (safetensors' numpy API)."""
    os.makedirs(folder, exist_ok=True)
    tensors = {}
    for name, (A, B) in weights.items():
        tensors[f"base_model.model.{name}.lora_A.weight"] = A
        tensors[f"base_model.model.{name}.lora_B.weight"] = B
    save_file(tensors, os.path.join(folder, "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": alpha,
        "target_modules": sorted({n.split(".")[-1] for n in weights}),
    }
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(config, f)


def torch_blocks(torch):
    """A PyTorch model whose Linear layers carry the tiny GPT's names: blocks.<i>.attn.q / v."""

    class Attn(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Linear(K, K)
            self.v = torch.nn.Linear(K, K)

        def forward(self, x):
            return self.v(torch.tanh(self.q(x)))

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = Attn()

        def forward(self, x):
            return x + self.attn(x)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([Block(), Block()])

        def forward(self, x):
            for block in self.blocks:
                x = block(x)
            return x

    torch.manual_seed(0)
    return Net()  # float32, as the tiny GPT


def test_peft_loads_the_folder_a_passing_learner_function_writes(torch, peft, tmp_path):
    ln.checks.check_save_adapter(learners_save_adapter, quiet=True)  # it is a correct answer
    rng = np.random.default_rng(0)
    weights = {
        f"blocks.{i}.attn.{m}": (
            rng.standard_normal((R, K)).astype(np.float32),
            rng.standard_normal((K, R)).astype(np.float32),
        )
        for i in range(2)
        for m in ("q", "v")
    }
    learners_save_adapter(weights, R, ALPHA, str(tmp_path / "mine"))

    base = torch_blocks(torch)
    model = peft.PeftModel.from_pretrained(base, tmp_path / "mine")
    x = rng.standard_normal((3, K)).astype(np.float32)
    for i in range(2):
        for m in ("q", "v"):
            layer = model.base_model.model.blocks[i].attn.__getattr__(m)
            A, B = weights[f"blocks.{i}.attn.{m}"]
            got_A = layer.lora_A["default"].weight.detach().numpy()
            got_B = layer.lora_B["default"].weight.detach().numpy()
            assert np.array_equal(got_A, A) and np.array_equal(got_B, B)
            assert layer.scaling["default"] == ALPHA / R
            W = layer.base_layer.weight.detach().numpy()
            b = layer.base_layer.bias.detach().numpy()
            with torch.no_grad():
                out = layer(torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(
                out, x @ W.T + b + ALPHA / R * (x @ A.T) @ B.T, rtol=1e-5, atol=1e-5
            )
