"""Small matplotlib figures for the app (no pyplot: figures are thread-safe objects)."""
from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from mage import SCHEDULES, schedule_counts
from mage.masking import truncnorm_pdf


def _fig(w=5.0, h=2.6) -> Figure:
    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def to_image(fig: Figure, dpi: int = 100) -> np.ndarray:
    """Render a figure to an RGB uint8 array (shown with gr.Image: crisp, downloadable, API-friendly)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)
    fig.set_dpi(dpi)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def schedule_plot(num_tokens: int, steps: int, schedule: str) -> Figure:
    """Unknown tokens left after each step, the chosen schedule highlighted."""
    fig = _fig(5.0, 3.0)
    ax = fig.add_subplot()
    x = np.arange(0, steps + 1)
    for name in SCHEDULES:
        y = [num_tokens] + schedule_counts(num_tokens, steps, name)
        chosen = name == schedule
        ax.plot(x, y, marker="o" if chosen else None, ms=3, lw=2.2 if chosen else 1, alpha=1 if chosen else 0.35,
                label=name, zorder=3 if chosen else 2)
    ax.set_xlabel("step")
    ax.set_ylabel("unknown tokens")
    ax.set_xlim(0, steps)
    ax.set_ylim(0, num_tokens * 1.03)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False)
    return fig


def ratio_plot(curve: dict, ratio: float, config) -> Figure:
    """Token accuracy and pixel error vs masking ratio, with the training-ratio density overlaid."""
    r = np.asarray(curve["ratios"])
    fig = _fig(6.0, 3.2)
    ax = fig.add_subplot()
    ax.plot(r * 100, curve["acc_onepass"], "o-", color="C0", label="token accuracy (one pass)")
    ax.plot(r * 100, curve["acc_iter"], "s--", color="C0", alpha=0.7, label="token accuracy (iterative)")
    ax.set_xlabel("masking ratio (%)")
    ax.set_ylabel("token accuracy", color="C0")
    ax.set_ylim(0, 1.02)
    ax2 = ax.twinx()
    ax2.plot(r * 100, curve["mse_onepass"], "o-", color="C3", label="pixel MSE (one pass)")
    ax2.plot(r * 100, curve["mse_iter"], "s--", color="C3", alpha=0.7, label="pixel MSE (iterative)")
    ax2.set_ylabel("pixel MSE vs tokenizer recon.", color="C3")
    ax2.set_ylim(bottom=0)
    # training distribution of the masking ratio (scaled to the accuracy axis)
    xs = np.linspace(0, 1, 201)
    pdf = truncnorm_pdf(xs, config.mask_ratio_mu, config.mask_ratio_std, config.mask_ratio_min, config.mask_ratio_max)
    if pdf.max() > 0:
        ax.fill_between(xs * 100, 0, pdf / pdf.max() * 0.9, color="0.6", alpha=0.25, lw=0,
                        label="training ratio density")
    ax.axvline(ratio * 100, color="k", lw=1, ls=":")
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=6.5, frameon=False, loc="center left")
    ax.set_xlim(0, 100)
    ax.grid(alpha=0.3)
    return fig


def pca_plot(coords: np.ndarray, labels: list[str], query: np.ndarray | None = None,
             neighbours: list[int] | None = None, title: str = "") -> Figure:
    """2-D PCA map of embeddings coloured by label; the query as a star, its neighbours circled."""
    fig = _fig(6.0, 4.0)
    ax = fig.add_subplot()
    labels = list(labels)
    names = sorted(set(labels))
    many = len(names) > 12
    for i, name in enumerate(names):
        idx = [j for j, lab in enumerate(labels) if lab == name]
        ax.scatter(coords[idx, 0], coords[idx, 1], s=10, alpha=0.7, color=None if many else f"C{i % 10}",
                   label=None if many else name)
    if neighbours:
        ax.scatter(coords[neighbours, 0], coords[neighbours, 1], s=60, facecolors="none", edgecolors="k", lw=1,
                   label="neighbours")
    if query is not None:
        q = np.atleast_2d(query)
        ax.scatter(q[:, 0], q[:, 1], marker="*", s=260, color="red", edgecolors="k", lw=0.8, zorder=5, label="query")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0), markerscale=0.8)
    return fig
