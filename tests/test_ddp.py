"""Multi-GPU code paths, run on CPU with torch.distributed's gloo backend."""

from __future__ import annotations

import pytest
import torch
from torch import distributed as dist

from detkd.losses.feature import feature_kd_loss
from detkd.models.adapters import FeatureAdapters

pytestmark = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available")


@pytest.fixture
def one_rank_group(tmp_path):
    """A one-process gloo process group (what torch DDP needs to wrap a module), torn down after the test."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("method", ["mgd", "cwd", "mse"])
def test_feature_kd_through_ddp_adapters_uses_every_parameter(one_rank_group, method):
    """The trainer wraps the adapters in DDP with find_unused_parameters=False: the loss must run every adapter
    parameter (MGD generators included) inside the wrapper's forward, and give the value of the bare adapters."""
    torch.manual_seed(0)
    adapters = FeatureAdapters([4, 8], [6, 6], with_generators=method == "mgd")
    ddp = torch.nn.parallel.DistributedDataParallel(adapters, find_unused_parameters=False)
    student = [torch.randn(2, 4, 8, 8), torch.randn(2, 8, 4, 4)]
    teacher = [torch.randn(2, 6, 8, 8), torch.randn(2, 6, 4, 4)]
    for _ in range(3):  # DDP raises at the next forward when a parameter got no gradient in the previous step
        torch.manual_seed(1)
        loss = feature_kd_loss(student, teacher, ddp, method=method, mgd_ratio=0.5)
        torch.manual_seed(1)  # same MGD masks
        assert loss.item() == pytest.approx(feature_kd_loss(student, teacher, adapters, method, mgd_ratio=0.5).item())
        adapters.zero_grad(set_to_none=True)
        loss.backward()
        assert all(p.grad is not None for p in adapters.parameters())


# ---------------------------------------------------------------------------------------------------------------------
# Two ranks: a real DistillationTrainer run under DDP.
#
# Ultralytics launches multi-GPU training by writing a script plus a pickled trainer state (``generate_ddp_file``) and
# running it with ``torch.distributed.run``. The test does the same, with the same files, on CPU. It cannot go through
# ``trainer.train()`` itself: that launches DDP only for a CUDA device string, and the generated script starts fresh
# interpreters that no patch made here reaches. So a small worker replaces what Ultralytics ties to CUDA and then runs
# Ultralytics' generated script (``runpy``) under the same ``torch.distributed.run`` command:
#   * the device count (``world_size`` comes from a CUDA device string; ``device='cpu'`` counts 0),
#   * ``_setup_ddp`` (``torch.device('cuda', rank)``, ``set_device``, NCCL) -> a gloo process group on the CPU,
#   * ``device_ids=[device.index]`` in Ultralytics' DDP wrap of the student (torch refuses it for a CPU module; the
#     adapters' wrap is left as detkd writes it),
#   * the validator's device for DDP ranks outside training (``torch.device('cuda', current_device())``).
# Everything else — the kd settings rebuilt from the pickled args, the student wrapped by Ultralytics, the criterion
# inside the wrapped forward, the adapters' own DDP, the teacher validation and its broadcast decision, distributed
# validation, checkpoints — runs as on GPUs.
# ---------------------------------------------------------------------------------------------------------------------

_WORKER = r'''
import json, os, runpy, sys
from pathlib import Path

import torch
from torch import distributed as dist

RANK, WORLD = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])

from ultralytics.engine import trainer as ul_trainer, validator as ul_validator
from ultralytics.nn.autobackend import AutoBackend
from ultralytics.utils.torch_utils import unwrap_model
from detkd.engine.trainer import DistillationTrainer
from detkd.models.adapters import FeatureAdapters


def _setup_ddp(self):
    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=RANK, world_size=self.world_size)


_do_train = ul_trainer.BaseTrainer._do_train


def _do_train_on_cpu(self):
    self.world_size = WORLD
    return _do_train(self)


class _DDP(torch.nn.parallel.DistributedDataParallel):
    def __init__(self, module, device_ids=None, *args, **kwargs):
        if device_ids == [None] and not isinstance(module, FeatureAdapters):
            device_ids = None
        super().__init__(module, device_ids, *args, **kwargs)


class _CudaBackend:
    @staticmethod
    def current_device():
        return 0


class _CPUAutoBackend(AutoBackend):
    def __init__(self, *args, device=None, **kwargs):
        super().__init__(*args, device=torch.device("cpu"), **kwargs)


_setup_train = DistillationTrainer._setup_train


def _setup_train_recorded(self):
    _setup_train(self)
    self.adapters_start = [float(p.detach().double().sum()) for p in self.adapters.parameters()]


ul_trainer.BaseTrainer._setup_ddp = _setup_ddp
DistillationTrainer._setup_train = _setup_train_recorded  # records the adapters' weights once wrapped (not a patch)
ul_trainer.BaseTrainer._do_train = _do_train_on_cpu
torch.nn.parallel.DistributedDataParallel = _DDP
ul_validator.get_torch_device_backend = lambda device_type: _CudaBackend
ul_validator.AutoBackend = _CPUAutoBackend

results = []
for script in sys.argv[1:]:
    try:
        t = runpy.run_path(script, run_name="__main__")["trainer"]
    except Exception as e:
        results.append({"ok": False, "error": type(e).__name__, "message": str(e)})
        continue
    loss = t._adapters_in_loss
    results.append({
        "ok": True, "world_size": t.world_size, "backend": dist.get_backend(), "teacher": t.kd.teacher,
        "feat_method": t.kd.feat_method, "student_wrapper": type(t.model).__name__,
        "criterion": type(unwrap_model(t.model).criterion).__name__,
        "adapters_ddp": isinstance(loss, torch.nn.parallel.DistributedDataParallel),
        "find_unused_parameters": getattr(loss, "find_unused_parameters", None),
        "adapters_start": t.adapters_start,
        "adapters": [float(p.detach().double().sum()) for p in t.adapters.parameters()],
        "student": float(sum(p.detach().double().sum() for p in unwrap_model(t.model).parameters())),
        "feat_kd": float(t.tloss["feat_kd"]),
        "sampler": type(t.train_loader.sampler).__name__,
        "shard": t.train_loader.sampler.epoch_indices(0).tolist() if hasattr(t.train_loader.sampler, "epoch_indices")
        else None,
    })
Path(os.environ["DETKD_DDP_OUT"], f"rank{RANK}.json").write_text(json.dumps(results))
'''


