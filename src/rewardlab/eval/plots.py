"""Small matplotlib helpers: best-of-N curves and training curves, written as PNGs atomically.

Figures are drawn on the Agg canvas directly (no ``pyplot`` state, no display needed), and each
file is written to a temporary name beside its target and renamed (``rewardlab.io.atomic_path``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from rewardlab.io import atomic_path


def _new_figure(figsize=(6.0, 4.0)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=120)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def plot_bon(table: Mapping[str, Mapping[int, float]], path: str | os.PathLike,
             title: str = "best-of-N accuracy") -> Path:
    """Accuracy against N (log2 x-axis), one line per method of a best-of-N ``table``
    (``{method: {N: accuracy}}``, as :func:`rewardlab.eval.bon.best_of_n` returns)."""
    fig, ax = _new_figure()
    all_ns: set[int] = set()
    for method, by_n in table.items():
        ns = sorted(int(n) for n in by_n)
        all_ns.update(ns)
        style = "--" if method in ("oracle", "random") else "-"
        ax.plot(ns, [by_n[n] if n in by_n else by_n[str(n)] for n in ns], style, marker="o",
                markersize=3, label=method)
    ax.set_xscale("log", base=2)
    if all_ns:
        ticks = sorted(all_ns)
        ax.set_xticks(ticks, [str(n) for n in ticks])
    ax.set_xlabel("N (samples per problem)")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_curves(curves: Mapping[str, Sequence[tuple[float, float]]], title: str, ylabel: str,
                path: str | os.PathLike, xlabel: str = "step") -> Path:
    """One line per named curve of ``(step, value)`` points (training curves, ablations)."""
    fig, ax = _new_figure()
    for name, points in curves.items():
        pts = sorted(points)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(fontsize=8)
    return _save(fig, path)


def _legend_outside(ax) -> None:
    """The legend right of the axes, outside the data area."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8,
                  frameon=False)


def _save_tight(fig, path: str | os.PathLike) -> Path:
    """Save with the bounding box grown to hold an outside legend and the subtitle."""
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight", pad_inches=0.15)
    return Path(path)


def plot_bands(bands: Mapping[str, Sequence[tuple[float, float, float, float]]], title: str,
               xlabel: str, ylabel: str, path: str | os.PathLike, subtitle: str = "") -> Path:
    """One line per name with a shaded band: ``(x, mean, lo, hi)`` points (e.g. the seed mean of
    a training metric and its 95 % interval). ``title`` above, ``subtitle`` (the setting) under
    it, legend outside the axes."""
    fig, ax = _new_figure((7.5, 4.0))
    for name, points in bands.items():
        pts = sorted(points)
        xs = [p[0] for p in pts]
        line, = ax.plot(xs, [p[1] for p in pts], label=name, marker="o" if len(pts) <= 5 else None,
                        markersize=3, linewidth=1.4)
        lo, hi = [p[2] for p in pts], [p[3] for p in pts]
        if any(a != b for a, b in zip(lo, hi)):
            if len(pts) == 1:
                ax.errorbar(xs, [pts[0][1]], yerr=[[pts[0][1] - lo[0]], [hi[0] - pts[0][1]]],
                            color=line.get_color(), capsize=3)
            else:
                ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.12, linewidth=0)
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))   # steps are whole numbers
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    fig.suptitle(title, fontsize=11)
    if subtitle:
        ax.set_title(subtitle, fontsize=8, color="0.35")
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    return _save_tight(fig, path)


def plot_intervals(cells: Mapping[str, Mapping[str, tuple]], title: str, path: str | os.PathLike,
                   subtitle: str = "", zero_line: bool = False) -> Path:
    """A forest plot: one panel per metric, one row per name, the mean as a dot with its interval
    as a bar and each seed's value as a small cross. ``cells[name][metric] = (mean, lo, hi,
    values or None)``; a None mean leaves the row empty."""
    names = list(cells)
    metrics = list(dict.fromkeys(m for c in cells.values() for m in c))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2.6 * max(len(metrics), 1) + 2.5, 0.45 * len(names) + 1.6), dpi=120)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(len(metrics), 1), sharey=True, squeeze=False)[0]
    ys = list(range(len(names)))[::-1]
    for ax, metric in zip(axes, metrics):
        for y, name in zip(ys, names):
            mean, lo, hi, values = cells[name].get(metric, (None, None, None, None))
            if mean is None:
                continue
            if lo is not None and hi is not None and lo != hi:
                ax.plot([lo, hi], [y, y], color="C0", linewidth=2, solid_capstyle="butt")
            ax.plot([mean], [y], "o", color="C0", markersize=5)
            finite = [v for v in values or [] if isinstance(v, (int, float))]
            if finite:
                ax.plot(finite, [y] * len(finite), "x", color="0.4", markersize=4)
        if zero_line:
            ax.axvline(0.0, color="0.3", linewidth=0.8, linestyle="--")
        ax.set_title(metric, fontsize=9)
        ax.grid(True, axis="x", alpha=0.3)
        ax.tick_params(labelsize=8)
    axes[0].set_yticks(ys, names, fontsize=8)
    axes[0].set_ylim(-0.7, len(names) - 0.3)
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), fontsize=10)
    fig.tight_layout()
    return _save_tight(fig, path)
