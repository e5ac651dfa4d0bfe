"""A quantised base: Linear layers that keep only 4-bit codes in memory (QLoRA's frozen base).

QLoRA (Dettmers et al. 2023, arXiv:2305.14314) trains LoRA adapters on a base whose weights are
stored in 4 bits. A frozen weight is only read, once per forward, so it can live in the smallest
form that reads back well enough: here a :class:`QuantizedWeight` (packed level indices, block
scales and, with double quantisation, the scales' 8-bit codes). A :class:`QuantizedLinear` keeps
nothing else; each forward dequantises into a temporary float array. The codes get no gradient
(they are not parameters), the input does, so adapters below and beside the layer train:
``lora.LoRALinear`` accepts a QuantizedLinear as its base, and that is QLoRA.

* :func:`quantize_weight` -> :class:`QuantizedWeight`; :class:`QuantizedLinear`;
* :func:`quantize_model` / :func:`dequantize_model`: every Linear of a model, in place;
* :func:`bits_per_weight`, :func:`resident_bytes`, :func:`quantization_report`: measurements.

Saving: ``GPT.save`` / ``serialization.save_weights`` refuse a model with quantised layers (the
codes are not parameters; the file would miss them). Quantisation is deterministic, so
``quantize_model(GPT.load(path))`` rebuilds the same codes from the float checkpoint; adapters
trained on the quantised base are saved on their own with ``lora.save_adapter``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import backend, nn
from . import functional as F
from .autograd import Tensor
from .quantization import (
    check_block_size,
    check_kind,
    code_book,
    double_dequantize,
    double_quantize,
    encode_blockwise,
    encode_nf4,
    pack_indices,
    unpack_indices,
)

# ============================================================================ the stored form


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A weight's complete stored form: every array a quantised layer keeps for it.

    Attributes:
        kind: "nf4" or "absmax"; bits: bits per index; block_size: weights per scale;
            shape: the weight's shape, e.g. (out, in).
        packed: uint8 (ceil(size * bits / 8),): one level index per weight (C order), packed
            by :func:`quantization.pack_indices` (two 4-bit indices per byte).
        scales: float32 (n_blocks,), one per block (absmax / L for "absmax", absmax for "nf4"),
            or None when double quantised. Then ``scale_codes`` int8 (n_blocks,),
            ``scale_scales`` float32 (ceil(n_blocks / scale_block_size),) and ``scale_offset``
            float32 (1,) hold them (:func:`quantization.double_quantize`).
    """

    kind: str
    bits: int
    block_size: int
    shape: tuple
    packed: object
    scales: object = None
    scale_codes: object = None
    scale_scales: object = None
    scale_offset: object = None
    scale_block_size: int | None = None

    size = property(lambda self: math.prod(self.shape), doc="How many weights: prod(shape).")
    double_quant = property(lambda self: self.scales is None)

    def arrays(self) -> dict:
        """name -> array for every array this form holds (what stays in memory)."""
        names = ("packed", "scales", "scale_codes", "scale_scales", "scale_offset")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    @property
    def nbytes(self) -> int:
        """Bytes of all the arrays: packed indices, scales and second-level scales."""
        return sum(int(a.nbytes) for a in self.arrays().values())

    @property
    def bits_per_weight(self) -> float:
        """8 * nbytes / size: storage bits per weight, scales and padding included."""
        return 8 * self.nbytes / self.size

    def block_scales(self):
        """The float32 scale of every block (n_blocks,), decoding the second level if any."""
        if self.scales is not None:
            return self.scales
        return double_dequantize(
            self.scale_codes, self.scale_scales, self.scale_offset, self.scale_block_size
        )

    def dequantize(self):
        """The weight as float32 of ``shape``: level[index] * its block's scale."""
        xp = backend.module_of(self.packed)
        scales = self.block_scales()  # (n_blocks,)
        n_blocks = scales.shape[0]
        indices = unpack_indices(self.packed, self.bits, self.size)  # (size,) uint8
        book = xp.asarray(code_book(self.kind, self.bits))  # (2**bits,) float32
        values = xp.take(book, indices.astype(xp.intp))  # (size,)
        pad = n_blocks * self.block_size - self.size
        if pad:  # the last block is short; its missing slots are never read back
            values = xp.concatenate([values, xp.zeros(pad, dtype=values.dtype)])
        blocks = values.reshape(n_blocks, self.block_size) * scales[:, None]
        return blocks.reshape(-1)[: self.size].reshape(self.shape)


