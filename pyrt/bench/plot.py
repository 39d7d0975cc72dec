"""`--plot FILE.png`: S_PP and S_TG against N_KV, one line per engine, as in the seeds' graphs.

matplotlib is the optional `plot` extra; without it the caller gets a one-line UnsupportedError.
"""

from __future__ import annotations

from ..errors import UnsupportedError


def plot_sweep(results: dict, path: str, title: str = "") -> None:
    """Writes a two-panel PNG (PP left, TG right) of {engine: [SweepRow]}."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UnsupportedError("--plot needs matplotlib (pip install 'pyrt[plot]')") from None
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), dpi=80)
    for ax, key, label in ((axes[0], "speed_pp", "PP"), (axes[1], "speed_tg", "TG")):
        for name, rows in results.items():
            ax.plot([r.n_kv for r in rows], [getattr(r, key) for r in rows], marker="o", markersize=3, label=name)
        n = results[next(iter(results))][0]
        ax.set_title(f"{label}{n.pp if label == 'PP' else n.tg}")
        ax.set_xlabel("N_KV")
        ax.set_ylabel(f"S_{label} (t/s)")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
