"""Run one dataset x teacher size of the recipe protocol with the settings ``recipe_protocol.json`` fixes for it.

The protocol's runs are long (hours per confirmation dataset on a 2-core CPU) and are split over sessions and over
parallel processes; typing each ``distill_gain.py`` command by hand invites a wrong epoch count or image size. This
builds the command from the protocol file (data, image size, student epochs, the teacher's config and epochs, the
results tag) and runs it, or prints it (``--print``)::

    python benchmarks/recipe_protocol_run.py tables yolov8s                  # teacher, baseline, detkd, built-in
    python benchmarks/recipe_protocol_run.py tables yolov8m --only teacher   # one kind now (another core: others)
    python benchmarks/recipe_protocol_run.py chess yolov8s --print
    python benchmarks/recipe_protocol_run.py tables yolo26s --yolo26         # a YOLO26-n student row (item 4)

The baseline runs once per dataset (it does not depend on the teacher): with the first teacher size the protocol
lists for the dataset; ``recipe_summary.py`` judges the other sizes against it. On the confirmation set only the
candidate (``detkd``, the default recipe) and the baselines run; extra ``distill_gain.py`` arguments after ``--``
are refused there (no variants, no tuning). Runs go to ``runs/protocol/<tag>`` (``--runs-root``); re-running skips
what is done and resumes an interrupted run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL = ROOT / "benchmarks" / "recipe_protocol.json"
KINDS = ("teacher", "baseline", "detkd", "ultralytics_kd")


class ProtocolRunError(ValueError):
    """A dataset, teacher size or argument the protocol does not allow (one line, exit 2)."""


def find_entry(protocol: dict, dataset: str) -> tuple[str, dict]:
    """(set name, the dataset's entry) of ``dataset`` in the protocol."""
    for set_name, entries in protocol["sets"].items():
        if dataset in entries:
            return set_name, entries[dataset]
    known = ", ".join(name for entries in protocol["sets"].values() for name in entries)
    raise ProtocolRunError(f"'{dataset}' is not a dataset of the protocol ({known}).")


def build_command(protocol: dict, dataset: str, teacher: str, only: list[str] | None = None,
                  runs_root: str = "runs/protocol", extra: list[str] | None = None) -> list[str]:
    """The ``distill_gain.py`` argv (after the script) for ``dataset`` with the ``teacher`` size."""
    set_name, entry = find_entry(protocol, dataset)
    if teacher not in entry["teachers"]:
        raise ProtocolRunError(f"'{teacher}' is not a teacher size of '{dataset}' ({', '.join(entry['teachers'])}).")
    t = entry["teachers"][teacher]
    teacher_args = ["--teacher-cfg", t["cfg"], "--teacher-epochs", str(t["epochs"])]
    return _command(protocol, set_name, entry, dataset, entry["results"], teacher, teacher_args,
                    protocol["defaults"]["student"], only, runs_root, extra)


def build_yolo26_command(protocol: dict, dataset: str, teacher: str, only: list[str] | None = None,
                         runs_root: str = "runs/protocol", extra: list[str] | None = None) -> list[str]:
    """The ``distill_gain.py`` argv of the protocol's YOLO26-n rows (``yolo26_students``): the dataset's own image
    size and epochs; the YOLOv8-s teacher is the main protocol's (its ``state.json`` under ``runs_root``), trained
    with the same settings only when there is none; the YOLO26-s teacher gets the YOLOv8-s teacher's epochs."""
    block = protocol.get("yolo26_students") or {}
    set_name, entry = find_entry(protocol, dataset)
    tags = (block.get("datasets") or {}).get(dataset)
    if not tags:
        raise ProtocolRunError(f"'{dataset}' has no YOLO26-n rows in the protocol "
                               f"({', '.join(block.get('datasets') or {}) or 'none'}).")
    if teacher not in tags:
        raise ProtocolRunError(f"'{teacher}' is not a YOLO26-n row's teacher ({', '.join(tags)}).")
    v8s = entry["teachers"]["yolov8s"]
    trained = _trained_teacher(Path(runs_root) / entry["results"]["yolov8s"]) if teacher == "yolov8s" else None
    if trained:
        teacher_args = ["--teacher", trained]
        only = [k for k in (only or KINDS) if not k.startswith("teacher")]  # reused, not trained again
    else:
        cfg = v8s["cfg"] if teacher == "yolov8s" else block["teachers"][teacher]["cfg"]
        teacher_args = ["--teacher-cfg", cfg, "--teacher-epochs", str(v8s["epochs"])]
    return _command(protocol, set_name, entry, dataset, tags, teacher, teacher_args, block["student"], only,
                    runs_root, extra)


def _trained_teacher(run_dir: Path) -> str | None:
    """The teacher a finished ``distill_gain`` run folder trained (its ``state.json``), or None."""
    state = run_dir / "state.json"
    teacher = json.loads(state.read_text()).get("teacher") if state.is_file() else None
    return teacher if teacher and Path(teacher).is_file() else None


def _command(protocol: dict, set_name: str, entry: dict, dataset: str, tags: dict, teacher: str,
             teacher_args: list[str], student: str, only, runs_root: str, extra) -> list[str]:
    """The argv shared by every row: settings of the dataset, one baseline per dataset and student (with the first
    teacher of ``tags``), no extra arguments on confirmation data."""
    if extra and set_name == "confirmation":
        raise ProtocolRunError(f"'{dataset}' is confirmation data: only the candidate and the baselines run there, "
                               f"with the protocol's settings (no extra arguments: {' '.join(extra)}).")
    kinds = list(KINDS if only is None else only)
    unknown = [k for k in kinds if k.split("_s")[0] not in KINDS]
    if unknown:
        raise ProtocolRunError(f"--only {' '.join(unknown)}: the protocol runs {', '.join(KINDS)}.")
    first = next(iter(tags))
    shared = []
    if teacher != first:  # one baseline per dataset: with the first teacher size
        kinds = [k for k in kinds if not k.startswith("baseline")]
        shared = ["--baseline-from", tags[first]]
        if not kinds:
            raise ProtocolRunError(f"the baseline of '{dataset}' runs with the first teacher size ({first}): "
                                   f"recipe_protocol_run.py {dataset} {first} --only baseline.")
    if not kinds:
        raise ProtocolRunError(f"nothing to run for '{dataset}' {teacher}: its teacher is reused, not trained.")
    d, tag = protocol["defaults"], tags[teacher]
    return ["--data", entry["data"], "--tag", tag, *teacher_args,
            "--student", student, "--epochs", str(entry["epochs"]), "--imgsz", str(entry["imgsz"]),
            "--batch", str(d["batch"]), "--workers", str(d["workers"]), "--device", d["device"],
            "--seeds", *map(str, d["seeds"]), "--no-ablations", "--runs", f"{runs_root}/{tag}",
            *shared, "--only", *kinds, *(extra or [])]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dataset")
    p.add_argument("teacher", help="a teacher size the protocol lists for the dataset (yolov8s, yolov8m)")
    p.add_argument("--only", nargs="+", help=f"run only these kinds or runs now ({', '.join(KINDS)}; e.g. detkd_s1)")
    p.add_argument("--runs-root", default="runs/protocol")
    p.add_argument("--protocol", type=Path, default=PROTOCOL)
    p.add_argument("--print", action="store_true", help="print the command instead of running it")
    p.add_argument("--yolo26", action="store_true",
                   help="the protocol's YOLO26-n student rows (yolo26_students) instead of the YOLOv8-n ones; "
                        "teacher: yolov8s or yolo26s")
    p.add_argument("--wait-for-teachers", type=float, metavar="MIN",
                   help="a distillation run due before its teacher is trained (by another process: the protocol "
                        "split over two cores) waits up to MIN minutes for it instead of stopping")
    p.add_argument("--reuse-results", action="store_true",
                   help="take the baseline runs of the row's committed results file (a fresh machine: run folders "
                        "gone) instead of training them again")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    a = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    try:
        build = build_yolo26_command if a.yolo26 else build_command
        cmd = build(json.loads(a.protocol.read_text()), a.dataset, a.teacher, a.only, a.runs_root, extra)
    except ProtocolRunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    wait = ["--wait-for-teachers", f"{a.wait_for_teachers:g}"] if a.wait_for_teachers else []  # when, not what
    reuse = ["--reuse-results"] if a.reuse_results else []  # the same runs, recorded earlier
    full = [sys.executable, str(ROOT / "benchmarks" / "distill_gain.py"), *cmd, *wait, *reuse]
    if a.print:
        print(" ".join(full))
        return 0
    return subprocess.call(full, cwd=ROOT)


if __name__ == "__main__":
    sys.exit(main())
