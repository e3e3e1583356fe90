"""Several seeds per configuration: mean, spread and whether a difference is beyond it.

A single-seed ΔAP is noise until shown otherwise. With runs repeated over seeds (``detkd compare --seeds 0 1 2``),
each configuration (baseline, every distilled one, Ultralytics' KD) gets:

    mean  = (1/n) Σ_s AP_s
    std   = sqrt( Σ_s (AP_s − mean)² / (n − 1) )          (sample standard deviation; 0 for one seed)
    Δmean = mean(config) − mean(baseline)
    Δ_s   = AP_s(config) − AP_s(baseline)                  (paired by seed: same augmentation stream)

and a verdict on the paired differences:

* **better** — every paired Δ_s > 0 and the worst seed of the configuration is above the best baseline seed;
* **worse**  — every paired Δ_s < 0 and the best seed of the configuration is below the worst baseline seed;
* **within the spread** — anything else (the sign depends on the seed).
"""

from __future__ import annotations

import math


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for fewer than two values)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def verdict(config: dict[int, float], baseline: dict[int, float]) -> str:
    """'better' / 'worse' / 'within the spread' from per-seed APs ``{seed: AP}`` (see the module doc)."""
    seeds = sorted(set(config) & set(baseline))
    if len(seeds) < 2:
        return "single seed: not enough to tell"
    deltas = [config[s] - baseline[s] for s in seeds]
    cfg, base = [config[s] for s in seeds], [baseline[s] for s in seeds]
    if all(d > 0 for d in deltas) and min(cfg) > max(base):
        return "better"
    if all(d < 0 for d in deltas) and max(cfg) < min(base):
        return "worse"
    return "within the spread"


def aggregate(rows: list[dict]) -> list[dict]:
    """One summary per configuration (``row['config']``) of the trained rows, in first-seen order.

    Rows need ``config``, ``kind``, ``label``, ``seed`` and ``AP``. Returns dicts with ``config``, ``label``,
    ``kind``, ``seeds``, ``aps`` ({seed: AP}), ``mean``, ``std``, ``delta_mean`` and ``verdict`` (None for the
    baseline).
    """
    groups: dict[str, dict] = {}
    for r in rows:
        if r["kind"] == "teacher" or r.get("AP") is None:
            continue
        g = groups.setdefault(r["config"], {"config": r["config"], "label": r.get("config_label", r["config"]),
                                            "kind": r["kind"], "aps": {}})
        g["aps"][int(r["seed"])] = float(r["AP"])
    base = next((g for g in groups.values() if g["kind"] == "baseline"), None)
    out = []
    for g in groups.values():
        mean, std = mean_std(list(g["aps"].values()))
        g.update(seeds=sorted(g["aps"]), mean=mean, std=std, delta_mean=None, verdict=None)
        if base is not None and g is not base:
            g["delta_mean"] = mean - mean_std(list(base["aps"].values()))[0]
            g["verdict"] = verdict(g["aps"], base["aps"])
        out.append(g)
    return out


def format_seed_table(groups: list[dict]) -> str:
    """Markdown: configuration, seeds, AP per seed, mean ± std, Δ mean vs baseline, verdict."""
    lines = ["| configuration | seeds | AP per seed | AP mean ± std | Δ mean vs baseline | verdict |",
             "|---|---|---|---:|---:|---|"]
    for g in groups:
        per_seed = ", ".join(f"{g['aps'][s]:.3f}" for s in g["seeds"])
        delta = "" if g["delta_mean"] is None else f"{g['delta_mean']:+.3f}"
        lines.append(f"| {g['label']} | {' '.join(map(str, g['seeds']))} | {per_seed} | "
                     f"{g['mean']:.3f} ± {g['std']:.3f} | {delta} | {g['verdict'] or ''} |")
    return "\n".join(lines)
