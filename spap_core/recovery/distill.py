"""Distillation from the dense model: its logits on the calibration windows, computed once before
pruning (the CLI prunes in place, so the dense model is gone afterwards), and the KL of the
student's softened distribution from the dense one's.

Held in memory up to DENSE_LOGITS_IN_MEMORY_BYTES; above it, in a float32 memory-mapped file in a
temporary folder, read back a batch of windows at a time, and removed when the block that holds
them ends (cancelled, failed or done). At SmolLM2's 49,152-token vocabulary, 16 × 512 calibration
tokens are 1.6 GB of logits: more than its weights (0.5 GB), which is why they go to disk."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spap_core.errors import PruningCancelled
from spap_core.models.offload import execution_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel

# Logits (vocabulary × calibration tokens × 4 bytes) above this go to a file; 256 MiB keeps them in
# memory for the tiny and test models and a short SmolLM2 calibration (4 × 256 tokens: 201 MB),
# and writes them to disk for the CLI's default calibration (16 × 512: 1.6 GB).
DENSE_LOGITS_IN_MEMORY_BYTES = 256 * 2**20
LOGITS_FILE = "dense_logits.f32"


class DenseLogits:
    """The dense model's logits [windows, length, vocabulary] in float32, in memory or in a file
    (`path`, None when in memory)."""

    def __init__(self, shape: tuple[int, int, int], folder: Path | None) -> None:
        self.shape = shape
        self.path = None if folder is None else folder / LOGITS_FILE
        self._values: np.ndarray = (np.zeros(shape, dtype=np.float32) if self.path is None
                                    else np.memmap(self.path, dtype=np.float32, mode="w+", shape=shape))

    def write(self, start: int, logits: torch.Tensor) -> None:
        self._values[start:start + logits.shape[0]] = logits.float().cpu().numpy()

    def rows(self, indices: torch.Tensor, device: torch.device) -> torch.Tensor:
        """The logits of the windows `indices`, on `device`."""
        return torch.from_numpy(np.ascontiguousarray(self._values[indices.numpy()])).to(device)

    def flush(self) -> None:
        if isinstance(self._values, np.memmap):
            self._values.flush()

    def release(self) -> None:
        """Drop the values (the file's mapping first, so its folder can be removed)."""
        self._values = np.zeros((0, 0, 0), dtype=np.float32)


def logits_bytes(windows: int, length: int, vocabulary: int) -> int:
    return windows * length * vocabulary * 4


@contextlib.contextmanager
def dense_logits(model: nn.Module, calibration: torch.Tensor, batch_size: int,
                 cancel: threading.Event | None = None) -> Iterator[DenseLogits]:
    """The dense model's logits on every calibration window [N, L], kept for the block: in memory,
    or above DENSE_LOGITS_IN_MEMORY_BYTES in a temporary folder removed when the block ends."""
    vocabulary = int(cast("PreTrainedModel", model).get_output_embeddings().weight.shape[0])
    shape = (int(calibration.shape[0]), int(calibration.shape[1]), vocabulary)
    on_disk = logits_bytes(*shape) > DENSE_LOGITS_IN_MEMORY_BYTES
    folder = Path(tempfile.mkdtemp(prefix="spap-dense-logits-")) if on_disk else None
    stored = DenseLogits(shape, folder)
    try:
        device = execution_device(model)
        with torch.no_grad():
            for start in range(0, shape[0], batch_size):
                if cancel is not None and cancel.is_set():
                    raise PruningCancelled("Cancelled while the dense model's logits were computed.")
                ids = calibration[start:start + batch_size].to(device)
                stored.write(start, model(input_ids=ids, use_cache=False).logits)
        stored.flush()
        yield stored
    finally:
        stored.release()
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) of the softmax at `temperature`, averaged over tokens and scaled by T²
    (Hinton et al.), so its gradients keep their size whatever the temperature."""
    vocabulary = student.shape[-1]
    student_log = F.log_softmax(student.float().reshape(-1, vocabulary) / temperature, dim=-1)
    teacher_log = F.log_softmax(teacher.float().reshape(-1, vocabulary) / temperature, dim=-1)
    return F.kl_div(student_log, teacher_log, log_target=True, reduction="batchmean") * temperature**2
