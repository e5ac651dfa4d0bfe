"""The study behind notebook 05: a full fine-tune and LoRA adapters on ``sub``, and how to
read them back.

``experiments/05_svd_rank.py`` runs the study (about 5 minutes) and stores what it made in
:mod:`lora_np.results`; notebook 05 and the tests use the settings and helpers here to load
those results and to retrain a few steps of them live:

* a full fine-tune of every parameter of the shipped base (AdamW without weight decay, so
  that ΔW = W_ft - W0 holds only what the task asked for): :func:`full_finetune`; its ΔW of
  every block Linear is stored in float16, :func:`load_full_ft_deltas`, and the fine-tuned
  values of every other parameter beside it, :func:`load_full_ft_other`;
* LoRA on q and v at r = 8 and r = 64, stored as PEFT adapter folders: :func:`train_lora`,
  :func:`adapter_path`;
* the model with every block matrix replaced by W0 + (best rank-r approximation of ΔW):
  :func:`truncated_model`, scored by :func:`score`.

Host arrays here are NumPy (``backend.np``): ΔW is analysed on the host in float64.
"""

from __future__ import annotations

from pathlib import Path

from . import analysis, backend, data, lora, results, serialization, train, transformer

np = backend.np

TASK = "sub"
"""The downstream task (a 26-letter substitution cipher the shipped base scores 0% on)."""
EVAL_N = 200
"""Held-out prompts per exact-match score (``data.exact_match``'s default seed 1234)."""
BATCH = 32
FULL = {"steps": 300, "lr": 1e-3, "seed": 0, "weight_decay": 0.0, "grad_clip": 1.0}
"""The full fine-tune's recipe."""
LORA = {"steps": 1000, "lr": 3e-3, "alpha": 16, "targets": ["q", "v"], "eval_every": 250}
"""The LoRA runs' recipe."""
LORA_RUNS = {"r8_s0": (8, 0), "r64_s0": (64, 0), "r64_s1": (64, 1)}
"""Stored adapters: tag -> (rank r, seed)."""
MATRICES = ("attn.q", "attn.k", "attn.v", "attn.o", "mlp.fc", "mlp.proj")
EXTRA_FULL_SEEDS = (1, 2)
"""More full fine-tunes, for the spread (numbers only, no weights stored)."""
RANKS = (0, 1, 2, 4, 8, 16, 32, 64, 128)
"""Ranks of the truncation curve; 128 = min(d, k) for every matrix: the whole ΔW."""
LOSS_STEPS = 20
"""How many first-step losses are stored (the notebook and a test retrain these)."""
JSON_NAME = "05_svd_rank.json"
"""The study's summary in :mod:`lora_np.results`."""


def matrix_names(n_layer: int = 4) -> list:
    """Dotted names of every block Linear weight, layer by layer: blocks.0.attn.q.weight, ..."""
    return [f"blocks.{i}.{m}.weight" for i in range(n_layer) for m in MATRICES]


def full_finetune(steps: int = FULL["steps"], seed: int = FULL["seed"]):
    """Fine-tune every parameter of the shipped base on TASK; return (model in eval mode,
    history of ``train.train``)."""
    backend.manual_seed(seed)
    model = transformer.load_pretrained()
    model.requires_grad_(True)
    history = train.train(
        model,
        data.batches(TASK, BATCH, seed=seed),
        steps=steps,
        lr=FULL["lr"],
        weight_decay=FULL["weight_decay"],
        grad_clip=FULL["grad_clip"],
        progress=False,
    )
    return model.eval(), history


def lora_init_seed(r: int, seed: int) -> int:
    """The engine seed for an adapter's initial A: different for every (r, seed).

    With one shared seed the r = 8 and r = 64 runs would start with the same first rows of A
    in the first layer (the generator fills A row by row), a spurious overlap.
    """
    return 1000 * seed + r


def train_lora(r: int, seed: int, steps: int = LORA["steps"], eval_every=None):
    """LoRA on q and v (alpha 16) of the shipped base, trained on TASK; return (model, history).

    ``seed`` picks the data order (``data.batches(..., seed=seed)``) and, through
    :func:`lora_init_seed`, the initial A.
    """
    model = transformer.load_pretrained()
    backend.manual_seed(lora_init_seed(r, seed))
    lora.inject(model, LORA["targets"], r, alpha=LORA["alpha"])
    history = train.train(
        model,
        data.batches(TASK, BATCH, seed=seed),
        steps=steps,
        lr=LORA["lr"],
        eval_every=eval_every,
        eval_fn=(lambda m: data.exact_match(m, TASK, n=EVAL_N)) if eval_every else None,
        progress=False,
    )
    return model.eval(), history


