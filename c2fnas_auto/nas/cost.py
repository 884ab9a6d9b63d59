"""What a network costs before it is built: parameters, FLOPs and training memory.

The estimate walks the same layer plan the network is built from (`plan.py`), so a
change to the architecture changes both at once. Saved activations follow what
autograd keeps for each block of the plan (checked against
`torch.autograd.graph.saved_tensors_hooks` in the tests):

- ReLU keeps its output, which is also the tensor the following conv keeps;
- a conv without a ReLU in front (the stem's first conv) keeps its input;
- InstanceNorm keeps the conv output plus three per-channel vectors per sample
  (repeated affine weight, mean, inverse std; the channels-last norm of layout.py
  keeps two, a difference of a few bytes per channel that is not modelled);
- trilinear upsampling and additions keep nothing.

Mixed precision (`amp=True`, CUDA autocast float16): activations are counted at 2
bytes, the per-channel statistics at 4; master weights, gradients and SGD momentum
stay float32, plus a float16 copy of the weights that autocast caches per step.
`training_bytes` adds WORKSPACE_FRACTION of the activations for convolution
workspaces, the loss and allocator rounding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from math import prod
from typing import Sequence

from c2fnas_auto.nas.config import NetworkConfig
from c2fnas_auto.nas.genotype import OPS, Genotype
from c2fnas_auto.nas.plan import CellPlan, ConvUnit, NetworkPlan, WiredCellPlan, WiredHeadPlan, make_plan

WORKSPACE_FRACTION = 0.10


@dataclass
class CostEstimate:
    """Counts for one network; bytes are for a training step with `batch_size` samples."""

    params: int
    flops: int               # one forward pass of one sample (2 x multiply-adds of the convs)
    activation_bytes: int    # tensors saved for backward, whole batch
    weight_bytes: int
    gradient_bytes: int
    optimizer_bytes: int
    training_bytes: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass
class _Tally:
    params: int = 0
    flops: int = 0
    stat_elems: int = 0  # per sample, always float32
    fixed_elems: int = 0  # whatever the batch, at activation precision (the fused upsample's kernels)
    saved: dict[object, int] = field(default_factory=dict)  # tensor -> elements per sample

    @property
    def act_elems(self) -> int:
        """Per sample, stored at activation precision; a tensor saved twice counts once."""
        return sum(self.saved.values())

    def save(self, key: object | None, elems: int) -> object:
        """Record a tensor autograd keeps; `key=None` is a fresh tensor nobody else saves."""
        key = object() if key is None else key
        self.saved[key] = elems
        return key


def _unit(t: _Tally, u: ConvUnit, spatial_in: Sequence[int],
          source: object | None = None) -> tuple[tuple[int, ...], object]:
    """Count one conv unit reading tensor `source` (None: a tensor read by this unit only).

    Returns the output spatial size and a key for the output tensor.
    """
    s = tuple(spatial_in)
    if u.upsample is not None and u.upsample_first:
        s, source = _upsampled(s, u.upsample), None
    if u.fused_upsample:  # ops.upsample_conv3d
        # the ReLU output, or the input itself: the replicate padding keeps what it reads
        t.save(None if u.relu else source, u.in_channels * prod(s))
        s = _fused_upsample(t, u, s)
    elif u.relu:
        source = t.save(None, u.in_channels * prod(s))  # ReLU output, also what the conv keeps
        if u.upsample is not None and not u.upsample_first:
            s = _upsampled(s, u.upsample)
            source = t.save(None, u.in_channels * prod(s))  # the conv keeps the upsampled tensor
    else:
        if u.upsample is not None and not u.upsample_first:
            s, source = _upsampled(s, u.upsample), None
        t.save(source, u.in_channels * prod(s))  # the conv keeps its input
    spatial_out = tuple(-(-n // st) for n, st in zip(s, u.stride))
    k = prod(u.kernel)
    t.params += u.in_channels * u.out_channels * k + (u.out_channels if u.bias else 0)
    t.flops += 2 * u.in_channels * u.out_channels * k * prod(spatial_out)
    if u.norm:
        t.params += 2 * u.out_channels if u.affine else 0
        t.save(None, u.out_channels * prod(spatial_out))  # the norm keeps the conv output
        t.stat_elems += (3 if u.affine else 2) * u.out_channels  # [repeated weight,] mean, inverse std
    return spatial_out, object()


def _fused_upsample(t: _Tally, u: ConvUnit, s: Sequence[int]) -> tuple[int, ...]:
    """What `ops.upsample_conv3d` keeps: the replicate-padded input, for each upsampled axis two
    three-plane slabs at the output resolution (the border planes), and, once per batch, the
    phase kernels and the tap table they are made from. Returns the output spatial size."""
    factors = u.upsample_factors
    fine = _upsampled(s, u.upsample)
    t.save(None, u.in_channels * prod(n + 2 if f == 2 else n for n, f in zip(s, factors)))
    for axis, f in enumerate(factors):
        if f == 2:
            t.save(None, 2 * u.in_channels * 3 * prod(n for a, n in enumerate(fine) if a != axis))
    phases = prod(factors)
    t.fixed_elems += phases * 27 * 27 + u.out_channels * phases * u.in_channels * 27
    return fine


def _upsampled(spatial: Sequence[int], scale: Sequence[float] | None) -> tuple[int, ...]:
    if scale is None:
        return tuple(spatial)
    return tuple(int(round(n * s)) for n, s in zip(spatial, scale))


def _other_ops_params(t: _Tally, cell: CellPlan | WiredCellPlan, op: str, spatial: Sequence[int]) -> None:
    """Supernet size: the parameters of the candidates a path does not run."""
    for name, units in cell.ops:
        if name != op:
            dummy = _Tally()
            for u in units:
                _unit(dummy, u, spatial)
            t.params += dummy.params


def tally_plan(plan: NetworkPlan, patch_size: Sequence[int], ops: Sequence[str] | None = None,
               all_ops: bool = False) -> _Tally:
    """Walk the plan at `patch_size`; `ops` picks each cell's path (default: its only op).

    `all_ops=True` counts the parameters of every candidate (the supernet's size) while
    FLOPs and activations still follow `ops`.
    """
    t = _Tally()
    if isinstance(plan.head, WiredHeadPlan):
        _tally_wired(t, plan, patch_size, ops, all_ops)
    else:
        _tally_residual(t, plan, patch_size, ops, all_ops)
    return t


def _tally_residual(t: _Tally, plan: NetworkPlan, patch_size: Sequence[int], ops: Sequence[str] | None,
                    all_ops: bool) -> None:
    cells, head = plan.residual()
    s, _ = _unit(t, plan.stem[0], patch_size)
    s, _ = _unit(t, plan.stem[1], s)
    for i, cell in enumerate(cells):
        if cell.upsample is not None:
            s = _upsampled(s, cell.upsample)
        if cell.transition is not None:
            s, _ = _unit(t, cell.transition, s)
        op = ops[i] if ops is not None else cell.ops[0][0]
        for u in cell.op_units(op):
            _unit(t, u, s)
        if all_ops:
            _other_ops_params(t, cell, op, s)
        if cell.ds_head is not None:
            _unit(t, cell.ds_head, s)
    s, _ = _unit(t, head.reduce, s)
    s = _upsampled(s, head.upsample)
    _unit(t, head.classifier, s)


def _tally_wired(t: _Tally, plan: NetworkPlan, patch_size: Sequence[int], ops: Sequence[str] | None,
                 all_ops: bool) -> None:
    """Tensors are tracked by number (0 stem, k cell k): one read by two convs is kept once."""
    cells, head = plan.wired()
    s, key = _unit(t, plan.stem[0], patch_size, "input")
    tensors = [_unit(t, plan.stem[1], s, key)]
    for i, cell in enumerate(cells):
        s, key = tensors[cell.main_from]
        if cell.down is not None:
            s, key = _unit(t, cell.down, s, key)
        s, key = _unit(t, cell.pre, s, key)
        if cell.second is not None:
            assert cell.second_from is not None, "a second input without its source"
            _unit(t, cell.second, *tensors[cell.second_from])
            key = object()  # the sum
        op = ops[i] if ops is not None else cell.ops[0][0]
        for u in cell.op_units(op):
            s, key = _unit(t, u, s, key)
        if all_ops:
            _other_ops_params(t, cell, op, s)
        out = _unit(t, cell.post, s, key)
        if cell.ds_head is not None:
            _unit(t, cell.ds_head, *out)
        tensors.append(out)
    s, _ = tensors[head.concat_from[1]]
    s, _ = _unit(t, head.fuse, s)  # reads the concatenation
    s, _ = _unit(t, head.expand, s)
    _unit(t, head.classifier, s)


def cost_from_tally(t: _Tally, batch_size: int, amp: bool) -> CostEstimate:
    act_bytes = batch_size * (t.act_elems * (2 if amp else 4) + t.stat_elems * 4) + t.fixed_elems * (2 if amp else 4)
    weight_bytes = t.params * (6 if amp else 4)  # amp: fp32 master + fp16 autocast copy
    gradient_bytes = t.params * 4
    optimizer_bytes = t.params * 4  # SGD momentum buffer
    training = weight_bytes + gradient_bytes + optimizer_bytes + act_bytes * (1.0 + WORKSPACE_FRACTION)
    return CostEstimate(params=t.params, flops=t.flops, activation_bytes=int(act_bytes),
                        weight_bytes=weight_bytes, gradient_bytes=gradient_bytes,
                        optimizer_bytes=optimizer_bytes, training_bytes=int(training))


def estimate_cost(genotype: Genotype, config: NetworkConfig, patch_size: Sequence[int], batch_size: int = 2,
                  amp: bool = True) -> CostEstimate:
    """Parameters, FLOPs and training memory of `build_network(genotype, config)` at `patch_size`."""
    genotype.validate()
    patch = config.check_patch(patch_size, deepest_level=max(genotype.levels))
    plan = make_plan(genotype.levels, [[op] for op in genotype.ops], config)
    return cost_from_tally(tally_plan(plan, patch), batch_size, amp)


def estimate_supernet_cost(levels: Sequence[int], config: NetworkConfig, patch_size: Sequence[int],
                           ops: Sequence[str], batch_size: int = 2, amp: bool = True) -> CostEstimate:
    """Cost of a supernet training step on path `ops` (weights of all candidates, one path's activations)."""
    patch = config.check_patch(patch_size, deepest_level=max(levels))
    plan = make_plan(levels, [list(OPS)] * len(levels), config)
    return cost_from_tally(tally_plan(plan, patch, ops=ops, all_ops=True), batch_size, amp)
