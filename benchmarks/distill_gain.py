"""Does distillation help? The protocol: teacher, baseline student, Ultralytics' built-in KD, detkd, ablations.

    python benchmarks/distill_gain.py --data ../shared/datasets/raccoon --teacher-cfg yolov8s.yaml \\
        --teacher-epochs 150 --student yolov8n.yaml --epochs 100 --imgsz 640 --batch 16 --seeds 0 1 --device 0

Every student run uses identical data, epochs, image size, batch, augmentation and seed (per seed); only the
teacher signal differs. Rows:

* ``teacher``               — trained here from ``--teacher-cfg`` (or ``--teacher`` given), validated;
* ``baseline``              — the student alone (Ultralytics DetectionTrainer), every seed;
* ``ultralytics_kd``        — Ultralytics 8.4 built-in ``distill_model=`` (score-weighted feature L2), every seed;
* ``detkd``                 — detkd's default recipe, every seed;
* ablations (``--ablations``, seed 0): cls-only, box-only, feat-only (cwd), feat mse, feat mgd;
* ``two_teachers`` (``--teacher2-cfg``, or ``--teacher2`` given) — a second teacher trained here (``teacher2``,
  seed 1), the student distilled from both as one ensemble (``ensemble_rule='targets'``, the default), every seed;
  ``two_teachers_losses`` — the same with the sum of per-teacher losses (``ensemble_rule='losses'``), every seed;
  ``detkd_teacher2`` — detkd from the second teacher alone (with ``detkd``: the best single teacher), every seed;
* ``via_assistant`` (``--assistant``) — the assistant distilled from the teacher (``assistant``, seed 0; from the
  second teacher with ``--assistant-teacher teacher2``, when that is the large one), the student distilled from the
  assistant (teacher-assistant chain), every seed.

Metric: Ultralytics' val mAP50-95 / mAP50 of each run's best.pt on the val split. Also wall time per run and the
median train-epoch time relative to the baseline. Results: ``<out-dir>/distill_gain_<tag>.json`` and ``.md``.

Without a GPU, ``--shapes N_TRAIN N_VAL`` generates the demo's procedural dataset (at ``--imgsz``) instead of
``--data``, so the same protocol runs on a CPU in about an hour::

    python benchmarks/distill_gain.py --shapes 192 48 --imgsz 128 --batch 16 --teacher-epochs 40 --epochs 30 \
        --workers 0 --device cpu

Runs are recorded in ``<state-dir>/state.json`` as they finish; a re-run skips what is already there, so a long
protocol can be split across several invocations (GPU calls with a time limit): ``--only`` picks runs,
``--time-budget S`` starts no run expected to end after S seconds (estimated from the runs already recorded) and
exits with status 3 while runs remain — call the same command again to go on. Several processes (one per core)
may share one state: each run reads it when it starts, and ``--wait-for-teachers MIN`` lets a distillation run due
before another process has recorded its teacher wait for it instead of stopping. On a fresh machine (the run
folders gone, the committed results file there) ``--reuse-results`` takes that file's baseline runs — nothing later
needs their checkpoints — when it was run with the same settings; teachers and distillation runs train again. A
run cut off by a stopped process (its ``weights/last.pt`` not final) is resumed where it stopped the next time the
protocol runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ABLATIONS = {
    "cls_only": {"box_kd": 0.0, "feat_kd": 0.0},
    "box_only": {"cls_kd": 0.0, "feat_kd": 0.0},
    "feat_only_cwd": {"cls_kd": 0.0, "box_kd": 0.0, "feat_method": "cwd"},
    "feat_only_mse": {"cls_kd": 0.0, "box_kd": 0.0, "feat_method": "mse"},
    "feat_only_mgd": {"cls_kd": 0.0, "box_kd": 0.0, "feat_method": "mgd"},
}
LABELS = {
    "teacher": "teacher", "baseline": "baseline (student alone)", "ultralytics_kd": "Ultralytics built-in distill_model",
    "detkd": "detkd default recipe", "cls_only": "ablation: cls KD only", "box_only": "ablation: box (LD) KD only",
    "feat_only_cwd": "ablation: feature KD only (cwd)", "feat_only_mse": "ablation: feature KD only (mse)",
    "feat_only_mgd": "ablation: feature KD only (mgd)",
    "teacher2": "second teacher", "two_teachers": "detkd, two teachers (ensemble)",
    "two_teachers_losses": "detkd, two teachers (sum of per-teacher losses)",
    "detkd_teacher2": "detkd from the second teacher alone",
    "assistant": "assistant (distilled from the teacher)", "via_assistant": "detkd via the assistant (TA chain)",
}
TWO_TEACHER_KINDS = {"two_teachers": {}, "two_teachers_losses": {"ensemble_rule": "losses"}}  # kind: its KD settings
TEACHER_KINDS = {"teacher", "teacher2"}  # trained from scratch with --teacher-epochs
PLAIN_KINDS = {"teacher", "teacher2", "baseline"}  # trained without a teacher


def teacher_sources(kind: str, args) -> list[str]:
    """The runs a distilled kind learns from: ``teacher``, ``teacher2`` (the second teacher) or ``assistant``."""
    if kind in TWO_TEACHER_KINDS:
        return ["teacher", "teacher2"]
    return {"detkd_teacher2": ["teacher2"], "via_assistant": ["assistant"],
            "assistant": [args.assistant_teacher]}.get(kind, ["teacher"])


def train_run(kind: str, args, data_yaml: str, seed: int, teacher: str | None, name: str,
              others: dict | None = None) -> dict:
    """Train one run and return its summary (metrics, times). ``others``: best.pt of ``teacher2`` / ``assistant``."""
    from detkd.config import KDConfig
    from detkd.engine.callbacks import EpochTimer
    from detkd.engine.trainer import DistillationTrainer
    from ultralytics.models.yolo.detect import DetectionTrainer

    others = others or {}
    model = {"teacher": args.teacher_cfg, "teacher2": args.teacher2_cfg, "assistant": args.assistant}.get(kind,
                                                                                                    args.student)
    epochs = args.teacher_epochs if kind in TEACHER_KINDS else args.epochs
    overrides = dict(model=model, data=data_yaml, epochs=epochs, imgsz=args.imgsz, batch=args.batch,
                     device=args.device, workers=args.workers, seed=seed, plots=False, project=str(args.runs),
                     name=name, exist_ok=True, **args.train_args)
    resumed = resume_point(Path(args.runs) / name)
    if resumed:  # a run cut off by a stopped process: Ultralytics resumes it (same args, RNG, optimizer, adapters)
        overrides["resume"] = str(resumed)
        print(f"    resuming {name} from {resumed}", flush=True)
    kd_used = None
    if kind in PLAIN_KINDS:
        trainer = DetectionTrainer(overrides=overrides)
    elif kind == "ultralytics_kd":
        trainer = DetectionTrainer(overrides={**overrides, "distill_model": teacher})
    else:
        settings = {**args.kd, **ABLATIONS.get(kind, {}), **TWO_TEACHER_KINDS.get(kind, {}),
                    **args.variants.get(kind, {})}
        paths = [{"teacher": teacher, **others}.get(k) for k in teacher_sources(kind, args)]
        kd = KDConfig(teacher=paths if len(paths) > 1 else paths[0], validate_teacher=False, **settings)
        trainer = DistillationTrainer(overrides=overrides, kd=kd)
        kd_used = {k: v for k, v in kd.to_dict().items() if k != "teacher"}  # the recipe as run, not as named
    timer = EpochTimer().attach(trainer)
    t0 = time.perf_counter()
    trainer.train()
    m = trainer.metrics or {}
    return {
        "kind": kind, "seed": seed, "epochs": epochs, "wall_s": time.perf_counter() - t0, "resumed": bool(resumed),
        "median_epoch_s": timer.median(), "best": str(trainer.best),
        "mAP50-95": float(m.get("metrics/mAP50-95(B)", 0.0)), "mAP50": float(m.get("metrics/mAP50(B)", 0.0)),
        "curve": read_curve(Path(trainer.save_dir) / "results.csv"), "kd": kd_used,
    }


def resume_point(run_dir: Path) -> Path | None:
    """``weights/last.pt`` of a run that was cut off before it finished, else None.

    A folder left without a checkpoint (cut off in its first epoch) is cleared of its partial ``results.csv`` so a
    fresh run does not append to it."""
    from detkd.engine.checkpoints import run_state

    state, last = run_state(run_dir)
    if state == "interrupted":
        return last
    (run_dir / "results.csv").unlink(missing_ok=True)
    return None


def read_curve(results_csv: Path) -> dict[str, list[float]]:
    """Per-epoch columns of a run's results.csv (val mAP, train losses incl. KD terms, the KD guard's alignment)."""
    import csv

    if not results_csv.is_file():
        return {}
    with open(results_csv) as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    keep = ["epoch", "metrics/mAP50-95(B)", "metrics/mAP50(B)", "train/box_loss", "train/cls_loss", "train/dfl_loss",
            "train/cls_kd", "train/box_kd", "train/feat_kd", "train/kd_align_cls", "train/kd_align_box"]
    return {k: [float(r[k]) for r in rows] for k in keep if rows and k in rows[0]}


REUSABLE_KINDS = {"baseline"}  # --reuse-results: a result nothing else needs the checkpoint of
SAME_RUN_SETTINGS = ("data", "shapes", "student", "epochs", "imgsz", "batch", "train_args")  # what a baseline trains
WAIT_POLL_S = 30.0  # --wait-for-teachers: how often the shared state is read again
NOT_SETTINGS = {"variants", "variant_items",  # recorded parsed, below
                "wait_for_teachers", "reuse_results"}  # when runs start and where earlier ones come from, not what runs


def teachers_of(kind: str, args, state: dict) -> tuple[dict, str | None]:
    """({source: checkpoint or None} for the teacher, teacher2 and assistant sources as ``state`` has them; the first
    source ``kind`` learns from that is not trained yet, or None). A run waits only for the teachers it learns from."""
    sources = {"teacher": args.teacher or state.get("teacher"),
               "teacher2": args.teacher2 or state.get("teacher2"), "assistant": state.get("assistant")}
    needs = None if kind in PLAIN_KINDS else next((k for k in teacher_sources(kind, args) if not sources[k]), None)
    return sources, needs


def reusable_runs(results_file: Path, args) -> dict:
    """The runs of an earlier results file of this tag that ``--reuse-results`` takes (the baselines: no later run
    needs their checkpoints), marked ``reused_from``; {} without the file. A file trained with other settings of what
    a baseline trains (``SAME_RUN_SETTINGS``) is refused: its baselines are not this protocol's."""
    if not results_file.exists():
        return {}
    earlier = json.loads(results_file.read_text())
    now, then = {k: str(v) for k, v in vars(args).items()}, earlier.get("settings", {})
    differ = [f"{k} {then.get(k)} (now {now.get(k)})" for k in SAME_RUN_SETTINGS if then.get(k) != now.get(k)]
    if differ:
        raise SystemExit(f"--reuse-results: {results_file.name} was run with other settings: {'; '.join(differ)}. "
                         f"Run without --reuse-results, or with the same settings.")
    return {key: {**run, "reused_from": results_file.name} for key, run in earlier.get("runs", {}).items()
            if run.get("kind") in REUSABLE_KINDS}


