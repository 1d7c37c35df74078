"""Every convolution kernel computes NVIDIA's function, with the same gradients; what the GPU kernel asks."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from se3pyg.compat.nvidia import load_nvidia
from se3pyg.engine.counting import count_ops
from se3pyg.model import SE3TransformerPooled
from se3pyg.nn import KERNELS, ConvSE3, auto_kernel

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


def test_the_fused_kernel_writes_no_hidden_products(golden: dict) -> None:
    """Counted on CPU, forward + backward: the fused kernel's operators write the outputs only, so the step writes
    less than the reassociated kernel's (which writes ``G`` and ``dG``), with no host sync and fewer launches."""
    batch = Batch.from_data_list(golden_batch(golden).to_data_list())
    counts = {}
    for kernel in ("reassociated", "fused"):
        torch.manual_seed(0)
        model = SE3TransformerPooled(num_layers=2, num_degrees=3, num_channels=8, num_heads=2, kernel=kernel)
        model(batch).sum().backward()  # the cached constants
        counts[kernel] = count_ops(lambda model=model: model(batch).sum().backward())
    fused, reassociated = counts["fused"], counts["reassociated"]
    assert fused.host_syncs == 0
    assert {"radial_contract", "radial_contract_grad_t", "radial_contract_grad_w", "radial_contract_grad_h"} <= set(
        fused.by_op
    )
    assert fused.launches < reassociated.launches
    assert fused.bytes_written < 0.75 * reassociated.bytes_written


def test_the_fused_edge_weights_kernel_writes_no_radial_weights(golden: dict) -> None:
    """Counted on CPU, forward + backward: its operators write the outputs only, so the step writes less than the
    edge-weights kernel's (which writes ``R`` and ``dR``), with no host sync; its backward pass forms ``R`` and ``dR``
    once more (the contraction's FLOPs times 4/3, the step's less)."""
    batch = Batch.from_data_list(golden_batch(golden).to_data_list())
    counts = {}
    for kernel in ("edge_weights", "fused_edge_weights"):
        torch.manual_seed(0)
        model = SE3TransformerPooled(num_layers=2, num_degrees=3, num_channels=8, num_heads=2, kernel=kernel)
        model(batch).sum().backward()  # the cached constants
        counts[kernel] = count_ops(lambda model=model: model(batch).sum().backward())
    fused, unfused = counts["fused_edge_weights"], counts["edge_weights"]
    assert fused.host_syncs == 0
    assert {"edge_weights_contract", "edge_weights_contract_grad_t_h", "edge_weights_contract_grad_w"} <= set(
        fused.by_op
    )
    assert fused.bytes_written < 0.75 * unfused.bytes_written
    assert unfused.flops < fused.flops < 4 / 3 * unfused.flops
