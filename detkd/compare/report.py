"""The comparison's report: one row per model, ΔAP vs the baseline, the teacher verdict; Markdown and JSON."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from detkd.compare.seeds import aggregate, format_seed_table
from detkd.eval.metrics import BACKEND_LABEL, resolve_backend

COLUMNS = ("model", "params (M)", "GFLOPs", "AP", "AP50", "APs", "APm", "APl", "latency p50 (ms)", "FPS",
           "ΔAP vs baseline")
STUDENT_KD_KINDS = {"distilled", "ultralytics_kd"}  # the student distilled (the assistant is a larger model)


def _num(v, fmt: str = ".3f") -> str:
    """A cell: '-' for missing values and pycocotools' -1 (no ground truth in that size range)."""
    if v is None or (isinstance(v, (int, float)) and v < 0):
        return "-"
    return format(float(v), fmt)


def read_guard(run_folder) -> dict | None:
    """The KD guard's record of a distilled run (``kd_guard.json`` beside its results.csv), or None."""
    path = Path(str(run_folder)) / "kd_guard.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def build_rows(specs, groups: dict[str, list[str]] | None = None) -> list[dict]:
    """Flat report rows from evaluated and benchmarked :class:`~detkd.compare.experiment.RunSpec` objects.

    ΔAP is against the baseline trained with the same seed (the same augmentation stream), over the classes the row
    is scored on (a teacher without some data class: the baseline's AP over the teacher's classes). ``groups``: the
    class groups (:func:`detkd.compare.classes.class_groups`), each row's AP per group as ``class_groups``."""
    from detkd.compare.classes import ap_over, group_cells

    base = {r.seed: r.metrics for r in specs if r.kind == "baseline"}
    rows = []
    for r in specs:
        m, sp = r.metrics, r.speed
        scored = m.get("scored_classes")
        ap, b = m.get("AP"), ap_over(base[r.seed], scored) if r.seed in base else None
        guard = read_guard(r.train["save_dir"]) if r.kind == "distilled" and r.train.get("save_dir") else None
        rows.append({
            "key": r.key, "kind": r.kind, "label": r.label, "seed": r.seed, "config": r.config or r.key,
            "config_label": r.config_label, "weights": r.weights, "results_csv": r.results_csv,
            "params_m": sp.get("params_m"), "gflops": sp.get("gflops"),
            **{k: m.get(k) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
            "latency_p50_ms": sp.get("latency_p50_ms"), "fps": sp.get("fps"), "speed_timed_as": sp.get("timed_as"),
            "delta_AP": None if b is None or ap is None or r.kind == "baseline" else ap - b,
            "guard": guard,
            "train": {k: v for k, v in r.train.items() if k != "fingerprint"},
            "reused": {"train": r.train.get("reused") if r.kind != "teacher" else None,
                       "eval": m.get("reused"), "bench": sp.get("reused")},
            "kd": r.kd,
            "per_class": m.get("per_class"),
            **({"scored_classes": scored} if scored is not None else {}),
            **({"class_groups": group_cells(m, groups)} if groups else {}),
        })
    return rows


def teacher_verdict(rows: list[dict]) -> str:
    """The teacher verdict in words (empty when the teacher or the baseline has no AP). A teacher scored on some of
    the data's classes only is compared with the baseline on those classes."""
    from detkd.compare.classes import ap_over

    t = next((r for r in rows if r["kind"] == "teacher"), None)
    if t and t.get("scored_classes") == []:
        return ("the teacher predicts none of the data's classes, so its AP cannot be measured on this data; it "
                "teaches the students its own classes (--keep-teacher-classes), which the data does not label.")
    scored = t.get("scored_classes") if t else None
    base = [ap_over(r, scored) for r in rows if r["kind"] == "baseline"]
    base = [b for b in base if b is not None]
    if not t or not base or t.get("AP") is None:
        return ""
    b = sum(base) / len(base)  # the baseline's mean over seeds
    on = f" on the teacher's {len(scored)} classes ({', '.join(scored)})" if scored else ""
    if round(t["AP"], 3) <= round(b, 3):  # as printed: an equal teacher is not called weaker
        how = "weaker than" if round(t["AP"], 3) < round(b, 3) else "only as strong as"
        return (f"this teacher is {how} the student trained alone (AP{on} {t['AP']:.3f} vs {b:.3f}): "
                f"distilling from it will not help. Train the teacher longer or pick a stronger one.")
    return (f"the teacher is stronger than the student trained alone (AP{on} {t['AP']:.3f} vs {b:.3f}, "
            f"{t['AP'] - b:+.3f}): a useful teacher to distil from.")


def is_multi_seed(rows: list[dict]) -> bool:
    return len({r["seed"] for r in rows if r["kind"] == "baseline"}) > 1


def outcome(rows: list[dict]) -> str:
    """Which distilled student did best against the baseline, in one sentence (over seeds when there are several);
    the assistant of a chain is a larger model, never the answer."""
    if is_multi_seed(rows):
        groups = [g for g in aggregate(rows) if g["delta_mean"] is not None and g["kind"] in STUDENT_KD_KINDS]
        if not groups:
            return ""
        best = max(groups, key=lambda g: g["delta_mean"])
        return (f"best configuration: {best['label']}, AP {best['mean']:.3f} ± {best['std']:.3f} over seeds "
                f"{' '.join(map(str, best['seeds']))} ({best['delta_mean']:+.3f} vs the baseline's mean): "
                f"{best['verdict']}.")
    kd = [r for r in rows if r["kind"] in STUDENT_KD_KINDS and r.get("delta_AP") is not None]
    if not kd:
        return ""
    best = max(kd, key=lambda r: r["delta_AP"])
    if best["delta_AP"] > 0:
        return f"best distilled run: {best['label']}, AP {best['AP']:.3f} ({best['delta_AP']:+.3f} vs the baseline)."
    return (f"no distilled run beat the baseline (best: {best['label']}, {best['delta_AP']:+.3f} AP). With a "
            f"single seed, differences below the run-to-run spread are noise.")


def format_table(rows: list[dict]) -> str:
    """The Markdown results table (padded so it reads in a terminal too)."""
    cells = [list(COLUMNS)]
    for r in rows:
        delta = "" if r["kind"] == "baseline" else ("-" if r["delta_AP"] is None else format(r["delta_AP"], "+.3f"))
        cells.append([r["label"], _num(r["params_m"], ".2f"), _num(r["gflops"], ".2f"), _num(r["AP"]),
                      _num(r["AP50"]), _num(r["APs"]), _num(r["APm"]), _num(r["APl"]),
                      _num(r["latency_p50_ms"], ".2f"), _num(r["fps"], ".1f"), delta])
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    right = [i > 0 for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(c.rjust(w) if right[i] and n else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths)))
             + " |" for n, line in enumerate(cells)]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + (":" if right[i] else "-") for i, w in enumerate(widths)) + "|")
    return "\n".join(lines)


