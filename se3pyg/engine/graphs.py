"""The training and prediction steps replayed as CUDA graphs.

An eager training step of the published recipe launches about 1,900 kernels;
on an H100 their host-side cost (Python, dispatcher, launch) is several times
their GPU time. A CUDA graph replays captured kernels with one launch, but
needs static shapes and addresses: each batch is padded to a bucketed shape
(`static_shape()`), copied into that shape's static
inputs, and that shape's graph, captured on its first batch, is replayed
(a batch that fits a larger captured shape with little more padding takes
that one, so that rare shapes are not captured each).

The training graph holds forward, loss and backward. Gradients live in one flat
buffer allocated outside the graphs, so that every graph accumulates into the
same tensors and DDP all-reduces them in one call; the optimizer step (fused on
CUDA), gradient clipping and the loss scale's update run eagerly after the
replay, so the learning rate schedule and the loss scale work as in the eager
step. With ``capture=False`` the same padded, static-buffer steps run eagerly
(on any device: how they are tested without a GPU). `GraphedPredictor`
replays prediction alone (``se3pyg predict --cuda-graphs``), `GraphedSteps`
a training run's steps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

from se3pyg.data.padding import PADDED_FIELDS, fits, pad_batch, static_shape
from se3pyg.engine.precision import Precision

if TYPE_CHECKING:
    from torch_geometric.data import Batch


class Trainable(Protocol):
    """What the graphed training steps read of a training state
    ([`se3pyg.engine.state.TrainState`][se3pyg.engine.state.TrainState]).

    Attributes:
        model: the model (its parameters' gradients are the step's output).
        precision: the precision policy of the forward.
        optimizer: the optimizer stepped after an update.
        scaler: the loss scaler (fp16).
        accumulate: batches an optimizer step.
        gradient_clip: the gradient norm's clip (``None``: none).
    """

    model: nn.Module
    precision: Precision
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    accumulate: int
    gradient_clip: float | None


@dataclass
class _Graph:
    """One captured step: its static padded batch, its static output, and the graph (None when not captured)."""

    inputs: Batch
    output: Tensor | None
    graph: torch.cuda.CUDAGraph | None
    run: Callable[[], Tensor]

    def replay(self) -> Tensor:
        if self.graph is None:
            return self.run()
        self.graph.replay()
        return self.output  # type: ignore[return-value]


class GraphedPredictor:
    """The model's prediction over padded batches, one CUDA graph per shape (see the module docstring): what
    ``se3pyg predict --cuda-graphs`` runs. ``model`` in eval mode; grad mode is the caller's.

    Args:
        model: the model, on its device, in eval mode.
        precision: the precision policy of its steps.
        capture: capture CUDA graphs (on a GPU; ``False``: the same padded steps, eagerly).
    """

    WARMUP = 2  # eager runs on a side stream before a capture (builds cached constants, autograd's buffers)

    def __init__(self, model: nn.Module, precision: Precision, capture: bool = True) -> None:
        self.model = model
        self.precision = precision
        self.capture = capture
        self.graphs: dict[tuple[str, bool, int, int, int], _Graph] = {}
        self.pool: tuple | None = None

    def predict(self, batch: Batch) -> Tensor:
        """The model's float32 prediction for ``batch`` (replayed).

        Args:
            batch: a batch on the model's device.
        """
        return self._replay("predict", batch).clone()

    def _replay(self, kind: str, batch: Batch) -> Tensor:
        own = static_shape(batch)
        # the smallest shape already captured that the batch fits, rather than a capture of its own
        pairs = getattr(batch, "edge_pairs", None) is True  # the path a capture takes (se3pyg.data.pairs)
        captured = [key[2:] for key in self.graphs if key[:2] == (kind, pairs) and fits(batch, key[2:])]
        graphs, nodes, edges = min(captured, key=lambda shape: shape[1] * shape[2], default=own)
        key = (kind, pairs, graphs, nodes, edges)
        padded = pad_batch(batch, nodes, edges)
        graph = self.graphs.get(key)
        if graph is None:
            graph = self.graphs[key] = self._build(kind, padded)
        else:
            for name in PADDED_FIELDS:
                if getattr(padded, name, None) is not None:
                    getattr(graph.inputs, name).copy_(getattr(padded, name))
        return graph.replay()

    def _step(self, kind: str, inputs: Batch) -> Callable[[], Tensor]:
        model, precision, real = self.model, self.precision, inputs.num_graphs - 1  # the last graph is the padding

        def predict() -> Tensor:
            with precision.autocast(cache=False):
                return model(inputs)[:real].float()

        return predict

    def _build(self, kind: str, inputs: Batch) -> _Graph:
        run = self._step(kind, inputs)
        if not self.capture:
            return _Graph(inputs, None, None, run)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            output = run()
        self.pool = graph.pool()
        return _Graph(inputs, output, graph, run)


class GraphedSteps(GraphedPredictor):
    """[`train_step()`][se3pyg.engine.step.train_step] and [`predict_step()`][se3pyg.engine.step.predict_step] of
    ``state`` over
    padded batches, one CUDA graph per shape (see the module docstring); both kinds share one memory pool.

    Args:
        state: the model, optimizer, scaler and precision of a run (`Trainable`).
        capture: capture CUDA graphs (``False``: the same padded steps, eagerly).
    """

    def __init__(self, state: Trainable, capture: bool = True) -> None:
        super().__init__(state.model, state.precision, capture)
        self.state = state
        params = [p for p in state.model.parameters() if p.requires_grad]
        device = params[0].device
        self.flat_grad = torch.zeros(sum(p.numel() for p in params), device=device, dtype=params[0].dtype)
        offset = 0
        for p in params:  # every parameter's gradient is a view of the one buffer
            p.grad = self.flat_grad[offset : offset + p.numel()].view_as(p)
            offset += p.numel()
        self.world_size = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1

    def train(self, batch: Batch, update: bool = True) -> Tensor:
        """Forward, L1 loss and backward of ``batch`` (replayed); with ``update``, the optimizer step. Returns the
        detached loss of the batch, on the device.

        Args:
            batch: a batch on the model's device.
            update: step the optimizer after it.
        """
        state = self.state
        loss = self._replay("train", batch).clone()
        if update:
            if self.world_size > 1:
                torch.distributed.all_reduce(self.flat_grad)
                self.flat_grad.div_(self.world_size)
            if state.gradient_clip is not None:
                state.scaler.unscale_(state.optimizer)
                nn.utils.clip_grad_norm_(state.model.parameters(), state.gradient_clip)
            state.scaler.step(state.optimizer)
            state.scaler.update()
            self.flat_grad.zero_()
        return loss

    def _step(self, kind: str, inputs: Batch) -> Callable[[], Tensor]:
        if kind != "train":
            return super()._step(kind, inputs)
        state, real = self.state, inputs.num_graphs - 1

        def train() -> Tensor:
            with state.precision.autocast(cache=False):
                prediction = state.model(inputs)
            loss = nn.functional.l1_loss(prediction[:real].float(), inputs.y[:real])
            state.scaler.scale(loss / state.accumulate).backward()
            return loss.detach()

        return train

    def _build(self, kind: str, inputs: Batch) -> _Graph:
        saved = self.flat_grad.clone() if self.capture else None  # the warm-up's backward passes add to gradients
        graph = super()._build(kind, inputs)
        if saved is not None:
            self.flat_grad.copy_(saved)  # (a capture records kernels without running them)
        return graph
