"""The optimizers: LAMB's update and its host syncs, the fused choice per device."""

from __future__ import annotations

import math

import pytest
import torch

from se3pyg.engine.counting import count_ops
from se3pyg.engine.optim import Lamb, make_optimizer


def _lamb_by_hand(w: torch.Tensor, g: torch.Tensor, lr: float, wd: float, steps: int) -> torch.Tensor:
    """LAMB written out with host floats, for ``steps`` steps of the same gradient ``g``."""
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    for t in range(1, steps + 1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        u = (m / (1 - 0.9**t)) / ((v / (1 - 0.999**t)).sqrt() + 1e-6) + wd * w
        w_norm, u_norm = float(w.norm()), float(u.norm())
        trust = w_norm / u_norm if w_norm > 0 and u_norm > 0 and math.isfinite(u_norm) else 1.0
        w = w - lr * trust * u
    return w


def test_lamb_takes_the_trust_ratio_on_the_device_without_host_syncs() -> None:
    torch.manual_seed(0)
    weights = [torch.randn(5, 3), torch.zeros(4)]  # a zero weight has trust ratio 1
    grads = [torch.randn(5, 3), torch.randn(4)]
    params = [torch.nn.Parameter(w.clone()) for w in weights]
    optimizer = Lamb(params, lr=0.01, weight_decay=0.1)
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    optimizer.step()  # the first step creates the moments
    counts = count_ops(optimizer.step)
    assert counts.host_syncs == 0, counts.syncs_by_op
    for p, w, g in zip(params, weights, grads, strict=True):
        torch.testing.assert_close(p.detach(), _lamb_by_hand(w, g, 0.01, 0.1, 2), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_adamw_and_sgd_are_the_fused_kernels_and_step_as_the_unfused_ones(name: str) -> None:
    torch.manual_seed(0)
    weights, grads = torch.randn(7, 5), torch.randn(7, 5)
    params = {fused: torch.nn.Parameter(weights.clone()) for fused in (True, False)}
    optimizers = {
        fused: make_optimizer(name, [p], lr=0.1, weight_decay=0.1, momentum=0.9) for fused, p in params.items()
    }
    optimizers[False] = (
        torch.optim.AdamW([params[False]], lr=0.1, weight_decay=0.1)
        if name == "adam"
        else torch.optim.SGD([params[False]], lr=0.1, momentum=0.9, weight_decay=0.1)
    )
    assert optimizers[True].defaults["fused"] and not optimizers[False].defaults["fused"]
    for _ in range(3):
        for fused, optimizer in optimizers.items():
            params[fused].grad = grads.clone()
            optimizer.step()
    torch.testing.assert_close(params[True], params[False], rtol=1e-6, atol=1e-7)
