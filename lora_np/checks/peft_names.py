"""Checkers for notebook 09 (the step to PEFT): names, positions and the adapter config.

* ``check_peft_key(fn)``: ``fn(name)`` -> the PEFT state-dict key of a lora_np adapter
  parameter on the exported OPT model ("blocks.0.attn.q.adapters.default.A" ->
  "base_model.model.model.decoder.layers.0.self_attn.q_proj.lora_A.weight").
* ``check_opt_positions(fn)``: ``fn(pos)`` -> OPT's position table (T + 2, C) from lora_np's
  (T, C): OPT reads row ``position + 2``.
* ``check_peft_lora_config(fn)``: ``fn(layers, rslora)`` -> the adapter_config.json dict PEFT
  needs for a LoRA with one (r, alpha) per layer.

Every reference is what ``lora_np.hf`` itself writes (no torch): its name map, its export and
its adapter files. The config is judged by what PEFT would make of it (which OPT layers its
targets select, each one's rank and alpha after rank_pattern / alpha_pattern), so any correct
spelling of the patterns passes.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from .. import lora as lora_lib
from .. import transformer
from ..hf import adapters as hf_adapters
from ..hf import files as hf_files
from ..hf import model as hf_model
from ..hf import names as hf_names
from ._harness import (
    ExerciseError,
    as_array,
    call,
    describe,
    exercise,
    np,
    passed,
    snapshot,
    unchanged,
)

__all__ = [
    "check_opt_positions",
    "check_peft_key",
    "check_peft_lora_config",
    "reference_opt_positions",
    "reference_peft_key",
    "reference_peft_lora_config",
]

_PARAM = re.compile(r"(?P<layer>.+)\.adapters\.(?P<adapter>[^.]+)\.(?P<which>[AB])")


def _tiny(n_layer: int = 2, block_size: int = 8, n_embd: int = 8) -> transformer.GPT:
    config = transformer.GPTConfig(
        vocab_size=8, block_size=block_size, n_embd=n_embd, n_head=2, n_layer=n_layer
    )
    return transformer.GPT(config)


def _exported(model: transformer.GPT) -> dict:
    """{file name: contents} of ``hf.export(model)`` (tensors as arrays, JSON as dicts)."""
    with tempfile.TemporaryDirectory(prefix="lora_np-check-") as tmp:
        folder = hf_model.export(model, Path(tmp) / "out")
        out = {"tensors": hf_files.read_float_tensors(folder / hf_model.WEIGHTS_FILE)}
        for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
            out[sub.name] = {
                "config": json.loads((sub / lora_lib.CONFIG_NAME).read_text()),
                "tensors": hf_files.read_float_tensors(sub / lora_lib.WEIGHTS_NAME),
            }
    return out


# ============================================================================ peft_key


def reference_peft_key(name: str) -> str:
    """The key ``hf.export`` writes for lora_np parameter ``name`` (an adapter's A or B)."""
    found = _PARAM.fullmatch(name)
    if found is None:
        raise ValueError(f"{name!r} is not a LoRA parameter (<layer>.adapters.<adapter>.A or B)")
    return f"{lora_lib.PREFIX}{hf_names.to_opt(found['layer'])}.lora_{found['which']}.weight"


def _adapted(adapter: str) -> transformer.GPT:
    """A 2-layer GPT with every Linear (the head too) adapted under ``adapter``."""
    model = _tiny()
    targets = ["q", "k", "v", "o", "fc", "proj", "head"]
    lora_lib.inject(model, targets, r=2, alpha=4, adapter_name=adapter)
    return model


def _exported_keys(adapter: str) -> set:
    """Every adapter key ``hf.export`` writes for a 2-layer GPT with every Linear adapted."""
    return set(_exported(_adapted(adapter))[adapter]["tensors"])


def _key_mistakes(name: str) -> list:
    found = _PARAM.fullmatch(name)
    right = reference_peft_key(name)
    which = found["which"]
    other = "B" if which == "A" else "A"
    return [
        (
            "the `base_model.model.` prefix is missing: PEFT's keys start with it",
            right.removeprefix(lora_lib.PREFIX),
        ),
        (
            f"A and B are swapped: {which} is saved as lora_{which}",
            right.replace(f"lora_{which}.", f"lora_{other}."),
        ),
        (
            "the `.weight` suffix is missing: lora_A and lora_B are Linear layers in PEFT",
            right[: -len(".weight")],
        ),
        (
            f"the adapter name is kept in the key: PEFT's file leaves out {found['adapter']!r} "
            "(the folder is the adapter)",
            right.replace(f".lora_{which}.", f".lora_{which}.{found['adapter']}."),
        ),
        (
            "the layer keeps lora_np's name: map it to OPT's (hf.names.to_opt), e.g. "
            "blocks.0.attn.q -> model.decoder.layers.0.self_attn.q_proj",
            f"{lora_lib.PREFIX}{found['layer']}.lora_{which}.weight",
        ),
    ]


@exercise("peft_key", reference_peft_key)
def check_peft_key(fn: Any, *, quiet: bool = False) -> None:
    """Check ``fn(name)`` -> str on every A and B of a 2-layer GPT, two adapter names."""
    name = "peft_key"
    n_checks = 0
    for adapter in ("default", "swp"):
        written = _exported_keys(adapter)
        model = _adapted(adapter)
        params = [n for n, _ in model.named_parameters() if ".adapters." in n]
        for param in params:
            case = f"name = {param!r}"
            got = call(fn, name, case, param)
            if not isinstance(got, str):
                raise ExerciseError(f"{name}: expected a str on {case}, got {describe(got)}")
            want = reference_peft_key(param)
            assert want in written  # the reference is what export writes
            if got == want:
                n_checks += 1
                continue
            for message, wrong in _key_mistakes(param):
                if got == wrong:
                    raise ExerciseError(
                        f"{name}: {message} (on {case}: you gave the string {got!r})"
                    )
            mapped = re.sub(r"\.lora_[AB].*$", "", got.removeprefix(lora_lib.PREFIX))
            hint = ""
            if mapped != hf_names.to_opt(_PARAM.fullmatch(param)["layer"]):
                hint = (
                    f"; the layer's OPT name is {hf_names.to_opt(_PARAM.fullmatch(param)['layer'])!r}"
                    " (q, k, v, o -> q_proj, k_proj, v_proj, out_proj; fc, proj -> fc1, fc2)"
                )
            raise ExerciseError(
                f"{name}: on {case} you gave the string {got!r}, expected {want!r}{hint}"
            )
    passed(name, n_checks, quiet)


# ============================================================================ opt_positions


def reference_opt_positions(pos):
    """OPT's ``embed_positions.weight`` (T + 2, C) as ``hf.export`` writes it for lora_np's
    ``pos_emb.weight`` (T, C): two rows in front (OPT's offset), then the table unchanged."""
    pos = np.asarray(pos)
    T, C = pos.shape
    model = _tiny(n_layer=1, block_size=T, n_embd=C)
    for p in model.parameters():  # export writes one dtype: the table's
        p.data = p.data.astype(pos.dtype)
    model.pos_emb.weight.data = pos.copy()
    key = f"{hf_names.to_opt('pos_emb')}.weight"
    return _exported(model)["tensors"][key]


_POSITION_CASES = [
    (8, 8, np.float32, "a (8, 8) float32 table"),
    (64, 16, np.float32, "the tiny GPT's 64 positions, 16 wide"),
    (5, 12, np.float64, "a (5, 12) float64 table"),
    (1, 4, np.float32, "a single position"),
]


@exercise("opt_positions", reference_opt_positions)
def check_opt_positions(fn: Any, *, quiet: bool = False) -> None:
    """Check ``fn(pos)`` -> (T + 2, C) array in pos's dtype, rows 2.. equal to ``pos``.

    Rows 0 and 1 are never read by OPT (its position ids start at 2); ``hf.export`` writes
    zeros there and the checker asks for finite values, not for zeros.
    """
    name = "opt_positions"
    rng = np.random.default_rng(9)
    n_checks = 0
    for T, C, dtype, what in _POSITION_CASES:
        pos = rng.standard_normal((T, C)).astype(dtype)
        case = f"pos of shape {(T, C)} ({what})"
        want = reference_opt_positions(pos.copy())
        given = [pos.copy()]
        before = snapshot(*given)
        got = call(fn, name, case, *given)
        unchanged(name, case, ("pos",), before, given)
        got = as_array(got, name, case)
        off = hf_names.OFFSET
        if got.shape == (T, C):
            raise ExerciseError(
                f"{name}: no offset on {case}: you returned shape {got.shape}; OPT reads row "
                f"position + {off}, so its table has {off} extra rows in front: {want.shape}"
            )
        if got.shape == (T + 1, C):
            raise ExerciseError(
                f"{name}: an offset of 1 on {case} (shape {got.shape}): OPT's offset is {off}, "
                f"so the table is {want.shape}"
            )
        if got.shape != want.shape:
            raise ExerciseError(f"{name}: shape {got.shape} on {case}, expected {want.shape}")
        if got.dtype != want.dtype:
            raise ExerciseError(
                f"{name}: dtype {got.dtype} on {case}; keep the table's own dtype {want.dtype}"
            )
        if np.array_equal(got[:T], pos) and not np.array_equal(got[off:], pos):
            raise ExerciseError(
                f"{name}: the extra rows are at the end on {case}: position 0 must sit in row "
                f"{off} (OPT reads row position + {off}), so the extra rows go in front"
            )
        if T > 1 and np.array_equal(got[off - 1 : T + off - 1], pos):
            raise ExerciseError(
                f"{name}: the table starts at row 1 on {case}; OPT's offset is {off}"
            )
        if not np.array_equal(got[off:], want[off:]):
            raise ExerciseError(
                f"{name}: rows {off}.. on {case} are not pos unchanged (OPT's row p + {off} is "
                "lora_np's row p, copied exactly)"
            )
        if not np.isfinite(got[:off]).all():
            raise ExerciseError(
                f"{name}: rows 0..{off - 1} on {case} are not finite; OPT never reads them, "
                "but they are saved: zeros, as hf.export writes"
            )
        n_checks += 1
    passed(name, n_checks, quiet)


# ============================================================================ peft_lora_config


def reference_peft_lora_config(layers: dict, rslora: bool = False) -> dict:
    """The adapter_config.json dict ``hf.export`` writes for a 2-layer GPT whose layers
    ``{lora_np layer name: (r, alpha)}`` carry one adapter (rsLoRA when ``rslora``)."""
    blocks = [int(m[1]) for m in (re.match(r"blocks\.(\d+)\.", n) for n in layers) if m]
    model = _tiny(n_layer=max(blocks, default=0) + 1)  # as deep as the layers named need
    for layer, (r, alpha) in layers.items():
        lora_lib.inject(model, [layer], r=r, alpha=alpha, rslora=rslora)
    return _exported(model)[lora_lib.DEFAULT_ADAPTER]["config"]


def _as_peft_reads(config: dict, name: str, case: str) -> dict:
    """{OPT layer: (r, alpha)} that PEFT would adapt for ``config`` on the 2-layer GPT."""
    for key in ("peft_type", "r", "lora_alpha", "target_modules"):
        if key not in config:
            raise ExerciseError(f"{name}: your dict has no {key!r} on {case}; PEFT needs it")
    if config["peft_type"] != "LORA":
        raise ExerciseError(f"{name}: peft_type is {config['peft_type']!r}, expected 'LORA'")
    targets = config["target_modules"]
    if not isinstance(targets, str | list):
        raise ExerciseError(f"{name}: target_modules must be a list or a regex string")
    linear = [hf_names.to_opt(n) for n in hf_names.linear_names(_tiny().config)]
    try:
        selected = [n for n in linear if hf_adapters._peft_selects(n, config)]
        ranks = config.get("rank_pattern") or {}
        alphas = config.get("alpha_pattern") or {}
        return {
            n: (
                hf_adapters._pattern_value(ranks, n, config["r"]),
                hf_adapters._pattern_value(alphas, n, config["lora_alpha"]),
            )
            for n in selected
        }
    except (re.error, TypeError, AttributeError) as err:
        raise ExerciseError(f"{name}: PEFT cannot read your dict on {case}: {err}") from None


_CONFIG_CASES = [
    ({"blocks.0.attn.q": (4, 8), "blocks.1.attn.q": (4, 8)}, False, "q of both blocks"),
    (
        {"blocks.0.attn.q": (4, 8), "blocks.0.attn.v": (4, 8), "blocks.1.mlp.proj": (2, 8)},
        True,
        "rsLoRA, proj at rank 2",
    ),
    (
        {"blocks.0.attn.v": (8, 16), "blocks.1.attn.v": (8, 16), "head": (8, 4)},
        False,
        "the head with alpha 4",
    ),
    ({"blocks.1.mlp.fc": (3, 6)}, True, "rsLoRA on one fc"),
]


@exercise("peft_lora_config", reference_peft_lora_config)
def check_peft_lora_config(fn: Any, *, quiet: bool = False) -> None:
    """Check ``fn(layers, rslora)`` -> dict: PEFT must adapt exactly the layers given (in OPT's
    names), each with its r and alpha, and use_rslora must equal ``rslora``."""
    name = "peft_lora_config"
    n_checks = 0
    for layers, rslora, what in _CONFIG_CASES:
        case = f"layers = {layers}, rslora = {rslora} ({what})"
        want_config = reference_peft_lora_config(dict(layers), rslora)
        want = _as_peft_reads(want_config, name, case)
        assert want == {hf_names.to_opt(k): v for k, v in layers.items()}
        given = [dict(layers), rslora]
        before = snapshot(*given)
        got = call(fn, name, case, *given)
        unchanged(name, case, ("layers", "rslora"), before, given)
        if not isinstance(got, dict):
            raise ExerciseError(f"{name}: expected a dict on {case}, got {describe(got)}")
        try:
            json.dumps(got)
        except (TypeError, ValueError) as err:
            raise ExerciseError(f"{name}: your dict is not JSON ({err}) on {case}") from None
        read = _as_peft_reads(got, name, case)
        if not read:
            targets = got["target_modules"]
            entries = [targets] if isinstance(targets, str) else targets
            ours = any(
                str(t).rpartition(".")[2] in ("q", "k", "v", "o", "fc", "proj")
                or str(t).startswith("blocks.")
                for t in entries
            )
            raise ExerciseError(
                f"{name}: on {case} your target_modules {targets!r} select no layer of the OPT "
                "model"
                + (
                    ": they are in lora_np's spelling; PEFT matches OPT's names "
                    "(q_proj, v_proj, fc1, fc2, lm_head, or model.decoder.layers.0.self_attn.q_proj)"
                    if ours
                    else ""
                )
            )
        if set(read) != set(want):
            raise ExerciseError(
                f"{name}: on {case} PEFT would adapt {sorted(read)}, expected {sorted(want)}"
            )
        scaled = {n: (r, alpha / r) for n, (r, alpha) in want.items()}
        if read != want and {n: (r, float(a)) for n, (r, a) in read.items()} == scaled:
            raise ExerciseError(
                f"{name}: on {case} you stored the scale alpha / r as lora_alpha; PEFT wants "
                "alpha itself and computes the scale (alpha / r, or alpha / sqrt(r) with rsLoRA)"
            )
        for layer in sorted(want):
            if read[layer][0] != want[layer][0]:
                raise ExerciseError(
                    f"{name}: on {case} PEFT would give {layer} rank {read[layer][0]}, expected "
                    f"{want[layer][0]}: layers whose rank differs from r need a rank_pattern entry"
                )
            if read[layer][1] != want[layer][1]:
                raise ExerciseError(
                    f"{name}: on {case} PEFT would give {layer} lora_alpha {read[layer][1]}, "
                    f"expected {want[layer][1]}: layers whose alpha differs from lora_alpha need "
                    "an alpha_pattern entry"
                )
        if got.get("use_rslora", False) is not rslora:
            raise ExerciseError(
                f"{name}: on {case} use_rslora is {got.get('use_rslora', '(missing)')!r}, expected "
                f"{rslora}: without the rsLoRA flag PEFT scales by alpha / r"
                if rslora
                else f"{name}: on {case} use_rslora is {got.get('use_rslora')!r}, expected False"
            )
        assert want_config["use_rslora"] is rslora
        n_checks += 1
    passed(name, n_checks, quiet)
