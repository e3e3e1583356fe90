"""The frozen teacher: loaded once, never trained, run as fast as the hardware allows.

``FrozenTeacher`` wraps an Ultralytics ``DetectionModel``:

* every parameter has ``requires_grad=False``, the module is in ``eval()`` (BatchNorm uses running stats);
* forward runs under ``torch.no_grad()`` (not ``inference_mode``: its outputs are targets inside the student's
  autograd graph, which inference tensors cannot be);
* it is optimised for inference: Conv+BN fused; on CUDA also FP16 weights, channels_last memory format, CUDA
  graphs and a side stream that overlaps it with the student; on a CPU with fast BF16 (Intel AMX: about 4×; AVX-512
  BF16, e.g. AMD Zen 4: about 2×) BF16 weights and channels_last (numbers: ``benchmarks/kd_overhead.py``).

It returns what distillation needs, in FP32: DFL logits (B, A, 4·R), class logits (B, A, C) and the neck
features (the Detect head's inputs, P3/P4/P5). It runs backbone + neck + the head's raw branches only: the head's
decoding (boxes in pixels, sigmoid scores, NMS-free top-k), which distillation never reads, is skipped, and with it
the anchors the head caches per input shape (a CUDA graph would keep reading a cache replaced at the next shape).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class HeadOutputs:
    """Raw (pre-sigmoid, pre-softmax) head outputs of one forward pass, anchors concatenated over levels."""

    boxes: torch.Tensor  # (B, A, 4·reg_max) DFL logits
    scores: torch.Tensor  # (B, A, nc) class logits
    feats: list[torch.Tensor]  # per level (B, C_l, H_l, W_l), the Detect head's inputs
    members: list | None = None  # an ensemble's combined outputs carry each member's (ensemble_rule='losses')
    conf_logits: torch.Tensor | None = None  # (B, A, nc) sigmoid-space confidence when it is not σ(scores) (a kl
    # ensemble's scores are log p̄): read through detkd.losses.weighting.confidence_logits


def split_head_outputs(preds) -> HeadOutputs:
    """Normalise Ultralytics head outputs (train dict, (y, dict) eval tuple, end-to-end two-branch dict)."""
    if isinstance(preds, (tuple, list)):
        preds = preds[1]
    if "one2many" in preds:  # end-to-end heads (YOLOv10/26): the dense one-to-many branch is the one to imitate
        if not preds["one2many"]:
            raise ValueError(MISSING_ONE2MANY)
        preds = preds["one2many"]
    return HeadOutputs(
        boxes=preds["boxes"].permute(0, 2, 1), scores=preds["scores"].permute(0, 2, 1), feats=list(preds["feats"])
    )


MISSING_ONE2MANY = ("the end-to-end head has no one-to-many branch (removed by fusion): its dense outputs, the KD "
                    "targets, are gone. Use the unfused training checkpoint (weights/best.pt or last.pt).")


BF16_SPEEDUPS = {"AMX": "about 4x", "AVX-512 BF16": "about 2x"}  # teacher forward vs FP32, measured (docs/speed.md)


def cpu_bf16_unit() -> str | None:
    """The CPU's BF16 hardware that oneDNN uses for convolutions: ``"AMX"`` (Intel's BF16 matrix units, about 4x a
    FP32 forward), ``"AVX-512 BF16"`` (BF16 dot products, e.g. AMD Zen 4: about 2x), or None — BF16 is then emulated
    and the teacher stays FP32. Read through torch's own probes; a torch without them counts as none."""
    for unit, name in (("AMX", "_is_amx_tile_supported"), ("AVX-512 BF16", "_is_avx512_bf16_supported")):
        probe = getattr(torch.cpu, name, None)
        try:
            if probe is not None and bool(probe()):
                return unit
        except Exception:  # pragma: no cover - a probe that fails is a CPU we do not know
            continue
    return None


def cpu_has_fast_bf16() -> bool:
    """True on CPUs where a BF16 teacher is markedly faster than FP32 (see :func:`cpu_bf16_unit`)."""
    return cpu_bf16_unit() is not None


