"""Row 8: the demo end to end (synthetic task -> plan -> tiny search -> train fold 0 ->
predict -> evaluate): wall time and the test cases' Dice, exactly as a user runs it."""

from __future__ import annotations

from benchmarks.common import Profile, RowResult, Summary, fmt_bytes, fmt_seconds, require_our
from benchmarks.procs import run_measured, tail
from benchmarks.workspace import Workspace, python_cmd
from c2fnas_auto.utils.io import load_json

ROW = "end_to_end"
TITLE = "8. End to end (demo)"
# the demo's promise: under 3 minutes on 2 CPU cores, organ >= 0.95 and lesion >= 0.5 on the test cases
ORGAN_DICE_GOAL = 0.95
LESION_DICE_GOAL = 0.5
SECONDS_GOAL = 180.0


def run(ws: Workspace, profile: Profile) -> RowResult:
    require_our("c2fnas_auto.cli.demo")
    work = ws.root / "demo"
    args = ["--workdir", str(work), "--device", "cpu", *profile.demo_args]
    res = run_measured(python_cmd("c2fnas_auto.cli.demo", *args), ws.root / "logs" / "demo.log")
    if res.returncode != 0:
        raise RuntimeError(f"c2fnas_demo exited {res.returncode}: {tail(res.log, 3)}")
    summary = load_json(work / "test_summary.json", "demo evaluation summary")
    mean = summary.get("mean", {})
    dice = {k: v.get("Dice") for k, v in mean.items()}
    organ, lesion = dice.get("1"), dice.get("2")
    from c2fnas_auto.data.synthetic import LABELS

    names = {str(v): k for k, v in LABELS.items()}
    shown = ", ".join(f"{names.get(k, 'label ' + k)} Dice {v:.3f}" for k, v in sorted(dice.items()) if v is not None)
    demo_cmd = "c2fnas_demo " + " ".join(a for a in args if a != str(work)).replace("--workdir ", "--workdir DIR ")
    return RowResult(
        row=ROW, title=TITLE,
        note=(f"`{demo_cmd}`" + ("" if not profile.demo_args else f" (shortened schedule for --{profile.name}; "
                                  "--full runs the demo's defaults)")
              + f"; peak memory {fmt_bytes(res.peak_tree_rss_bytes)} (summed PSS of the process tree)"),
        summary=Summary(ours=f"{fmt_seconds(res.seconds)}, {shown}", peer="-", ratio=None,
                        goal=f"under {SECONDS_GOAL:.0f} s, organ Dice >= {ORGAN_DICE_GOAL}, "
                             f"lesion Dice >= {LESION_DICE_GOAL}",
                        met=goal_met(res.seconds, organ, lesion)),
        details={"seconds": res.seconds, "dice": dice, "max_rss_bytes": res.max_rss_bytes,
                 "peak_tree_pss_bytes": res.peak_tree_rss_bytes, "args": args},
    )


def goal_met(seconds: float, organ: float | None, lesion: float | None) -> bool | None:
    """All three parts of the goal; None when a class was not scored (nothing to judge)."""
    if organ is None or lesion is None:
        return None
    return seconds < SECONDS_GOAL and organ >= ORGAN_DICE_GOAL and lesion >= LESION_DICE_GOAL
