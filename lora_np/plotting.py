"""One figure style for the whole course, and saving figures into ``figures/``.

    from lora_np.plotting import use_style, save_figure
    use_style()
    fig, ax = plt.subplots()
    ...
    save_figure(fig, "02_rank_sweep")     # -> figures/02_rank_sweep.png

Matplotlib is imported inside the functions, so ``import lora_np`` stays light.
"""

from __future__ import annotations

import io
from pathlib import Path

from .serialization import atomic_write

FIGURES_DIR = Path(__file__).resolve().parent.parent / "figures"
"""The repository's ``figures/`` folder (next to the ``lora_np`` package)."""

STYLE = {
    "figure.figsize": (7.0, 4.2),
    "figure.dpi": 110,
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "legend.fontsize": 10,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linestyle": "-",
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.8,
    "legend.frameon": False,
    "savefig.dpi": 110,
    "savefig.bbox": "tight",
    "image.cmap": "viridis",
}
"""The rcParams every course figure uses."""


def use_style() -> None:
    """Apply the course's figure style (readable fonts, a light grid, no top/right spines)."""
    import matplotlib as mpl

    mpl.rcParams.update(STYLE)


def save_figure(fig, name: str, folder=None) -> Path:
    """Write ``fig`` to ``figures/<name>.png`` (dpi 110, tight bounding box) and return the path.

    The file is written to a temporary name in the same folder and then renamed, so a reader
    never sees half a PNG. The folder is created when missing.

    Args:
        fig: a matplotlib Figure.
        name: file name without extension, e.g. ``"01_spectrum"`` (no folders).
        folder: where to write (default: the repository's ``figures/``).
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(
            f"figure name must be a plain file name such as '01_spectrum', got {name!r}"
        )
    if name.endswith(".png"):
        name = name[: -len(".png")]
    folder = Path(folder) if folder is not None else FIGURES_DIR
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write(target, buffer.getvalue())
    return target
