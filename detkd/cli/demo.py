"""``detkd demo``: the embedded default — a full teacher / baseline / distilled experiment on generated data."""

from __future__ import annotations

from pathlib import Path

HELP = ("Offline CPU demo (minutes): generate data, train a teacher, a baseline and a distilled student, print the "
        "table and plot AP per epoch.")


def add_arguments(p) -> None:
    from detkd.demo import DemoSettings

    d = DemoSettings()
    p.add_argument("--out", type=Path, default=d.out, help="output folder (data, runs, eval, results, plot)")
    p.add_argument("--imgsz", type=int, default=d.imgsz)
    p.add_argument("--n-teacher", "--n-train", dest="n_teacher", type=int, default=d.n_teacher,
                   help="labelled train images of the teacher")
    p.add_argument("--n-student", type=int, default=d.n_student,
                   help="labelled train images of the students (the teacher's first N)")
    p.add_argument("--n-val", type=int, default=d.n_val)
    p.add_argument("--teacher", default=d.teacher, help="teacher model YAML")
    p.add_argument("--student", default=d.student, help="student model YAML")
    p.add_argument("--teacher-epochs", type=int, default=d.teacher_epochs)
    p.add_argument("--epochs", type=int, default=d.epochs, help="student epochs (baseline and distilled)")
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--device", default=d.device)
    p.add_argument("--seed", type=int, default=d.seed, help="training seed (the generated data stays the same)")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="torch threads for the teacher and the evaluation (default: every core)")
    p.add_argument("--sequential", action="store_true",
                   help="train the two students one after the other (default on a CPU with 2+ cores: at the same "
                        "time, one process and one core each)")


def run(args) -> int:
    from detkd.demo import DemoSettings, run_demo

    run_demo(DemoSettings(out=args.out, imgsz=args.imgsz, n_teacher=args.n_teacher, n_student=args.n_student,
                          n_val=args.n_val, teacher=args.teacher, student=args.student,
                          teacher_epochs=args.teacher_epochs, epochs=args.epochs, batch=args.batch,
                          device=args.device, seed=args.seed, threads=args.threads,
                          parallel=False if args.sequential else None))
    return 0
