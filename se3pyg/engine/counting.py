"""What a step asks of a device, counted on any device: host syncs, operator calls, bytes written, FLOPs.

Counted with a ``TorchDispatchMode`` under autograd, so the backward pass is
seen too. A *host sync* is an operator whose result the host must wait for
(``.item()``, ``int()``/``bool()`` of a tensor, ``nonzero``, ``unique``,
``masked_select``): on a GPU each drains the queue. Every other operator
that is not a view is one kernel launch on a GPU; its outputs (or, for an
in-place operator, its mutated input) are the bytes it writes. FLOPs are
counted for the products, 2 a multiply-add, by ``torch.utils.flop_counter``'s
formulas for PyTorch's operators and by the ``operator_flops`` of
`se3pyg.nn.radial_contraction` and
`se3pyg.nn.edge_weights_contraction` for the fused kernels'.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from se3pyg.nn import edge_weights_contraction, radial_contraction

#: ``torch.ops.se3pyg`` operator name -> its FLOP formula (the fused kernels' operators).
_OPERATOR_FLOPS = {
    name: module.operator_flops
    for module in (radial_contraction, edge_weights_contraction)
    for name in module.OPERATORS
}

SYNC_OPS = ("_local_scalar_dense", "nonzero", "unique", "_unique", "_unique2", "unique_dim", "masked_select", "item")


@dataclass
class OpCounts:
    """Host syncs, non-view operator calls, bytes written and FLOPs, with each by operator name."""

    host_syncs: int = 0
    launches: int = 0
    bytes_written: int = 0
    flops: int = 0
    by_op: Counter = field(default_factory=Counter)
    bytes_by_op: Counter = field(default_factory=Counter)
    flops_by_op: Counter = field(default_factory=Counter)
    syncs_by_op: Counter = field(default_factory=Counter)
    #: Launches by the class of the innermost module running them in the forward pass; outside any module
    #: ``"(none)"``, during autograd's backward pass ``"(backward)"``.
    by_module: Counter = field(default_factory=Counter)


class _Counter(TorchDispatchMode):
    def __init__(self, counts: OpCounts, modules: list[str]) -> None:
        super().__init__()
        self.counts = counts
        self.modules = modules  # the forward pass's module stack, innermost last

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name in SYNC_OPS or name.startswith("unique"):
            self.counts.host_syncs += 1
            self.counts.syncs_by_op[name] += 1
        if func.is_view or name in ("detach", "alias", "lift_fresh", "_unsafe_view"):
            return out
        self.counts.launches += 1
        self.counts.by_op[name] += 1
        in_backward = torch._C._current_autograd_node() is not None
        self.counts.by_module["(backward)" if in_backward else self.modules[-1]] += 1
        mutated = [a for a, s in zip(args, func._schema.arguments, strict=False) if s.is_write]
        written = mutated if mutated else tree_flatten(out)[0]
        nbytes = sum(t.nbytes for t in written if isinstance(t, torch.Tensor))
        self.counts.bytes_written += nbytes
        self.counts.bytes_by_op[name] += nbytes
        flops = _flops(func, args, kwargs or {}, out)
        if flops:
            self.counts.flops += flops
            self.counts.flops_by_op[name] += flops
        return out


def _flops(func: Any, args: tuple, kwargs: dict, out: Any) -> int:
    """FLOPs of one operator call: PyTorch's formula for its products, this package's for the fused kernel's."""
    formula = flop_registry.get(func.overloadpacket)
    if formula is not None:
        return int(formula(*args, **kwargs, out_val=out))
    name = func.overloadpacket.__name__
    if func.namespace == "se3pyg" and name in _OPERATOR_FLOPS:
        return _OPERATOR_FLOPS[name](name, args)
    return 0


def count_ops(fn: Callable[[], object]) -> OpCounts:
    """Run ``fn()`` once and count what it dispatched (forward and, if ``fn`` calls it, backward).

    Args:
        fn: the work to count (run once).
    """
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    counts, modules = OpCounts(), ["(none)"]
    entering = register_module_forward_pre_hook(lambda module, _args: modules.append(type(module).__name__))
    leaving = register_module_forward_hook(lambda _module, _args, _out: modules.pop() and None)
    try:
        with _Counter(counts, modules):
            fn()
    finally:
        entering.remove()
        leaving.remove()
    return counts


def count_training_step(model: torch.nn.Module, batch: Any, autocast: torch.dtype | None = None) -> OpCounts:
    """One forward + L1-loss backward of ``model`` on ``batch`` (targets ``batch.y``), counted after one
    uncounted step that builds the cached constants (Clebsch-Gordan tensors, indices); gradients cleared.
    ``autocast``: the forward pass under autocast to that dtype on the model's device, as ``--amp`` runs it.

    Args:
        model: the model, on its device.
        batch: a batch on the same device.
        autocast: the forward's autocast dtype (``None``: float32).
    """
    device = next(model.parameters()).device.type

    def step() -> None:
        with torch.autocast(device, dtype=autocast, enabled=autocast is not None):
            prediction = model(batch)
        prediction = prediction if autocast is None else prediction.float()  # the loss in float32, as train_step
        torch.nn.functional.l1_loss(prediction, batch.y).backward()

    step()
    model.zero_grad(set_to_none=True)
    counts = count_ops(step)
    model.zero_grad(set_to_none=True)
    return counts
