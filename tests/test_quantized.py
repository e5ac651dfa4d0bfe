"""The quantised base: stored form, QuantizedLinear, LoRA on it (QLoRA), whole models, sizes."""

import numpy as np
import pytest

import lora_np as ln
from lora_np import lora, nn, quantization, quantized
from lora_np.quantized import QuantizedLinear


def linear(d_in=70, d_out=33, bias=True, dtype="float32", seed=0):
    ln.manual_seed(seed)
    return nn.Linear(d_in, d_out, bias=bias, dtype=dtype)


def rows(shape, dtype="float32", seed=1):
    return ln.Tensor(np.random.default_rng(seed).standard_normal(shape).astype(dtype))


@pytest.fixture(scope="module")
def tiny_gpt_float():
    return ln.transformer.load_pretrained()


def tiny_gpt(**kwargs):
    model = ln.transformer.load_pretrained()
    names = quantized.quantize_model(model, **kwargs)
    return model, names


# ----------------------------------------------------------------------------- the stored form


def test_the_stored_form_reads_back_what_the_array_functions_compute():
    w = np.random.default_rng(0).standard_normal((33, 70))  # float64: rounded to float32 first
    w32 = w.astype(np.float32)
    absmax = quantized.quantize_weight(w, "absmax", bits=4, double_quant=False)
    assert np.array_equal(absmax.dequantize(), quantization.quantize_blockwise(w32, 4, 64))
    for bits in (2, 3, 8):
        form = quantized.quantize_weight(w, "absmax", bits=bits, block_size=16, double_quant=False)
        assert np.array_equal(form.dequantize(), quantization.quantize_blockwise(w32, bits, 16))
    nf4 = quantized.quantize_weight(w, "nf4", double_quant=False)
    assert np.array_equal(nf4.dequantize(), quantization.quantize_nf4(w32, 64))
    assert nf4.packed.dtype == np.uint8 and nf4.packed.shape == (1155,)  # 2310 codes, 2 a byte
    doubled = quantized.quantize_weight(w, "nf4")  # double quantisation is the default
    assert doubled.scales is None and doubled.double_quant
    assert np.array_equal(doubled.packed, nf4.packed)  # the same codes, cheaper scales
    assert np.abs(doubled.block_scales() - nf4.scales).max() <= nf4.scales.max() / 254 + 1e-9


def test_bits_per_weight_as_computed_by_hand():
    # 128 x 128 = 16384 weights, 256 blocks of 64, one block of 256 scales
    w = np.random.default_rng(0).standard_normal((128, 128)).astype(np.float32)
    bpw = lambda **kw: quantized.quantize_weight(w, **kw).bits_per_weight  # noqa: E731
    assert bpw(kind="nf4", double_quant=False) == (8192 + 256 * 4) * 8 / 16384 == 4.5
    assert bpw(kind="absmax", bits=4, double_quant=False) == 4.5
    # codes, 256 int8 scale codes, one float32 second-level scale, the float32 mean
    assert bpw(kind="nf4") == (8192 + 256 + 4 + 4) * 8 / 16384 == 4.12890625
    # 512 x 1024: 8192 blocks, 32 second-level blocks: 4 + 8/64 + 32/(64*256) + 32/524288
    big = np.random.default_rng(1).standard_normal((512, 1024)).astype(np.float32)
    form = quantized.quantize_weight(big)
    assert form.bits_per_weight == 4 + 8 / 64 + 32 / (64 * 256) + 32 / (512 * 1024)
    assert form.nbytes == 262144 + 8192 + 32 * 4 + 4
    # 33 x 70 = 2310 weights: 37 blocks (the last one short), 1155 bytes of codes
    odd = quantized.quantize_weight(np.ones((33, 70), np.float32))
    assert odd.nbytes == 1155 + 37 + 4 + 4 and odd.bits_per_weight == 8 * 1200 / 2310
    assert quantized.bits_per_weight(linear()) == 32.0
    assert quantized.bits_per_weight(QuantizedLinear(linear())) == odd.bits_per_weight
    with pytest.raises(TypeError, match="got LayerNorm"):
        quantized.bits_per_weight(nn.LayerNorm(4))


# ----------------------------------------------------------------------------- the layer


