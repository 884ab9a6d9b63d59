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
  convs on the concatenation with the skip; a 1x1x1 classifier (plus the deep-supervision
  heads nnU-Net's decoder always holds, as parameters); convs with bias, instance norms with
  affine weights.

Parameters and forward FLOPs count the convolutions the same way `nas/cost.py` does
(2 x multiply-adds), so the two prices compare.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import prod
from typing import Any, Sequence

from c2fnas_auto.errors import PlansError
from c2fnas_auto.nas.cost import estimate_cost
from c2fnas_auto.nas.genotype import reference_genotype
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


def plain_unet_cost(in_channels: int, num_classes: int, patch: Sequence[int], features: Sequence[int],
                    kernels: Sequence[Sequence[int]], strides: Sequence[Sequence[int]],
                    convs_per_stage: Sequence[int] | int = NNUNET_CONVS_PER_STAGE,
                    convs_per_decoder_stage: Sequence[int] | int = NNUNET_CONVS_PER_STAGE) -> tuple[int, int]:
    """(parameters, forward FLOPs) of a plain U-Net described stage by stage, as nnU-Net's plans'
    `arch_kwargs` describe one (features_per_stage, kernel_sizes, strides, n_conv_per_stage...)."""
    n = len(features)
    enc = [convs_per_stage] * n if isinstance(convs_per_stage, int) else list(convs_per_stage)
    dec = [convs_per_decoder_stage] * (n - 1) if isinstance(convs_per_decoder_stage, int) \
        else list(convs_per_decoder_stage)
    if not (len(kernels) == len(strides) == len(enc) == n and len(dec) == n - 1):
        raise PlansError(f"a plain U-Net of {n} stages needs {n} kernels, strides and encoder conv counts and "
                         f"{n - 1} decoder conv counts")
    c = _Count()
    sizes = []
    size = [int(p) for p in patch]
    cin = in_channels
    for st, k, w, m in zip(strides, kernels, features, enc):
        size = [-(-a // int(f)) for a, f in zip(size, st)]
        sizes.append(size)
        c.conv(cin, w, k, size)
        for _ in range(m - 1):
            c.conv(w, w, k, size)
        cin = w
    for s in range(n - 2, -1, -1):  # decoder stage s: nnU-Net lists them deepest first
        c.conv(features[s + 1], features[s], strides[s + 1], sizes[s + 1], norm=False)  # transposed conv
        c.conv(2 * features[s], features[s], kernels[s], sizes[s])
        for _ in range(dec[n - 2 - s] - 1):
            c.conv(features[s], features[s], kernels[s], sizes[s])
    c.conv(features[0], num_classes, (1, 1, 1), sizes[0], norm=False)
    # nnU-Net's decoder holds a 1x1x1 head per stage for deep supervision whether it is on or
    # not: their weights count, their FLOPs only when deep supervision runs (not priced here)
    c.params += sum(features[s] * num_classes + num_classes for s in range(1, n - 1))
    return c.params, c.flops


def nnunet_features(stages: int, width_multiplier: float = 1.0) -> list[int]:
    """nnU-Net's default widths (32 doubling per stage, capped at 320), optionally scaled."""
    return [max(1, round(min(NNUNET_BASE_FEATURES * 2 ** i, NNUNET_MAX_FEATURES) * width_multiplier))
            for i in range(stages)]


def nnunet_cost(in_channels: int, num_classes: int, spacing: Sequence[float],
                patch: Sequence[int]) -> tuple[int, int, int]:
    """(parameters, forward FLOPs, stages) of nnU-Net's default network at `patch`."""
    strides, kernels = nnunet_stages(spacing, patch)
    params, flops = plain_unet_cost(in_channels, num_classes, patch, nnunet_features(len(strides)), kernels, strides)
    return params, flops, len(strides)


def named_budget(name: str, plans: Any) -> NamedBudget:
    """The limits `--budget NAME` sets for these plans (PlansError for an unknown name)."""
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
