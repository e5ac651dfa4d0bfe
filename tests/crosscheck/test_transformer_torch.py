"""The tiny GPT against the same model written in PyTorch, float64, to 1e-8.

The PyTorch model below is written independently of lora_np (nanoGPT's structure with
separate q, k, v, o projections and GELU in its tanh form); the weights are copied across by
name, then logits, loss and every parameter's gradient are compared.
"""

import math

import numpy as np
import pytest

import lora_np as ln
from lora_np import data
from lora_np.transformer import GPT, GPTConfig

pytestmark = pytest.mark.crosscheck

CONFIG = GPTConfig(vocab_size=64, block_size=32, n_embd=32, n_head=4, n_layer=2)


def _torch_gpt(torch, config):
    nn, F = torch.nn, torch.nn.functional

    class Attention(nn.Module):
        def __init__(self):
            super().__init__()
            C = config.n_embd
            self.q, self.k, self.v, self.o = (nn.Linear(C, C) for _ in range(4))

        def forward(self, x):
            B, T, C = x.shape
            nh = config.n_head

            def heads(t):
                return t.view(B, T, nh, C // nh).transpose(1, 2)  # (B, nh, T, hs)

            y = F.scaled_dot_product_attention(
                heads(self.q(x)), heads(self.k(x)), heads(self.v(x)), is_causal=True
            )
            return self.o(y.transpose(1, 2).reshape(B, T, C))

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(config.n_embd, 4 * config.n_embd)
            self.proj = nn.Linear(4 * config.n_embd, config.n_embd)

        def forward(self, x):
            return self.proj(F.gelu(self.fc(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn = nn.LayerNorm(config.n_embd), Attention()
            self.ln_2, self.mlp = nn.LayerNorm(config.n_embd), Mlp()

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp(self.ln_2(x))

    class TorchGPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok_emb = nn.Embedding(config.vocab_size, config.n_embd)
            self.pos_emb = nn.Embedding(config.block_size, config.n_embd)
            self.blocks = nn.ModuleList(Block() for _ in range(config.n_layer))
            self.ln_f = nn.LayerNorm(config.n_embd)
            self.head = nn.Linear(config.n_embd, config.vocab_size, bias=False)

        def forward(self, idx, targets):
            x = self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1]))
            for block in self.blocks:
                x = block(x)
            logits = self.head(self.ln_f(x))
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
            return logits, loss

    return TorchGPT().double()


@pytest.fixture
def pair(torch):
    ln.manual_seed(0)
    ours = GPT(CONFIG).to("float64")
    # random LayerNorm parameters and biases too, so every path is exercised
    rng = np.random.default_rng(1)
    for _, p in ours.named_parameters():
        p.data = p.data + 0.1 * rng.standard_normal(p.shape)
    theirs = _torch_gpt(torch, CONFIG)
    state = {
        name: torch.from_numpy(ln.to_numpy(p.data).copy()) for name, p in ours.named_parameters()
    }
    missing, unexpected = theirs.load_state_dict(state, strict=True)
    assert not missing and not unexpected
    return ours, theirs


def test_forward_and_backward_match_pytorch(torch, pair):
    ours, theirs = pair
    examples = data.make_examples("rev", 6, seed=0) + data.make_examples("cnt", 6, seed=0)
    idx, targets = data.encode_examples(examples)
    logits, loss = ours(idx, targets)
    loss.backward()
    t_logits, t_loss = theirs(torch.from_numpy(idx), torch.from_numpy(targets))
    t_loss.backward()
    np.testing.assert_allclose(logits.data, t_logits.detach().numpy(), rtol=0, atol=1e-8)
    assert math.isclose(loss.item(), t_loss.item(), rel_tol=0, abs_tol=1e-10)
    t_params = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        np.testing.assert_allclose(
            p.grad, t_params[name].grad.numpy(), rtol=0, atol=1e-8, err_msg=name
        )


def test_greedy_answers_match_pytorch(torch, pair):
    ours, theirs = pair
    prompts = [p for p, _ in data.make_examples("swp", 8, seed=0)]
    got = data.generate_answers(ours, prompts, max_new_tokens=6)
    want = []
    with torch.no_grad():
        for p in prompts:
            ids = data.encode(p)
            for _ in range(6):
                x = torch.tensor([ids])
                logits, _ = theirs(x, torch.full_like(x, -100))
                nxt = int(logits[0, -1, : len(data.VOCAB)].argmax())
                ids.append(nxt)
                if nxt == data.END_ID:
                    break
            want.append(data.decode(ids[len(p) :]))
    assert got == want
