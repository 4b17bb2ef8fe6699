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