def quantize_weight(
    w,
    kind: str = "nf4",
    bits: int = 4,
    block_size: int = 64,
    double_quant: bool = True,
    scale_block_size: int = 256,
) -> QuantizedWeight:
    """The stored form of a float weight (any shape; blocks run over it flattened, C order).

    The weight is rounded to float32 first (the scales are float32, as QLoRA's constants), so
    an "absmax" form without double quantisation dequantises to exactly
    ``quantize_blockwise(w.astype(float32), bits, block_size)``.

    Args:
        w: a finite float array (host or backend). kind: "nf4" (bits must be 4) or "absmax"
            (bits 2..8). block_size: weights per scale (QLoRA: 64). double_quant: store the
            scales in 8 bits (QLoRA: yes). scale_block_size: scales per second-level block (256).
    """
    kind, bits = check_kind(kind, bits)
    block_size = check_block_size(block_size)
    scale_block_size = check_block_size(scale_block_size)
    if not isinstance(double_quant, bool):
        raise ValueError(f"double_quant must be True or False, got {double_quant!r}")
    if getattr(w, "dtype", None) is None or w.dtype.kind != "f":
        raise TypeError(f"quantize_weight: w must be a float array, got {type(w).__name__}")
    xp = backend.module_of(w)
    w32 = w.astype(xp.float32)
    if kind == "nf4":
        indices, scales = encode_nf4(w32, block_size)  # (n_blocks, block_size) uint8, float32
    else:
        if w32.size and not bool(xp.isfinite(w32).all()):
            raise ValueError("quantize_weight: w holds NaN or infinite values")
        codes, scales = encode_blockwise(w32, bits, block_size)  # int8 codes in -L..L
        indices = (codes.astype(xp.int16) + 2 ** (bits - 1)).astype(xp.uint8)  # 1 .. 2**bits-1
    packed = pack_indices(indices.reshape(-1)[: w.size], bits)
    form = dict(kind=kind, bits=bits, block_size=block_size, shape=tuple(w.shape), packed=packed)
    if not double_quant:
        return QuantizedWeight(**form, scales=scales)
    codes, second, offset = double_quantize(scales, scale_block_size)
    return QuantizedWeight(
        **form,
        scale_codes=codes,
        scale_scales=second,
        scale_offset=offset,
        scale_block_size=scale_block_size,
    )


# ============================================================================ the layer


class QuantizedLinear(nn.Module):
    """A frozen Linear whose weight lives as a :class:`QuantizedWeight`: y = x W_hat^T + b.

    Built from a float ``nn.Linear`` (left unchanged): its weight is quantised, its bias copied
    as a float Parameter (same requires_grad). Each forward dequantises W_hat (out, in) into a
    temporary array of the input's dtype. ``kind, bits, block_size, double_quant``: as
    :func:`quantize_weight` (defaults: QLoRA's NF4, blocks of 64, double quantisation).

    Attributes: in_features, out_features, kind, bits, block_size, double_quant; quantized (the
    QuantizedWeight); bias (Parameter (out,) or None); weight (read-only, see below).
    """

    def __init__(
        self,
        linear: nn.Linear,
        kind: str = "nf4",
        bits: int = 4,
        block_size: int = 64,
        double_quant: bool = True,
    ):
        if isinstance(linear, QuantizedLinear):
            raise TypeError("this layer is already a QuantizedLinear; quantise a float nn.Linear")
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"QuantizedLinear quantises an nn.Linear, got {type(linear).__name__}")
        quantized = quantize_weight(linear.weight.data, kind, bits, block_size, double_quant)
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.quantized = quantized
        bias = linear.bias
        self.bias = None if bias is None else nn.Parameter(bias.data, bias.requires_grad)

    kind = property(lambda self: self.quantized.kind)
    bits = property(lambda self: self.quantized.bits)
    block_size = property(lambda self: self.quantized.block_size)
    double_quant = property(lambda self: self.quantized.double_quant)

    weights_are_parameters = False  # serialization.save_weights refuses to save this layer

    def dequantize(self):
        """W_hat (out, in) as a new float32 array."""
        return self.quantized.dequantize()

    @property
    def weight(self) -> Tensor:
        """W_hat as a frozen Tensor (out, in), dequantised anew on every access: read-only.

        For code that reads ``layer.weight`` (shapes, dtype, comparisons). Writing into it
        changes nothing, so its array is marked read-only where the backend allows; LoRA's
        merge into a quantised base is refused (see ``lora.LoRALinear.merge``).
        """
        tensor = Tensor(self.dequantize())
        if backend.array_module(tensor.data) == "numpy":
            tensor.data.flags.writeable = False
        return tensor

    def forward(self, x: Tensor) -> Tensor:
        """x: (..., in_features) -> (..., out_features)"""
        dtype = x.dtype if x.dtype.kind == "f" else backend.xp.float32
        frozen = Tensor(self.dequantize(), dtype=dtype)  # a leaf without grad: codes stay frozen
        return F.linear(x, frozen, self.bias)

    def __repr__(self) -> str:
        return (
            f"QuantizedLinear(in_features={self.in_features}, out_features={self.out_features}, "
            f"kind={self.kind!r}, bits={self.bits}, block_size={self.block_size}, "
            f"double_quant={self.double_quant}, bias={self.bias is not None})"
        )


