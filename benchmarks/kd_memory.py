"""Peak memory of one training step: plain detection loss vs KD, and what ``verified`` anchor weights add.

    python benchmarks/kd_memory.py --imgsz 640 --batch 16 --boxes 200            # CPU: peak RSS
    python benchmarks/kd_memory.py --imgsz 640 --batch 16 --boxes 200 --device 0  # CUDA: peak allocated

``verified`` weights compare every anchor's teacher box with every ground-truth box of its image: (B, A, N) IoU
temporaries, ~110 MB each at 640 px (A = 8400), batch 16 and N = 200 boxes in a mosaic. Each scenario runs in a fresh
subprocess (peak RSS only grows), on random weights and a random batch with ``--boxes`` boxes per image:

* ``plain``         — student forward + Ultralytics' detection loss + backward;
* ``kd``            — the same with detkd's criterion (teacher forward, logit + box KD, ``union`` anchor weights);
* ``kd-verified``   — the same with ``verified`` anchor weights (ground-truth boxes in chunks, the default);
* ``kd-verified-all`` — the same, every ground-truth box at once (``gt_chunk=None``, the former implementation);
* ``verified-all`` / ``verified-chunked`` — :func:`verified_weights` alone on tensors of that shape, every ground-
  truth box at once (``gt_chunk=None``, the former implementation) vs the default chunks.

Reported per scenario: the peak minus the memory held just before the step (models, batch), in MiB. Writes
``benchmarks/results/kd_memory_<machine>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without `pip install -e .`

SCENARIOS = ("plain", "kd", "kd-verified", "kd-verified-all", "verified-all", "verified-chunked")


def random_batch(batch: int, imgsz: int, boxes: int, nc: int, device):
    """A (B, 3, S, S) image batch and ``boxes`` random normalised xywh targets per image (Ultralytics' format)."""
    import torch

    g = torch.Generator().manual_seed(0)
    n = batch * boxes
    wh = torch.rand(n, 2, generator=g) * 0.2 + 0.02
    xy = wh / 2 + torch.rand(n, 2, generator=g) * (1 - wh)
    return {"img": torch.rand(batch, 3, imgsz, imgsz, generator=g).to(device),
            "cls": torch.randint(0, nc, (n, 1), generator=g).float().to(device),
            "bboxes": torch.cat([xy, wh], 1).to(device),
            "batch_idx": torch.arange(batch).repeat_interleave(boxes).float().to(device)}


class Peak:
    """Peak memory above the level at construction: CUDA max allocated, or the process' max RSS (Linux: KiB)."""

    def __init__(self, device):
        import resource

        import torch

        self.cuda = device.type == "cuda"
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = _current_rss()
        self._resource = resource

    def mib(self) -> float:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - self.base) / 2**20
        return (self._resource.getrusage(self._resource.RUSAGE_SELF).ru_maxrss * 1024 - self.base) / 2**20


def _current_rss() -> int:
    """Resident memory now, bytes (Linux /proc)."""
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_scenario(name: str, args) -> dict:
    """One scenario in this process: the step's peak above the memory held before it (MiB)."""
    import torch
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils import DEFAULT_CFG

    from detkd.config import KDConfig
    from detkd.engine.criterion import DistillationLoss
    from detkd.losses.weighting import verified_weights
    from detkd.models.teacher import FrozenTeacher

    torch.manual_seed(0)
    device = torch.device("cpu" if args.device == "cpu" else f"cuda:{args.device}")
    batch = random_batch(args.batch, args.imgsz, args.boxes, args.nc, device)
    if name.startswith("verified-"):
        b, a, n = args.batch, (args.imgsz // 8) ** 2 + (args.imgsz // 16) ** 2 + (args.imgsz // 32) ** 2, args.boxes
        logits = torch.randn(b, a, args.nc, device=device)
        xy = torch.rand(b, a, 2, device=device) * args.imgsz
        t_boxes = torch.cat([xy, xy + torch.rand(b, a, 2, device=device) * 100], -1)
        gt_xy = torch.rand(b, n, 2, device=device) * args.imgsz
        gt_boxes = torch.cat([gt_xy, gt_xy + torch.rand(b, n, 2, device=device) * 100], -1)
        labels = torch.randint(0, args.nc, (b, n, 1), device=device).float()
        mask = torch.ones(b, n, 1, dtype=torch.bool, device=device)
        kwargs = {"gt_chunk": None} if name == "verified-all" else {}
        peak = Peak(device)
        verified_weights(logits, t_boxes, labels, gt_boxes, mask, **kwargs)
        return {"scenario": name, "peak_mib": peak.mib(), "shape_BAN": [b, a, n]}
    student = DetectionModel(args.student, nc=args.nc, verbose=False).to(device).train()
    student.args = DEFAULT_CFG
    detection = student.init_criterion()
    if name == "plain":
        criterion = detection
    else:
        teacher = FrozenTeacher(DetectionModel(args.teacher, nc=args.nc, verbose=False), device).optimize()
        kd = KDConfig(teacher="t.yaml", feat_kd=0.0,
                      anchor_weighting="verified" if name.startswith("kd-verified") else "union")
        if name == "kd-verified-all":  # the former implementation: every ground-truth box in one IoU pass
            import functools

            import detkd.engine.criterion as criterion_module

            criterion_module.verified_weights = functools.partial(verified_weights, gt_chunk=None)
        criterion = DistillationLoss(detection, teacher, None, kd)
    peak = Peak(device)
    loss, _ = criterion(student(batch["img"]), batch)
    loss.sum().backward()
    return {"scenario": name, "peak_mib": peak.mib()}


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# Peak memory of one training step ({report['machine_tag']})", "",
             f"{s['student']} student, {s['teacher']} teacher (random weights), imgsz {s['imgsz']}, "
             f"batch {s['batch']}, "
             f"{s['boxes']} boxes per image, {s['nc']} classes, feature KD off; peak above the memory held before the "
             f"step ({'CUDA max allocated' if s['device'] != 'cpu' else 'CPU max RSS'}), each scenario in a fresh "
             f"process.", "", "| scenario | peak (MiB) |", "|---|---:|"]
    lines += [f"| {r['scenario']} | {r['peak_mib']:.0f} |" for r in report["rows"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--boxes", type=int, default=200, help="ground-truth boxes per image")
    p.add_argument("--nc", type=int, default=80)
    p.add_argument("--student", default="yolov8n.yaml")
    p.add_argument("--teacher", default="yolov8s.yaml")
    p.add_argument("--device", default="cpu", help="cpu, or a CUDA index")
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    p.add_argument("--scenario", help=argparse.SUPPRESS)  # internal: run one scenario, print its JSON
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)
    if args.scenario:
        print(json.dumps(run_scenario(args.scenario, args)))
        return 0
    from detkd.bench.machine import machine_info, machine_tag

    base = [a for a in (argv if argv is not None else sys.argv[1:])]
    rows = []
    for name in args.scenarios:
        out = subprocess.run([sys.executable, __file__, *base, "--scenario", name], capture_output=True, text=True,
                             check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{name:>18}: {rows[-1]['peak_mib']:.0f} MiB", flush=True)
    info = machine_info(args.device)
    tag = machine_tag(info, args.device)
    settings = {k: getattr(args, k) for k in ("imgsz", "batch", "boxes", "nc", "student", "teacher", "device")}
    report = {"machine_tag": tag, "machine": info, "settings": settings, "rows": rows}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / f"kd_memory_{tag}.json").write_text(json.dumps(report, indent=2))
    (args.out_dir / f"kd_memory_{tag}.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
