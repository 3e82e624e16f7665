"""Plots written as PNG (matplotlib, non-interactive backend)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from cmt.formats.atomic import atomic_write_bytes


def save_figure(fig, path: str | Path) -> None:
    """Write a matplotlib figure as PNG, whole or not at all, and close it."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def save_loss_curve(losses: list[float], path: str | Path, title: str, window: int = 25) -> None:
    """Raw loss (faint) and its running mean over ``window`` steps, log-scaled y axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y = np.asarray(losses, dtype=float)
    k = max(1, min(window, len(y)))
    smooth = np.convolve(y, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(np.arange(len(y)), y, alpha=0.25, lw=0.8, label="loss")
    ax.plot(np.arange(k - 1, len(y)), smooth, lw=1.5, label=f"mean of {k}")
    ax.set(yscale="log", xlabel="iteration", ylabel="loss", title=title)
    ax.legend()
    save_figure(fig, path)
