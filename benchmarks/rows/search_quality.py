"""Row 7: is the searched genotype better than chance? It and N random valid genotypes
are trained with the same budget, seed, plans and data, and scored on fold 0's
validation cases; the row reports its rank (1 = best) and the Dice of each.

The searched genotype is the one row 6's small search wrote into the task's plans. The
random ones are uniform over the 1486 valid topologies and the 3 operations per cell.
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import Profile, RowResult, Summary, require_our
from benchmarks.workspace import Workspace

ROW = "search_quality"
TITLE = "7. Search quality"


def random_genotypes(n: int, seed: int = 0) -> list:
    from c2fnas_auto.nas.genotype import OPS, Genotype
    from c2fnas_auto.nas.topology import enumerate_topologies

    rng = np.random.default_rng(seed)
    topologies = enumerate_topologies()
    out = []
    for _ in range(n):
        levels = list(topologies[int(rng.integers(len(topologies)))])
        ops = [OPS[int(rng.integers(len(OPS)))] for _ in levels]
        out.append(Genotype(levels=levels, ops=ops).validate())
    return out


def train_and_score(genotype, plans, pre_dir, train_ids, val_ids, epochs: int, iters: int) -> float:
    import torch

    from c2fnas_auto.nas.network import build_network
    from c2fnas_auto.training.api import fit, score_cases

    torch.manual_seed(0)
    net = build_network(genotype, plans.network_config())
    fit(net, plans, pre_dir, train_ids, epochs=epochs, iters_per_epoch=iters, device="cpu", seed=0)
    return float(score_cases(net, plans, pre_dir, val_ids, device="cpu")["mean_fg_dice"])


def run(ws: Workspace, profile: Profile) -> RowResult:
    require_our("c2fnas_auto.training.api")
    from c2fnas_auto.planning.plans import Plans
    from c2fnas_auto.training.splits import fold_case_ids

    from benchmarks.rows.search_cost import searched

    out = searched(ws)
    plans = Plans.load(out["plans_file"])
    pre_dir = out["plans_file"].parent
    train_ids, val_ids = fold_case_ids(pre_dir, 0)
    candidates = [("searched", plans.genotype)] + [(f"random_{i}", g)
                                                   for i, g in enumerate(random_genotypes(profile.quality_random))]
    scores = []
    for name, g in candidates:
        dice = train_and_score(g, plans, pre_dir, train_ids, val_ids, profile.quality_epochs, profile.search_iters)
        scores.append({"name": name, "levels": list(g.levels), "ops": list(g.ops), "dice": dice})
        print(f"    {name}: Dice {dice:.4f}", flush=True)
    ours = scores[0]["dice"]
    randoms = [s["dice"] for s in scores[1:]]
    rank = 1 + sum(d > ours for d in randoms)
    return RowResult(
        row=ROW, title=TITLE,
        note=(f"{len(randoms)} random valid genotypes; each trained {profile.quality_epochs} epochs x "
              f"{profile.search_iters} iterations (seed 0) on fold 0 and scored by mean foreground Dice on "
              f"{len(val_ids)} validation cases; a tiny budget, so ranks are noisy"),
        summary=Summary(ours=f"rank {rank} of {len(scores)}, Dice {ours:.3f}",
                        peer=f"random: median Dice {float(np.median(randoms)):.3f}, best {max(randoms):.3f}",
                        ratio=ours / float(np.median(randoms)) if np.median(randoms) > 0 else None,
                        goal="searched ranks in the top half", met=rank <= (len(scores) + 1) // 2),
        details={"scores": scores, "rank": rank, "train_cases": len(train_ids), "val_cases": len(val_ids)},
    )
