"""The names a model zip's manifest may use: only the forms c2fnas_export_model writes.

The manifest decides where install moves folders (`<results>/<task>/<experiment>`) and
which checkpoints the install check loads (`<experiment>/fold_<k>/...`). A name that is
not an experiment (`search`, the folder of the user's search) would be replaced on
install, and a fold entry such as `0/../../x` would point the check at a file outside
the zip. So every name must have the project's own form, every fold's checkpoint must be
a member of the zip, and every checkpoint member must belong to a listed fold: the check
loads exactly the zip's own checkpoints, nothing else.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from c2fnas_auto.deployment.errors import DeploymentError
from c2fnas_auto.paths import parse_task_folder_name

EXPERIMENT_FORM = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}__[0-9a-f]{8}")  # <plans>__<genotype id>
FOLD_FORM = re.compile(r"[0-9]{1,3}|all")  # fold_<k> or fold_all
TASK_FORM = re.compile(r"(Task[0-9]{2,3}|Dataset[0-9]{3})_[A-Za-z0-9_.-]{1,100}")
CHECKPOINT_SUFFIX = ".pth"


def check_names(manifest: dict, manifest_name: str, checkpoint_file: str, zip_file: Path) -> None:
    """Task, experiment and fold names of `manifest` have the forms above, and the folds
    name exactly the zip's checkpoint members; else one DeploymentError line."""
    task = manifest["task"]
    where = f"{zip_file}: {manifest_name}"
    if not isinstance(task, str) or not TASK_FORM.fullmatch(task) or parse_task_folder_name(task) is None:
        raise DeploymentError(f"{where} names task {task!r:.80}, not a TaskNN_* or DatasetNNN_* folder name")
    expected: set[str] = set()
    seen: set[str] = set()
    for e in manifest["experiments"]:
        name = e["name"]
        if not EXPERIMENT_FORM.fullmatch(name):
            raise DeploymentError(f"{where} names experiment {name!r:.80}, not a '<plans>__<genotype id>' "
                                  "experiment folder (refused: install would replace that folder)")
        if name in seen:
            raise DeploymentError(f"{where} lists experiment {name} twice")
        seen.add(name)
        for fold in e["folds"]:
            if not isinstance(fold, str) or not FOLD_FORM.fullmatch(fold):
                raise DeploymentError(f"{where}: experiment {name} lists fold {fold!r:.80}, not a fold number "
                                      "or 'all'")
            expected.add(f"{task}/{name}/fold_{fold}/{checkpoint_file}")
    files = {f for f in manifest["files"] if isinstance(f, str)}
    missing = sorted(expected - files)
    if missing:
        raise DeploymentError(f"{where}: listed fold checkpoint '{missing[0]}' is not in the zip")
    unchecked = sorted(f for f in files - expected if f.endswith(CHECKPOINT_SUFFIX))
    if unchecked:
        raise DeploymentError(f"{where}: checkpoint '{unchecked[0]}' belongs to no listed fold (it would go in "
                              "unchecked)")
    stray = sorted(f for f in files if len(PurePosixPath(f).parts) > 1 and PurePosixPath(f).parts[0] == task
                   and (len(PurePosixPath(f).parts) < 3 or PurePosixPath(f).parts[1] not in seen))
    if stray:
        raise DeploymentError(f"{where}: '{stray[0]}' lies outside every listed experiment folder")