def test_quantized_linear_keeps_only_codes_and_scales():
    base = linear()
    layer = QuantizedLinear(base)
    assert [n for n, _ in layer.named_parameters()] == ["bias"]
    assert np.array_equal(layer.bias.data, base.bias.data) and layer.bias is not base.bias
    arrays = layer.quantized.arrays()
    assert {n: a.dtype.name for n, a in arrays.items()} == {
        "packed": "uint8",
        "scale_codes": "int8",
        "scale_scales": "float32",
        "scale_offset": "float32",
    }
    assert not any(a.dtype.kind == "f" and a.size >= 64 for a in arrays.values())
    assert quantized.resident_bytes(layer) == 1155 + 37 + 4 + 4 + 33 * 4  # codes .. bias
    assert quantized.resident_bytes(base) == (33 * 70 + 33) * 4
    assert "kind='nf4', bits=4, block_size=64, double_quant=True" in repr(layer)


@pytest.mark.parametrize("kind, bits", [("nf4", 4), ("absmax", 4), ("absmax", 3)])
@pytest.mark.parametrize("bias", [True, False])
def test_forward_is_a_float_linear_with_the_dequantised_weight(kind, bits, bias):
    layer = QuantizedLinear(linear(bias=bias), kind, bits=bits, block_size=32)
    same = linear(bias=bias)
    same.weight.data = layer.dequantize()
    x = rows((2, 5, 70))
    assert np.array_equal(layer(x).data, same(x).data)  # bit for bit: the same op and numbers
    assert np.array_equal(layer.weight.data, layer.dequantize())
    assert layer.weight.data.dtype == np.float32 and not layer.weight.requires_grad


def test_the_weight_is_read_only_and_gets_no_gradient():
    layer = QuantizedLinear(linear())
    with pytest.raises(ValueError, match="read-only"):
        layer.weight.data[0, 0] = 1.0
    packed = layer.quantized.packed.copy()
    x = rows((4, 70))
    x.requires_grad_(True)
    (layer(x) ** 2).sum().backward()
    assert x.grad is not None and layer.bias.grad is not None
    assert np.array_equal(layer.quantized.packed, packed)
    x64 = rows((3, 70), "float64")
    x64.requires_grad_(True)
    layer.to("float64")  # the bias; the weight follows the input's dtype
    assert layer(x64).dtype == np.float64
    assert ln.gradcheck(lambda x, b: layer(x), x64, layer.bias)


# ----------------------------------------------------------------------------- LoRA on it


def qlora_layer(dtype="float32"):
    base = QuantizedLinear(linear(d_in=24, d_out=20, seed=3), "nf4", block_size=16)
    layer = lora.LoRALinear(base, r=3, alpha=6)
    layer.B.data = np.random.default_rng(4).standard_normal(layer.B.shape).astype("float32")
    return layer.to(dtype)


def test_lora_forward_on_a_quantised_base():
    layer = qlora_layer()
    x = rows((2, 7, 24))
    low = (x.data @ layer.A.data.T) * layer.scaling  # (2, 7, r)
    want = layer.base(x).data + low @ layer.B.data.T
    np.testing.assert_allclose(layer(x).data, want, rtol=1e-5, atol=1e-6)
    with layer.disable_adapters():
        assert np.array_equal(layer(x).data, layer.base(x).data)
    # the same numbers as a float LoRALinear whose base holds the dequantised weight
    float_base = linear(d_in=24, d_out=20, seed=3)
    float_base.weight.data = layer.base.dequantize()
    twin = lora.LoRALinear(float_base, r=3, alpha=6)
    twin.A.data, twin.B.data = layer.A.data.copy(), layer.B.data.copy()
    assert np.array_equal(layer(x).data, twin(x).data)


def test_gradients_reach_A_and_B_through_a_quantised_base():
    layer = qlora_layer("float64")
    x = rows((3, 24), "float64")
    x.requires_grad_(True)
    assert ln.gradcheck(lambda A, B, x: layer(x), layer.A, layer.B, x)
    assert layer.base.bias.requires_grad is False  # LoRALinear froze the base


def test_merging_into_a_quantised_base_is_refused_and_pissa_too():
    layer = qlora_layer()
    with pytest.raises(RuntimeError, match=r"cannot merge into a quantised base \(nf4, 4 bits\)"):
        layer.merge()
    assert not layer.merged
    with pytest.raises(ValueError, match="quantised"):
        layer.add_adapter("p", 2, 2, init="pissa")
    with pytest.raises(ValueError, match="quantised"):
        lora.LoRALinear(QuantizedLinear(linear()), 2, 2, init="pissa")
    with pytest.raises(TypeError, match=r"wraps an nn.Linear, got LayerNorm \(a quantised base"):
        lora.LoRALinear(nn.LayerNorm(4), 2, 2)
    # model-wide: checked on every layer first, so the float layer is not merged either
    model = nn.Sequential(lora.LoRALinear(linear(d_in=24, d_out=24), 2, 2), qlora_layer())
    before = model[0].base.weight.data.copy()
    for merge in (lora.merge_adapter, lora.merge_and_unload):
        with pytest.raises(RuntimeError, match="^1: cannot merge"):
            merge(model)
        assert not model[0].merged and np.array_equal(model[0].base.weight.data, before)
    # the way out: dequantise, then merge into W_hat (the weight the adapter was trained on)
    x = rows((5, 24))
    adapted = model(x).data.copy()
    assert quantized.dequantize_model(model) == ["1.base"]
    lora.merge_and_unload(model)
    assert all(type(m) is nn.Linear for m in model)
    np.testing.assert_allclose(model(x).data, adapted, rtol=1e-5, atol=1e-5)


