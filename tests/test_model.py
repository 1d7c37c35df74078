"""Model construction, parameter layouts and input validation."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from se3pyg import Fiber, SE3Transformer, SE3TransformerPooled
from se3pyg.nn import ConvSE3

from .conftest import chain_molecule

ROOT = Path(__file__).resolve().parents[1]


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_published_recipe_parameter_count() -> None:
    assert _n_params(SE3TransformerPooled()) == 9_279_553  # NVIDIA's fully fused layout
    assert _n_params(SE3TransformerPooled(layout="partial")) == 9_304_321  # NVIDIA's CPU layout


def test_layouts_build_the_expected_radial_networks() -> None:
    hidden = Fiber.create(3, 16)
    full = ConvSE3(hidden, hidden, Fiber({0: 4}), layout="full", max_degree=2)
    partial = ConvSE3(hidden, hidden, Fiber({0: 4}), layout="partial", max_degree=2)
    pairwise = ConvSE3(hidden, hidden, Fiber({0: 4}), layout="pairwise", max_degree=2)
    assert (full.fuse, len(full.groups)) == ("full", 1)
    assert (partial.fuse, len(partial.groups)) == ("out", 3)
    assert (pairwise.fuse, len(pairwise.groups)) == ("pairwise", 9)


@pytest.fixture(scope="module")
def small() -> SE3TransformerPooled:
    torch.manual_seed(0)
    return SE3TransformerPooled(num_layers=2, num_degrees=2, num_channels=8, num_heads=2).eval()


def test_batch_prediction_equals_single_predictions(small: SE3TransformerPooled) -> None:
    mols = [chain_molecule(4 + i, seed=i) for i in range(3)]
    with torch.no_grad():
        batched = small(Batch.from_data_list(mols))
        single = torch.cat([small(Batch.from_data_list([m])) for m in mols])
    assert batched.shape == (3,)
    assert torch.allclose(batched, single, atol=1e-5)


def test_precomputed_spherical_harmonics_give_the_same_output(small: SE3TransformerPooled) -> None:
    from se3pyg.basis import spherical_harmonics

    batch = Batch.from_data_list([chain_molecule()])
    rel = batch.pos[batch.edge_index[1]] - batch.pos[batch.edge_index[0]]
    with torch.no_grad():
        direct = small(batch)
        batch.sh = spherical_harmonics(rel, small.transformer.max_degree)
        cached = small(batch)
    torch.testing.assert_close(cached, direct, rtol=1e-6, atol=1e-7)  # one function's harmonics: float32 rounding


def test_low_memory_gives_the_same_gradients() -> None:
    batch = Batch.from_data_list([chain_molecule(), chain_molecule(6, 1)])
    grads = []
    for low_memory in (False, True):
        torch.manual_seed(0)
        model = SE3TransformerPooled(num_layers=2, num_degrees=2, num_channels=8, num_heads=2, low_memory=low_memory)
        model(batch).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: setattr(d, "x", torch.randn(d.num_nodes, 5)), "node_feats"),
        (lambda d: setattr(d, "edge_attr", torch.randn(d.edge_index.shape[1], 3)), "edge_feats"),
        (lambda d: setattr(d, "edge_index", d.edge_index + 100), "edge_index"),
        (lambda d: setattr(d, "edge_index", d.edge_index.float()), "edge_index"),
        (lambda d: delattr(d, "pos"), "pos"),
        (lambda d: setattr(d, "pos", torch.randn(d.num_nodes, 2)), "pos"),
        (lambda d: delattr(d, "x"), "x"),
        (lambda d: delattr(d, "edge_attr"), "edge_attr"),
    ],
)
def test_bad_inputs_raise_value_errors_naming_the_field(small: SE3TransformerPooled, mutate, field: str) -> None:
    batch = Batch.from_data_list([chain_molecule()])
    mutate(batch)
    with pytest.raises(ValueError, match=field):
        small(batch)


def test_bad_hyperparameters_are_refused() -> None:
    with pytest.raises(ValueError, match="layout"):
        SE3TransformerPooled(layout="fast")
    with pytest.raises(ValueError, match="num_heads"):
        SE3TransformerPooled(num_channels=8, num_heads=3)
    with pytest.raises(ValueError, match="pooling"):
        SE3TransformerPooled(pooling="sum")
    with pytest.raises(ValueError, match="return_type"):
        SE3Transformer(1, {0: 4}, {0: 4}, {0: 4}, num_heads=1, channels_div=1, pooling="max")


def test_config_round_trip(small: SE3TransformerPooled) -> None:
    clone = SE3TransformerPooled.from_config(small.config)
    clone.load_state_dict(small.state_dict())
    batch = Batch.from_data_list([chain_molecule()])
    with torch.no_grad():
        assert torch.equal(clone.eval()(batch), small(batch))


def test_every_layer_with_parameters_resets_them() -> None:
    torch.manual_seed(0)
    model = SE3TransformerPooled(num_layers=2, num_degrees=2, num_channels=8, num_heads=2)
    containers = (
        torch.nn.ParameterDict,
        torch.nn.ParameterList,
        torch.nn.ModuleDict,
        torch.nn.ModuleList,
        torch.nn.Sequential,
    )
    for name, module in model.named_modules():
        if isinstance(module, containers) or not any(True for _ in module.parameters()):
            continue
        assert hasattr(module, "reset_parameters"), name
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.reset_parameters()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    random = {k for k, v in before.items() if not (torch.all(v == 0) or torch.all(v == 1))}  # not LayerNorm's 0/1
    assert random <= changed


def test_layers_print_in_torch_style() -> None:
    conv = ConvSE3(Fiber.create(2, 4), Fiber.create(2, 4), Fiber({0: 1}), max_degree=1)
    text = repr(conv)
    assert text.startswith(
        "ConvSE3(\n  Fiber({0: 4, 1: 4}) -> Fiber({0: 4, 1: 4}), fuse=full, pool=True, kernel=auto\n"
    )
    assert "(conv): KernelGroup(\n    degrees [0, 1] -> [0, 1], channels 4 -> 4\n" in text


@pytest.mark.slow
def test_training_works_after_a_first_forward_in_inference_mode() -> None:
    """The cached constants (Clebsch-Gordan tensors, index maps) a first call builds are not inference tensors,
    which a later backward pass could not use. In a fresh process: the caches are per process."""
    script = (
        "import torch\n"
        "from torch_geometric.data import Batch\n"
        "from se3pyg import SE3TransformerPooled\n"
        "from tests.conftest import chain_molecule\n"
        "batch = Batch.from_data_list([chain_molecule(5), chain_molecule(4, seed=1)])\n"
        "model = SE3TransformerPooled(num_layers=1, num_degrees=3, num_channels=8, num_heads=2)\n"
        "with torch.inference_mode():\n"
        "    model(batch)\n"
        "model(batch).sum().backward()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