# ============================================================================ whole models

DEFAULT_SKIP = ("head",)
"""What :func:`quantize_model` keeps in float by default: the GPT's output head."""


def _check_skip(skip) -> list:
    entries = [skip] if isinstance(skip, str) else skip
    if not isinstance(entries, list | tuple) or not all(isinstance(e, str) and e for e in entries):
        raise ValueError(f"skip must be a module name or a list of names, got {skip!r}")
    return list(entries)


def _lora_parent(modules: dict, name: str):
    """The LoRA layer that holds ``name`` as its base, or None. (A LoRA layer is recognised by
    its ``adapters``: this module sits below ``lora`` and cannot import it.)"""
    parent_name, _, attribute = name.rpartition(".")
    parent = modules.get(parent_name)
    return parent_name if attribute == "base" and hasattr(parent, "adapters") else None


def quantize_model(
    model: nn.Module,
    kind: str = "nf4",
    bits: int = 4,
    block_size: int = 64,
    double_quant: bool = True,
    skip=DEFAULT_SKIP,
) -> list:
    """Replace every ``nn.Linear`` of ``model`` by a :class:`QuantizedLinear`, in place.

    All or nothing: the arguments, the model and every layer's quantisation are checked and
    computed first; the model changes only when all succeeded.

    Args:
        model: float Linear layers, before ``lora.inject`` (QLoRA's order); quantised layers
            and the bases of LoRA layers are refused, with their names.
        kind, bits, block_size, double_quant: as :func:`quantize_weight`.
        skip: modules kept in float, matched as PEFT matches targets (the whole name or its
            last dotted parts; a container keeps every Linear inside). The default keeps the
            GPT's output ``head``, as the usual 4-bit integrations do (ignored on a model
            without one); an entry given explicitly must match a module (a typo would
            otherwise quantise the layer it meant to keep).
    Returns:
        The dotted names of the quantised layers, in model order.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize_model needs an nn.Module, got {type(model).__name__}")
    check_kind(kind, bits)
    check_block_size(block_size)
    if not isinstance(double_quant, bool):
        raise ValueError(f"double_quant must be True or False, got {double_quant!r}")
    entries = _check_skip(skip)
    modules = dict(model.named_modules())
    if skip is not DEFAULT_SKIP:
        unknown = [e for e in entries if not any(nn.name_matches(n, e) for n in modules if n)]
        if unknown:
            raise ValueError(f"skip entries {unknown} match no module of the model")
    done = [n for n, m in modules.items() if isinstance(m, QuantizedLinear)]
    if done:
        raise ValueError(
            f"the model is already quantised ({', '.join(done)}); quantize_model works on a "
            "float model (dequantize_model(model) first to quantise again)"
        )
    wrapped = [n for n in modules if isinstance(modules[n], nn.Linear) and _lora_parent(modules, n)]
    if wrapped:
        raise ValueError(
            f"{', '.join(wrapped)} already carry LoRA adapters; quantise the base model first, "
            "then add adapters (lora.inject), as QLoRA does"
        )

    def kept(name: str) -> bool:
        parts = name.split(".")
        prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
        return any(nn.name_matches(p, e) for p in prefixes for e in entries)

    names = [n for n, m in modules.items() if isinstance(m, nn.Linear) and not kept(n)]
    if not names:
        raise ValueError(f"the model has no Linear layer to quantise (skip={entries})")
    replacements = {}
    for name in names:  # every layer quantised before the first one is replaced
        try:
            replacements[name] = QuantizedLinear(
                modules[name], kind, bits, block_size, double_quant
            )
        except (ValueError, TypeError) as err:
            raise type(err)(f"{name}: {err}") from None
    for name, layer in replacements.items():
        model.set_submodule(name, layer)
    return names


def _float_linear(weight, bias) -> nn.Linear:
    """An nn.Linear holding these arrays, without drawing a random initialisation (which would
    move the seeded generator and change every later draw)."""
    layer = nn.Linear.__new__(nn.Linear)
    nn.Module.__init__(layer)
    layer.out_features, layer.in_features = weight.shape
    layer.weight = nn.Parameter(weight, requires_grad=False)
    layer.bias = bias
    return layer


def dequantize_model(model: nn.Module) -> list:
    """Replace every QuantizedLinear by a float32 ``nn.Linear`` holding W_hat, in place.

    The weight is the dequantised one (the quantisation error stays) and frozen; the bias
    Parameter is kept. Also inside LoRA layers: afterwards an adapter trained on the quantised
    base can be merged (into W_hat, the weight it was trained against). Returns the names.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"dequantize_model needs an nn.Module, got {type(model).__name__}")
    names = [n for n, m in model.named_modules() if isinstance(m, QuantizedLinear)]
    if not names:
        raise ValueError("the model has no QuantizedLinear layers to dequantise")
    modules = dict(model.named_modules())
    for name in names:
        layer = modules[name]
        model.set_submodule(name, _float_linear(layer.dequantize(), layer.bias))
    return names


