"""Model files: a task's trained experiments in one zip, to hand to a colleague.

Layout inside the zip (`MANIFEST` at the top says what it holds)::

    c2fnas_model.json                  format, version, task, experiments, folds, CV Dice, file list
    README.md                          what it is, the cross-validation Dice, how to use it
    <task>/<experiment>/plans.json     the plans as trained, with the genotype
    <task>/<experiment>/genotype.json  the genotype with its provenance
    <task>/<experiment>/dataset.json   the raw task's dataset.json (labels, channels)
    <task>/<experiment>/fingerprint.json
    <task>/<experiment>/postprocessing.json          (when decided over all folds)
    <task>/<experiment>/fold_k/checkpoint_<name>.pth (weights only: no optimizer state)
    <task>/<experiment>/fold_k/postprocessing.json, validation/summary.json

Reading a zip is defensive (a zip is made to come from someone else): it must be a zip,
stay within its budgets (entry count, declared and written uncompressed bytes, manifest size:
deployment/zip_limits.py), carry our manifest, list exactly its files, hold only relative
paths below the task folder (no `..`, no absolute paths, no links), pass its CRC check and
have checkpoints that load as tensors and plain data (never unpickled) whose network config
matches their weights. It is extracted to a temporary folder first and only renamed into
place when all of that holds, so a bad zip installs nothing.
"""

from __future__ import annotations

import math
import os
import shutil
import stat
import tempfile
import zipfile
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Iterator, Sequence

from c2fnas_auto import paths
from c2fnas_auto.deployment.errors import DeploymentError
from c2fnas_auto.deployment.selection import fold_summaries, pooled_summary
from c2fnas_auto.deployment.zip_limits import ZipLimits, copy_bounded
from c2fnas_auto.deployment.zip_names import check_names
from c2fnas_auto.errors import C2FNASError, InputError
from c2fnas_auto.inference.experiments import available_folds
from c2fnas_auto.nas.checkpoint import (
    CHECKPOINTS,
    checkpoint_file_name,
    load_checkpoint,
    save_checkpoint_dict,
    trained_network,
)
from c2fnas_auto.paths import parse_task_folder_name
from c2fnas_auto.utils.bounded_json import parse_json
from c2fnas_auto.utils.io import atomic_path, atomic_write_json, atomic_write_text

MANIFEST = "c2fnas_model.json"
FORMAT = "c2fnas-model"
VERSION = 1
# keys of a checkpoint a prediction needs; optimizer and scaler state stay behind
KEEP_KEYS = ("network_weights", "plans", "genotype", "network_config", "epoch", "fold")


# ----------------------------------------------------------------- export
def _stage_experiment(exp_dir: Path, stage: Path, checkpoint_name: str, folds: Sequence[str],
                      task_files: dict[str, Path]) -> dict:
    stage.mkdir(parents=True)
    plans = genotype = None
    for fold in folds:
        src = exp_dir / f"fold_{fold}"
        ckpt = load_checkpoint(src / checkpoint_name)
        plans, genotype = ckpt.get("plans"), ckpt.get("genotype")
        save_checkpoint_dict({k: ckpt[k] for k in KEEP_KEYS if k in ckpt}, stage / f"fold_{fold}" / checkpoint_name)
        for rel in ("postprocessing.json", "validation/summary.json"):
            if (src / rel).is_file():
                (stage / f"fold_{fold}" / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / rel, stage / f"fold_{fold}" / rel)
    atomic_write_json(stage / "plans.json", plans)
    atomic_write_json(stage / "genotype.json", genotype)
    if (exp_dir / "postprocessing.json").is_file():
        shutil.copyfile(exp_dir / "postprocessing.json", stage / "postprocessing.json")
    for name, path in task_files.items():
        shutil.copyfile(path, stage / name)
    summaries = fold_summaries(exp_dir)
    labels = (plans or {}).get("labels", {})
    validated = [f for f in folds if f in summaries]
    pooled = pooled_summary([summaries[f] for f in validated], labels) if validated else None
    dice = pooled["foreground_mean"]["Dice"] if pooled else float("nan")
    return {"name": exp_dir.name, "folds": list(folds), "genotype": genotype,
            "cv_folds": validated, "cv_foreground_dice": None if math.isnan(dice) else dice,
            "cv_per_label_dice": {k: v["Dice"] for k, v in pooled["mean"].items()} if pooled else {}}


