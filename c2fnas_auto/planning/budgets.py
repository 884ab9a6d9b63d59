"""Budgets a user means by name: the cost of a known network at the plans' patch.

`--budget reference` is the shipped reference genotype at the plans' widths; `--budget nnunet`
is nnU-Net's default 3d_fullres network (a plain U-Net) planned for the same patch and
spacing. The second is priced here from nnU-Net's documented layout, not built:

- stages: one at full resolution, then one per downsampling step, the steps from the
  planner's pooling rule (`planner.compute_strides`) until no axis may be halved again;
- widths 32 x 2**stage, capped at 320;
- per encoder stage two conv-norm-ReLU blocks, the first one strided (stage 0: stride 1);
  kernel 3 on an axis, 1 while its spacing is more than twice the finest (anisotropic data);
- per decoder stage a transposed conv (kernel = stride) from the stage below, then two
  convs on the concatenation with the skip; a 1x1x1 classifier; convs with bias,
  instance norms with affine weights.

Parameters and forward FLOPs count the convolutions the same way `nas/cost.py` does
(2 x multiply-adds), so the two prices compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any, Sequence

from c2fnas_auto.errors import PlansError
from c2fnas_auto.planning.planner import MIN_FEATURE_SIZE, compute_strides

BUDGET_NAMES: tuple[str, ...] = ("reference", "nnunet")
NNUNET_BASE_FEATURES = 32
NNUNET_MAX_FEATURES = 320
NNUNET_MAX_STAGES = 7
NNUNET_CONVS_PER_STAGE = 2


@dataclass(frozen=True)
class NamedBudget:
    """What a named budget costs: the limits it sets and the network they come from."""

    name: str
    params: int
    flops: float
    network: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": self.params, "gflops": round(self.flops / 1e9, 4),
                "network": self.network}


@dataclass
class _Count:
    params: int = 0
    flops: int = 0

    def conv(self, cin: int, cout: int, kernel: Sequence[int], out_spatial: Sequence[int],
             norm: bool = True) -> None:
        k = prod(kernel)
        self.params += cin * cout * k + cout + (2 * cout if norm else 0)
        self.flops += 2 * cin * cout * k * prod(out_spatial)


def nnunet_stages(spacing: Sequence[float], patch: Sequence[int]) -> tuple[list[list[int]], list[list[int]]]:
    """(strides, kernels) per stage of nnU-Net's plain U-Net at this patch; stage 0 has stride 1."""
    steps = compute_strides(spacing, patch, num_levels=NNUNET_MAX_STAGES - 1, min_feature=MIN_FEATURE_SIZE)
    while steps and steps[-1] == [1, 1, 1]:
        steps.pop()
    strides = [[1, 1, 1]] + steps
    kernels = []
    sp = [float(s) for s in spacing]
    for st in strides:
        sp = [s * f for s, f in zip(sp, st)]
        finest = min(sp)
        kernels.append([3 if s <= 2 * finest + 1e-8 else 1 for s in sp])
    return strides, kernels


def nnunet_cost(in_channels: int, num_classes: int, spacing: Sequence[float],
                patch: Sequence[int]) -> tuple[int, int, int]:
    """(parameters, forward FLOPs, stages) of nnU-Net's default network at `patch`."""
    strides, kernels = nnunet_stages(spacing, patch)
    widths = [min(NNUNET_BASE_FEATURES * 2 ** i, NNUNET_MAX_FEATURES) for i in range(len(strides))]
    c = _Count()
    sizes = []
    size = [int(p) for p in patch]
    cin = in_channels
    for st, k, w in zip(strides, kernels, widths):
        size = [-(-n // f) for n, f in zip(size, st)]
        sizes.append(size)
        c.conv(cin, w, k, size)
        for _ in range(NNUNET_CONVS_PER_STAGE - 1):
            c.conv(w, w, k, size)
        cin = w
    for s in range(len(strides) - 2, -1, -1):
        c.conv(widths[s + 1], widths[s], strides[s + 1], sizes[s + 1], norm=False)  # transposed conv, low resolution
        c.conv(2 * widths[s], widths[s], kernels[s], sizes[s])
        for _ in range(NNUNET_CONVS_PER_STAGE - 1):
            c.conv(widths[s], widths[s], kernels[s], sizes[s])
    c.conv(widths[0], num_classes, (1, 1, 1), sizes[0], norm=False)
    return c.params, c.flops, len(strides)


def named_budget(name: str, plans: Any) -> NamedBudget:
    """The limits `--budget NAME` sets for these plans (PlansError for an unknown name)."""
    from c2fnas_auto.nas.cost import estimate_cost
    from c2fnas_auto.nas.genotype import reference_genotype

    patch = [int(p) for p in plans.patch_size]
    if name == "reference":
        cost = estimate_cost(reference_genotype(), plans.network_config(), patch, batch_size=int(plans.batch_size))
        return NamedBudget(name, int(cost.params), float(cost.flops),
                           f"the reference genotype at the plans' widths (stem {plans.network.stem_channels}), "
                           f"patch {patch}")
    if name == "nnunet":
        params, flops, stages = nnunet_cost(plans.num_channels, int(plans.num_classes), plans.target_spacing, patch)
        return NamedBudget(name, params, float(flops),
                           f"nnU-Net's default plain U-Net ({stages} stages, widths 32..320) at patch {patch}")
    raise PlansError(f"--budget {name!r}: expected one of {', '.join(BUDGET_NAMES)}")
