"""Where a KD training step spends its time: milliseconds per part against a plain step, one process per setting.

    python benchmarks/kd_profile.py --imgsz 160 --batch 16          # 2-core CPU: 160 px, batch 16
    python benchmarks/kd_profile.py --imgsz 640 --batch 8 --steps 3

One training step (student forward, loss, backward; no optimizer, no data loading) on a fixed synthetic batch
(random images, ``--boxes`` labelled boxes per image), timed after warm-up, median over ``--steps``:

* ``plain``  — the student's own detection loss (Ultralytics' ``v8DetectionLoss``);
* ``kd``     — detkd's default recipe (cls + box + cwd feature KD, ``verified`` weights, the guard);
* ``kd_2teachers`` — the same with two teachers (one ensemble);
* ``kd_unlabeled`` — the same with half the batch unlabelled (confidence weights + pseudo-labels).

Within a KD step each part is timed by wrapping the functions the criterion calls (forward only; their backward is
inside "backward"): teacher forward, ensemble combination, anchor weights (``verified``), each KD term (the feature
term includes the adapters), the guard's gradient alignment, the unlabelled-image weights and pseudo-labels, and the
detection loss. Peak memory is the process's peak RSS (CPU) or ``torch.cuda.max_memory_allocated`` (GPU), each
setting in its own process. Writes ``benchmarks/results/kd_profile_<machine>_<imgsz>px_b<batch>.json|md``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = ("plain", "kd", "kd_2teachers", "kd_unlabeled")
# (module, function) pairs the criterion calls, and the part of the table each one is counted in
TIMED = {
    ("detkd.engine.criterion", "verified_weights"): "anchor weights (verified)",
    ("detkd.engine.criterion", "anchor_weights"): "anchor weights (verified)",
    ("detkd.engine.criterion", "classification_kd_loss"): "cls KD",
    ("detkd.engine.criterion", "localization_kd_loss"): "box KD",
    ("detkd.engine.criterion", "distance_kd_loss"): "box KD",
    ("detkd.engine.criterion", "box_iou_kd_loss"): "box KD",
    ("detkd.engine.criterion", "feature_kd_loss"): "feature KD (+ adapters)",
    ("detkd.engine.guard", "gradient_alignment"): "guard (gradient alignment)",
    ("detkd.engine.criterion", "teacher_confidence_weights"): "unlabelled: confidence weights",
    ("detkd.engine.criterion", "pseudo_label_targets"): "unlabelled: pseudo-labels",
    ("detkd.models.ensemble", "combine_scores"): "ensemble: combine outputs",
    ("detkd.models.ensemble", "combine_boxes"): "ensemble: combine outputs",
}


class Clock:
    """Accumulated seconds per part within the current step."""

    def __init__(self):
        self.parts: dict[str, float] = defaultdict(float)
        self.depth = 0

    @contextmanager
    def part(self, name: str):
        self.depth += 1
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.depth -= 1
            self.parts[name] += time.perf_counter() - t0

    def wrap(self, fn, name: str):
        def timed(*a, **k):
            if self.depth:  # already inside a timed part (e.g. the ensemble inside the teacher): count it there too
                t0 = time.perf_counter()
                out = fn(*a, **k)
                self.parts[name] += time.perf_counter() - t0
                return out
            with self.part(name):
                return fn(*a, **k)
        return timed


def synthetic_batch(batch: int, imgsz: int, boxes: int, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(batch * boxes, 2, generator=g) * 0.8 + 0.1
    wh = torch.rand(batch * boxes, 2, generator=g) * 0.15 + 0.03
    return {"img": torch.rand(batch, 3, imgsz, imgsz, generator=g),
            "batch_idx": torch.arange(batch).repeat_interleave(boxes).float(),
            "cls": torch.zeros(batch * boxes, 1), "bboxes": torch.cat([xy, wh], 1)}


def profile_setting(setting: str, args) -> dict:
    """Run one setting in this process: per-step times (ms) per part and the peak memory."""
    import importlib
    import resource

    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import DetectionModel

    from detkd.config import KDConfig
    from detkd.engine.criterion import DistillationLoss
    from detkd.models.adapters import FeatureAdapters
    from detkd.models.ensemble import TeacherEnsemble
    from detkd.models.teacher import FrozenTeacher, feature_channels

    torch.set_num_threads(args.threads)
    device = torch.device("cuda:0" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    student = DetectionModel(args.student, nc=1, verbose=False).to(device).train()
    student.args = get_cfg()
    batch = {k: v.to(device) for k, v in synthetic_batch(args.batch, args.imgsz, args.boxes).items()}
    clock = Clock()
    if setting == "plain":
        criterion = student.init_criterion()
    else:
        n = 2 if setting == "kd_2teachers" else 1
        members = [FrozenTeacher(DetectionModel(args.teacher, nc=1, verbose=False), device).optimize(
                       half=args.teacher_half)
                   for _ in range(n)]
        teacher = members[0] if n == 1 else TeacherEnsemble(members)
        kd = KDConfig(teacher="x", validate_teacher=False,
                      **({"unlabeled": "x"} if setting == "kd_unlabeled" else {}))
        adapters = FeatureAdapters(feature_channels(student), teacher.channels).to(device)
        criterion = DistillationLoss(student.init_criterion(), teacher, adapters, kd)
        forward = teacher.__call__

        def timed_teacher(img):
            with clock.part("teacher forward"):
                return forward(img)
        criterion.teacher = type("Timed", (), {"__call__": staticmethod(timed_teacher),
                                               "__getattr__": lambda self, k: getattr(teacher, k)})()
        for (module, name), part in TIMED.items():
            mod = importlib.import_module(module)
            setattr(mod, name, clock.wrap(getattr(mod, name), part))
        detection_loss = criterion.detection_loss
        criterion.detection_loss = clock.wrap(detection_loss, "detection loss")
        if setting == "kd_unlabeled":
            batch["labeled"] = torch.arange(args.batch, device=device) % 2 == 0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    steps = []
    for i in range(args.warmup + args.steps):
        clock.parts.clear()
        student.zero_grad(set_to_none=True)
        sync()
        t0 = time.perf_counter()
        preds = student(batch["img"])
        sync()
        t1 = time.perf_counter()
        loss, _ = criterion(preds, batch)
        sync()
        t2 = time.perf_counter()
        loss.sum().backward()
        sync()
        t3 = time.perf_counter()
        if i >= args.warmup:
            row = {"student forward": t1 - t0, "loss (all parts)": t2 - t1, "backward": t3 - t2, "step": t3 - t0}
            row.update(clock.parts)
            steps.append({k: v * 1000 for k, v in row.items()})
    parts = sorted({k for s in steps for k in s})
    median = {k: statistics.median(s.get(k, 0.0) for s in steps) for k in parts}
    peak = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"ms": median, "peak_mib": peak, "steps": args.steps}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="yolov8s.yaml")
    p.add_argument("--student", default="yolov8n.yaml")
    p.add_argument("--imgsz", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--boxes", type=int, default=8, help="labelled boxes per image")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads (Ultralytics: cores - 1; 1 on 2 cores)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--teacher-half", type=lambda v: v.lower() in {"1", "true", "yes"}, default=True, metavar="BOOL",
                   help="reduced-precision teacher as detkd runs it (FP16 on CUDA, BF16 on CPUs with AMX or AVX-512 BF16) [true]")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    p.add_argument("--one", choices=SETTINGS, help=argparse.SUPPRESS)  # internal: run one setting, print JSON
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(profile_setting(args.one, args)))
        return 0

    from detkd.bench.machine import machine_info, machine_tag
    from detkd.bench.report import write_json_and_markdown

    info = machine_info(args.device)
    result = {"machine": info, "settings": {k: str(v) for k, v in vars(args).items() if k not in {"one", "out_dir"}},
              "profile": {}}
    for i, setting in enumerate(args.settings, 1):
        print(f"[{i}/{len(args.settings)}] {setting} ...", flush=True)
        cmd = [sys.executable, __file__, "--one", setting] + [a for a in (argv or sys.argv[1:])]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        result["profile"][setting] = json.loads(next(line[7:] for line in out.splitlines()
                                                      if line.startswith("RESULT ")))
    stem = args.out_dir / (f"kd_profile_{machine_tag(info, args.device)}_{args.imgsz}px_b{args.batch}"
                           + ("" if args.teacher_half else "_fp32"))
    write_json_and_markdown(stem, result, render_markdown(result))
    return 0


def render_markdown(r: dict) -> str:
    from detkd.bench.report import machine_line

    s, prof = r["settings"], r["profile"]
    plain = prof.get("plain", {}).get("ms", {}).get("step")
    lines = [f"# Where a KD step spends its time — {s['imgsz']} px, batch {s['batch']}", "",
             f"{machine_line(r['machine'])}; {s['threads']} torch thread(s).", "",
             f"Teacher {s['teacher']}, student {s['student']}, {s['boxes']} boxes per image, synthetic batch; median "
             f"of {s['steps']} steps after {s['warmup']} warm-up; forward + loss + backward, no optimizer or data "
             "loading. A part's time is its forward; its backward is inside \"backward\".", ""]
    cols = list(prof)
    lines += ["| ms per step | " + " | ".join(cols) + " |", "|---|" + "---:|" * len(cols)]
    order = ["student forward", "teacher forward", "ensemble: combine outputs", "detection loss",
             "anchor weights (verified)", "cls KD", "box KD", "feature KD (+ adapters)", "guard (gradient alignment)",
             "unlabelled: confidence weights", "unlabelled: pseudo-labels", "loss (all parts)", "backward", "step"]
    for part in order:
        if any(part in prof[c]["ms"] for c in cols):
            lines.append(f"| {part} | " + " | ".join(f"{prof[c]['ms'][part]:.1f}" if part in prof[c]["ms"] else "—"
                                                    for c in cols) + " |")
    if plain:
        lines.append("| **step vs plain** | " + " | ".join(f"**{prof[c]['ms']['step'] / plain:.2f}×**" for c in cols)
                     + " |")
    lines.append("| peak memory MiB | " + " | ".join(f"{prof[c]['peak_mib']:.0f}" for c in cols) + " |")
    if plain:
        base = prof["plain"]["peak_mib"]
        lines.append("| peak memory vs plain | " + " | ".join(f"{prof[c]['peak_mib'] / base:.2f}×" for c in cols)
                     + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
