"""The evaluate step's charts (PNG, matplotlib without a display)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _figure(width: float, height: float):
    from matplotlib.figure import Figure  # object API: no pyplot state, the Agg canvas renders the PNG

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_utility(utility: Mapping[str, Any], path: Path) -> Path:
    """Bars of mean balanced accuracy and minority recall per condition, std error bars, per-seed dots."""
    conditions = utility["setup"]["conditions"]
    metrics = (("balanced_accuracy", "balanced accuracy", "#4C72B0"), ("minority_recall", "minority recall",
                                                                        "#DD8452"))
    fig = _figure(max(6.0, 1.3 * len(conditions) + 2), 4.2)
    ax = fig.add_subplot()
    xs = np.arange(len(conditions))
    width = 0.38
    for j, (key, label, colour) in enumerate(metrics):
        pos = xs + (j - 0.5) * width
        means = [utility[c][key]["mean"] if utility[c][key]["mean"] is not None else np.nan for c in conditions]
        stds = [utility[c][key]["std"] if utility[c][key]["std"] is not None else 0.0 for c in conditions]
        ax.bar(pos, means, width, yerr=stds, capsize=4, label=label, color=colour, alpha=0.85)
        for p, c in zip(pos, conditions, strict=True):
            vals = utility[c][key]["values"]
            ax.scatter([p] * len(vals), vals, s=9, color="black", zorder=3)
    ax.set_xticks(xs, [c.replace("_", "\n", 1) for c in conditions])
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("on the real test split")
    ax.set_title(f"Downstream utility (mean ± std over {utility['setup']['seeds']} seeds; dots: seeds)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(axis="y", alpha=0.3)
    fig.savefig(path)
    return path


def plot_counts(counts: Mapping[str, Any], class_names: Sequence[str], path: Path) -> Path:
    """Stacked bars per class: real train images, plus accepted synthetic ones (after)."""
    fig = _figure(max(5.0, 0.55 * len(class_names) + 2), 3.6)
    ax = fig.add_subplot()
    xs = np.arange(len(class_names))
    real = [counts["before"][c] for c in class_names]
    syn = [counts["synthetic_accepted"][c] for c in class_names]
    ax.bar(xs, real, 0.7, label="real train (before)", color="#4C72B0")
    ax.bar(xs, syn, 0.7, bottom=real, label="+ accepted synthetic (after)", color="#55A868")
    ax.set_xticks(xs, list(class_names))
    ax.set_xlabel("class")
    ax.set_ylabel("images")
    ax.set_title("Class counts before / after")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.savefig(path)
    return path


def plot_per_class_recall(utility: Mapping[str, Any], class_names: Sequence[str], minority: Sequence[str],
                          path: Path) -> Path:
    """Heat map of mean test recall, conditions x classes; minority classes marked with *."""
    conditions = utility["setup"]["conditions"]
    grid = np.array([[utility[c]["per_class_recall"].get(n, {}).get("mean", np.nan) for n in class_names]
                     for c in conditions], dtype=np.float64)
    fig = _figure(max(5.0, 0.6 * len(class_names) + 2.5), 0.45 * len(conditions) + 1.6)
    ax = fig.add_subplot()
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(np.arange(len(class_names)), [f"{n}*" if n in minority else n for n in class_names])
    ax.set_yticks(np.arange(len(conditions)), list(conditions))
    for (r, c), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    ax.set_title("Per-class test recall (mean over seeds; * minority)")
    fig.colorbar(image, ax=ax, shrink=0.8)
    fig.savefig(path)
    return path
