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


def scatter(
    ax: plt.Axes, points: dict[str, np.ndarray], xlabel: str, ylabel: str, equal: bool = False,
    size: float = 8, legend: bool = True,
) -> None:
    """Scatter plots of ``{label: (N, 2) array}``; ``equal=True`` gives both axes the same
    unit, so the picture shows true distances (and a feature with a small range looks flat)."""
    for (label, p), color in zip(points.items(), COLORS.values()):
        ax.scatter(p[:, 0], p[:, 1], s=size, alpha=0.6, color=color, label=label, linewidths=0)
    if equal:
        ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if legend:
        ax.legend()


def loss_contours(
    ax: plt.Axes,
    w1: np.ndarray,
    w2: np.ndarray,
    loss: np.ndarray,
    paths: dict[str, np.ndarray] | None = None,
    optimum: Sequence[float] | None = None,
    xlabel: str = "$w_1$",
    ylabel: str = "$w_2$",
    levels: int = 12,
) -> None:
    """Contours of a loss over a grid of two weights, with optimization paths on top.

    ``loss`` ``(len(w2), len(w1))`` holds the loss at ``(w1[j], w2[i])`` in ``loss[i, j]``
    (``np.meshgrid``'s layout). The levels are spaced geometrically above the grid's minimum,
    so a narrow valley and a round bowl both show. ``paths`` maps labels to ``(steps + 1, 2)``
    arrays of iterates, drawn as lines with dots; ``optimum`` ``(2,)`` gets a star.
    """
    gap = loss - loss.min()
    top = gap.max()
    ax.contour(w1, w2, gap, levels=np.geomspace(top * 1e-4, top, levels),
               colors=COLORS["neutral"], linewidths=0.7, alpha=0.6)
    colors = [COLORS["plain"], COLORS["bn"], COLORS["other"]]
    for (label, p), color in zip((paths or {}).items(), colors):
        ax.plot(p[:, 0], p[:, 1], "-o", color=color, markersize=3, linewidth=1.2, label=label)
    if optimum is not None:
        ax.plot(*optimum, marker="*", markersize=13, color=COLORS["reference"],
                linestyle="none", label="optimum $w^*$")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper right")


