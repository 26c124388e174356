"""Report figures from the evaluate stage's plots: ROC and PRO curves, score histograms with the threshold.

Figures are built on `matplotlib.figure.Figure` directly (no pyplot state, no display backend).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

from diyt.report.results import CategoryResults

AUPRO_FPR_LIMIT = 0.3  # the integration limit of diyt.eval.metrics.aupro, as in the MVTec AD evaluation
NORMAL_COLOUR, DEFECT_COLOUR, THRESHOLD_COLOUR = "#4C72B0", "#DD8452", "#C44E52"


def roc_figure(results: Sequence[CategoryResults]) -> Figure:
    """Image-level ROC, one line per category, AUROC in the legend."""
    fig = Figure(figsize=(5.2, 4.4))
    ax = fig.add_subplot()
    for r in results:
        ax.plot([p["fpr"] for p in r.roc], [p["tpr"] for p in r.roc], lw=1.8,
                label=f"{r.name} (AUROC {r.metrics['image_auroc']:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate (normal images)",
           ylabel="true-positive rate (defective images)", title="Image-level ROC")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def pro_figure(results: Sequence[CategoryResults], fpr_limit: float = AUPRO_FPR_LIMIT) -> Figure:
    """Pixel-level per-region overlap against the defect-free pixels' FPR, up to the AUPRO limit."""
    fig = Figure(figsize=(5.2, 4.4))
    ax = fig.add_subplot()
    for r in results:
        fpr = np.array([p["fpr"] for p in r.pro])
        pro = np.array([p["pro"] for p in r.pro])
        keep = fpr <= fpr_limit
        # close the line at the limit by interpolation, so each curve spans the integrated range
        fpr, pro = np.append(fpr[keep], fpr_limit), np.append(pro[keep], np.interp(fpr_limit, fpr, pro))
        ax.plot(fpr, pro, lw=1.8, label=f"{r.name} (AUPRO {r.metrics['aupro']:.3f})")
    ax.set(xlim=(0, fpr_limit), ylim=(0, 1.01), xlabel="false-positive rate (defect-free pixels)",
           ylabel="per-region overlap", title=f"PRO curve (AUPRO integrates FPR 0–{fpr_limit:g})")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def histograms_figure(results: Sequence[CategoryResults], bins: int = 30) -> Figure:
    """Per category: test scores of normal vs defective images on shared bins, the validation threshold dashed."""
    cols = min(3, len(results))
    rows = math.ceil(len(results) / cols)
    fig = Figure(figsize=(4.6 * cols, 3.4 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, r in zip(axes, results):
        scores = np.array([s["score"] for s in r.scores])
        labels = np.array([s["label"] for s in r.scores])
        edges = np.histogram_bin_edges(np.append(scores, r.threshold), bins)
        ax.hist(scores[labels == 0], edges, color=NORMAL_COLOUR, alpha=0.65, label=f"normal ({(labels == 0).sum()})")
        ax.hist(scores[labels == 1], edges, color=DEFECT_COLOUR, alpha=0.65,
                label=f"defective ({(labels == 1).sum()})")
        ax.axvline(r.threshold, color=THRESHOLD_COLOUR, ls="--", lw=1.6, label=f"threshold {r.threshold:.3g}")
        ax.set(title=f"{r.name}  (F1 {r.metrics['f1']:.3f} at the threshold)", xlabel="image score",
               ylabel="test images")
        ax.legend(fontsize=8)
    for ax in axes[len(results):]:
        ax.set_axis_off()
    return fig
