"""Render the committed benchmark results into the docs, so the numbers in the docs never drift from the files.

    python tools/render_results.py           # rewrite docs/results.md and README.md's headline table
    python tools/render_results.py --check   # exit 1, naming what differs, when either is out of date

``docs/results.md``: one section per file in ``benchmarks/results/`` (every ``*.json`` with the ``*.md`` its
benchmark rendered beside it), grouped by benchmark in a fixed order, each headed by the benchmark, the dataset, the
machine and the seeds, read from the JSON. ``README.md``: the table between ``<!-- results:headline -->`` and
``<!-- /results:headline -->`` is built from the JSON files named in :data:`HEADLINE` (nothing in it is typed by
hand); the tables between ``<!-- results:classes -->`` and ``<!-- /results:classes -->`` (README.md and
docs/classes.md) from every ``class_incremental_*.json``. ``tests/test_docs.py`` fails when any differs from what
this script renders.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RESULTS_PAGE = ROOT / "docs" / "results.md"
README = ROOT / "README.md"
SPEED_PAGE = ROOT / "docs" / "speed.md"
EXPORT_PAGE = ROOT / "docs" / "export.md"
CLASSES_PAGE = ROOT / "docs" / "classes.md"
COMMAND = "python tools/render_results.py"

# (file-name prefix, the script that writes those files, what it measures), in the order of the results page
BENCHMARKS = (
    ("recipe", "benchmarks/recipe_summary.py", "the default recipe across datasets (acceptance checks)"),
    ("distill_gain", "benchmarks/distill_gain.py", "distillation gain: baseline vs detkd vs Ultralytics' built-in"),
    ("unlabeled_gain", "benchmarks/unlabeled_gain.py", "distilling on unlabelled images"),
    ("demo_seeds", "benchmarks/demo_seeds.py", "the demo's recipe over several seeds"),
    ("kd_overhead", "benchmarks/kd_overhead.py", "the cost of distillation: epoch time, teacher forward"),
    ("kd_profile", "benchmarks/kd_profile.py", "the cost of distillation: each part of one KD step, peak memory"),
    ("kd_memory", "benchmarks/kd_memory.py", "peak memory of a KD step, verified weights"),
    ("speed", "benchmarks/speed.py", "inference speed, teacher vs student"),
    ("deploy_gain", "benchmarks/deploy_gain.py", "deployment: torch vs ONNX Runtime / OpenVINO, FP32 / INT8, AP and "
                                                 "latency"),
    ("qat_gain", "benchmarks/qat_gain.py", "quantization-aware distillation: PTQ vs QAT vs QAT + KD, OpenVINO INT8 AP"),
    ("coco_eval_speed", "benchmarks/coco_eval_speed.py", "COCO evaluation speed, faster-coco-eval vs pycocotools"),
    ("class_incremental", "benchmarks/class_incremental.py", "teachers with other classes: new classes without "
                                                             "forgetting, a teacher with more classes"),
)
IMAGES = {"recipe": "recipe_curves.png"}  # figures shown under a file's section


@dataclass(frozen=True)
class HeadlineRow:
    """One row of the README's headline table: which results file, which runs in it."""

    label: str  # dataset and what is special about the row
    file: str  # stem of a distill_gain results JSON
    teacher: str
    detkd: str  # the run that is detkd's current default in that file
    note: str = ""
    baseline_file: str = ""  # the results file holding the baseline, when not ``file`` (the protocol runs one
    # baseline per dataset, with its first teacher size)


