"""check_block accepts blocks written different ways and names each classic mistake."""

import numpy as np
import pytest

import lora_np as ln
from lora_np.checks import check_block
from lora_np.checks._harness import ExerciseError
from lora_np.transformer import MLP, Block, CausalSelfAttention

F = ln.functional


class Written(ln.nn.Module):
    """A correct block, written as the notebook's solution: the MLP's path spelled out."""

    def __init__(self, config):
        super().__init__()
        self.ln_1 = ln.nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = ln.nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        h = F.gelu(self.mlp.fc(self.ln_2(x)))
        return x + self.mlp.proj(h)


class OwnAttention(Written):
    """Correct, written differently: attention by hand from q, k, v with NumPy's mask in the
    engine's ops (masked_fill-free: a -1e9 bias added), the MLP module called whole."""

    def forward(self, x):
        B, T, C = x.shape
        a = self.attn
        nh, hs = a.n_head, C // a.n_head
        h = self.ln_1(x)
        q, k, v = (m(h).reshape(B, T, nh, hs).transpose(0, 2, 1, 3) for m in (a.q, a.k, a.v))
        scores = q @ k.transpose(0, 1, 3, 2) * (1.0 / np.sqrt(hs))
        future = np.triu(np.ones((T, T)), k=1) * -1e9
        weights = F.softmax(scores + ln.Tensor(future.astype(x.data.dtype)), axis=-1)
        y = (weights @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + a.o(y)
        return x + self.mlp(self.ln_2(x))


class PostLN(Written):
    def forward(self, x):
        x = self.ln_1(x + self.attn(x))
        return self.ln_2(x + self.mlp(x))


class NoAttnResidual(Written):
    def forward(self, x):
        x = self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NoMLPResidual(Written):
    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return self.mlp(self.ln_2(x))


class NoActivation(Written):
    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp.proj(self.mlp.fc(self.ln_2(x)))


class ReLU(Written):
    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp.proj(F.relu(self.mlp.fc(self.ln_2(x))))


class SharedByUse(Written):
    """ln_2 exists but ln_1 is called twice."""

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_1(x))


class SharedObject(Written):
    """One LayerNorm object under both names."""

    def __init__(self, config):
        super().__init__(config)
        self.ln_2 = self.ln_1


class NotCausal(Written):
    def forward(self, x):
        B, T, C = x.shape
        a = self.attn
        nh = a.n_head
        h = self.ln_1(x)
        q, k, v = (m(h).reshape(B, T, nh, C // nh).transpose(0, 2, 1, 3) for m in (a.q, a.k, a.v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=False)
        x = x + a.o(y.transpose(0, 2, 1, 3).reshape(B, T, C))
        return x + self.mlp(self.ln_2(x))


class Renamed(ln.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm1 = ln.nn.LayerNorm(config.n_embd)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = ln.nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.ln_2(x))


@pytest.mark.parametrize("cls", [Block, Written, OwnAttention])
def test_correct_blocks_pass(cls, capsys):
    check_block(cls)
    assert capsys.readouterr().out.count("Block: all 4 checks passed") == 1


MISTAKES = {
    PostLN: "post-LN",
    NoAttnResidual: "residual around attention is missing",
    NoMLPResidual: "residual around the MLP is missing",
    NoActivation: "no activation",
    ReLU: "uses ReLU",
    SharedByUse: "LayerNorms are shared",
    SharedObject: "LayerNorms are shared",
    NotCausal: "not causal",
    Renamed: "missing: ln_1.bias, ln_1.weight",
}


@pytest.mark.parametrize("cls", list(MISTAKES), ids=lambda c: c.__name__)
def test_each_mistake_is_named(cls):
    with pytest.raises(ExerciseError) as info:
        check_block(cls, quiet=True)
    assert MISTAKES[cls] in str(info.value), str(info.value)


def test_a_block_that_reads_the_future_only_a_little_is_caught_by_the_causal_proof():
    """A leak too small to stand out in the output comparison is still caught: a later token
    changes an earlier output."""

    class Leaky(Written):
        def forward(self, x):
            out = super().forward(x)
            return out + x[:, -1:, :] * 1e-9  # every position sees the last token a little

    with pytest.raises(ExerciseError) as info:
        check_block(Leaky, quiet=True)
    assert "reads the future" in str(info.value)


def test_not_a_module_is_refused():
    with pytest.raises(ExerciseError) as info:
        check_block(lambda config: object(), quiet=True)
    assert "ln.nn.Module" in str(info.value)


def test_an_unsolved_block_says_so():
    class Stub(ln.nn.Module):
        def __init__(self, config):
            raise NotImplementedError

    with pytest.raises(ExerciseError) as info:
        check_block(Stub, quiet=True)
    assert "not written yet" in str(info.value)


def test_the_callers_random_stream_is_given_back():
    ln.manual_seed(3)
    expected = ln.backend.rng().standard_normal(4)
    ln.manual_seed(3)
    check_block(Written, quiet=True)
    assert np.array_equal(ln.backend.rng().standard_normal(4), expected)


def test_a_subclass_of_the_library_block_is_not_an_answer():
    class Borrowed(Block):
        pass

    with pytest.raises(ExerciseError) as info:
        check_block(Borrowed, quiet=True)
    assert "library's Block" in str(info.value)
