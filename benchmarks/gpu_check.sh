#!/usr/bin/env bash
# One run on a GPU machine, under 8 minutes, one results file (gpu_check-<time>.json, plus its
# log): augmentation backends' it/s and GPU utilisation; the execution options (fp32, bf16,
# fp16, bf16 compiled, bf16 channels-last): training it/s, CUDA peak memory vs the cost model,
# sliding-window seconds; the per-op profile of a training step and an inference window; and a
# short c2fnas_search's seconds per coarse candidate and supernet epoch, at 8 GB plans of a
# Pancreas-sized synthetic task.
#   bash benchmarks/gpu_check.sh [OUT_DIR]      (OUT_DIR defaults to $OUT, else benchmarks/results)
#   DRY_RUN=1 bash benchmarks/gpu_check.sh      (CPU, toy sizes: checks the script only)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out_dir="${1:-${OUT:-benchmarks/results}}"
mkdir -p "$out_dir"
work="$(mktemp -d "${TMPDIR:-/tmp}/c2fnas_gpu_check.XXXXXX")"
trap 'rm -rf "$work"' EXIT
stamp="$(date -u +%Y-%m-%dT%H%M)"
flags=()
if [[ "${DRY_RUN:-0}" == "1" ]]; then flags+=(--dry-run); stamp="$stamp-dry"; fi
set +e
timeout "${GPU_CHECK_TIMEOUT:-470}" python -m benchmarks.gpu_check "${flags[@]}" --workdir "$work" \
    --out "$out_dir/gpu_check-$stamp.json" 2>&1 | tee "$out_dir/gpu_check-$stamp.log"
rc=${PIPESTATUS[0]}
set -e
if [[ $rc -eq 124 ]]; then
    echo "gpu_check: stopped after ${GPU_CHECK_TIMEOUT:-470} s; the parts measured so far are in $out_dir/gpu_check-$stamp.json" \
        | tee -a "$out_dir/gpu_check-$stamp.log"
fi
exit $rc
