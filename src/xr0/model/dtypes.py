"""Device and dtype names of the command line (--device, --dtype) -> what torch takes: one place for the rule."""

from __future__ import annotations

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def resolve_device(name: str = "auto") -> str:
    """`auto`: cuda when a GPU is visible, else cpu; any other name as given (cpu, cuda, cuda:N)."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is visible (torch {torch.__version__}, "
                         f"cuda build {torch.version.cuda})")
    return name


def resolve_dtype(name: str, device: str) -> str:
    """`auto`: bf16 only where it is fast. On CPU that needs native bf16 (avx512_bf16 / AMX): on an AVX2-only CPU
    PyTorch falls back to a scalar bf16 GEMM that is tens of times slower than fp32."""
    if name != "auto":
        if name not in DTYPES:
            raise ValueError(f"--dtype must be auto or one of {sorted(DTYPES)}, got {name!r}")
        return name
    if device.startswith("cuda"):
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def torch_dtype(name: str) -> torch.dtype:
    return DTYPES[name]
