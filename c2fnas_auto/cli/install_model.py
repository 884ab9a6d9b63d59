"""c2fnas_install_model model.zip: install a model file from c2fnas_export_model into $C2FNAS_results."""

from __future__ import annotations

import argparse

from c2fnas_auto.cli._common import cli_entry, exit_with


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="c2fnas_install_model", description=(
        "Check a model zip (manifest, file list, paths, CRC, loadable checkpoints) in a temporary folder, "
        "then move its experiments to $C2FNAS_results/<task>/<experiment>. A bad zip installs nothing."))
    p.add_argument("zip", help="model file written by c2fnas_export_model")
    p.add_argument("--overwrite", action="store_true", help="replace experiments that are already installed")
    return p


@cli_entry
def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from c2fnas_auto import paths
    from c2fnas_auto.deployment.model_zip import install_model_zip

    targets = install_model_zip(args.zip, paths.results_root(), overwrite=args.overwrite)
    for t in targets:
        print(f"installed {t}")
    print(f"predict with: c2fnas_predict -i INPUT -o OUTPUT -t {targets[0].parent.name} --experiment "
          f"{' '.join(t.name for t in targets[:1])}")
    return 0


if __name__ == "__main__":
    exit_with(main)