def _readme(manifest: dict) -> str:
    lines = [f"# c2fnas-auto model: {manifest['task']}", "",
             f"Exported {manifest['created']} with c2fnas-auto; checkpoint `{manifest['checkpoint']}`.", "",
             "| experiment | genotype levels | ops | folds | CV foreground Dice |", "|---|---|---|---|---|"]
    for e in manifest["experiments"]:
        g = e.get("genotype") or {}
        dice = e["cv_foreground_dice"]
        lines.append(f"| {e['name']} | {g.get('levels')} | {g.get('ops')} | {', '.join(e['folds'])} | "
                     f"{'n/a' if dice is None else f'{dice:.4f}'} (folds {', '.join(e['cv_folds']) or 'none'}) |")
    lines += ["", "CV Dice: the folds' final-validation cases pooled, mean over cases per label, then over the "
              "foreground labels.", "", "Use it:", "",
              "    c2fnas_install_model model.zip                  # into $C2FNAS_results",
              f"    c2fnas_predict -i IN -o OUT -t {manifest['task']} --experiment NAME",
              "    c2fnas_predict -i IN -o OUT -m model.zip         # without installing", ""]
    return "\n".join(lines)


def _task_files(task_name: str) -> dict[str, Path]:
    """dataset.json (raw) and fingerprint.json (preprocessed) where this machine has them."""
    found: dict[str, Path] = {}
    for name, folder in (("dataset.json", lambda: paths.resolve_task(task_name)),
                         ("fingerprint.json", lambda: paths.preprocessed_dir(task_name))):
        try:
            f = Path(folder()) / name
        except C2FNASError:
            continue
        if f.is_file():
            found[name] = f
    return found


def export_model_zip(task_name: str, experiment_dirs: Sequence[Path], out_zip: Path, checkpoint: str = "final",
                     folds: Sequence[str] | None = None) -> dict:
    """Write `out_zip` (atomically) with every given experiment's trained folds; returns the manifest."""
    name = checkpoint_file_name(checkpoint)
    out_zip = Path(out_zip)
    if not experiment_dirs:
        raise DeploymentError(f"task {task_name}: no trained experiment to export")
    task_files = _task_files(task_name)
    with tempfile.TemporaryDirectory(prefix="c2fnas-export-") as tmp:
        stage = Path(tmp)
        entries = []
        for exp in experiment_dirs:
            exp_folds = [str(f) for f in folds] if folds else available_folds(exp, checkpoint)
            missing = [f for f in exp_folds if not (exp / f"fold_{f}" / name).is_file()]
            if not exp_folds or missing:
                raise DeploymentError(f"{exp}: no {name} for fold(s) {', '.join(missing) or 'any'}")
            entries.append(_stage_experiment(exp, stage / task_name / exp.name, name, exp_folds, task_files))
        manifest = {"format": FORMAT, "version": VERSION, "task": task_name, "checkpoint": checkpoint,
                    "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "experiments": entries, "missing_task_files": sorted({"dataset.json", "fingerprint.json"}
                                                                         - set(task_files))}
        atomic_write_text(stage / "README.md", _readme(manifest))
        files = sorted(p.relative_to(stage).as_posix() for p in stage.rglob("*") if p.is_file())
        manifest["files"] = files + [MANIFEST]
        atomic_write_json(stage / MANIFEST, manifest)
        with atomic_path(out_zip, suffix=".zip") as tmp_zip:
            with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for rel in manifest["files"]:
                    zf.write(stage / rel, rel)
    return manifest


# ------------------------------------------------------------------ read
def _safe_member(name: str, info: zipfile.ZipInfo, zip_file: Path) -> PurePosixPath:
    path = PurePosixPath(name)
    absolute = name.startswith("/") or "\\" in name or (bool(path.parts) and ":" in path.parts[0])
    if not path.parts or absolute or ".." in path.parts:
        raise DeploymentError(f"{zip_file}: unsafe path '{name}' in the zip (absolute or leaving its folder)")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DeploymentError(f"{zip_file}: '{name}' is a symbolic link (not allowed in a model file)")
    return path


