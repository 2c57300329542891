"""PNG of the size / sensitivity Pareto frontier (matplotlib, Agg backend)."""

from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence, Union


def plot_frontier(frontier: Sequence, path: str, chosen: Optional[Union[Sequence, Mapping]] = None,
                  title: str = "ZeroQ mixed precision: Pareto frontier") -> str:
    """Draw ``frontier`` (from :func:`pyquant.mixed.pareto_frontier`) as total sensitivity (log
    scale) against weight size in KiB, and mark ``chosen`` points: one frontier entry, a list of
    them, or ``{label: entry}``. Returns ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not frontier:
        raise ValueError("frontier must not be empty")
    if chosen is None:
        marks = {}
    elif isinstance(chosen, Mapping):
        marks = dict(chosen)
    elif len(chosen) == 3 and isinstance(chosen[2], Mapping):
        marks = {"chosen": chosen}
    else:
        marks = {f"chosen {i}": c for i, c in enumerate(chosen)}
    kib = [p[0] / 8 / 1024 for p in frontier]
    sens = [max(p[1], 1e-12) for p in frontier]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.step(kib, sens, where="post", color="tab:blue", lw=1.2, label="Pareto frontier")
    ax.plot(kib, sens, ".", color="tab:blue", ms=3)
    for label, (size, total, _) in marks.items():
        ax.plot([size / 8 / 1024], [max(total, 1e-12)], "o", ms=8, label=f"{label}: {size / 8 / 1024:.1f} KiB")
    ax.set_yscale("log")
    ax.set_xlabel("weight size (KiB)")
    ax.set_ylabel("total sensitivity  sum_i Omega_i(k_i)  (KL)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
