"""plotting.save_figure's default folder: $LORA_NP_FIGURE_DIR, else ./figures (never the package)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from lora_np import plotting  # noqa: E402


def _figure():
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    return fig


def test_default_is_figures_under_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.delenv(plotting.FIGURE_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    fig = _figure()
    path = plotting.save_figure(fig, "00_here")
    plt.close(fig)
    assert path == tmp_path / "figures" / "00_here.png" and path.is_file()


def test_environment_variable_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(plotting.FIGURE_DIR_ENV, str(tmp_path / "build" / "figs"))
    fig = _figure()
    path = plotting.save_figure(fig, "00_there")
    assert path == tmp_path / "build" / "figs" / "00_there.png" and path.is_file()
    assert not (tmp_path / "figures").exists()
    # an explicit folder wins over both
    assert plotting.save_figure(fig, "00_x", folder=tmp_path / "own").parent == tmp_path / "own"
    plt.close(fig)


def test_empty_variable_means_unset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(plotting.FIGURE_DIR_ENV, "  ")
    assert plotting.figure_dir() == tmp_path / "figures"
