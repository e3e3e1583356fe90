"""One table across datasets for the recipe protocol, the acceptance checks, and the learning curves.

Reads the ``distill_gain_<tag>.json`` files written by ``benchmarks/distill_gain.py`` (one per dataset, same
protocol) and writes ``<out>.md|json`` (per dataset: every run kind with mean ± spread over seeds and Δ vs the
baseline) and ``<out>_curves.png`` (val mAP50-95 per epoch, mean over seeds, one panel per dataset)::

    python benchmarks/recipe_summary.py benchmarks/results/distill_gain_{shapes,raccoon,deeppcb,aerial_cars}.json \
        --candidate combo detkd --out benchmarks/results/recipe   # the first of the kinds each dataset has

With ``--protocol benchmarks/recipe_protocol.json`` the results of every dataset and teacher the protocol names are
read from ``--results-dir`` (``distill_gain_<tag>.json``, the tags under each dataset's ``results``), and the
tuning and confirmation sets are reported separately: per dataset and teacher, Δ = candidate − baseline next to the
gap closure Δ / (teacher − baseline), and the mean gap closure per set (what has not run yet is listed)::

    python benchmarks/recipe_summary.py --protocol benchmarks/recipe_protocol.json --candidate combo detkd

Acceptance (issue 15) for a candidate recipe: never below the baseline's mean on any dataset; above the baseline
beyond the seed spread on most; above Ultralytics' built-in on average.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def beyond_spread(cand: dict, base: dict) -> bool:
    """The candidate's worst seed is above the baseline's best seed."""
    return min(cand["mAP50-95_runs"]) > max(base["mAP50-95_runs"])


def as_kinds(candidates: str | list[str]) -> list[str]:
    return [candidates] if isinstance(candidates, str) else list(candidates)


def pick_candidate(summary: dict, candidates: str | list[str]) -> str | None:
    """The first of ``candidates`` (run kinds) that a dataset's results have: one recipe may have run under
    several names (a variant ``combo`` while it was a candidate, ``detkd`` once it became the default)."""
    for kind in as_kinds(candidates):
        if kind in summary:
            return kind
    return None


def acceptance(results: dict[str, dict], candidates: str | list[str], baselines: dict | None = None) -> dict:
    """The three checks of issue 15 for the candidate recipe over datasets {tag: distill_gain result}; a file
    without a baseline of its own is judged against ``baselines[tag]`` (:func:`shared_baselines`) when given."""
    rows, deltas_builtin = {}, []
    for tag, r in results.items():
        agg = r["summary"]
        candidate = pick_candidate(agg, candidates)
        b = agg.get("baseline") or (baselines or {}).get(tag, (None, None))[0]
        if candidate is None or b is None:
            continue
        c = agg[candidate]
        rows[tag] = {"candidate": candidate, "delta": c["mAP50-95"] - b["mAP50-95"],
                     "not_below_baseline": c["mAP50-95"] >= b["mAP50-95"], "beyond_spread": beyond_spread(c, b)}
        if "ultralytics_kd" in agg:
            deltas_builtin.append(c["mAP50-95"] - agg["ultralytics_kd"]["mAP50-95"])
    n = len(rows)
    return {
        "datasets": rows,
        "never_below_baseline": n > 0 and all(v["not_below_baseline"] for v in rows.values()),
        "beyond_spread_on_most": n > 0 and sum(v["beyond_spread"] for v in rows.values()) > n / 2,
        "above_builtin_on_average": bool(deltas_builtin) and statistics.mean(deltas_builtin) > 0,
        "mean_delta_vs_builtin": statistics.mean(deltas_builtin) if deltas_builtin else None,
    }


SETS = ("tuning", "confirmation")
MAX_TUNING, MIN_CONFIRMATION = 3, 3


class ProtocolError(ValueError):
    """The protocol file is unusable (the message names the problem and the fix)."""


def load_protocol(path: Path) -> dict:
    """The protocol file, checked: tuning ≤ 3 datasets, confirmation ≥ 3, no dataset in both, each naming the
    result tags of its teachers."""
    try:
        protocol = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ProtocolError(f"no protocol file {path}; give the committed one: benchmarks/recipe_protocol.json")
    except json.JSONDecodeError as e:
        raise ProtocolError(f"{path} is not valid JSON ({e}); fix the file")
    check_protocol(protocol, str(path))
    return protocol


def check_protocol(protocol: dict, where: str = "the protocol") -> None:
    sets = protocol.get("sets") or {}
    missing = [name for name in SETS if not isinstance(sets.get(name), dict)]
    if missing:
        raise ProtocolError(f"{where} has no {' / '.join(missing)} set under 'sets'; name its datasets there")
    tuning, confirmation = sets["tuning"], sets["confirmation"]
    if len(tuning) > MAX_TUNING:
        raise ProtocolError(f"{where}: {len(tuning)} tuning datasets; at most {MAX_TUNING} may tune the recipe, "
                            "move the others to the confirmation set")
    if len(confirmation) < MIN_CONFIRMATION:
        raise ProtocolError(f"{where}: {len(confirmation)} confirmation datasets; at least {MIN_CONFIRMATION} "
                            "must confirm the candidate, add datasets nobody tuned on")
    both = sorted(set(tuning) & set(confirmation))
    if both:
        raise ProtocolError(f"{where}: {', '.join(both)} in both sets; a dataset either tunes or confirms")
    for name, entry in {**tuning, **confirmation}.items():
        if not isinstance(entry.get("results"), dict) or not entry["results"]:
            raise ProtocolError(f"{where}: dataset '{name}' names no results; add "
                                "'results': {teacher: distill_gain tag}")


def gap_row(summary: dict, candidates: str | list[str], baseline: dict | None = None) -> dict | None:
    """Δ = candidate − baseline (means over seeds) and the gap closure Δ / (teacher − baseline) of one
    ``distill_gain`` summary; the closure is None where the teacher did not beat the baseline (no gap to close)
    or was not trained in this protocol. ``baseline`` (a summary row) stands in where this summary has none (the
    same dataset's baseline, run once for both teacher sizes). None when the candidate or a baseline is missing."""
    candidate = pick_candidate(summary, candidates)
    baseline = summary.get("baseline", baseline)
    if candidate is None or baseline is None:
        return None
    cand, base = summary[candidate]["mAP50-95"], baseline["mAP50-95"]
    teacher = summary.get("teacher", {}).get("mAP50-95")
    gap = teacher - base if teacher is not None else None
    return {"candidate": candidate, "candidate_map": cand, "baseline": base, "teacher": teacher,
            "delta": cand - base, "gap": gap, "closure": (cand - base) / gap if gap is not None and gap > 0 else None,
            "not_below_baseline": cand >= base}


def dataset_baseline(entry: dict, results: dict[str, dict]) -> tuple[dict | None, str | None]:
    """(The baseline row, its results tag) of the first of a dataset's results files that has one (the students
    trained alone do not depend on the teacher, so one run serves every teacher size); (None, None) without one."""
    for tag in entry["results"].values():
        if "baseline" in results.get(tag, {}).get("summary", {}):
            return results[tag]["summary"]["baseline"], tag
    return None, None


def seed_maps(result: dict, kind: str) -> dict[int, float]:
    """{seed: val mAP50-95} of one run kind in a ``distill_gain`` result (from its runs: the summary's list of
    values is in the order the runs finished, which two lanes may swap)."""
    return {int(r["seed"]): r["mAP50-95"] for r in result.get("runs", {}).values()
            if r.get("kind") == kind and "mAP50-95" in r}


def values_by_seed(result: dict, kind: str) -> list[float]:
    """The val mAP50-95 of one run kind's runs, in seed order (see :func:`seed_maps`)."""
    return [m for _, m in sorted(seed_maps(result, kind).items())]


def seeds_above(candidate: dict[int, float], baseline: dict[int, float]) -> bool | None:
    """Every candidate seed above the baseline run of the same seed (None when the two did not run the same seeds:
    nothing to pair)."""
    if not candidate or set(candidate) != set(baseline):
        return None
    return all(candidate[s] > baseline[s] for s in candidate)


def shared_baselines(protocol: dict | None, results: dict[str, dict]) -> dict[str, tuple[dict, str]]:
    """{tag: (baseline row, the tag it comes from)} for each results file without a baseline of its own whose
    dataset has one in another of its files (the protocol runs the baseline once per dataset; the YOLO26-n rows
    once per dataset too, their own)."""
    shared = {}
    groups = [entry["results"] for name in SETS if protocol for entry in protocol["sets"][name].values()]
    for teachers in [*groups, *yolo26_datasets(protocol).values()]:
        tags = [t for t in teachers.values() if t in results]
        own = next((t for t in tags if "baseline" in results[t]["summary"]), None)
        for t in tags:
            if own is not None and t != own and "baseline" not in results[t]["summary"]:
                shared[t] = (results[own]["summary"]["baseline"], own)
    return shared


def mean_or_none(values: list[float]) -> float | None:
    return statistics.mean(values) if values else None


def protocol_report(protocol: dict, results: dict[str, dict], candidates: str | list[str]) -> dict:
    """Per set (tuning, confirmation): one row per dataset and teacher with Δ and gap closure, the mean gap closure
    and mean Δ over the rows that ran (overall and per teacher), and what has not run yet. Results whose tag the
    protocol does not name are listed under ``outside``."""
    report, named = {}, set()
    for set_name in SETS:
        rows, pending = [], []
        for dataset, entry in protocol["sets"][set_name].items():
            baseline, baseline_tag = dataset_baseline(entry, results)
            for teacher, tag in entry["results"].items():
                named.add(tag)
                row = gap_row(results[tag]["summary"], candidates, baseline) if tag in results else None
                if row is None:
                    pending.append(f"{dataset} ({teacher}): distill_gain_{tag}")
                    continue
                own = "baseline" in results[tag]["summary"]
                row["seeds_above"] = seeds_above(seed_maps(results[tag], row["candidate"]),
                                                 seed_maps(results[tag if own else baseline_tag], "baseline"))
                rows.append({"dataset": dataset, "teacher_size": teacher, "tag": tag, **row})
        closures = [r["closure"] for r in rows if r["closure"] is not None]
        per_teacher = {}
        for teacher in dict.fromkeys(r["teacher_size"] for r in rows):
            mine = [r for r in rows if r["teacher_size"] == teacher]
            per_teacher[teacher] = {
                "mean_closure": mean_or_none([r["closure"] for r in mine if r["closure"] is not None]),
                "mean_delta": mean_or_none([r["delta"] for r in mine]), "n": len(mine)}
        report[set_name] = {"rows": rows, "pending": pending, "mean_closure": mean_or_none(closures),
                            "mean_delta": mean_or_none([r["delta"] for r in rows]),
                            "never_below_baseline": bool(rows) and all(r["not_below_baseline"] for r in rows),
                            "every_seed_above": bool(rows) and all(r["seeds_above"] for r in rows),
                            "no_gap": [f"{r['dataset']} ({r['teacher_size']})" for r in rows if r["closure"] is None],
                            "per_teacher": per_teacher}
    named |= {tag for teachers in yolo26_datasets(protocol).values() for tag in teachers.values()}
    report["outside"] = sorted(set(results) - named)
    return report


def yolo26_report(protocol: dict, results: dict[str, dict], candidates: str | list[str]) -> dict:
    """Issue 27 item 4: per dataset and teacher of ``yolo26_students``, the YOLO26-n trained alone (the dataset's
    one baseline), Ultralytics' built-in on the same pair and the candidate; the target: the candidate at or above the
    built-in on average over the rows that ran (mean of candidate − built-in ≥ 0)."""
    rows, pending = [], []
    for dataset, teachers in yolo26_datasets(protocol).items():
        baseline, _ = dataset_baseline({"results": teachers}, results)
        for teacher, tag in teachers.items():
            summary = results.get(tag, {}).get("summary", {})
            row = gap_row(summary, candidates, baseline)
            if row is None or "ultralytics_kd" not in summary:
                pending.append(f"{dataset} ({teacher}): distill_gain_{tag}{partly_run(results.get(tag), baseline)}")
                continue
            builtin = summary["ultralytics_kd"]["mAP50-95"]
            per_seed = {k: values_by_seed(results[tag], k) for k in (row["candidate"], "ultralytics_kd")}
            rows.append({"dataset": dataset, "teacher_size": teacher, "tag": tag, **row, "builtin": builtin,
                         "vs_builtin": row["candidate_map"] - builtin, "candidate_runs": per_seed[row["candidate"]],
                         "builtin_runs": per_seed["ultralytics_kd"]})
    mean = mean_or_none([r["vs_builtin"] for r in rows])
    return {"rows": rows, "pending": pending, "mean_vs_builtin": mean,
            "at_or_above_builtin": None if mean is None else mean >= 0}


def partly_run(result: dict | None, baseline: dict | None) -> str:
    """What a YOLO26-n row's results file has and lacks (a session that ran part of it): '' when it has nothing."""
    if not result or not result.get("pending"):
        return ""
    alone = f"YOLO26-n alone {baseline['mAP50-95']:.3f} in; " if baseline and "baseline" in result["summary"] else ""
    return f" ({alone}still to run: {', '.join(result['pending'])})"


def render_yolo26(report: dict) -> str:
    """The YOLO26-n rows: the student alone, the built-in and the candidate on each teacher pair."""
    lines = ["## YOLO26-n students", "",
             "YOLO26-n students (val mAP50-95 of best.pt, means over seeds); the YOLO26-n trained alone runs once per "
             "dataset; Ultralytics' built-in (`distill_model=`) runs on the same teacher pair as detkd.", ""]
    if report["rows"]:
        lines += ["| dataset | teacher | teacher mAP | YOLO26-n alone | built-in | detkd | Δ detkd − alone | "
                  "detkd − built-in | detkd per seed | built-in per seed |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    else:
        lines.append("No results yet.")
    for r in report["rows"]:
        teacher = "—" if r["teacher"] is None else f"{r['teacher']:.3f}"
        seeds = [" / ".join(f"{v:.3f}" for v in runs) for runs in (r["candidate_runs"], r["builtin_runs"])]
        lines.append(f"| {r['dataset']} | {r['teacher_size']} | {teacher} | {r['baseline']:.3f} | "
                     f"{r['builtin']:.3f} | {r['candidate_map']:.3f} | {r['delta']:+.3f} | {r['vs_builtin']:+.3f} | "
                     f"{seeds[0]} | {seeds[1]} |")
    if report["rows"]:
        verdict = "yes" if report["at_or_above_builtin"] else "**no**"
        lines += ["", f"- detkd at or above the built-in on average: {verdict} (mean "
                      f"{report['mean_vs_builtin']:+.3f} over {len(report['rows'])} dataset × teacher rows)"]
    if report["pending"]:
        lines.append(f"- **not run yet:** {'; '.join(report['pending'])}")
    return "\n".join(lines) + "\n"


def _yes_no(v: bool | None) -> str:
    return "—" if v is None else ("yes" if v else "**no**")


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.0f} %"


def render_protocol(report: dict) -> str:
    """The tuning and confirmation sets as separate tables: Δ next to the gap closure, means per set."""
    lines = ["## The protocol: tuning and confirmation sets, reported separately", "",
             "Gap closure = Δ / (teacher − baseline): the share of the teacher's lead over the student trained "
             "alone that distillation recovers (val mAP50-95, means over seeds). — where the teacher is not above "
             "the baseline (no gap to close) or was not trained in the protocol.", ""]
    for set_name in SETS:
        part = report[set_name]
        lines += [f"### {set_name.capitalize()} set", ""]
        if part["rows"]:
            lines += ["| dataset | teacher | candidate run | teacher mAP | baseline | candidate | Δ | gap closure | "
                      "every seed above its baseline seed |", "|---|---|---|---:|---:|---:|---:|---:|---|"]
        else:
            lines.append("No results yet.")
        for r in part["rows"]:
            teacher = "—" if r["teacher"] is None else f"{r['teacher']:.3f}"
            lines.append(f"| {r['dataset']} | {r['teacher_size']} | {r['candidate']} | {teacher} | "
                         f"{r['baseline']:.3f} | {r['candidate_map']:.3f} | {r['delta']:+.3f} | "
                         f"{_pct(r['closure'])} | {_yes_no(r['seeds_above'])} |")
        mean_delta = "—" if part["mean_delta"] is None else f"{part['mean_delta']:+.3f}"
        lines += ["", f"- mean gap closure: **{_pct(part['mean_closure'])}**, mean Δ {mean_delta} "
                      f"(n = {len(part['rows'])} dataset × teacher rows)"]
        for teacher, t in part["per_teacher"].items():
            td = "—" if t["mean_delta"] is None else f"{t['mean_delta']:+.3f}"
            lines.append(f"- {teacher} teachers: mean gap closure {_pct(t['mean_closure'])}, mean Δ {td} "
                         f"(n = {t['n']})")
        if part["rows"]:
            lines.append(f"- never below the baseline mean: {'yes' if part['never_below_baseline'] else '**no**'}")
            lines.append(f"- every candidate seed above the baseline run of the same seed, on every row: "
                         f"{'yes' if part['every_seed_above'] else '**no**'}")
        if part["no_gap"]:
            lines.append(f"- no gap to close (teacher not above the baseline): {', '.join(part['no_gap'])}")
        if part["pending"]:
            lines.append(f"- **not run yet:** {'; '.join(part['pending'])}")
        lines.append("")
    if report["outside"]:
        lines += [f"Results outside the protocol (in neither set): {', '.join(report['outside'])}.", ""]
    return "\n".join(lines)


def load_results(files: list[Path]) -> dict[str, dict]:
    """{tag: distill_gain result} of the given files."""
    results = {}
    for f in files:
        r = json.loads(Path(f).read_text())
        results[r["settings"]["tag"]] = r
    return results


def yolo26_datasets(protocol: dict | None) -> dict[str, dict[str, str]]:
    """{dataset: {teacher size: results tag}} of the protocol's YOLO26-n student rows (``yolo26_students``)."""
    return ((protocol or {}).get("yolo26_students") or {}).get("datasets") or {}


def protocol_result_files(protocol: dict, results_dir: Path) -> list[Path]:
    """The ``distill_gain_<tag>.json`` files the protocol names that exist in ``results_dir``."""
    tags = [tag for name in SETS for entry in protocol["sets"][name].values() for tag in entry["results"].values()]
    tags += [tag for teachers in yolo26_datasets(protocol).values() for tag in teachers.values()]
    return [results_dir / f"distill_gain_{t}.json" for t in dict.fromkeys(tags)
            if (results_dir / f"distill_gain_{t}.json").exists()]


def render(results: dict[str, dict], candidates: str | list[str], checks: dict, baselines: dict | None = None) -> str:
    from detkd.bench.report import machine_line

    lines = ["# detkd recipe across datasets", ""]
    machines = {machine_line(r["machine"]) for r in results.values()}
    lines += [f"Machine: {m}." for m in sorted(machines)] + [""]
    for tag, r in results.items():
        s, agg = r["settings"], r["summary"]
        base = agg.get("baseline", {}).get("mAP50-95")
        shared = "" if base is not None or tag not in (baselines or {}) else \
            f" Δ against the dataset's baseline: {baselines[tag][1]}'s ({baselines[tag][0]['mAP50-95']:.3f})."
        base = base if not shared else baselines[tag][0]["mAP50-95"]
        lines += [f"## {tag}", "", f"Student {s['student']}, {s['epochs']} epochs, {s['imgsz']} px, batch {s['batch']}, "
                  f"seeds {s['seeds']}. Data: {s['data']}.{shared}", "",
                  "| run | seeds | mAP50-95 (mean ± spread) | per seed | Δ vs baseline | mAP50 |", "|---|---|---:|---|---:|---:|"]
        for kind, a in agg.items():
            spread = f" ± {a['spread']:.3f}" if a["spread"] is not None else ""
            delta = f"{a['mAP50-95'] - base:+.3f}" if base is not None and kind not in ("baseline", "teacher") else ""
            runs = " / ".join(f"{v:.3f}" for v in values_by_seed(r, kind) or a["mAP50-95_runs"])
            name = f"**{kind}**" if kind == checks["datasets"].get(tag, {}).get("candidate") else kind
            lines.append(f"| {name} | {','.join(map(str, a['seeds']))} | {a['mAP50-95']:.3f}{spread} | {runs} | "
                         f"{delta} | {a['mAP50']:.3f} |")
        lines.append("")
    yes = lambda b: "yes" if b else "**no**"  # noqa: E731
    names = " / ".join(f"`{c}`" for c in as_kinds(candidates))
    lines += [f"## Acceptance of the candidate ({names}: the first a dataset has)", "",
              "| dataset | candidate run | Δ vs baseline | not below baseline mean | "
              "above baseline beyond seed spread (worst seed > best baseline seed) |", "|---|---|---:|---|---|"]
    for tag, v in checks["datasets"].items():
        lines.append(f"| {tag} | {v['candidate']} | {v['delta']:+.3f} | {yes(v['not_below_baseline'])} | "
                     f"{yes(v['beyond_spread'])} |")
    mb = checks["mean_delta_vs_builtin"]
    lines += ["", f"- never below the baseline's mean on any dataset: {yes(checks['never_below_baseline'])}",
              f"- above the baseline beyond the seed spread on most datasets: {yes(checks['beyond_spread_on_most'])}",
              f"- above Ultralytics' built-in on average: {yes(checks['above_builtin_on_average'])}"
              + (f" (mean Δ {mb:+.3f})" if mb is not None else "")]
    return "\n".join(lines) + "\n"


ROLE_COLOURS = {"baseline": "tab:blue", "ultralytics_kd": "tab:orange", "candidate": "tab:green"}


CURVE_COLUMNS = 5  # panels per row of the curves figure


def plot_curves(results: dict[str, dict], kinds: list[str], path: Path, candidates: list[str] | None = None,
                baselines: dict[str, tuple[dict, str]] | None = None) -> Path:
    """val mAP50-95 per epoch (mean over seeds) of the chosen kinds, one panel per dataset; the kind ``candidate``
    stands for the first of ``candidates`` each dataset has. A file without a baseline of its own draws the one its
    dataset shares (``baselines``, :func:`shared_baselines`), labelled with the file it comes from."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    cols = min(n, CURVE_COLUMNS)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.6 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (tag, r) in zip(axes.flat, results.items()):
        for role in kinds:
            kind = pick_candidate(r["summary"], candidates or []) if role == "candidate" else role
            source = r
            if role == "baseline" and "baseline" not in r["summary"] and tag in (baselines or {}):
                source = results[baselines[tag][1]]
            curves = [run["curve"]["metrics/mAP50-95(B)"] for run in source["runs"].values()
                      if run["kind"] == kind and run.get("curve", {}).get("metrics/mAP50-95(B)")]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            mean = [statistics.mean(c[i] for c in curves) for i in range(length)]
            label = f"candidate: {kind}" if role == "candidate" else kind
            label += f" (from {baselines[tag][1]})" if source is not r else ""
            ax.plot(range(1, length + 1), mean, label=f"{label} (n={len(curves)})", lw=1.8,
                    color=ROLE_COLOURS.get(role))  # one colour per role in every panel
        ax.set_title(tag)
        ax.set_xlabel("epoch")
        ax.set_ylabel("val mAP50-95")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", nargs="*", type=Path,
                   help="distill_gain_<tag>.json files (with --protocol: added to the ones it names)")
    p.add_argument("--protocol", type=Path,
                   help="recipe_protocol.json: report its tuning and confirmation sets separately, with gap closure")
    p.add_argument("--results-dir", type=Path, default=ROOT / "benchmarks" / "results",
                   help="where the protocol's distill_gain_<tag>.json files are")
    p.add_argument("--candidate", nargs="+", default=["detkd"],
                   help="the run kind whose acceptance is checked; several: the first each dataset has")
    p.add_argument("--curves", nargs="+", default=["baseline", "ultralytics_kd", "candidate"],
                   help="kinds to plot ('candidate': the candidate of each dataset)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recipe")
    a = p.parse_args(argv)
    try:
        protocol = load_protocol(a.protocol) if a.protocol else None
    except ProtocolError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    files = [*(protocol_result_files(protocol, a.results_dir) if protocol else []), *a.results]
    if not files:
        print("error: no results to summarise; give distill_gain_<tag>.json files, or --protocol with results "
              f"in {a.results_dir}", file=sys.stderr)
        return 2
    results = load_results(files)
    baselines = shared_baselines(protocol, results)
    checks = acceptance(results, a.candidate, baselines)
    report = protocol_report(protocol, results, a.candidate) if protocol else None
    from detkd.bench.report import write_json_and_markdown

    report26 = yolo26_report(protocol, results, a.candidate) if yolo26_datasets(protocol) else None
    md = render(results, a.candidate, checks, baselines)
    if report is not None:
        md += "\n" + render_protocol(report)
    if report26 is not None:
        md += "\n" + render_yolo26(report26)
    write_json_and_markdown(a.out, {"candidate": a.candidate, "checks": checks, "protocol": report,
                                    "yolo26": report26, "datasets": {t: r["summary"] for t, r in results.items()}},
                            md)
    png = plot_curves(results, a.curves, a.out.with_name(a.out.name + "_curves.png"), a.candidate, baselines)
    print(f"wrote {a.out}.md, {a.out}.json, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
