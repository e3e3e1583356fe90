"""The comparison's figures (matplotlib, Agg backend): AP vs FPS with its Pareto front, and training curves."""

from __future__ import annotations

import csv
from pathlib import Path

COLORS = {"teacher": "#222222", "baseline": "#1f77b4", "ultralytics_kd": "#ff7f0e", "assistant": "#7f7f7f"}
DISTILLED_COLORS = ("#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
MARKERS = {"teacher": "s", "baseline": "o", "distilled": "^", "ultralytics_kd": "D", "assistant": "P"}
# compare --deploy: exported files, one marker per backend x precision (drawn in their source run's colour)
VARIANT_MARKERS = {"onnx:fp32": "v", "onnx:int8": "<", "openvino:fp32": "h", "openvino:int8": "*"}
DET_TERMS = (("train/box_loss", "box loss"), ("train/cls_loss", "cls loss"), ("train/dfl_loss", "dfl loss"),
             ("metrics/mAP50-95(B)", "val mAP50-95"))
KD_TERMS = (("train/cls_kd", "detkd cls_kd"), ("train/box_kd", "detkd box_kd"), ("train/feat_kd", "detkd feat_kd"),
            ("train/dis_loss", "Ultralytics dis_loss"))


def _figure(nrows: int, ncols: int, figsize, dpi: int):
    """A figure drawn by the Agg canvas, without pyplot (no global backend switch, nothing left open)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _figure_legend(fig, handles, labels: list[str], loc: str, fontsize: float) -> int:
    """A figure legend with as many columns as the widest label allows across the figure (so no entry runs off its
    edges); returns its number of rows (0 without labels) for the layout to leave room."""
    if not labels:
        return 0
    widest = max(len(t) for t in labels) * fontsize * 0.55 / 72 + 0.5  # inches: the text, marker and padding
    ncol = max(1, min(len(labels), int(fig.get_figwidth() // widest)))
    fig.legend(handles, labels, loc=loc, ncol=ncol, fontsize=fontsize, frameon=False)
    return -(-len(labels) // ncol)


LINE_STYLES = ("-", "--", ":", "-.")


def plot_styles(runs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(colour, line style) of each ``(kind, configuration)`` run: one colour per configuration (fixed for
    teacher/baseline/ultralytics-kd, a palette for each distilled configuration), the n-th run of a configuration
    (its n-th seed) drawn solid, dashed, dotted, ..."""
    palette: dict[str, str] = {}
    seen: dict[str, int] = {}
    out = []
    for kind, config in runs:
        if kind == "distilled":
            colour = palette.setdefault(config, DISTILLED_COLORS[len(palette) % len(DISTILLED_COLORS)])
        else:
            colour = COLORS.get(kind, "#7f7f7f")
        n = seen[config] = seen.get(config, -1) + 1
        out.append((colour, LINE_STYLES[n % len(LINE_STYLES)]))
    return out


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (x = FPS, y = AP; higher is better), by FPS."""
    order = sorted(range(len(points)), key=lambda i: (-points[i][0], -points[i][1]))
    front, best_y = [], float("-inf")
    for i in order:  # from the fastest down: keep each point more accurate than every faster one
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return sorted(front, key=lambda i: points[i][0])


def _place_labels(ax, pts: list[tuple[float, float]], w: float = 0.24, h: float = 0.085,
                  only: list[int] | None = None) -> list[tuple[float, float]]:
    """Label offsets (points) that keep the text boxes (``w`` x ``h`` axes fractions) of close points apart and off
    every point; ``only``: the indices that get a label (default all), in that order."""
    fig_w, fig_h = ax.figure.get_size_inches() * 72 * ax.get_position().size  # axes size in points
    to_ax = (ax.transData + ax.transAxes.inverted()).transform
    placed: list[tuple[float, float]] = []
    offsets = [(0.0, 0.0)] * len(pts)
    markers = [tuple(to_ax(p)) for p in pts]

    def clash(bx: float, by: float, own: int) -> bool:  # overlaps a placed label, or covers another point
        return (any(abs(bx - px) < w and abs(by - py) < h for px, py in placed)
                or any(j != own and bx - 0.01 <= mx <= bx + w and by - 0.02 <= my <= by + h
                       for j, (mx, my) in enumerate(markers)))

    for i in sorted(range(len(pts)) if only is None else only, key=lambda i: (pts[i][1], pts[i][0])):
        fx, fy = markers[i]
        dx = 8.0 if fx < 1 - w else -8.0 - w * fig_w  # right of the point, or left near the right edge
        bx = fx + dx / fig_w
        # above the point, else below, else further up/down; inside the axes when it can be
        tries = [fy + k * h + 0.02 for k in (0, -1, 1, -2, 2, -3, 3, -4, 4, 5, 6, 7, 8, 9, 10, 11, 12)]
        inside = [b for b in tries if 0.0 <= b <= 1.0 - h] or tries
        by = next((b for b in inside if not clash(bx, b, i)), inside[0])
        placed.append((bx, by))
        offsets[i] = (dx, (by - fy) * fig_h)
    return offsets


def map_points(specs) -> list[dict]:
    """The AP-vs-FPS points: one per configuration (``config``) at the mean AP and FPS of its runs, with the runs'
    AP range (``ap_lo``, ``ap_hi``) and count ``n``; labelled without the seed when a configuration has several
    runs (seeds), else by the run's own label. Runs without AP or FPS are left out. Exported variants (kind
    'deploy') carry ``variant`` and their source run's ``source_kind`` and ``source_config`` (for its colour)."""
    groups: dict[str, list] = {}
    for r in specs:
        if r.metrics.get("AP") is not None and r.speed.get("fps"):
            groups.setdefault(r.config or r.key, []).append(r)
    points = []
    for runs in groups.values():
        aps = [max(float(r.metrics["AP"]), 0.0) for r in runs]
        label = runs[0].label if len(runs) == 1 else runs[0].config_label
        points.append({"label": label, "kind": runs[0].kind, "config": runs[0].config or runs[0].key,
                       "fps": sum(float(r.speed["fps"]) for r in runs) / len(runs), "ap": sum(aps) / len(aps),
                       "ap_lo": min(aps), "ap_hi": max(aps), "n": len(runs), "variant": runs[0].variant})
    kinds = {r.key: (r.kind, r.config or r.key) for r in specs}
    for p, runs in zip(points, groups.values()):
        p["source_kind"], p["source_config"] = kinds.get(runs[0].source, (p["kind"], p["config"]))
    return points


