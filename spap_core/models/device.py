"""The device and dtype a run asks for, checked against this machine before any model loads:
'auto' picks the GPU when torch sees one, else the CPU.
"""

from __future__ import annotations

import torch

from spap_core.errors import SpapInputError


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device for 'auto', 'cpu', 'cuda' or 'cuda:N', refused in one line when it does
    not exist here (before any model is loaded)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise SpapInputError(f"Unknown device '{device}': use auto, cpu, cuda or cuda:N.") from None
    if resolved.type not in ("cpu", "cuda"):
        raise SpapInputError(f"Device '{device}' is not supported: use auto, cpu, cuda or cuda:N.")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise SpapInputError("CUDA was requested but no GPU is visible to torch; use --device cpu.")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise SpapInputError(f"Device '{device}' does not exist: this machine has {torch.cuda.device_count()} "
                                 "GPU(s), cuda:0 to cuda:" + str(torch.cuda.device_count() - 1) + ".")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """float32 on CPU (bf16 matmuls are slow there); bfloat16 on GPUs that support it."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    except KeyError as exc:
        raise SpapInputError(f"Unknown dtype '{dtype}': use auto, float32, bfloat16 or float16.") from exc