def teacher_precision_line(precision: str, device_type: str, half: bool = True, unit: str | None = None) -> str:
    """The start-of-run line saying what precision the teacher computes in, why, and how to change it; ``unit``:
    the CPU's BF16 hardware (default: this CPU's)."""
    if precision == "bf16":
        unit = unit or cpu_bf16_unit() or "BF16 instructions"
        return (f"teacher in BF16 (this CPU has {unit}: {BF16_SPEEDUPS.get(unit, 'faster than')} FP32; targets move "
                f"by a few parts in a thousand). --teacher-half false keeps it FP32.")
    if precision == "fp16":
        return "teacher in FP16 on the GPU. --teacher-half false keeps it FP32."
    why = ("--teacher-half false" if not half or device_type == "cuda" else
           "this CPU has no fast BF16: neither AMX nor AVX-512 BF16" if device_type == "cpu" else f"on {device_type}")
    return f"teacher in FP32 ({why})."


def detect_head(model):
    """The model's Detect head (last layer)."""
    return model.model[-1]


@contextmanager
def raw_head(model):
    """Within this context the model's forward stops at the head's raw branches: Ultralytics' ``Detect.forward``
    returns them (``{"boxes", "scores", "feats"}``, or one such dict per branch for end-to-end heads) before any
    decoding when the head is in training mode. Only the head module's own flag is set; every layer, the head's
    convolutions included, stays in eval mode (BatchNorm keeps its running statistics)."""
    head = detect_head(model)
    was = head.training
    head.training = True
    try:
        yield
    finally:
        head.training = was


def feature_channels(model) -> list[int]:
    """Channels of the Detect head's inputs, read from its first box-branch convolutions (no forward pass)."""
    head = detect_head(model)
    return [int(branch[0].conv.in_channels) for branch in head.cv2]


