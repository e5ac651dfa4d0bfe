"""One figure style for the whole course, and saving figures where the learner works.

    from lora_np.plotting import use_style, save_figure
    use_style()
    fig, ax = plt.subplots()
    ...
    save_figure(fig, "02_rank_sweep")     # -> ./figures/02_rank_sweep.png

Figures go to the folder named by the environment variable ``LORA_NP_FIGURE_DIR`` when it is
set, else to ``figures/`` under the current working folder (never into the installed package).

Matplotlib is imported inside the functions, so ``import lora_np`` stays light.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from .serialization import atomic_write

FIGURE_DIR_ENV = "LORA_NP_FIGURE_DIR"
"""The environment variable that chooses where :func:`save_figure` writes."""

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


def figure_dir() -> Path:
    """Where :func:`save_figure` writes by default, decided at each call: ``$LORA_NP_FIGURE_DIR``
    when set and not empty, else ``figures/`` under the current working folder."""
    chosen = os.environ.get(FIGURE_DIR_ENV, "").strip()
    return Path(chosen).expanduser() if chosen else Path.cwd() / "figures"


def save_figure(fig, name: str, folder=None) -> Path:
    """Write ``fig`` to ``<folder>/<name>.png`` (dpi 110, tight bounding box); return the path.

    The file is written to a temporary name in the same folder and then renamed, so a reader
    never sees half a PNG. The folder is created when missing.

    Args:
        fig: a matplotlib Figure.
        name: file name without extension, e.g. ``"01_spectrum"`` (no folders).
        folder: where to write (default: :func:`figure_dir`, i.e. ``$LORA_NP_FIGURE_DIR`` or
            ``./figures``).
    """
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(
            f"figure name must be a plain file name such as '01_spectrum', got {name!r}"
        )
    if name.endswith(".png"):
        name = name[: -len(".png")]
    folder = Path(folder) if folder is not None else figure_dir()
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.png"
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write(target, buffer.getvalue())
    return target
