"""Row 5: the cost model's memory estimate vs what is measured, reference genotype, 3 patches.

On the CPU we compare the estimate's activation bytes (float32, amp off) with the bytes
autograd actually saves for backward (`nas.measure.saved_activation_bytes`). With a GPU
at hand the estimate's whole training-step bytes (amp on) are also compared with
CUDA's peak allocation of a real SGD step. The planner trusts this estimate to fit
patch and batch to the memory budget, so its error matters more than its speed.
"""

from __future__ import annotations

import torch

from benchmarks.common import Profile, RowResult, Summary, fmt_bytes, require_our

ROW = "memory"
TITLE = "5. Memory estimate"


def run(ws, profile: Profile) -> RowResult:
    require_our("c2fnas_auto.nas.cost")
    from c2fnas_auto.nas.cost import estimate_cost
    from c2fnas_auto.nas.measure import cuda_training_peak_bytes, saved_activation_bytes

    from benchmarks.rows.sliding_window import reference_network

    torch.manual_seed(0)
    genotype, config, net = reference_network(1, 3, profile.mem_base_channels)
    net.train()
    rows = []
    for patch in profile.mem_patches:
        x = torch.randn(profile.mem_batch, 1, *patch)
        est_cpu = estimate_cost(genotype, config, patch, batch_size=profile.mem_batch, amp=False)
        measured = saved_activation_bytes(net, x)
        entry = {"patch": list(patch), "batch": profile.mem_batch,
                 "estimated_activation_bytes": int(est_cpu.activation_bytes),
                 "measured_saved_tensor_bytes": int(measured),
                 "ratio_estimate_to_measured": est_cpu.activation_bytes / measured if measured else None}
        if torch.cuda.is_available():
            est_gpu = estimate_cost(genotype, config, patch, batch_size=profile.mem_batch, amp=True)
            gnet = net.to("cuda")
            peak = cuda_training_peak_bytes(gnet, x.to("cuda"), amp=True)
            entry.update(estimated_training_bytes_amp=int(est_gpu.training_bytes), cuda_peak_bytes=int(peak),
                         ratio_training_estimate_to_cuda_peak=est_gpu.training_bytes / peak if peak else None)
            net = gnet.to("cpu")
        rows.append(entry)
        del x
    ratios = [r["ratio_estimate_to_measured"] for r in rows if r["ratio_estimate_to_measured"]]
    worst = max(ratios, key=lambda v: abs(v - 1.0)) if ratios else None
    shown = "; ".join(f"{'x'.join(map(str, r['patch']))}: {fmt_bytes(r['estimated_activation_bytes'])}"
                      for r in rows)
    measured = "; ".join(f"{'x'.join(map(str, r['patch']))}: {fmt_bytes(r['measured_saved_tensor_bytes'])}"
                         for r in rows)
    gpu_note = ("CUDA peak also measured" if torch.cuda.is_available()
                else "no GPU here: CUDA peak not measured")
    return RowResult(
        row=ROW, title=TITLE,
        note=(f"reference genotype, base width {profile.mem_base_channels}, batch {profile.mem_batch}, "
              f"activations saved for backward (float32, CPU); ratio = worst estimate/measured over the patches; "
              f"{gpu_note}"),
        summary=Summary(ours=f"estimate {shown}", peer=f"measured {measured}", ratio=worst,
                        goal="estimate within 0.8-1.25x of measured",
                        met=None if worst is None else all(0.8 <= v <= 1.25 for v in ratios)),
        details={"patches": rows, "gpu": torch.cuda.is_available()},
    )
