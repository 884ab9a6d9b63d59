"""c2fnas_genotype: validate a genotype, print what it costs, draw it."""

from __future__ import annotations

import argparse
from pathlib import Path

from c2fnas_auto.cli._common import cli_entry, exit_with
from c2fnas_auto.errors import C2FNASError
from c2fnas_auto.nas.config import NetworkConfig
from c2fnas_auto.nas.cost import estimate_cost
from c2fnas_auto.nas.genotype import Genotype
from c2fnas_auto.utils.io import load_json


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="c2fnas_genotype",
        description="Validate a genotype (a genotype JSON or a plans file holding one); print its topology, "
                    "ops, parameters, GFLOPs and estimated training memory; optionally draw it. Settings not "
                    "given are taken from the plans file when FILE is one, else the paper's full-size network.")
    p.add_argument("file", metavar="FILE", help="genotype JSON or plans.json")
    p.add_argument("--patch-size", type=int, nargs=3, metavar=("Z", "Y", "X"), help="default: plans or 96 96 96")
    p.add_argument("--in-channels", type=int, metavar="C", help="default: plans or 1")
    p.add_argument("--classes", type=int, metavar="K", help="classes including background (default: plans or 2)")
    p.add_argument("--batch-size", type=int, metavar="B", help="default: plans or 2")
    p.add_argument("--png", metavar="OUT", help="write a picture of the genotype to this PNG")
    return p


def _settings(file: Path, args: argparse.Namespace):
    """NetworkConfig, patch and batch: command line over plans over defaults."""
    raw = load_json(file, "genotype file")
    plans = raw if isinstance(raw, dict) and "genotype" in raw and "levels" not in raw else {}
    net = dict(plans.get("network") or {})
    if args.in_channels is not None:
        net["in_channels"] = args.in_channels
    if args.classes is not None:
        net["num_classes"] = args.classes
    net.setdefault("in_channels", 1)
    net.setdefault("num_classes", 2)
    if not plans:  # no plans to follow: the paper's network (a plans dict without the key is an old one)
        net.setdefault("cell_style", "c2fnas")
    config = NetworkConfig.from_dict(net)
    patch = args.patch_size or plans.get("patch_size") or [96, 96, 96]
    batch = args.batch_size or plans.get("batch_size") or 2
    if batch < 1:
        raise C2FNASError(f"--batch-size must be >= 1, got {batch}")
    return config, config.check_patch(patch), int(batch)


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # start-up: nas.plot imports matplotlib (about a second); --help should not wait for it
    from c2fnas_auto.nas.plot import plot_genotype

    file = Path(args.file)
    genotype = Genotype.load(file)
    config, patch, batch = _settings(file, args)
    amp = estimate_cost(genotype, config, patch, batch, amp=True)
    fp32 = estimate_cost(genotype, config, patch, batch, amp=False)
    gib = 1024 ** 3
    name = genotype.provenance.get("name", file.name)
    print(f"genotype      {name} (valid)")
    print(f"topology      {genotype.topology_string()}")
    print(f"ops           {genotype.ops_string()}")
    print(f"network       in {config.in_channels}, classes {config.num_classes}, stem {config.stem_channels}, "
          f"levels {'/'.join(map(str, config.level_channels))}, strides "
          f"{' '.join('x'.join(map(str, s)) for s in config.strides)}, {config.cell_style} cells")
    print(f"parameters    {amp.params / 1e6:.2f} M")
    print(f"GFLOPs        {amp.flops / 1e9:.1f} (one forward pass, patch {'x'.join(map(str, patch))})")
    print(f"train memory  {amp.training_bytes / gib:.2f} GiB amp, {fp32.training_bytes / gib:.2f} GiB fp32 "
          f"(batch {batch}; activations {amp.activation_bytes / gib:.2f} / {fp32.activation_bytes / gib:.2f} GiB)")
    if args.png:
        out = plot_genotype(genotype, args.png, cell_style=config.cell_style,
                            title_extra=f"{amp.params / 1e6:.2f} M params, {amp.flops / 1e9:.1f} GFLOPs "
                                        f"at {'x'.join(map(str, patch))}")
        print(f"picture       {out}")
    return 0


if __name__ == "__main__":
    exit_with(main)