HEADLINE = (
    HeadlineRow("DeepPCB (6 classes, many small objects), 256 px", "distill_gain_deeppcb_recipe", "YOLOv8-s", "combo"),
    HeadlineRow("raccoon (one object per image), 160 px", "distill_gain_raccoon_recipe", "YOLOv8-s", "combo"),
    HeadlineRow("aerial cars (~10 small objects per tile), 256 px", "distill_gain_aerial_cars_recipe", "YOLOv8-s",
                "combo"),
    HeadlineRow("shapes, the demo's data (teacher saw 6× the labels), 64 px", "distill_gain_demo_v8s_v8n", "YOLOv8-s",
                "detkd"),
    HeadlineRow("tables (scanned pages, 1–3 page-sized tables), 256 px — **confirmation data**, never used to choose "
                "the recipe", "distill_gain_tables_v8s", "YOLOv8-s", "detkd",
                "the [protocol](docs/recipe.md#protocol)'s first confirmation result"),
    HeadlineRow("tables, 256 px, the larger teacher — **confirmation data**", "distill_gain_tables_v8m", "YOLOv8-m",
                "detkd", "baseline: [distill_gain_tables_v8s](docs/results.md#distill_gain_tables_v8s) (one per "
                "dataset)", baseline_file="distill_gain_tables_v8s"),
    HeadlineRow("chess (12 piece classes, ~10 per board), 320 px — **confirmation data**", "distill_gain_chess_v8s",
                "YOLOv8-s", "detkd", "the [protocol](docs/recipe.md#protocol)"),
    HeadlineRow("chess, 320 px, the larger teacher — **confirmation data**", "distill_gain_chess_v8m", "YOLOv8-m",
                "detkd", "baseline: [distill_gain_chess_v8s](docs/results.md#distill_gain_chess_v8s) (one per "
                "dataset)", baseline_file="distill_gain_chess_v8s"),
    HeadlineRow("licence plates (dash-cam frames, tiny plates), 320 px — **confirmation data**",
                "distill_gain_plates_v8s", "YOLOv8-s", "detkd", "the [protocol](docs/recipe.md#protocol)"),
    HeadlineRow("raccoon, 160 px, a larger teacher the student cannot follow", "distill_gain_raccoon_chain",
                "YOLOv8-m", "detkd", "no gain: see [teachers](docs/teachers.md#raccoon)"),
    HeadlineRow("raccoon, 160 px, the larger teacher re-run (new teacher, BF16)", "distill_gain_raccoon_v8m_guard",
                "YOLOv8-m", "detkd", "one seed below: see [the KD guard](docs/recipe.md#the-kd-guard)"),
    HeadlineRow("raccoon, 640 px (previous default: `union`, constant)", "distill_gain_raccoon", "YOLOv8-s", "detkd"),
)


# ------------------------------------------------------------------------------------------------ reading
def load(stem: str) -> dict:
    return json.loads((RESULTS / f"{stem}.json").read_text())


def benchmark_of(stem: str) -> tuple[str, str, str]:
    """(prefix, script, what it measures) of a results file; the longest matching prefix wins."""
    matches = [b for b in BENCHMARKS if stem == b[0] or stem.startswith(b[0] + "_")]
    if not matches:
        return stem.split("_")[0], "", "other results"
    return max(matches, key=lambda b: len(b[0]))


def _as_list(value) -> list:
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return []
    return list(value) if isinstance(value, (list, tuple)) else []


def machine_of(d: dict) -> str | None:
    """'NVIDIA H100 80GB HBM3' or 'AMD EPYC, 2 cores, no GPU' from a results file's ``machine`` record."""
    m = d.get("machine")
    if not isinstance(m, dict):
        return None
    gpus = [g["name"] for g in m.get("gpus") or [] if isinstance(g, dict) and g.get("name")]
    if m.get("gpu"):
        gpus.append(str(m["gpu"]))
    if gpus:
        return ", ".join(sorted(set(gpus)))
    cpu = m.get("cpu")
    if isinstance(cpu, dict):
        cores = cpu.get("logical_cores")
        return f"{cpu.get('name', 'CPU')}, {cores} cores, no GPU" if cores else f"{cpu.get('name', 'CPU')}, no GPU"
    return str(cpu) if cpu else None


def dataset_name(data: str, stem: str = "") -> str:
    if "shape" in data or "shape" in stem or stem.startswith("distill_gain_demo"):
        return "generated shapes (the demo's data)"
    return Path(data).name or "—"


