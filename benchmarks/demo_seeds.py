#!/usr/bin/env python
"""The `detkd demo` recipe over several seeds -> benchmarks/results/demo_seeds_<machine>.json, .md.

Runs :func:`detkd.demo.run_demo` once per training seed (same generated data, same settings as ``detkd demo``;
teacher, baseline and distilled student all retrained per seed) and reports COCO AP per seed, mean ± spread
(spread = half the min–max range, as in the README's tables) and std, the distilled − baseline gain per seed, and
the verdict: *robust* when the worst distilled seed is above the best baseline seed. Each seed's wall time, CPU
time and the machine's load average are recorded (a busy machine inflates wall times)::

    python benchmarks/demo_seeds.py                       # seeds 0 1 2, the demo's defaults (~3 x the demo)
    python benchmarks/demo_seeds.py --seeds 0 --epochs 2 --teacher-epochs 1 --n-teacher 16 --n-student 8 \\
        --n-val 8 --runs /tmp/ds --out-dir /tmp/ds        # a quick look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("YOLO_OFFLINE", "1")

ROLES = ("teacher", "baseline", "distilled")


def parse_args(argv=None) -> argparse.Namespace:
    from detkd.demo import DemoSettings

    d = DemoSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", type=Path, default=Path("runs/demo_seeds"), help="one demo folder per seed in here")
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--tag", default=None, help="machine name in the file names (default: from the hardware)")
    p.add_argument("--imgsz", type=int, default=d.imgsz)
    p.add_argument("--n-teacher", type=int, default=d.n_teacher)
    p.add_argument("--n-student", type=int, default=d.n_student)
    p.add_argument("--n-val", type=int, default=d.n_val)
    p.add_argument("--teacher-epochs", type=int, default=d.teacher_epochs)
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--sequential", action="store_true")
    p.add_argument("--fresh", action="store_true",
                   help="retrain every seed (default: a seed whose finished demo_results.json in --runs has the same "
                        "settings is reused, so seeds can run as separate processes and be merged by a last call)")
    return p.parse_args(argv)


def _reusable(folder: Path, settings) -> dict | None:
    """The finished demo report in ``folder`` when it was run with ``settings`` (a DemoSettings), else None."""
    from dataclasses import asdict

    f = folder / "demo_results.json"
    if not f.exists():
        return None
    rep = json.loads(f.read_text())
    want = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(settings).items()}
    have = rep.get("settings", {})
    keys = [k for k in want if k not in {"out", "kd", "threads", "parallel"}]
    return rep if all(have.get(k) == want[k] for k in keys) else None


def stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values), "spread": (max(values) - min(values)) / 2,
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "min": min(values), "max": max(values)}


def summarize(per_seed: list[dict]) -> dict:
    """Mean ± spread per model, the gain per seed, and whether the worst distilled seed beats the best baseline."""
    out = {role: stats([r["rows"][role]["AP"] for r in per_seed]) for role in ROLES}
    gains = [r["rows"]["distilled"]["AP"] - r["rows"]["baseline"]["AP"] for r in per_seed]
    out["gain"] = stats(gains)
    out["robust"] = out["distilled"]["min"] > out["baseline"]["max"]
    out["all_seeds_gain"] = all(g > 0 for g in gains)
    return out


def format_md(report: dict) -> str:
    s, summ, seeds = report["settings"], report["summary"], report["per_seed"]
    lines = [
        f"# detkd demo recipe over {len(seeds)} seeds — {report['machine_tag']}",
        "",
        f"Scenario: {seeds[0]['scenario']}",
        f"Settings: {s['imgsz']} px; teacher {Path(s['teacher']).stem} on {s['n_teacher']} images, "
        f"{s['teacher_epochs']} epochs; students {Path(s['student']).stem} on {s['n_student']} images, "
        f"{s['epochs']} epochs; {s['n_val']} val images; batch {s['batch']}; teacher on {s['threads']} torch "
        f"thread(s); students {'in parallel' if s['parallel'] else 'sequential'}; KD: "
        + (", ".join(f"{k}={v}" for k, v in s["kd"].items()) or "detkd's defaults") + ".",
        "",
        "| model | " + " | ".join(f"seed {r['seed']}" for r in seeds) + " | mean ± spread | std |",
        "|---|" + "---:|" * (len(seeds) + 2),
    ]
    for role in ROLES:
        st = summ[role]
        lines.append(f"| {role} | " + " | ".join(f"{r['rows'][role]['AP']:.3f}" for r in seeds)
                     + f" | {st['mean']:.3f} ± {st['spread']:.3f} | {st['std']:.3f} |")
    g = summ["gain"]
    lines.append("| Δ distilled − baseline | " + " | ".join(
        f"{r['rows']['distilled']['AP'] - r['rows']['baseline']['AP']:+.3f}" for r in seeds)
        + f" | {g['mean']:+.3f} ± {g['spread']:.3f} | {g['std']:.3f} |")
    lines += [
        "",
        f"COCO AP (mAP50-95) on the demo's val split. Worst distilled seed {summ['distilled']['min']:.3f}, best "
        f"baseline seed {summ['baseline']['max']:.3f}: "
        + ("**robust** — every distilled seed is above every baseline seed." if summ["robust"]
           else "**not robust** — the seeds overlap."),
        "",
        "| seed | total wall (min) | teacher wall / CPU (s) | baseline wall / CPU (s) | distilled wall / CPU (s) | "
        "load avg (1 min) at start → end |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in seeds:
        rows = r["rows"]
        cells = [f"{rows[k]['train_s']:.0f} / {rows[k].get('cpu_s', float('nan')):.0f}" for k in ROLES]
        lines.append(f"| {r['seed']} | {r['total_s'] / 60:.1f} | " + " | ".join(cells)
                     + f" | {r['load_start'][0]:.1f} → {r['load_end'][0]:.1f} |")
    lines += ["", f"Machine: {report['machine']['cpu']['name']}, {report['machine']['cpu']['logical_cores']} "
                  f"logical cores; torch {report['machine']['versions']['torch']}, ultralytics "
                  f"{report['machine']['versions']['ultralytics']}."]
    return "\n".join(lines)


def main(argv=None) -> int:
    from detkd.bench.machine import machine_info, machine_tag
    from detkd.demo import DemoSettings, run_demo

    args = parse_args(argv)
    info = machine_info("cpu")
    tag = args.tag or machine_tag(info, "cpu")
    per_seed = []
    for seed in args.seeds:
        print(f"\n######## demo recipe, seed {seed} ########", flush=True)
        s = DemoSettings(out=args.runs / f"seed{seed}", imgsz=args.imgsz, n_teacher=args.n_teacher,
                         n_student=args.n_student, n_val=args.n_val, teacher_epochs=args.teacher_epochs,
                         epochs=args.epochs, batch=args.batch, seed=seed, threads=args.threads,
                         parallel=False if args.sequential else None)
        rep = None if args.fresh else _reusable(s.out, s)
        if rep is not None and "load" in rep:
            print(f"reusing {s.out / 'demo_results.json'}", flush=True)
        else:
            load0 = os.getloadavg()
            rep = run_demo(s)
            rep["load"] = {"start": list(load0), "end": list(os.getloadavg())}
            (s.out / "demo_results.json").write_text(json.dumps(rep, indent=2))
        per_seed.append({"seed": seed, "rows": rep["rows"], "total_s": rep["total_s"], "scenario": rep["scenario"],
                         "load_start": rep["load"]["start"], "load_end": rep["load"]["end"]})
        settings = {k: v for k, v in rep["settings"].items() if k not in {"out", "seed"}}  # common to all seeds
    report = {"machine_tag": tag, "machine": info, "settings": settings, "per_seed": per_seed,
              "summary": summarize(per_seed)}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    md = format_md(report)
    (args.out_dir / f"demo_seeds_{tag}.json").write_text(json.dumps(report, indent=2))
    (args.out_dir / f"demo_seeds_{tag}.md").write_text(md + "\n")
    print("\n" + md)
    print(f"\nwritten: {args.out_dir / f'demo_seeds_{tag}.md'}, {args.out_dir / f'demo_seeds_{tag}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
