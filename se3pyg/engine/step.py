"""The steps every command runs: one training step, one prediction step.

``se3pyg train`` and ``se3pyg benchmark train`` call the same
`train_step()`; evaluation, ``se3pyg predict`` and ``se3pyg benchmark
predict`` call the same `predict_step()`. Neither reads a device value on
the host: the loss comes back as a tensor on the device.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from se3pyg.engine.precision import Precision
from se3pyg.engine.state import TrainState

if TYPE_CHECKING:
    from torch_geometric.data import Batch


def train_step(state: TrainState, batch: Batch, update: bool = True) -> Tensor:
    r"""Forward, L1 loss and backward of one batch; with ``update``, an optimizer step.

    $$
    \mathcal{L} = \frac{1}{B} \sum_g |\hat y_g - y_g| \quad \text{(standardized targets)}
    $$

    Gradients of ``state.accumulate`` batches add up (each loss divided by
    that count; DDP all-reduces only on the updating one). An update unscales
    fp16 gradients, clips their norm to ``state.gradient_clip`` when set,
    steps the optimizer and the loss scale, and clears the gradients.
    Returns the detached loss of the batch, on the device. With ``--cuda-graphs``
    (``state.graphs``) the same step is replayed as a CUDA graph.

    Args:
        state: the model, optimizer, loss scaler and precision of the run.
        batch: a batch on the model's device.
        update: step the optimizer after this batch (else its gradients accumulate).

    Returns:
        The batch's loss (on the device: not read back).
    """
    if state.graphs is not None:
        return state.graphs.train(batch, update)
    net = state.net
    no_sync = not update and isinstance(net, DistributedDataParallel)
    with net.no_sync() if no_sync else contextlib.nullcontext():
        with state.precision.autocast():
            prediction = net(batch)
        loss = nn.functional.l1_loss(prediction.float(), batch.y)
        state.scaler.scale(loss / state.accumulate).backward()
    if update:
        if state.gradient_clip is not None:
            state.scaler.unscale_(state.optimizer)
            nn.utils.clip_grad_norm_(state.model.parameters(), state.gradient_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.optimizer.zero_grad(set_to_none=True)
    return loss.detach()


def predict_step(net: nn.Module, batch: Batch, precision: Precision) -> Tensor:
    """The model's float32 prediction for one batch, under the command's autocast (grad mode: the caller's).

    Args:
        net: the model (in eval mode for a prediction).
        batch: a batch on its device.
        precision: the command's precision policy.
    """
    with precision.autocast():
        return net(batch).float()
