"""``detkd demo``: the embedded default — a full teacher / baseline / distilled experiment on generated data."""

from __future__ import annotations

from pathlib import Path

HELP = "Offline CPU demo: generate data, train a teacher, a baseline and a distilled student, print the table."


def add_arguments(p) -> None:
    from detkd.demo import DemoSettings

    d = DemoSettings()
    p.add_argument("--out", type=Path, default=d.out, help="output folder (data, runs, eval, results)")
    p.add_argument("--imgsz", type=int, default=d.imgsz)
    p.add_argument("--n-train", type=int, default=d.n_train)
    p.add_argument("--n-val", type=int, default=d.n_val)
    p.add_argument("--teacher", default=d.teacher, help="teacher model YAML")
    p.add_argument("--student", default=d.student, help="student model YAML")
    p.add_argument("--teacher-epochs", type=int, default=d.teacher_epochs)
    p.add_argument("--epochs", type=int, default=d.epochs, help="student epochs (baseline and distilled)")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--device", default=d.device)
    p.add_argument("--seed", type=int, default=d.seed)


def run(args) -> int:
    from detkd.demo import DemoSettings, run_demo

    run_demo(DemoSettings(out=args.out, imgsz=args.imgsz, n_train=args.n_train, n_val=args.n_val,
                          teacher=args.teacher, student=args.student, teacher_epochs=args.teacher_epochs,
                          epochs=args.epochs, batch=args.batch, device=args.device, seed=args.seed))
    return 0