def run_key(kind: str, seed: int) -> str:
    """The name of one run in state.json and on the command line (``--only baseline_s1``)."""
    return f"{kind}_s{seed}"


def expected_wall_s(state: dict, kind: str) -> float | None:
    """How long a run of ``kind`` should take: the longest recorded run of the same role (teacher / student)."""
    same_role = [r["wall_s"] for r in state["runs"].values()
                 if (r["kind"] in TEACHER_KINDS) == (kind in TEACHER_KINDS)]
    return max(same_role) if same_role else None


def plan(args, only: bool = True) -> list[tuple[str, int]]:
    """(kind, seed) of every run of the protocol; with ``only``, just those ``--only`` selects."""
    runs = [("teacher", 0)] if not args.teacher else []
    two = bool(args.teacher2_cfg or args.teacher2)
    runs += [("teacher2", 1)] if args.teacher2_cfg and not args.teacher2 else []  # seed 1: another teacher
    runs += [("assistant", 0)] if args.assistant else []
    runs += [] if getattr(args, "baseline_from", None) else [("baseline", s) for s in args.seeds]
    runs += [("detkd", s) for s in args.seeds]
    runs += [(k, s) for k in (*TWO_TEACHER_KINDS, "detkd_teacher2") for s in args.seeds] if two else []
    runs += [("via_assistant", s) for s in args.seeds] if args.assistant else []
    if args.ultralytics_kd:
        runs += [("ultralytics_kd", s) for s in args.seeds]
    runs += [(k, s) for k in args.variants for s in args.seeds]
    if args.ablations:
        runs += [(k, args.seeds[0]) for k in ABLATIONS]
    if only and args.only:  # kinds ("baseline") or single runs ("baseline_s1")
        runs = [r for r in runs if r[0] in args.only or run_key(*r) in args.only]
    return runs