def describe(stem: str, d: dict) -> dict:
    """Dataset, machine and seeds of one results file, as words."""
    s = d.get("settings") if isinstance(d.get("settings"), dict) else {}
    prefix = benchmark_of(stem)[0]
    if prefix == "recipe":  # a summary over distill_gain files: their datasets, machines and seeds
        parts = {k: load(f"distill_gain_{k}") for k in d.get("datasets", {}) if (RESULTS / f"distill_gain_{k}.json").exists()}
        datasets = ", ".join(dataset_name(str(p["settings"].get("data", "")), f"distill_gain_{k}") for k, p in parts.items())
        machines = sorted({m for m in map(machine_of, parts.values()) if m})
        seeds = sorted({x for runs in d.get("datasets", {}).values() for r in runs.values() for x in r.get("seeds", [])})
        return {"dataset": datasets, "machine": "; ".join(machines) or "—", "seeds": seeds}
    if prefix == "coco_eval_speed":
        dataset = "synthetic detections with COCO val2017's statistics"
    elif prefix == "speed":
        dataset = "none (random-init models, synthetic frames)"
    elif prefix == "demo_seeds":
        dataset = "generated shapes (the demo's data)"
    else:
        dataset = dataset_name(str(s.get("dataset") or s.get("data") or ""), stem)
    seeds = _as_list(s.get("seeds")) or sorted(int(k) for k in d.get("per_seed", {}) if str(k).isdigit())
    if not seeds and isinstance(d.get("per_seed"), list):
        seeds = [r.get("seed") for r in d["per_seed"] if isinstance(r, dict) and "seed" in r]
    return {"dataset": dataset, "machine": machine_of(d) or "—", "seeds": seeds}


# ---------------------------------------------------------------------------------------------- the page
def demote_headings(markdown: str) -> list[str]:
    """The lines of a rendered results file without its title, every other heading one level down."""
    lines, fenced = markdown.rstrip("\n").splitlines(), False
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    out = []
    for line in lines:
        if line.lstrip().startswith("```"):
            fenced = not fenced
        out.append("#" + line if line.startswith("#") and not fenced else line)
    while out and not out[0].strip():
        out.pop(0)
    return out


def _fallback_body(d: dict) -> list[str]:
    """A results JSON whose benchmark wrote no .md beside it: its settings, so it is never left out."""
    s = d.get("settings") if isinstance(d.get("settings"), dict) else {}
    return ["No rendered table was committed with this file; its settings:", ""] + \
        [f"- `{k}`: {v}" for k, v in s.items()]


def results_stems() -> list[str]:
    """Every results file (a .json, or a .md without one), in the page's order: by benchmark, then by name."""
    stems = {p.stem for p in RESULTS.glob("*.json")} | {p.stem for p in RESULTS.glob("*.md")}
    order = {b[0]: i for i, b in enumerate(BENCHMARKS)}
    return sorted(stems, key=lambda s: (order.get(benchmark_of(s)[0], len(order)), s))


def section(stem: str) -> list[str]:
    prefix, script, what = benchmark_of(stem)
    d = load(stem) if (RESULTS / f"{stem}.json").exists() else {}
    info = describe(stem, d)
    seeds = ", ".join(str(x) for x in info["seeds"]) or "— (timings, no training seeds)"
    files = [f"[{stem}.{ext}](../benchmarks/results/{stem}.{ext})" for ext in ("json", "md")
             if (RESULTS / f"{stem}.{ext}").exists()]
    lines = [f"## {stem}", "",
             f"Benchmark: `{script or prefix}` — {what}. Dataset: {info['dataset']}. Machine: {info['machine']}. "
             f"Seeds: {seeds}. Files: {' · '.join(files)}.", ""]
    md = RESULTS / f"{stem}.md"
    lines += demote_headings(md.read_text()) if md.exists() else _fallback_body(d)
    if prefix in IMAGES and (RESULTS / IMAGES[prefix]).exists():
        lines += ["", f"![{IMAGES[prefix]}](../benchmarks/results/{IMAGES[prefix]})"]
    return lines + [""]


def render_results_page() -> str:
    stems = results_stems()
    lines = [
        "# Results: every committed benchmark file",
        "",
        f"<!-- Generated by `{COMMAND}` from benchmarks/results/; do not edit by hand. -->",
        "",
        "Each section is one file of `benchmarks/results/`, as its benchmark wrote it (the `.md` beside the `.json`), "
        "under a line naming the benchmark, the dataset, the machine and the seeds. What the numbers mean, and "
        "which caveats apply, is on the topic pages: [recipe](recipe.md), [models](models.md), "
        "[teachers](teachers.md), [unlabelled images](unlabeled.md), [teachers with other classes](classes.md), "
        "[speed](speed.md), [demo](demo.md), "
        "[data and evaluation](data.md).",
        "",
        "| file | benchmark | dataset | machine | seeds |",
        "|---|---|---|---|---|",
    ]
    for stem in stems:
        d = load(stem) if (RESULTS / f"{stem}.json").exists() else {}
        info = describe(stem, d)
        lines.append(f"| [{stem}](#{stem.lower()}) | {benchmark_of(stem)[0]} | {info['dataset']} | "
                     f"{info['machine']} | {', '.join(map(str, info['seeds'])) or '—'} |")
    lines.append("")
    for stem in stems:
        lines += section(stem)
    return "\n".join(lines).rstrip("\n") + "\n"


