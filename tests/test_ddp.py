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