def _kd_line(label: str, kd: dict | None) -> str:
    from detkd.config import KDConfig

    cfg = {k: v for k, v in (kd or {}).items() if k != "teacher"}
    default = KDConfig()
    changed = {k: v for k, v in cfg.items() if getattr(default, k) != v}
    full = KDConfig.from_dict(cfg)
    terms = (f"cls_kd {full.cls_kd:g} ({full.cls_mode}, T={full.cls_temperature:g}), box_kd {full.box_kd:g} "
             f"(LD, T={full.box_temperature:g}), feat_kd {full.feat_kd:g} ({full.feat_method})")
    what = "detkd defaults" if not changed else ", ".join(f"{k}={v}" for k, v in changed.items())
    return f"- **{label}**: {what} — {terms}, anchors {full.anchor_weighting}, schedule {full.schedule}."


def _runs_table(rows: list[dict]) -> list[str]:
    trained = [r for r in rows if r["kind"] != "teacher"]
    base_epoch = next((r["train"].get("median_epoch_s") for r in trained if r["kind"] == "baseline"), None)
    out = ["| run | folder | train | wall (s) | s/epoch | epoch time vs baseline |", "|---|---|---|---:|---:|---:|"]
    for r in trained:
        t = r["train"]
        ep = t.get("median_epoch_s")
        ratio = f"{ep / base_epoch:.2f}x" if ep and base_epoch else "-"
        folder = t.get("save_dir") or str(Path(r["weights"]).parents[1])
        out.append(f"| {r['label']} | `{folder}` | {'reused' if t.get('reused') else 'trained now'} | "
                   f"{_num(t.get('wall_s'), '.0f')} | {_num(ep, '.1f')} | {ratio} |")
    return out