def point_marker(p: dict) -> str:
    """The marker of a point: its variant's for an exported file, else its kind's."""
    return VARIANT_MARKERS.get(p.get("variant") or "", MARKERS.get(p["kind"], "o"))


def plot_map_vs_fps(specs, path, subtitle: str = "", ylabel: str = "COCO AP@[.50:.95]") -> Path:
    """Scatter of COCO AP against FPS, one labelled point per configuration (the mean of its seeds, the seeds' AP
    range as an error bar), the Pareto front drawn as a dashed step line. Exported variants (compare --deploy) are
    drawn in their run's colour with one marker per backend x precision (legend: the markers once, not every file);
    only those on the Pareto front get a text label."""
    from matplotlib.ticker import ScalarFormatter

    points = map_points(specs)
    fig, axes = _figure(1, 1, (8, 5.6), 120)
    ax = axes[0][0]
    pts = [(p["fps"], p["ap"]) for p in points]
    cols = [c for c, _ in plot_styles([(p["source_kind"], p["source_config"]) for p in points])]
    front = pareto_front(pts) if pts else []
    for n, (p, (x, y), c) in enumerate(zip(points, pts, cols)):
        if p["n"] > 1:
            ax.errorbar([x], [y], yerr=[[y - p["ap_lo"]], [p["ap_hi"] - y]], color=c, lw=1.2, capsize=4, zorder=3)
        label = p["label"] + (f" ({p['n']} seeds)" if p["n"] > 1 else "")
        ax.scatter([x], [y], s=90, color=c, marker=point_marker(p), edgecolor="white", linewidth=0.8,
                   zorder=4, label=None if p.get("variant") else label)
        if n in front and len(pts) > 1:
            ax.scatter([x], [y], s=260, facecolor="none", edgecolor="#777777", linewidth=1.0, zorder=3)
    if len(front) > 1:
        ax.step([pts[i][0] for i in front], [pts[i][1] for i in front], where="pre", ls="--", color="#999999",
                lw=1.2, zorder=2)
    for variant in dict.fromkeys(p["variant"] for p in points if p.get("variant")):  # one entry per marker
        from detkd.compare.deploy import variant_label

        ax.scatter([], [], s=90, color="#555555", marker=VARIANT_MARKERS.get(variant, "o"),
                   label=f"exported: {variant_label(variant)} (in its run's colour)")
    if len(pts) > 1:  # legend entry for the front (rings mark Pareto-optimal points)
        ax.plot([], [], ls="--", color="#999999", marker="o", mfc="none", mec="#777777", ms=11,
                label="Pareto front (ringed)")
    if any(p["n"] > 1 for p in points):
        subtitle = (subtitle + "; " if subtitle else "") + "points: mean of the seeds, bars: their AP range"
    xs = [p[0] for p in pts] or [1.0]
    lo, hi = min(xs), max(xs)
    if hi / max(lo, 1e-9) > 8:
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.5, hi * 2.5)
        ax.xaxis.set_major_formatter(ScalarFormatter())
    else:
        pad = (hi - lo) * 0.15 or hi * 0.15
        ax.set_xlim(max(0.0, lo - pad), hi + pad * 2.5)
    ys = [p["ap_hi"] for p in points] or [0.0]
    top = max(0.05, max(ys) * 1.35)
    ax.set_ylim(-0.02 * top, top)  # a little room below AP 0 so markers there are not clipped
    shown = [n for n, p in enumerate(points) if not p.get("variant") or n in front]  # text labels
    offsets = _place_labels(ax, pts, only=shown)
    for p, (x, y), c, off in [(points[n], pts[n], cols[n], offsets[n]) for n in shown]:
        ax.annotate(f"{p['label']}\nAP {y:.3f}, {x:.0f} FPS", (x, y), textcoords="offset points", xytext=off,
                    fontsize=8, color=c, va="bottom",
                    arrowprops=dict(arrowstyle="-", color=c, lw=0.6, alpha=0.6) if abs(off[1]) > 14 else None)
    ax.set_xlabel("FPS (images/s, higher is faster)")
    ax.set_ylabel(ylabel)
    ax.set_title("Accuracy vs speed (up and right is better)" + (f"\n{subtitle}" if subtitle else ""), fontsize=11)
    ax.grid(True, alpha=0.3)
    rows = _figure_legend(fig, *ax.get_legend_handles_labels(), loc="lower center", fontsize=8)
    fig.tight_layout(rect=(0, 0.01 + 0.04 * rows, 1, 1))
    path = Path(path)
    fig.savefig(path)
    return path