def read_manifest(zip_file: Path, limits: ZipLimits | None = None) -> dict:
    """Open, check and return the manifest of a model zip; any problem is one DeploymentError line."""
    zip_file = Path(zip_file)
    limits = limits or ZipLimits()
    if not zip_file.is_file():
        raise DeploymentError(f"{zip_file}: model file not found")
    try:
        with zipfile.ZipFile(zip_file) as zf:
            infos = zf.infolist()
            limits.check_declared(infos, MANIFEST, zip_file)
            for info in infos:
                _safe_member(info.filename, info, zip_file)
            names = {i.filename for i in infos if not i.is_dir()}
            if MANIFEST not in names:
                raise DeploymentError(f"{zip_file}: not a c2fnas-auto model (no {MANIFEST}; was it written by "
                                      "c2fnas_export_model?)")
            manifest = _parse_manifest(limits.read_manifest_bytes(zf, MANIFEST, zip_file), zip_file)
            bad = zf.testzip()
            if bad is not None:
                raise DeploymentError(f"{zip_file}: corrupt member '{bad}' (CRC mismatch)")
    except zipfile.BadZipFile as exc:
        raise DeploymentError(f"{zip_file}: not a readable zip file ({exc})") from None
    except (OSError, EOFError, zipfile.LargeZipFile, NotImplementedError) as exc:
        raise DeploymentError(f"{zip_file}: cannot read the zip ({type(exc).__name__}: {exc})") from None
    listed = set(manifest["files"])
    if listed != names:
        extra, missing = sorted(names - listed), sorted(listed - names)
        raise DeploymentError(f"{zip_file}: contents differ from its manifest (missing {missing[:3]}, "
                              f"unlisted {extra[:3]})")
    task = manifest["task"]
    outside = [n for n in names if n not in (MANIFEST, "README.md") and PurePosixPath(n).parts[0] != task]
    if outside:
        raise DeploymentError(f"{zip_file}: '{outside[0]}' lies outside the task folder {task}/")
    return manifest


def _parse_manifest(raw: bytes, zip_file: Path) -> dict:
    try:
        manifest = parse_json(raw, f"{zip_file}: {MANIFEST}", "the manifest")
    except InputError as exc:
        raise DeploymentError(str(exc)) from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DeploymentError(f"{zip_file}: {MANIFEST} does not describe a c2fnas-auto model")
    if manifest.get("version") != VERSION:
        raise DeploymentError(f"{zip_file}: model file version {manifest.get('version')} is not supported "
                              f"(this c2fnas-auto reads version {VERSION})")
    task = manifest.get("task")
    exps = manifest.get("experiments")
    if not isinstance(task, str) or not task or "/" in task or task in (".", "..") \
            or not isinstance(exps, list) or not exps or not isinstance(manifest.get("files"), list):
        raise DeploymentError(f"{zip_file}: {MANIFEST} lacks a task, experiments or the file list")
    if parse_task_folder_name(task) is None or "\\" in task:
        raise DeploymentError(f"{zip_file}: {MANIFEST} names task {task!r}, not a TaskNN_* or DatasetNNN_* folder")
    for e in exps:
        name = e.get("name") if isinstance(e, dict) else None
        if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", "..") \
                or not isinstance(e.get("folds"), list) or not e["folds"]:
            raise DeploymentError(f"{zip_file}: {MANIFEST} has a malformed experiment entry {e!r:.80}")

    checkpoint = manifest.get("checkpoint", "final")
    if not isinstance(checkpoint, str) or checkpoint not in CHECKPOINTS:
        raise DeploymentError(f"{zip_file}: {MANIFEST} names checkpoint {checkpoint!r:.40}, not one of "
                              f"{', '.join(CHECKPOINTS)}")
    check_names(manifest, MANIFEST, f"checkpoint_{checkpoint}.pth", zip_file)
    return manifest


