"""What distillation costs: teacher forward speed (naive vs detkd-optimised) and KD epoch time vs plain training.

    python benchmarks/kd_overhead.py --data ../shared/datasets/raccoon --teacher yolov8l.yaml \\
        --student yolov8n.yaml --imgsz 640 --batch 16 --epochs 5 --device 0 --with-ultralytics-kd

1. Teacher forward, one batch (B, 3, imgsz, imgsz), timed with CUDA synchronisation after warm-up:
   * ``fp32``      — the checkpoint as loaded (unfused, FP32, NCHW);
   * ``amp``       — the same module under ``torch.autocast`` (what a teacher run inside the AMP training context
                     gets, e.g. Ultralytics' built-in ``distill_model``);
   * ``detkd``     — Conv+BN fused, FP16 weights, channels_last (``FrozenTeacher.optimize``).
2. Training epoch time (train loop only: on_train_epoch_start → on_train_epoch_end, validation excluded), median over
   epochs 2..E, for: plain Ultralytics training, detkd distillation (default recipe), and optionally Ultralytics'
   built-in ``distill_model=``. Same data, seed, batch and image size. Ratio = KD / plain.
   ``--extra-teachers K`` adds runs with 2..K+1 teachers (one batch feeds all of them, see
   :mod:`detkd.models.ensemble`): the cost of each extra teacher.

Speed does not depend on the weights, so teacher YAMLs (random init) are fine here. Writes
``benchmarks/results/kd_overhead_<machine>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without `pip install -e .`


def time_forward(fn, x, warmup: int, iters: int, cuda: bool) -> dict:
    """Milliseconds per call of ``fn(x)``: mean / p50 / p90 after ``warmup`` calls."""
    import torch

    with torch.no_grad():
        for _ in range(warmup):
            fn(x)
        if cuda:
            torch.cuda.synchronize()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn(x)
            if cuda:
                torch.cuda.synchronize()
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"mean_ms": statistics.mean(times), "p50_ms": times[len(times) // 2], "p90_ms": times[int(len(times) * 0.9)]}


def teacher_forward_bench(teacher_cfg: str, nc: int, imgsz: int, batch: int, device: str, warmup=10, iters=50) -> dict:
    import torch

    from detkd.models.loading import load_detection_model
    from detkd.models.teacher import FrozenTeacher

    dev = torch.device("cuda:0" if device not in {"cpu"} and torch.cuda.is_available() else "cpu")
    cuda = dev.type == "cuda"
    x = torch.rand(batch, 3, imgsz, imgsz, device=dev)
    net = load_detection_model(teacher_cfg, role="teacher", nc=nc).to(dev).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    out = {"fp32": time_forward(net, x, warmup, iters, cuda)}
    if cuda:
        def amp_forward(inp):
            with torch.autocast("cuda"):
                return net(inp)

        out["amp"] = time_forward(amp_forward, x, warmup, iters, cuda)
    if not cuda:  # the fused FP32 teacher, next to the BF16 one on CPUs with AMX
        fp32 = FrozenTeacher(load_detection_model(teacher_cfg, role="teacher", nc=nc), dev).optimize(half=False)
        out["detkd_fp32"] = time_forward(fp32, x, warmup, iters, cuda)
    teacher = FrozenTeacher(net, dev).optimize(half=True, cuda_graphs=False)
    out["detkd"] = {**time_forward(teacher, x, warmup, iters, cuda), "precision": teacher.precision}
    if cuda:
        teacher.use_graphs = True
        out["detkd_graph"] = time_forward(teacher, x, warmup, iters, cuda)
    base = out["fp32"]["mean_ms"]
    for v in out.values():
        v["speedup_vs_fp32"] = base / v["mean_ms"]
    return out


def train_timed(kind: str, args, data_yaml: str, teacher_pt: str | None) -> dict:
    from detkd.config import KDConfig
    from detkd.engine.callbacks import EpochTimer
    from detkd.engine.trainer import DistillationTrainer
    from ultralytics.models.yolo.detect import DetectionTrainer

    overrides = dict(model=args.student, data=data_yaml, epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
                     device=args.device, workers=args.workers, seed=0, deterministic=False, val=False, plots=False,
                     project=str(args.runs), name=kind, exist_ok=True, close_mosaic=0, amp=True)
    if kind == "plain":
        trainer = DetectionTrainer(overrides=overrides)
    elif kind.startswith("detkd_") and kind.endswith("teachers"):  # detkd_<n>teachers: an n-teacher ensemble
        n = int(kind[len("detkd_"):-len("teachers")])
        kd = KDConfig(teacher=[args.teacher_pts[i] for i in range(n)], validate_teacher=False)
        trainer = DistillationTrainer(overrides=overrides, kd=kd)
    elif kind.startswith("detkd"):  # detkd_eager: no CUDA graphs/side stream; detkd_inline: no CPU lookahead
        kd = KDConfig(teacher=args.teacher, validate_teacher=False, teacher_graphs=kind != "detkd_eager",
                      teacher_overlap=kind != "detkd_inline", teacher_half=kind != "detkd_fp32")
        trainer = DistillationTrainer(overrides=overrides, kd=kd)
    else:  # Ultralytics' built-in feature distillation
        trainer = DetectionTrainer(overrides={**overrides, "distill_model": teacher_pt})
    timer = EpochTimer().attach(trainer)
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    return {"epoch_times_s": timer.times, "median_epoch_s": timer.median(), "wall_s": wall,
            "iters_per_epoch": len(trainer.train_loader)}


def save_random_checkpoint(cfg: str, nc: int, names: dict, path: Path, seed: int = 0) -> str:
    """An Ultralytics-format checkpoint of a random-init model (for distill_model=, which needs a file)."""
    import torch

    from detkd.models.loading import load_detection_model

    torch.manual_seed(seed)
    net = load_detection_model(cfg, nc=nc)
    net.names = names
    torch.save({"model": net.half(), "train_args": {}, "epoch": -1}, path)
    return str(path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "raccoon"))
    p.add_argument("--teacher", default="yolov8l.yaml")
    p.add_argument("--student", default="yolov8n.yaml")
    p.add_argument("--imgsz", type=int, default=640)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--device", default="0")
    p.add_argument("--with-ultralytics-kd", action="store_true")
    p.add_argument("--skip-training", action="store_true", help="teacher forward benchmark only")
    p.add_argument("--extra-teachers", type=int, default=0, metavar="K",
                   help="also time runs with 2..K+1 teachers (copies of --teacher, different random weights)")
    p.add_argument("--runs", type=Path, default=Path("/tmp/detkd_kd_overhead"))
    p.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    args = p.parse_args(argv)

    from detkd.api import resolve_data
    from detkd.models.teacher import cpu_has_fast_bf16
    from ultralytics.utils import YAML

    data_yaml = resolve_data(args.data)
    data = YAML.load(data_yaml)
    names = data["names"] if isinstance(data["names"], dict) else dict(enumerate(data["names"]))
    nc = len(names)
    from detkd.bench.machine import machine_info, machine_tag

    info = machine_info(args.device)
    tag = machine_tag(info, args.device)
    result = {"machine": info, "settings": {k: str(v) for k, v in vars(args).items()}}

    print(f"[1/2] teacher forward: {args.teacher}, batch {args.batch}, {args.imgsz}px", flush=True)
    result["teacher_forward"] = teacher_forward_bench(args.teacher, nc, args.imgsz, args.batch, args.device)
    if not args.skip_training:
        args.runs.mkdir(parents=True, exist_ok=True)
        cpu = args.device == "cpu"
        kinds = ["plain", "detkd", "detkd_inline" if cpu else "detkd_eager"]
        if cpu and cpu_has_fast_bf16():  # the default runs a BF16 teacher there: the FP32 one beside it
            kinds.append("detkd_fp32")
        kinds += ["ultralytics_kd"] if args.with_ultralytics_kd else []
        kinds += [f"detkd_{n}teachers" for n in range(2, args.extra_teachers + 2)]
        teacher_pt = save_random_checkpoint(args.teacher, nc, names, args.runs / "teacher_random.pt")
        args.teacher_pts = [teacher_pt] + [save_random_checkpoint(args.teacher, nc, names,
                                                                  args.runs / f"teacher_random_{i}.pt", seed=i)
                                           for i in range(1, args.extra_teachers + 1)]
        result["training"] = {}
        for i, kind in enumerate(kinds):
            print(f"[2/2] training {kind} ({i + 1}/{len(kinds)}) ...", flush=True)
            result["training"][kind] = train_timed(kind, args, data_yaml, teacher_pt)
        plain = result["training"]["plain"]["median_epoch_s"]
        for v in result["training"].values():
            v["ratio_vs_plain"] = v["median_epoch_s"] / plain

    from detkd.bench.report import write_json_and_markdown

    write_json_and_markdown(args.out_dir / f"kd_overhead_{tag}", result, render_markdown(result))
    return 0


def render_markdown(r: dict) -> str:
    from detkd.bench.report import machine_line

    m, s = r["machine"], r["settings"]
    lines = [f"# Distillation overhead — {m['gpus'][0]['name'] if m['gpus'] else m['cpu']['name']}", "",
             f"{machine_line(m)}.", "",
             f"Teacher {s['teacher']}, student {s['student']}, {s['imgsz']} px, batch {s['batch']}.", "",
             "## Teacher forward (one batch)", "", "| variant | mean ms | p50 ms | p90 ms | speed-up vs fp32 |",
             "|---|---:|---:|---:|---:|"]
    labels = {"fp32": "FP32 eager, unfused", "amp": "AMP autocast, unfused",
              "detkd": "detkd: fused (+ FP16 + channels_last on CUDA, BF16 + channels_last on CPUs with AMX or AVX-512 BF16)",
              "detkd_fp32": "detkd: fused, FP32 (--teacher-half false)",
              "detkd_graph": "detkd: + CUDA graph (default)"}
    for k, v in r["teacher_forward"].items():
        label = labels.get(k, k) + (f" — ran {v['precision'].upper()}" if "precision" in v else "")
        lines.append(f"| {label} | {v['mean_ms']:.2f} | {v['p50_ms']:.2f} | {v['p90_ms']:.2f} | "
                     f"{v['speedup_vs_fp32']:.2f}x |")
    if "training" in r:
        lines += ["", f"## Training epoch time ({s['data']}, {s['epochs']} epochs, median of epochs 2..N, "
                      "train loop only)", "", "| run | iters/epoch | median epoch s | ratio vs plain | wall s |",
                  "|---|---:|---:|---:|---:|"]
        names = {"plain": "plain (no teacher)",
                 "detkd": "detkd KD (default recipe), teacher overlapped (CUDA: graphs + side stream; CPU: one batch "
                          "ahead in a worker thread)",
                 "detkd_inline": "detkd KD, teacher inline (--teacher-overlap false)",
                 "detkd_fp32": "detkd KD, teacher overlapped, FP32 teacher (--teacher-half false)",
                 "detkd_eager": "detkd KD, teacher eager (no graphs/side stream)",
                 "ultralytics_kd": "Ultralytics built-in distill_model",
                 **{f"detkd_{n}teachers": f"detkd KD, {n} teachers (one ensemble)" for n in range(2, 9)}}
        for k, v in r["training"].items():
            lines.append(f"| {names.get(k, k)} | {v['iters_per_epoch']} | {v['median_epoch_s']:.2f} | "
                         f"{v['ratio_vs_plain']:.3f}x | {v['wall_s']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
