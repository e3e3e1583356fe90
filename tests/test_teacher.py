"""FrozenTeacher: raw head branches only (no decoding, no anchor cache), CUDA-graph bookkeeping and side-stream
waits checked on CPU with stand-ins for the CUDA objects (graph capture itself needs a GPU)."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import pytest
import torch
from ultralytics.nn.tasks import DetectionModel

from detkd.models.teacher import FrozenTeacher, detect_head, split_head_outputs


def _net(cfg: str = "yolov8n.yaml", nc: int = 3) -> DetectionModel:
    torch.manual_seed(0)
    return DetectionModel(cfg, nc=nc, verbose=False).eval()


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo26n.yaml"])
@pytest.mark.parametrize("optimized", [False, True])
def test_teacher_runs_the_raw_branches_only(cfg, optimized):
    """Same boxes/scores/features as the head's full inference forward, but the decoding (and the anchors it caches
    per input shape, which a CUDA graph would keep reading after they are replaced) never runs."""
    net = _net(cfg)
    teacher = FrozenTeacher(net, torch.device("cpu"))
    if optimized:
        teacher.optimize()  # fused: an end-to-end head keeps its one-to-many branch only
    head = detect_head(teacher.model)
    for size in (64, 96):  # a shape change: the inference path would rebuild its anchors each time
        img = torch.rand(2, 3, size, size)
        out = teacher(img)
        assert head.shape is None and head.anchors.numel() == 0 and head.strides.numel() == 0
        with torch.no_grad():
            ref = split_head_outputs(teacher.model(img))  # the full inference forward (decodes, caches anchors)
        assert head.anchors.numel() > 0  # (so the check above can fail)
        head.shape, head.anchors, head.strides = None, torch.empty(0), torch.empty(0)
        n_anchors = sum((size // s) ** 2 for s in (8, 16, 32))
        assert out.boxes.shape == (2, n_anchors, 4 * teacher.reg_max) and out.scores.shape == (2, n_anchors, 3)
        torch.testing.assert_close(out.boxes, ref.boxes)
        torch.testing.assert_close(out.scores, ref.scores)
        assert len(out.feats) == 3
        for f, r in zip(out.feats, ref.feats):
            torch.testing.assert_close(f, r)
        assert not head.training and not teacher.model.training  # the head's flag is restored


class _FakeGraph:
    captures: list = []

    def replay(self):
        pass


@pytest.fixture
def fake_cuda_graphs(monkeypatch):
    """torch.cuda graph API stand-ins: capture runs the forward eagerly and records the memory pool it was given."""
    pools = []

    @contextmanager
    def graph(g, pool=None, **_):
        pools.append(pool)
        yield

    monkeypatch.setattr(torch.cuda, "CUDAGraph", _FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", graph)
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: object())
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    return pools


def test_graphs_share_one_memory_pool_and_never_build_anchors(fake_cuda_graphs):
    teacher = FrozenTeacher(_net(), torch.device("cpu"))
    teacher.use_graphs = True
    head = detect_head(teacher.model)
    for size in (64, 96, 64, 128):
        teacher(torch.rand(1, 3, size, size))
    assert len(teacher._graphs) == 3  # one per input shape
    assert len(fake_cuda_graphs) == 3 and fake_cuda_graphs[0] is not None
    assert all(p is fake_cuda_graphs[0] for p in fake_cuda_graphs)  # one shared pool
    assert head.anchors.numel() == 0  # no per-shape tensor outside the graphs' own memory


class _Stream:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def wait_stream(self, other):
        self.log.append(f"{self.name} waits {other.name}")


@pytest.fixture
def fake_streams(monkeypatch):
    log = []
    main, side = _Stream("main", log), _Stream("side", log)
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: main)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: nullcontext())
    teacher = FrozenTeacher(_net(), torch.device("cpu"))
    teacher._stream = side
    monkeypatch.setattr(teacher, "_hand_over", lambda out, stream: out)  # record_stream needs CUDA tensors
    forwards = []
    real = teacher._forward
    monkeypatch.setattr(teacher, "_forward", lambda img: forwards.append(img) or log.append("forward") or real(img))
    return teacher, log, forwards


def test_a_prefetched_batch_is_collected_after_waiting_on_the_side_stream(fake_streams):
    teacher, log, forwards = fake_streams
    img = torch.rand(1, 3, 64, 64)
    teacher.prefetch(img)
    log.append("student")
    teacher(img)
    assert forwards == [img]  # run once, on the side stream
    assert log == ["side waits main", "forward", "student", "main waits side"]


def test_a_pending_prefetch_is_always_waited_for(fake_streams):
    """A batch other than the prefetched one (e.g. a retried batch) runs on the main stream: it must first wait for the
    side stream, still replaying the same graph into the same static buffers."""
    teacher, log, forwards = fake_streams
    a, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    teacher.prefetch(a)
    log.clear()
    teacher(b)
    assert log == ["main waits side", "forward"]
    assert forwards[-1] is b and teacher._pending is None
    log.clear()
    teacher(b)  # nothing pending: no wait
    assert log == ["forward"]


def test_an_end2end_yolo26_teacher_teaches_from_its_one_to_many_branch_after_fusion():
    """Released YOLO26 weights (and any trained with nms=False) store end2end=True; Ultralytics' fusion then drops the
    one-to-many branch. The teacher must keep it: the dense targets are the one-to-many outputs, fused or not."""
    net = _net("yolo26n.yaml")
    detect_head(net).end2end = True
    img = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        head = detect_head(net)
        head.training = True
        ref = net(img)["one2many"]
        head.training = False
    teacher = FrozenTeacher(net, torch.device("cpu")).optimize()
    assert detect_head(teacher.model).cv2 is not None
    out = teacher(img)
    torch.testing.assert_close(out.scores, ref["scores"].permute(0, 2, 1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out.boxes, ref["boxes"].permute(0, 2, 1), atol=1e-4, rtol=1e-4)


def test_a_teacher_without_its_one_to_many_branch_is_an_error_never_a_fallback():
    from detkd.errors import IncompatibleModelsError
    from detkd.models.compat import check_head_supported

    net = _net("yolo26n.yaml")
    detect_head(net).end2end = True
    net.fuse(verbose=False)  # Ultralytics' own fusion: only the one-to-one branch is left
    assert detect_head(net).cv2 is None
    with pytest.raises(IncompatibleModelsError, match="one-to-many"):
        check_head_supported(net, "teacher")
    with pytest.raises(ValueError, match="one-to-many"):
        split_head_outputs({"one2many": {}, "one2one": {"boxes": torch.zeros(1, 4, 2), "scores": torch.zeros(1, 3, 2),
                                                        "feats": []}})


# ------------------------------------------------------------------------------ reduced precision on CPU (BF16)
@pytest.fixture
def cpu_with_amx(monkeypatch):
    """A CPU with BF16 matrix units (AMX): BF16 kernels run on any CPU, only their speed differs."""
    import detkd.models.teacher as teacher_module

    monkeypatch.setattr(teacher_module, "cpu_has_fast_bf16", lambda: True)


def _outputs(t: FrozenTeacher, img: torch.Tensor) -> list[torch.Tensor]:
    out = t(img)
    return [out.boxes, out.scores, *out.feats]


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo26n.yaml"])
def test_on_a_cpu_with_bf16_matrix_units_the_half_teacher_runs_in_bf16_and_hands_out_fp32(cpu_with_amx, cfg):
    img = torch.rand(2, 3, 64, 64)
    ref = _outputs(FrozenTeacher(_net(cfg), torch.device("cpu")).optimize(half=False), img)
    teacher = FrozenTeacher(_net(cfg), torch.device("cpu")).optimize(half=True)
    assert teacher.dtype == torch.bfloat16 and teacher.precision == "bf16"
    assert {p.dtype for p in teacher.model.parameters()} == {torch.bfloat16}
    out = _outputs(teacher, img)
    for o, r in zip(out, ref):
        assert o.dtype == torch.float32 and o.shape == r.shape
        assert o.is_contiguous()  # not channels_last: the KD terms mix them with the student's tensors
        # BF16 keeps 8 bits of mantissa: a few parts in a thousand of each tensor's range, never more
        assert float((o - r).abs().max()) <= 0.03 * float(r.abs().max())
    assert not any(p.requires_grad for p in teacher.model.parameters())


def test_without_bf16_matrix_units_or_with_half_off_the_cpu_teacher_stays_fp32_and_exact(monkeypatch, cpu_with_amx):
    import detkd.models.teacher as teacher_module

    img = torch.rand(2, 3, 64, 64)
    ref = _outputs(FrozenTeacher(_net(), torch.device("cpu")).optimize(half=False), img)
    off = FrozenTeacher(_net(), torch.device("cpu")).optimize(half=False)
    monkeypatch.setattr(teacher_module, "cpu_has_fast_bf16", lambda: False)
    plain_cpu = FrozenTeacher(_net(), torch.device("cpu")).optimize(half=True)
    for t in (off, plain_cpu):
        assert t.dtype == torch.float32 and t.precision == "fp32"
        for o, r in zip(_outputs(t, img), ref):
            assert torch.equal(o, r)


def test_the_bf16_check_reads_torchs_amx_and_avx512_bf16_probes(monkeypatch):
    import detkd.models.teacher as teacher_module

    monkeypatch.undo()  # the real check, not conftest's stand-in
    for amx, avx512_bf16, unit in [(True, False, "AMX"), (True, True, "AMX"), (False, True, "AVX-512 BF16"),
                                   (False, False, None)]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v, raising=False)
        assert teacher_module.cpu_bf16_unit() == unit
        assert teacher_module.cpu_has_fast_bf16() is (unit is not None)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert not teacher_module.cpu_has_fast_bf16()  # an older torch without the probes: FP32, never a crash


def test_the_run_says_which_precision_the_teacher_computes_in_and_how_to_change_it():
    from detkd.models.teacher import teacher_precision_line

    bf16 = teacher_precision_line("bf16", "cpu")
    assert "BF16" in bf16 and "--teacher-half false" in bf16
    assert "AVX-512 BF16" in teacher_precision_line("bf16", "cpu", unit="AVX-512 BF16")
    assert "FP16" in teacher_precision_line("fp16", "cuda")
    assert "no fast BF16" in teacher_precision_line("fp32", "cpu")
    assert "--teacher-half false" in teacher_precision_line("fp32", "cpu", half=False)  # asked for, not the CPU
    assert "--teacher-half false" in teacher_precision_line("fp32", "cuda")