def aggregate(state: dict) -> dict:
    """Per kind: mean and spread (half the min-max range, and sample std) over seeds."""
    rows = {}
    plain = [r["median_epoch_s"] for r in state["runs"].values() if r["kind"] == "baseline"]
    plain_epoch = statistics.median(plain) if plain else None
    for r in state["runs"].values():
        rows.setdefault(r["kind"], []).append(r)
    out = {}
    for kind, rs in rows.items():
        maps = [r["mAP50-95"] for r in rs]
        out[kind] = {
            "n": len(rs), "seeds": sorted(r["seed"] for r in rs),
            "mAP50-95": statistics.mean(maps), "mAP50-95_runs": maps,
            "spread": (max(maps) - min(maps)) / 2 if len(maps) > 1 else None,
            "std": statistics.stdev(maps) if len(maps) > 1 else None,
            "mAP50": statistics.mean(r["mAP50"] for r in rs),
            "wall_s": statistics.mean(r["wall_s"] for r in rs),
            "epoch_ratio": (statistics.mean(r["median_epoch_s"] for r in rs) / plain_epoch)
            if plain_epoch and kind not in TEACHER_KINDS else None,
        }
    return out


def render(result: dict) -> str:
    from detkd.bench.report import machine_line

    s, m, agg = result["settings"], result["machine"], result["summary"]
    base = agg.get("baseline", {}).get("mAP50-95")
    teacher_run = result["runs"].get("teacher_s0", {})
    teacher_epochs = teacher_run.get("epochs", s["teacher_epochs"])  # as trained (a state may outlive the flag)
    lines = [f"# Distillation gain — {s['tag']}", "",
             f"Machine: {machine_line(m)}.", "",
             f"Student {s['student']}, {s['epochs']} epochs, {s['imgsz']} px, batch {s['batch']}; teacher "
             f"{s['teacher_cfg'] + ' trained here, ' + str(teacher_epochs) + ' epochs' if s['teacher'] in (None, 'None') else s['teacher']}. "
             f"Data: {s['data']}."
             + (f" Second teacher: {s['teacher2']}." if s.get("teacher2") not in (None, "None") else
                f" Second teacher: {s['teacher2_cfg']} trained here (seed 1)." if s.get("teacher2_cfg") not in
                (None, "None") else "")
             + (f" Assistant {s['assistant']}, distilled from the "
                f"{'second teacher' if s.get('assistant_teacher') == 'teacher2' else 'teacher'}."
                if s.get("assistant") not in (None, "None") else ""), "",
             "| run | seeds | mAP50-95 (mean ± spread) | per seed | Δ vs baseline | mAP50 | epoch time vs baseline | wall s |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    labels = {**LABELS, "assistant": "assistant (distilled from the "
                                     f"{'second teacher' if s.get('assistant_teacher') == 'teacher2' else 'teacher'})"}
    order = ["teacher", "teacher2", "assistant", "baseline", "ultralytics_kd", "detkd", "detkd_teacher2", "two_teachers",
             "two_teachers_losses", "via_assistant",
             *settings_variants(s), *ABLATIONS]
    for kind in [k for k in order if k in agg]:
        a = agg[kind]
        spread = f" ± {a['spread']:.3f}" if a["spread"] is not None else ""
        delta = f"{a['mAP50-95'] - base:+.3f}" if base is not None and kind != "baseline" else ""
        ratio = f"{a['epoch_ratio']:.2f}x" if a["epoch_ratio"] else ""
        label = labels.get(kind, f"variant `{kind}`: {s.get('variants', {}).get(kind, '')}" if kind in
                           settings_variants(s) else kind)
        per_seed = " / ".join(f"{r['mAP50-95']:.3f}" for r in sorted(
            (r for r in result["runs"].values() if r["kind"] == kind), key=lambda r: r["seed"]))
        lines.append(f"| {label} | {','.join(map(str, a['seeds']))} | {a['mAP50-95']:.3f}{spread} | {per_seed} | "
                     f"{delta} | {a['mAP50']:.3f} | {ratio} | {a['wall_s']:.0f} |")
    if result.get("verdict"):
        lines += ["", f"**Teacher verdict:** {result['verdict']}"]
    if s.get("baseline_from") not in (None, "None"):
        lines += ["", f"**Baseline:** not run here — the dataset's baseline is in distill_gain_{s['baseline_from']} "
                      f"(one per dataset; `recipe_summary.py` judges these runs against it)."]
    reused = sorted(k for k, r in result["runs"].items() if r.get("reused_from"))
    if reused:
        lines += ["", f"**Reused:** {', '.join(reused)} from an earlier session's results file of this tag (the same "
                      f"settings; `--reuse-results`; the epoch-time ratios compare with that session's baseline "
                      f"epochs)."]
    if result.get("pending"):
        lines += ["", f"**Not run yet:** {', '.join(result['pending'])}."]
    return "\n".join(lines) + "\n"


def settings_variants(settings: dict) -> list[str]:
    v = settings.get("variants", {})
    return list(v) if isinstance(v, dict) else []


def parse_variants(items: list[str]) -> dict[str, dict]:
    """``NAME=JSON`` items → {name: KDConfig overrides}; names become run kinds (``--only NAME``)."""
    out = {}
    for item in items:
        name, _, spec = item.partition("=")
        if not name.isidentifier() or name in LABELS:
            raise SystemExit(f"--variant '{item}': NAME must be a new identifier (not {', '.join(LABELS)})")
        out[name] = json.loads(spec or "{}")
    return out


def teacher_verdict(agg: dict) -> str | None:
    t, b = agg.get("teacher"), agg.get("baseline")
    if not t or not b:
        return None
    if t["mAP50-95"] <= b["mAP50-95"]:
        return (f"the teacher ({t['mAP50-95']:.3f}) is weaker than the student trained alone ({b['mAP50-95']:.3f}): "
                f"distilling from it will not help — train it longer or pick another.")
    return f"the teacher ({t['mAP50-95']:.3f}) is above the baseline student ({b['mAP50-95']:.3f}): worth distilling."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "raccoon"))
    p.add_argument("--shapes", type=int, nargs=2, metavar=("N_TRAIN", "N_VAL"),
                   help="generate the demo's procedural shapes dataset (at --imgsz) instead of --data")
    p.add_argument("--tag", help="results name (default: the dataset folder name)")
    p.add_argument("--teacher", help="existing teacher .pt (skips teacher training)")
    p.add_argument("--teacher-cfg", default="yolov8s.yaml")
    p.add_argument("--teacher-epochs", type=int, default=150)
    p.add_argument("--teacher2-cfg", help="also train a second teacher (seed 1) and distil from both (two_teachers)")
    p.add_argument("--teacher2", help="an existing second teacher .pt (instead of training one from --teacher2-cfg)")
    p.add_argument("--assistant", help="also distil this model from the teacher (assistant, seed 0) and the student "
                                       "from it (via_assistant): the teacher-assistant chain")
    p.add_argument("--assistant-teacher", choices=("teacher", "teacher2"), default="teacher",
                   help="which teacher the assistant learns from (the larger one)")
    p.add_argument("--student", default="yolov8n.yaml")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--device", default="0")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--ultralytics-kd", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--ablations", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--variant", dest="variant_items", action="append", default=[], metavar="NAME=JSON",
                   help="a named KD configuration (KDConfig overrides on top of --kd) run on every seed; repeatable")
    p.add_argument("--baseline-from", metavar="TAG",
                   help="the dataset's baseline is in the results tagged TAG (the recipe protocol runs one baseline "
                        "per dataset): no baseline here, and the report says where it is")
    p.add_argument("--only", nargs="+", help="run only these kinds now (teacher baseline detkd ultralytics_kd ...)")
    p.add_argument("--kd", default="{}", help="JSON of KDConfig overrides for all detkd runs")
    p.add_argument("--train-args", default="{}", help="JSON of extra Ultralytics training arguments for all runs")
    p.add_argument("--time-budget", type=float, metavar="S",
                   help="start no run expected to finish after S seconds; exit 3 while runs remain")
    p.add_argument("--wait-for-teachers", type=float, default=0.0, metavar="MIN",
                   help="a run due before a teacher it learns from is done waits up to MIN minutes for another "
                        "process to record it in the shared state (read every 30 s) instead of stopping")
    p.add_argument("--reuse-results", action="store_true",
                   help="take the baseline runs of this tag's results file in --out-dir into the state when they are "
                        "not there (a fresh machine: the run folders are gone, the committed results are not)")
    p.add_argument("--runs", type=Path, default=Path("runs/distill_gain"))
    p.add_argument("--state-dir", type=Path, help="where state.json lives (default: --runs)")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    args.kd, args.train_args = json.loads(args.kd), json.loads(args.train_args)
    args.variants = parse_variants(args.variant_items)
    args.runs = args.runs.resolve()  # Ultralytics puts a relative project under its own runs_dir, not here

    from detkd.bench.machine import machine_info
    from detkd.api import resolve_data

    if args.shapes:
        from detkd.data.synthetic import SyntheticSpec, make_shapes_dataset

        n_train, n_val = args.shapes
        args.data = make_shapes_dataset(args.runs / f"shapes_{n_train}_{n_val}_{args.imgsz}px",
                                        SyntheticSpec(n_train=n_train, n_val=n_val, imgsz=args.imgsz))
    data_yaml = resolve_data(args.data)
    tag = args.tag or ("shapes" if args.shapes else Path(str(args.data).rstrip("/")).name)
    state_dir = args.state_dir or args.runs
    state_dir.mkdir(parents=True, exist_ok=True)
    state_file = state_dir / "state.json"

    def read_state() -> dict:  # shared with the other processes of a protocol split over several cores
        return json.loads(state_file.read_text()) if state_file.exists() else {"runs": {}}

    if args.reuse_results:
        state = read_state()
        earlier = {k: v for k, v in reusable_runs(args.out_dir / f"distill_gain_{tag}.json", args).items()
                   if k not in state["runs"]}
        if earlier:
            print(f"reused from the results file: {' '.join(earlier)}", flush=True)
            state["runs"].update(earlier)
            state_file.write_text(json.dumps(state, indent=2))
    todo, t_start = plan(args), time.perf_counter()
    for i, (kind, seed) in enumerate(todo):
        key = run_key(kind, seed)
        state = read_state()  # re-read before each run: another process may have trained a teacher meanwhile
        if key in state["runs"]:
            print(f"[{i + 1}/{len(todo)}] {key}: done before, reused", flush=True)
            continue
        sources, needs = teachers_of(kind, args, state)
        if needs and args.wait_for_teachers:
            print(f"[{i + 1}/{len(todo)}] {key}: waiting up to {args.wait_for_teachers:g} min for the '{needs}' run "
                  f"(another process trains it) ...", flush=True)
            deadline = time.monotonic() + 60 * args.wait_for_teachers
            while needs and time.monotonic() < deadline:
                time.sleep(min(WAIT_POLL_S, max(0.0, deadline - time.monotonic())))
                sources, needs = teachers_of(kind, args, read_state())
        teacher, others = sources["teacher"], {k: v for k, v in sources.items() if k != "teacher"}
        if needs == "teacher":
            raise SystemExit("no teacher yet: run the 'teacher' kind first or pass --teacher")
        if needs:
            raise SystemExit(f"{kind} needs the '{needs}' run first (--only {needs}_s0)")
        expected = expected_wall_s(state, kind)
        if args.time_budget and expected and time.perf_counter() - t_start + expected > args.time_budget:
            print(f"[{i + 1}/{len(todo)}] {key}: not started, expected {expected:.0f} s would pass the "
                  f"{args.time_budget:.0f} s time budget", flush=True)
            break
        print(f"[{i + 1}/{len(todo)}] {key} ...", flush=True)
        result = train_run(kind, args, data_yaml, seed, teacher, key, others=others)
        state = read_state()  # re-read before writing: the other processes' runs since this one started stay
        state["runs"][key] = result
        state["machine"] = machine_info(args.device)  # the machine the runs were trained on
        if kind == "teacher":
            state["teacher"] = state["runs"][key]["best"]
        if kind in {"teacher2", "assistant"}:
            state[kind] = state["runs"][key]["best"]
        state_file.write_text(json.dumps(state, indent=2))

    state = read_state()  # the report: every run so far, this process's and the others'
    pending, left_now = ([run_key(*r) for r in runs if run_key(*r) not in state["runs"]]
                         for runs in (plan(args, only=False), todo))
    summary = aggregate(state)
    settings = {**{k: str(v) for k, v in vars(args).items() if k not in NOT_SETTINGS}, "tag": tag,
                "variants": args.variants}
    if "teacher_s0" in state["runs"]:
        settings["teacher"] = None  # trained here: described by teacher_cfg x teacher_epochs
    result = {"machine": state.get("machine") or machine_info(args.device), "settings": settings,
              "summary": summary, "runs": state["runs"], "verdict": teacher_verdict(summary),
              "pending": pending}
    from detkd.bench.report import write_json_and_markdown

    write_json_and_markdown(args.out_dir / f"distill_gain_{tag}", result, render(result))
    if left_now:
        print(f"{len(left_now)} run(s) still to do ({' '.join(left_now)}): run the same command again to go on.")
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
