"""c2fnas_install_model model.zip: install a model file from c2fnas_export_model into $C2FNAS_results."""

from __future__ import annotations

import argparse

from c2fnas_auto import paths
from c2fnas_auto.cli._common import add_trust_flag, cli_entry, exit_with, trust_from_args
from c2fnas_auto.deployment.zip_limits import add_zip_limit_flags, zip_limits_from_args


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="c2fnas_install_model", description=(
        "Check a model zip (size budgets, manifest, file list, paths, CRC, checkpoints that load as tensors "
        "and plain data and match their network config) in a temporary folder, then move its experiments to "
        "$C2FNAS_results/<task>/<experiment>. A bad zip installs nothing."))
    p.add_argument("zip", help="model file written by c2fnas_export_model")
    p.add_argument("--overwrite", action="store_true", help="replace experiments that are already installed")
    add_zip_limit_flags(p)
    add_trust_flag(p)
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # start-up: the library loads only once the arguments are parsed, so --help stays fast
    from c2fnas_auto.deployment.model_zip import install_model_zip

    with trust_from_args(args):
        targets = install_model_zip(args.zip, paths.results_root(), overwrite=args.overwrite,
                                    limits=zip_limits_from_args(args))
    for t in targets:
        print(f"installed {t}")
    print(f"predict with: c2fnas_predict -i INPUT -o OUTPUT -t {targets[0].parent.name} --experiment "
          f"{' '.join(t.name for t in targets[:1])}")
    return 0


if __name__ == "__main__":
    exit_with(main)
