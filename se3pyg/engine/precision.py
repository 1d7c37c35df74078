"""Mixed precision, chosen once per command from ``--amp`` and ``--amp-dtype``.

The policy: without ``--amp`` everything runs in float32 (TF32 matmuls on
CUDA); with it, autocast to fp16 (and a ``GradScaler`` for training) or to
bf16 (no scaler needed); ``auto`` is fp16 on GPUs, bf16 on CPU (where fp16
matmuls are slow). Whatever autocast does, the model keeps float32 islands
where precision matters and the work is small: the degree-wise linear maps
(``LinearSE3``), the attention logits and softmax (``AttentionSE3``) and the
MLP head (``SE3TransformerPooled``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Precision:
    """The autocast dtype of a command on one device type (``None``: full precision)."""

    device_type: str
    dtype: torch.dtype | None = None

    @classmethod
    def choose(cls, amp: bool, amp_dtype: str, device: torch.device) -> Precision:
        """The policy above for ``device``; ``ValueError`` for an unknown ``amp_dtype``."""
        if amp_dtype != "auto" and amp_dtype not in DTYPES:
            raise ValueError(f"--amp-dtype must be fp16 or bf16 (or auto), got {amp_dtype!r}")
        if not amp:
            return cls(device.type)
        name = amp_dtype if amp_dtype != "auto" else ("fp16" if device.type == "cuda" else "bf16")
        return cls(device.type, DTYPES[name])

    @property
    def name(self) -> str:
        """``fp32``, ``fp16`` or ``bf16``."""
        return next((k for k, v in DTYPES.items() if v == self.dtype), "fp32")

    def autocast(self, cache: bool = True) -> contextlib.AbstractContextManager:
        """The autocast context of the forward pass (a no-op in full precision); ``cache=False`` inside a CUDA
        graph capture (cached casts would outlive the graph's memory).

        Args:
            cache: keep autocast's cast weights for the block (off inside CUDA graph captures).
        """
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype, cache_enabled=cache)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """Loss scaling for fp16 (enabled only there: bf16 and float32 gradients do not underflow)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.dtype == torch.float16)

    def configure_backends(self) -> None:
        """TF32 for float32 matmuls and convolutions on CUDA (as NVIDIA's training does); nothing on CPU."""
        if self.device_type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
