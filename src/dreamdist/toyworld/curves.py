"""Write training curves as CSV and as a PNG figure (matplotlib, headless)."""

from __future__ import annotations

import csv
from pathlib import Path


def write_csv(rows: list[dict], path: str | Path) -> None:
    """Rows of equal keys -> CSV with a header (nothing written for no rows)."""
    if not rows:
        return
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_curves(loss_rows: list[dict], eval_rows: list[dict], path: str | Path) -> None:
    """Two panels over training minutes: the diffusion loss, and oracle accuracy per attribute."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    if loss_rows:
        ax_loss.plot([r["minutes"] for r in loss_rows], [r["loss"] for r in loss_rows], lw=1)
    ax_loss.set(xlabel="training minutes", ylabel="weighted v-loss (EMA of batches)", title="denoiser loss")
    ax_loss.set_yscale("log")
    for key, style in (
        ("colour", "C0"),
        ("shape", "C1"),
        ("background", "C2"),
    ):
        for split, line in (("seen", "-"), ("held_out", "--")):
            column = f"{split}_{key}"
            points = [(r["minutes"], r[column]) for r in eval_rows if column in r]
            if points:
                xs, ys = zip(*points)
                ax_acc.plot(xs, ys, line, color=style, marker="o", ms=3, label=f"{key} ({split})")
    ax_acc.set(xlabel="training minutes", ylabel="oracle accuracy", ylim=(0, 1.02), title="prompt following")
    ax_acc.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
