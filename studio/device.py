"""Device and dtype, chosen once: cuda bf16, mps fp16, cpu fp32, unless the user says otherwise."""

from __future__ import annotations

import gc
import os

import torch

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def choose_device(device: str | None = None, dtype: str | None = None) -> tuple[str, torch.dtype]:
    if device is None:
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    if dtype is None:
        chosen = {"cuda": torch.bfloat16, "mps": torch.float16}.get(device.split(":")[0], torch.float32)
    else:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}")
        chosen = DTYPES[dtype]
    return device, chosen


def device_memory_bytes(device: str) -> int | None:
    """Total memory of an accelerator, or of the host for the CPU and MPS (whose memory is the
    host's): None where it cannot be read."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.device(device)).total_memory
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def release_memory() -> None:
    """Give freed tensors back for real: Python's cycles first, then the CUDA caching allocator."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if getattr(torch, "mps", None) is not None and torch.backends.mps.is_available():
        torch.mps.empty_cache()