def adapter_path(tag: str, folder=None) -> Path:
    """The stored adapter folder of the LoRA run ``tag`` (a key of :data:`LORA_RUNS`)."""
    if tag not in LORA_RUNS:
        raise ValueError(f"unknown LoRA run {tag!r}; expected one of {', '.join(LORA_RUNS)}")
    name = f"05_lora_{tag}"
    return Path(folder) / name if folder is not None else results.path(name)


def load_full_ft_deltas(folder=None) -> dict:
    """name -> ΔW (float64 host array, (d, k)) of every block Linear, in model order, read from
    the stored float16 files (``folder`` defaults to :mod:`lora_np.results`)."""
    folder = Path(folder) if folder is not None else results.FOLDER
    deltas = {}
    for i in range(4):
        tensors, _ = serialization.read_weights(folder / f"05_full_ft_delta_layer{i}.safetensors")
        deltas.update({name: tensors[name].astype(np.float64) for name in tensors})
    return {name: deltas[name] for name in matrix_names() if name in deltas}


def load_full_ft_other(folder=None) -> dict:
    """name -> fine-tuned host array of every parameter that is not a block Linear weight."""
    folder = Path(folder) if folder is not None else results.FOLDER
    tensors, _ = serialization.read_weights(folder / "05_full_ft_other.safetensors")
    return tensors


def truncated_model(deltas: dict, other: dict, r):
    """The base with W0 + (best rank-r approximation of ΔW) in every block Linear and the
    fine-tuned values of every other parameter; ``r = None`` keeps the whole ΔW."""
    model = transformer.load_pretrained()
    params = dict(model.named_parameters())
    for name, array in other.items():
        params[name].data = backend.xp.asarray(array, dtype=params[name].dtype)
    for name, delta in deltas.items():
        kept = delta if r is None else analysis.best_rank_approximation(delta, r)
        w0 = backend.to_numpy(params[name].data).astype(np.float64)
        params[name].data = backend.xp.asarray((w0 + kept).astype(np.float32))
    return model.eval()


def score(model) -> float:
    """Greedy exact match on TASK's EVAL_N held-out prompts."""
    return float(data.exact_match(model, TASK, n=EVAL_N))


def split_full_ft(model, base) -> tuple:
    """(ΔW per block Linear as float16, fine-tuned values of every other parameter)."""
    names = matrix_names(base.config.n_layer)
    base_params = {n: backend.to_numpy(p.data) for n, p in base.named_parameters()}
    ft_params = {n: backend.to_numpy(p.data) for n, p in model.named_parameters()}
    deltas = {
        n: (ft_params[n].astype(np.float64) - base_params[n]).astype(np.float16) for n in names
    }
    return deltas, {n: a for n, a in ft_params.items() if n not in names}


def energy_summary(deltas: dict) -> dict:
    """Per matrix (model order): the ranks holding 90% and 99% of ||ΔW||², the top share."""
    out = {"energy_rank_90": [], "energy_rank_99": [], "top_share": []}
    for delta in deltas.values():
        s = backend.to_numpy(analysis.singular_values(delta.astype(np.float64)))
        out["energy_rank_90"].append(analysis.energy_rank(s, 0.9))
        out["energy_rank_99"].append(analysis.energy_rank(s, 0.99))
        out["top_share"].append(round(float(s[0] ** 2 / np.sum(s**2)), 4))
    return out


def truncation_curve(deltas: dict, other: dict, verbose: bool = True) -> dict:
    """r -> exact match of W0 + best rank-r ΔW in every block Linear (keys are strings)."""
    deltas = {n: d.astype(np.float64) for n, d in deltas.items()}
    curve = {}
    for r in RANKS:
        curve[str(r)] = score(truncated_model(deltas, other, r))
        if verbose:
            print(f"  W0 + ΔW_r, r = {r:3d}: exact match {curve[str(r)]:.3f}")
    return curve
