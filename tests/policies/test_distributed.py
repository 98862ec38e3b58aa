"""CRaFT's one collective (L_ret averaged over processes before the dual step) on every backend
accelerate may start: NCCL takes CUDA tensors only, gloo CPU ones (and CUDA), a mapping such as
``cpu:gloo,cuda:nccl`` both. A gloo group restricted to CUDA (``cuda:gloo``) behaves as NCCL
does towards a CPU tensor, so the failure of a CPU-only reduction is reproduced without a GPU."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from craft_plugin.policies.craft.modeling_craft import _mean_over_processes, reduction_device


@pytest.fixture()
def group(request):
    dist.init_process_group(request.param, init_method="tcp://127.0.0.1:29633", rank=0, world_size=1)
    yield request.param
    dist.destroy_process_group()


@pytest.mark.parametrize("group", ["cuda:gloo"], indirect=True)
def test_a_group_that_serves_cuda_only_refuses_a_cpu_reduction(group):
    """What the reduction did before (a CPU float64 tensor) under NCCL-like device support."""
    with pytest.raises(RuntimeError, match="No backend type associated with device type cpu"):
        dist.all_reduce(torch.tensor([0.5], dtype=torch.float64))
    # the reduction now puts its tensor on the training device the group serves
    assert reduction_device(str(dist.get_backend()), torch.device("cuda:1")) == torch.device("cuda:1")
    with pytest.raises(RuntimeError, match=r"serves \['cuda'\] tensors, neither the training device cpu nor the CPU"):
        _mean_over_processes(0.5, device="cpu")


@pytest.mark.parametrize("group", ["gloo", "cpu:gloo"], indirect=True)
def test_the_reduction_runs_on_a_group_that_serves_the_training_device(group):
    assert reduction_device(str(dist.get_backend()), torch.device("cpu")) == torch.device("cpu")
    assert _mean_over_processes(0.25, device="cpu") == 0.25


@pytest.mark.parametrize(
    ("backend", "training", "expected"),
    [
        ("nccl", "cuda:0", "cuda:0"),
        ("cpu:gloo,cuda:nccl", "cuda:1", "cuda:1"),
        ("gloo", "cuda:0", "cuda:0"),
        ("cpu:gloo", "cuda:0", "cpu"),
        ("gloo", "mps", "cpu"),
        ("xccl", "xpu:0", "xpu:0"),
    ],
)
def test_reduction_device_for_every_backend(backend, training, expected):
    assert reduction_device(backend, torch.device(training)) == torch.device(expected)


def test_outside_a_process_group_the_value_is_returned():
    assert not dist.is_initialized()
    assert _mean_over_processes(0.125, device="cuda") == 0.125
