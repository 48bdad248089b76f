"""Figures: matplotlib on the file-only backend, the one way a chart is written (`save_png`), and the loss curve
that the tuners and the evaluation report draw."""
from __future__ import annotations

from pathlib import Path

from calltune.core.io import atomic_open


def pyplot():
    """matplotlib.pyplot on the file-only backend (no display here)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> Path:
    """Lay out, write atomically as PNG and close the figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png")
    pyplot().close(fig)
    return path


def loss_curve_png(log_history: list[dict], path: Path) -> Path | None:
    """Plot train (and eval) loss against the step from a Trainer log history; None when nothing was logged."""
    train = [(r["step"], r["loss"]) for r in log_history if "loss" in r and "step" in r]
    evals = [(r["step"], r["eval_loss"]) for r in log_history if "eval_loss" in r and "step" in r]
    if not train and not evals:
        return None
    fig, ax = pyplot().subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train), marker="." if len(train) < 30 else None, label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (customer reply tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_png(fig, path)