def _guard_lines(rows: list[dict]) -> list[str]:
    """The KD guard section: for each distilled run, whether a KD term pulled against the labels (engine/guard.py)."""
    runs = [r for r in rows if r["kind"] == "distilled" and r.get("guard")]
    if not runs:
        return []
    adapting = any(r["guard"].get("mode") == "adapt" for r in runs)
    out = ["## KD guard", "", "Mean cosine between the KD and detection-loss gradients (logit and box KD: on the "
           "student's head outputs; feature KD: on its neck features), per epoch (first, middle, last); a term is "
           f"flagged when it stays below {runs[0]['guard'].get('threshold', 0):g} for "
           f"{runs[0]['guard'].get('patience', 3)} epochs in a row"
           + ("; with `--kd-guard adapt` a flagged term is scaled down (last column: the scales at the end)."
              if adapting else "."), "",
           "| run | cls alignment | box alignment | feature alignment | flagged |" + (" scales |" if adapting else ""),
           "|---|---|---|---|---|" + ("---|" if adapting else "")]
    for r in runs:
        g = r["guard"]
        cells = []
        for item in ("kd_align_cls", "kd_align_box", "kd_align_feat"):
            h = g.get("history", {}).get(item) or []
            cells.append(" → ".join(f"{h[i]:+.2f}" for i in sorted({0, len(h) // 2, len(h) - 1})) if h else "-")
        flagged = ", ".join(f"{k.split('_')[-1]} KD from epoch {e}" for k, e in (g.get("warned") or {}).items())
        line = f"| {r['label']} | {cells[0]} | {cells[1]} | {cells[2]} | {flagged or 'no'} |"
        if adapting:
            scaled = ", ".join(f"{k.split('_')[-1]} ×{v:g}" for k, v in (g.get("scales") or {}).items() if v != 1)
            line += f" {scaled or 'none scaled'} |"
        out.append(line)
    return out + [""]


def _group_lines(rows: list[dict], groups: dict[str, list[str]] | None, s) -> list[str]:
    """The "AP per class group" section: one row per model, one column per group (ΔAP vs the same seed's baseline
    beside each distilled or teacher value)."""
    if not groups:
        return []
    teacher = next(r for r in rows if r["kind"] == "teacher")
    taught, new = groups.get("teacher's classes", []), groups.get("new classes", [])
    how = ("matched by name and --class-map" if s.class_map else "matched by name")
    lines = ["## AP per class group", "",
             f"The teacher's classes ({how}): {', '.join(taught) or 'none of the data classes'}; new classes (no "
             f"teacher class: the labels alone teach them): {', '.join(new) or 'none'}. A group's AP is the mean COCO "
             f"AP of its classes with ground truth in the {s.eval_split} split (`all`: the AP above); '-': the model "
             f"does not predict every class of the group. In brackets: ΔAP vs the baseline of the same seed."]
    if teacher.get("scored_classes") is not None:
        lines[-1] += (" The teacher is scored on the data classes it predicts through its class map only "
                      f"({', '.join(teacher['scored_classes']) or 'none'}).")
    if s.keep_teacher_classes:
        lines[-1] += (" With --keep-teacher-classes the distilled students also predict the teacher's classes the "
                      "data does not label; this split has no ground truth for them, so they are not scored here "
                      "(to measure what a student kept of them, evaluate it on images labelled with them).")
    header = ["model"] + [f"{g} ({len(ms)})" for g, ms in groups.items()]
    base = {r["seed"]: r.get("class_groups") or {} for r in rows if r["kind"] == "baseline"}
    cells = [header]
    for r in rows:
        line = [r["label"]]
        for g in groups:
            v, b = (r.get("class_groups") or {}).get(g), (base.get(r["seed"]) or {}).get(g)
            ap, bap = (v or {}).get("AP"), (b or {}).get("AP")
            delta = f" ({ap - bap:+.3f})" if r["kind"] != "baseline" and ap is not None and bap is not None else ""
            line.append(_num(ap) + delta)
        cells.append(line)
    widths = [max(len(c[i]) for c in cells) for i in range(len(header))]
    out = ["| " + " | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
           + " |" for line in cells]
    out.insert(1, "|" + "|".join("-" * (w + 1) + ("-" if i == 0 else ":") for i, w in enumerate(widths)) + "|")
    return lines + [""] + out + [""]


def render_markdown(rows: list[dict], s, data_yaml: str, coco: bool, machine: dict,
                    deploy: list[dict] | None = None, groups: dict[str, list[str]] | None = None) -> str:
    """The whole report.md (``deploy``: :func:`detkd.compare.deploy.deploy_rows`, a section of its own; ``groups``:
    the class groups, their section after the verdict)."""
    from detkd.compare.deploy import format_deploy_section

    from detkd.bench.report import machine_line

    t = next(r for r in rows if r["kind"] == "teacher")
    verdict, result = teacher_verdict(rows), outcome(rows)
    bench_imgsz = s.bench_imgsz or s.imgsz
    extra = ", ".join(f"{k}={v}" for k, v in sorted(s.train_args.items()))
    evaluation = (f"official COCO AP ({BACKEND_LABEL[resolve_backend()]}, AP@[.50:.95]) on the **{s.eval_split}** split against the "
                  f"dataset's own annotation JSON" if coco else
                  f"Ultralytics val mAP50-95 on the **{s.eval_split}** split (plain data.yaml: no COCO JSON, so no "
                  f"APs/APm/APl; pass the COCO dataset folder for official COCO AP)")
    lines = [
        f"# detkd compare: {Path(str(s.student)).name} with and without {Path(str(s.teacher)).name}", "",
        f"Data: `{s.data}`. Every student run: `{s.student}`, {s.epochs} epochs, {s.imgsz} px, batch {s.batch}, "
        f"seed{'s' if len(s.seed_list) > 1 else ''} {' '.join(map(str, s.seed_list))}, device {s.device or 'auto'}"
        + (f", {extra}" if extra else "")
        + " — identical settings; only the teacher signal differs.", "",
        f"Accuracy: {evaluation}, imgsz {s.imgsz}, conf {s.eval_conf:g}, NMS IoU {s.eval_iou:g}. "
        f"Speed: model-only forward pass, batch 1, {bench_imgsz} px, torch FP32 on {s.bench_device}; latency p50 "
        f"over the timed calls, FPS = pipelined throughput; GFLOPs per image at {bench_imgsz} px; timed once per "
        f"architecture (runs of one network share that speed: weights do not change it). "
        f"Machine: {machine_line(machine)}.", "",
        format_table(rows), "",
    ]
    if verdict:
        lines += [f"**Teacher verdict:** {verdict}", ""]
    if result:
        lines += [f"**Outcome:** {result}", ""]
    lines += _group_lines(rows, groups, s)
    if is_multi_seed(rows):
        lines += ["## Across seeds", "", "ΔAP per row above is against the baseline of the same seed. Verdict: "
                  "'better' when every seed beats its baseline and the worst distilled seed is above the best "
                  "baseline seed ('worse' the other way round), else 'within the spread'.", "",
                  format_seed_table(aggregate(rows)), ""]
    lines += format_deploy_section(deploy or [])
    lines += _guard_lines(rows)
    lines += ["## KD configurations", ""]
    lines += [_kd_line(r["config_label"], r["kd"]) for r in rows if r["kind"] == "distilled"
              and r is next(x for x in rows if x["config"] == r["config"])]
    if any(r["kind"] == "ultralytics_kd" for r in rows):
        lines.append("- **ultralytics-kd**: Ultralytics' built-in `distill_model=` (score-weighted feature L2 on the "
                     "head inputs), same teacher, default settings.")
    if any(r["kind"] == "assistant" for r in rows):
        lines.append(f"- **assistant**: `{s.assistant}` distilled from the teacher (detkd defaults); **distilled: via "
                     f"assistant** is the student distilled from that assistant instead of the teacher (detkd "
                     f"defaults) — compare it with the direct distilled row.")
    lines += ["", "## Runs", "", f"Teacher: `{t['weights']}` (evaluated, not trained).", ""]
    lines += _runs_table(rows)
    lines += ["", "## Plots", "", "![AP vs FPS](map_vs_fps.png)", "",
              "AP vs FPS with the Pareto front (up and right is better)"
              + ("; exported files are drawn in their run's colour, one marker per backend x precision." if deploy
                 else "."), "",
              "![training curves](training_curves.png)", "",
              "Per-epoch detection loss terms (box, cls, dfl), validation mAP50-95 and the KD terms "
              "(detkd: cls_kd, box_kd, feat_kd; Ultralytics: dis_loss) of every student run.", "",
              f"_Written {datetime.now():%Y-%m-%d %H:%M} by `detkd compare`; re-running it reuses finished runs._"]
    return "\n".join(lines) + "\n"


def write_report(specs, s, data_yaml: str, coco: bool, out: Path, deployed=(), groups=None):
    """Write report.md and report.json into ``out``; return a :class:`~detkd.compare.experiment.CompareResult`.
    ``deployed``: the exported variants of ``--deploy`` (their own section and JSON key ``deploy``); ``groups``: the
    class groups of a teacher with other classes (a section, each row's ``class_groups``, JSON key
    ``class_groups``)."""
    from detkd.bench.machine import machine_info
    from detkd.compare.deploy import deploy_rows
    from detkd.compare.experiment import CompareResult, settings_dict

    rows = build_rows(specs, groups)
    deploy = deploy_rows(deployed, specs)
    machine = machine_info(s.bench_device)
    md = render_markdown(rows, s, data_yaml, coco, machine, deploy=deploy, groups=groups)
    out = Path(out)
    (out / "report.md").write_text(md)
    payload = {"settings": settings_dict(s), "data_yaml": str(data_yaml), "evaluation": BACKEND_LABEL[resolve_backend()] if coco else
               "ultralytics", "machine": machine, "rows": rows, "teacher_verdict": teacher_verdict(rows),
               "outcome": outcome(rows), "deploy": deploy, "class_groups": groups}
    (out / "report.json").write_text(json.dumps(payload, indent=1, default=str))
    return CompareResult(out_dir=out, report_md=out / "report.md", report_json=out / "report.json",
                         map_vs_fps_png=out / "map_vs_fps.png", training_curves_png=out / "training_curves.png",
                         rows=rows, verdict=payload["teacher_verdict"])
