"""Stacked features ([N, D, C]) give each layer the same function as feature dicts, checked against plain
per-degree references; and what a published-recipe training step asks of a GPU stays within budget."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch_geometric.data import Batch

from se3pyg import Fiber, SE3TransformerPooled
from se3pyg.basis import Basis
from se3pyg.engine.counting import count_training_step
from se3pyg.nn import AttentionBlockSE3, AttentionSE3, ConvSE3, LinearSE3, NormSE3, auto_kernel

from .conftest import chain_molecule

TOL = 1e-12  # float64 throughout


def _features(fiber: Fiber, count: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {str(d): torch.randn(count, c, 2 * d + 1, generator=gen, dtype=torch.float64) for d, c in fiber.items()}


def _close(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(actual) == set(expected)
    for key in expected:
        assert actual[key].shape == expected[key].shape, key
        assert (actual[key] - expected[key]).abs().max().item() <= TOL, key


def test_stack_and_unstack() -> None:
    fiber = Fiber.create(3, 4)
    feats = _features(fiber, 5)
    stacked = fiber.stack(feats)
    assert stacked.shape == (5, 9, 4)
    assert fiber.component_degrees() == [0, 1, 1, 1, 2, 2, 2, 2, 2]
    back = fiber.unstack(stacked)
    _close(back, feats)
    assert all(v._base is stacked for v in back.values())  # views, no copies
    single = Fiber({1: 4})
    assert single.stack(_features(single, 5))._base is not None  # one degree: a view
    assert fiber.component_run([1, 2]) == (1, 8) and fiber.component_run([0, 2]) is None
    with pytest.raises(ValueError, match="equal channels"):
        Fiber({0: 4, 1: 2}).stack(_features(Fiber({0: 4, 1: 2}), 5))


@pytest.mark.parametrize(
    ("fiber_in", "fiber_out"),
    [
        ({0: 4, 1: 4, 2: 4}, {0: 3, 1: 3, 2: 3}),  # one batched product
        ({0: 4, 1: 4, 2: 4}, {1: 3, 2: 3}),  # a run of the input's components
        ({0: 4, 1: 4, 2: 4}, {0: 3, 2: 3}),  # not a run
        ({0: 4, 1: 4}, {0: 5, 1: 3}),  # unequal output channels: a dict
        ({1: 4}, {1: 2}),  # one degree: one matrix product
    ],
)
def test_linear_stacked_and_dict_agree_with_the_per_degree_map(fiber_in: dict, fiber_out: dict) -> None:
    fiber_in, fiber_out = Fiber(fiber_in), Fiber(fiber_out)
    layer = LinearSE3(fiber_in, fiber_out).double()
    feats = _features(fiber_in, 6)
    expected = {str(d): layer.weights[str(d)] @ feats[str(d)] for d in fiber_out.degrees}
    _close(layer(feats), expected)
    out = layer(fiber_in.stack(feats))
    _close(fiber_out.unstack(out) if fiber_out.is_uniform else out, expected)


@pytest.mark.parametrize("fiber", [{0: 4, 1: 4, 2: 4}, {0: 4, 1: 2}])
def test_norm_stacked_and_dict_agree_with_the_per_degree_norm(fiber: dict) -> None:
    fiber = Fiber(fiber)
    layer = NormSE3(fiber).double()
    torch.nn.init.normal_(next(layer.parameters()))
    feats = _features(fiber, 6)
    feats["1"][0] = 0.0  # a zero feature: norms clamped
    norms = {k: v.norm(dim=-1, keepdim=True).clamp(min=NormSE3.NORM_CLAMP) for k, v in feats.items()}
    if fiber.is_uniform:
        cat = torch.cat([norms[str(d)] for d in fiber.degrees], dim=1).squeeze(-1)
        new = torch.relu(layer.group_norm(cat)).unsqueeze(-1).split(fiber.channels, dim=1)
        new = dict(zip(norms, new, strict=True))
    else:
        new = {k: torch.relu(layer.layer_norms[k](n.squeeze(-1))).unsqueeze(-1) for k, n in norms.items()}
    expected = {k: feats[k] / norms[k] * new[k] for k in feats}
    _close(layer(feats), expected)
    if fiber.is_uniform:
        _close(fiber.unstack(layer(fiber.stack(feats))), expected)


def _reference_attention(layer: AttentionSE3, value: dict, key: dict, query: dict, edge_index: torch.Tensor) -> dict:
    """Per destination node and head: softmax over incoming edges of <q, k> / sqrt(n_k), then the weighted sum."""
    heads = layer.num_heads

    def head(feats: dict, fiber: Fiber, h: int) -> torch.Tensor:  # [M, features of head h]
        return torch.cat([feats[str(d)].unflatten(1, (heads, -1))[:, h].flatten(1) for d in fiber.degrees], dim=1)

    num_nodes = next(iter(query.values())).shape[0]
    out = {k: torch.zeros(num_nodes, *v.shape[1:], dtype=v.dtype) for k, v in value.items()}
    for node in range(num_nodes):
        incoming = (edge_index[1] == node).nonzero().flatten()
        for h in range(heads):
            logits = head(key, layer.key_fiber, h)[incoming] @ head(query, layer.key_fiber, h)[node]
            alpha = torch.softmax(logits / math.sqrt(layer.key_fiber.num_features), dim=0)
            for d, c in layer.value_fiber.items():
                channels = slice(h * c // heads, (h + 1) * c // heads)
                out[str(d)][node, channels] = torch.einsum("e,ecm->cm", alpha, value[str(d)][incoming, channels])
    return out


@pytest.mark.parametrize(
    ("key_fiber", "value_fiber"),
    [
        ({0: 4, 1: 4}, {0: 4, 1: 4, 2: 4}),
        ({0: 4}, {0: 4, 1: 4}),
        ({0: 6, 1: 2}, {0: 4, 1: 2}),
        ({0: 6, 1: 2}, {0: 4, 1: 4}),
    ],
    ids=["stacked", "keys-for-some-degrees", "unequal-channels", "unequal-key-channels"],
)
def test_attention_is_a_softmax_over_incoming_edges(key_fiber: dict, value_fiber: dict) -> None:
    key_fiber, value_fiber = Fiber(key_fiber), Fiber(value_fiber)
    data = chain_molecule(6)
    edges = data.edge_index.shape[1]
    layer = AttentionSE3(2, key_fiber, value_fiber)
    value, key, query = _features(value_fiber, edges, 1), _features(key_fiber, edges, 2), _features(key_fiber, 6, 3)
    expected = _reference_attention(layer, value, key, query, data.edge_index)
    _close(layer(value, key, query, data.edge_index), expected)
    if value_fiber.is_uniform:  # stacked values give stacked output, whatever the keys
        stack_keys = key_fiber.stack if key_fiber.is_uniform else dict
        stacked = layer(value_fiber.stack(value), stack_keys(key), stack_keys(query), data.edge_index)
        _close(value_fiber.unstack(stacked), expected)


@pytest.mark.parametrize("layout", ["full", "partial", "pairwise"])
@pytest.mark.parametrize("pool", [True, False])
def test_conv_stacked_equals_dict(layout: str, pool: bool) -> None:
    hidden = Fiber.create(3, 4)
    data = chain_molecule(6)
    edge_feats = {"0": torch.randn(data.edge_index.shape[1], 5, 1, dtype=torch.float64)}
    basis = Basis.from_relative_pos(
        (data.pos[data.edge_index[1]] - data.pos[data.edge_index[0]]).double(), max_degree=2
    )
    for fiber_out in (hidden, Fiber({0: 6, 1: 2})):
        torch.manual_seed(0)
        conv = ConvSE3(
            hidden, fiber_out, Fiber({0: 4}), pool=pool, self_interaction=pool, layout=layout, max_degree=2
        ).double()
        feats = _features(hidden, 6)
        expected = conv(feats, edge_feats, data.edge_index, basis)
        out = conv(hidden.stack(feats), edge_feats, data.edge_index, basis)
        _close(fiber_out.unstack(out) if fiber_out.is_uniform else out, expected)


class _WeightCasts(TorchDispatchMode):
    """Casts of tensors with ``numel`` elements, as ``"forward"`` or ``"backward"``."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.casts = numel, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ == "_to_copy" and args[0].numel() == self.numel:
            self.casts.append("backward" if torch._C._current_autograd_node() is not None else "forward")
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("kernel", ["edge_weights", "reassociated", "fused", "fused_edge_weights"])
@pytest.mark.parametrize("grad", [True, False])
def test_autocast_casts_the_last_radial_weight_once(kernel: str, grad: bool) -> None:
    """Under autocast, a kernel group over three output degrees casts its radial network's last weight once a
    forward (in the copy that reorders it), and its gradient back once; a float64 one computes as it does without
    autocast, since autocast leaves float64 alone."""
    hidden = Fiber.create(3, 4)
    data = chain_molecule(6)
    edge_feats = {"0": torch.randn(data.edge_index.shape[1], 5, 1)}
    basis = Basis.from_relative_pos(data.pos[data.edge_index[1]] - data.pos[data.edge_index[0]], max_degree=2)
    conv = ConvSE3(hidden, hidden, Fiber({0: 4}), layout="full", max_degree=2, kernel=kernel)
    feats = hidden.stack({k: v.float() for k, v in _features(hidden, 6).items()})
    mode = _WeightCasts(conv.conv.radial_func.last.weight.numel())
    with mode, torch.set_grad_enabled(grad):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = conv(feats, edge_feats, data.edge_index, basis)
        if grad:
            out.float().sum().backward()
    assert mode.casts == (["forward", "backward"] if grad else ["forward"])
    conv.double()  # autocast leaves float64 alone, and so does the kernel group
    feats, edge_feats, basis = feats.double(), {"0": edge_feats["0"].double()}, Basis(basis.sh.double(), 2)
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(feats, edge_feats, data.edge_index, basis)
    # with and without autograd the same float64 arithmetic, maybe in another order: float64 rounding apart
    torch.testing.assert_close(out, conv(feats, edge_feats, data.edge_index, basis), rtol=1e-12, atol=1e-14)


