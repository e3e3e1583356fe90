"""Benchmark rows -> readable tables (Markdown, also fine in a terminal) and JSON/Markdown files."""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path

COLUMNS = ("model", "params (M)", "GFLOPs", "backend", "provider", "device", "prec", "ran", "batch", "threads",
           "mean ms", "p50 ms", "p90 ms", "p99 ms", "img/s", "e2e mean ms", "e2e p50 ms", "e2e p99 ms", "e2e img/s")


def _f(v, nd: int = 2) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.{nd}f}" if abs(v) < 1e5 else f"{v:,.0f}"
    return str(v)


def row_cells(r: dict) -> list[str]:
    """Table cells of one row (skipped rows carry their reason in the timing columns)."""
    head = [r["model"], _f(r.get("params_m")), _f(r.get("gflops"), 1), r["backend"], r.get("provider") or "-",
            r.get("device") or "-", r["precision"], r.get("executed") or "-", str(r["batch"]), _f(r.get("threads"))]
    if r.get("status") != "ok":
        return head + ["skipped (see notes)"] + [""] * (len(COLUMNS) - len(head) - 1)
    lat, e2e = r["latency_ms"], r.get("e2e_ms") or {}
    return head + [_f(lat["mean"]), _f(lat["p50"]), _f(lat["p90"]), _f(lat["p99"]), _f(r["throughput_img_s"], 1),
                   _f(e2e.get("mean")), _f(e2e.get("p50")), _f(e2e.get("p99")), _f(r.get("e2e_throughput_img_s"), 1)]


def format_table(rows: list[dict]) -> str:
    """A Markdown table of rows, columns padded so it reads well as plain text too."""
    cells = [list(COLUMNS)] + [row_cells(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def model_family(label: str) -> str:
    """The model a row's label belongs to, so a checkpoint and its exports compare as one model:
    ``best.pt``, ``best.onnx``, ``best_int8.onnx``, ``best_openvino_model``, ``best_int8_openvino_model`` -> ``best``."""
    name = re.sub(r"\.(pt|pth|onnx|yaml|yml|xml)$", "", label.rstrip("/"))
    name = re.sub(r"_openvino_model$", "", name)
    return re.sub(r"_(int8|fp16|half)$", "", name)


def fastest_lines(rows: list[dict]) -> list[str]:
    """One line per model (a checkpoint and its exports together: the rows' ``family``, else :func:`model_family`
    of the label) and batch with several
    measured settings: the backend x precision with the lowest p50 model-only latency, the precision that really ran,
    and its speed-up over torch FP32 when that row is there.

    ``"fastest for best.pt b1: openvino bf16 (ran bf16), p50 3.1 ms = 2.4x torch fp32 (7.4 ms)"``; an export that wins
    is named: ``"... openvino int8 (ran int8, best_int8_openvino_model) ..."``.
    """
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r.get("status") == "ok":
            groups.setdefault((r.get("family") or model_family(r["model"]), r["batch"]), []).append(r)
    lines = []
    for (_, batch), rs in groups.items():
        if len(rs) < 2:
            continue
        best = min(rs, key=lambda r: r["latency_ms"]["p50"])
        model = rs[0]["model"]
        which = f", {best['model']}" if best["model"] != model else ""
        line = (f"fastest for {model} b{batch}: {best['backend']} {best['precision']} (ran "
                f"{best.get('executed') or best['precision']}{which}), p50 {best['latency_ms']['p50']:.2f} ms")
        base = next((r for r in rs if r["backend"] == "torch" and r["precision"] == "fp32"), None)
        if base is not None and base is not best:
            line += (f" = {base['latency_ms']['p50'] / best['latency_ms']['p50']:.1f}x torch fp32 "
                     f"({base['latency_ms']['p50']:.2f} ms)")
        lines.append(line)
    return lines


def machine_line(machine: dict) -> str:
    """One sentence naming the hardware and software the numbers come from."""
    gpus = ", ".join(f"{g['name']} ({g['memory_mib']} MiB)" for g in machine.get("gpus", [])) or "no GPU"
    cpu = machine["cpu"]
    v = machine["versions"]
    return (f"{cpu['name']} ({cpu['logical_cores']} logical / {cpu['physical_cores']} physical cores), {gpus}; "
            f"torch {v['torch']} (CUDA {v['cuda']}, cuDNN {v['cudnn']}), ultralytics {v['ultralytics']}, "
            f"onnxruntime {v['onnxruntime']} [{', '.join(machine.get('onnxruntime_providers', []))}], "
            f"openvino {v.get('openvino')}, "
            f"Python {machine['python']}, {machine['platform']}")


def format_notes(rows: list[dict]) -> str:
    """Bullet list of skip reasons and per-row notes ('' when none)."""
    notes = [(r, n) for r in rows for n in ([f"skipped: {r['reason']}"] if r.get("status") != "ok" else [])
             + list(r.get("notes", []))]
    return "\n".join(f"- {r['model']} {r['backend']} {r['precision']} b{r['batch']}: {n}" for r, n in notes)


def summarize(rows: list[dict], machine: dict, settings: dict | None = None, title: str = "Speed benchmark") -> str:
    """A Markdown report: machine, method, the table and each row's notes."""
    s = settings or {}
    lines = [f"# {title}", "", f"**Machine:** {machine_line(machine)}", ""]
    if s:
        lines += [f"**Method:** {s.get('warmup')} warm-up calls, then up to {s.get('iters')} timed calls or "
                  f"{s.get('time_budget')} s per loop (at least {s.get('min_iters')}); CUDA synchronised around each "
                  f"timed call. Model-only = preprocessed (B, 3, {s.get('imgsz')}, {s.get('imgsz')}) batch on the "
                  f"device through Ultralytics AutoBackend (fused); img/s from a separate pipelined loop. End-to-end "
                  f"= Ultralytics DetectionPredictor on B BGR frames of {s.get('source_shape')} (letterbox, "
                  f"normalise, inference, NMS conf={s.get('conf')} iou={s.get('iou')}, Results). Latencies are per "
                  f"call (one batch). GFLOPs per image at the bench imgsz.", ""]
    lines += [format_table(rows), ""]
    fastest = fastest_lines(rows)
    if fastest:
        lines += [f"- {f}" for f in fastest] + [""]
    notes = format_notes(rows)
    if notes:
        lines += ["Notes:", "", notes, ""]
    return "\n".join(lines)


def write_results(rows: list[dict], machine: dict, settings: dict, json_path: str | Path,
                  md_path: str | Path | None = None, title: str = "Speed benchmark") -> tuple[Path, Path | None]:
    """Write ``{"created", "machine", "settings", "results"}`` as JSON and, optionally, the Markdown summary."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine,
           "settings": settings, "results": rows}
    json_path.write_text(json.dumps(doc, indent=2, default=str))
    if md_path is not None:
        md_path = Path(md_path)
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(summarize(rows, machine, settings, title))
    return json_path, (Path(md_path) if md_path is not None else None)


def write_json_and_markdown(stem: str | Path, result: dict, markdown: str) -> None:
    """Write ``<stem>.json`` and ``<stem>.md`` (creating the folder), print the Markdown and both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    stem.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"written: {stem}.json, {stem}.md")