def _check_extracted(root: Path, manifest: dict, zip_file: Path) -> list[Path]:
    """Every listed fold checkpoint rebuilds its network; returns the experiment folders."""
    name = checkpoint_file_name(manifest.get("checkpoint", "final"))
    folders = []
    for e in manifest["experiments"]:
        folder = root / manifest["task"] / e["name"]
        for fold in e["folds"]:
            try:
                trained_network(folder / f"fold_{fold}" / name)
            except C2FNASError as exc:
                raise DeploymentError(f"{zip_file}: experiment {e['name']} fold {fold}: "
                                      f"{str(exc).splitlines()[0]}") from None
        folders.append(folder)
    return folders


def extract_checked(zip_file: Path, into: Path, limits: ZipLimits | None = None) -> tuple[dict, list[Path]]:
    """Extract a checked model zip below the existing folder `into`; returns (manifest, experiment folders)."""
    limits = limits or ZipLimits()
    manifest = read_manifest(zip_file, limits)
    left = limits.max_total_bytes
    try:
        with zipfile.ZipFile(zip_file) as zf:
            for rel in manifest["files"]:
                target = into / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(rel) as src, open(target, "wb") as dst:
                    left -= copy_bounded(src, dst, left, Path(zip_file), limits)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise DeploymentError(f"{zip_file}: extraction failed ({type(exc).__name__}: {exc})") from None
    return manifest, _check_extracted(into, manifest, Path(zip_file))


@contextmanager
def opened_model(zip_file: Path, limits: ZipLimits | None = None) -> Iterator[list[Path]]:
    """The experiment folders of a model zip, extracted to a temporary folder for as long as needed."""
    with tempfile.TemporaryDirectory(prefix="c2fnas-model-") as tmp:
        _, folders = extract_checked(Path(zip_file), Path(tmp), limits)
        yield folders


def expand_model_zips(folders: Sequence[str | os.PathLike], stack: ExitStack,
                      limits: ZipLimits | None = None) -> list[Path]:
    """Model folders as given, with each `.zip` replaced by the experiments it holds.

    A plain file is read as a model zip whatever its suffix, so a renamed zip works and
    any other file gets the zip checks' one-line error instead of "folder not found"."""
    out: list[Path] = []
    for f in folders:
        p = Path(f)
        if p.is_file() or (p.suffix.lower() == ".zip" and not p.is_dir()):
            out += stack.enter_context(opened_model(p, limits))
        else:
            out.append(p)
    return out


# --------------------------------------------------------------- install
def install_model_zip(zip_file: Path, results_root: Path, overwrite: bool = False,
                      limits: ZipLimits | None = None) -> list[Path]:
    """Install every experiment of a model zip into `results_root/<task>/<experiment>`.

    All checks run on a temporary extraction inside `results_root` (same file system, so the
    final step is a rename); an existing experiment is an error unless `overwrite`."""
    results_root = Path(results_root)
    results_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".c2fnas-install-", dir=results_root))
    try:
        manifest, folders = extract_checked(Path(zip_file), tmp, limits)
        task_dir = results_root / manifest["task"]
        targets = [task_dir / f.name for f in folders]
        existing = [t for t in targets if t.exists()]
        if existing and not overwrite:
            raise DeploymentError(f"{existing[0]}: already installed (pass --overwrite to replace it)")
        task_dir.mkdir(parents=True, exist_ok=True)
        _move_into_place(folders, targets, tmp)
        return targets
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_into_place(folders: Sequence[Path], targets: Sequence[Path], tmp: Path) -> None:
    """Rename every extracted experiment onto its target; on failure undo the renames done so far."""
    done: list[tuple[Path, Path, Path | None]] = []
    try:
        for src, dst in zip(folders, targets):
            old = None
            if dst.exists():
                old = tmp / f"replaced-{dst.name}"
                dst.rename(old)
            src.rename(dst)
            done.append((src, dst, old))
    except OSError as exc:
        for src, dst, old in reversed(done):
            dst.rename(src)
            if old is not None:
                old.rename(dst)
        raise DeploymentError(f"{targets[0].parent}: cannot move the model into place ({exc}); "
                              "nothing installed") from None
