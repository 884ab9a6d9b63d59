"""Side-by-side measurements of c2fnas-auto against nnU-Net v2 and MONAI (not tests).

Run `python -m benchmarks.run --quick` (see documentation/benchmarks.md). Every row
measures our code and the peer's alternately in the same process or machine and reports
medians and ratios, because absolute seconds on a shared machine are noise.
"""
