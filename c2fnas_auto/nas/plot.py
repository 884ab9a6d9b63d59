"""A picture of a genotype: cells on their levels, ops colour-coded, skips and second inputs drawn."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from c2fnas_auto.nas.config import NetworkConfig  # noqa: E402
from c2fnas_auto.nas.genotype import Genotype  # noqa: E402
from c2fnas_auto.nas.plan import WiredCellPlan, make_plan  # noqa: E402
from c2fnas_auto.utils.io import save_figure  # noqa: E402

OP_COLOURS = {"2d": "#4c72b0", "3d": "#c44e52", "p3d": "#55a868"}


def plot_links(genotype: Genotype, cell_style: str = "c2fnas") -> list[tuple[str, int, int]]:
    """Extra edges besides the cell-to-cell path, read from the layer plan.

    `(kind, source, target)` with tensor numbers (0 the stem, k cell k): "skip" is an
    encoder output read by a decoder cell, "same" a same-level second input (c2fnas style).
    """
    nl = genotype.num_levels
    shape_only = NetworkConfig(1, 1, stem_channels=1, level_channels=(1,) * nl, strides=((2, 2, 2),) * nl,
                               cell_style=cell_style)
    plan = make_plan(genotype.levels, [[op] for op in genotype.ops], shape_only)
    links = []
    for c in plan.cells:
        if isinstance(c, WiredCellPlan):
            if c.main_from != c.index:  # after an up step the main input is the encoder skip
                links.append(("skip", c.main_from, c.index + 1))
            elif c.second_from is not None:
                links.append(("same", c.second_from, c.index + 1))
        elif c.skip_from is not None:
            links.append(("skip", c.skip_from + 1, c.index + 1))
    return links


def plot_genotype(genotype: Genotype, out_png: str | os.PathLike, title_extra: str = "",
                  cell_style: str = "c2fnas") -> Path:
    """Draw `genotype` to `out_png` (atomic write); `title_extra` e.g. params and GFLOPs."""
    genotype.validate()
    n, nl = genotype.num_cells, genotype.num_levels
    fig, ax = plt.subplots(figsize=(1.0 + 0.75 * (n + 1), 1.6 + 0.7 * nl))
    xs = list(range(n + 1))
    ys = [1] + list(genotype.levels)  # the stem sits on level 1
    ax.plot(xs, ys, color="0.4", lw=1.5, zorder=1)
    for kind, a, b in plot_links(genotype, cell_style):
        y = ys[a]
        if kind == "skip":
            # U-shape: every cell between the two is deeper, so a straight line crosses nothing
            ax.annotate("", xy=(b - 0.2, y), xytext=(a + 0.2, y), zorder=1,
                        arrowprops=dict(arrowstyle="->", color="0.55", ls="--"))
        else:  # the cell two back on the same level: an arc over the cell in between
            ax.annotate("", xy=(b, y), xytext=(a, y), zorder=1,
                        arrowprops=dict(arrowstyle="->", color="#8172b2", ls=":", lw=1.5, shrinkA=9, shrinkB=9,
                                        connectionstyle="arc3,rad=0.35"))
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
    if cell_style == "c2fnas":
        ax.plot([], [], color="#8172b2", ls=":", label="2nd input")
    ax.legend(loc="lower right", fontsize=7, ncol=5, frameon=False)
    name = genotype.provenance.get("name", "genotype")
    title = f"{name}: {genotype.topology_string()} ({cell_style} cells)"
    if title_extra:
        title += f"\n{title_extra}"
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", color="0.92", zorder=0)
    fig.tight_layout()
    return save_figure(fig, out_png, dpi=120)