# ============================================================================ measurements


def bits_per_weight(layer) -> float:
    """Storage bits per weight, exactly: 8 * bytes / weights.

    A QuantizedLinear or QuantizedWeight: packed indices, scales, second level and offset
    (padding included, bias not); NF4 in blocks of 64: 4.5, double quantised about 4.127.
    An nn.Linear: its weight's dtype (32 for float32).
    """
    if isinstance(layer, QuantizedLinear):
        layer = layer.quantized
    if isinstance(layer, QuantizedWeight):
        return layer.bits_per_weight
    if isinstance(layer, nn.Linear):
        return 8.0 * layer.weight.data.itemsize
    raise TypeError(
        f"bits_per_weight measures a QuantizedLinear, QuantizedWeight or nn.Linear, got "
        f"{type(layer).__name__}"
    )


def resident_bytes(model: nn.Module) -> int:
    """Bytes of every array ``model`` holds: parameters, other Tensors and arrays its modules
    keep as attributes (buffers), and the codes and scales of quantised weights. Each array
    counts once, however many modules share it. Gradients and optimiser state are not the
    model's and are not counted."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"resident_bytes needs an nn.Module, got {type(model).__name__}")
    seen, total = set(), 0
    for _, module in model.named_modules():
        for value in vars(module).values():
            if isinstance(value, Tensor):
                arrays = [value.data]
            elif isinstance(value, QuantizedWeight):
                arrays = list(value.arrays().values())
            elif hasattr(value, "nbytes") and hasattr(value, "dtype"):  # a bare array
                arrays = [value]
            else:
                continue
            for array in arrays:
                if id(array) not in seen:
                    seen.add(id(array))
                    total += int(array.nbytes)
    return total


def quantization_report(reference: nn.Module, model: nn.Module) -> list:
    """Per quantised layer of ``model``, how far W_hat is from the float weight of ``reference``.

    Args:
        reference: the float model (same module names; a layer quantised inside a LoRA layer,
            ``x.base``, is compared with ``x``). model: the quantised one.
    Returns:
        one dict per QuantizedLinear, in model order: name, shape, kind, bits_per_weight and
        relative_error = ||W_hat - W||_F / ||W||_F (computed in float64).
    """
    floats = dict(reference.named_modules())
    rows = []
    for name, layer in model.named_modules():
        if not isinstance(layer, QuantizedLinear):
            continue
        base = floats.get(name)
        if base is None and name.endswith(".base"):
            base = floats.get(name[: -len(".base")])
        if not isinstance(base, nn.Linear) or base.weight.shape != layer.quantized.shape:
            raise ValueError(
                f"the reference has no float Linear of shape {layer.quantized.shape} at {name!r}"
            )
        w = backend.to_numpy(base.weight.data).astype(backend.np.float64)
        w_hat = backend.to_numpy(layer.dequantize()).astype(backend.np.float64)
        norm = float(backend.np.linalg.norm(w))
        error = float(backend.np.linalg.norm(w_hat - w)) / norm if norm else 0.0
        bits = layer.quantized.bits_per_weight
        row = dict(name=name, shape=layer.quantized.shape, kind=layer.kind, bits_per_weight=bits)
        rows.append(row | {"relative_error": error})
    if not rows:
        raise ValueError("the model has no QuantizedLinear layers; call quantize_model first")
    return rows
