"""Every convolution kernel computes NVIDIA's function, with the same gradients; what the GPU kernel asks."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from se3pyg.compat.nvidia import load_nvidia
from se3pyg.engine.counting import count_ops
from se3pyg.model import SE3TransformerPooled
from se3pyg.nn import KERNELS, ConvSE3, auto_kernel, radial_contraction
from se3pyg.nn.edge_weights_contraction import OPERATORS

from .conftest import golden_batch, relative_error

TOL = 1e-4
COMPUTING = [k for k in KERNELS if k != "auto"]


def _use(model: torch.nn.Module, kernel: str) -> None:
    for module in model.modules():
        if isinstance(module, ConvSE3):
            module.kernel = kernel


def test_kernel_choices() -> None:
    assert KERNELS == ("auto", "edge_weights", "reassociated", "fused", "fused_edge_weights")
    assert auto_kernel("cuda") == "reassociated"
    assert auto_kernel("cpu") == "edge_weights"
    with pytest.raises(ValueError, match="kernel must be one of"):
        SE3TransformerPooled(kernel="fast")


@pytest.mark.parametrize("kernel", COMPUTING)
def test_every_kernel_matches_nvidia(golden: dict, kernel: str) -> None:
    cfg = golden["nvidia_config"]
    model = load_nvidia(golden["state_dict"], num_heads=cfg["num_heads"], channels_div=cfg["channels_div"])
    _use(model, kernel)
    batch = golden_batch(golden)
    with torch.no_grad():
        assert relative_error(model(batch), golden["expected_prediction"]) <= TOL
        assert relative_error(model.pool(batch), golden["expected_pooled"]) <= TOL
    prediction = model(batch)  # the autograd path
    assert relative_error(prediction.detach(), golden["expected_prediction"]) <= TOL


@pytest.mark.parametrize("layout", ["full", "partial", "pairwise"])
def test_kernels_give_the_same_gradients(golden: dict, layout: str) -> None:
    batch = golden_batch(golden)
    grads = {}
    for kernel in COMPUTING:
        torch.manual_seed(0)
        model = SE3TransformerPooled(num_layers=2, num_degrees=3, num_channels=8, num_heads=2, layout=layout)
        _use(model, kernel)
        torch.nn.functional.l1_loss(model(batch), torch.zeros(batch.num_graphs)).backward()
        grads[kernel] = torch.cat([p.grad.flatten() for p in model.parameters()])
    reference = grads["edge_weights"]
    for kernel, grad in grads.items():
        assert ((grad - reference).abs().max() / reference.abs().max()).item() <= 1e-5, kernel


def test_the_gpu_kernel_reads_no_device_value_on_the_host(golden: dict) -> None:
    """Forward and backward of ``kernel=auto_kernel("cuda")``, counted on CPU: no host sync."""
    batch = Batch.from_data_list(golden_batch(golden).to_data_list())
    model = SE3TransformerPooled(num_layers=2, num_degrees=3, num_channels=8, num_heads=2, kernel=auto_kernel("cuda"))
    counts = count_ops(lambda: model(batch).sum().backward())
    assert counts.host_syncs == 0, counts.syncs_by_op
    assert counts.launches > 0 and counts.bytes_written > 0
    assert sum(counts.by_module.values()) == counts.launches  # every launch attributed once
    assert {"AttentionSE3", "LinearSE3", "NormSE3", "KernelGroup", "(backward)"} <= set(counts.by_module)


@pytest.mark.parametrize(
    ("fused", "unfused", "operators"),
    [("fused", "reassociated", radial_contraction.OPERATORS), ("fused_edge_weights", "edge_weights", OPERATORS)],
)
def test_the_fused_kernels_write_only_their_outputs(golden: dict, fused: str, unfused: str, operators: tuple) -> None:
    """Counted on CPU, forward + backward: a fused kernel's operators write their outputs only, so the step writes
    less than the products it fuses (``G`` and ``dG`` for ``"reassociated"``, ``R`` and ``dR`` for
    ``"edge_weights"``), with no host sync and fewer launches; its backward pass forms ``G`` or ``R`` once more (the
    contraction's FLOPs times 4/3, the step's less)."""
    batch = Batch.from_data_list(golden_batch(golden).to_data_list())
    counts = {}
    for kernel in (unfused, fused):
        torch.manual_seed(0)
        model = SE3TransformerPooled(num_layers=2, num_degrees=3, num_channels=8, num_heads=2, kernel=kernel)
        model(batch).sum().backward()  # the cached constants
        counts[kernel] = count_ops(lambda model=model: model(batch).sum().backward())
    assert counts[fused].host_syncs == 0
    assert set(operators) <= set(counts[fused].by_op)
    assert counts[fused].launches < counts[unfused].launches
    assert counts[fused].bytes_written < 0.75 * counts[unfused].bytes_written
    assert counts[unfused].flops < counts[fused].flops < 4 / 3 * counts[unfused].flops