def smooth(values: Sequence[float], window: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """A trailing moving average of a per-step series, ready for :func:`curves`.

    ``values`` ``(S,)`` holds one number per step (step 1 first), e.g. a training loss.
    Returns ``(steps, means)``, both ``(S - window + 1,)``: ``means[i]`` averages the
    ``window`` values that end at step ``steps[i]``.
    """
    v = np.asarray(values, dtype=float)
    if not 1 <= window <= len(v):
        raise ValueError(f"window must be between 1 and {len(v)}, got {window}")
    means = np.convolve(v, np.ones(window) / window, mode="valid")
    return np.arange(window, len(v) + 1), means


def graph(
    ax: plt.Axes,
    nodes: dict[str, tuple[float, float]],
    edges: Sequence[tuple[str, str]],
    labels: dict[str, str] | None = None,
    colors: dict[str, str] | None = None,
    fontsize: float = 12,
) -> None:
    """Draw a small directed graph, such as a computational graph, on ``ax``.

    ``nodes`` maps names to ``(x, y)`` positions in data units; ``edges`` lists
    ``(from, to)`` pairs, drawn as arrows that stop at the boxes' borders. ``labels`` gives
    a node's text (mathtext allowed; default: its name); ``colors`` a box's edge colour
    (default ``COLORS["neutral"]``); ``fontsize`` the labels' size in points. The axes are
    switched off.
    """
    boxes = {}
    for name, (x, y) in nodes.items():
        color = (colors or {}).get(name, COLORS["neutral"])
        boxes[name] = ax.text(
            x, y, (labels or {}).get(name, name), ha="center", va="center", fontsize=fontsize,
            zorder=3, bbox={"boxstyle": "round,pad=0.4", "facecolor": "white",
                            "edgecolor": color, "linewidth": 1.4},
        )
    for a, b in edges:
        ax.annotate(
            "", xy=nodes[b], xytext=nodes[a], zorder=2,
            arrowprops={"arrowstyle": "-|>", "color": COLORS["neutral"], "linewidth": 1.1,
                        "shrinkA": 2, "shrinkB": 2, "mutation_scale": 12,
                        "patchA": boxes[a].get_bbox_patch(),
                        "patchB": boxes[b].get_bbox_patch()},
        )
    xs, ys = zip(*nodes.values())
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    ax.set_axis_off()


def shared_statistics(ax: plt.Axes, mask: np.ndarray, title: str = "") -> None:
    """Picture which values of an ``(N, C, H, W)`` batch share one mean and variance.

    ``mask`` ``(N, C, H, W)`` (bool) marks the values one statistic is computed over. The
    batch is drawn as an N x C grid of H x W maps (rows: samples, columns: channels); marked
    pixels in the BN colour, the others light grey.
    """
    n, c, h, w = mask.shape
    canvas = np.full((n * (h + 1) - 1, c * (w + 1) - 1), np.nan)
    for i in range(n):
        for j in range(c):
            canvas[i * (h + 1): i * (h + 1) + h, j * (w + 1): j * (w + 1) + w] = mask[i, j]
    cmap = mpl.colors.ListedColormap(["#e3e6e8", COLORS["bn"]]).with_extremes(bad=(0, 0, 0, 0))
    ax.imshow(canvas, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([j * (w + 1) + (w - 1) / 2 for j in range(c)],
                  [f"channel {j + 1}" for j in range(c)], fontsize=8)
    ax.set_yticks([i * (h + 1) + (h - 1) / 2 for i in range(n)],
                  [f"sample {i + 1}" for i in range(n)], fontsize=8)
    ax.tick_params(length=0)
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title(title)


def channel_boxplots(
    ax: plt.Axes, x: np.ndarray, color: str = COLORS["bn"], ylabel: str = "value"
) -> None:
    """One box per channel of ``x`` ``(N, C, *spatial)``, over its N x H x W values.

    Boxes span the quartiles with the median inside, whiskers the 5th to 95th percentiles;
    outliers are not drawn. Channels are numbered from 1 on the x axis.
    """
    x = np.asarray(x)
    values = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    ax.boxplot(list(values), whis=(5, 95), showfliers=False, patch_artist=True,
               boxprops={"facecolor": color, "alpha": 0.5, "edgecolor": color},
               medianprops={"color": COLORS["neutral"]},
               whiskerprops={"color": color}, capprops={"color": color})
    ax.set_xticks(range(1, x.shape[1] + 1), [str(j) for j in range(1, x.shape[1] + 1)])
    ax.set_xlabel("channel")
    ax.set_ylabel(ylabel)


def quantile_band(
    ax: plt.Axes, steps: Sequence[int], quantiles: np.ndarray, color: str, label: str,
) -> None:
    """Precomputed quantiles over time: a median line inside a shaded band.

    ``quantiles`` ``(len(steps), 3)`` holds a low quantile, the median and a high quantile
    per step (e.g. the 15th, 50th and 85th percentiles that
    :class:`bnlib.train.ActivationRecorder` stores); :func:`percentile_band` is the same
    picture computed from raw values.
    """
    q = np.asarray(quantiles)
    ax.fill_between(steps, q[:, 0], q[:, 2], color=color, alpha=0.25, linewidth=0)
    ax.plot(steps, q[:, 1], color=color, label=label)
    ax.legend()


def roofline(
    ax: plt.Axes, peak_flops: float, bandwidth: float,
    points: dict[str, tuple[object, object]] | None = None,
    xlim: tuple[float, float] = (1e-2, 1e3), colors: dict[str, str] | None = None,
) -> None:
    """The roofline ``min(peak_flops, I * bandwidth)`` on log-log axes, with points on it.

    ``peak_flops`` (FLOP/s) and ``bandwidth`` (bytes/s) are the two measured ceilings; the x
    axis is the arithmetic intensity ``I`` in FLOP/byte over ``xlim``, the y axis a speed in
    GFLOP/s. A dotted line marks the machine balance ``peak_flops / bandwidth`` when it lies
    inside ``xlim``. ``points`` maps a label to ``(intensities, flops_per_second)``, two
    scalars or two sequences of equal length (e.g. one implementation's forward, backward
    and both): each label gets its own colour (``colors``, else the palette without the
    roof's grey) and marker.
    """
    grid = np.geomspace(xlim[0], xlim[1], 200)
    ax.loglog(grid, np.minimum(peak_flops, grid * bandwidth) / 1e9, color=COLORS["neutral"],
              label="roofline: min(π, I·β)")
    balance = peak_flops / bandwidth
    if xlim[0] < balance < xlim[1]:
        ax.axvline(balance, color=COLORS["neutral"], ls=":", lw=1)
        ax.annotate(f"balance {balance:.0f}", (balance, peak_flops / 1e9 / 6), rotation=90,
                    fontsize=8, ha="right")
    palette = [c for k, c in COLORS.items() if k != "neutral"]
    for k, (label, (i, flops)) in enumerate((points or {}).items()):
        color = (colors or {}).get(label, palette[k % len(palette)])
        ax.plot(np.atleast_1d(i), np.atleast_1d(flops) / 1e9, "osD^vP"[k % 6], color=color,
                linestyle="none", label=label)
    ax.set_xlim(*xlim)
    ax.set_xlabel("arithmetic intensity (FLOP/byte)")
    ax.set_ylabel("speed (GFLOP/s)")
    ax.legend(loc="lower right")


def value_scatter(
    ax: plt.Axes, points: dict[str, np.ndarray], values: dict[str, np.ndarray],
    xlabel: str, ylabel: str, value_label: str, size: float = 45,
) -> None:
    """Scatter plots of ``{label: (N, 2) points}``, each point coloured by its value in
    ``{label: (N,) values}`` on one shared colour scale (with a colour bar labelled
    ``value_label``); the labels get different markers. E.g. a hyperparameter search:
    points ``(log10 lr, log10 wd)``, values the validation accuracy."""
    every = np.concatenate([np.ravel(v) for v in values.values()])
    norm = mpl.colors.Normalize(vmin=float(every.min()), vmax=float(every.max()))
    mapped = None
    for (label, p), marker in zip(points.items(), "os^Dv"):
        p = np.asarray(p)
        mapped = ax.scatter(p[:, 0], p[:, 1], c=values[label], cmap="viridis", norm=norm,
                            s=size, marker=marker, edgecolors=COLORS["neutral"],
                            linewidths=0.5, label=label)
    ax.figure.colorbar(mapped, ax=ax, label=value_label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