class FrozenTeacher:
    """A frozen, inference-optimised teacher (not an ``nn.Module``: it is never part of the trained model).

    On CUDA two more things hide most of its cost inside the student's step:

    * **CUDA graphs** — the whole forward is captured once per input shape and replayed with one launch
      (at most ``max_graphs`` shapes; others, e.g. multi-scale training, run eagerly). All graphs share one memory
      pool; each holds only its static input, the model's weights and its pool's buffers (no per-shape cache of the
      head's). Each new capture empties torch's allocator cache (``torch.cuda.graph``), hence the cap;
    * **a side stream** — :meth:`prefetch` starts the teacher on its own CUDA stream right after the batch is on
      the GPU, so it runs concurrently with the student's forward; :meth:`__call__` then only waits for it. Any call
      made while a prefetch is pending waits for the side stream first (it may still be replaying the same graph).
    """

    def __init__(self, model, device: torch.device):
        self.model = model.to(device).float().eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.device = device
        self.end_to_end = getattr(detect_head(model), "one2one_cv2", None) is not None  # before fusion drops it
        self.dtype = torch.float32  # the teacher's compute precision; its outputs are always handed out in FP32
        self.channels_last = False
        self.use_graphs = False
        self.max_graphs = 4
        self._graphs: dict[tuple, tuple] = {}
        self._pool = None  # one CUDA graph memory pool shared by all captures
        self._stream = None
        self._pending = None  # (img, HeadOutputs) launched by prefetch()

    def optimize(self, half: bool = True, cuda_graphs: bool = True) -> "FrozenTeacher":
        """Fuse Conv+BN; on CUDA also FP16 (if ``half``), channels_last, CUDA graphs and a side stream; on a CPU with
        fast BF16 (:func:`cpu_has_fast_bf16`: AMX or AVX-512 BF16) BF16 (if ``half``) and channels_last.

        Reduced precision changes the targets by a few parts in a thousand of their range (BF16 keeps 8 mantissa
        bits, FP16 11): far below what distillation can resolve, and what makes the teacher cheap.

        An end-to-end head (YOLO26/YOLOv10) is switched to its one-to-many outputs first: Ultralytics' fusion keeps
        only the branch the head infers with, and a head stored with ``end2end=True`` (released YOLO26 weights, any
        trained with ``nms=False``) would lose the dense one-to-many branch, the one the student imitates.
        """
        if hasattr(self.model, "fuse") and not self.model.is_fused():
            head = detect_head(self.model)
            if getattr(head, "one2one_cv2", None) is not None and head.cv2 is not None:
                head.end2end = False  # fusion then drops the one-to-one branch, which the teacher never reads
            self.model = self.model.fuse(verbose=False)
        if self.device.type == "cuda":
            self.channels_last = True
            self.model = self.model.to(memory_format=torch.channels_last)
            if half:
                self.dtype = torch.float16
                self.model = self.model.half()
            self.use_graphs = cuda_graphs
            self._stream = torch.cuda.Stream(self.device)
        elif self.device.type == "cpu" and half and cpu_has_fast_bf16():
            self.dtype = torch.bfloat16
            self.channels_last = True
            self.model = self.model.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        return self

    # ------------------------------------------------------------------------------------------ forward
    def _prepare(self, img: torch.Tensor) -> torch.Tensor:
        x = img.to(self.dtype)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _raw_forward(self, x: torch.Tensor) -> HeadOutputs:
        """Backbone + neck + the head's raw branches (see :func:`raw_head`), in the teacher's own precision."""
        with torch.autocast(device_type=self.device.type, enabled=False), raw_head(self.model):
            return split_head_outputs(self.model(x))

    def _graphed_forward(self, x: torch.Tensor) -> HeadOutputs:
        """Replay (capturing on first use) the CUDA graph for this input shape; outputs are static buffers."""
        key = tuple(x.shape)
        if key not in self._graphs:
            if len(self._graphs) >= self.max_graphs:
                return self._raw_forward(x)
            static_in = x.clone()
            for _ in range(2):  # warm-up: cudnn algorithm choice
                self._raw_forward(static_in)
            torch.cuda.synchronize(self.device)
            if self._pool is None:  # shared: each replay's outputs are copied out (_forward) before any other
                self._pool = torch.cuda.graph_pool_handle()  # graph replays on that stream, so buffers may overlap
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                    static_out = self._raw_forward(static_in)
            except RuntimeError as e:  # pragma: no cover - depends on driver/ops
                from ultralytics.utils import LOGGER

                LOGGER.warning(f"detkd: teacher CUDA graph capture failed ({e}); running it eagerly.")
                self.use_graphs = False
                return self._raw_forward(x)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        static_in.copy_(x)
        graph.replay()
        return static_out

    def _forward(self, img: torch.Tensor) -> HeadOutputs:
        """FP32 outputs in fresh tensors (graph buffers are overwritten by the next replay)."""
        x = self._prepare(img)
        out = self._graphed_forward(x) if self.use_graphs else self._raw_forward(x)
        if self.dtype != torch.float32 or self.channels_last:  # one fresh FP32 copy in the default layout: the KD
            # terms mix these with the student's (contiguous) tensors, and a channels_last operand makes their
            # results, and what autograd keeps of them, channels_last copies too
            own = lambda t: t.to(dtype=torch.float32, memory_format=torch.contiguous_format)  # noqa: E731
        else:
            own = (lambda t: t.clone()) if self.use_graphs else (lambda t: t)  # noqa: E731
        return HeadOutputs(own(out.boxes), own(out.scores), [own(f) for f in out.feats])

    @torch.no_grad()
    def prefetch(self, img: torch.Tensor) -> None:
        """Start the teacher on ``img`` on a side CUDA stream (no-op on CPU); ``__call__(img)`` collects it."""
        if self._stream is None:
            return
        self._stream.wait_stream(torch.cuda.current_stream(self.device))  # img is ready
        with torch.cuda.stream(self._stream):
            out = self._forward(img)
        self._pending = (img, out)

    @torch.no_grad()
    def __call__(self, img: torch.Tensor) -> HeadOutputs:
        """img (B, 3, H, W) float in [0, 1] → FP32 :class:`HeadOutputs` (prefetched ones if launched for img)."""
        pending, self._pending = self._pending, None
        if pending is not None:  # the side stream may still be at work (same graph, same static buffers): wait
            current = torch.cuda.current_stream(self.device)
            current.wait_stream(self._stream)
            if pending[0] is img:
                return self._hand_over(pending[1], current)
        return self._forward(img)

    @staticmethod
    def _hand_over(out: HeadOutputs, stream) -> HeadOutputs:
        """Outputs allocated on the side stream, used on ``stream``: the allocator must not reuse them early."""
        for t in (out.boxes, out.scores, *out.feats):
            t.record_stream(stream)
        return out

    # ---------------------------------------------------------------------------------------------- facts
    @property
    def precision(self) -> str:
        """The precision the teacher computes in: 'fp32', 'fp16' (CUDA) or 'bf16' (CPU with AMX or AVX-512 BF16)."""
        return {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(self.dtype, "fp32")

    @property
    def nc(self) -> int:
        return int(detect_head(self.model).nc)

    @property
    def reg_max(self) -> int:
        return int(detect_head(self.model).reg_max)

    @property
    def strides(self) -> list[float]:
        return [float(s) for s in detect_head(self.model).stride]

    @property
    def channels(self) -> list[int]:
        return feature_channels(self.model)

    @property
    def names(self) -> dict:
        return dict(getattr(self.model, "names", {}) or {})
