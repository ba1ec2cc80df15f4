"""Figures of chapter 6: certified accuracy vs radius (Fig. 6.4) and the training curves (Fig. 6.6)."""

from __future__ import annotations

from pathlib import Path

from advreid.certify.report import BASELINE


def plot_certified_accuracy(curves: dict[str, dict], results: dict[str, dict], path: Path) -> Path:
    """Fig. 6.4: certified accuracy (%) vs L2 radius for every method, one panel per sigma."""
    import matplotlib.pyplot as plt

    from advreid.plots import save_figure

    sigmas = [c for c in next(iter(curves.values())) if c.startswith("sigma_")]
    fig, axes = plt.subplots(1, len(sigmas), figsize=(4.2 * len(sigmas), 3.6), squeeze=False)
    for ax, column in zip(axes[0], sigmas, strict=True):
        for name, curve in curves.items():
            style = {"linestyle": "--", "color": "black"} if name == BASELINE else {}
            ax.plot(curve["radius"], [100 * v for v in curve[column]], label=results[name]["label"], **style)
        ax.set_title(column.replace("sigma_", "sigma = "))
        ax.set_xlabel("L2 radius")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("certified accuracy (%)")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    return save_figure(fig, path)


def plot_training_curves(training: dict[str, dict], results: dict[str, dict], path: Path) -> Path:
    """Fig. 6.6: noisy validation accuracy (%) of each defense per training epoch, one panel per sigma."""
    import matplotlib.pyplot as plt

    from advreid.plots import save_figure

    columns = [c for c in next(iter(training.values())) if c.endswith("_noisy_accuracy")]
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.6), squeeze=False)
    for ax, column in zip(axes[0], columns, strict=True):
        for name, table in training.items():
            values = [100 * v for v in table[column]]
            ax.plot(table["epoch"][: len(values)], values, marker="o", label=results[name]["label"])
        ax.set_title(column.removesuffix("_noisy_accuracy").replace("sigma_", "sigma = "))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy under noise (%)")
    axes[0][-1].legend(fontsize=7)
    return save_figure(fig, path)