def test_qlora_on_the_tiny_gpt_trains_the_adapters_only(tmp_path):
    model, _ = tiny_gpt()
    ln.manual_seed(0)
    names = lora.inject(model, ["q", "v"], r=4, alpha=8)
    assert names[0] == "blocks.0.attn.q" and isinstance(
        model.blocks[0].attn.q.base, QuantizedLinear
    )
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".adapters." in n for n in trainable)
    codes = model.blocks[0].attn.q.base.quantized.packed.copy()
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 40, size=(8, 24))
    targets = np.roll(idx, -1, axis=1)
    opt = ln.optim.AdamW(lora.lora_parameters(model), lr=1e-2)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        _, loss = model(idx, targets)
        loss.backward()
        opt.step()
        losses.append(float(loss.data))
    assert losses[-1] < 0.8 * losses[0], losses  # the adapters learn on a 4-bit base (-30%)
    assert np.array_equal(model.blocks[0].attn.q.base.quantized.packed, codes)
    # the adapter saves on its own and loads into a freshly quantised model: same outputs
    lora.save_adapter(model, tmp_path / "qlora")
    fresh, _ = tiny_gpt()
    assert lora.load_adapter(fresh, tmp_path / "qlora") == names
    assert np.array_equal(fresh(idx)[0].data, model(idx)[0].data)


# ----------------------------------------------------------------------------- whole models


def test_quantize_model_keeps_the_head_and_saves_memory(tiny_gpt_float):
    model, names = tiny_gpt()
    assert len(names) == 24 and "head" not in names
    assert type(model.head) is nn.Linear
    assert all(isinstance(model.get_submodule(n), QuantizedLinear) for n in names)
    floats = dict(tiny_gpt_float.named_modules())
    float_bytes = sum(quantized.resident_bytes(floats[n]) for n in names)  # weights + biases
    quant_bytes = sum(quantized.resident_bytes(model.get_submodule(n)) for n in names)
    assert quant_bytes < 0.2 * float_bytes  # 4.13 bits against 32, biases in float
    saved = float_bytes - quant_bytes
    assert quantized.resident_bytes(tiny_gpt_float) == sum(
        p.data.nbytes for p in tiny_gpt_float.parameters()
    )
    assert quantized.resident_bytes(model) == quantized.resident_bytes(tiny_gpt_float) - saved
    # deterministic: quantising the same checkpoint again gives the same bytes
    again, _ = tiny_gpt()
    assert all(
        np.array_equal(
            model.get_submodule(n).quantized.packed, again.get_submodule(n).quantized.packed
        )
        for n in names
    )


def test_quantization_report_per_layer(tiny_gpt_float):
    nf4, names = tiny_gpt()
    absmax, _ = tiny_gpt(kind="absmax", double_quant=False)
    report = quantized.quantization_report(tiny_gpt_float, nf4)
    assert [r["name"] for r in report] == names and report[0]["shape"] == (128, 128)
    errors = np.array([r["relative_error"] for r in report])
    assert 0.05 < errors.min() and errors.max() < 0.11  # 0.091 .. 0.098 on the shipped base
    by_hand = report[4]  # blocks.0.mlp.fc, (512, 128)
    w = tiny_gpt_float.get_submodule(by_hand["name"]).weight.data.astype(np.float64)
    w_hat = nf4.get_submodule(by_hand["name"]).dequantize().astype(np.float64)
    assert by_hand["relative_error"] == np.linalg.norm(w_hat - w) / np.linalg.norm(w)
    other = quantized.quantization_report(tiny_gpt_float, absmax)
    assert all(a["relative_error"] > b["relative_error"] for a, b in zip(other, report))
    with pytest.raises(ValueError, match="no QuantizedLinear"):
        quantized.quantization_report(tiny_gpt_float, tiny_gpt_float)


def kinds_of(model):
    return {n: type(m).__name__ for n, m in model.named_modules()}