def test_attention_block_stacked_equals_dict() -> None:
    """The first block (input fiber {0: 6}: keys for degree 0 only) and a hidden one."""
    hidden = Fiber.create(3, 4)
    data = chain_molecule(6)
    edge_feats = {"0": torch.randn(data.edge_index.shape[1], 5, 1, dtype=torch.float64)}
    basis = Basis.from_relative_pos(
        (data.pos[data.edge_index[1]] - data.pos[data.edge_index[0]]).double(), max_degree=2
    )
    for fiber_in in (Fiber({0: 6}), hidden):
        torch.manual_seed(0)
        block = AttentionBlockSE3(fiber_in, hidden, Fiber({0: 4}), num_heads=2, max_degree=2).double()
        feats = _features(fiber_in, 6)
        expected = block(feats, edge_feats, data.edge_index, basis)
        _close(hidden.unstack(block(fiber_in.stack(feats), edge_feats, data.edge_index, basis)), expected)


def test_published_training_step_launch_budget() -> None:
    """One published-recipe forward + backward with the GPU kernel, counted on CPU: no host sync, at most
    1,200 operator calls (each a kernel launch on a GPU; the count does not depend on the batch size)."""
    batch = Batch.from_data_list([chain_molecule(n, seed=n) for n in (5, 7, 9)])
    batch.y = torch.zeros(3)
    torch.manual_seed(0)
    counts = count_training_step(SE3TransformerPooled(kernel=auto_kernel("cuda")), batch)
    assert counts.host_syncs == 0, counts.syncs_by_op
    assert counts.launches <= 1200, counts.by_module
