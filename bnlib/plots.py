"""The book's figure helpers: one style, one palette, labelled axes.

Every chapter calls :func:`use_style` once (the setup cell does) and draws through these
helpers, so all figures look alike and read in light and dark themes (no pure black or
white lines; a transparent-friendly white figure background).
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np

# One colour per role, used the same way in every chapter.
COLORS = {
    "plain": "#d1495b",   # the network without normalization
    "bn": "#00798c",      # with batch normalization
    "other": "#edae49",   # a third variant (LayerNorm, GroupNorm, ...)
    "reference": "#66a182",
    "neutral": "#5c6b73",
}


def use_style() -> None:
    """Set the book's matplotlib style (sizes, grid, fonts, colour cycle)."""
    mpl.rcParams.update({
        "figure.figsize": (6.4, 3.6),
        "figure.dpi": 100,
        "savefig.dpi": 150,
        "figure.facecolor": "white",
        "axes.facecolor": "white",
        "axes.edgecolor": "#5c6b73",
        "axes.grid": True,
        "grid.alpha": 0.3,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.titlesize": 11,
        "axes.labelsize": 10,
        "legend.fontsize": 9,
        "legend.frameon": False,
        "axes.prop_cycle": mpl.cycler(color=list(COLORS.values())),
    })


def subplots(ncols: int = 1, nrows: int = 1, width: float = 6.4, height: float = 3.2, **kw):
    """``plt.subplots`` with the book's sizes: ``width`` inches in all, ``height`` per row."""
    size = (width, height * nrows)
    return plt.subplots(nrows, ncols, figsize=size, constrained_layout=True, **kw)


def histograms(
    ax: plt.Axes, samples: dict[str, np.ndarray], bins: int = 40, xlabel: str = "value"
) -> None:
    """Overlaid density histograms of several 1-D samples, labelled by the dict keys."""
    for (label, values), color in zip(samples.items(), COLORS.values()):
        ax.hist(np.ravel(values), bins=bins, density=True, alpha=0.55, label=label, color=color)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend()


def curves(
    ax: plt.Axes,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    xlabel: str,
    ylabel: str,
    colors: dict[str, str] | None = None,
) -> None:
    """Line plots of ``{label: (x, y)}``; ``colors`` maps labels to colours (default palette)."""
    for (label, (x, y)), default in zip(series.items(), COLORS.values()):
        ax.plot(x, y, label=label, color=(colors or {}).get(label, default))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()


def percentile_band(
    ax: plt.Axes, steps: Sequence[int], values: np.ndarray, color: str, label: str,
    q: tuple[float, float, float] = (15, 50, 85),
) -> None:
    """Percentiles ``q`` over axis 1 of ``values`` ``(len(steps), n)``: a median in a band."""
    lo, mid, hi = np.percentile(values, q, axis=1)
    ax.fill_between(steps, lo, hi, color=color, alpha=0.25, linewidth=0)
    ax.plot(steps, mid, color=color, label=f"{label} (median, {q[0]:g}-{q[2]:g}th pct.)")
    ax.legend()