@pytest.mark.parametrize(
    "kwargs, error, phrase",
    [
        ({"kind": "nf3"}, ValueError, "unknown quantisation kind 'nf3'"),
        ({"kind": "nf4", "bits": 3}, ValueError, "bits must be 4, got 3"),
        ({"kind": "absmax", "bits": 9}, ValueError, "bits must be a whole number from 2 to 8"),
        ({"block_size": 0}, ValueError, "block_size must be a whole number >= 1, got 0"),
        ({"double_quant": "yes"}, ValueError, "double_quant must be True or False, got 'yes'"),
        ({"skip": ["haed"]}, ValueError, r"skip entries \['haed'\] match no module"),
        ({"skip": [3]}, ValueError, "skip must be a module name"),
        ({"skip": ["blocks", "head"]}, ValueError, "no Linear layer to quantise"),
    ],
)
def test_quantize_model_refuses_bad_arguments_and_changes_nothing(kwargs, error, phrase):
    model = ln.transformer.load_pretrained()
    before = kinds_of(model)
    with pytest.raises(error, match=phrase):
        quantized.quantize_model(model, **kwargs)
    assert kinds_of(model) == before


def test_quantize_model_is_all_or_nothing_and_refuses_quantised_or_lora_layers():
    model = ln.transformer.load_pretrained()
    model.blocks[3].mlp.proj.weight.data[0, 0] = np.nan
    before = kinds_of(model)
    with pytest.raises(ValueError, match=r"^blocks\.3\.mlp\.proj: .*NaN"):
        quantized.quantize_model(model)
    assert kinds_of(model) == before  # the 23 layers before it were not replaced
    model, _ = tiny_gpt(skip=["blocks.1", "head"])  # a container keeps everything inside
    assert (
        type(model.blocks[1].attn.q) is nn.Linear
        and type(model.blocks[0].attn.q) is QuantizedLinear
    )
    with pytest.raises(ValueError, match=r"already quantised \(blocks\.0\.attn\.q, "):
        quantized.quantize_model(model)
    with pytest.raises(TypeError, match="already a QuantizedLinear"):
        QuantizedLinear(model.blocks[0].attn.q)
    wrapped = ln.transformer.load_pretrained()
    lora.inject(wrapped, ["q"], r=2, alpha=2)
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.q\.base, .* already carry LoRA"):
        quantized.quantize_model(wrapped)
    with pytest.raises(TypeError, match="needs an nn.Module, got dict"):
        quantized.quantize_model({})


def test_dequantize_model_restores_float_layers_without_drawing_random_numbers():
    model, names = tiny_gpt()
    idx = np.random.default_rng(0).integers(0, 40, size=(2, 16))
    logits = model(idx)[0].data.copy()
    ln.manual_seed(5)
    assert quantized.dequantize_model(model) == names
    drawn = ln.backend.rng().integers(1 << 30)
    ln.manual_seed(5)
    assert drawn == ln.backend.rng().integers(1 << 30)  # the generator did not move
    assert all(type(model.get_submodule(n)) is nn.Linear for n in names)
    assert np.array_equal(model(idx)[0].data, logits)
    with pytest.raises(ValueError, match="no QuantizedLinear"):
        quantized.dequantize_model(model)


def test_a_quantised_model_cannot_be_saved_as_a_checkpoint(tmp_path):
    model, _ = tiny_gpt()
    with pytest.raises(
        ValueError, match=r"cannot save .*blocks\.0\.attn\.q, .*quantize_model is deterministic"
    ):
        model.save(tmp_path / "q.safetensors")
    assert not (tmp_path / "q.safetensors").exists()


def test_quantised_layers_on_each_backend(backend_name):
    from lora_np import backend

    base = linear(d_in=24, d_out=20, seed=3)
    layer = QuantizedLinear(base, double_quant=False)
    assert backend.array_module(layer.quantized.packed) == backend_name
    x = ln.Tensor(backend.xp.asarray(np.random.default_rng(1).standard_normal((3, 24))))
    assert backend.array_module(layer(x).data) == backend_name
    host = quantization.quantize_nf4(backend.to_numpy(base.weight.data))  # on the host
    assert np.array_equal(backend.to_numpy(layer.dequantize()), host)
    doubled = QuantizedLinear(base)
    assert backend.array_module(doubled.quantized.scale_codes) == backend_name
    qlora = lora.LoRALinear(doubled, r=2, alpha=4)
    qlora.B.data = backend.xp.ones(qlora.B.shape, dtype=qlora.B.dtype)
    (qlora(x) ** 2).mean().backward()
    assert backend.array_module(qlora.A.grad) == backend_name
    assert quantized.resident_bytes(doubled) == 240 + 8 + 4 + 4 + 20 * 4