# ------------------------------------------------------------------------------------- the README headline
def _score(run: dict | None) -> str:
    if not run:
        return "—"
    mean, seeds = run["mAP50-95"], run.get("seeds", [])
    if run.get("spread") is not None and len(seeds) > 1:
        return f"{mean:.3f} ± {run['spread']:.3f}"
    return f"{mean:.3f} (seed {', '.join(map(str, seeds))})" if seeds else f"{mean:.3f}"


def headline_row(row: HeadlineRow) -> str:
    d = load(row.file)
    runs = d["summary"]
    base = (load(row.baseline_file)["summary"] if row.baseline_file else runs).get("baseline")
    ours, builtin = runs.get(row.detkd), runs.get("ultralytics_kd")
    delta = f"{ours['mAP50-95'] - base['mAP50-95']:+.3f}" if ours and base else "—"
    beyond = ours and base and len(ours.get("mAP50-95_runs", [])) and len(base.get("mAP50-95_runs", [])) and \
        min(ours["mAP50-95_runs"]) > max(base["mAP50-95_runs"])
    delta = f"**{delta}**" if beyond else delta
    seeds = sorted({x for r in (base, ours) if r for x in r.get("seeds", [])})
    s = d["settings"]
    student = Path(str(s.get("student", ""))).stem.replace("yolov8", "YOLOv8-").replace("yolo26", "YOLO26-")
    link = f"[{row.file}](docs/results.md#{row.file})"
    note = f"; {row.note}" if row.note else ""
    return (f"| {row.label} | {row.teacher} → {student} | {_score(base)} | {_score(builtin)} | {_score(ours)} | {delta} "
            f"| {', '.join(map(str, seeds))} | {machine_of(d)} | {link}{note} |")


def render_headline() -> str:
    lines = ["| data | teacher → student | baseline | Ultralytics built-in | **detkd** | Δ detkd − baseline | seeds "
             "| machine | details |",
             "|---|---|---:|---:|---:|---:|---|---|---|"]
    lines += [headline_row(r) for r in HEADLINE]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- the cost table in docs/speed.md
CPU_COSTS = {  # epoch times on the 2-core CPUs the project has run on: what the teacher computes in there
    "kd_overhead_cpu-intel-xeon-processor-2c": "Intel Xeon with AMX: BF16 teacher",
    "kd_overhead_cpu-amd-epyc-2c": "AMD EPYC with AVX-512 BF16: BF16 teacher"}
CPU_PROFILES = ("kd_profile_cpu-intel-xeon-processor-2c_160px_b16", "kd_profile_cpu-intel-xeon-processor-2c_640px_b16",
                "kd_profile_cpu-intel-xeon-processor-2c_640px_b16_fp32",
                "kd_profile_cpu-amd-epyc-2c_160px_b16", "kd_profile_cpu-amd-epyc-2c_640px_b16",
                "kd_profile_cpu-amd-epyc-2c_640px_b16_fp32")
CPU_NAMES = {"amd-epyc": "AMD EPYC (AVX-512 BF16)", "intel-xeon": "Intel Xeon (AMX)"}
COST_RUNS = {"plain": "plain training (no teacher)",
             "detkd": "**detkd, one teacher** (default: teacher one batch ahead in a worker thread)",
             "detkd_fp32": "detkd, one teacher, FP32 (`--teacher-half false`)",
             "detkd_inline": "detkd, one teacher inline (`--teacher-overlap false`)",
             "detkd_2teachers": "detkd, 2 teachers (one ensemble)", "detkd_3teachers": "detkd, 3 teachers"}