def read_results_csv(path) -> dict[str, list[float]]:
    """Columns of an Ultralytics results.csv as float lists (names stripped; unreadable cells become NaN)."""
    cols: dict[str, list[float]] = {}
    if not path or not Path(path).is_file():
        return cols
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                try:
                    x = float(v)
                except (TypeError, ValueError):
                    x = float("nan")
                cols.setdefault(str(k).strip(), []).append(x)
    return cols


def curve_panels(logs: list[dict]) -> list[list[tuple[str, str]]]:
    """The panels of the training-curve figure, per row: the detection terms, then the KD terms some run logged.

    A KD term no run logged (Ultralytics' ``dis_loss`` without ``--with-ultralytics-kd``) gets no panel; the detection
    row is always drawn in full (a missing term there says so)."""
    kd = [(col, title) for col, title in KD_TERMS if any(d.get(col) for d in logs)]
    return [list(DET_TERMS), kd or list(KD_TERMS)]


def plot_training_curves(runs: list[tuple[str, str, str, str | None]], path) -> Path:
    """Per-epoch curves of each run (``(label, kind, configuration, results_csv)``): detection terms and val mAP on
    the top row, the KD terms some run logged on the bottom row (a run without a term has no line in that panel). One colour per
    configuration; its seeds differ by line style."""
    from matplotlib.ticker import MaxNLocator

    data = [(label, kind, read_results_csv(csv_path)) for label, kind, _, csv_path in runs]
    styles = plot_styles([(kind, config) for _, kind, config, _ in runs])
    panels = curve_panels([d for _, _, d in data])
    fig, axes = _figure(2, 4, (15, 6.8), 110)
    for row, terms in enumerate(panels):
        for ax in axes[row][len(terms):]:  # slots of terms no run logged
            ax.set_visible(False)
        for j, (col, title) in enumerate(terms):
            ax = axes[row][j]
            drawn = False
            for (label, kind, d), (c, ls) in zip(data, styles):
                ys = d.get(col)
                if not ys:
                    continue
                ep = d.get("epoch") or list(range(1, len(ys) + 1))
                ax.plot(ep, ys, marker=MARKERS.get(kind, "o"), ms=5, lw=1.6, color=c, ls=ls, label=label)
                drawn = True
            ax.set_title(title, fontsize=10)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch", fontsize=8)
            ax.tick_params(labelsize=8)
            ax.grid(True, alpha=0.3)
            if not drawn:
                ax.text(0.5, 0.5, "not logged by these runs", ha="center", va="center", fontsize=8,
                        color="#888888", transform=ax.transAxes)
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    rows = _figure_legend(fig, handles, labels, loc="upper center", fontsize=9)
    axes[0][0].set_ylabel("detection loss / val", fontsize=9)
    axes[1][0].set_ylabel("KD terms", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.99 - 0.035 * rows))
    path = Path(path)
    fig.savefig(path)
    return path
