"""One table across datasets for the recipe protocol, the acceptance checks, and the learning curves.

Reads the ``distill_gain_<tag>.json`` files written by ``benchmarks/distill_gain.py`` (one per dataset, same
protocol) and writes ``<out>.md|json`` (per dataset: every run kind with mean ± spread over seeds and Δ vs the
baseline) and ``<out>_curves.png`` (val mAP50-95 per epoch, mean over seeds, one panel per dataset)::

    python benchmarks/recipe_summary.py benchmarks/results/distill_gain_{shapes,raccoon,deeppcb,aerial_cars}.json \
        --candidate combo detkd --out benchmarks/results/recipe   # the first of the kinds each dataset has

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


def acceptance(results: dict[str, dict], candidates: str | list[str]) -> dict:
    """The three checks of issue 15 for the candidate recipe over datasets {tag: distill_gain result}."""
    rows, deltas_builtin = {}, []
    for tag, r in results.items():
        agg = r["summary"]
        candidate = pick_candidate(agg, candidates)
        if candidate is None or "baseline" not in agg:
            continue
        c, b = agg[candidate], agg["baseline"]
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


def render(results: dict[str, dict], candidates: str | list[str], checks: dict) -> str:
    from detkd.bench.report import machine_line

    lines = ["# detkd recipe across datasets", ""]
    machines = {machine_line(r["machine"]) for r in results.values()}
    lines += [f"Machine: {m}." for m in sorted(machines)] + [""]
    for tag, r in results.items():
        s, agg = r["settings"], r["summary"]
        base = agg.get("baseline", {}).get("mAP50-95")
        lines += [f"## {tag}", "", f"Student {s['student']}, {s['epochs']} epochs, {s['imgsz']} px, batch {s['batch']}, "
                  f"seeds {s['seeds']}. Data: {s['data']}.", "",
                  "| run | seeds | mAP50-95 (mean ± spread) | runs | Δ vs baseline | mAP50 |", "|---|---|---:|---|---:|---:|"]
        for kind, a in agg.items():
            spread = f" ± {a['spread']:.3f}" if a["spread"] is not None else ""
            delta = f"{a['mAP50-95'] - base:+.3f}" if base is not None and kind not in ("baseline", "teacher") else ""
            runs = ", ".join(f"{v:.3f}" for v in a["mAP50-95_runs"])
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


def plot_curves(results: dict[str, dict], kinds: list[str], path: Path, candidates: list[str] | None = None) -> Path:
    """val mAP50-95 per epoch (mean over seeds) of the chosen kinds, one panel per dataset; the kind ``candidate``
    stands for the first of ``candidates`` each dataset has."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.6), squeeze=False)
    for ax, (tag, r) in zip(axes[0], results.items()):
        for role in kinds:
            kind = pick_candidate(r["summary"], candidates or []) if role == "candidate" else role
            curves = [run["curve"]["metrics/mAP50-95(B)"] for run in r["runs"].values()
                      if run["kind"] == kind and run.get("curve", {}).get("metrics/mAP50-95(B)")]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            mean = [statistics.mean(c[i] for c in curves) for i in range(length)]
            label = f"candidate: {kind}" if role == "candidate" else kind
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
    p.add_argument("results", nargs="+", type=Path, help="distill_gain_<tag>.json files")
    p.add_argument("--candidate", nargs="+", default=["detkd"],
                   help="the run kind whose acceptance is checked; several: the first each dataset has")
    p.add_argument("--curves", nargs="+", default=["baseline", "ultralytics_kd", "candidate"],
                   help="kinds to plot ('candidate': the candidate of each dataset)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recipe")
    a = p.parse_args(argv)
    results = {}
    for f in a.results:
        r = json.loads(f.read_text())
        results[r["settings"]["tag"]] = r
    checks = acceptance(results, a.candidate)
    from detkd.bench.report import write_json_and_markdown

    write_json_and_markdown(a.out, {"candidate": a.candidate, "checks": checks,
                                    "datasets": {t: r["summary"] for t, r in results.items()}},
                            render(results, a.candidate, checks))
    png = plot_curves(results, a.curves, a.out.with_name(a.out.name + "_curves.png"), a.candidate)
    print(f"wrote {a.out}.md, {a.out}.json, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