def render_cpu_cost() -> str:
    """Epoch time vs plain (kd_overhead) per CPU and, per image size, step time and peak memory vs plain
    (kd_profile)."""
    runs = {stem: load(stem) for stem in CPU_COSTS}
    s = next(iter(runs.values()))["settings"]
    lines = [f"Teacher {s['teacher']}, student {s['student']}, raccoon at {s['imgsz']} px, batch {s['batch']}, "
             f"median train-loop epoch of epochs 2–{s['epochs']}, on each 2-core CPU the project ran on (epoch s / "
             "vs plain; an empty cell: not run there):", "",
             "| run | " + " | ".join(f"[{label}](results.md#{stem})" for stem, label in CPU_COSTS.items()) + " |",
             "|---|" + "---:|" * len(CPU_COSTS)]
    for k, name in COST_RUNS.items():
        cells = [f"{d['training'][k]['median_epoch_s']:.2f} s / {d['training'][k]['ratio_vs_plain']:.2f}×"
                 if k in d["training"] else "" for d in runs.values()]
        if any(cells):
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "One training step without data loading, the teacher inline (`benchmarks/kd_profile.py`: what each part "
              "costs; forward only, each part's backward is inside \"backward\"):", "",
              "| CPU, size, batch | step vs plain | teacher forward | feature KD + adapters | guard | other KD parts "
              "| peak memory vs plain |", "|---|---:|---:|---:|---:|---:|---:|"]
    for stem in CPU_PROFILES:
        r = load(stem)
        plain, kd = r["profile"]["plain"], r["profile"]["kd"]
        ms = kd["ms"]
        other = sum(ms.get(k, 0.0) for k in ("detection loss", "anchor weights (verified)", "cls KD", "box KD"))
        half = r["settings"].get("teacher_half", "False") == "True"  # files without it ran before BF16 on CPU
        cpu = next(name for key, name in CPU_NAMES.items() if key in stem) + (", BF16" if half else ", FP32") + " teacher"
        lines.append(f"| [{cpu}, {r['settings']['imgsz']} px, {r['settings']['batch']}](results.md#{stem}) | "
                     f"{ms['step'] / plain['ms']['step']:.2f}× | {ms['teacher forward']:.0f} ms | "
                     f"{ms['feature KD (+ adapters)']:.0f} ms | {ms['guard (gradient alignment)']:.0f} ms | "
                     f"{other:.0f} ms | {kd['peak_mib'] / plain['peak_mib']:.2f}× |")
    return "\n".join(lines)


# ------------------------------------------------------------------ the measured deployments in docs/export.md
DEPLOY = "deploy_gain_cpu-amd-epyc-2c"  # benchmarks/deploy_gain.py on the 2-core CPU


def render_deploy() -> str:
    """Per dataset x student: the fastest deployment within the AP budget at the training size and at 640 px."""
    d = load(DEPLOY)
    s = d["settings"]
    target = d["target"]
    lines = [f"Fastest deployment within ΔAP ≥ -{s['max_drop']:g} of torch FP32 (COCO AP on val, model-only batch-1 "
             f"p50 on the CPU; {machine_of(d)}; every backend x precision in [{DEPLOY}](results.md#{DEPLOY})). "
             f"Target of issue 29: ≥ {target['speedup']:g}× torch FP32 with ΔAP ≥ -{target['max_drop']:g}.", "",
             "| data, student | torch FP32 AP | at the training size | at 640 px |", "|---|---:|---|---|"]

    def cell(v) -> str:
        if not v:
            return "none within the AP budget"
        return (f"{v['label']} (ran {v['ran']}): {v['speedup']:.2f}×, ΔAP {v['delta_AP']:+.4f}"
                f"{'' if v['met'] else ' (target not met)'}")

    for e in d["entries"]:
        ref = next((r for r in e["rows"] if r["variant"] == "torch_fp32"), {})
        student = Path(e["student"]).stem.replace("yolov8", "YOLOv8-").replace("yolo26", "YOLO26-")
        lines.append(f"| {e['dataset']} {e['settings']['imgsz']} px, {student} | {ref.get('AP', 0):.4f} | "
                     f"{cell(e['verdict'].get('train'))} | {cell(e['verdict'].get('bench'))} |")
    return "\n".join(lines)


# ------------------------------------------- teachers with other classes, in README.md and docs/classes.md
DATASET_LABELS = {"deeppcb": "DeepPCB", "aerial_cars": "aerial cars"}


def class_incremental_files() -> list[str]:
    """Every benchmarks/class_incremental.py results file, one per dataset and machine."""
    return sorted(p.stem for p in RESULTS.glob("class_incremental_*.json"))


def _mean_spread(a: dict | None, group: str) -> str:
    if not a:
        return "—"
    g = a[group]
    return f"{g['mean']:.3f} ± {g['spread']:.3f}" if g.get("spread") is not None else f"{g['mean']:.3f}"


