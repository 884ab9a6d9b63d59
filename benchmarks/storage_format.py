"""python -m benchmarks.storage_format PREPROCESSED_TASK [--nnunet NNUNET_PREPROCESSED_CONFIG] [--out FILE]

Measures the stored case format against a chunked, compressed alternative before adopting
one: for every case of our preprocessed folder it writes the arrays again as (a) today's
`.npy` and (b) blosc2 NDArrays (`.b2nd`, LZ4HC level 5 without shuffle in blocks of
32^3 voxels: the settings nnU-Net v2's files carry, read back from them), and reports disk bytes per case, write
seconds per case (what preprocessing would
add) and seconds to cut one random patch-sized region (memory-mapped `.npy` slice vs
blosc2 slice, which decompresses only the chunks the region touches). With --nnunet, the
bytes per case of nnU-Net v2's own preprocessed folder of the same task are reported
next to it. Everything is written under a temporary folder that is removed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _size(paths) -> int:
    return int(sum(os.path.getsize(p) for p in paths))


def _write_npy(folder: Path, cid: str, data: np.ndarray, seg: np.ndarray) -> list[Path]:
    out = [folder / f"{cid}.npy", folder / f"{cid}_seg.npy"]
    np.save(out[0], data)
    np.save(out[1], seg)
    return out


def _write_b2nd(folder: Path, cid: str, data: np.ndarray, seg: np.ndarray) -> list[Path]:
    import blosc2

    cparams = {"codec": blosc2.Codec.LZ4HC, "clevel": 5, "filters": [blosc2.Filter.NOFILTER]}
    out = [folder / f"{cid}.b2nd", folder / f"{cid}_seg.b2nd"]
    for arr, path in zip((data, seg), out):
        blocks = (arr.shape[0],) + tuple(min(32, s) for s in arr.shape[1:])
        blosc2.asarray(np.ascontiguousarray(arr), urlpath=str(path), mode="w", chunks=arr.shape, blocks=blocks,
                       cparams=cparams)
    return out


def _cut_seconds(open_fn, shape, patch, rng, reps: int) -> float:
    times = []
    for _ in range(reps):
        arr = open_fn()
        lo = [int(rng.integers(0, max(1, s - p + 1))) for s, p in zip(shape, patch)]
        sl = (slice(None),) + tuple(slice(a, a + p) for a, p in zip(lo, patch))
        t0 = time.perf_counter()
        np.array(arr[sl], copy=True)  # a memory-mapped slice is lazy: copy to read it
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure(task: Path, patch: tuple[int, ...], reps: int = 20) -> dict:
    import blosc2

    from c2fnas_auto.preprocessing.storage import list_cases, load_case

    rows = []
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="c2fnas_storage_") as tmp:
        tmp = Path(tmp)
        for cid in list_cases(task):
            data, seg, _ = load_case(task, cid, mmap=False)
            row = {"case": cid, "shape": list(data.shape)}
            t0 = time.perf_counter()
            npy = _write_npy(tmp, cid, data, seg)
            row["npy_write_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            b2 = _write_b2nd(tmp, cid, data, seg)
            row["b2nd_write_s"] = time.perf_counter() - t0
            row["npy_bytes"], row["b2nd_bytes"] = _size(npy), _size(b2)
            cut = tuple(min(p, s) for p, s in zip(patch, data.shape[1:]))
            row["npy_cut_s"] = _cut_seconds(lambda npy=npy: np.load(npy[0], mmap_mode="r"), data.shape[1:], cut, rng,
                                            reps)
            row["b2nd_cut_s"] = _cut_seconds(lambda b2=b2: blosc2.open(str(b2[0]), mode="r"), data.shape[1:], cut, rng,
                                             reps)
            rows.append(row)
    med = {k: statistics.median(r[k] for r in rows) for k in rows[0] if k.endswith(("_s", "_bytes"))}
    return {"task": str(task), "patch": list(patch), "cases": len(rows), "median_per_case": med, "per_case": rows}


def nnunet_bytes_per_case(folder: Path) -> float:
    files = [p for p in folder.iterdir() if p.suffix in (".b2nd", ".npz", ".npy")]
    cases = {p.name.split(".")[0].removesuffix("_seg") for p in files}
    return _size(files) / max(1, len(cases))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.storage_format", description=__doc__.split("\n\n")[1])
    p.add_argument("task", type=Path, help="our preprocessed task folder (holding data/)")
    p.add_argument("--patch", type=int, nargs=3, default=None, help="region size (default: the plans' patch)")
    p.add_argument("--nnunet", type=Path, default=None, help="nnU-Net's preprocessed configuration folder")
    p.add_argument("--out", type=Path, default=None, help="write the results JSON here")
    args = p.parse_args(argv)
    patch = tuple(args.patch) if args.patch else tuple(json.loads((args.task / "plans.json").read_text())["patch_size"])
    res = measure(args.task, patch)
    if args.nnunet:
        res["nnunet_bytes_per_case"] = nnunet_bytes_per_case(args.nnunet)
    m = res["median_per_case"]
    print(f"{res['cases']} cases, patch {list(patch)}; median per case:")
    print(f"  disk      npy {m['npy_bytes'] / 1e6:.2f} MB   b2nd {m['b2nd_bytes'] / 1e6:.2f} MB"
          + (f"   nnU-Net {res['nnunet_bytes_per_case'] / 1e6:.2f} MB" if args.nnunet else ""))
    print(f"  write     npy {m['npy_write_s'] * 1e3:.1f} ms  b2nd {m['b2nd_write_s'] * 1e3:.1f} ms")
    print(f"  cut patch npy {m['npy_cut_s'] * 1e3:.2f} ms  b2nd {m['b2nd_cut_s'] * 1e3:.2f} ms")
    res["loadavg"] = os.getloadavg()
    if args.out:
        from c2fnas_auto.utils.io import atomic_write_json

        atomic_write_json(args.out, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
