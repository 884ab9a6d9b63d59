"""A picture of a genotype: cells on their levels, ops colour-coded, skips drawn."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from c2fnas_auto.nas.config import NetworkConfig  # noqa: E402
from c2fnas_auto.nas.genotype import Genotype  # noqa: E402
from c2fnas_auto.nas.plan import make_plan  # noqa: E402
from c2fnas_auto.utils.io import atomic_path  # noqa: E402

OP_COLOURS = {"2d": "#4c72b0", "3d": "#c44e52", "p3d": "#55a868"}


def skip_pairs(genotype: Genotype) -> list[tuple[int, int]]:
    """(encoder cell, decoder cell) pairs joined by a skip, read from the layer plan."""
    nl = genotype.num_levels
    shape_only = NetworkConfig(1, 1, stem_channels=1, level_channels=(1,) * nl, strides=((2, 2, 2),) * nl)
    plan = make_plan(genotype.levels, [[op] for op in genotype.ops], shape_only)
    return [(c.skip_from, c.index) for c in plan.cells if c.skip_from is not None]


def plot_genotype(genotype: Genotype, out_png: str | os.PathLike, title_extra: str = "") -> Path:
    """Draw `genotype` to `out_png` (atomic write); `title_extra` e.g. params and GFLOPs."""
    genotype.validate()
    n, nl = genotype.num_cells, genotype.num_levels
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * (n + 1), 1.6 + 0.7 * nl))
    xs = list(range(n + 1))
    ys = [1] + list(genotype.levels)  # the stem sits on level 1
    ax.plot(xs, ys, color="0.4", lw=1.5, zorder=1)
    for a, b in skip_pairs(genotype):
        xa, xb, y = a + 1, b + 1, genotype.levels[a]
        # U-shape: every cell between the two is deeper, so a straight line crosses nothing
        ax.annotate("", xy=(xb - 0.2, y), xytext=(xa + 0.2, y), zorder=1,
                    arrowprops=dict(arrowstyle="->", color="0.55", ls="--"))
    ax.scatter([0], [1], s=260, marker="s", color="0.75", edgecolor="k", zorder=2)
    ax.text(0, 1 - 0.38, "stem", ha="center", va="top", fontsize=8)
    for i, (lv, op) in enumerate(zip(genotype.levels, genotype.ops)):
        ax.scatter([i + 1], [lv], s=420, color=OP_COLOURS[op], edgecolor="k", zorder=3)
        ax.text(i + 1, lv, op, ha="center", va="center", fontsize=7, color="white", zorder=4, weight="bold")
    ax.set_xticks(xs, ["stem"] + [str(i + 1) for i in range(n)])
    ax.set_yticks(range(1, nl + 1), [f"L{lv} (1/{2 ** lv})" for lv in range(1, nl + 1)])
    ax.set_ylim(nl + 0.6, 0.4)  # level 1 at the top, deeper levels further down
    ax.set_xlim(-0.6, n + 0.6)
    ax.set_xlabel("cell")
    for op, colour in OP_COLOURS.items():
        ax.scatter([], [], s=80, color=colour, edgecolor="k", label=op)
    ax.plot([], [], color="0.55", ls="--", label="skip")
    ax.legend(loc="lower right", fontsize=7, ncol=4, frameon=False)
    name = genotype.provenance.get("name", "genotype")
    title = f"{name}: {genotype.topology_string()}"
    if title_extra:
        title += f"\n{title_extra}"
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", color="0.92", zorder=0)
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
    return out_png