def _ddp_script(monkeypatch, tmp_path, name: str, overrides: dict, kd) -> str:
    """Ultralytics' own DDP launch files (script + pickled trainer state) for a DistillationTrainer."""
    from ultralytics.utils import dist as ul_dist

    from detkd.engine.trainer import DistillationTrainer

    monkeypatch.setattr(ul_dist, "USER_CONFIG_DIR", tmp_path)  # not the user's config dir
    trainer = DistillationTrainer(overrides={**overrides, "name": name}, kd=kd)
    return ul_dist.generate_ddp_file(trainer)


def test_two_rank_ddp_distillation_on_cpu(tmp_path, monkeypatch, shapes_yaml, teacher_pt):
    """A refused run (--min-teacher-map above the teacher) stops on both ranks with the same message instead of one
    rank waiting forever; a full MGD run with unlabelled images trains 1 epoch on 2 ranks with the student and the
    adapters in sync, each rank on its own shard of the labelled + unlabelled epoch."""
    import json
    import os
    import signal
    import subprocess
    import sys

    from ultralytics.utils.dist import find_free_network_port

    from detkd.config import KDConfig

    overrides = dict(model="yolov8n.yaml", data=shapes_yaml, imgsz=64, batch=4, epochs=1, device="cpu", workers=0,
                     plots=False, seed=0, exist_ok=True, warmup_epochs=0, amp=False, fraction=0.5,
                     project=str(tmp_path / "runs"))
    refused = _ddp_script(monkeypatch, tmp_path, "refused", overrides,
                          KDConfig(teacher=teacher_pt, feat_method="mgd", min_teacher_map=0.99))
    from test_unlabeled import _write_images

    _write_images(tmp_path / "frames", 6, size=(96, 96))
    trained = _ddp_script(monkeypatch, tmp_path, "train", overrides,
                          KDConfig(teacher=teacher_pt, feat_method="mgd", unlabeled=str(tmp_path / "frames")))
    worker = tmp_path / "worker.py"
    worker.write_text(_WORKER)
    env = {**os.environ, "DETKD_DDP_OUT": str(tmp_path), "OMP_NUM_THREADS": "1", "YOLO_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(find_free_network_port()), str(worker), refused, trained]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # torch.distributed.run stops its ranks (each in its own process group)
        try:
            log, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            log, _ = proc.communicate()
        pytest.fail(f"DDP run did not finish in 300 s (a rank waiting on the other?):\n{log[-4000:]}")
    assert proc.returncode == 0, log[-6000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]

    # 1. the refusal is decided on rank 0 and broadcast: both ranks stop with the same message
    for refusal, _ in ranks:
        assert not refusal["ok"] and refusal["error"] == "ConfigError", refusal
        assert "below --min-teacher-map 0.99" in refusal["message"]
    assert ranks[0][0]["message"] == ranks[1][0]["message"]

    # 2. the training run, as each rank rebuilt it from Ultralytics' pickled args
    r0, r1 = ranks[0][1], ranks[1][1]
    for r in (r0, r1):
        assert r["ok"], r
        assert r["world_size"] == 2 and r["backend"] == "gloo"
        assert r["teacher"] == teacher_pt and r["feat_method"] == "mgd"  # kd settings rebuilt in the worker
        assert r["student_wrapper"] == "_DDP" and r["criterion"] == "DistillationLoss"
        assert r["adapters_ddp"] and r["find_unused_parameters"] is False
        assert r["feat_kd"] > 0
        assert r["adapters"] != r["adapters_start"]  # trained (one optimizer step)
    # each rank trained on its own half of every batch: equal weights after the step mean the gradients of the
    # student (Ultralytics' DDP) and of the adapters with their MGD generators (detkd's DDP) were all-reduced
    assert r0["adapters_start"] == pytest.approx(r1["adapters_start"], rel=1e-12)  # DDP's initial broadcast
    assert r0["student"] == pytest.approx(r1["student"], rel=1e-9)
    assert r0["adapters"] == pytest.approx(r1["adapters"], rel=1e-9)
    # 3. the unlabelled mix under DDP: one epoch order, each rank its own shard (12 labelled + 12 unlabelled)
    assert r0["sampler"] == r1["sampler"] == "MixSampler"
    from detkd.data.unlabeled import MixSampler

    one_process = MixSampler(12, 6, 12, seed=0).epoch_indices(0).tolist()  # the 6 frames cycled twice
    assert len(r0["shard"]) == len(r1["shard"]) == 12
    assert r0["shard"] == one_process[0::2] and r1["shard"] == one_process[1::2]
    weights = tmp_path / "runs" / "train" / "weights"
    assert (weights / "last.pt").exists() and (weights / "kd_adapters.pt").exists()