def render_classes(results_md: str) -> str:
    """Issue 28's two tables from the class_incremental files: new classes on top of an old model (AP per class
    group per row, the targets), and a teacher with more classes (baseline vs detkd). ``results_md``: the path of
    docs/results.md from the page that shows them."""
    rows = ["| data: old classes A → new classes B | AP over | old model | fine-tuning | new data alone | "
            "**detkd `--keep-teacher-classes`** | joint training (upper bound) | target |",
            "|---|---|---:|---:|---:|---:|---:|---|"]
    superset = ["| data: teacher's classes → student's | teacher | baseline (student alone) | **detkd** | Δ | "
                "per seed, baseline → detkd | never below the baseline |", "|---|---:|---:|---:|---:|---|---|"]
    for stem in class_incremental_files():
        d = load(stem)
        s, summary, t = d["settings"], d["summary"], d["targets"]
        name = f"[{DATASET_LABELS.get(s['dataset'], s['dataset'])}]({results_md}#{stem})"
        setup = f"{s['imgsz']} px, seeds {', '.join(map(str, s['seeds']))}; {machine_of(d)}"
        keep, share = t.get("keeps_old_classes"), t.get("reaches_joint_share")
        targets = {
            "old": (f"detkd's worst seed above fine-tuning's best: {'met' if keep['met'] else 'not met'}"
                    if keep else "—"),
            "all": (f"≥ {share['target']:.2f}× joint: {share['ratio']:.4f}×, {'met' if share['met'] else 'not met'}"
                    if share and share.get("ratio") is not None else "—")}
        bound = t.get("no_forgetting_bound")
        if bound and share:  # what forgetting nothing would reach (the old model's A + fine-tuning's B)
            targets["all"] += f" (forgetting nothing: {bound['ratio']:.2f}×)"
        labels = {"old": "A", "new": "B", "all": "all"}
        for i, group in enumerate(("old", "new", "all")):
            first = f"{name}: {', '.join(s['old'])} → {', '.join(s['new'])} ({setup})" if i == 0 else ""
            cells = [_mean_spread(summary.get(k), group) for k in ("old", "finetune", "new_only", "incremental",
                                                                    "joint")]
            rows.append(f"| {first} | {labels[group]} | {' | '.join(cells)} | {targets.get(group, '')} |")
        base, ours, never = summary.get("old"), summary.get("superset"), t.get("superset_never_below_baseline")
        teacher = d["runs"].get(f"joint_s{s['seeds'][0]}", {}).get("eval")
        if base and ours:
            pairs = ", ".join(f"{v['baseline']:.3f} → {v['detkd']:.3f}" for v in never["per_seed"].values())
            superset.append(
                f"| {name}: {len(s['old'] + s['new'])} classes → {', '.join(s['old'])} ({setup}) | "
                f"{teacher['groups']['old']['AP']:.3f} | {_mean_spread(base, 'old')} | {_mean_spread(ours, 'old')} | "
                f"{ours['old']['mean'] - base['old']['mean']:+.3f} | {pairs} | {'met' if never['met'] else 'not met'} |")
    return "\n".join(rows + [""] + superset)


def fill_markers(text: str, name: str, body: str) -> str:
    """``text`` with the lines between ``<!-- results:NAME -->`` and ``<!-- /results:NAME -->`` replaced by ``body``."""
    start, end = f"<!-- results:{name} -->", f"<!-- /results:{name} -->"
    if start not in text or end not in text:
        raise SystemExit(f"marker {start} ... {end} not found")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{body}\n{end}{tail}"


def rendered() -> dict[Path, str]:
    """What each generated file should hold."""
    return {RESULTS_PAGE: render_results_page(),
            README: fill_markers(fill_markers(README.read_text(), "headline", render_headline()), "classes",
                                 render_classes("docs/results.md")),
            CLASSES_PAGE: fill_markers(CLASSES_PAGE.read_text(), "classes", render_classes("results.md")),
            SPEED_PAGE: fill_markers(SPEED_PAGE.read_text(), "cpu-cost", render_cpu_cost()),
            EXPORT_PAGE: fill_markers(EXPORT_PAGE.read_text(), "deploy", render_deploy())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is out of date")
    args = ap.parse_args(argv)
    stale = []
    for path, text in rendered().items():
        current = path.read_text() if path.exists() else ""
        if current == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print(f"out of date: {', '.join(map(str, stale))}. Regenerate with: {COMMAND}", file=sys.stderr)
        return 1
    print("written: " + ", ".join(map(str, stale)) if stale else "up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
